"""StyleGAN2 training loop in TF2: fine-tuning (or training from scratch) on TFRecords.

Per minibatch, as NVIDIA's StyleGAN2: a G step (non-saturating logistic loss), a D step
(logistic loss), every ``r1_interval`` minibatches a lazy R1 step on D, every ``pl_interval``
minibatches a lazy path-length step on G (config-f; ``pl_weight: auto`` = on for config-f
widths), then the EMA generator Gs follows G. Optional ADA-style augmentation in front of D with adaptive p,
freeze-D (the highest-resolution D blocks are not updated), mixed precision and XLA on GPU,
MirroredStrategy when several GPUs are visible.

Run directory (`--run-dir`, e.g. results/<name>/finetune):
  snapshots/network-snapshot-<nimg:09d>.npz   gan.checkpoint format; extra = kimg, cur_nimg,
  snapshots/network-snapshot-<nimg:09d>-optim.npz     ada p, the training config; + Adam state
  samples/reals.png, samples/fakes-<nimg:09d>.png    grids of fixed seeds (psi from config)
  tb/                                          TensorBoard scalars
`resume: latest` continues from the newest snapshot (same kimg count, optimizer state, p).
"""
from __future__ import annotations

import math
import os
import re
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

from gan import augment as augment_lib
from gan import loss as loss_lib
from gan import ops
from gan.dataset import dataset_info, make_dataset, to_uint8
from util.files import atomic_write_with, file_sha256

SNAPSHOT_FILE = re.compile(r"^network-snapshot-(\d{9})\.npz$")
STYLE_MIXING_PROB = 0.9        # StyleGAN2 config-e/f
ADA_INTERVAL = 4               # minibatches between p adjustments (stylegan2-ada)
GRID = (8, 4)                  # columns, rows of the sample grids
# Mixed precision as stylegan2-ada: float16 convolutions in the 4 highest resolutions (8x8 and up),
# every conv layer's output clamped to +-256.
FP16_RESOLUTIONS, FP16_CONV_CLAMP = 4, 256.0
# Architecture keys: a snapshot trained with other values is not resumed.
ARCH_KEYS = ("pretrained", "channel_base", "channel_max", "mapping_layers", "latent_dim")


def log(msg: str) -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------- devices and precision

CPU_REPLICAS_ENV = "FACEPREP_CPU_REPLICAS"


def pick_gpus(setting, count: int) -> list[int]:
    """Indices of the visible GPUs that train, from ``finetune.gpus``: ``all``, a number
    (the first N) or a comma list of indices ("0,2"). CUDA_VISIBLE_DEVICES narrows the
    visible set before this."""
    if setting in (None, "all"):
        return list(range(count))
    if isinstance(setting, int):
        if setting > count:
            raise SystemExit(f"finetune.gpus: {setting} GPUs asked for, {count} visible")
        return list(range(setting))
    chosen = [int(i) for i in str(setting).split(",")]
    if any(i >= count for i in chosen) or len(set(chosen)) != len(chosen):
        raise SystemExit(f"finetune.gpus: {setting!r} does not name distinct GPUs among the "
                         f"{count} visible (0..{count - 1})")
    return chosen


def select_devices(cfg: dict) -> None:
    """Before TensorFlow's runtime starts (gan.train calls it first): the GPUs that train
    (``finetune.gpus``), with memory grown as needed. Without GPUs, FACEPREP_CPU_REPLICAS=N
    splits the CPU into N logical devices, so that the several-GPU path (MirroredStrategy)
    runs on any machine (tests/test_gan_replicas.py)."""
    gpus = tf.config.list_physical_devices("GPU")
    cpu_replicas = int(os.environ.get(CPU_REPLICAS_ENV, "1"))
    try:
        if gpus:
            chosen = [gpus[i] for i in pick_gpus(cfg["gpus"], len(gpus))]
            tf.config.set_visible_devices(chosen, "GPU")
            for gpu in chosen:
                tf.config.experimental.set_memory_growth(gpu, True)
        elif cpu_replicas > 1:
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(cpu_replicas)])
    except RuntimeError as e:   # the runtime started already (an earlier run in this process)
        log(f"devices: already initialized, kept as they are ({e})")


