from pipeline.crop import model_files, used_models  # noqa: E402


rule crop:
    """Find faces (anime cascade, dlib + FFHQ alignment, or none) and cut square crops."""
    input:
        manifest=f"{R}/ingest/{{shard}}/manifest.tsv",
        # the model files crop.method reads, resolved as the stage resolves them (config ->
        # env var -> default): a changed file reruns crop, and only for the method that
        # reads it; a missing one stops the run before any job, saying how to get it
        models=lambda wildcards: model_files(config["crop"], config["models"]),
        code=stage_code("crop"),
    output:
        f"{R}/crop/{{shard}}/manifest.tsv",
    params:
        # only the model paths the method reads: moving a model it does not use reruns nothing
        cfg=lambda wildcards: json.dumps(
            {"crop": crop_keys(config["crop"]),
             "models": used_models(config["crop"], config["models"])},
            sort_keys=True,
        ),
    threads: SHARD_THREADS
    conda:
        CONDA_ENV
    log:
        log_path("crop", "{shard}"),
    benchmark:
        bench_path("crop", "{shard}")
    shell:
        "python -m pipeline.crop --input {input.manifest:q} --output {output:q}"
        # detections stored per file content + detector settings ($FACEPREP_CACHE_DIR: no
        # param, moving it reruns nothing): a framing edit re-cuts without detecting
        " --config {params.cfg:q} --threads {threads}"
        " --detections \"$FACEPREP_CACHE_DIR/detections\" > {log:q} 2>&1"
