"""gan.networks / gan.ops / gan.checkpoint on tiny CPU networks (16-32 px, 32 channels)."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from gan import ops
from gan.checkpoint import clone_network, load_network, read_meta, save_network
from gan.networks import Discriminator, Generator, channels_at

TINY_G = dict(latent_dim=32, mapping_layers=2, channel_base=256, channel_max=32)
TINY_D = dict(channel_base=256, channel_max=32)


def expected_tf1_generator(resolution, channel_base, channel_max, latent_dim, mapping_layers,
                           num_channels=3):
    """TF1 G_main/G_mapping/G_synthesis_stylegan2 (skip) variables as {name: shape}, written
    out from the TF1 graph structure independently of gan.networks."""
    log2 = int(np.log2(resolution))
    nf = lambda stage: min(int(channel_base / 2 ** stage), channel_max)  # noqa: E731
    out = {}
    for i in range(mapping_layers):
        out[f"G_mapping/Dense{i}/weight"] = (latent_dim, latent_dim)
        out[f"G_mapping/Dense{i}/bias"] = (latent_dim,)
    num_layers = 2 * log2 - 2
    for i in range(num_layers - 1):
        size = 2 ** ((i + 5) // 2)
        out[f"G_synthesis/noise{i}"] = (1, 1, size, size)

    def modconv(scope, fin, fout, k=3, noise=True):
        out[f"{scope}/weight"] = (k, k, fin, fout)
        out[f"{scope}/mod_weight"] = (latent_dim, fin)
        out[f"{scope}/mod_bias"] = (fin,)
        if noise:
            out[f"{scope}/noise_strength"] = ()
        out[f"{scope}/bias"] = (fout,)

    out["G_synthesis/4x4/Const/const"] = (1, nf(1), 4, 4)
    modconv("G_synthesis/4x4/Conv", nf(1), nf(1))
    modconv("G_synthesis/4x4/ToRGB", nf(1), num_channels, k=1, noise=False)
    for res in range(3, log2 + 1):
        scope = f"G_synthesis/{2 ** res}x{2 ** res}"
        modconv(f"{scope}/Conv0_up", nf(res - 2), nf(res - 1))
        modconv(f"{scope}/Conv1", nf(res - 1), nf(res - 1))
        modconv(f"{scope}/ToRGB", nf(res - 1), num_channels, k=1, noise=False)
    out["dlatent_avg"] = (latent_dim,)
    return out


def expected_tf1_discriminator(resolution, channel_base, channel_max, num_channels=3, mbstd=1):
    """TF1 D_stylegan2 (resnet) variables as {name: shape}."""
    log2 = int(np.log2(resolution))
    nf = lambda stage: min(int(channel_base / 2 ** stage), channel_max)  # noqa: E731
    out = {f"{resolution}x{resolution}/FromRGB/weight": (1, 1, num_channels, nf(log2 - 1)),
           f"{resolution}x{resolution}/FromRGB/bias": (nf(log2 - 1),)}
    for res in range(log2, 2, -1):
        s = f"{2 ** res}x{2 ** res}"
        out[f"{s}/Conv0/weight"] = (3, 3, nf(res - 1), nf(res - 1))
        out[f"{s}/Conv0/bias"] = (nf(res - 1),)
        out[f"{s}/Conv1_down/weight"] = (3, 3, nf(res - 1), nf(res - 2))
        out[f"{s}/Conv1_down/bias"] = (nf(res - 2),)
        out[f"{s}/Skip/weight"] = (1, 1, nf(res - 1), nf(res - 2))
    out["4x4/Conv/weight"] = (3, 3, nf(1) + mbstd, nf(1))
    out["4x4/Conv/bias"] = (nf(1),)
    out["4x4/Dense0/weight"] = (nf(1) * 16, nf(0))
    out["4x4/Dense0/bias"] = (nf(0),)
    out["Output/weight"] = (nf(0), 1)
    out["Output/bias"] = (1,)
    return out


def shapes(net) -> dict:
    return {name: tuple(var.shape.as_list()) for name, var in net.named_variables().items()}


@pytest.fixture(scope="module")
def tiny_g():
    return Generator(32, **TINY_G, seed=1)


@pytest.fixture(scope="module")
def tiny_d():
    return Discriminator(32, **TINY_D, seed=2)


# ---------------------------------------------------------------- names and shapes

@pytest.mark.parametrize("resolution", [16, 32])
def test_variables_have_tf1_names_and_shapes(resolution):
    G = Generator(resolution, **TINY_G, seed=0)
    D = Discriminator(resolution, **TINY_D, seed=0)
    assert shapes(G) == expected_tf1_generator(resolution, 256, 32, 32, 2)
    assert list(shapes(G)) == list(expected_tf1_generator(resolution, 256, 32, 32, 2))  # TF1 order
    assert shapes(D) == expected_tf1_discriminator(resolution, 256, 32)
    assert G.num_ws == 2 * int(np.log2(resolution)) - 2
    # noise maps and the W average are state, not trained
    frozen = {n for n, v in G.named_variables().items() if not v.trainable}
    assert frozen == {n for n in shapes(G) if "/noise" in n and "strength" not in n} | {"dlatent_avg"}
    assert all(v.trainable for v in D.named_variables().values())
    assert len(G.trainable_variables) == len(shapes(G)) - len(frozen)


def test_config_f_1024_matches_official_ffhq_shapes():
    """Known variable shapes of NVIDIA's stylegan2-ffhq-config-f (1024 px, fmap_base 16384)."""
    G = Generator(1024, seed=0)
    g = shapes(G)
    assert g == expected_tf1_generator(1024, 16384, 512, 512, 8)
    known_g = {
        "G_mapping/Dense7/weight": (512, 512),
        "G_synthesis/4x4/Const/const": (1, 512, 4, 4),
        "G_synthesis/noise0": (1, 1, 4, 4),
        "G_synthesis/noise16": (1, 1, 1024, 1024),
        "G_synthesis/64x64/Conv1/weight": (3, 3, 512, 512),
        "G_synthesis/128x128/Conv0_up/weight": (3, 3, 512, 256),
        "G_synthesis/1024x1024/Conv1/mod_weight": (512, 32),
        "G_synthesis/1024x1024/ToRGB/weight": (1, 1, 32, 3),
        "dlatent_avg": (512,),
    }
    assert {k: g[k] for k in known_g} == known_g
    assert G.num_ws == 18
    assert sum(int(np.prod(s)) for n, s in g.items() if "noise" not in n or "strength" in n) > 30_000_000
    del G
    d = shapes(Discriminator(1024, seed=0))
    known_d = {"1024x1024/FromRGB/weight": (1, 1, 3, 32), "1024x1024/Conv1_down/weight": (3, 3, 32, 64),
               "1024x1024/Skip/weight": (1, 1, 32, 64), "4x4/Conv/weight": (3, 3, 513, 512),
               "4x4/Dense0/weight": (8192, 512), "Output/weight": (512, 1)}
    assert {k: d[k] for k in known_d} == known_d
    assert channels_at(9, 16384, 512) == 32 and channels_at(1, 16384, 512) == 512