def training_devices() -> list[str]:
    """The logical devices that hold one replica each: the selected GPUs, else the logical
    CPUs (one, unless FACEPREP_CPU_REPLICAS split it)."""
    return [d.name for d in (tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU"))]


def describe_devices(devices: list[str]) -> str:
    """'2 replica(s) (MirroredStrategy) on GPU:0 (NVIDIA H100), GPU:1 (...)' for the console."""
    names = []
    gpus = tf.config.get_visible_devices("GPU")
    for i, device in enumerate(devices):
        short = device.split("device:")[-1]
        detail = ""
        if "GPU" in short and i < len(gpus):
            detail = tf.config.experimental.get_device_details(gpus[i]).get("device_name", "")
        names.append(f"{short} ({detail})" if detail else short)
    how = " (MirroredStrategy)" if len(devices) > 1 else ""
    return f"{len(devices)} replica(s){how} on {', '.join(names)}"


def setup_devices(cfg: dict) -> tuple[tf.distribute.Strategy, bool]:
    """(strategy, mixed precision on?) and seeds; deterministic ops on CPU. Several devices
    (GPUs, or logical CPUs in tests) train as MirroredStrategy replicas."""
    select_devices(cfg)
    devices = training_devices()
    keras.utils.set_random_seed(int(cfg["seed"]))
    gpus = tf.config.list_logical_devices("GPU")
    if not gpus:
        tf.config.experimental.enable_op_determinism()
    strategy = tf.distribute.MirroredStrategy(devices) if len(devices) > 1 else tf.distribute.get_strategy()
    mixed = cfg["mixed_precision"]
    mixed = bool(gpus) if mixed == "auto" else bool(mixed)
    return strategy, mixed


def interleave_for_replicas(images: tf.Tensor, replicas: int) -> tf.Tensor:
    """Reorders a global batch so that the contiguous slices a MirroredStrategy hands out give
    replica r the rows r, r + replicas, ...: the layout gan.ops.draw_for_replica draws fakes
    in, under which each replica's minibatch-stddev groups are groups of the global batch
    (see tests/test_gan_replicas.py)."""
    if replicas == 1:
        return images
    shape = tf.shape(images)
    per_replica = tf.reshape(images, tf.concat([[-1, replicas], shape[1:]], axis=0))
    return tf.reshape(tf.experimental.numpy.swapaxes(per_replica, 0, 1), shape)


# ---------------------------------------------------------------- snapshots

def snapshot_name(cur_nimg: int) -> str:
    return f"network-snapshot-{cur_nimg:09d}"


def list_snapshots(run_dir: Path) -> list[tuple[int, Path]]:
    """[(cur_nimg, path)] of complete snapshots, oldest first."""
    folder = run_dir / "snapshots"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := SNAPSHOT_FILE.match(p.name))]
    return sorted(found)


def optimizer_state(opt: keras.optimizers.Optimizer) -> list[np.ndarray]:
    return [np.asarray(v.numpy()) for v in opt.variables]


def save_optimizers(path: Path, optimizers: dict[str, keras.optimizers.Optimizer]) -> None:
    arrays = {}
    for key, opt in optimizers.items():
        for i, value in enumerate(optimizer_state(opt)):
            arrays[f"{key}/{i:04d}"] = value
    atomic_write_with(path, lambda f: np.savez(f, **arrays))


def load_optimizers(path: Path, optimizers: dict[str, keras.optimizers.Optimizer]) -> None:
    """Restore Adam moments and step counts saved by `save_optimizers` (same variables,
    same order). The learning rate stays the one of the current config."""
    with np.load(path, allow_pickle=False) as data:
        for key, opt in optimizers.items():
            stored = sorted(k for k in data.files if k.startswith(f"{key}/"))
            if len(stored) != len(opt.variables):
                raise ValueError(f"{path}: {key} optimizer has {len(stored)} arrays, "
                                 f"expected {len(opt.variables)}")
            for var, name in zip(opt.variables, stored):
                if "learning_rate" in var.name:
                    continue
                value = data[name]
                if tuple(value.shape) != tuple(var.shape):
                    raise ValueError(f"{path}: {name} shape {value.shape} != {var.shape}")
                var.assign(value)


def write_grid(path: Path, images_uint8: np.ndarray, cols: int) -> None:
    """NHWC uint8 images -> one PNG grid, written atomically."""
    n, h, w, c = images_uint8.shape
    rows = math.ceil(n / cols)
    grid = np.zeros((rows * h, cols * w, c), np.uint8)
    for i, img in enumerate(images_uint8):
        r, q = divmod(i, cols)
        grid[r * h:(r + 1) * h, q * w:(q + 1) * w] = img
    im = Image.fromarray(grid[..., 0] if c == 1 else grid)
    atomic_write_with(path, lambda f: im.save(f, format="PNG", compress_level=6))


# ---------------------------------------------------------------- networks

def _network_kwargs(cfg: dict, resolution: int, channels: int) -> tuple[dict, dict]:
    g = dict(resolution=resolution, num_channels=channels, latent_dim=int(cfg["latent_dim"]),
             mapping_layers=int(cfg["mapping_layers"]), channel_base=int(cfg["channel_base"]),
             channel_max=int(cfg["channel_max"]))
    d = dict(resolution=resolution, num_channels=channels, channel_base=int(cfg["channel_base"]),
             channel_max=int(cfg["channel_max"]))
    return g, d


def with_precision(net, mixed_precision: bool):
    """The same network (same variables) with float16 high-resolution layers on or off;
    applied after every load so the current run decides, not the file."""
    if net is None:
        return None
    precision = ({"num_fp16_res": FP16_RESOLUTIONS, "conv_clamp": FP16_CONV_CLAMP} if mixed_precision
                 else {"num_fp16_res": 0, "conv_clamp": None})
    if all(net.init_kwargs.get(k) == v for k, v in precision.items()):
        return net
    clone = type(net)(**{**net.init_kwargs, **precision}, name=net.name)
    clone.assign_named({n: v.numpy() for n, v in net.named_variables().items()},
                       source=f"{net.name} (precision change)")
    return clone


