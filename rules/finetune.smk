FINAL_NETWORK = f"{R}/finetune/network-final.npz"


rule finetune:
    """StyleGAN2 (TF2) fine-tuning on the exported TFRecords, in a run folder per dataset
    fingerprint + architecture + pretrained file (results/<name>/finetune/runs/<id>/, kept
    across reruns: not outputs); resumes that run's latest snapshot, else starts a new run
    warm-started per finetune.warm_start. The output is a copy of the run's final network."""
    input:
        tfrecords=DATASET["tfrecords"],
        manifest=DATASET["manifest"],  # ids + image bytes -> the run's data fingerprint
        code=[local(str(p)) for p in sorted((BASE / "gan").glob("*.py"))],
        # a missing pretrained file stops the run before it starts, with snakemake's message
        pretrained=[config["finetune"]["pretrained"]] if config["finetune"]["pretrained"] else [],
    output:
        FINAL_NETWORK,
    params:
        cfg=stage_config("finetune"),
        tfrecord_dir=lambda wildcards, input: os.path.dirname(input.tfrecords[0]),
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
        # the whole output goes to the log; which run, resume/warm start, warnings and the
        # training ticks (kimg, sec/kimg, losses, ETA) also to the console while it runs
        "set -o pipefail; python -m gan.train --data {params.tfrecord_dir:q} --run-dir {params.run_dir:q}"
        " --manifest {input.manifest:q} --config {params.cfg:q} --output {output:q} 2>&1"
        " | tee {log:q} | sed -un 's/^\\(run\\|start\\|resume\\|tick\\|warning\\|done\\|published\\)\\b/finetune: &/p' >&2"