def test_bad_resolution_is_refused():
    with pytest.raises(ValueError, match="power of two"):
        Generator(48, **TINY_G)


# ---------------------------------------------------------------- generator behaviour

def test_generator_output_shape_range_and_noise_modes(tiny_g):
    z = tf.random.stateless_normal([4, 32], seed=[1, 2])
    img = tiny_g(z, noise_mode="const")
    assert img.shape == (4, 32, 32, 3) and img.dtype == tf.float32
    assert np.isfinite(img.numpy()).all()
    assert 0.05 < float(tf.math.reduce_std(img)) < 10.0          # a real signal, not exploding
    assert np.array_equal(img.numpy(), tiny_g(z, noise_mode="const").numpy())
    # different latents give different images
    assert not np.allclose(img[0].numpy(), img[1].numpy())

    G = clone_network(tiny_g)
    for name, var in G.named_variables().items():
        if name.endswith("noise_strength"):
            var.assign(0.5)
    a, b = G(z, noise_mode="random"), G(z, noise_mode="random")
    assert not np.allclose(a.numpy(), b.numpy())                   # fresh noise every call
    assert np.array_equal(G(z, noise_mode="const").numpy(), G(z, noise_mode="const").numpy())
    assert not np.allclose(G(z, noise_mode="none").numpy(), G(z, noise_mode="const").numpy())
    with pytest.raises(ValueError, match="noise_mode"):
        G(z, noise_mode="bogus")