def verify_sha256(path: str, expected: str | None) -> None:
    """Refuse a downloaded model whose sha256 differs from the one the config names."""
    if not expected:
        return
    digest = file_sha256(path)
    if digest != expected.lower():
        raise SystemExit(f"finetune: {path} has sha256 {digest}, but "
                         f"finetune.pretrained_sha256 says {expected}: re-download it")


def build_networks(cfg: dict, resolution: int, channels: int, snapshot: Path | None,
                   mixed_precision: bool = False, warm_start: Path | None = None):
    """(G, D, Gs, extra, how): from a snapshot, a warm-start network (another run's final:
    its weights, not its image count), the pretrained file, or fresh (seeded)."""
    from gan import checkpoint, networks
    extra: dict = {}
    if snapshot is not None:
        G, D, Gs, extra = checkpoint.load_network(snapshot)
        how = f"snapshot {snapshot}"
    elif warm_start is not None:
        G, D, Gs, warm_extra = checkpoint.load_network(warm_start)
        extra = {"augment_p": warm_extra.get("augment_p", 0.0)}   # D's overfitting state carries over
        how = f"warm start {warm_start}"
    elif cfg.get("pretrained"):
        pretrained = str(cfg["pretrained"])
        verify_sha256(pretrained, cfg.get("pretrained_sha256"))
        if pretrained.endswith(".pkl"):
            from gan import legacy
            # a pickle above the dataset resolution is cropped to it (see gan.legacy)
            G, D, Gs = legacy.load_tf1_pickle(pretrained, resolution=resolution, seed=int(cfg["seed"]))
        else:
            G, D, Gs, _ = checkpoint.load_network(pretrained)
        how = f"pretrained {pretrained}"
    else:
        g_kwargs, d_kwargs = _network_kwargs(cfg, resolution, channels)
        G = networks.Generator(**g_kwargs, seed=int(cfg["seed"]))
        D = networks.Discriminator(**d_kwargs, seed=int(cfg["seed"]) + 1)
        Gs = None
        how = "scratch"
    if D is None:
        raise ValueError(f"{how}: has no discriminator; fine-tuning needs one")
    if Gs is None:
        Gs = checkpoint.clone_network(G, name="Gs")
    G, D, Gs = (with_precision(net, mixed_precision) for net in (G, D, Gs))
    return G, D, Gs, extra, how


def frozen_d_variables(D, freeze_d: int) -> list[tf.Variable]:
    """Variables of the ``freeze_d`` highest-resolution D blocks (the top one with its
    FromRGB): fine-tuning keeps the pretrained low-level features there (freeze-D)."""
    by_res = D.variables_by_resolution()
    return [v for res in sorted(by_res, reverse=True)[:freeze_d] for v in by_res[res]]


# ---------------------------------------------------------------- the trainer

@dataclass
class StepResult:
    g_loss: tf.Tensor
    d_loss: tf.Tensor
    r1: tf.Tensor | None
    real_score: tf.Tensor
    fake_score: tf.Tensor
    real_sign_sum: tf.Tensor
    pl_length: tf.Tensor | None = None


