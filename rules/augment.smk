rule augment:
    """Optional (augment.enabled): `copies` new images per normalized face, the seed's ops."""
    input:
        manifest=after_dedup(f"{R}/normalize/{{shard}}/manifest.tsv"),
        code=stage_code("augment"),
    output:
        f"{R}/augment/{{shard}}/manifest.tsv",
    params:
        # new images are encoded exactly like normalize's (pipeline/augment.py config_keys)
        cfg=stage_keys("augment"),
    threads: SHARD_THREADS
    conda:
        CONDA_ENV
    log:
        log_path("augment", "{shard}"),
    benchmark:
        bench_path("augment", "{shard}")
    shell:
        "python -m pipeline.augment --input {input.manifest:q} --output {output:q}"
        " --config {params.cfg:q} --threads {threads} > {log:q} 2>&1"
