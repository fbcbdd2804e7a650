"""Fine-tune (or train) StyleGAN2 on the export stage's TFRecords.

    python -m gan.train --data results/holo/export/tfrecords --run-dir results/holo/finetune \\
        --config '{"kimg": 200, "batch": 8, "pretrained": "models/anime-512.pkl"}' \\
        --output results/holo/finetune/network-final.npz

`--config` is the `finetune:` block as JSON (or @file); keys it leaves out take the
defaults of schemas/config.schema.yaml. Each (dataset fingerprint, architecture,
pretrained file) trains in its own folder <run-dir>/runs/<id>/ (gan.runs); `--manifest`
(the export manifest) gives the fingerprint, else the top-level TFRecord file does.
Killed and restarted with `resume: latest`, it continues from the newest readable
snapshot of that run. New data starts a new run: warm-started from the previous final
network it trains `round_kimg` (a rejects edit costs one continuation), from the
pretrained file or scratch `kimg`. `--parent` (a cleaning round k > 1: round k-1's final
network) continues that network on the round's data for `round_kimg`.
"""
from __future__ import annotations

import argparse
import os

from util.config import load_config_arg, with_defaults


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="folder of <name>-rNN.tfrecords (top level is used)")
    p.add_argument("--run-dir", required=True, help="snapshots/, samples/, tb/ go here")
    p.add_argument("--config", required=True, help="the finetune config block as JSON or @file")
    p.add_argument("--output", required=True, help="final network (.npz, gan.checkpoint format)")
    p.add_argument("--manifest", help="the training set's manifest.tsv (dataset fingerprint: ids + image bytes)")
    p.add_argument("--round", type=int, default=1, help="the cleaning round this run is (rank.rounds)")
    p.add_argument("--parent", help="round k > 1: round k-1's final network, continued here")
    a = p.parse_args(argv)
    cfg = with_defaults("finetune", load_config_arg(a.config))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")   # keep TF's C++ INFO/WARNING out of the log
    from gan import runs
    from gan.dataset import dataset_info
    from gan.training_loop import select_devices, training_loop   # TensorFlow loads only when training
    select_devices(cfg)   # before TensorFlow's runtime starts (reading the data starts it)
    info = dataset_info(a.data)
    lines = runs.dataset_lines(a.manifest) if a.manifest else None
    fingerprint = (runs.fingerprint_of_lines(lines) if lines is not None
                   else runs.tfrecords_fingerprint(a.data))
    if fingerprint["images"] != info.num_images:
        raise SystemExit(f"finetune: {a.manifest} lists {fingerprint['images']} images but "
                         f"{info.path} holds {info.num_images}: they are not the same set")
    parent = runs.parent_run(a.parent) if a.parent else None
    run = runs.prepare_run(a.run_dir, cfg, fingerprint, info.resolution, info.channels,
                           parent=parent, round_=a.round, data_lines=lines)
    # the networks record what the run is, not when it began (run.json has that): the same
    # data and config give the same network bytes
    identity = {k: v for k, v in run.info.items() if k != "created"}
    # from the config now (an edited kimg or round_kimg continues the run to the new total)
    kimg = runs.target_kimg(cfg, run.info.get("warm_start") or {})
    training_loop(a.data, run.dir, {**cfg, "kimg": kimg}, run.final, run=identity)
    runs.publish(run, a.run_dir, a.output)
    print(f"published: {a.output} from run {run.id} (round {a.round})", flush=True)


if __name__ == "__main__":
    main()
