# The per-image stages export gathers, for its console summary (each with its manifests).
SUMMARY_STAGES = ["upscale", "normalize"] + (["augment"] if config["augment"]["enabled"] else [])


rule export:
    """Gather: every normalized image (dedup's survivors) -> the dataset manifest (id order,
    ZIP index, TFRecord position). The files come from the rules below, so export.zip and
    export.tfrecords change only what asks for them (training reads the curated set's own
    TFRecords: rules/finetune.smk)."""
    input:
        manifests=shard_manifests(SUMMARY_STAGES[-1]),
        summarized=[m for stage in SUMMARY_STAGES[:-1] for m in shard_manifests(stage)],
        code=[stage_code("export"), stage_code("console")],
    output:
        manifest=DATASET["manifest"],
    params:
        cfg=json.dumps({"zip": False, "tfrecords": False}),  # files: rules tfrecords, zip
        name=config["name"],
        folder=lambda wildcards, output: os.path.dirname(output.manifest),
        stages=" ".join(f"{stage}={shlex.quote(m)}" for stage in SUMMARY_STAGES
                        for m in shard_manifests(stage)),
    conda:
        CONDA_ENV
    log:
        log_path("export"),
    benchmark:
        bench_path("export")
    shell:
        "python -m pipeline.export --name {params.name:q} --folder {params.folder:q}"
        " --config {params.cfg:q} {input.manifests:q} > {log:q} 2>&1;"
        " python -m pipeline.console summary {params.stages} export={output.manifest:q}"
        " 2>&1 | python -m pipeline.console tee --append {log:q}"


rule tfrecords:
    """The dataset as NVIDIA dataset_tool.py TFRecords (every level), from export's manifest."""
    input:
        manifest=DATASET["manifest"],
        code=stage_code("export"),
    output:
        DATASET["tfrecords"],
    params:
        name=config["name"],
        folder=lambda wildcards, input: os.path.dirname(input.manifest),
    threads: GATHER_THREADS  # worker processes decoding images and computing levels (pipeline/export.py)
    # the longest of the writers after export (TensorFlow's import alone is ~3.5 s): started
    # first, so on few cores the ZIP waits for a free core instead of TFRecords waiting
    priority: 1
    conda:
        CONDA_ENV
    log:
        log_path("tfrecords"),
    benchmark:
        bench_path("tfrecords")
    shell:
        "python -m pipeline.export --name {params.name:q} --folder {params.folder:q}"
        " --tfrecords-of {input.manifest:q} --threads {threads} > {log:q} 2>&1"


rule zip:
    """The dataset as a stylegan2-ada-pytorch / stylegan3 ZIP, from export's manifest."""
    input:
        manifest=DATASET["manifest"],
        code=stage_code("export"),
    output:
        f"{R}/export/{config['name']}.zip",
    params:
        name=config["name"],
        folder=lambda wildcards, input: os.path.dirname(input.manifest),
    threads: GATHER_THREADS  # worker processes decoding images and computing levels (pipeline/export.py)
    conda:
        CONDA_ENV
    log:
        log_path("zip"),
    benchmark:
        bench_path("zip")
    shell:
        "python -m pipeline.export --name {params.name:q} --folder {params.folder:q}"
        " --zip-of {input.manifest:q} --threads {threads} > {log:q} 2>&1"


rule dataset:
    """Target: the exported dataset (no training) and its check page; TFRecords and ZIP as
    export.tfrecords / export.zip say."""
    input:
        manifest=DATASET["manifest"],
        **({"zip": DATASET["zip"]} if "zip" in DATASET else {}),
        **({"tfrecords": DATASET["tfrecords"]} if config["export"]["tfrecords"] else {}),
        report=f"{R}/report/index.html",  # rules/report.smk: review before any GPU time
