"""ADA-style differentiable augmentation (a subset of stylegan2-ada's 'bgc' pipeline).

Every image the Discriminator sees (reals and fakes, in the G, D and R1 passes alike)
goes through the same pipeline; each transformation is applied to each image
independently with probability p: x-flip, 90-degree rotations, integer translation
(reflect padding), brightness, contrast, saturation. With p well below 1 the
augmentations do not leak into what G learns. All are differentiable in the pixels, so
G gets gradients through them. p is tuned during training toward a target for the
overfitting heuristic r_t = E[sign(D(real))] (`AdaController`).

Randomness is stateless (keyed on a seed tensor), so a step is reproducible and a
resumed run draws the same augmentations as an uninterrupted one.
"""
from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from gan import ops

# stylegan2-ada-pytorch's defaults for these transformations
TRANSLATE_MAX = 0.125        # of the image size
BRIGHTNESS_STD = 0.2
CONTRAST_STD = 0.5           # log2 scale
SATURATION_STD = 1.0         # log2 scale


def _seed(seed: tf.Tensor, k: int) -> tf.Tensor:
    """A distinct stateless seed per transformation, derived from the step's seed."""
    return ops.fold_in(seed, k)


def augment(images: tf.Tensor, p: tf.Tensor | float, seed: tf.Tensor, replica=(0, 1)) -> tf.Tensor:
    """Augment a NHWC batch in [-1, 1] (square images); ``seed`` is an int [2] tensor.
    Under several replicas (``replica`` = (id, count)) each image draws what it would in one
    replica's batch (gan.ops.draw_for_replica)."""
    def draw(fn, k, shape=(), **kwargs):
        return ops.draw_for_replica(fn, n, shape, _seed(seed, k), replica, **kwargs)

    def chosen(k):   # which images get transformation k, each with probability p
        return draw(ops.stateless_uniform, k) < p

    p = tf.cast(p, tf.float32)
    seed = tf.cast(seed, tf.int64)
    dtype = images.dtype
    x = tf.cast(images, tf.float32)
    n = tf.shape(x)[0]
    size = x.shape[1]
    if size != x.shape[2]:
        raise ValueError(f"augment needs square images, got {x.shape}")
    as4 = lambda v: tf.reshape(v, [-1, 1, 1, 1])  # noqa: E731

    # x-flip
    flip = chosen(0)
    x = tf.where(as4(flip), x[:, :, ::-1, :], x)

    # rotation by k * 90 degrees, k uniform in 0..3
    rotate = chosen(1)
    k = draw(ops.stateless_uniform, 2, maxval=4, dtype=tf.int32)
    k = tf.where(rotate, k, 0)
    # each image matches one k, so applying the three cases in turn rotates it once;
    # transposes and reversals (tf.image.rot90's, without its tf.cond: XLA cannot compile the
    # cond's gradient inside R1's double gradient)
    transposed = tf.transpose(x, [0, 2, 1, 3])
    x = tf.where(as4(k == 1), transposed[:, ::-1], x)
    x = tf.where(as4(k == 2), x[:, ::-1, ::-1, :], x)
    x = tf.where(as4(k == 3), transposed[:, :, ::-1], x)

    # integer translation with reflect padding
    max_shift = int(round(TRANSLATE_MAX * size))
    if max_shift > 0:
        translate = chosen(3)
        shift = draw(ops.stateless_uniform, 4, [2], minval=-max_shift,
                     maxval=max_shift + 1, dtype=tf.int32)
        shift = tf.where(translate[:, None], shift, 0)
        padded = tf.pad(x, [[0, 0], [max_shift, max_shift], [max_shift, max_shift], [0, 0]],
                        mode="REFLECT")
        base = tf.range(size)[None, :] + max_shift
        x = tf.gather(padded, base - shift[:, :1], axis=1, batch_dims=1)
        x = tf.gather(x, base - shift[:, 1:], axis=2, batch_dims=1)

    # brightness: add a per-image offset
    bright = tf.where(chosen(5),
                      draw(ops.stateless_normal, 6) * BRIGHTNESS_STD, 0.0)
    x = x + as4(bright)

    # contrast: scale around mid-grey (0 in [-1, 1])
    contrast = tf.where(chosen(7),
                        draw(ops.stateless_normal, 8) * CONTRAST_STD, 0.0)
    x = x * as4(tf.pow(2.0, contrast))

    # saturation: scale the distance from the grey (luma) axis of each pixel
    if x.shape[-1] == 3:
        sat = tf.where(chosen(9),
                       draw(ops.stateless_normal, 10) * SATURATION_STD, 0.0)
        grey = tf.reduce_mean(x, axis=-1, keepdims=True)
        x = grey + (x - grey) * as4(tf.pow(2.0, sat))
    return tf.cast(x, dtype)


class AdaController:
    """Adjusts the augmentation probability p toward ``target`` for r_t = E[sign(D(real))].

    As stylegan2-ada: every ``interval`` minibatches, p moves by
    sign(r_t - target) * (batch * interval) / (speed_kimg * 1000), clipped to [0, 1], so p
    can go from 0 to 1 in ``speed_kimg`` thousand images. The training step returns the
    sum of sign(D(real)) over its batch; it is accumulated here on the host (so the same
    code works across MirroredStrategy replicas).
    """

    def __init__(self, target: float, batch: int, interval: int = 4, speed_kimg: float = 500.0,
                 p: float = 0.0):
        self.target = float(target)
        self.batch = int(batch)
        self.interval = int(interval)
        self.speed_kimg = float(speed_kimg)
        self.p = float(p)
        self.last_rt = math.nan
        self._sign_sums: list = []
        self._count = 0

    @property
    def enabled(self) -> bool:
        return self.target > 0

    def accumulate(self, real_sign_sum, count: int) -> None:
        """``real_sign_sum``: sum of sign(D(real)) over ``count`` reals (a tensor is fine)."""
        self._sign_sums.append(real_sign_sum)
        self._count += count

    def maybe_adjust(self, step: int) -> float:
        """After minibatch ``step`` (0-based): adjust p every ``interval`` steps; returns p."""
        if self.enabled and (step + 1) % self.interval == 0 and self._count > 0:
            self.last_rt = float(sum(float(s) for s in self._sign_sums)) / self._count
            direction = float(np.sign(self.last_rt - self.target))
            self.p = min(max(self.p + direction * self.batch * self.interval
                             / (self.speed_kimg * 1000), 0.0), 1.0)
            self._sign_sums, self._count = [], 0
        return self.p
