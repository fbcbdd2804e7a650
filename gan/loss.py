"""StyleGAN2 losses: non-saturating logistic G loss, logistic D loss, lazy R1, lazy path-length
regularization.

Functions return per-image values; the training step averages them over the global
batch (so MirroredStrategy replicas sum to the right mean).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import tensorflow as tf

from gan import ops


def generator_loss(fake_logits: tf.Tensor) -> tf.Tensor:
    """Non-saturating logistic loss: -log(sigmoid(D(G(z)))) = softplus(-D(G(z)))."""
    return tf.nn.softplus(-tf.cast(fake_logits, tf.float32))


def discriminator_loss(real_logits: tf.Tensor, fake_logits: tf.Tensor) -> tf.Tensor:
    """Logistic loss: softplus(D(fake)) + softplus(-D(real))."""
    return (tf.nn.softplus(tf.cast(fake_logits, tf.float32))
            + tf.nn.softplus(-tf.cast(real_logits, tf.float32)))


def r1_penalty(discriminate: Callable[[tf.Tensor], tf.Tensor], reals: tf.Tensor
               ) -> tuple[tf.Tensor, tf.Tensor]:
    """(||grad_x D(x)||^2 per real image, D(x)); gradients are taken w.r.t. the
    un-augmented reals even when ``discriminate`` augments (as stylegan2-ada does)."""
    with tf.GradientTape() as tape:
        tape.watch(reals)
        logits = tf.cast(discriminate(reals), tf.float32)
        total = tf.reduce_sum(logits)
    grads = tf.cast(tape.gradient(total, reals), tf.float32)
    return tf.reduce_sum(tf.square(grads), axis=[1, 2, 3]), logits


def lazy_r1_loss(penalty: tf.Tensor, gamma: float, interval: int) -> tf.Tensor:
    """R1 applied every ``interval`` minibatches, scaled by the interval to keep its
    strength (StyleGAN2's lazy regularization)."""
    return penalty * (gamma * 0.5 * interval)


def lazy_adam_args(lr: float, interval: int, beta1: float = 0.0, beta2: float = 0.99
                   ) -> dict:
    """Adam settings corrected for lazy regularization: with a regularization step every
    ``interval`` minibatches the optimizer runs interval+1 times per interval, so
    lr and betas are raised to mb_ratio = interval / (interval + 1)."""
    mb_ratio = interval / (interval + 1) if interval else 1.0
    return {"learning_rate": lr * mb_ratio, "beta_1": beta1 ** mb_ratio,
            "beta_2": beta2 ** mb_ratio, "epsilon": 1e-8}


# ---------------------------------------------------------------- path-length regularization
# StyleGAN2 config-f (training/loss.py G_logistic_ns_pathreg): for fakes g(w), the length of
# J_w^T y with y ~ N(0, I) / sqrt(H*W) should stay near its moving average a:
# penalty = (|J_w^T y| - a)^2, weight 2, every 4th minibatch (lazy), on batch / 2 fakes.

PL_CONFIG_F_CHANNEL_BASE = 16384   # config-f's fmap_base (16 << 10); config-e is 8 << 10


def pl_weight_for(cfg: dict, channel_base: int) -> float:
    """``pl_weight``: a number as given; ``auto`` = 2 for config-f sized networks, else 0 (off)."""
    weight = cfg["pl_weight"]
    if weight == "auto":
        return 2.0 if int(channel_base) >= PL_CONFIG_F_CHANNEL_BASE else 0.0
    return float(weight)


def path_lengths(synthesize: Callable[[tf.Tensor], tf.Tensor], ws: tf.Tensor, noise_seed,
                 replica=(0, 1)) -> tuple[tf.Tensor, tf.Tensor]:
    """(|J_w^T y| per image, images): ws [N, num_ws, w_dim]; y is seeded normal noise scaled
    by 1/sqrt(H*W) (this replica's rows of the global draw, gan.ops.draw_for_replica); the
    length is sqrt(mean over layers of the squared norm over w_dim).
    Differentiable (a nested tape), so a penalty on it trains the generator."""
    with tf.GradientTape() as tape:
        tape.watch(ws)
        images = tf.cast(synthesize(ws), tf.float32)
        height, width = images.shape[1], images.shape[2]
        noise = ops.draw_for_replica(ops.stateless_normal, tf.shape(images)[0], images.shape[1:],
                                     noise_seed, replica) / float(np.sqrt(height * width))
        total = tf.reduce_sum(images * noise)
    grads = tf.cast(tape.gradient(total, ws), tf.float32)
    return tf.sqrt(tf.reduce_mean(tf.reduce_sum(tf.square(grads), axis=2), axis=1)), images


def path_length_penalty(lengths: tf.Tensor, pl_mean: tf.Tensor, decay: float, batch_mean=None
                        ) -> tuple[tf.Tensor, tf.Tensor]:
    """((|J^T y| - a)^2 per image, a): a = pl_mean moved by ``decay`` toward the batch's mean
    length (``batch_mean``: the mean over all replicas; default this batch's); as in NVIDIA's
    code the gradient also flows through a's batch-mean part."""
    batch_mean = tf.reduce_mean(lengths) if batch_mean is None else batch_mean
    new_mean = pl_mean + decay * (batch_mean - pl_mean)
    return tf.square(lengths - new_mean), new_mean


def lazy_pl_loss(penalty: tf.Tensor, weight: float, interval: int) -> tf.Tensor:
    """The penalty applied every ``interval`` minibatches, scaled by the interval."""
    return penalty * (weight * interval)
