rule rank:
    """Discriminator score for every dataset image, averaged over reshuffled batches."""
    input:
        manifest=DATASET["manifest"],
        network=FINAL_NETWORK,
        code=stage_code("rank"),
    output:
        scores=f"{R}/rank/scores.tsv",
        histogram=f"{R}/rank/histogram.png",
    params:
        cfg=stage_config("rank"),
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=120,
    log:
        log_path("rank"),
    benchmark:
        bench_path("rank")
    shell:
        "{PY} -m pipeline.rank --manifest {input.manifest:q} --network {input.network:q}"
        " --output {output.scores:q} --histogram {output.histogram:q}"
        " --config {params.cfg:q} > {log:q} 2>&1"
