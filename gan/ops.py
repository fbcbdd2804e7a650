"""StyleGAN2 building blocks on stock TensorFlow ops, NHWC, no custom CUDA kernels.

Resampling follows NVIDIA's upfirdn_2d semantics (zero-insertion upsampling, padding, FIR
filtering, decimation) so that weights imported from TF1 pickles give the same images:
``upsample_conv_2d`` and ``conv_downsample_2d`` pad only once, like the fused TF1 ops, which
differs from "resample, then a SAME conv" at the borders.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

LRELU_ALPHA = 0.2
LRELU_GAIN = float(np.sqrt(2.0))  # keeps activations at unit variance after a leaky ReLU
RESAMPLE_KERNEL = (1, 3, 3, 1)


def fir_kernel(k) -> np.ndarray:
    """A 1-D kernel as its normalized 2-D outer product (a 2-D kernel is only normalized)."""
    k = np.asarray(k, dtype=np.float32)
    if k.ndim == 1:
        k = np.outer(k, k)
    return k / np.sum(k)


def upfirdn_2d(x: tf.Tensor, k: np.ndarray, up: int = 1, down: int = 1,
               pad0: int = 0, pad1: int = 0) -> tf.Tensor:
    """Zero-insert upsample by ``up``, pad (negative = crop), convolve with the 2-D FIR ``k``,
    keep every ``down``-th pixel. NHWC with static H, W, C."""
    _, height, width, channels = x.shape
    if up > 1:
        x = tf.reshape(x, [-1, height, 1, width, 1, channels])
        x = tf.pad(x, [[0, 0], [0, 0], [0, up - 1], [0, 0], [0, up - 1], [0, 0]])
        x = tf.reshape(x, [-1, height * up, width * up, channels])
    x = tf.pad(x, [[0, 0], [max(pad0, 0), max(pad1, 0)], [max(pad0, 0), max(pad1, 0)], [0, 0]])
    if pad0 < 0 or pad1 < 0:
        x = x[:, max(-pad0, 0):x.shape[1] - max(-pad1, 0), max(-pad0, 0):x.shape[2] - max(-pad1, 0), :]
    # depthwise_conv2d correlates; flipping makes it the true convolution upfirdn defines.
    taps = np.tile(np.asarray(k, np.float32)[::-1, ::-1, None, None], [1, 1, channels, 1])
    return tf.nn.depthwise_conv2d(x, tf.constant(taps, dtype=x.dtype), strides=[1, down, down, 1],
                                  padding="VALID")


def upsample_2d(x: tf.Tensor, k=RESAMPLE_KERNEL, factor: int = 2) -> tf.Tensor:
    kernel = fir_kernel(k) * (factor ** 2)
    p = kernel.shape[0] - factor
    return upfirdn_2d(x, kernel, up=factor, pad0=(p + 1) // 2 + factor - 1, pad1=p // 2)


def downsample_2d(x: tf.Tensor, k=RESAMPLE_KERNEL, factor: int = 2) -> tf.Tensor:
    kernel = fir_kernel(k)
    p = kernel.shape[0] - factor
    return upfirdn_2d(x, kernel, down=factor, pad0=(p + 1) // 2, pad1=p // 2)


def upsample_conv_2d(x: tf.Tensor, w: tf.Tensor, k=RESAMPLE_KERNEL, factor: int = 2) -> tf.Tensor:
    """Upsample by ``factor`` and convolve with ``w`` [kh, kw, in, out] (SAME-like output size)."""
    conv_size = int(w.shape[0])
    kernel = fir_kernel(k) * (factor ** 2)
    p = (kernel.shape[0] - factor) - (conv_size - 1)
    _, height, width, _ = x.shape
    out_channels = int(w.shape[3])
    # conv2d_transpose scatters with the kernel; flipping it makes the op a correlation on the
    # zero-inserted image, like tf.nn.conv2d (the TF1 fused op does the same).
    w_t = tf.transpose(w[::-1, ::-1], [0, 1, 3, 2])
    out_shape = tf.stack([tf.shape(x)[0], (height - 1) * factor + conv_size,
                          (width - 1) * factor + conv_size, out_channels])
    x = tf.nn.conv2d_transpose(x, tf.cast(w_t, x.dtype), out_shape, strides=[1, factor, factor, 1],
                               padding="VALID")
    x = tf.ensure_shape(x, [None, (height - 1) * factor + conv_size, (width - 1) * factor + conv_size,
                            out_channels])
    return upfirdn_2d(x, kernel, pad0=(p + 1) // 2 + factor - 1, pad1=p // 2 + 1)


def conv_downsample_2d(x: tf.Tensor, w: tf.Tensor, k=RESAMPLE_KERNEL, factor: int = 2) -> tf.Tensor:
    """Low-pass filter, then a strided VALID conv with ``w`` (output H/factor)."""
    conv_size = int(w.shape[0])
    kernel = fir_kernel(k)
    p = (kernel.shape[0] - factor) + (conv_size - 1)
    x = upfirdn_2d(x, kernel, pad0=(p + 1) // 2, pad1=p // 2)
    return tf.nn.conv2d(x, tf.cast(w, x.dtype), strides=[1, factor, factor, 1], padding="VALID")


def conv2d(x: tf.Tensor, w: tf.Tensor, up: bool = False, down: bool = False,
           k=RESAMPLE_KERNEL) -> tf.Tensor:
    if up:
        return upsample_conv_2d(x, w, k)
    if down:
        return conv_downsample_2d(x, w, k)
    return tf.nn.conv2d(x, tf.cast(w, x.dtype), strides=1, padding="SAME")


def bias_act(x: tf.Tensor, b: tf.Tensor, act: str = "linear", clamp: float | None = None) -> tf.Tensor:
    """Bias over the last axis, then identity or leaky ReLU (alpha 0.2, gain sqrt 2) as TF1."""
    x = x + tf.cast(b, x.dtype)
    if act == "lrelu":
        x = tf.nn.leaky_relu(x, alpha=LRELU_ALPHA) * tf.cast(LRELU_GAIN, x.dtype)
    elif act != "linear":
        raise ValueError(f"unknown activation {act!r}")
    if clamp is not None:
        x = tf.clip_by_value(x, -clamp, clamp)
    return x


def modulated_conv2d(x: tf.Tensor, w: tf.Tensor, styles: tf.Tensor, demodulate: bool = True,
                     up: bool = False, k=RESAMPLE_KERNEL) -> tf.Tensor:
    """StyleGAN2 modulated conv without grouped convolutions (runs on CPU).

    Scaling the input channels by the styles, convolving with the shared weight and scaling
    the outputs by the demodulation factor is equal to convolving with the per-sample
    modulated/demodulated weight (TF1's ``fused_modconv=False`` path).
    x [N, H, W, I], w [kh, kw, I, O] (runtime-scaled), styles [N, I] float32.
    """
    x = x * tf.cast(styles[:, None, None, :], x.dtype)
    x = conv2d(x, w, up=up, k=k)
    if demodulate:
        w32 = tf.cast(w, tf.float32)
        # sum over (kh, kw, I) of (w * s_I)^2 = s^2 @ sum_k w^2, in float32 even in fp16 layers
        d = tf.math.rsqrt(tf.matmul(tf.square(styles), tf.reduce_sum(tf.square(w32), axis=[0, 1])) + 1e-8)
        x = x * tf.cast(d[:, None, None, :], x.dtype)
    return x


def minibatch_stddev(x: tf.Tensor, group_size: int = 4, num_features: int = 1) -> tf.Tensor:
    """Append the mean stddev over groups of ``group_size`` samples as ``num_features`` maps.

    Samples ``g*M + m`` (g < group) form group m, as in TF1. The batch must be divisible by
    the group size, or smaller than it (then the whole batch is one group).
    """
    _, height, width, channels = x.shape
    batch = x.shape[0]
    if batch is not None:
        group = min(group_size, batch)
        if batch % group:
            raise ValueError(f"minibatch-stddev: batch {batch} is not divisible by the group size "
                             f"{group_size}")
    else:
        group = tf.minimum(group_size, tf.shape(x)[0])
    y = tf.reshape(x, [group, -1, height, width, num_features, channels // num_features])
    y = tf.cast(y, tf.float32)
    y -= tf.reduce_mean(y, axis=0, keepdims=True)
    y = tf.sqrt(tf.reduce_mean(tf.square(y), axis=0) + 1e-8)   # [M, H, W, n, c]
    y = tf.reduce_mean(y, axis=[1, 2, 4])                       # [M, n]
    y = tf.cast(tf.reshape(y, [-1, 1, 1, num_features]), x.dtype)
    y = tf.tile(y, [group, height, width, 1])
    return tf.concat([x, y], axis=3)


# Philox named, not "auto_select": TensorFlow's kernels pick Philox on CPU and GPU, XLA would
# pick ThreeFry, and then a jit-compiled step (xla: true) would draw other numbers.
RANDOM_ALG = "philox"
UNIFORM_BITS = 24   # float32's mantissa


def stateless_uniform(shape, seed, minval=0, maxval=None, dtype=tf.float32, alg=RANDOM_ALG) -> tf.Tensor:
    """tf.random.stateless_uniform, but float values are made from Philox integers: the
    integer draws are the same with and without XLA, TensorFlow's float ones were not (measured
    on tensorflow-cpu 2.21), and a jit-compiled step must see the numbers the plain one sees."""
    dtype = tf.as_dtype(dtype)
    if dtype.is_integer:
        return tf.random.stateless_uniform(shape, seed, minval, maxval, dtype=dtype, alg=alg)
    bits = tf.random.stateless_uniform(shape, seed, 0, 1 << UNIFORM_BITS, dtype=tf.int32, alg=alg)
    unit = (tf.cast(bits, tf.float32) + 0.5) * (1.0 / (1 << UNIFORM_BITS))   # in (0, 1)
    high = 1.0 if maxval is None else maxval
    return tf.cast(minval + unit * (high - minval), dtype)


def stateless_normal(shape, seed, alg=RANDOM_ALG) -> tf.Tensor:
    """Standard normal values by Box-Muller from two of ``stateless_uniform``'s draws."""
    u = stateless_uniform(tf.concat([[2], tf.cast(shape, tf.int32)], axis=0), seed, alg=alg)
    return tf.sqrt(-2.0 * tf.math.log(u[0])) * tf.cos(2.0 * np.pi * u[1])


def fold_in(seed, k) -> tf.Tensor:
    """A distinct stateless seed for draw ``k`` from ``seed`` (the same with and without XLA)."""
    return tf.random.experimental.stateless_fold_in(seed, k, alg=RANDOM_ALG)


def draw_for_replica(draw, n, shape, seed, replica=(0, 1), **kwargs) -> tf.Tensor:
    """This replica's ``n`` rows of a seeded draw over the global batch.

    ``draw`` (stateless_normal or stateless_uniform above) makes [n * replicas, *shape] from ``seed``;
    replica r keeps rows r, r + replicas, ... (the rows it holds of the global batch, see
    gan.training_loop). So every image gets the same latent, noise and augmentation
    whether one replica or several train on the batch. ``replica`` = (id, count).
    """
    index, count = replica
    values = draw(tf.stack([n * count, *shape]), seed=seed, alg=RANDOM_ALG, **kwargs)
    return values if count == 1 else values[index::count]
