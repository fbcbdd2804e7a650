rule metadata_filter:
    """Reads the metadata JSONL once and decides per file stem (tags, rating)."""
    input:
        metadata=config["ingest"]["metadata"] or [],
        code=stage_code("ingest"),
    output:
        f"{R}/ingest/metadata_decisions.tsv",
    params:
        # the tag/rating filter only; the per-file checks are ingest's
        cfg=stage_keys("ingest", "metadata_keys"),
    conda:
        CONDA_ENV
    log:
        log_path("metadata_filter"),
    benchmark:
        bench_path("metadata_filter")
    shell:
        "python -m pipeline.ingest metadata --metadata {input.metadata:q} --output {output:q}"
        " --config {params.cfg:q} > {log:q} 2>&1"


rule ingest:
    """Full decode check of every listed file; stable ids; extension/tag filters."""
    input:
        listing=f"{R}/listing/{{shard}}.tsv",
        metadata=metadata_inputs,
        code=stage_code("ingest"),
    output:
        f"{R}/ingest/{{shard}}/manifest.tsv",
    params:
        # tags and ratings are decided by metadata_filter (its decisions are an input)
        cfg=stage_keys("ingest"),
        raw_dir=config["raw_dir"],
    threads: SHARD_THREADS
    conda:
        CONDA_ENV
    log:
        log_path("ingest", "{shard}"),
    benchmark:
        bench_path("ingest", "{shard}")
    shell:
        "python -m pipeline.ingest shard --listing {input.listing:q} --raw-dir {params.raw_dir:q}"
        " --metadata-decisions={input.metadata:q} --output {output:q} --config {params.cfg:q}"
        " --threads {threads} --checks \"$FACEPREP_CACHE_DIR/ingest\" > {log:q} 2>&1"
