"""StyleGAN2 (config-e/f) generator and discriminator as tf.Modules, NHWC float32 images.

Architecture as NVIDIA's TF1 ``G_main``/``G_mapping``/``G_synthesis_stylegan2`` (skip
generator) and ``D_stylegan2`` (residual discriminator). Every variable is kept under its
TF1 name with its TF1 shape (``named_variables()``), stored at the equalized-learning-rate
scale (the runtime multiplier is applied on use), so TF1 pickles and our checkpoints are a
plain name -> array mapping. Layout-dependent variables keep TF1's NCHW shapes
(``G_synthesis/4x4/Const/const`` [1, C, 4, 4], ``G_synthesis/noiseK`` [1, 1, H, W], and the
discriminator's ``4x4/Dense0/weight`` whose rows follow NCHW flattening); they are
transposed on use.

Additions to the gan/ contract (all optional keyword arguments):
- ``Generator(..., mapping_lrmul=0.01, w_avg_beta=0.995, num_fp16_res=0, conv_clamp=None,
  seed=None)``, ``Discriminator(..., num_fp16_res=0, conv_clamp=None, seed=None)``:
  ``num_fp16_res`` runs the convolutions of that many highest resolutions (8x8 and up) in
  float16 (GPU mixed precision, stylegan2-ada style); ``conv_clamp`` (e.g. 256) clamps the
  output of every conv layer (ToRGB and D's 4x4 conv too, not D's skip or dense layers), as
  stylegan2-ada-pytorch does whenever it is set.
- ``G(z, ..., truncation_cutoff=None)``; ``noise_mode`` also accepts ``"none"``.
- ``D(images, training=False)``; ``D.variables_by_resolution()`` (for freeze-D);
  ``D.features(images)`` (the activations before minibatch-stddev, for ``pipeline.rank``).
- ``net.init_kwargs`` (constructor kwargs, JSON-able), ``net.assign_named(arrays)``
  (strict name/shape assignment used by checkpoints and the TF1 importer).
"""
from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from gan import ops


def channels_at(stage: int, channel_base: int, channel_max: int) -> int:
    """TF1 ``nf(stage)``; stage = log2(resolution) - 1 for a layer working at ``resolution``."""
    return int(min(int(channel_base / 2.0 ** stage), channel_max))


def _log2_resolution(resolution: int) -> int:
    log2 = int(round(math.log2(resolution))) if resolution > 0 else 0
    if resolution < 4 or 2 ** log2 != resolution:
        raise ValueError(f"resolution must be a power of two >= 4, got {resolution}")
    return log2


