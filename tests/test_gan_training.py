"""gan/ training side: the TFRecord reader, losses, ADA, the training loop, resume after SIGKILL.

Data: real testdata images (photos and anime) at 16 px written by pipeline.export's own
TFRecord writer; networks: a CPU-sized StyleGAN2 (channel_base 256, latent 32).
"""
from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import yaml
from conftest import REPO, square_testdata_pngs
from PIL import Image

from gan import augment, checkpoint, legacy, loss
from gan.dataset import dataset_info, make_dataset, to_uint8
from gan.networks import Discriminator, Generator
from util.config import defaults, with_defaults
from gan.training_loop import (Trainer, build_networks, frozen_d_variables, pick_resume, setup_devices,
                               training_loop)
from pipeline.export import write_tfrecords

RES = 16
TINY = {"channel_base": 256, "channel_max": 32, "mapping_layers": 2, "latent_dim": 32, "batch": 4,
        "mixed_precision": False, "r1_interval": 4, "tick_kimg": 0.016, "snapshot_kimg": 0.032}
TICK = re.compile(r"^tick \d+\s+kimg\s+([\d.]+) / [\d.]+\s+sec/kimg\s+(\S+)\s+loss_g (\S+)\s+"
                  r"loss_d (\S+)\s+r1 (\S+)\s+augment_p (\S+)\s+eta \S+$", re.M)
SNAPSHOT = re.compile(r"network-snapshot-(\d{9})\.npz")


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    """14 real images (photos + anime), centre-cropped to 16 px, exported as NVIDIA TFRecords."""
    folder = tmp_path_factory.mktemp("gan_data")
    rows = square_testdata_pngs(folder, RES)
    pixels = [np.asarray(Image.open(r.path)) for r in rows]
    positions = write_tfrecords(rows, folder / "tfrecords", "tiny")
    return folder / "tfrecords", np.stack(pixels), positions


def test_reader_uses_top_level_and_round_trips_pixels(tiny_dataset):
    tfrecords, pixels, positions = tiny_dataset
    assert sorted(p.name for p in tfrecords.iterdir()) == [
        "tiny-r02.tfrecords", "tiny-r03.tfrecords", "tiny-r04.tfrecords"]
    info = dataset_info(tfrecords)
    assert (info.path.name, info.resolution, info.channels, info.num_images) == (
        "tiny-r04.tfrecords", RES, 3, len(pixels))
    batches = list(make_dataset(tfrecords, batch=len(pixels), mirror=False, shuffle=False, repeat=False))
    assert len(batches) == 1
    images = batches[0].numpy()
    assert images.shape == (len(pixels), RES, RES, 3) and images.dtype == np.float32
    assert images.min() >= -1.0 and images.max() <= 1.0
    for i, pos in enumerate(positions):    # record order is NVIDIA's shuffled order
        np.testing.assert_allclose(images[pos], pixels[i] / 127.5 - 1.0, atol=1e-6)
    np.testing.assert_array_equal(to_uint8(images).numpy()[positions], pixels)


def test_reader_shuffles_repeats_mirrors_deterministically(tiny_dataset):
    tfrecords, pixels, _ = tiny_dataset
    originals = {p.tobytes() for p in pixels}
    mirrored = {p[:, ::-1].tobytes() for p in pixels}

    def take(seed, mirror, n=12):
        ds = make_dataset(tfrecords, batch=4, mirror=mirror, seed=seed)
        return np.concatenate([to_uint8(b).numpy() for b in ds.take(n)])

    images = take(0, mirror=True)
    assert len(images) == 48 > len(pixels)                  # repeats past one epoch
    kinds = ["orig" if im.tobytes() in originals else "flip" if im.tobytes() in mirrored else "?"
             for im in images]
    assert "?" not in kinds and {"orig", "flip"} <= set(kinds)
    np.testing.assert_array_equal(images, take(0, mirror=True))             # same seed, same data
    assert not np.array_equal(images, take(1, mirror=True))
    assert all(im.tobytes() in originals for im in take(0, mirror=False))


