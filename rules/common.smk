# Shared helpers for all rule files (config validation, paths, shards, the python call).
import json
import math
import os
import shlex
import sys
from pathlib import Path

import yaml

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

min_version("9.0")

BASE = Path(workflow.basedir)
sys.path.insert(0, str(BASE))
from pipeline.console import auto_shards, config_error  # noqa: E402
from pipeline.ingest import config_path_problem, list_raw_dir, write_shard_listings  # noqa: E402
from util.config import default_rejects  # noqa: E402


def stop_now(message):
    """End before any job with one line (snakemake's own wrapping would bury it)."""
    print(f"faceprep: {message}", file=sys.stderr)
    sys.exit(1)


# Our own check first: one line naming the key (and "did you mean"); snakemake's
# validate then fills in the defaults.
with open(BASE / "schemas" / "config.schema.yaml") as _f:
    # libyaml's loader where PyYAML has it: ~0.1 s of every snakemake start in pure Python
    _schema = yaml.load(_f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
# crop.method: the detectors registered in pipeline/crop.py (adding one is one class there)
from pipeline.crop import DETECTORS  # noqa: E402
_schema["properties"]["crop"]["properties"]["method"]["enum"] = sorted(DETECTORS)
_problem = config_error(config, _schema)
if _problem:
    stop_now(_problem)
validate(config, schema="../schemas/config.schema.yaml")

# Every stage runs as `python -m pipeline.<stage>` with snakemake's own interpreter and the
# package root on PYTHONPATH, so the workflow runs from any --directory and any venv.
shell.prefix(
    "set -euo pipefail; "  # snakemake's own strict mode, which a custom prefix replaces
    f"export PATH={shlex.quote(str(Path(sys.executable).parent))}:$PATH"
    f" PYTHONPATH={shlex.quote(str(BASE))}${{{{PYTHONPATH:+:$PYTHONPATH}}}}"
    # not a param: where the caches live changes no output, so moving them reruns nothing
    f" FACEPREP_CACHE_DIR={shlex.quote(os.path.abspath(config['cache_dir']))}; "
)

# The software every rule needs (used with --use-conda; otherwise the current env).
CONDA_ENV = str(BASE / "environment.yml")

R = f"{config['results_dir']}/{config['name']}"

# The review page's rejects file (optional).
REJECTS = config["rank"]["rejects"] or default_rejects(config["name"])

# Paths that cannot work together stop the run here with one line (issue 16).
_path_problem = config_path_problem(config, REJECTS)
if _path_problem:
    raise SystemExit(_path_problem)

# The raw folder is listed at parse time (seconds for 100k files).
RAW_FILES = list_raw_dir(config["raw_dir"])
if not RAW_FILES:
    stop_now(f"raw_dir {config['raw_dir']!r} holds no files: put the character's images there "
             "(sub-folders are searched too)")
if not any(Path(f[0]).suffix.lower().lstrip(".") in config["ingest"]["extensions"]
           and not (len(f) > 3 and f[3]) for f in RAW_FILES):  # f[3]: a listing problem
    stop_now(f"raw_dir {config['raw_dir']!r} holds {len(RAW_FILES)} "
             f"file{'s' if len(RAW_FILES) > 1 else ''} but none ends in "
             f"ingest.extensions ({', '.join(config['ingest']['extensions'])})")
# shards: auto picks from the number of raw files (1 below 100, at most 64).
N_SHARDS = auto_shards(len(RAW_FILES)) if config["shards"] == "auto" else config["shards"]
SHARDS = [f"{i:0{len(str(N_SHARDS - 1))}d}" for i in range(N_SHARDS)]

# Threads of each per-image job: the cores spread over the shards, so a small dataset in
# one shard still uses every core and many shards run a thread each. Not a param: the
# outputs do not depend on it. A cluster run has no --cores: each job asks for 2 CPUs.
try:
    SHARD_THREADS = max(1, -(-workflow.cores // N_SHARDS))
except WorkflowError:
    SHARD_THREADS = 2
# Threads of each whole-dataset writer that follows export (TFRecords, ZIP, the check page):
# a third of the cores each, at most 4, so the three run side by side; on 2 cores one each
# (asking for 4 ran them one after another, and TensorFlow's import alone is ~3.5 s). A
# cluster run has no --cores: each asks for 4 CPUs, its own allocation.
try:
    GATHER_THREADS = max(1, min(4, workflow.cores // 3))
except WorkflowError:
    GATHER_THREADS = 4


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


def stage_keys(stage, declared="config_keys"):
    """Exactly the config a stage reads, as its module declares it (``config_keys``, or
    another of its functions for a second rule), as a stable JSON param: editing any other
    key reruns nothing of it."""
    import importlib
    return json.dumps(getattr(importlib.import_module(f"pipeline.{stage}"), declared)(config), sort_keys=True)


def log_path(stage, shard="all"):
    return f"{R}/logs/{stage}/{shard}.log"


def bench_path(stage, shard="all"):
    return f"{R}/benchmarks/{stage}/{shard}.tsv"


def shard_manifests(stage):
    return expand(f"{R}/{stage}/{{shard}}/manifest.tsv", shard=SHARDS)


def metadata_inputs(wildcards):
    return [f"{R}/ingest/metadata_decisions.tsv"] if config["ingest"]["metadata"] else []


def dataset_outputs(folder, tfrecords=True):
    """TFRecords for every level (NVIDIA layout), the manifest and, if asked, the ZIP."""
    levels = range(int(math.log2(config["normalize"]["resolution"])), 1, -1)
    outs = {"manifest": f"{folder}/manifest.tsv"}
    if tfrecords:
        outs["tfrecords"] = [f"{folder}/tfrecords/{config['name']}-r{lvl:02d}.tfrecords"
                             for lvl in levels]
    if config["export"]["zip"]:
        outs["zip"] = f"{folder}/{config['name']}.zip"
    return outs


def rejects_input(wildcards):
    # optional: creating or editing the file reruns only the re-export and the report
    return [REJECTS] if Path(REJECTS).exists() else []


# ---------------------------------------------------------------- exact params
# Each rule's params are exactly the keys its stage reads (README "what reruns").


def after_dedup(pattern):
    """An input known once the dedup checkpoint ran. Every per-shard job after dedup uses
    it, so Snakemake re-plans each of them (not only upscale) after dedup and keeps the
    shards whose duplicates did not change."""
    def input_function(wildcards):
        checkpoints.dedup.get()  # defined in rules/clean.smk
        return pattern.format(shard=wildcards.shard)
    return input_function


# each shard's dedup drop rows (written by the dedup checkpoint, rules/clean.smk)
DEDUP_SHARDS = f"{R}/clean/dedup"
shard_duplicates = after_dedup(f"{DEDUP_SHARDS}/{{shard}}.tsv")


# Per-image stages in order; the report's funnel reads their shard manifests.
PER_SHARD_STAGES = ["ingest", "crop", "clean", "upscale", "normalize"] + (
    ["augment"] if config["augment"]["enabled"] else []
)

# R/export always has TFRecords rules can ask for (training reads them); the `dataset`
# target asks only when export.tfrecords is on. R/ranked has them only when it is on.
DATASET = dataset_outputs(f"{R}/export")
RANKED = dataset_outputs(f"{R}/ranked", config["export"]["tfrecords"])


# A shard's listing file is rewritten only when its (path, size, mtime) lines change, so
# untouched shards keep their mtime and are not redone.
write_shard_listings(RAW_FILES, f"{R}/listing", SHARDS)


# ---------------------------------------------------------------- training sets and cleaning rounds
# Training reads the curated set (the dataset minus the rejects file); with rank.rounds > 1
# round k+1 continues round k's network on what round k's ranking left (pipeline/rounds.py,
# rules/finetune.smk, rules/rank.smk). The last round writes the classic paths
# (finetune/network-final.npz, rank/scores.tsv); earlier rounds finetune/round-K/, rank/round-K/.
ROUNDS = config["rank"]["rounds"]
# rank.drop_below: each round also drops what its own network scored below it. Unset, the
# rules that read it keep their params and shell as before (nothing reruns); set, it is a
# param of each (its edits rerun them) and one more option of their shell.
DROP_BELOW = config["rank"]["drop_below"]
DROP_BELOW_PARAM = {} if DROP_BELOW is None else {"drop_below": DROP_BELOW}
DROP_BELOW_OPTION = "" if DROP_BELOW is None else " --drop-below {params.drop_below}"
FINAL_NETWORK = f"{R}/finetune/network-final.npz"
# rounds.py reads runs.py (which run a network is) and writes the sets' fingerprints
ROUNDS_CODE = [stage_code("rounds"), stage_code("export"), local(str(BASE / "gan" / "runs.py")),
               local(str(BASE / "util" / "fingerprint.py"))]


def training_set(folder):
    """A set training reads: manifest, TFRecords (every level: NVIDIA layout), fingerprint."""
    return {"manifest": f"{folder}/manifest.tsv", "tfrecords": dataset_outputs(folder)["tfrecords"],
            "fingerprint": f"{folder}/fingerprint.json"}


CURATED = training_set(f"{R}/curated")


def round_set(k):
    """The set round k trains on: the curated set, then what round k-1 left."""
    return CURATED if k == 1 else training_set(f"{R}/rounds/round-{k}")


def round_network(k):
    return FINAL_NETWORK if k == ROUNDS else f"{R}/finetune/round-{k}/network-final.npz"


def round_scores(k):
    return f"{R}/rank/scores.tsv" if k == ROUNDS else f"{R}/rank/round-{k}/scores.tsv"


def finetune_inputs(k):
    """Round k's training set, the network it continues (round k-1's), the code, the
    pretrained file (a missing one stops the run before it starts, with snakemake's message)."""
    def inputs(wildcards):
        k_ = int(wildcards.k) if k is None else k
        data = round_set(k_)
        return {"tfrecords": data["tfrecords"], "manifest": data["manifest"],
                **({"parent": round_network(k_ - 1)} if k_ > 1 else {}),
                "code": [local(str(p)) for p in sorted((BASE / "gan").glob("*.py"))],
                "pretrained": [config["finetune"]["pretrained"]] if config["finetune"]["pretrained"] else []}
    return inputs


