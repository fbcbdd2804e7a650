"""Path-length regularization (StyleGAN2 config-f) against a numerical Jacobian, and in training."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from gan import loss as loss_lib
from gan import ops
from gan.networks import Discriminator, Generator
from util.config import with_defaults
from gan.training_loop import Trainer

TINY = dict(resolution=8, num_channels=3, latent_dim=8, mapping_layers=1, channel_base=64, channel_max=8)


def test_path_lengths_match_a_finite_difference_jacobian():
    G = Generator(**TINY, seed=3)
    ws = tf.random.stateless_normal([2, G.num_ws, G.latent_dim], seed=[1, 2])
    synth = lambda w: G.synthesis(w, noise_mode="const")  # noqa: E731  (deterministic)
    seed = tf.constant([7, 9], tf.int64)
    lengths, images = loss_lib.path_lengths(synth, ws, seed)
    # the same y the function drew: N(0, 1) / sqrt(H * W), from gan.ops' Philox draws
    y = ops.stateless_normal(tf.shape(images), seed=seed).numpy() / np.sqrt(8 * 8)

    # J^T y by central differences of f(w) = <g(w), y>, one coordinate of w at a time
    eps = 1e-2
    L, C = G.num_ws, G.latent_dim
    basis = np.eye(L * C, dtype=np.float32).reshape(L * C, L, C) * eps
    for i in range(2):
        w = ws.numpy()[i]
        batch = np.concatenate([w + basis, w - basis])
        f = np.sum(synth(tf.constant(batch)).numpy().astype(np.float64) * y[i], axis=(1, 2, 3))
        grad = ((f[:L * C] - f[L * C:]) / (2 * eps)).reshape(L, C)
        numeric = np.sqrt(np.mean(np.sum(grad ** 2, axis=1)))
        assert lengths.numpy()[i] == pytest.approx(numeric, rel=1e-2)
        assert numeric > 1e-3   # a real signal, not two zeros agreeing


def test_penalty_moving_average_lazy_scaling_and_defaults():
    lengths = tf.constant([1.0, 2.0, 4.0])
    penalty, mean = loss_lib.path_length_penalty(lengths, tf.constant(0.5), 0.01)
    assert float(mean) == pytest.approx(0.5 + 0.01 * (7 / 3 - 0.5))
    np.testing.assert_allclose(penalty.numpy(), (lengths.numpy() - float(mean)) ** 2, rtol=1e-6)
    np.testing.assert_allclose(loss_lib.lazy_pl_loss(penalty, 2.0, 4).numpy(), penalty.numpy() * 8, rtol=1e-6)
    # on by default for config-f widths (fmap_base 16 << 10), off below; a number wins
    assert loss_lib.pl_weight_for({"pl_weight": "auto"}, 16384) == 2.0
    assert loss_lib.pl_weight_for({"pl_weight": "auto"}, 8192) == 0.0
    assert loss_lib.pl_weight_for({"pl_weight": 0.5}, 256) == 0.5
    cfg = with_defaults("finetune", {})
    defaults = (cfg["pl_weight"], cfg["pl_interval"], cfg["pl_decay"], cfg["pl_batch_shrink"])
    assert defaults == ("auto", 4, 0.01, 2)


def test_penalty_trains_mapping_and_synthesis():
    G = Generator(**TINY, seed=4)
    z = tf.random.stateless_normal([2, G.latent_dim], seed=[3, 3])
    with tf.GradientTape() as tape:
        ws = G.mapping(z)
        lengths, _ = loss_lib.path_lengths(lambda w: G.synthesis(w, noise_mode="const"), ws, [5, 5])
        penalty, _ = loss_lib.path_length_penalty(lengths, tf.constant(0.0), 0.01)
        total = tf.reduce_sum(penalty)
    named = G.named_variables()
    names = ["G_mapping/Dense0/weight", "G_synthesis/8x8/Conv1/weight", "G_synthesis/8x8/ToRGB/weight"]
    grads = tape.gradient(total, [named[n] for n in names])
    for name, g in zip(names, grads):
        assert g is not None and float(tf.reduce_max(tf.abs(g))) > 0, name


def test_trainer_runs_the_lazy_pl_step_and_tracks_its_mean():
    cfg = with_defaults("finetune", {"batch": 4, "pl_weight": 2.0, "pl_interval": 2, "r1_interval": 4,
                          "mixed_precision": False})
    G, D = Generator(**TINY, seed=1), Discriminator(8, 3, 64, 8, seed=2)
    Gs = Generator(**TINY, seed=1, name="Gs")
    trainer = Trainer(G, D, Gs, cfg, tf.distribute.get_strategy())
    assert trainer.pl_batch == 2 and trainer.pl_interval == 2
    reals = tf.random.stateless_uniform([4, 8, 8, 3], seed=[1, 1], minval=-1, maxval=1)
    before = G.named_variables()["G_synthesis/8x8/Conv1/weight"].numpy().copy()
    results = [trainer.step(reals, step, 0.0) for step in range(3)]
    assert results[1].pl_length is None
    first, second = float(results[0].pl_length), float(results[2].pl_length)
    assert first > 0 and second > 0
    expected = 0.01 * first
    expected += 0.01 * (second - expected)
    assert float(trainer.pl_mean.numpy()) == pytest.approx(expected, rel=1e-5)
    assert not np.array_equal(before, G.named_variables()["G_synthesis/8x8/Conv1/weight"].numpy())
    # Adam for G is corrected for the lazy step, as the R1 step corrects D's
    assert float(trainer.opt_g.learning_rate.numpy()) == pytest.approx(cfg["lr_g"] * 2 / 3)