def test_augment_identity_at_p0_random_at_p1_differentiable():
    x = tf.random.stateless_uniform([8, RES, RES, 3], seed=[1, 2], minval=-1, maxval=1)
    seed = tf.constant([3, 4], tf.int64)
    np.testing.assert_allclose(augment.augment(x, 0.0, seed).numpy(), x.numpy(), atol=1e-6)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = augment.augment(x, 1.0, seed)
        total = tf.reduce_sum(y * y)
    grad = tape.gradient(total, x)
    assert y.shape == x.shape and np.isfinite(y.numpy()).all()
    assert grad is not None and np.isfinite(grad.numpy()).all() and np.abs(grad.numpy()).sum() > 0
    changed = np.abs(y.numpy() - x.numpy()).reshape(8, -1).max(axis=1) > 1e-3
    assert changed.all()
    np.testing.assert_array_equal(y.numpy(), augment.augment(x, 1.0, seed).numpy())
    assert not np.array_equal(y.numpy(), augment.augment(x, 1.0, seed + 1).numpy())


def test_ada_p_moves_toward_target():
    ada = augment.AdaController(target=0.6, batch=4, interval=4, speed_kimg=1.0)
    for step in range(4):      # D calls every real "real": r_t = 1 > 0.6 -> more augmentation
        ada.accumulate(tf.constant(4.0), 4)
        p = ada.maybe_adjust(step)
    assert ada.last_rt == 1.0 and p == pytest.approx(4 * 4 / 1000)
    for step in range(4, 12):  # r_t = -0.5 < 0.6 -> less, clipped at 0
        ada.accumulate(tf.constant(-2.0), 4)
        p = ada.maybe_adjust(step)
    assert ada.last_rt == -0.5 and p == 0.0
    off = augment.AdaController(target=0.0, batch=4)
    off.accumulate(4.0, 4)
    assert not off.enabled and [off.maybe_adjust(s) for s in range(8)] == [0.0] * 8


def test_losses_and_lazy_regularization_settings():
    assert float(loss.generator_loss(tf.zeros([1]))[0]) == pytest.approx(math.log(2))
    assert float(loss.discriminator_loss(tf.zeros([1]), tf.zeros([1]))[0]) == pytest.approx(2 * math.log(2))
    w = tf.constant(np.random.RandomState(0).randn(1, 4, 4, 3), tf.float32)
    penalty, _ = loss.r1_penalty(lambda x: tf.reduce_sum(x * w, axis=[1, 2, 3]), tf.ones([2, 4, 4, 3]))
    np.testing.assert_allclose(penalty.numpy(), [np.sum(w.numpy() ** 2)] * 2, rtol=1e-5)
    assert float(loss.lazy_r1_loss(tf.constant(2.0), gamma=10.0, interval=16)) == pytest.approx(160.0)
    args = loss.lazy_adam_args(0.002, 16)
    ratio = 16 / 17
    assert args == pytest.approx({"learning_rate": 0.002 * ratio, "beta_1": 0.0,
                                  "beta_2": 0.99 ** ratio, "epsilon": 1e-8})
    assert loss.lazy_adam_args(0.002, 0)["learning_rate"] == 0.002


def test_config_defaults_come_from_schema_and_match_config_yaml():
    config = yaml.safe_load((REPO / "config.yaml").read_text())["finetune"]
    assert defaults("finetune") == config
    assert with_defaults("finetune", {"kimg": 2})["kimg"] == 2
    with pytest.raises(ValueError, match="kimgs"):
        with_defaults("finetune", {"kimgs": 2})


def test_freeze_d_selects_highest_resolution_blocks():
    D = Discriminator(RES, channel_base=256, channel_max=32)
    names = {v.ref(): n for n, v in D.named_variables().items()}
    top = {names[v.ref()] for v in frozen_d_variables(D, 1)}
    assert top == {n for n in D.named_variables() if n.startswith("16x16/")} and "16x16/FromRGB/weight" in top
    two = {names[v.ref()] for v in frozen_d_variables(D, 2)}
    assert two == top | {n for n in D.named_variables() if n.startswith("8x8/")}
    assert frozen_d_variables(D, 0) == []


def read_scalars(tb_dir: Path) -> dict[str, list[float]]:
    values: dict[str, list[float]] = {}
    for path in tb_dir.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for v in event.summary.value:
                values.setdefault(v.tag, []).append(float(tf.make_ndarray(v.tensor)))
    return values


@pytest.fixture
def op_determinism_restored():
    """training_loop turns on TF op determinism on CPU (process-wide); switch it back off
    afterwards so tests of other stages running later in this process are unaffected."""
    from tensorflow.python.framework import config as tf_config
    was_on = tf_config.is_op_determinism_enabled()
    yield
    if not was_on:
        tf_config.disable_op_determinism()