def test_mapping_w_avg_and_truncation(tiny_g):
    G = clone_network(tiny_g)
    z = tf.random.stateless_normal([8, 32], seed=[3, 4])
    ws = G.mapping(z)
    assert ws.shape == (8, G.num_ws, 32)
    assert np.array_equal(ws[:, 0].numpy(), ws[:, -1].numpy())      # broadcast to every layer

    G.mapping(z, update_w_avg=True)                                   # w_avg: 0 -> (1-beta) * mean
    np.testing.assert_allclose(G.w_avg.numpy(), 0.005 * ws[:, 0].numpy().mean(0), rtol=1e-4, atol=1e-7)

    G.w_avg.assign(tf.reduce_mean(ws[:, 0], axis=0))
    collapsed = G.mapping(z, truncation_psi=0.0)
    np.testing.assert_allclose(collapsed.numpy(), np.broadcast_to(G.w_avg.numpy(), collapsed.shape), atol=1e-6)
    half = G.mapping(z, truncation_psi=0.5, truncation_cutoff=3)
    np.testing.assert_allclose(half[:, :3].numpy(), (0.5 * (ws[:, :3] + G.w_avg)).numpy(), atol=1e-5)
    np.testing.assert_allclose(half[:, 3:].numpy(), ws[:, 3:].numpy(), atol=1e-6)
    # psi 0: every latent gives the average image
    images = G(z, truncation_psi=0.0, noise_mode="const")
    np.testing.assert_allclose(images[0].numpy(), images[5].numpy(), atol=1e-5)


# ---------------------------------------------------------------- ops

def test_modulated_conv_demodulation_gives_unit_variance():
    rng = np.random.default_rng(0)
    x = tf.constant(rng.standard_normal([8, 16, 16, 64]), tf.float32)
    w = tf.constant(rng.standard_normal([3, 3, 64, 32]), tf.float32)
    styles = tf.constant(np.exp(rng.normal(0, 1.0, [8, 64])) * 5.0, tf.float32)  # wildly scaled
    y = ops.modulated_conv2d(x, w, styles, demodulate=True)
    inner = y[:, 1:-1, 1:-1, :].numpy()                              # away from zero padding
    per_sample_std = inner.reshape(8, -1).std(axis=1)
    assert np.all(np.abs(per_sample_std - 1.0) < 0.15), per_sample_std
    raw = ops.modulated_conv2d(x, w, styles, demodulate=False)[:, 1:-1, 1:-1, :].numpy()
    assert raw.std() > 10.0                                          # demodulation did the work
    # demodulated output ignores the overall scale of a sample's styles, also when upsampling
    for up in (False, True):
        y1 = ops.modulated_conv2d(x, w, styles, demodulate=True, up=up)
        y3 = ops.modulated_conv2d(x, w, styles * 3.0, demodulate=True, up=up)
        np.testing.assert_allclose(y3.numpy(), y1.numpy(), rtol=1e-4, atol=1e-5)
    assert y1.shape == (8, 32, 32, 32)


