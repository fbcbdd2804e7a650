# Shared helpers for all rule files (config validation, paths, shards, the python call).
import json
import math
import os
import shlex
import sys
from pathlib import Path

from snakemake.utils import min_version, validate

min_version("9.0")

validate(config, schema="../schemas/config.schema.yaml")

BASE = Path(workflow.basedir)
sys.path.insert(0, str(BASE))
from pipeline.ingest import config_path_problem, list_raw_dir, write_shard_listings  # noqa: E402

# Every stage runs as `python -m pipeline.<stage>` with snakemake's own interpreter and the
# package root on PYTHONPATH, so the workflow runs from any --directory and any venv.
shell.prefix(
    f"export PATH={shlex.quote(str(Path(sys.executable).parent))}:$PATH"
    f" PYTHONPATH={shlex.quote(str(BASE))}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; "
)

# The software every rule needs (used with --use-conda; otherwise the current env).
CONDA_ENV = str(BASE / "environment.yml")

R = f"{config['results_dir']}/{config['name']}"
SHARDS = [f"{i:0{len(str(config['shards'] - 1))}d}" for i in range(config["shards"])]


def stage_code(stage):
    """A stage's module as an input: editing it reruns that stage (checksum, not mtime).

    local(): with a cluster's default storage provider the code stays on this machine.
    """
    return local(str(BASE / "pipeline" / f"{stage}.py"))


def gan_code(*modules):
    """gan/ modules as inputs (checksum-compared): editing one reruns the rules that run it."""
    return [local(str(BASE / "gan" / f"{m}.py")) for m in modules]


def stage_config(*blocks):
    """The config blocks a rule depends on, as a stable JSON param (params trigger reruns)."""
    picked = {b: config[b] for b in blocks}
    return json.dumps(picked if len(blocks) > 1 else picked[blocks[0]], sort_keys=True)


def log_path(stage, shard="all"):
    return f"{R}/logs/{stage}/{shard}.log"


def bench_path(stage, shard="all"):
    return f"{R}/benchmarks/{stage}/{shard}.tsv"


def shard_manifests(stage):
    return expand(f"{R}/{stage}/{{shard}}/manifest.tsv", shard=SHARDS)


def metadata_inputs(wildcards):
    return [f"{R}/ingest/metadata_decisions.tsv"] if config["ingest"]["metadata"] else []


def dataset_outputs(folder):
    """TFRecords for every level (NVIDIA layout), the manifest and, if asked, the ZIP."""
    levels = range(int(math.log2(config["normalize"]["resolution"])), 1, -1)
    outs = {
        "manifest": f"{folder}/manifest.tsv",
        "tfrecords": [f"{folder}/tfrecords/{config['name']}-r{lvl:02d}.tfrecords" for lvl in levels],
    }
    if config["export"]["zip"]:
        outs["zip"] = f"{folder}/{config['name']}.zip"
    return outs


# The review page's rejects file (optional).
REJECTS = config["rank"]["rejects"] or f"characters/{config['name']}.rejects.txt"


def rejects_input(wildcards):
    # optional: creating or editing the file reruns only the re-export and the report
    return [REJECTS] if Path(REJECTS).exists() else []


# Per-image stages in order; the report's funnel reads their shard manifests.
PER_SHARD_STAGES = ["ingest", "crop", "clean", "upscale", "normalize"] + (
    ["augment"] if config["augment"]["enabled"] else []
)

DATASET = dataset_outputs(f"{R}/export")
RANKED = dataset_outputs(f"{R}/ranked")


# Paths that cannot work together stop the run here with one line (issue 16).
_path_problem = config_path_problem(config, REJECTS)
if _path_problem:
    raise SystemExit(_path_problem)

# The raw folder is listed at parse time; a shard's listing file is rewritten only when
# its (path, size, mtime) lines change, so untouched shards keep their mtime and are
# not redone.
write_shard_listings(list_raw_dir(config["raw_dir"]), f"{R}/listing", SHARDS)