def test_training_from_pretrained_npz_with_freeze_d_and_ada(tiny_dataset, tmp_path, capsys,
                                                            op_determinism_restored):
    tfrecords, _, _ = tiny_dataset
    G = Generator(RES, latent_dim=32, mapping_layers=2, channel_base=256, channel_max=32, seed=1)
    D = Discriminator(RES, channel_base=256, channel_max=32, seed=2)
    pretrained = tmp_path / "pretrained.npz"
    checkpoint.save_network(pretrained, G, D, None, {"note": "a pretrained network"})
    run_dir, output = tmp_path / "finetune", tmp_path / "finetune" / "network-final.npz"
    cfg = with_defaults("finetune", {**TINY, "pretrained": str(pretrained), "kimg": 0.064, "freeze_d": 1,
                          "ada_target": 0.6, "ada_kimg": 0.1, "mirror": True, "truncation_psi": 0.5})
    summary = training_loop(tfrecords, run_dir, cfg, output)
    out = capsys.readouterr().out

    assert f"start: pretrained {pretrained}" in out
    ticks = TICK.findall(out)
    assert [t[0] for t in ticks] == ["0.016", "0.032", "0.048", "0.064"]
    for _, _, loss_g, loss_d, _, p in ticks:
        assert math.isfinite(float(loss_g)) and math.isfinite(float(loss_d)) and 0 <= float(p) <= 1
    assert summary["cur_nimg"] == 64

    snaps = run_dir / "snapshots"
    assert sorted(p.name for p in snaps.iterdir()) == [
        "network-snapshot-000000032-optim.npz", "network-snapshot-000000032.npz",
        "network-snapshot-000000064-optim.npz", "network-snapshot-000000064.npz"]
    for name in ("reals.png", "fakes-000000000.png", "fakes-000000032.png", "fakes-000000064.png"):
        with Image.open(run_dir / "samples" / name) as im:
            assert im.mode == "RGB" and im.width == 8 * RES
    scalars = read_scalars(run_dir / "tb")
    for tag in ("Loss/G", "Loss/D", "Loss/r1_penalty", "Progress/augment_p", "Timing/sec_per_kimg"):
        assert scalars.get(tag) and all(math.isfinite(v) for v in scalars[tag]), tag

    G2, D2, Gs2, extra = checkpoint.load_network(output)
    assert extra["cur_nimg"] == 64 and extra["training_config"]["freeze_d"] == 1
    assert 0.0 <= extra["augment_p"] <= 1.0
    before, after = D.named_variables(), D2.named_variables()
    for name, var in after.items():       # freeze-D: the 16x16 block is untouched, the rest trained
        same = np.array_equal(var.numpy(), before[name].numpy())
        assert same == name.startswith("16x16/"), name
    g_before = G.named_variables()
    assert not np.array_equal(G2.named_variables()["G_mapping/Dense0/weight"].numpy(),
                              g_before["G_mapping/Dense0/weight"].numpy())
    # Gs is the moving average: between the pretrained G and the trained G, equal to neither
    w = "G_synthesis/4x4/Conv/weight"
    assert not np.array_equal(Gs2.named_variables()[w].numpy(), G2.named_variables()[w].numpy())
    assert not np.array_equal(Gs2.named_variables()[w].numpy(), g_before[w].numpy())

    # which snapshot a restart would continue from
    latest = snaps / "network-snapshot-000000064.npz"
    assert pick_resume(run_dir, cfg, RES) == latest
    assert pick_resume(run_dir, {**cfg, "kimg": 10, "lr_g": 0.001}, RES) == latest   # budget/lr: continue
    assert pick_resume(run_dir, {**cfg, "channel_base": 512}, RES) is None     # another network
    assert pick_resume(run_dir, {**cfg, "pretrained": None}, RES) is None
    assert pick_resume(run_dir, cfg, 2 * RES) is None                          # another dataset size
    assert pick_resume(run_dir, {**cfg, "resume": "none"}, RES) is None
    first = snaps / "network-snapshot-000000032.npz"
    assert pick_resume(run_dir, {**cfg, "resume": str(first)}, RES) == first


