rule rank:
    """Discriminator score for every dataset image, averaged over reshuffled batches."""
    input:
        manifest=DATASET["manifest"],
        network=FINAL_NETWORK,
        code=stage_code("rank"),
    output:
        scores=f"{R}/rank/scores.tsv",
    params:
        # only the keys that change scores: editing drop_bottom_fraction or the
        # rejects path reruns ranked_export, not this (GPU) job
        cfg=stage_keys("rank"),
    threads: 4
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=120,
    conda:
        CONDA_ENV
    log:
        log_path("rank"),
    benchmark:
        bench_path("rank")
    shell:
        "python -m pipeline.rank --manifest {input.manifest:q} --network {input.network:q}"
        " --output {output.scores:q}"
        " --config {params.cfg:q} > {log:q} 2>&1"
