import math

LEVELS = range(int(math.log2(config["normalize"]["resolution"])), 1, -1)


def dataset_outputs(folder):
    """TFRecords for every level (NVIDIA layout), the manifest and, if asked, the ZIP."""
    outs = {
        "manifest": f"{folder}/manifest.tsv",
        "tfrecords": [f"{folder}/tfrecords/{config['name']}-r{lvl:02d}.tfrecords" for lvl in LEVELS],
    }
    if config["export"]["zip"]:
        outs["zip"] = f"{folder}/{config['name']}.zip"
    return outs


DATASET = dataset_outputs(f"{R}/export")
RANKED = dataset_outputs(f"{R}/ranked")


rule export:
    """Gather: every normalized, non-duplicate image -> TFRecords (+ ZIP), deterministic."""
    input:
        manifests=shard_manifests("normalize"),
        dedup=f"{R}/clean/dedup.tsv",
        code=stage_code("export"),
    output:
        **DATASET,
    params:
        cfg=stage_config("export"),
        name=config["name"],
        folder=f"{R}/export",
    log:
        log_path("export"),
    benchmark:
        bench_path("export")
    shell:
        "{PY} -m pipeline.export --name {params.name:q} --folder {params.folder:q}"
        " --config {params.cfg:q} --dedup {input.dedup:q} {input.manifests:q} > {log:q} 2>&1"


rule dataset:
    """Target: the exported dataset (no training)."""
    input:
        **DATASET,
