def upscale_config():
    """Exactly the keys pipeline/upscale.py reads for the chosen method: `none` reads
    nothing else; `lanczos` only plans the factor (target) and, for images of unknown
    size, decodes them (background); waifu2x reads its model, noise and device too."""
    up, norm = config["upscale"], config["normalize"]
    cfg = {"method": up["method"]}
    if up["method"] != "none":
        cfg.update(target=norm["resolution"], background=norm["background"])
    if up["method"] == "waifu2x":
        cfg.update({k: up[k] for k in ("model", "noise", "gpu")})
    return json.dumps(cfg, sort_keys=True)


# Not a param: where the cache lives changes no output, so moving it reruns nothing.
UPSCALE_CACHE = f"{config['cache_dir']}/upscale"


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
        cfg=upscale_config(),
    threads: 2
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
        " --output {output:q} --config {params.cfg:q} --cache {UPSCALE_CACHE:q}"
        " --threads {threads} > {log:q} 2>&1"