class Trainer:
    """G/D/R1/EMA steps as tf.functions over (replicated) networks and optimizers."""

    def __init__(self, G, D, Gs, cfg: dict, strategy: tf.distribute.Strategy,
                 mixed_precision: bool = False):
        self.G, self.D, self.Gs = G, D, Gs
        self.cfg = cfg
        self.strategy = strategy
        self.batch = int(cfg["batch"])
        self.replicas = strategy.num_replicas_in_sync
        if self.batch % self.replicas:
            raise ValueError(f"batch {self.batch} is not divisible by {self.replicas} GPUs")
        self.seed = int(cfg["seed"])
        self.r1_gamma = float(cfg["r1_gamma"])
        self.r1_interval = int(cfg["r1_interval"]) if self.r1_gamma > 0 else 0
        self.use_augment = float(cfg["ada_target"]) > 0
        self.latent_dim = int(G.latent_dim)
        self.num_ws = int(G.num_ws)
        # path-length regularization (config-f; `auto` turns it on for config-f widths)
        self.pl_weight = loss_lib.pl_weight_for(cfg, G.init_kwargs["channel_base"])
        self.pl_interval = int(cfg["pl_interval"]) if self.pl_weight > 0 else 0
        self.pl_decay = float(cfg["pl_decay"])
        self.pl_batch = max(1, self.batch // self.replicas // int(cfg["pl_batch_shrink"]))

        self.frozen_d = frozen_d_variables(D, int(cfg["freeze_d"]))
        frozen = {v.ref() for v in self.frozen_d}
        self.g_trainables = [v for v in G.named_variables().values() if v.trainable]
        self.d_trainables = [v for v in D.named_variables().values()
                             if v.trainable and v.ref() not in frozen]
        gs_vars = Gs.named_variables()
        self.gs_pairs = [(gs_vars[n], v) for n, v in G.named_variables().items()]

        with strategy.scope():
            self.opt_g = keras.optimizers.Adam(
                **loss_lib.lazy_adam_args(float(cfg["lr_g"]), self.pl_interval))
            self.pl_mean = tf.Variable(0.0, trainable=False, name="pl_mean")
            self.opt_d = keras.optimizers.Adam(
                **loss_lib.lazy_adam_args(float(cfg["lr_d"]), self.r1_interval))
            if mixed_precision:
                self.opt_g = keras.optimizers.LossScaleOptimizer(self.opt_g)
                self.opt_d = keras.optimizers.LossScaleOptimizer(self.opt_d)
            self.opt_g.build(self.g_trainables)
            self.opt_d.build(self.d_trainables)
        self.mixed_precision = mixed_precision

        jit = bool(cfg["xla"])
        if jit and self.replicas > 1:
            # the optimizers' cross-replica all-reduce cannot sit inside one XLA cluster
            log("xla: off with several GPUs (MirroredStrategy); each GPU runs plain TF")
            jit = False
        # R1 is its own function: the main step is traced once, not once with and once without
        self._train_step = tf.function(self._train_step_fn, jit_compile=jit, reduce_retracing=True)
        self._r1_step = tf.function(self._r1_step_fn, jit_compile=jit, reduce_retracing=True)
        self._pl_step = tf.function(self._pl_step_fn, jit_compile=jit, reduce_retracing=True)
        self._ema_step = tf.function(self._ema_step_fn, jit_compile=jit)

    @property
    def optimizers(self) -> dict[str, keras.optimizers.Optimizer]:
        return {"G": self.opt_g, "D": self.opt_d}

    # -- pieces used inside a replica

    # Randomness: every draw is seeded by (seed, step, k) over the global batch, and each
    # replica keeps its rows of it (gan.ops.draw_for_replica), so one replica and several
    # train on the same latents, noise and augmentations.

    def _step_seed(self, step, k: int) -> tf.Tensor:
        base = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(step, tf.int64)])
        return ops.fold_in(base, k)

    def _replica(self):
        """(this replica's id, replicas)."""
        ctx = tf.distribute.get_replica_context()
        return (ctx.replica_id_in_sync_group if ctx is not None else 0), self.replicas

    def _draw(self, fn, n, shape, step, k: int, **kwargs) -> tf.Tensor:
        return ops.draw_for_replica(fn, n, shape, self._step_seed(step, k), self._replica(), **kwargs)

    def _noise(self, n, step, k: int):
        """Seeded noise inputs for G.synthesis, one draw per layer."""
        seed = self._step_seed(step, k)
        return lambda layer, height, width: ops.draw_for_replica(
            ops.stateless_normal, n, [height, width, 1],
            ops.fold_in(seed, layer), self._replica())

    def _generate(self, n, step, k: int) -> tuple[tf.Tensor, tf.Tensor]:
        """Fakes with style mixing (as config-e/f training); also the batch's mean w."""
        ws = self._mixed_ws(n, step, k)
        return (self.G.synthesis(ws, noise_mode="random", random_noise=self._noise(n, step, k + 4)),
                tf.reduce_mean(ws[:, 0], axis=0))

    def _mixed_ws(self, n, step, k: int) -> tf.Tensor:
        """ws [n, num_ws, w_dim] from seeded z, style-mixed with probability 0.9."""
        z = self._draw(ops.stateless_normal, n, [self.latent_dim], step, k)
        ws = self.G.mapping(z)
        if self.num_ws > 1:
            z2 = self._draw(ops.stateless_normal, n, [self.latent_dim], step, k + 1)
            ws2 = self.G.mapping(z2)
            mix = self._draw(ops.stateless_uniform, n, [], step, k + 2) < STYLE_MIXING_PROB
            cutoff = self._draw(ops.stateless_uniform, n, [], step, k + 3, minval=1,
                                maxval=self.num_ws, dtype=tf.int32)
            cutoff = tf.where(mix, cutoff, self.num_ws)
            use_first = tf.range(self.num_ws)[None, :] < cutoff[:, None]
            ws = tf.where(use_first[:, :, None], ws, ws2)
        return ws

    def _discriminate(self, images, p, step, k: int) -> tf.Tensor:
        if self.use_augment:
            images = augment_lib.augment(images, p, self._step_seed(step, k), self._replica())
        return tf.cast(self.D(images), tf.float32)

    def _scaled(self, opt, loss):
        """The loss to differentiate (inside the tape): loss-scaled under mixed precision;
        the LossScaleOptimizer unscales the gradients and skips steps that overflow."""
        return opt.scale_loss(loss) if self.mixed_precision else loss

    def _apply(self, opt, scaled_loss, tape, variables):
        grads = tape.gradient(scaled_loss, variables)
        # R1 has no gradient for D's output bias: skip variables a loss does not reach
        opt.apply_gradients([(g, v) for g, v in zip(grads, variables) if g is not None])

    def _mean(self, per_image):
        return tf.nn.compute_average_loss(per_image, global_batch_size=self.batch)

    def _replica_step(self, reals, step, p):
        n = tf.shape(reals)[0]
        # G: non-saturating logistic loss
        with tf.GradientTape() as tape:
            fakes, w_mean = self._generate(n, step, 0)
            g_loss = self._mean(loss_lib.generator_loss(self._discriminate(fakes, p, step, 10)))
            scaled = self._scaled(self.opt_g, g_loss)
        self._apply(self.opt_g, scaled, tape, self.g_trainables)
        # D: logistic loss on reals vs fresh fakes (G not differentiated)
        fakes, _ = self._generate(n, step, 20)
        fakes = tf.stop_gradient(fakes)
        with tf.GradientTape() as tape:
            fake_logits = self._discriminate(fakes, p, step, 30)
            real_logits = self._discriminate(reals, p, step, 31)
            d_loss = self._mean(loss_lib.discriminator_loss(real_logits, fake_logits))
            scaled = self._scaled(self.opt_d, d_loss)
        self._apply(self.opt_d, scaled, tape, self.d_trainables)
        return (g_loss, d_loss, self._mean(real_logits), self._mean(fake_logits),
                tf.reduce_sum(tf.sign(real_logits)), w_mean / self.replicas)

    def _replica_r1_step(self, reals, step, p):
        with tf.GradientTape() as tape:
            penalty, _ = loss_lib.r1_penalty(lambda x: self._discriminate(x, p, step, 40), reals)
            r1_loss = self._mean(loss_lib.lazy_r1_loss(penalty, self.r1_gamma, self.r1_interval))
            scaled = self._scaled(self.opt_d, r1_loss)
        self._apply(self.opt_d, scaled, tape, self.d_trainables)
        return self._mean(penalty)

    def _replica_pl_step(self, step):
        n = self.pl_batch
        with tf.GradientTape() as tape:
            ws = self._mixed_ws(n, step, 50)
            noise = self._noise(n, step, 55)
            lengths, _ = loss_lib.path_lengths(
                lambda w: self.G.synthesis(w, noise_mode="random", random_noise=noise), ws,
                self._step_seed(step, 54), self._replica())
            batch_mean = None
            if self.replicas > 1:   # the mean over all replicas, as one replica would see it
                total = tf.distribute.get_replica_context().all_reduce(
                    tf.distribute.ReduceOp.SUM, tf.reduce_sum(lengths))
                batch_mean = total / (n * self.replicas)
            penalty, _ = loss_lib.path_length_penalty(lengths, self.pl_mean, self.pl_decay, batch_mean)
            pl_loss = tf.nn.compute_average_loss(
                loss_lib.lazy_pl_loss(penalty, self.pl_weight, self.pl_interval),
                global_batch_size=n * self.replicas)
            scaled = self._scaled(self.opt_g, pl_loss)
        self._apply(self.opt_g, scaled, tape, self.g_trainables)
        return tf.reduce_sum(lengths) / (n * self.replicas)

    def _pl_step_fn(self, step):
        per_replica = self.strategy.run(self._replica_pl_step, args=(step,))
        mean_length = self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
        # the moving average follows the mean path length over all replicas
        self.pl_mean.assign(self.pl_mean + self.pl_decay * (mean_length - self.pl_mean))
        return mean_length

    def _train_step_fn(self, reals, step, p):
        out = self.strategy.run(self._replica_step, args=(reals, step, p))
        out = [self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for v in out]
        # w_avg (truncation centre) tracks the mapping output; updated here, across replicas
        self.G.w_avg.assign(out[-1] + (self.G.w_avg - out[-1]) * self.G.w_avg_beta)
        return out[:-1]

    def _r1_step_fn(self, reals, step, p):
        penalty = self.strategy.run(self._replica_r1_step, args=(reals, step, p))
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, penalty, axis=None)

    def _ema_step_fn(self, beta):
        for gs_var, g_var in self.gs_pairs:
            if g_var.trainable:
                gs_var.assign(g_var + (gs_var - g_var) * tf.cast(beta, gs_var.dtype))
            else:   # buffers (w_avg, noise constants) are copied, as TF1's beta_nontrainable=0
                gs_var.assign(g_var)

    # -- host side

    def step(self, reals, step: int, p: float) -> StepResult:
        """One minibatch: G step, D step, and the lazy R1 step when it is due."""
        step_t, p_t = tf.constant(step, tf.int64), tf.constant(p, tf.float32)
        g, d, rs, fs, signs = self._train_step(reals, step_t, p_t)
        r1 = None
        if self.r1_interval and step % self.r1_interval == 0:
            r1 = self._r1_step(reals, step_t, p_t)
        pl = None
        if self.pl_interval and step % self.pl_interval == 0:
            pl = self._pl_step(step_t)
        return StepResult(g, d, r1, rs, fs, signs, pl)

    def update_ema(self, cur_nimg: int) -> None:
        ema_nimg = float(self.cfg["ema_kimg"]) * 1000
        rampup = self.cfg.get("ema_rampup")
        if rampup:
            ema_nimg = min(ema_nimg, cur_nimg * float(rampup))
        beta = 0.5 ** (self.batch / max(ema_nimg, 1e-8))
        self._ema_step(tf.constant(beta, tf.float32))


