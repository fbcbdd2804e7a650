# only the keys that change scores: editing drop_bottom_fraction or the rejects path
# reruns what comes after the ranking, not this (GPU) job
RANK_CFG = stage_keys("rank")
RANK_SHELL = (
    "status=0; python -m pipeline.rank --manifest {input.manifest:q} --network {input.network:q}"
    " --training-set {input.training_set:q} --output {output.scores:q}"
    " --config {params.cfg:q} > {log:q} 2>&1 || status=$?; grep '^warning: ' {log:q} >&2 || true; exit $status"
)


rule rank_round:
    """Cleaning round k < rank.rounds: round k's Discriminator scores every dataset image
    (averaged over reshuffled batches); the next round's set drops the worst of what is left."""
    input:
        manifest=DATASET["manifest"],
        network=lambda w: round_network(int(w.k)),
        training_set=lambda w: round_set(int(w.k))["manifest"],
        code=stage_code("rank"),
    output:
        scores=f"{R}/rank/round-{{k}}/scores.tsv",
    wildcard_constraints:
        k=r"\d+",
    params:
        cfg=RANK_CFG,
    threads: 4
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=120,
    conda:
        CONDA_ENV
    log:
        f"{R}/logs/rank/round-{{k}}.log",
    benchmark:
        f"{R}/benchmarks/rank/round-{{k}}.tsv"
    shell:
        RANK_SHELL


rule rank:
    """The last round's Discriminator score for every dataset image, averaged over
    reshuffled batches; scores.tsv's first line names the network's run and round."""
    input:
        manifest=DATASET["manifest"],
        network=FINAL_NETWORK,
        training_set=round_set(ROUNDS)["manifest"],
        code=stage_code("rank"),
    output:
        scores=f"{R}/rank/scores.tsv",
    params:
        # only the keys that change scores: editing drop_bottom_fraction or the
        # rejects path reruns ranked_export, not this (GPU) job
        cfg=RANK_CFG,
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
        RANK_SHELL


rule rounds:
    """Which step dropped each image (the rejects file or round K) and its score in every
    round (rank/rounds.tsv), and per round its network's run and what it trained on, for
    the page (report/rounds.js)."""
    input:
        dataset=DATASET["manifest"],
        sets=[round_set(k)["manifest"] for k in range(1, ROUNDS + 1)] + [RANKED["manifest"]],
        scores=[round_scores(k) for k in range(1, ROUNDS + 1)],
        networks=[round_network(k) for k in range(1, ROUNDS + 1)],
        code=ROUNDS_CODE,
    output:
        table=f"{R}/rank/rounds.tsv",
        page=f"{R}/report/rounds.js",
    params:
        **DROP_BELOW_PARAM,
    conda:
        CONDA_ENV
    log:
        log_path("rounds"),
    shell:
        "python -m pipeline.rounds table --dataset {input.dataset:q} --sets {input.sets:q}"
        " --scores {input.scores:q} --networks {input.networks:q} --output {output.table:q}"
        f" --page {{output.page:q}}{DROP_BELOW_OPTION} > {{log:q}} 2>&1"
