rule normalize:
    """Exactly R x R 8-bit sRGB JPEG/PNG (EXIF, ICC, modes, alpha, pad|crop), validated."""
    input:
        manifest=after_dedup(f"{R}/upscale/{{shard}}/manifest.tsv"),
        code=stage_code("normalize"),
    output:
        f"{R}/normalize/{{shard}}/manifest.tsv",
    params:
        cfg=stage_keys("normalize"),
    threads: SHARD_THREADS
    conda:
        CONDA_ENV
    log:
        log_path("normalize", "{shard}"),
    benchmark:
        bench_path("normalize", "{shard}")
    shell:
        "python -m pipeline.normalize --input {input.manifest:q} --output {output:q}"
        " --config {params.cfg:q} --threads {threads} > {log:q} 2>&1"
