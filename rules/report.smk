rule ranked_export:
    """The dataset minus rejects minus the worst drop_bottom_fraction, re-exported."""
    input:
        manifest=DATASET["manifest"],
        scores=f"{R}/rank/scores.tsv",
        rejects=rejects_input,
        code=stage_code("export"),
    output:
        **RANKED,
    params:
        cfg=stage_config("export"),
        drop_bottom=config["rank"]["drop_bottom_fraction"],
        name=config["name"],
        folder=lambda wildcards, output: os.path.dirname(output.manifest),
        rejects=REJECTS,  # read only if it exists; the input above tracks its edits
    conda:
        CONDA_ENV
    log:
        log_path("ranked_export"),
    benchmark:
        bench_path("ranked_export")
    shell:
        "python -m pipeline.export --name {params.name:q} --folder {params.folder:q}"
        " --config {params.cfg:q} --from-export {input.manifest:q} --scores {input.scores:q}"
        " --rejects {params.rejects:q} --drop-bottom-fraction {params.drop_bottom}"
        " > {log:q} 2>&1"


rule report:
    """Static HTML review page: funnel, samples, histogram, bottom/top-k with reject toggles."""
    input:
        stage_manifests=[m for stage in PER_SHARD_STAGES for m in shard_manifests(stage)],
        dedup=f"{R}/clean/dedup.tsv",
        dataset=DATASET["manifest"],
        ranked=RANKED["manifest"],
        scores=f"{R}/rank/scores.tsv",
        histogram=f"{R}/rank/histogram.png",
        network=FINAL_NETWORK,  # its samples/ grids are done when it is
        rejects=rejects_input,
        code=stage_code("report"),
    output:
        html=f"{R}/report/index.html",
        provenance=f"{R}/provenance.tsv",
    params:
        cfg=stage_config("report"),
        name=config["name"],
        samples=f"{R}/finetune/samples",
        rejects=REJECTS,
    conda:
        CONDA_ENV
    log:
        log_path("report"),
    benchmark:
        bench_path("report")
    shell:
        "python -m pipeline.report --name {params.name:q} --dataset {input.dataset:q}"
        " --dedup {input.dedup:q} --ranked {input.ranked:q} --scores {input.scores:q}"
        " --histogram {input.histogram:q} --samples {params.samples:q}"
        " --rejects {params.rejects:q} --output {output.html:q}"
        " --provenance {output.provenance:q} --config {params.cfg:q}"
        " {input.stage_manifests:q} > {log:q} 2>&1"


rule ranked_dataset:
    """Target: the whole loop, from raw images to the ranked dataset and its report."""
    input:
        **RANKED,
        report=f"{R}/report/index.html",
