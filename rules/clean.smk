rule clean:
    """Per-image filters and hashes (size floors, monochrome, pixel hash, perceptual hash)."""
    input:
        manifest=f"{R}/crop/{{shard}}/manifest.tsv",
        sources=f"{R}/ingest/{{shard}}/manifest.tsv",  # source file sizes (already upstream)
        code=stage_code("clean"),
    output:
        f"{R}/clean/{{shard}}/manifest.tsv",
    params:
        cfg=stage_config("clean"),
    threads: 1
    conda:
        CONDA_ENV
    log:
        log_path("clean", "{shard}"),
    benchmark:
        bench_path("clean", "{shard}")
    shell:
        "python -m pipeline.clean shard --input {input.manifest:q} --sources {input.sources:q}"
        " --output {output:q}"
        " --config {params.cfg:q} --threads {threads} > {log:q} 2>&1"


rule dedup:
    """Gather: exact and near duplicates across all shards; keeps the best of each cluster."""
    input:
        manifests=shard_manifests("clean"),
        code=stage_code("clean"),
    output:
        f"{R}/clean/dedup.tsv",
    params:
        cfg=stage_config("clean"),
    conda:
        CONDA_ENV
    log:
        log_path("dedup"),
    benchmark:
        bench_path("dedup")
    shell:
        "python -m pipeline.clean dedup --output {output:q} --config {params.cfg:q}"
        " {input.manifests:q} > {log:q} 2>&1"