class _Network(tf.Module):
    """Variables by TF1 name, stored at init scale; ``_w`` returns them at runtime scale."""

    def __init__(self, name: str, init_kwargs: dict, seed: int | None):
        super().__init__(name=name)
        self.init_kwargs = dict(init_kwargs)
        self._rng = np.random.default_rng(seed)
        self._vars: dict[str, tf.Variable] = {}
        self._runtime_gain: dict[str, float] = {}

    def _add(self, name: str, shape, init: str = "normal", std: float = 1.0, gain: float = 1.0,
             trainable: bool = True) -> tf.Variable:
        if init == "normal":
            value = self._rng.standard_normal(shape).astype(np.float32) * np.float32(std)
        else:
            value = np.zeros(shape, np.float32)
        var = tf.Variable(value, name=name, trainable=trainable)
        self._vars[name] = var
        self._runtime_gain[name] = gain
        return var

    def _add_weight(self, name: str, shape, lrmul: float = 1.0) -> None:
        """Equalized learning rate: stored N(0, 1/lrmul), used times lrmul / sqrt(fan_in)."""
        fan_in = int(np.prod(shape[:-1]))
        self._add(name, shape, std=1.0 / lrmul, gain=lrmul / np.sqrt(fan_in))

    def _add_bias(self, name: str, size: int, lrmul: float = 1.0) -> None:
        self._add(name, [size], init="zeros", gain=lrmul)

    def _w(self, name: str, dtype=tf.float32) -> tf.Tensor:
        gain = self._runtime_gain[name]
        value = self._vars[name] if gain == 1.0 else self._vars[name] * gain
        return tf.cast(value, dtype) if dtype != tf.float32 else value

    def named_variables(self) -> dict[str, tf.Variable]:
        """{TF1 name: variable} with TF1 shapes, in TF1 creation order."""
        return dict(self._vars)

    def assign_named(self, arrays: dict, source: str = "arrays") -> None:
        """Assign every variable from ``arrays`` (name -> array); names and shapes must match
        exactly, otherwise raise listing what is missing, unexpected or mis-shaped."""
        ours = self._vars
        missing = sorted(set(ours) - set(arrays))
        unexpected = sorted(set(arrays) - set(ours))
        misshaped = sorted(f"{n}: {tuple(np.shape(arrays[n]))} != {tuple(ours[n].shape)}"
                           for n in set(ours) & set(arrays)
                           if tuple(np.shape(arrays[n])) != tuple(ours[n].shape))
        if missing or unexpected or misshaped:
            parts = []
            if missing:
                parts.append(f"missing {missing}")
            if unexpected:
                parts.append(f"unused {unexpected}")
            if misshaped:
                parts.append(f"shape mismatch {misshaped}")
            raise ValueError(f"{type(self).__name__}: {source} does not match the network "
                             f"({self.init_kwargs}): " + "; ".join(parts))
        for name, var in ours.items():
            var.assign(np.asarray(arrays[name], dtype=np.float32))

    def _layer_dtype(self, res_log2: int):
        """float16 in the ``num_fp16_res`` highest resolutions, never below 8x8 (as
        stylegan2-ada: the 4x4 layers stay float32)."""
        fp16 = res_log2 > self._res_log2 - self._num_fp16_res and res_log2 >= 3
        return tf.float16 if fp16 else tf.float32


