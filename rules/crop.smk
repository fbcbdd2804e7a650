from pipeline.crop import ModelError, model_files  # noqa: E402

# The model files crop.method reads, resolved before the DAG is built: an input function
# that raises does not always stop a rerun (with the dedup checkpoint complete, Snakemake 9
# answered "Nothing to be done" to a pending crop edit; DESIGN.md).
try:
    CROP_MODEL_FILES = model_files(config["crop"], config["models"])
except ModelError as _e:
    stop_now(str(_e).removeprefix("faceprep: "))


rule crop:
    """Find faces (anime cascade, dlib + FFHQ alignment, or none) and cut square crops."""
    input:
        manifest=f"{R}/ingest/{{shard}}/manifest.tsv",
        # the model files crop.method reads, resolved as the stage resolves them (config ->
        # env var -> default): a changed file reruns crop, and only for the method that
        # reads it; a missing one stops the run before any job, saying how to get it
        models=CROP_MODEL_FILES,
        code=stage_code("crop"),
    output:
        f"{R}/crop/{{shard}}/manifest.tsv",
    params:
        # the crop keys and model paths the method reads (pipeline/crop.py config_keys)
        cfg=stage_keys("crop"),
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
        # param, moving it reruns nothing): a framing edit re-cuts without detecting; cut
        # faces stored per content + cut: added files leave the others' faces as they were
        " --config {params.cfg:q} --threads {threads}"
        " --detections \"$FACEPREP_CACHE_DIR/detections\" --cuts \"$FACEPREP_CACHE_DIR/cuts\""
        " > {log:q} 2>&1"
