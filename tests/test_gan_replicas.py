"""Several replicas: the MirroredStrategy path a multi-GPU machine takes, run on 2 logical CPU
devices (FACEPREP_CPU_REPLICAS=2, set before TensorFlow starts, so in its own process), trains
the same network as one replica at the same global batch.

What "the same" means. Every random draw (latents, style mixing, noise inputs, augmentation,
path-length noise) is made over the global batch from (seed, step) and each replica keeps its
rows of it; replica r holds the global rows r, r + 2, r + 4, ... of the fakes and, reordered by
the data pipeline, of the reals. Minibatch-stddev groups are formed per replica, as NVIDIA does:
a replica with n = batch / replicas images and group size g = min(4, n) groups its local rows
j, j + n/g, ...; in global rows those are exactly the groups a single replica with group size g
forms on the whole batch (global row i is in group i mod (batch / g) on both sides). So at
batch 8 on 2 replicas (n = 4) the single-replica run with the same group size 4 sees the same
groups; at batch 4 (n = 2) the per-replica group is 2 and the equal single-replica run is the
one with group size 2 (test_minibatch_stddev_groups_per_replica shows both and the contiguous
split that would not match). The path-length average follows the mean over all replicas, as
one replica's batch mean. Left: the order of float sums (the gradient all-reduce adds two
partial sums), so weights agree to a tolerance, not bit for bit.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO, square_testdata_pngs

from gan import checkpoint
from gan.networks import Discriminator, Generator
from gan.training_loop import interleave_for_replicas
from pipeline.export import write_tfrecords
from pipeline.rank import score_paths

RES = 16
ARCH = {"channel_base": 256, "channel_max": 32, "mapping_layers": 2, "latent_dim": 32}
# 8 minibatches of 8: lazy R1 and path-length regularization every 2nd, ADA p starting at 0.5
# and adjusted every 4th (its speed makes each adjustment 0.032), EMA with ramp-up
CFG = {**ARCH, "batch": 8, "mixed_precision": False, "r1_interval": 2, "pl_weight": 2.0,
       "pl_interval": 2, "ada_target": 0.6, "ada_kimg": 1, "ema_kimg": 0.01, "kimg": 0.064,
       "tick_kimg": 0.032, "snapshot_kimg": 1, "mirror": True}
TICK = re.compile(r"^tick \d+\s+kimg\s+([\d.]+) / [\d.]+\s+sec/kimg\s+\S+\s+loss_g (\S+)\s+"
                  r"loss_d (\S+)\s+r1 (\S+)\s+augment_p (\S+)", re.M)
# Measured on this run (8 minibatches, tensorflow-cpu 2.21): losses agree to the 4 digits
# printed; weights moved by 8e-3 (D) and 3e-3 (G) at the median, and 1 and 2 replicas differ by
# 2.4e-6 (D) / 4.8e-7 (G) at the median, 9.5e-5 at the 99.9th percentile and 2.5e-4 at most.
# Adam turns a rounding-level gradient difference near zero into up to a full lr-sized step, so
# the bound on every weight is half of one step at lr 0.002; the median bound is 1000x below
# the median movement.
WEIGHT_ATOL = 1e-3
WEIGHT_MEDIAN_ATOL = 1e-5
RANK_CFG = {"method": "mean_logit", "group_size": 4, "shuffles": 2, "mirror": True, "seed": 0,
            "batch": 8, "knn_k": 3}

RANK_SCRIPT = """
import json, sys
import tensorflow as tf
from gan.training_loop import select_devices, setup_devices
from gan import checkpoint
from pipeline.rank import score_paths
from util.config import with_defaults
strategy, _ = setup_devices(with_defaults("finetune", {"seed": 0, "mixed_precision": False}))
assert strategy.num_replicas_in_sync == 2, strategy
with strategy.scope():                      # D's variables mirrored on both devices
    _, D, _, _ = checkpoint.load_network(sys.argv[1])
scores, _ = score_paths(D, json.loads(sys.argv[2]), json.loads(sys.argv[3]), progress=False)
print("SCORES", json.dumps(scores.tolist()))
"""


def env(replicas: int) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2",
            "FACEPREP_CPU_REPLICAS": str(replicas)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same training from the same start snapshot (augment p 0.5), on 1 and on 2 replicas,
    through the real `python -m gan.train`."""
    root = tmp_path_factory.mktemp("replicas")
    rows = square_testdata_pngs(root / "data", RES)
    write_tfrecords(rows, root / "tfrecords", "tiny")
    G = Generator(RES, **ARCH, seed=3)
    D = Discriminator(RES, **{k: ARCH[k] for k in ("channel_base", "channel_max")}, seed=4)
    start = root / "start.npz"
    checkpoint.save_network(start, G, D, checkpoint.clone_network(G, name="Gs"),
                            {"cur_nimg": 0, "kimg": 0.0, "augment_p": 0.5})
    out = {"paths": [str(r.path) for r in rows]}
    for replicas in (1, 2):
        run_dir = root / f"r{replicas}"
        cmd = [sys.executable, "-m", "gan.train", "--data", str(root / "tfrecords"), "--run-dir",
               str(run_dir), "--config", json.dumps({**CFG, "resume": str(start)}),
               "--output", str(run_dir / "network-final.npz")]
        proc = subprocess.run(cmd, cwd=REPO, env=env(replicas), capture_output=True, text=True,
                              timeout=600)
        log = proc.stdout + proc.stderr
        assert proc.returncode == 0, log[-3000:]
        out[replicas] = (log, run_dir / "network-final.npz")
    return out


