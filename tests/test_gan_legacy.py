"""gan.legacy: NVIDIA StyleGAN2 TF1 pickles, imported through the allow-listed Unpickler.

The pickles are built here the way TF1 wrote them: a class named
``dnnlib.tflib.network.Network`` whose ``__getstate__`` returns the TF1 state dict, dumped with
plain ``pickle`` (protocol 3), variables under the official config-f names.
"""
from __future__ import annotations

import builtins
import os
import pickle
import subprocess
import sys
import types

import numpy as np
import pytest
import tensorflow as tf

from gan.legacy import RefusedGlobalError, load_tf1_pickle, read_tf1_pickle, save_tf1_pickle
from test_gan_networks import expected_tf1_discriminator, expected_tf1_generator

RES, BASE, FMAX, LATENT, MAPPING = 32, 256, 32, 32, 2


@pytest.fixture
def fake_dnnlib(monkeypatch):
    """A stand-in ``dnnlib.tflib.network`` module so plain pickle writes TF1's class path."""
    mod = types.ModuleType("dnnlib.tflib.network")

    class Network:
        def __init__(self, state):
            self.state = state

        def __getstate__(self):
            return self.state

    Network.__module__ = "dnnlib.tflib.network"
    Network.__qualname__ = "Network"
    mod.Network = Network
    for name, module in (("dnnlib", types.ModuleType("dnnlib")), ("dnnlib.tflib", types.ModuleType("dnnlib.tflib")),
                         ("dnnlib.tflib.network", mod)):
        monkeypatch.setitem(sys.modules, name, module)
    return Network


def tf1_state(name, func, static_kwargs, variables, components=None):
    return {"version": 4, "name": name, "static_kwargs": static_kwargs, "components": components or {},
            "build_module_src": "# networks_stylegan2.py would be here\n",
            "build_func_name": func, "variables": variables}


def official_tf1_networks(Network, resolution=RES, seed=0, g_extra=None, d_extra=None, drop=()):
    """(G, D, Gs) as TF1 Networks with random values under the official names, and the
    values by full name for each of G, D, Gs."""
    rng = np.random.default_rng(seed)
    g_static = {"num_channels": 3, "resolution": resolution, "label_size": 0, "fmap_base": BASE,
                "fmap_max": FMAX, "latent_size": LATENT, "dlatent_size": LATENT, "mapping_fmaps": LATENT,
                "mapping_layers": MAPPING, **(g_extra or {})}
    d_static = {"num_channels": 3, "resolution": resolution, "label_size": 0, "fmap_base": BASE,
                "fmap_max": FMAX, "mbstd_group_size": 4, "mbstd_num_features": 1, **(d_extra or {})}
    values = {}

    def generator(name):
        shapes = expected_tf1_generator(resolution, BASE, FMAX, LATENT, MAPPING)
        full = {n: rng.standard_normal(s).astype(np.float32) * 0.5 for n, s in shapes.items() if n not in drop}
        sub = lambda prefix: [(n[len(prefix) + 1:], v) for n, v in full.items() if n.startswith(prefix + "/")]  # noqa: E731
        synthesis = Network(tf1_state("G_synthesis", "G_synthesis_stylegan2", dict(g_static), sub("G_synthesis")))
        mapping = Network(tf1_state("G_mapping", "G_mapping", {**g_static, "dlatent_broadcast": 2 * int(np.log2(resolution)) - 2},
                                    sub("G_mapping")))
        own = [("lod", np.float32(0.0)), ("dlatent_avg", full["dlatent_avg"])]
        values[name] = full
        return Network(tf1_state(name, "training.networks_stylegan2.G_main", dict(g_static), own,
                                 {"synthesis": synthesis, "mapping": mapping}))

    G = generator("G")
    d_shapes = expected_tf1_discriminator(resolution, BASE, FMAX)
    values["D"] = {n: rng.standard_normal(s).astype(np.float32) * 0.5 for n, s in d_shapes.items() if n not in drop}
    D = Network(tf1_state("D", "training.networks_stylegan2.D_stylegan2", d_static, list(values["D"].items())))
    Gs = generator("Gs")
    return (G, D, Gs), values


def write_pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=3)   # TF1-era default protocol
    return path


def test_official_names_import_every_variable_and_round_trip(tmp_path, fake_dnnlib):
    nets, values = official_tf1_networks(fake_dnnlib)
    path = write_pickle(tmp_path / "network-snapshot-000010.pkl", nets)
    G, D, Gs = load_tf1_pickle(path)
    assert G.init_kwargs["resolution"] == RES and G.init_kwargs["channel_base"] == BASE
    assert G.init_kwargs["latent_dim"] == LATENT and G.init_kwargs["mapping_layers"] == MAPPING
    assert D.init_kwargs["mbstd_group_size"] == 4
    # every TF1 variable landed in the variable of the same name, and every one of ours came from it
    for ours, role in ((G, "G"), (D, "D"), (Gs, "Gs")):
        named = ours.named_variables()
        assert set(named) == set(values[role])
        for name, var in named.items():
            np.testing.assert_array_equal(var.numpy(), values[role][name], err_msg=f"{role} {name}")

    z = tf.random.stateless_normal([4, LATENT], seed=[1, 2])
    images = Gs(z, truncation_psi=0.7, noise_mode="const")
    assert images.shape == (4, RES, RES, 3) and np.isfinite(images.numpy()).all()
    scores = D(images)

    again = tmp_path / "again.pkl"
    save_tf1_pickle(again, G, D, Gs)
    G2, D2, Gs2 = load_tf1_pickle(again)
    np.testing.assert_array_equal(Gs2(z, truncation_psi=0.7, noise_mode="const").numpy(), images.numpy())
    np.testing.assert_array_equal(G2(z, noise_mode="const").numpy(), G(z, noise_mode="const").numpy())
    np.testing.assert_array_equal(D2(images).numpy(), scores.numpy())
    # our writer uses TF1's structure: G's own vars (lod, dlatent_avg) plus named components
    tf1_G, tf1_D, tf1_Gs = read_tf1_pickle(again)
    assert [n for n, _ in tf1_G.state["variables"]] == ["lod", "dlatent_avg"]
    assert {c.name for c in tf1_G.components.values()} == {"G_mapping", "G_synthesis"}
    assert set(tf1_Gs.all_variables()) == set(values["Gs"]) | {"lod"}
    assert tf1_D.build_func_name == "D_stylegan2" and tf1_G.static_kwargs["fmap_base"] == BASE