def test_fir_resampling_matches_tf1_semantics():
    rng = np.random.default_rng(1)
    x = tf.constant(rng.standard_normal([2, 8, 8, 5]), tf.float32)
    eye = np.eye(5, dtype=np.float32)
    center = np.zeros([3, 3, 5, 5], np.float32)
    center[1, 1] = eye
    # a centred delta kernel reduces the fused up/down convs to plain FIR resampling
    np.testing.assert_allclose(ops.upsample_conv_2d(x, center).numpy(), ops.upsample_2d(x).numpy(), atol=1e-6)
    np.testing.assert_allclose(ops.conv_downsample_2d(x, center).numpy(), ops.downsample_2d(x).numpy(), atol=1e-6)
    np.testing.assert_allclose(ops.upsample_conv_2d(x, center[1:2, 1:2]).numpy(), ops.upsample_2d(x).numpy(),
                               atol=1e-6)
    # a corner delta is a correlation: output(y, x) = upsampled(y - 1, x - 1), like tf.nn.conv2d
    corner = np.zeros([3, 3, 5, 5], np.float32)
    corner[0, 0] = eye
    shifted = ops.upsample_conv_2d(x, corner).numpy()
    np.testing.assert_allclose(shifted[:, 1:, 1:], ops.upsample_2d(x).numpy()[:, :-1, :-1], atol=1e-6)
    # [1,3,3,1] keeps a constant image constant away from the borders
    const = tf.ones([1, 8, 8, 2])
    np.testing.assert_allclose(ops.upsample_2d(const).numpy()[:, 2:-2, 2:-2], 1.0, atol=1e-6)
    np.testing.assert_allclose(ops.downsample_2d(const).numpy()[:, 1:-1, 1:-1], 1.0, atol=1e-6)
    assert ops.upsample_2d(x).shape == (2, 16, 16, 5) and ops.downsample_2d(x).shape == (2, 4, 4, 5)


# ---------------------------------------------------------------- discriminator

def test_discriminator_minibatch_stddev_couples_group_members(tiny_d):
    rng = np.random.default_rng(2)
    images = rng.uniform(-1, 1, [8, 32, 32, 3]).astype(np.float32)
    base = tiny_d(images).numpy()
    assert base.shape == (8,) and np.isfinite(base).all()
    changed = images.copy()
    changed[2] = rng.uniform(-1, 1, [32, 32, 3])
    after = tiny_d(changed).numpy()
    # TF1 groups sample g*M + m into group m (M = N / 4 = 2): 0, 2, 4, 6 share statistics
    assert not np.isclose(after[0], base[0], atol=1e-6)
    np.testing.assert_allclose(after[[1, 3, 5, 7]], base[[1, 3, 5, 7]], atol=1e-6)
    # a batch smaller than the group is one group; a batch not divisible by it is refused
    assert tiny_d(images[:3]).shape == (3,)
    with pytest.raises(ValueError, match="divisible"):
        tiny_d(images[:6])

    no_mbstd = Discriminator(32, **TINY_D, mbstd_group_size=1, seed=2)
    assert "4x4/Conv/weight" in no_mbstd.named_variables()
    assert no_mbstd.named_variables()["4x4/Conv/weight"].shape == (3, 3, 32, 32)
    alone = no_mbstd(images).numpy()
    np.testing.assert_allclose(no_mbstd(changed).numpy()[[0, 1, 3]], alone[[0, 1, 3]], atol=1e-6)
    np.testing.assert_allclose(no_mbstd(images[:1]).numpy(), alone[:1], atol=1e-5)


def test_discriminator_supports_r1_double_backprop(tiny_d):
    """Lazy R1 differentiates the input-gradient norm with respect to D's weights."""
    x = tf.random.stateless_uniform([4, 32, 32, 3], seed=[5, 6], minval=-1, maxval=1)
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            inner.watch(x)
            scores = tf.reduce_sum(tiny_d(x))
        penalty = tf.reduce_sum(tf.square(inner.gradient(scores, x)))
    names, variables = zip(*tiny_d.named_variables().items())
    grads = outer.gradient(penalty, list(variables))
    missing = [n for n, g in zip(names, grads) if g is None]
    assert missing == ["Output/bias"]                                # a constant shift has no R1 grad
    assert all(np.isfinite(g.numpy()).all() for g in grads if g is not None)
    by_res = tiny_d.variables_by_resolution()
    assert sorted(by_res) == [4, 8, 16, 32] and len(by_res[32]) == 7