# ---------------------------------------------------------------- the loop

def sample_latents(seed: int, n: int, latent_dim: int) -> np.ndarray:
    """The fixed latents of the sample grids (the same in every snapshot of a run)."""
    return np.random.RandomState(seed).randn(n, latent_dim).astype(np.float32)


def generate_grid_images(Gs, latents: np.ndarray, psi: float, batch: int) -> np.ndarray:
    out = []
    for i in range(0, len(latents), batch):
        images = Gs(tf.constant(latents[i:i + batch]), truncation_psi=psi, noise_mode="const")
        out.append(to_uint8(images).numpy())
    return np.concatenate(out)


def _format_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _arch(cfg: dict) -> dict:
    return {k: cfg.get(k) for k in ARCH_KEYS}


def pick_resume(run_dir: Path, cfg: dict, resolution: int, run: dict | None = None) -> Path | None:
    """The snapshot to continue from, per `resume` (latest | none | <path>). `latest` is
    the newest readable snapshot of this run's network (same pretrained file, sizes,
    resolution; with ``run``, also the same data fingerprint and pretrained sha256):
    snapshots of another configuration are skipped, not resumed; an unreadable one (zero
    bytes, truncated) is skipped with a warning and the one before it is used."""
    from gan import checkpoint
    from gan.runs import same_identity
    resume = str(cfg.get("resume") or "none")
    snapshots = list_snapshots(run_dir)
    if resume == "none":
        if snapshots:
            log(f"resume: none; ignoring {len(snapshots)} earlier snapshot(s) "
                "(new ones replace those at the same kimg)")
        return None
    if resume != "latest":
        path = Path(resume)
        if not path.is_file():
            raise FileNotFoundError(f"resume: {path} does not exist")
        return path
    for _, path in reversed(snapshots):
        try:
            meta = checkpoint.verify_readable(path)
        except Exception as e:  # noqa: BLE001 - any damage means: not this one
            log(f"warning: resume: skipping unreadable snapshot {path} ({type(e).__name__}: {e}); "
                "trying the one before it")
            continue
        stored = _arch(meta["extra"].get("training_config", {}))
        stored_res = (meta["networks"].get("G") or {}).get("resolution")
        if run is not None:   # the identity covers data, architecture and the pretrained bytes
            if same_identity(meta["extra"].get("run") or {}, run):
                return path
            log(f"resume: skipping {path.name} (another run: data, architecture or pretrained "
                "file differ)")
            continue
        if stored == _arch(cfg) and stored_res == resolution:
            return path
        log(f"resume: skipping {path.name} (trained with {stored} at {stored_res} px, "
            f"this run is {_arch(cfg)} at {resolution} px)")
    return None


