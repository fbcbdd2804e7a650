# Shared helpers for every rule file: config validation, paths, shards, the python call.
import json
import shlex
import sys
from pathlib import Path

from snakemake.utils import min_version, validate

min_version("9.0")

validate(config, schema="../schemas/config.schema.yaml")

BASE = Path(workflow.basedir)
sys.path.insert(0, str(BASE))
from pipeline.ingest import list_raw_dir, write_shard_listings  # noqa: E402

# Every stage runs as `python -m pipeline.<stage>` with this interpreter and package root,
# so tests may run the workflow from any --directory.
PY = f"PYTHONPATH={shlex.quote(str(BASE))} {shlex.quote(sys.executable)}"

R = f"{config['results_dir']}/{config['name']}"
SHARDS = [f"{i:0{len(str(config['shards'] - 1))}d}" for i in range(config["shards"])]


def stage_code(stage):
    """A stage's module as an input: editing it reruns that stage (checksum, not mtime)."""
    return str(BASE / "pipeline" / f"{stage}.py")


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


# The raw folder is listed at parse time; a shard's listing file is rewritten only when
# its (path, size, mtime) lines change, so untouched shards keep their mtime and are
# not redone.
write_shard_listings(list_raw_dir(config["raw_dir"]), f"{R}/listing", SHARDS)