def test_mixed_precision_layers_track_float32():
    G = Generator(16, **TINY_G, seed=3)
    D = Discriminator(16, **TINY_D, seed=4)
    G16 = Generator(16, **TINY_G, num_fp16_res=2, conv_clamp=256)
    D16 = Discriminator(16, **TINY_D, num_fp16_res=2, conv_clamp=256)
    G16.assign_named({n: v.numpy() for n, v in G.named_variables().items()})
    D16.assign_named({n: v.numpy() for n, v in D.named_variables().items()})
    z = tf.random.stateless_normal([4, 32], seed=[7, 8])
    ref, half = G(z, noise_mode="const"), G16(z, noise_mode="const")
    assert half.dtype == tf.float32
    np.testing.assert_allclose(half.numpy(), ref.numpy(), atol=0.05)
    np.testing.assert_allclose(D16(ref).numpy(), D(ref).numpy(), atol=0.05)


# ---------------------------------------------------------------- checkpoints

def test_checkpoint_round_trip_is_exact(tmp_path, tiny_g, tiny_d):
    Gs = clone_network(tiny_g, name="Gs")
    Gs.w_avg.assign(tf.fill([32], 0.25))
    path = tmp_path / "snap" / "network-snapshot-000000064.npz"
    save_network(path, tiny_g, tiny_d, Gs, {"kimg": 0.064, "ada_p": 0.1})
    assert [p.name for p in path.parent.iterdir()] == [path.name]    # no temp file left behind
    with np.load(path, allow_pickle=False) as data:                   # loadable without pickle
        assert "G/G_synthesis/4x4/Const/const" in data.files and "D/Output/weight" in data.files
    assert read_meta(path)["extra"] == {"kimg": 0.064, "ada_p": 0.1}

    G2, D2, Gs2, extra = load_network(path)
    assert extra == {"kimg": 0.064, "ada_p": 0.1}
    z = tf.random.stateless_normal([4, 32], seed=[9, 10])
    for ours, theirs in ((tiny_g, G2), (Gs, Gs2)):
        np.testing.assert_array_equal(ours(z, noise_mode="const", truncation_psi=0.7).numpy(),
                                      theirs(z, noise_mode="const", truncation_psi=0.7).numpy())
    images = tiny_g(z, noise_mode="const")
    np.testing.assert_array_equal(tiny_d(images).numpy(), D2(images).numpy())
    assert G2.init_kwargs == tiny_g.init_kwargs and D2.init_kwargs == tiny_d.init_kwargs

    only_gs = tmp_path / "gs.npz"
    save_network(only_gs, None, None, Gs, {})
    G3, D3, Gs3, _ = load_network(only_gs, num_fp16_res=0)
    assert G3 is None and D3 is None and Gs3.w_avg.numpy()[0] == 0.25


def test_checkpoint_mismatch_and_clone_independence(tmp_path, tiny_g):
    clone = clone_network(tiny_g)
    clone.named_variables()["G_synthesis/4x4/Conv/bias"].assign(tf.ones([32]))
    assert not np.any(tiny_g.named_variables()["G_synthesis/4x4/Conv/bias"].numpy() == 1.0)

    arrays = {n: v.numpy() for n, v in tiny_g.named_variables().items()}
    arrays["G_synthesis/4x4/Conv/bias"] = np.zeros([31], np.float32)
    del arrays["dlatent_avg"]
    arrays["G_synthesis/extra"] = np.zeros([1], np.float32)
    with pytest.raises(ValueError) as err:
        clone.assign_named(arrays)
    message = str(err.value)
    assert "dlatent_avg" in message and "G_synthesis/extra" in message and "(31,)" in message

    not_ours = tmp_path / "plain.npz"
    np.savez(not_ours, a=np.zeros(3))
    with pytest.raises(ValueError, match="not a faceprep-stylegan2 checkpoint"):
        load_network(not_ours)
