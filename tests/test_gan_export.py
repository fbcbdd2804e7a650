"""TF1 network pickles out (export_model) and in (NVIDIA stylegan2 config-e/f, stylegan2-ada TF).

The import fixtures are written from NVIDIA's published build functions, not from our export:
``training/networks_stylegan2.py`` (G_main, G_mapping, G_synthesis_stylegan2, D_stylegan2) and
stylegan2-ada's ``training/networks.py`` (G_main, G_mapping, G_synthesis, D_main), with the
static kwargs their training scripts pass (stylegan2 ``run_training.py``: num_channels,
resolution, label_size and fmap_base=8<<10 below config-f; stylegan2-ada ``train.py``: also
fmap_base, fmap_max, mapping_layers, num_fp16_res=4, conv_clamp=256, mbstd_group_size).
Variables are listed per network with component-local names, in the order those functions
create them; ``build_func_name`` is the bare function name, as dnnlib stores it.
"""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import tensorflow as tf

from gan import checkpoint
from gan.legacy import export_model, load_tf1_pickle, read_tf1_pickle
from gan.networks import Discriminator, Generator
from test_gan_legacy import fake_dnnlib, tf1_state, write_pickle  # noqa: F401  (fixture)

# The kwargs stylegan2-ada-pytorch's legacy.py knows (convert_tf_generator /
# convert_tf_discriminator); anything else raises "Unknown TensorFlow kwarg".
PYTORCH_LEGACY_G = {"latent_size", "label_size", "dlatent_size", "resolution", "num_channels",
                    "mapping_layers", "label_fmaps", "mapping_fmaps", "mapping_nonlinearity",
                    "mapping_lrmul", "w_avg_beta", "fmap_base", "fmap_max", "num_fp16_res",
                    "conv_clamp", "architecture", "resample_kernel", "use_noise", "nonlinearity",
                    "truncation_psi", "truncation_cutoff", "style_mixing_prob", "structure"}
PYTORCH_LEGACY_D = {"label_size", "resolution", "num_channels", "architecture", "fmap_base",
                    "fmap_max", "num_fp16_res", "conv_clamp", "mapping_fmaps", "nonlinearity",
                    "resample_kernel", "freeze_layers", "mapping_layers", "mapping_lrmul",
                    "mbstd_group_size", "mbstd_num_features", "structure"}
# The keyword arguments of NVIDIA stylegan2's build functions (networks_stylegan2.py).
STYLEGAN2_G = {"truncation_psi", "truncation_cutoff", "truncation_psi_val", "truncation_cutoff_val",
               "dlatent_avg_beta", "style_mixing_prob", "mapping_func", "synthesis_func",
               "latent_size", "label_size", "dlatent_size", "dlatent_broadcast", "mapping_layers",
               "mapping_fmaps", "mapping_lrmul", "mapping_nonlinearity", "normalize_latents", "dtype",
               "num_channels", "resolution", "fmap_base", "fmap_decay", "fmap_min", "fmap_max",
               "randomize_noise", "architecture", "nonlinearity", "resample_kernel", "fused_modconv"}
STYLEGAN2_D = {"num_channels", "resolution", "label_size", "fmap_base", "fmap_decay", "fmap_min",
               "fmap_max", "architecture", "nonlinearity", "mbstd_group_size", "mbstd_num_features",
               "dtype", "resample_kernel"}


# ---------------------------------------------------------------- NVIDIA-layout fixtures

def _nf(kw):
    base, decay = kw.get("fmap_base", 16 << 10), kw.get("fmap_decay", 1.0)
    return lambda stage: int(np.clip(int(base / (2.0 ** (stage * decay))), kw.get("fmap_min", 1),
                                     kw.get("fmap_max", 512)))


