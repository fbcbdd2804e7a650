rule upscale:
    """Faces below the target side, among those that survived dedup: waifu2x (GPU or CPU)
    or Lanczos; a content cache."""
    input:
        manifest=f"{R}/clean/{{shard}}/manifest.tsv",
        duplicates=shard_duplicates,
        code=stage_code("upscale"),
    output:
        f"{R}/upscale/{{shard}}/manifest.tsv",
    params:
        cfg=stage_keys("upscale"),
    threads: SHARD_THREADS
    resources:
        # a cluster profile places waifu2x on a GPU node; `gpu: cpu` and Lanczos need none
        gpu=1 if config["upscale"]["method"] == "waifu2x" and config["upscale"]["gpu"] != "cpu" else 0,
        mem_mb=4000,
        runtime=60,
    conda:
        CONDA_ENV
    log:
        log_path("upscale", "{shard}"),
    benchmark:
        bench_path("upscale", "{shard}")
    shell:
        "python -m pipeline.upscale --input {input.manifest:q} --duplicates {input.duplicates:q}"
        " --output {output:q} --config {params.cfg:q} --cache \"$FACEPREP_CACHE_DIR/upscale\""
        " --threads {threads} > {log:q} 2>&1"