class Generator(_Network):
    """StyleGAN2 generator: 8-layer mapping (lrmul 0.01, pixel norm), const 4x4 input,
    modulated/demodulated 3x3 convs with noise inputs, skip ToRGB outputs summed up."""

    def __init__(self, resolution: int, num_channels: int = 3, latent_dim: int = 512,
                 mapping_layers: int = 8, channel_base: int = 16384, channel_max: int = 512, *,
                 mapping_lrmul: float = 0.01, w_avg_beta: float = 0.995, num_fp16_res: int = 0,
                 conv_clamp: float | None = None, seed: int | None = None, name: str = "G"):
        kwargs = dict(resolution=resolution, num_channels=num_channels, latent_dim=latent_dim,
                      mapping_layers=mapping_layers, channel_base=channel_base,
                      channel_max=channel_max, mapping_lrmul=mapping_lrmul, w_avg_beta=w_avg_beta,
                      num_fp16_res=num_fp16_res, conv_clamp=conv_clamp)
        super().__init__(name, kwargs, seed)
        self.resolution = resolution
        self.num_channels = num_channels
        self.latent_dim = latent_dim
        self.mapping_layers = mapping_layers
        self.mapping_lrmul = mapping_lrmul
        self.w_avg_beta = w_avg_beta
        self.conv_clamp = conv_clamp
        self._num_fp16_res = num_fp16_res
        self._res_log2 = _log2_resolution(resolution)
        self.num_ws = 2 * self._res_log2 - 2
        nf = lambda stage: channels_at(stage, channel_base, channel_max)  # noqa: E731
        self._nf = nf

        for i in range(mapping_layers):
            self._add_weight(f"G_mapping/Dense{i}/weight", [latent_dim, latent_dim], lrmul=mapping_lrmul)
            self._add_bias(f"G_mapping/Dense{i}/bias", latent_dim, lrmul=mapping_lrmul)

        for i in range(self.num_ws - 1):  # one noise map per conv layer
            size = 2 ** ((i + 5) // 2)
            self._add(f"G_synthesis/noise{i}", [1, 1, size, size], trainable=False)
        self._add("G_synthesis/4x4/Const/const", [1, nf(1), 4, 4])
        self._add_modconv("G_synthesis/4x4/Conv", 3, nf(1), nf(1))
        self._add_torgb("G_synthesis/4x4/ToRGB", nf(1))
        for res in range(3, self._res_log2 + 1):
            scope = f"G_synthesis/{2 ** res}x{2 ** res}"
            self._add_modconv(f"{scope}/Conv0_up", 3, nf(res - 2), nf(res - 1))
            self._add_modconv(f"{scope}/Conv1", 3, nf(res - 1), nf(res - 1))
            self._add_torgb(f"{scope}/ToRGB", nf(res - 1))
        self.w_avg = self._add("dlatent_avg", [latent_dim], init="zeros", trainable=False)

    def _add_modconv(self, scope: str, kernel: int, fmaps_in: int, fmaps_out: int) -> None:
        self._add_weight(f"{scope}/weight", [kernel, kernel, fmaps_in, fmaps_out])
        self._add_weight(f"{scope}/mod_weight", [self.latent_dim, fmaps_in])
        self._add_bias(f"{scope}/mod_bias", fmaps_in)
        self._add(f"{scope}/noise_strength", [], init="zeros")
        self._add_bias(f"{scope}/bias", fmaps_out)

    def _add_torgb(self, scope: str, fmaps_in: int) -> None:
        self._add_weight(f"{scope}/weight", [1, 1, fmaps_in, self.num_channels])
        self._add_weight(f"{scope}/mod_weight", [self.latent_dim, fmaps_in])
        self._add_bias(f"{scope}/mod_bias", fmaps_in)
        self._add_bias(f"{scope}/bias", self.num_channels)

    # ------------------------------------------------------------------ mapping

    def mapping(self, z, truncation_psi=1.0, truncation_cutoff: int | None = None,
                update_w_avg: bool = False) -> tf.Tensor:
        """z [N, latent_dim] -> ws [N, num_ws, latent_dim]; optionally tracks ``w_avg``
        (TF1 ``dlatent_avg``, decay ``w_avg_beta``) and applies the truncation trick."""
        x = tf.cast(z, tf.float32)
        x = x * tf.math.rsqrt(tf.reduce_mean(tf.square(x), axis=1, keepdims=True) + 1e-8)
        for i in range(self.mapping_layers):
            x = ops.bias_act(tf.matmul(x, self._w(f"G_mapping/Dense{i}/weight")),
                             self._w(f"G_mapping/Dense{i}/bias"), act="lrelu")
        if update_w_avg:
            batch_avg = tf.reduce_mean(x, axis=0)
            self.w_avg.assign(batch_avg + (self.w_avg - batch_avg) * self.w_avg_beta)
        ws = tf.tile(x[:, None, :], [1, self.num_ws, 1])
        if not (isinstance(truncation_psi, (int, float)) and truncation_psi == 1):
            psi = tf.cast(truncation_psi, tf.float32)
            if truncation_cutoff is not None:
                layer = np.arange(self.num_ws)[None, :, None]
                psi = tf.where(layer < truncation_cutoff, psi, 1.0)
            ws = self.w_avg + (ws - self.w_avg) * psi
        return ws

    # ------------------------------------------------------------------ synthesis

    def _modconv_layer(self, x, w_layer, scope: str, noise_index: int, noise_mode: str,
                       up: bool, dtype, random_noise=None) -> tf.Tensor:
        styles = tf.matmul(w_layer, self._w(f"{scope}/mod_weight")) + self._w(f"{scope}/mod_bias") + 1.0
        x = ops.modulated_conv2d(tf.cast(x, dtype), self._w(f"{scope}/weight", dtype), styles, up=up)
        if noise_mode == "random" and random_noise is not None:
            noise = tf.cast(random_noise(noise_index, x.shape[1], x.shape[2]), dtype)
        elif noise_mode == "random":
            noise = tf.random.normal([tf.shape(x)[0], x.shape[1], x.shape[2], 1], dtype=dtype)
        elif noise_mode == "const":
            noise = tf.cast(tf.transpose(self._vars[f"G_synthesis/noise{noise_index}"], [0, 2, 3, 1]), dtype)
        elif noise_mode == "none":
            noise = None
        else:
            raise ValueError(f"noise_mode must be random, const or none, got {noise_mode!r}")
        if noise is not None:
            x = x + noise * self._w(f"{scope}/noise_strength", dtype)
        return ops.bias_act(x, self._w(f"{scope}/bias"), act="lrelu", clamp=self.conv_clamp)

    def _torgb(self, x, w_layer, scope: str, dtype) -> tf.Tensor:
        styles = tf.matmul(w_layer, self._w(f"{scope}/mod_weight")) + self._w(f"{scope}/mod_bias") + 1.0
        x = ops.modulated_conv2d(tf.cast(x, dtype), self._w(f"{scope}/weight", dtype), styles,
                                 demodulate=False)
        return ops.bias_act(tf.cast(x, tf.float32), self._w(f"{scope}/bias"), clamp=self.conv_clamp)

    def synthesis(self, ws, noise_mode: str = "random", random_noise=None) -> tf.Tensor:
        """ws [N, num_ws, latent_dim] -> images [N, res, res, num_channels] (about [-1, 1]).
        ``random_noise(layer, height, width)`` -> [N, height, width, 1], if given, supplies
        the random noise inputs (seeded ones in training) instead of tf.random.normal."""
        ws = tf.cast(ws, tf.float32)
        const = tf.transpose(self._vars["G_synthesis/4x4/Const/const"], [0, 2, 3, 1])
        x = tf.tile(const, [tf.shape(ws)[0], 1, 1, 1])
        dtype = self._layer_dtype(2)
        x = self._modconv_layer(x, ws[:, 0], "G_synthesis/4x4/Conv", 0, noise_mode, False, dtype,
                                random_noise)
        img = self._torgb(x, ws[:, 1], "G_synthesis/4x4/ToRGB", dtype)
        for res in range(3, self._res_log2 + 1):
            scope = f"G_synthesis/{2 ** res}x{2 ** res}"
            dtype = self._layer_dtype(res)
            x = self._modconv_layer(x, ws[:, 2 * res - 5], f"{scope}/Conv0_up", 2 * res - 5,
                                    noise_mode, True, dtype, random_noise)
            x = self._modconv_layer(x, ws[:, 2 * res - 4], f"{scope}/Conv1", 2 * res - 4,
                                    noise_mode, False, dtype, random_noise)
            img = ops.upsample_2d(img) + self._torgb(x, ws[:, 2 * res - 3], f"{scope}/ToRGB", dtype)
        return img

    def __call__(self, z, truncation_psi=1.0, noise_mode: str = "random", training: bool = False,
                 truncation_cutoff: int | None = None) -> tf.Tensor:
        """z -> images. ``training`` tracks w_avg and, as TF1, disables truncation."""
        if training:
            ws = self.mapping(z, update_w_avg=True)
        else:
            ws = self.mapping(z, truncation_psi, truncation_cutoff)
        return self.synthesis(ws, noise_mode=noise_mode)


class Discriminator(_Network):
    """StyleGAN2 residual discriminator with minibatch-stddev and a 4x4 epilogue."""

    def __init__(self, resolution: int, num_channels: int = 3, channel_base: int = 16384,
                 channel_max: int = 512, mbstd_group_size: int = 4, mbstd_num_features: int = 1, *,
                 num_fp16_res: int = 0, conv_clamp: float | None = None, seed: int | None = None,
                 name: str = "D"):
        kwargs = dict(resolution=resolution, num_channels=num_channels, channel_base=channel_base,
                      channel_max=channel_max, mbstd_group_size=mbstd_group_size,
                      mbstd_num_features=mbstd_num_features, num_fp16_res=num_fp16_res,
                      conv_clamp=conv_clamp)
        super().__init__(name, kwargs, seed)
        self.resolution = resolution
        self.num_channels = num_channels
        self.mbstd_group_size = mbstd_group_size
        self.mbstd_num_features = mbstd_num_features
        self.conv_clamp = conv_clamp
        self._num_fp16_res = num_fp16_res
        self._res_log2 = _log2_resolution(resolution)
        nf = lambda stage: channels_at(stage, channel_base, channel_max)  # noqa: E731

        top = f"{resolution}x{resolution}"
        self._add_weight(f"{top}/FromRGB/weight", [1, 1, num_channels, nf(self._res_log2 - 1)])
        self._add_bias(f"{top}/FromRGB/bias", nf(self._res_log2 - 1))
        for res in range(self._res_log2, 2, -1):
            scope = f"{2 ** res}x{2 ** res}"
            self._add_weight(f"{scope}/Conv0/weight", [3, 3, nf(res - 1), nf(res - 1)])
            self._add_bias(f"{scope}/Conv0/bias", nf(res - 1))
            self._add_weight(f"{scope}/Conv1_down/weight", [3, 3, nf(res - 1), nf(res - 2)])
            self._add_bias(f"{scope}/Conv1_down/bias", nf(res - 2))
            self._add_weight(f"{scope}/Skip/weight", [1, 1, nf(res - 1), nf(res - 2)])
        extra = mbstd_num_features if mbstd_group_size > 1 else 0
        self._add_weight("4x4/Conv/weight", [3, 3, nf(1) + extra, nf(1)])
        self._add_bias("4x4/Conv/bias", nf(1))
        self._add_weight("4x4/Dense0/weight", [nf(1) * 16, nf(0)])
        self._add_bias("4x4/Dense0/bias", nf(0))
        self._add_weight("Output/weight", [nf(0), 1])
        self._add_bias("Output/bias", 1)

    def _conv(self, x, scope: str, act: str = "lrelu", down: bool = False, dtype=tf.float32):
        x = ops.conv2d(x, self._w(f"{scope}/weight", dtype), down=down)
        return ops.bias_act(x, self._w(f"{scope}/bias"), act=act, clamp=self.conv_clamp)

    def features(self, images) -> tuple[tf.Tensor, list[tf.Tensor]]:
        """images [N, res, res, C] in [-1, 1] -> (the float32 [N, 4, 4, C] map that
        minibatch-stddev and the epilogue read, every residual block's output from the highest
        resolution down, each in its block's dtype). Before minibatch-stddev, so each image's
        features depend on that image alone (``pipeline.rank``'s kNN signal reads them)."""
        dtype = self._layer_dtype(self._res_log2)
        x = self._conv(tf.cast(images, dtype), f"{self.resolution}x{self.resolution}/FromRGB", dtype=dtype)
        blocks = []
        for res in range(self._res_log2, 2, -1):
            scope = f"{2 ** res}x{2 ** res}"
            dtype = self._layer_dtype(res)
            x = tf.cast(x, dtype)
            skip = ops.conv2d(x, self._w(f"{scope}/Skip/weight", dtype), down=True)
            x = self._conv(x, f"{scope}/Conv0", dtype=dtype)
            x = self._conv(x, f"{scope}/Conv1_down", down=True, dtype=dtype)
            x = (x + skip) * tf.cast(1.0 / np.sqrt(2.0), dtype)
            blocks.append(x)
        return tf.cast(x, tf.float32), blocks

    def __call__(self, images, training: bool = False) -> tf.Tensor:
        """images [N, res, res, C] in [-1, 1] -> logits [N]. N must be divisible by
        ``mbstd_group_size`` when it is at least that large (the whole batch otherwise)."""
        x, _ = self.features(images)
        if self.mbstd_group_size > 1:
            x = ops.minibatch_stddev(x, self.mbstd_group_size, self.mbstd_num_features)
        x = self._conv(x, "4x4/Conv")
        # TF1 flattens NCHW: channel-major rows in Dense0's weight.
        x = tf.reshape(tf.transpose(x, [0, 3, 1, 2]), [-1, x.shape[3] * 16])
        x = ops.bias_act(tf.matmul(x, self._w("4x4/Dense0/weight")), self._w("4x4/Dense0/bias"), act="lrelu")
        x = ops.bias_act(tf.matmul(x, self._w("Output/weight")), self._w("Output/bias"))
        return x[:, 0]

    def variables_by_resolution(self) -> dict[int, list[tf.Variable]]:
        """{resolution: variables of that block}; the 4x4 epilogue and Output count as 4."""
        out: dict[int, list[tf.Variable]] = {}
        for name, var in self._vars.items():
            head = name.split("/", 1)[0]
            res = int(head.split("x", 1)[0]) if "x" in head else 4
            out.setdefault(res, []).append(var)
        return out