def nvidia_mapping_vars(kw):
    """G_mapping: Dense{i}/weight [in, fmaps] and bias, lrmul layers (names only matter)."""
    latent, dlatent = kw.get("latent_size", 512), kw.get("dlatent_size", 512)
    fmaps = kw.get("mapping_fmaps") or dlatent
    out, fan_in = [], latent
    for i in range(kw.get("mapping_layers", 8)):
        width = fmaps if i < kw.get("mapping_layers", 8) - 1 else dlatent
        out += [(f"Dense{i}/weight", (fan_in, width)), (f"Dense{i}/bias", (width,))]
        fan_in = width
    return out


def nvidia_synthesis_vars(kw):
    """G_synthesis_stylegan2 / G_synthesis (skip): noise inputs first, then 4x4 and each block."""
    log2 = int(np.log2(kw["resolution"]))
    nf, dl, ch = _nf(kw), kw.get("dlatent_size", 512), kw.get("num_channels", 3)
    out = [(f"noise{i}", (1, 1, 2 ** ((i + 5) // 2), 2 ** ((i + 5) // 2))) for i in range(2 * log2 - 3)]

    def modconv(scope, fin, fout, k=3, noise=True):
        out.extend([(f"{scope}/weight", (k, k, fin, fout)), (f"{scope}/mod_weight", (dl, fin)),
                    (f"{scope}/mod_bias", (fin,))])
        if noise:
            out.append((f"{scope}/noise_strength", ()))
        out.append((f"{scope}/bias", (fout,)))

    out.append(("4x4/Const/const", (1, nf(1), 4, 4)))
    modconv("4x4/Conv", nf(1), nf(1))
    modconv("4x4/ToRGB", nf(1), ch, k=1, noise=False)
    for res in range(3, log2 + 1):
        s = f"{2 ** res}x{2 ** res}"
        modconv(f"{s}/Conv0_up", nf(res - 2), nf(res - 1))
        modconv(f"{s}/Conv1", nf(res - 1), nf(res - 1))
        modconv(f"{s}/ToRGB", nf(res - 1), ch, k=1, noise=False)
    return out


def nvidia_d_vars(kw, family):
    """D_stylegan2 / D_main (resnet): FromRGB at the top, Conv0, Conv1_down, Skip per block,
    then the 4x4 epilogue (minibatch stddev adds mbstd_num_features channels) and Output."""
    log2 = int(np.log2(kw["resolution"]))
    nf, ch = _nf(kw), kw.get("num_channels", 3)
    r = kw["resolution"]
    out = [(f"{r}x{r}/FromRGB/weight", (1, 1, ch, nf(log2 - 1))), (f"{r}x{r}/FromRGB/bias", (nf(log2 - 1),))]
    for res in range(log2, 2, -1):
        s = f"{2 ** res}x{2 ** res}"
        out += [(f"{s}/Conv0/weight", (3, 3, nf(res - 1), nf(res - 1))), (f"{s}/Conv0/bias", (nf(res - 1),)),
                (f"{s}/Conv1_down/weight", (3, 3, nf(res - 1), nf(res - 2))),
                (f"{s}/Conv1_down/bias", (nf(res - 2),)),
                (f"{s}/Skip/weight", (1, 1, nf(res - 1), nf(res - 2)))]
    features = kw.get("mbstd_num_features", 1)
    group = kw.get("mbstd_group_size", 4 if family == "stylegan2" else None)
    # stylegan2 adds the layer when group > 1, stylegan2-ada when features > 0
    on = group > 1 if family == "stylegan2" else features > 0
    mbstd = features if on else 0
    out += [("4x4/Conv/weight", (3, 3, nf(1) + mbstd, nf(1))), ("4x4/Conv/bias", (nf(1),)),
            ("4x4/Dense0/weight", (nf(1) * 16, nf(0))), ("4x4/Dense0/bias", (nf(0),)),
            ("Output/weight", (nf(0), 1)), ("Output/bias", (1,))]
    return out


FUNCS = {"stylegan2": ("G_main", "G_mapping", "G_synthesis_stylegan2", "D_stylegan2"),
         "stylegan2-ada": ("G_main", "G_mapping", "G_synthesis", "D_main")}


def nvidia_pickle(Network, path, family, g_kw, d_kw, seed=0, funcs=None):
    """(G, D, Gs) as the TF1 training loop pickles them; returns the values by full name."""
    rng = np.random.default_rng(seed)
    g_main, g_mapping, g_synthesis, d_main = funcs or FUNCS[family]
    rand = lambda shape: (rng.standard_normal(shape) * 0.5).astype(np.float32)  # noqa: E731
    values = {}

    def generator(name):
        syn = [(n, rand(s)) for n, s in nvidia_synthesis_vars(g_kw)]
        num_layers = 2 * int(np.log2(g_kw["resolution"])) - 2
        mp = [(n, rand(s)) for n, s in nvidia_mapping_vars(g_kw)]
        # stylegan2's G_main creates lod then dlatent_avg; stylegan2-ada's only dlatent_avg
        own = ([("lod", np.float32(0))] if family == "stylegan2" else []) + \
            [("dlatent_avg", rand([g_kw.get("dlatent_size", 512)]))]
        synthesis = Network(tf1_state("G_synthesis", g_synthesis, dict(g_kw), syn))
        mapping = Network(tf1_state("G_mapping", g_mapping, {"dlatent_broadcast": num_layers, **g_kw}, mp))
        values[name] = {**{f"G_synthesis/{n}": v for n, v in syn}, **{f"G_mapping/{n}": v for n, v in mp},
                        **dict(own)}
        return Network(tf1_state(name, g_main, dict(g_kw), own, {"synthesis": synthesis, "mapping": mapping}))

    G = generator("G")
    d_vars = [(n, rand(s)) for n, s in nvidia_d_vars(d_kw, family)]
    values["D"] = dict(d_vars)
    D = Network(tf1_state("D", d_main, dict(d_kw), d_vars))
    Gs = generator("Gs")
    write_pickle(path, (G, D, Gs))
    return values


# run_training.py (stylegan2): config-f passes no fmap_base (16<<10), config-e 8<<10
CONFIG_F = {"num_channels": 3, "resolution": 8, "label_size": 0}
CONFIG_E = {"num_channels": 3, "resolution": 16, "label_size": 0, "fmap_base": 8 << 10}
# train.py (stylegan2-ada), paper256-like, narrowed (fmap_max, latent) to stay CPU-sized
ADA_G = {"num_channels": 3, "resolution": 32, "label_size": 0, "fmap_base": 8192, "fmap_max": 64,
         "mapping_layers": 8, "num_fp16_res": 4, "conv_clamp": 256, "latent_size": 64, "dlatent_size": 64}
ADA_D = {"num_channels": 3, "resolution": 32, "label_size": 0, "fmap_base": 8192, "fmap_max": 64,
         "mbstd_group_size": 8, "num_fp16_res": 4, "conv_clamp": 256}


@pytest.mark.parametrize("family, g_kw, d_kw, target", [
    ("stylegan2", CONFIG_F, CONFIG_F, None),            # config-f, full width (512 channels)
    ("stylegan2", CONFIG_E, CONFIG_E, 8),               # config-e, cut to a lower dataset resolution
    ("stylegan2-ada", ADA_G, ADA_D, 16),
], ids=["stylegan2-config-f", "stylegan2-config-e-cut", "stylegan2-ada-cut"])
def test_nvidia_pickles_load_and_run(tmp_path, fake_dnnlib, family, g_kw, d_kw, target):
    path = tmp_path / "network-snapshot.pkl"
    values = nvidia_pickle(fake_dnnlib, path, family, g_kw, d_kw)
    G, D, Gs = load_tf1_pickle(path, resolution=target)
    res = target or g_kw["resolution"]
    assert G.resolution == Gs.resolution == D.resolution == res
    assert G.init_kwargs["channel_base"] == g_kw.get("fmap_base", 16384)
    assert G.latent_dim == g_kw.get("latent_size", 512) and G.mapping_layers == 8
    assert G.w_avg_beta == 0.995                       # NVIDIA's default when the kwarg is absent
    assert D.init_kwargs["mbstd_group_size"] == d_kw.get("mbstd_group_size", 4)
    for net, role in ((Gs, "Gs"), (D, "D")):
        for name, var in net.named_variables().items():
            if name in values[role]:
                np.testing.assert_array_equal(var.numpy(), values[role][name], err_msg=name)
            else:   # only D's FromRGB at a lower target resolution is new
                assert target and name.startswith(f"{target}x{target}/FromRGB/"), name
    z = tf.random.stateless_normal([8, G.latent_dim], seed=[3, 4])
    images = Gs(z, truncation_psi=0.5, noise_mode="const")
    assert images.shape == (8, res, res, 3) and np.isfinite(images.numpy()).all()
    scores = D(images).numpy()
    assert scores.shape == (8,) and np.isfinite(scores).all()


def test_dlatent_avg_beta_none_means_not_tracked(tmp_path, fake_dnnlib):
    g_kw = {**CONFIG_E, "resolution": 8, "fmap_max": 16, "latent_size": 16, "dlatent_size": 16,
            "mapping_fmaps": 16, "mapping_layers": 2, "dlatent_avg_beta": None}
    d_kw = {**CONFIG_E, "resolution": 8, "fmap_max": 16}
    values = nvidia_pickle(fake_dnnlib, tmp_path / "n.pkl", "stylegan2", g_kw, d_kw)
    G, _, _ = load_tf1_pickle(tmp_path / "n.pkl")
    assert G.w_avg_beta == 1.0
    G(tf.random.normal([4, 16]), training=True)   # a training call tracks w_avg... unless off
    np.testing.assert_array_equal(G.w_avg.numpy(), values["G"]["dlatent_avg"])
    nvidia_pickle(fake_dnnlib, tmp_path / "b.pkl", "stylegan2", {**g_kw, "dlatent_avg_beta": 0.9}, d_kw)
    G, _, _ = load_tf1_pickle(tmp_path / "b.pkl")
    assert G.w_avg_beta == 0.9


def test_other_build_functions_are_refused(tmp_path, fake_dnnlib):
    kw = {**CONFIG_E, "resolution": 8, "fmap_max": 16, "latent_size": 16, "dlatent_size": 16,
          "mapping_fmaps": 16, "mapping_layers": 2}
    # configs a-d: D_stylegan (progressive growing)
    nvidia_pickle(fake_dnnlib, tmp_path / "d.pkl", "stylegan2", kw, kw,
                  funcs=("G_main", "G_mapping", "G_synthesis_stylegan2", "D_stylegan"))
    with pytest.raises(ValueError, match="neither NVIDIA stylegan2"):
        load_tf1_pickle(tmp_path / "d.pkl")
    nvidia_pickle(fake_dnnlib, tmp_path / "m.pkl", "stylegan2-ada", kw, {**kw, "mbstd_group_size": None})
    with pytest.raises(ValueError, match="mbstd_group_size None"):
        load_tf1_pickle(tmp_path / "m.pkl")


# ---------------------------------------------------------------- export

class _PytorchStub(dict):
    """How stylegan2-ada-pytorch's _LegacyUnpickler sees a dnnlib Network: an EasyDict whose
    pickled state lands in its attributes (no __setstate__)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class _PytorchUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) == ("dnnlib.tflib.network", "Network"):
            return _PytorchStub
        return super().find_class(module, name)


def _collect(net, prefix=""):
    """Parameters by the names stylegan2-ada-pytorch's converter looks up: own variables, then
    each component under its key in ``components`` (mapping/..., synthesis/...)."""
    out = {prefix + n: v for n, v in net.variables}
    for key, comp in net.components.items():
        out.update(_collect(comp, prefix + key + "/"))
    return out


def test_export_model_round_trips_bit_for_bit_and_fits_pytorch_legacy(tmp_path, caplog):
    kw = dict(resolution=16, num_channels=3, channel_base=256, channel_max=32)
    G = Generator(**kw, latent_dim=32, mapping_layers=2, seed=1, name="G")
    Gs = Generator(**kw, latent_dim=32, mapping_layers=2, seed=2, name="Gs")
    D = Discriminator(**kw, seed=3, name="D")
    Gs.w_avg.assign(tf.random.stateless_normal([32], seed=[5, 6]))
    final = tmp_path / "network-final.npz"
    checkpoint.save_network(final, G, D, Gs, {"kimg": 1.0})
    summary = export_model(final, tmp_path / "model" / "tiny.pkl", tmp_path / "model" / "tiny.npz")
    assert summary["resolution"] == 16

    # back through our importer: every output bit for bit
    G2, D2, Gs2 = load_tf1_pickle(tmp_path / "model" / "tiny.pkl")
    z = tf.random.stateless_normal([4, 32], seed=[7, 8])
    for ours, back in ((G, G2), (Gs, Gs2)):
        for psi in (1.0, 0.6):
            np.testing.assert_array_equal(back(z, truncation_psi=psi, noise_mode="const").numpy(),
                                          ours(z, truncation_psi=psi, noise_mode="const").numpy())
    images = Gs(z, noise_mode="const")
    np.testing.assert_array_equal(D2(images).numpy(), D(images).numpy())
    # and the .npz copy is our checkpoint of the same networks
    G3, D3, Gs3, extra = checkpoint.load_network(tmp_path / "model" / "tiny.npz")
    assert extra["exported_from"] == str(final) and extra["kimg"] == 1.0
    np.testing.assert_array_equal(Gs3(z, noise_mode="const").numpy(), Gs(z, noise_mode="const").numpy())

    # what stylegan2-ada-pytorch's legacy.py reads: version 4, only kwargs it knows and that
    # NVIDIA's stylegan2 defines, parameters under mapping/ and synthesis/
    with open(tmp_path / "model" / "tiny.pkl", "rb") as f:
        tf_G, tf_D, tf_Gs = _PytorchUnpickler(f).load()
    for net in (tf_G, tf_Gs):
        assert net.version >= 4
        assert set(net.static_kwargs) <= PYTORCH_LEGACY_G & STYLEGAN2_G, net.static_kwargs
        assert "dlatent_avg_beta" not in net.static_kwargs
        assert net.static_kwargs["fmap_base"] == 256 and net.static_kwargs["latent_size"] == 32
        params = _collect(net)
        assert params["mapping/Dense1/weight"].shape == (32, 32)
        assert params["synthesis/4x4/Const/const"].shape == (1, 32, 4, 4)
        assert params["synthesis/noise4"].shape == (1, 1, 16, 16)
        assert params["synthesis/16x16/ToRGB/mod_bias"].shape == (32,)
        assert {net.components["mapping"].build_func_name, net.components["synthesis"].build_func_name,
                net.build_func_name} == {"G_mapping", "G_synthesis_stylegan2", "G_main"}
    np.testing.assert_array_equal(_collect(tf_Gs)["dlatent_avg"], Gs.w_avg.numpy())
    assert set(tf_D.static_kwargs) <= PYTORCH_LEGACY_D & STYLEGAN2_D
    assert tf_D.build_func_name == "D_stylegan2" and tf_D.version >= 4
    assert _collect(tf_D)["16x16/FromRGB/weight"].shape == (1, 1, 3, 32)
    # TF1-era module paths, so old readers resolve them
    raw = (tmp_path / "model" / "tiny.pkl").read_bytes()
    assert b"dnnlib.tflib.network\nNetwork" in raw and b"numpy.core.multiarray" in raw
    assert read_tf1_pickle(tmp_path / "model" / "tiny.pkl")[0].static_kwargs == tf_G.static_kwargs
