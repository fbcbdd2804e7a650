rule crop:
    """Find faces (anime cascade, dlib + FFHQ alignment, or none) and cut square crops."""
    input:
        manifest=f"{R}/ingest/{{shard}}/manifest.tsv",
        code=stage_code("crop"),
    output:
        f"{R}/crop/{{shard}}/manifest.tsv",
    params:
        cfg=stage_config("crop", "models"),
    threads: 2
    log:
        log_path("crop", "{shard}"),
    benchmark:
        bench_path("crop", "{shard}")
    shell:
        "{PY} -m pipeline.crop --input {input.manifest:q} --output {output:q}"
        " --config {params.cfg:q} --threads {threads} > {log:q} 2>&1"
