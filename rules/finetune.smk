FINAL_NETWORK = f"{R}/finetune/network-final.npz"


rule finetune:
    """StyleGAN2 (TF2) fine-tuning on the exported TFRecords; resumes from the latest
    snapshot in results/<name>/finetune/snapshots/ (kept across reruns: not an output)."""
    input:
        tfrecords=DATASET["tfrecords"],
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
        "python -m gan.train --data {params.tfrecord_dir:q} --run-dir {params.run_dir:q}"
        " --config {params.cfg:q} --output {output:q} > {log:q} 2>&1"
