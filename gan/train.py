"""Fine-tune (or train) StyleGAN2 on the export stage's TFRecords.

    python -m gan.train --data results/holo/export/tfrecords --run-dir results/holo/finetune \\
        --config '{"kimg": 200, "batch": 8, "pretrained": "models/anime-512.pkl"}' \\
        --output results/holo/finetune/network-final.npz

`--config` is the `finetune:` block as JSON (or @file); keys it leaves out take the
defaults of schemas/config.schema.yaml. Each (dataset fingerprint, architecture,
pretrained file) trains in its own folder <run-dir>/runs/<id>/ (gan.runs); `--manifest`
(the export manifest) gives the fingerprint, else the top-level TFRecord file does.
Killed and restarted with `resume: latest`, it continues from the newest readable
snapshot of that run; new data starts a new run that trains `kimg` on it.
"""
from __future__ import annotations

import argparse
import functools
import os
from pathlib import Path

import yaml

from pipeline.manifest import load_config_arg

SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"


@functools.cache
def finetune_defaults() -> dict:
    """The `finetune` defaults from the config schema (the one place they are written)."""
    schema = yaml.safe_load(SCHEMA.read_text())
    props = schema["properties"]["finetune"]["properties"]
    return {k: v["default"] for k, v in props.items() if "default" in v}


def resolve_config(cfg: dict) -> dict:
    unknown = set(cfg) - set(finetune_defaults())
    if unknown:
        raise ValueError(f"unknown finetune keys: {sorted(unknown)}")
    return {**finetune_defaults(), **cfg}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="folder of <name>-rNN.tfrecords (top level is used)")
    p.add_argument("--run-dir", required=True, help="snapshots/, samples/, tb/ go here")
    p.add_argument("--config", required=True, help="the finetune config block as JSON or @file")
    p.add_argument("--output", required=True, help="final network (.npz, gan.checkpoint format)")
    p.add_argument("--manifest", help="the export manifest.tsv (dataset fingerprint: ids + image bytes)")
    a = p.parse_args(argv)
    cfg = resolve_config(load_config_arg(a.config))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")   # keep TF's C++ INFO/WARNING out of the log
    from gan import runs
    from gan.dataset import dataset_info
    from gan.training_loop import select_devices, training_loop   # TensorFlow loads only when training
    select_devices(cfg)   # before TensorFlow's runtime starts (reading the data starts it)
    info = dataset_info(a.data)
    fingerprint = (runs.dataset_fingerprint(a.manifest) if a.manifest
                   else runs.tfrecords_fingerprint(a.data))
    run = runs.prepare_run(a.run_dir, cfg, fingerprint, info.resolution, info.channels)
    # the networks record what the run is, not when it began (run.json has that): the same
    # data and config give the same network bytes
    identity = {k: v for k, v in run.info.items() if k != "created"}
    training_loop(a.data, run.dir, cfg, run.final, run=identity)
    runs.publish(run, a.run_dir, a.output)
    print(f"published: {a.output} from run {run.id}", flush=True)


if __name__ == "__main__":
    main()
