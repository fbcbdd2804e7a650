rule export:
    """Gather: every normalized, non-duplicate image -> TFRecords (+ ZIP), deterministic."""
    input:
        manifests=shard_manifests("augment" if config["augment"]["enabled"] else "normalize"),
        dedup=f"{R}/clean/dedup.tsv",
        code=stage_code("export"),
    output:
        **DATASET,
    params:
        cfg=stage_config("export"),
        name=config["name"],
        folder=lambda wildcards, output: os.path.dirname(output.manifest),
    conda:
        CONDA_ENV
    log:
        log_path("export"),
    benchmark:
        bench_path("export")
    shell:
        "python -m pipeline.export --name {params.name:q} --folder {params.folder:q}"
        " --config {params.cfg:q} --dedup {input.dedup:q} {input.manifests:q} > {log:q} 2>&1"


rule dataset:
    """Target: the exported dataset (no training) and its check page."""
    input:
        **DATASET,
        report=f"{R}/report/index.html",  # rules/report.smk: review before any GPU time
