# The clean block with near_duplicates.flips resolved (auto = finetune.mirror): only a
# change that changes flips reruns clean.
CLEAN_CONFIG = json.loads(stage_config("clean"))
if CLEAN_CONFIG["near_duplicates"]["flips"] == "auto":
    CLEAN_CONFIG["near_duplicates"]["flips"] = bool(config["finetune"]["mirror"])
CLEAN_CONFIG = json.dumps(CLEAN_CONFIG, sort_keys=True)


rule clean:
    """Per-image filters and hashes (size floors, monochrome, quality, pixel hash,
    perceptual hashes of the face and of its whole source picture)."""
    input:
        manifest=f"{R}/crop/{{shard}}/manifest.tsv",
        sources=f"{R}/ingest/{{shard}}/manifest.tsv",  # source file sizes (already upstream)
        code=stage_code("clean"),
    output:
        f"{R}/clean/{{shard}}/manifest.tsv",
    params:
        cfg=CLEAN_CONFIG,
    threads: 1
    conda:
        CONDA_ENV
    log:
        log_path("clean", "{shard}"),
    benchmark:
        bench_path("clean", "{shard}")
    shell:
        "python -m pipeline.clean shard --input {input.manifest:q} --sources {input.sources:q}"
        " --output {output:q}"
        " --config {params.cfg:q} --threads {threads} > {log:q} 2>&1"


rule dedup:
    """Gather: exact, source-level and near duplicates across all shards; keeps the best copy."""
    input:
        manifests=shard_manifests("clean"),
        code=stage_code("clean"),
    output:
        f"{R}/clean/dedup.tsv",
    params:
        cfg=CLEAN_CONFIG,
    conda:
        CONDA_ENV
    log:
        log_path("dedup"),
    benchmark:
        bench_path("dedup")
    shell:
        "python -m pipeline.clean dedup --output {output:q} --config {params.cfg:q}"
        " {input.manifests:q} > {log:q} 2>&1"
