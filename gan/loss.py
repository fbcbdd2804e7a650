"""StyleGAN2 losses: non-saturating logistic G loss, logistic D loss, lazy R1.

Functions return per-image values; the training step averages them over the global
batch (so MirroredStrategy replicas sum to the right mean).
"""
from __future__ import annotations

from typing import Callable

import tensorflow as tf


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