def test_unused_or_missing_variables_are_listed(tmp_path, fake_dnnlib):
    nets, _ = official_tf1_networks(fake_dnnlib, drop=("G_synthesis/noise3",))
    with pytest.raises(ValueError, match=r"missing \['G_synthesis/noise3'\]"):
        load_tf1_pickle(write_pickle(tmp_path / "missing.pkl", nets))

    nets, _ = official_tf1_networks(fake_dnnlib)
    nets[1].state["variables"].append(("4x4/Extra/weight", np.zeros([3], np.float32)))
    with pytest.raises(ValueError, match=r"unused \['4x4/Extra/weight'\]"):
        load_tf1_pickle(write_pickle(tmp_path / "extra.pkl", nets))

    nets, _ = official_tf1_networks(fake_dnnlib, d_extra={"architecture": "skip"})
    with pytest.raises(ValueError, match="unsupported TF1 architecture"):
        load_tf1_pickle(write_pickle(tmp_path / "skipd.pkl", nets))

    nets, _ = official_tf1_networks(fake_dnnlib, g_extra={"fmap_base": 512})  # shapes no longer fit
    with pytest.raises(ValueError, match="shape mismatch"):
        load_tf1_pickle(write_pickle(tmp_path / "shapes.pkl", nets))


def test_lower_resolution_keeps_shared_layers(tmp_path, fake_dnnlib):
    nets, values = official_tf1_networks(fake_dnnlib)
    G, D, Gs = load_tf1_pickle(write_pickle(tmp_path / "net.pkl", nets), resolution=16)
    assert G.resolution == 16 and G.num_ws == 6
    for name, var in Gs.named_variables().items():
        np.testing.assert_array_equal(var.numpy(), values["Gs"][name])
    fresh = {"16x16/FromRGB/weight", "16x16/FromRGB/bias"}
    for name, var in D.named_variables().items():
        if name not in fresh:
            np.testing.assert_array_equal(var.numpy(), values["D"][name])
    assert fresh <= set(D.named_variables()) and not fresh & set(values["D"])
    assert Gs(tf.zeros([2, LATENT]), noise_mode="const").shape == (2, 16, 16, 3)
    with pytest.raises(ValueError, match="cannot import a 32 px network at 64 px"):
        load_tf1_pickle(tmp_path / "net.pkl", resolution=64)


# ---------------------------------------------------------------- malicious pickles

class _SystemPayload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvalPayload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (builtins.eval, (f"open({str(self.marker)!r}, 'w').write('owned')",))


class _PopenPayload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (subprocess.Popen, (["touch", str(self.marker)],))


@pytest.mark.parametrize("payload, refused", [(_SystemPayload, "posix.system"),
                                              (_EvalPayload, "builtins.eval"),
                                              (_PopenPayload, "subprocess.Popen")])
def test_malicious_pickles_are_refused_without_running(tmp_path, payload, refused):
    marker = tmp_path / "owned"
    path = write_pickle(tmp_path / "evil.pkl", payload(marker))
    with pytest.raises(RefusedGlobalError, match=refused.replace(".", r"\.")) as err:
        load_tf1_pickle(path)
    assert "not allowed in a TF1 network pickle" in str(err.value)
    assert not marker.exists()


def test_payload_hidden_inside_a_network_is_refused(tmp_path, fake_dnnlib):
    marker = tmp_path / "owned"
    nets, _ = official_tf1_networks(fake_dnnlib)
    nets[0].state["static_kwargs"]["truncation_psi"] = _SystemPayload(marker)
    path = write_pickle(tmp_path / "trojan.pkl", nets)
    with pytest.raises(RefusedGlobalError, match=r"posix\.system"):
        load_tf1_pickle(path)
    assert not marker.exists()
    # control: the same bytes do run their payload under plain pickle (in a child process)
    code = "import pickle, sys; pickle.load(open(sys.argv[1], 'rb'))"
    control = write_pickle(tmp_path / "control.pkl", _SystemPayload(marker))
    subprocess.run([sys.executable, "-c", code, str(control)], check=True, capture_output=True)
    assert marker.exists()


def test_non_network_pickle_is_rejected(tmp_path):
    path = write_pickle(tmp_path / "plain.pkl", {"weights": np.zeros(3)})
    with pytest.raises(ValueError, match=r"expected a \(G, D, Gs\) tuple"):
        load_tf1_pickle(path)
