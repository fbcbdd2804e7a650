# Training reads the curated set (the dataset minus the rejects file); with rank.rounds > 1
# round k+1 continues round k's network on what round k's ranking left (pipeline/rounds.py).
# The last round writes the classic paths (finetune/network-final.npz, rank/scores.tsv);
# earlier rounds write finetune/round-K/ and rank/round-K/.
rule curated:
    """The curated set: the dataset minus the rejects file (ids or source paths), exported as
    training reads it, with its manifest (every reject with its reason) and fingerprint."""
    input:
        manifest=DATASET["manifest"],
        rejects=rejects_input,  # creating or editing it retrains (one round_kimg continuation per round)
        code=ROUNDS_CODE,
    output:
        **CURATED,
    params:
        name=config["name"],
        folder=lambda wildcards, output: os.path.dirname(output.manifest),
        rejects=REJECTS,  # read only if it exists; the input above tracks its edits
    threads: 4
    conda:
        CONDA_ENV
    log:
        log_path("curated"),
    benchmark:
        bench_path("curated")
    shell:
        "python -m pipeline.rounds curated --dataset {input.manifest:q} --rejects {params.rejects:q}"
        " --folder {params.folder:q} --name {params.name:q} --threads {threads} > {log:q} 2>&1"


rule curated_zip:
    """The curated set as a stylegan2-ada-pytorch / stylegan3 ZIP (export.zip)."""
    input:
        manifest=CURATED["manifest"],
        code=stage_code("export"),
    output:
        f"{R}/curated/{config['name']}.zip",
    params:
        name=config["name"],
        folder=lambda wildcards, input: os.path.dirname(input.manifest),
    threads: 4
    conda:
        CONDA_ENV
    log:
        log_path("curated_zip"),
    shell:
        "python -m pipeline.export --name {params.name:q} --folder {params.folder:q}"
        " --zip-of {input.manifest:q} --threads {threads} > {log:q} 2>&1"


rule curated_dataset:
    """Target: the curated set's files (dataset minus rejects) without any training."""
    input:
        **CURATED,
        **({"zip": f"{R}/curated/{config['name']}.zip"} if config["export"]["zip"] else {}),


rule round_set:
    """What round k-1's ranking left: its set minus the worst drop_bottom_fraction and
    (rank.drop_below) what round k-1's network scored below the threshold."""
    input:
        previous=lambda w: round_set(int(w.k) - 1)["manifest"],
        scores=lambda w: round_scores(int(w.k) - 1),
        code=ROUNDS_CODE,
    output:
        **training_set(f"{R}/rounds/round-{{k}}"),
    wildcard_constraints:
        k=r"[2-9]|[1-9]\d+",
    params:
        name=config["name"],
        drop_bottom=config["rank"]["drop_bottom_fraction"],
        **DROP_BELOW_PARAM,
        previous_round=lambda w: int(w.k) - 1,
        folder=lambda wildcards, output: os.path.dirname(output.manifest),
    threads: 4
    conda:
        CONDA_ENV
    log:
        f"{R}/logs/round_set/round-{{k}}.log",
    shell:
        "python -m pipeline.rounds next --previous {input.previous:q} --scores {input.scores:q}"
        f" --round {{params.previous_round}} --drop-bottom-fraction {{params.drop_bottom}}{DROP_BELOW_OPTION}"
        " --folder {params.folder:q} --name {params.name:q} --threads {threads} > {log:q} 2>&1"


# the whole output goes to the log; which run, resume/warm start, warnings and the
# training ticks (kimg, sec/kimg, losses, ETA) also to the console while it runs
FINETUNE_SHELL = (
    "set -o pipefail; python -m gan.train --data {params.tfrecord_dir:q} --run-dir {params.run_dir:q}"
    " --manifest {input.manifest:q} --config {params.cfg:q} --output {output:q} --round {params.round}"
    " {params.parent} 2>&1"
    " | tee {log:q} | sed -un 's/^\\(run\\|start\\|resume\\|tick\\|warning\\|done\\|published\\)\\b/finetune: &/p' >&2"
)
FINETUNE_PARAMS = dict(
    cfg=stage_config("finetune"),
    tfrecord_dir=lambda wildcards, input: os.path.dirname(input.tfrecords[0]),
    parent=lambda wildcards, input: f"--parent {shlex.quote(input.parent)}" if "parent" in input.keys() else "",
)


rule finetune_round:
    """Cleaning round k < rank.rounds: StyleGAN2 (TF2) fine-tuning on round k's set (round 1:
    the curated set; round k: continues round k-1's network for round_kimg on what it left)."""
    input:
        unpack(finetune_inputs(None)),
    output:
        f"{R}/finetune/round-{{k}}/network-final.npz",
    wildcard_constraints:
        k=r"\d+",
    params:
        **FINETUNE_PARAMS,
        round=lambda w: int(w.k),
        # runs/ of every round and every rejects file live in R/finetune
        run_dir=lambda wildcards: f"{R}/finetune",
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=24 * 60,
    conda:
        CONDA_ENV
    log:
        f"{R}/logs/finetune/round-{{k}}.log",
    benchmark:
        f"{R}/benchmarks/finetune/round-{{k}}.tsv"
    shell:
        FINETUNE_SHELL


rule finetune:
    """The last cleaning round's fine-tuning (the only one with rank.rounds 1), in a run
    folder per training-set fingerprint + architecture + pretrained file + parent round
    (results/<name>/finetune/runs/<id>/, kept across reruns: not outputs); resumes that
    run's latest snapshot, else starts a new run warm-started per finetune.warm_start (or
    from the previous round). The output is a copy of the run's final network."""
    input:
        unpack(finetune_inputs(ROUNDS)),
    output:
        FINAL_NETWORK,
    params:
        **FINETUNE_PARAMS,
        round=ROUNDS,
        run_dir=lambda wildcards, output: os.path.dirname(output[0]),
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=24 * 60,
    conda:
        CONDA_ENV
    log:
        log_path("finetune"),
    benchmark:
        bench_path("finetune")
    shell:
        FINETUNE_SHELL
