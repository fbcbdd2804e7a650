rule clean:
    """Per-image filters and hashes (size floors, monochrome, quality, pixel hash,
    perceptual hashes of the face and of its whole source picture)."""
    input:
        manifest=f"{R}/crop/{{shard}}/manifest.tsv",
        sources=f"{R}/ingest/{{shard}}/manifest.tsv",  # source file sizes (already upstream)
        code=stage_code("clean"),
    output:
        manifest=f"{R}/clean/{{shard}}/manifest.tsv",
        hashes=f"{R}/clean/{{shard}}/manifest.hashes",  # clean.hashes_path: binary, for dedup
    params:
        cfg=stage_keys("clean"),
    threads: SHARD_THREADS
    conda:
        CONDA_ENV
    log:
        log_path("clean", "{shard}"),
    benchmark:
        bench_path("clean", "{shard}")
    shell:
        "python -m pipeline.clean shard --input {input.manifest:q} --sources {input.sources:q}"
        " --output {output.manifest:q}"
        " --config {params.cfg:q} --threads {threads}"
        # measures stored per face/source content ($FACEPREP_CACHE_DIR: no param, moving it
        # reruns nothing): added files or a re-cut measure only what is new
        " --store \"$FACEPREP_CACHE_DIR/clean\" > {log:q} 2>&1"


# A checkpoint: after it runs Snakemake re-reads each shard's duplicates file and reruns
# upscale/normalize only where its content changed (a dry run, which cannot know yet,
# lists every shard's upscale and normalize after dedup).
checkpoint dedup:
    """Gather: exact, source-level and near duplicates across all shards; keeps the best
    copy. Then: each shard's duplicates for upscale, a console line per stage so far, and
    a one-line stop when no face is left."""
    input:
        manifests=shard_manifests("clean"),
        hashes=expand(f"{R}/clean/{{shard}}/manifest.hashes", shard=SHARDS),
        stages=shard_manifests("ingest") + shard_manifests("crop"),
        # dedup imports clean (flips_on) and the search; the clean rule reads neither of
        # the others, so tuning the search reruns only this gather
        code=[stage_code(m) for m in ("dedup", "hamming", "clean", "survivors")],
    output:
        tsv=f"{R}/clean/dedup.tsv",
        shards=expand(f"{DEDUP_SHARDS}/{{shard}}.tsv", shard=SHARDS),
    params:
        cfg=stage_keys("dedup"),
        stages=" ".join(f"{stage}={shlex.quote(m)}" for stage in ("ingest", "crop", "clean")
                        for m in shard_manifests(stage)),
        shards=",".join(SHARDS),
        out_dir=lambda wildcards, output: os.path.dirname(output.shards[0]),
    conda:
        CONDA_ENV
    log:
        log_path("dedup"),
    benchmark:
        bench_path("dedup")
    shell:
        "python -m pipeline.dedup --output {output.tsv:q} --config {params.cfg:q}"
        " {input.manifests:q} > {log:q} 2>&1;"
        " python -m pipeline.survivors --dedup {output.tsv:q} --out-dir {params.out_dir:q}"
        " --shards {params.shards} {params.stages}"
        " 2>&1 | python -m pipeline.console tee --append {log:q}"
