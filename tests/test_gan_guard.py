"""The divergence guard: a real `python -m gan.train` whose learning rate is far too high stops
within one tick with one line naming the tick and the likely settings; it writes no snapshot
and no final network, and its last good snapshot stays the resume point."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
from conftest import REPO, square_testdata_pngs

from gan import checkpoint
from gan.training_loop import likely_setting, list_snapshots, pick_resume
from pipeline.export import write_tfrecords

RES = 16
TINY = {"channel_base": 256, "channel_max": 32, "mapping_layers": 2, "latent_dim": 32, "batch": 4,
        "mixed_precision": False, "r1_interval": 4, "tick_kimg": 0.016, "snapshot_kimg": 0.032,
        "resume": "latest"}
DIVERGED = re.compile(r"^diverged: non-finite (.+) at tick (\d+) \(kimg ([\d.]+)\); stopped, no snapshot "
                      r"written; likely setting: (.+); resume point stays (network-snapshot-\d{9}\.npz)$", re.M)


def train(tfrecords, run_dir, cfg):
    cmd = [sys.executable, "-m", "gan.train", "--data", str(tfrecords), "--run-dir", str(run_dir),
           "--config", json.dumps(cfg), "--output", str(run_dir / "network-final.npz")]
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout + proc.stderr


def test_huge_learning_rate_stops_within_a_tick_and_keeps_the_good_snapshot(tmp_path):
    rows = square_testdata_pngs(tmp_path / "data", RES)
    write_tfrecords(rows, tmp_path / "tfrecords", "tiny")
    run_dir = tmp_path / "finetune"
    # a sane first run: one snapshot at kimg 0.032 and the published final network
    rc, log = train(tmp_path / "tfrecords", run_dir, {**TINY, "kimg": 0.032})
    assert rc == 0, log[-3000:]
    (snaps,) = run_dir.glob("runs/*/snapshots")
    good = snaps / "network-snapshot-000000032.npz"
    assert [p for _, p in list_snapshots(snaps.parent)] == [good]
    published = (run_dir / "network-final.npz").read_bytes()

    # the same run continued with lr 1e6: Adam moves every weight by ~1e6 per step
    rc, log = train(tmp_path / "tfrecords", run_dir, {**TINY, "kimg": 0.128, "lr_g": 1e6, "lr_d": 1e6})
    assert rc == 3, log[-3000:]
    assert len(DIVERGED.findall(log)) == 1, log[-3000:]
    bad, tick, kimg, hint, resume = DIVERGED.search(log).groups()
    assert "loss_d" in bad and "D weights" in bad
    assert tick == "0" and float(kimg) == 0.048       # the first tick after resuming at 0.032
    assert "lr_g 1e+06 / lr_d 1e+06" in hint and "mixed precision" not in hint
    assert resume == good.name
    assert "done:" not in log and "snapshot:" not in log
    # nothing NaN was written: the good snapshot is still the only one, still finite, still
    # what `resume: latest` picks; the published network is untouched
    assert [p for _, p in list_snapshots(snaps.parent)] == [good]
    G, D, Gs, _ = checkpoint.load_network(good)
    for net in (G, D, Gs):
        assert all(np.isfinite(v.numpy()).all() for v in net.named_variables().values())
    run = json.loads((snaps.parent / "run.json").read_text())
    identity = {k: v for k, v in run.items() if k != "created"}
    assert pick_resume(snaps.parent, {**TINY, "resume": "latest"}, RES, identity) == good
    assert (run_dir / "network-final.npz").read_bytes() == published


def test_likely_setting_names_mixed_precision_and_the_regularizer_that_broke():
    cfg = {"lr_g": 0.002, "lr_d": 0.003, "r1_gamma": 10.0, "pl_weight": "auto"}
    assert likely_setting(["loss_g"], cfg, mixed=False) == "lr_g 0.002 / lr_d 0.003 (lower them)"
    hint = likely_setting(["r1", "pl_length"], cfg, mixed=True)
    assert hint.startswith("mixed precision (try mixed_precision: false); r1_gamma 10; pl_weight auto")
