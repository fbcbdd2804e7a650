rule ranked_export:
    """The ranked dataset: the last round's set minus its worst drop_bottom_fraction (and what
    its network scored below rank.drop_below), re-exported
    (the manifest lists every reject and every round's drops with its reason)."""
    input:
        previous=round_set(ROUNDS)["manifest"],
        scores=f"{R}/rank/scores.tsv",
        code=ROUNDS_CODE,
    output:
        **RANKED,
    params:
        cfg=stage_keys("export"),
        drop_bottom=config["rank"]["drop_bottom_fraction"],
        **DROP_BELOW_PARAM,
        name=config["name"],
        folder=lambda wildcards, output: os.path.dirname(output.manifest),
    threads: 4
    conda:
        CONDA_ENV
    log:
        log_path("ranked_export"),
    benchmark:
        bench_path("ranked_export")
    shell:
        "python -m pipeline.rounds next --previous {input.previous:q} --scores {input.scores:q}"
        f" --round {ROUNDS} --drop-bottom-fraction {{params.drop_bottom}}{DROP_BELOW_OPTION} --no-fingerprint"
        " --folder {params.folder:q} --name {params.name:q} --config {params.cfg:q}"
        " --threads {threads} > {log:q} 2>&1"


REPORT_CODE = [stage_code("report")] + [local(str(p)) for p in sorted((BASE / "pipeline" / "report_assets").iterdir())]
REPORT_PAGE = f"{R}/report/index.html"


rule report:
    """The review page before training (part of the dataset target): funnel, every drop
    with its reason, the dataset with each face over its source, the rejects file's ticks."""
    input:
        stage_manifests=[m for stage in PER_SHARD_STAGES for m in shard_manifests(stage)],
        dedup=f"{R}/clean/dedup.tsv",
        dataset=DATASET["manifest"],
        rejects=rejects_input,
        code=REPORT_CODE,
    output:
        html=REPORT_PAGE,
        data=f"{R}/report/check.js",
    params:
        # the thumbnail size and the thresholds its near misses show (pipeline/report.py config_keys)
        cfg=stage_keys("report"),
        name=config["name"],
        rejects=REJECTS,
    threads: GATHER_THREADS
    conda:
        CONDA_ENV
    log:
        log_path("report"),
    benchmark:
        bench_path("report")
    # stdout to the log; problems (stderr) to the log and the console; the thumbnail cache
    # (what each thumbnail was made from) is $FACEPREP_CACHE_DIR: no param, moving it reruns nothing
    shell:
        "python -m pipeline.report check --name {params.name:q} --dataset {input.dataset:q}"
        " --dedup {input.dedup:q} --rejects {params.rejects:q} --output {output.html:q}"
        " --config {params.cfg:q} --threads {threads} --cache \"$FACEPREP_CACHE_DIR/report/{params.name}\""
        " {input.stage_manifests:q}"
        " 2>&1 > {log:q} | tee -a {log:q} >&2"


rule report_ranking:
    """The ranking beside the page (scores in order, signals, verdicts, samples, whether the
    training is older than the dataset) and provenance.tsv."""
    input:
        page=REPORT_PAGE,
        stage_manifests=[m for stage in PER_SHARD_STAGES for m in shard_manifests(stage)],
        dedup=f"{R}/clean/dedup.tsv",
        dataset=DATASET["manifest"],
        ranked=RANKED["manifest"],
        scores=f"{R}/rank/scores.tsv",
        network=FINAL_NETWORK,  # its samples/ grids are done when it is
        training_set=round_set(ROUNDS)["manifest"],  # what that network trained on
        code=stage_code("report"),
    output:
        ranking=f"{R}/report/ranking.js",
        provenance=f"{R}/provenance.tsv",
    params:
        samples=f"{R}/finetune/samples",
    conda:
        CONDA_ENV
    log:
        log_path("report_ranking"),
    benchmark:
        bench_path("report_ranking")
    shell:
        "python -m pipeline.report ranking --dataset {input.dataset:q} --dedup {input.dedup:q}"
        " --ranked {input.ranked:q} --scores {input.scores:q} --network {input.network:q}"
        " --samples {params.samples:q} --output {output.ranking:q}"
        " --provenance {output.provenance:q} --training-set {input.training_set:q} {input.stage_manifests:q}"
        " 2>&1 > {log:q} | tee -a {log:q} >&2"


rule ranked_dataset:
    """Target: the whole loop, from raw images to the ranked dataset and its report."""
    input:
        **RANKED,
        report=REPORT_PAGE,
        ranking=f"{R}/report/ranking.js",
        rounds=f"{R}/report/rounds.js",  # what each cleaning round dropped (rank/rounds.tsv)