def test_killed_training_resumes_from_latest_snapshot(tiny_dataset, tmp_path):
    """A real `python -m gan.train` from an NVIDIA-format TF1 pickle, killed with SIGKILL
    mid-run, continues from its newest snapshot when restarted; it does not start over."""
    tfrecords, _, _ = tiny_dataset
    G = Generator(RES, latent_dim=32, mapping_layers=2, channel_base=256, channel_max=32, seed=3)
    D = Discriminator(RES, channel_base=256, channel_max=32, seed=4)
    pickle_path = tmp_path / "pretrained-tf1.pkl"
    legacy.save_tf1_pickle(pickle_path, G, D, G)
    run_dir, output = tmp_path / "finetune", tmp_path / "finetune" / "network-final.npz"
    cfg = {**TINY, "kimg": 0.2, "tick_kimg": 0.032, "resume": "latest", "pretrained": str(pickle_path)}
    cmd = [sys.executable, "-m", "gan.train", "--data", str(tfrecords), "--run-dir", str(run_dir),
           "--config", json.dumps(cfg), "--output", str(output)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}

    def snapshot_folders():   # the run's folder (gan.runs): runs/<data fp>-<model>/snapshots
        return [p for p in run_dir.glob("runs/*/snapshots")
                if any(SNAPSHOT.fullmatch(f.name) for f in p.iterdir())]

    first_log = tmp_path / "first.log"
    with open(first_log, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 240
        while not snapshot_folders():
            assert proc.poll() is None, first_log.read_text()[-3000:]
            assert time.time() < deadline, "no snapshot within 240 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    first = first_log.read_text()
    assert f"start: pretrained {pickle_path}" in first
    assert not output.exists() and "done:" not in first
    snaps, = snapshot_folders()
    done = sorted(int(m.group(1)) for p in snaps.iterdir() if (m := SNAPSHOT.fullmatch(p.name)))
    assert done and 0 < done[-1] < 200

    second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    log = second.stdout + second.stderr
    assert second.returncode == 0, log[-3000:]
    m = re.search(r"^resume: \S+network-snapshot-(\d{9})\.npz at kimg ([\d.]+)", log, re.M)
    assert m, log[-3000:]
    assert int(m.group(1)) == done[-1] and float(m.group(2)) == pytest.approx(done[-1] / 1000)
    assert "start: scratch" not in log and "starts fresh" not in log and "not restored" not in log
    ticks = [float(t[0]) for t in TICK.findall(log)]
    assert ticks and ticks[0] > done[-1] / 1000 and ticks[-1] == 0.2    # kimg count continued
    assert all(math.isfinite(float(t[2])) for t in TICK.findall(log))
    extra = checkpoint.read_meta(output)["extra"]
    assert extra["cur_nimg"] == 200
    assert (snaps / "network-snapshot-000000200.npz").exists()


def test_mixed_precision_step_runs_and_updates(op_determinism_restored):
    """The GPU mixed-precision path (float16 high-res layers + loss scaling), run on CPU."""
    res = 8
    cfg = with_defaults("finetune", {**TINY, "mixed_precision": True})
    strategy, mixed = setup_devices(cfg)
    assert mixed
    G, D, Gs, _, how = build_networks(cfg, res, 3, None, mixed)
    assert how == "scratch" and D.init_kwargs["num_fp16_res"] == 4 and G.init_kwargs["conv_clamp"] == 256
    before = {n: v.numpy().copy() for n, v in D.named_variables().items()}
    trainer = Trainer(G, D, Gs, cfg, strategy, mixed)
    reals = tf.random.stateless_uniform([4, res, res, 3], seed=[5, 6], minval=-1, maxval=1)
    results = [trainer.step(reals, step, 0.0) for step in range(2)]
    assert results[0].r1 is not None and results[1].r1 is None          # lazy R1 on step 0 only
    for r in results:
        assert np.isfinite([float(r.g_loss), float(r.d_loss)]).all()
    changed = [n for n, v in D.named_variables().items() if not np.array_equal(v.numpy(), before[n])]
    assert len(changed) == len(before)


def test_pretrained_file_is_checked_against_its_sha256(tmp_path):
    import hashlib

    from gan.training_loop import verify_sha256
    model = tmp_path / "model.pkl"
    model.write_bytes(b"weights as downloaded")
    good = hashlib.sha256(model.read_bytes()).hexdigest()
    verify_sha256(str(model), None)           # no checksum configured: nothing to check
    verify_sha256(str(model), good.upper())   # hex case does not matter
    with pytest.raises(SystemExit, match="re-download"):
        verify_sha256(str(model), "0" * 64)