def remove_stale_temp_files(run_dir: Path) -> None:
    """Half-written snapshot temp files a kill left behind (never read: names differ)."""
    folder = run_dir / "snapshots"
    for p in sorted(folder.glob(".network-snapshot-*.tmp")) if folder.is_dir() else []:
        log(f"resume: removing {p.name} (a snapshot a kill left half-written)")
        p.unlink(missing_ok=True)


def training_loop(data_dir: str | Path, run_dir: str | Path, cfg: dict, output: str | Path,
                  run: dict | None = None) -> dict:
    """Train until ``cfg['kimg']`` thousand images have been shown; returns a summary.

    ``run`` (gan.runs): the run's identity (data fingerprint, architecture, pretrained
    sha256) and warm-start source; recorded in every snapshot and the final network, and
    a snapshot is resumed only when it matches."""
    run_dir = Path(run_dir)
    remove_stale_temp_files(run_dir)
    from gan import checkpoint
    strategy, mixed = setup_devices(cfg)
    info = dataset_info(data_dir)
    log(f"data: {info.path} ({info.num_images} images, {info.resolution} px); "
        f"{describe_devices(training_devices())}; "
        f"mixed precision {'on' if mixed else 'off'}; xla {'on' if cfg.get('xla') else 'off'}")

    resume_from = pick_resume(run_dir, cfg, info.resolution, run)
    warm_start = (run or {}).get("warm_start", {}).get("network")
    with strategy.scope():
        G, D, Gs, extra, how = build_networks(cfg, info.resolution, info.channels, resume_from, mixed,
                                              warm_start=Path(warm_start) if warm_start else None)
    if int(G.resolution) != info.resolution:
        raise ValueError(f"the network is {G.resolution} px but the dataset is {info.resolution} px "
                         "(fine-tuning at another resolution is not supported)")
    cur_nimg = int(extra.get("cur_nimg", 0))
    ada = augment_lib.AdaController(float(cfg["ada_target"]), int(cfg["batch"]),
                                    ADA_INTERVAL, float(cfg["ada_kimg"]),
                                    p=float(extra.get("augment_p", 0.0)))
    trainer = Trainer(G, D, Gs, cfg, strategy, mixed)
    trainer.pl_mean.assign(float(extra.get("pl_mean", 0.0)))   # path-length average resumes too
    if trainer.pl_interval:
        log(f"path-length regularization: weight {trainer.pl_weight:g} every {trainer.pl_interval} "
            f"minibatches on {trainer.pl_batch} fakes per replica")
    run_extra = {"run": run} if run is not None else {}
    if resume_from is not None:
        optim = resume_from.with_name(resume_from.stem + "-optim.npz")
        if optim.is_file():
            try:
                load_optimizers(optim, trainer.optimizers)
            # mixed precision switched on or off since, or a damaged file
            except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
                log(f"resume: optimizer state not restored ({e}); it starts fresh")
        else:
            log(f"resume: {optim.name} missing; optimizer state starts fresh")
        log(f"resume: {resume_from} at kimg {cur_nimg / 1000:.3f} (cur_nimg {cur_nimg}), "
            f"augment p {ada.p:.4f}")
    else:
        log(f"start: {how} at kimg 0")
    if trainer.frozen_d:
        log(f"freeze-D: {len(trainer.frozen_d)} D variables frozen")

    total_nimg = int(round(float(cfg["kimg"]) * 1000))
    snapshot_nimg = max(1, int(round(float(cfg["snapshot_kimg"]) * 1000)))
    tick_nimg = max(1, int(round(float(cfg["tick_kimg"]) * 1000)))
    batch = int(cfg["batch"])

    samples_dir = run_dir / "samples"
    latents = sample_latents(int(cfg["seed"]), GRID[0] * GRID[1], trainer.latent_dim)
    psi = float(cfg["truncation_psi"])
    if not (samples_dir / "reals.png").exists():
        reals = next(iter(make_dataset(data_dir, GRID[0] * GRID[1], mirror=False, repeat=False,
                                       shuffle=False)))
        write_grid(samples_dir / "reals.png", to_uint8(reals).numpy(), GRID[0])
    if resume_from is None:
        write_grid(samples_dir / f"fakes-{cur_nimg:09d}.png",
                   generate_grid_images(Gs, latents, psi, batch), GRID[0])

    writer = tf.summary.create_file_writer(str(run_dir / "tb"))
    step = cur_nimg // batch
    # A resumed run draws a new data order (seeded by where it resumes), not the same one again.
    data = make_dataset(data_dir, batch, mirror=bool(cfg["mirror"]),
                        seed=int(cfg["seed"]) * 1_000_003 + cur_nimg)
    if trainer.replicas > 1:
        data = data.map(lambda images: interleave_for_replicas(images, trainer.replicas))
    batches = iter(strategy.experimental_distribute_dataset(data))

    def snapshot() -> Path:
        base = run_dir / "snapshots" / snapshot_name(cur_nimg)
        # optimizer state first: a snapshot file implies its optimizer file is complete
        save_optimizers(base.with_name(base.name + "-optim.npz"), trainer.optimizers)
        snap_extra = {"kimg": cur_nimg / 1000, "cur_nimg": cur_nimg, "augment_p": ada.p,
                      "pl_mean": float(trainer.pl_mean.numpy()), "training_config": cfg,
                      **run_extra}
        checkpoint.save_network(base.with_name(base.name + ".npz"), G, D, Gs, snap_extra)
        write_grid(samples_dir / f"fakes-{cur_nimg:09d}.png",
                   generate_grid_images(Gs, latents, psi, batch), GRID[0])
        return base.with_name(base.name + ".npz")

    tick, tick_start_nimg, tick_start = 0, cur_nimg, time.time()
    next_tick = (cur_nimg // tick_nimg + 1) * tick_nimg
    next_snapshot = (cur_nimg // snapshot_nimg + 1) * snapshot_nimg
    results: list[StepResult] = []
    last = {}
    first_step = step
    while cur_nimg < total_nimg:
        result = trainer.step(next(batches), step, ada.p)
        results.append(result)
        cur_nimg += batch
        trainer.update_ema(cur_nimg)
        if ada.enabled:
            ada.accumulate(result.real_sign_sum, batch)
            ada.maybe_adjust(step)
        step += 1
        if step == first_step + 1:
            # the first step traces and compiles; keep it out of sec/kimg and the ETA
            log(f"first step (tracing) took {time.time() - tick_start:.1f} s")
            tick_start_nimg, tick_start = cur_nimg, time.time()
        done = cur_nimg >= total_nimg
        if cur_nimg >= next_tick or cur_nimg >= next_snapshot or done:
            elapsed = time.time() - tick_start
            shown = cur_nimg - tick_start_nimg
            sec_per_kimg = elapsed / shown * 1000 if shown else math.nan
            last = summarize(results)
            last.update({"augment_p": ada.p, "sec_per_kimg": sec_per_kimg})
            stop_if_diverged(results, (G, D, Gs), tick, cur_nimg, cfg, mixed, run_dir)
            eta = (total_nimg - cur_nimg) / 1000 * sec_per_kimg
            log(f"tick {tick:<4d} kimg {cur_nimg / 1000:8.3f} / {total_nimg / 1000:.3f}  "
                f"sec/kimg {sec_per_kimg:8.2f}  loss_g {last['loss_g']:.4f}  "
                f"loss_d {last['loss_d']:.4f}  r1 {last['r1']:.4g}  "
                f"augment_p {ada.p:.4f}  eta {_format_eta(eta)}")
            write_scalars(writer, last, cur_nimg)
            results = []
            tick += 1
            next_tick = (cur_nimg // tick_nimg + 1) * tick_nimg
            if cur_nimg >= next_snapshot or done:
                path = snapshot()
                log(f"snapshot: {path}")
                next_snapshot = (cur_nimg // snapshot_nimg + 1) * snapshot_nimg
            tick_start_nimg, tick_start = cur_nimg, time.time()
    writer.flush()
    # the final network is stored all-float32 (num_fp16_res 0), ready for CPU use (rank)
    final = [with_precision(net, False) for net in (G, D, Gs)]
    checkpoint.save_network(output, *final, {"kimg": cur_nimg / 1000, "cur_nimg": cur_nimg,
                                             "augment_p": ada.p, "pl_mean": float(trainer.pl_mean.numpy()),
                                             "training_config": cfg, **run_extra})
    log(f"done: kimg {cur_nimg / 1000:.3f}; final network {output}")
    return {"cur_nimg": cur_nimg, "augment_p": ada.p, **last}


# ---------------------------------------------------------------- divergence guard

class Diverged(SystemExit):
    """A non-finite loss or weight: the run stops (exit status 3) before any snapshot of it."""

    def __init__(self, message: str):
        super().__init__(3)
        self.message = message


def nonfinite_losses(results: list[StepResult]) -> list[str]:
    """Names of the losses that were NaN or infinite in any step of ``results``."""
    values = {"loss_g": [r.g_loss for r in results], "loss_d": [r.d_loss for r in results],
              "r1": [r.r1 for r in results if r.r1 is not None],
              "pl_length": [r.pl_length for r in results if r.pl_length is not None]}
    return [name for name, vs in values.items() if vs and not np.isfinite([float(v) for v in vs]).all()]


def nonfinite_networks(networks) -> list[str]:
    """Names of the networks (G, D, Gs) holding a NaN or infinite variable."""
    bad = []
    for net in networks:
        finite = [tf.reduce_all(tf.math.is_finite(v)) for v in net.named_variables().values()]
        if not bool(tf.reduce_all(tf.stack(finite))):
            bad.append(net.name)
    return bad


def likely_setting(bad: list[str], cfg: dict, mixed: bool) -> str:
    """The settings to look at first for what went non-finite."""
    hints = []
    if mixed:
        hints.append("mixed precision (try mixed_precision: false)")
    if "r1" in bad:
        hints.append(f"r1_gamma {cfg['r1_gamma']:g}")
    if "pl_length" in bad:
        hints.append(f"pl_weight {cfg.get('pl_weight')}")
    hints.append(f"lr_g {cfg['lr_g']:g} / lr_d {cfg['lr_d']:g} (lower them)")
    return "; ".join(hints)


def stop_if_diverged(results: list[StepResult], networks, tick: int, cur_nimg: int, cfg: dict,
                     mixed: bool, run_dir: Path) -> None:
    """Checked every tick, before any snapshot: a NaN or infinite loss (any step of the tick)
    or weight ends the run with one line; the newest snapshot stays the resume point."""
    bad = nonfinite_losses(results) + [f"{name} weights" for name in nonfinite_networks(networks)]
    if not bad:
        return
    snapshots = list_snapshots(run_dir)
    resume = (f"resume point stays {snapshots[-1][1].name}" if snapshots
              else "no snapshot yet (a rerun starts over)")
    message = (f"diverged: non-finite {', '.join(bad)} at tick {tick} (kimg {cur_nimg / 1000:.3f}); "
               f"stopped, no snapshot written; likely setting: {likely_setting(bad, cfg, mixed)}; "
               f"{resume}")
    log(message)
    raise Diverged(message)


def summarize(results: list[StepResult]) -> dict:
    """Means over a tick (one device sync per tick, not per step)."""
    if not results:
        return {"loss_g": math.nan, "loss_d": math.nan, "r1": math.nan, "pl_length": math.nan,
                "score_real": math.nan, "score_fake": math.nan}
    r1s = [float(r.r1) for r in results if r.r1 is not None]
    pls = [float(r.pl_length) for r in results if r.pl_length is not None]
    return {"loss_g": float(np.mean([float(r.g_loss) for r in results])),
            "loss_d": float(np.mean([float(r.d_loss) for r in results])),
            "r1": float(np.mean(r1s)) if r1s else math.nan,
            "pl_length": float(np.mean(pls)) if pls else math.nan,
            "score_real": float(np.mean([float(r.real_score) for r in results])),
            "score_fake": float(np.mean([float(r.fake_score) for r in results]))}


SCALAR_TAGS = {"loss_g": "Loss/G", "loss_d": "Loss/D", "r1": "Loss/r1_penalty",
               "pl_length": "Loss/pl_lengths",
               "score_real": "Loss/scores/real", "score_fake": "Loss/scores/fake",
               "augment_p": "Progress/augment_p", "sec_per_kimg": "Timing/sec_per_kimg",
               "kimg": "Progress/kimg"}


def write_scalars(writer, values: dict, cur_nimg: int) -> None:
    """TensorBoard scalars at step = images shown. tensorflow-cpu 2.21 no longer pulls in
    the tensorboard package that tf.summary.scalar needs, so write what it writes:
    a float tensor summary tagged for the 'scalars' plugin (TensorBoard shows it as usual)."""
    from tensorflow.core.framework import summary_pb2
    metadata = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))
    values = {**values, "kimg": cur_nimg / 1000}
    with writer.as_default(step=cur_nimg):
        for key, tag in SCALAR_TAGS.items():
            if key in values and math.isfinite(values[key]):
                tf.summary.write(tag, tf.constant(values[key], tf.float32), metadata=metadata)
    writer.flush()