def test_console_says_how_many_replicas_run(runs):
    assert "; 1 replica(s) on CPU:0;" in runs[1][0]
    assert "; 2 replica(s) (MirroredStrategy) on CPU:0, CPU:1;" in runs[2][0]
    assert "on 4 fakes per replica" in runs[1][0] and "on 2 fakes per replica" in runs[2][0]


def test_two_replicas_train_what_one_replica_trains(runs):
    ticks = {r: TICK.findall(runs[r][0]) for r in (1, 2)}
    assert len(ticks[1]) == len(ticks[2]) == 2
    for one, two in zip(ticks[1], ticks[2]):
        assert one[0] == two[0]
        np.testing.assert_allclose([float(v) for v in two[1:4]], [float(v) for v in one[1:4]], rtol=1e-3)
        assert one[4] == two[4]                      # ADA p: the same r_t, the same adjustments
    metas = {r: checkpoint.read_meta(runs[r][1])["extra"] for r in (1, 2)}
    assert any(t[4] != "0.5000" for t in ticks[1])                 # p moved (0.5 -> 0.532 -> 0.5)
    assert metas[1]["augment_p"] == metas[2]["augment_p"]
    assert metas[1]["pl_mean"] > 0
    np.testing.assert_allclose(metas[2]["pl_mean"], metas[1]["pl_mean"], rtol=1e-5)
    nets = {r: checkpoint.load_network(runs[r][1]) for r in (1, 2)}
    start = checkpoint.load_network(runs[1][1].parent.parent / "start.npz")
    for i, name in enumerate(("G", "D", "Gs")):
        one, two = nets[1][i].named_variables(), nets[2][i].named_variables()
        moved = np.concatenate([np.abs(one[k].numpy() - start[i].named_variables()[k].numpy()).ravel()
                                for k in one])
        diff = np.concatenate([np.abs(two[k].numpy() - one[k].numpy()).ravel() for k in one])
        assert np.median(moved) > 100 * WEIGHT_MEDIAN_ATOL, name    # training moved the weights...
        assert np.median(diff) < WEIGHT_MEDIAN_ATOL, name           # ...the same way on both
        for key in one:
            np.testing.assert_allclose(two[key].numpy(), one[key].numpy(), atol=WEIGHT_ATOL,
                                       err_msg=f"{name} {key}")
    # w_avg (truncation centre) and EMA: Gs differs from G, equally on both
    assert not np.allclose(nets[1][2].named_variables()["G_synthesis/4x4/Conv/weight"].numpy(),
                           nets[1][0].named_variables()["G_synthesis/4x4/Conv/weight"].numpy())


def test_rank_under_the_strategy_gives_the_same_scores(runs):
    """Scores of the 2-replica network, ranked in a 2-replica process with its D mirrored, equal
    those of the 1-replica network ranked in this (plain) process: same order, close values."""
    paths = runs["paths"]
    cfg = {k: v for k, v in RANK_CFG.items() if k != "batch"}
    _, D, _, _ = checkpoint.load_network(runs[1][1])
    plain, _ = score_paths(D, paths, {**cfg, "batch": RANK_CFG["batch"]}, progress=False)
    proc = subprocess.run([sys.executable, "-c", RANK_SCRIPT, str(runs[2][1]), json.dumps(paths),
                           json.dumps({**cfg, "batch": RANK_CFG["batch"]})],
                          cwd=REPO, env=env(2), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    mirrored = np.asarray(json.loads(re.search(r"^SCORES (.+)$", proc.stdout, re.M).group(1)))
    assert plain.shape == mirrored.shape == (RANK_CFG["shuffles"], len(paths))
    np.testing.assert_allclose(mirrored, plain, atol=1e-3)
    assert list(np.argsort(mirrored.mean(0))) == list(np.argsort(plain.mean(0)))


def test_minibatch_stddev_groups_per_replica():
    """Per-replica D logits, reassembled in global row order, equal the single-replica D's when
    replica r holds rows r::replicas (interleave_for_replicas), with group size min(4, n)."""
    images = tf.random.stateless_uniform([8, RES, RES, 3], seed=[1, 2], minval=-1, maxval=1)
    d4 = Discriminator(RES, channel_base=256, channel_max=32, seed=4)
    whole = d4(images).numpy()

    def per_replica(D, x, replicas):
        """What the replicas compute, put back in global row order."""
        local = tf.split(interleave_for_replicas(x, replicas), replicas)  # the contiguous hand-out
        out = np.zeros(len(x), np.float32)
        for r, part in enumerate(local):
            out[r::replicas] = D(part).numpy()
        return out

    np.testing.assert_allclose(per_replica(d4, images, 2), whole, atol=1e-6)   # n = 4, group 4
    # contiguous halves (no interleaving) group other images: the logits differ
    contiguous = np.concatenate([d4(images[:4]).numpy(), d4(images[4:]).numpy()])
    assert np.abs(contiguous - whole).max() > 1e-4   # 100x the tolerance above
    # n = 2 < 4: each replica's group is its 2 images; the equal single run has group size 2
    d2 = Discriminator(RES, channel_base=256, channel_max=32, mbstd_group_size=2, seed=4)
    four = images[:4]
    np.testing.assert_allclose(per_replica(d4, four, 2), d2(four).numpy(), atol=1e-6)
    assert np.abs(per_replica(d4, four, 2) - d4(four).numpy()).max() > 1e-4
