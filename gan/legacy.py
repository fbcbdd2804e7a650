"""Import (and write) NVIDIA StyleGAN2 TF1 network pickles without TF1 and without trusting them.

An official pickle holds ``(G, D, Gs)``, each a ``dnnlib.tflib.network.Network`` whose
pickled state is a dict: ``version``, ``name``, ``static_kwargs`` (the build function's
keyword arguments), ``components`` (sub-networks: G's ``mapping`` and ``synthesis``),
``build_module_src``, ``build_func_name`` and ``variables`` as (local name, ndarray) pairs.
TF1 rebuilt the graph by exec-ing ``build_module_src``; we never do: a restricted Unpickler
resolves only the Network stand-in below, numpy array/dtype/scalar reconstruction,
OrderedDict and a few inert builtins, and refuses every other global (os.system,
builtins.eval, subprocess.Popen...) before anything is called.

Variables are addressed by their full TF1 names (``G_mapping/Dense0/weight``,
``G_synthesis/8x8/Conv0_up/mod_weight``, ``dlatent_avg``, ``4x4/Dense0/bias``...), the same
names and shapes gan.networks uses, so importing is a strict name/shape match: every pickle
variable must be used and every one of ours assigned, or the import fails listing them.

Resolution: by default the networks are built at the pickle's resolution. With
``resolution=`` lower than the pickle's (e.g. a 1024 FFHQ model for a 512 dataset) the
generator keeps its layers up to that resolution (the skip architecture's partial RGB sum),
the discriminator keeps its blocks up to it and gets a freshly initialized FromRGB at the
new top resolution (it must be re-learned by fine-tuning); layers above are dropped by
name. A higher resolution than the pickle's is refused.

Families: NVIDIA stylegan2 pickles (config-e/f: ``G_main``/``G_mapping``/
``G_synthesis_stylegan2``, ``D_stylegan2``) and stylegan2-ada TF pickles (``G_main``/
``G_mapping``/``G_synthesis``, ``D_main``), told apart by their build function names; both
use the same variable names. ``dlatent_avg_beta=None`` (TF1: w_avg not tracked) becomes
``w_avg_beta=1.0`` (the average stays where it is).

``save_tf1_pickle`` writes the same format (protocol 3, numpy.core paths, as TF1-era
pickles) with only the static kwargs that NVIDIA's stylegan2 defines and stylegan2-ada-pytorch's
``legacy.py`` accepts (``EXPORT_G_KWARGS``/``EXPORT_D_KWARGS``), so that converter (and
stylegan3's, the same code) loads it. Its ``build_module_src`` is a note, not NVIDIA's code, so
TF1 dnnlib itself cannot rebuild such a file. ``python -m gan.legacy`` (``export_model``)
writes the pickle and a float32 ``.npz`` from one of our checkpoints.
"""
from __future__ import annotations

import collections
import io
import logging
import os
import pickle
import re

import numpy as np

from gan.networks import Discriminator, Generator
from util.files import atomic_write_bytes

log = logging.getLogger(__name__)

TF1_NETWORK = ("dnnlib.tflib.network", "Network")


class RefusedGlobalError(pickle.UnpicklingError):
    """The pickle asked for a global outside the allow-list."""


class TF1Network:
    """Stand-in for ``dnnlib.tflib.network.Network``: keeps the pickled state, runs nothing."""

    def __init__(self, name: str = "", static_kwargs: dict | None = None, components: dict | None = None,
                 build_func_name: str = "", variables: list | None = None, build_module_src: str = ""):
        self.state = {"version": 4, "name": name, "static_kwargs": dict(static_kwargs or {}),
                      "components": dict(components or {}), "build_module_src": build_module_src,
                      "build_func_name": build_func_name, "variables": list(variables or [])}

    def __setstate__(self, state) -> None:
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"TF1 Network state must be a dict, got {type(state).__name__}")
        self.state = state

    def __getstate__(self) -> dict:
        return self.state

    @property
    def name(self) -> str:
        return str(self.state.get("name"))

    @property
    def static_kwargs(self) -> dict:
        return dict(self.state.get("static_kwargs") or {})

    @property
    def build_func_name(self) -> str:
        return str(self.state.get("build_func_name"))

    @property
    def components(self) -> dict:
        return dict(self.state.get("components") or {})

    def all_variables(self) -> dict[str, np.ndarray]:
        """TF1 ``Network.vars``: own variables, then each component's under ``<its name>/``."""
        out: dict[str, np.ndarray] = {}
        for pair in self.state.get("variables") or []:
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and isinstance(pair[0], str)):
                raise ValueError(f"{self.name}: malformed variable entry {type(pair).__name__}")
            name, value = pair
            value = np.asarray(value)
            if value.dtype.kind not in "fiu":
                raise ValueError(f"{self.name}: variable {name} has non-numeric dtype {value.dtype}")
            out[name] = value
        for comp in self.components.values():
            if not isinstance(comp, TF1Network):
                raise ValueError(f"{self.name}: component {type(comp).__name__} is not a Network")
            out.update((f"{comp.name}/{n}", v) for n, v in comp.all_variables().items())
        return out


class _EasyDict(dict):
    """Stand-in for dnnlib.util.EasyDict (a dict with attribute access) in older states."""


def _numpy_core(module_suffix: str, name: str):
    import importlib
    return getattr(importlib.import_module(f"numpy._core.{module_suffix}"), name)


_RECONSTRUCT = _numpy_core("multiarray", "_reconstruct")
_SCALAR = _numpy_core("multiarray", "scalar")
_FROMBUFFER = _numpy_core("numeric", "_frombuffer")

# (module, name) -> object. Nothing here can run code, open files or import modules.
_ALLOWED = {
    TF1_NETWORK: TF1Network,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): __import__("codecs").encode,   # protocol-2 pickles store bytes this way
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "bytearray"): bytearray,
    ("builtins", "complex"): complex,
}
for _core in ("numpy.core", "numpy._core"):
    _ALLOWED[(f"{_core}.multiarray", "_reconstruct")] = _RECONSTRUCT
    _ALLOWED[(f"{_core}.multiarray", "scalar")] = _SCALAR
    _ALLOWED[(f"{_core}.numeric", "_frombuffer")] = _FROMBUFFER


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only allow-listed globals (see module docstring)."""

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise RefusedGlobalError(
                f"refused to load global {module}.{name}: not allowed in a TF1 network pickle "
                "(the file may be malicious or not a StyleGAN2 network)") from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids are not allowed in a TF1 network pickle")


def read_tf1_pickle(path: str | os.PathLike) -> tuple[TF1Network, TF1Network, TF1Network]:
    """The (G, D, Gs) stand-ins of a TF1 pickle, through the restricted Unpickler."""
    with open(path, "rb") as f:
        data = RestrictedUnpickler(f).load()
    if not (isinstance(data, tuple) and len(data) == 3 and all(isinstance(n, TF1Network) for n in data)):
        raise ValueError(f"{path}: expected a (G, D, Gs) tuple of TF1 Networks, got "
                         f"{type(data).__name__}")
    return data


# ---------------------------------------------------------------- kwargs mapping

# Two families of TF1 pickles share the variable names (they are looked up by name below):
# NVIDIA stylegan2 (training/networks_stylegan2.py: G_main, G_mapping, G_synthesis_stylegan2,
# D_stylegan2; config-e/f) and stylegan2-ada TF (training/networks.py: G_main, G_mapping,
# G_synthesis, D_main). The family is told by the build function names in the pickle.
FAMILIES = {
    "stylegan2": {"G": "G_main", "G_mapping": "G_mapping", "G_synthesis": "G_synthesis_stylegan2",
                  "D": "D_stylegan2"},
    "stylegan2-ada": {"G": "G_main", "G_mapping": "G_mapping", "G_synthesis": "G_synthesis",
                      "D": "D_main"},
}

# Build-function arguments that change the architecture, with the only value we build. Other
# arguments (truncation, style mixing, dtype, fused_modconv, num_fp16_res, conv_clamp,
# randomize_noise, freeze_layers...) do not change the variables or what we compute from them.
_G_FIXED = {"label_size": 0, "fmap_decay": 1.0, "architecture": "skip", "nonlinearity": "lrelu",
            "mapping_nonlinearity": "lrelu", "normalize_latents": True, "resample_kernel": [1, 3, 3, 1],
            "use_noise": True, "fmap_const": None}
_D_FIXED = {"label_size": 0, "fmap_decay": 1.0, "architecture": "resnet", "nonlinearity": "lrelu",
            "resample_kernel": [1, 3, 3, 1], "use_pagan": False, "use_spectral_norm": False,
            "score_max": 1}

# What the exported pickle may carry as static kwargs: the arguments NVIDIA's stylegan2 build
# functions define (G_main/G_mapping/G_synthesis_stylegan2, D_stylegan2) AND that
# stylegan2-ada-pytorch's legacy.py (convert_tf_generator / convert_tf_discriminator, also used
# by stylegan3) accepts; it raises "Unknown TensorFlow kwarg" for anything else
# (dlatent_avg_beta, fmap_decay, fmap_min, randomize_noise, dtype...).
EXPORT_G_KWARGS = frozenset({
    "num_channels", "resolution", "label_size", "latent_size", "dlatent_size", "mapping_layers",
    "mapping_fmaps", "mapping_lrmul", "mapping_nonlinearity", "fmap_base", "fmap_max",
    "architecture", "nonlinearity", "resample_kernel", "truncation_psi", "truncation_cutoff",
    "style_mixing_prob"})
EXPORT_D_KWARGS = frozenset({
    "num_channels", "resolution", "label_size", "fmap_base", "fmap_max", "architecture",
    "nonlinearity", "resample_kernel", "mbstd_group_size", "mbstd_num_features"})


def _check_fixed(kwargs: dict, fixed: dict, what: str) -> None:
    bad = {k: kwargs[k] for k, v in fixed.items()
           if k in kwargs and not _same_value(kwargs[k], v)}
    if (kwargs.get("fmap_min") or 1) > 1:
        bad["fmap_min"] = kwargs["fmap_min"]
    if bad:
        raise ValueError(f"{what}: unsupported TF1 architecture arguments {bad} "
                         f"(we build StyleGAN2 config-e/f: {fixed})")


def _same_value(a, b) -> bool:
    if isinstance(b, list):
        return a is not None and list(np.ravel(a)) == b
    return a == b


def _func(net: TF1Network) -> str:
    """TF1 stores the bare function name; tolerate a dotted module path too."""
    return net.build_func_name.rsplit(".", 1)[-1]


def network_family(G: TF1Network, D: TF1Network) -> str:
    """'stylegan2' or 'stylegan2-ada' from the build function names, else ValueError."""
    comps = {c.name: _func(c) for c in G.components.values() if isinstance(c, TF1Network)}
    found = {"G": _func(G), "G_mapping": comps.get("G_mapping"), "G_synthesis": comps.get("G_synthesis"),
             "D": _func(D)}
    for family, funcs in FAMILIES.items():
        if found == funcs:
            return family
    raise ValueError(f"build functions {found} are neither NVIDIA stylegan2 {FAMILIES['stylegan2']} "
                     f"nor stylegan2-ada {FAMILIES['stylegan2-ada']}; only StyleGAN2 (config-e/f "
                     "architecture) networks can be imported")


def _w_avg_beta(kw: dict) -> float:
    """TF1 ``dlatent_avg_beta``: default 0.995; None (or 1) means w_avg is not tracked, which
    is beta 1.0 here (the lerp then keeps w_avg as it is)."""
    if "dlatent_avg_beta" not in kw:
        return 0.995
    beta = kw["dlatent_avg_beta"]
    return 1.0 if beta is None else float(beta)


def generator_kwargs(net: TF1Network) -> dict:
    """Our Generator kwargs from a TF1 G_main network's static kwargs (TF1 defaults)."""
    kw = net.static_kwargs
    _check_fixed(kw, _G_FIXED, net.name)
    latent, dlatent = kw.get("latent_size", 512), kw.get("dlatent_size", 512)
    fmaps = kw.get("mapping_fmaps") or dlatent   # ada: None = same as dlatent_size
    if not latent == dlatent == fmaps:
        raise ValueError(f"{net.name}: latent_size {latent}, dlatent_size {dlatent} and mapping_fmaps "
                         f"{fmaps} differ; we support one latent width")
    return dict(resolution=int(kw.get("resolution", 1024)), num_channels=int(kw.get("num_channels", 3)),
                latent_dim=int(latent), mapping_layers=int(kw.get("mapping_layers", 8)),
                channel_base=int(kw.get("fmap_base", 16 << 10)), channel_max=int(kw.get("fmap_max", 512)),
                mapping_lrmul=float(kw.get("mapping_lrmul", 0.01)), w_avg_beta=_w_avg_beta(kw))


def discriminator_kwargs(net: TF1Network, family: str = "stylegan2") -> dict:
    kw = net.static_kwargs
    _check_fixed(kw, _D_FIXED, net.name)
    group = kw.get("mbstd_group_size", 4 if family == "stylegan2" else None)
    features = int(kw.get("mbstd_num_features", 1))
    if family == "stylegan2-ada" and features == 0:
        group = 0            # ada switches the layer off with 0 features, stylegan2 with group <= 1
    if group is None:
        raise ValueError(f"{net.name}: mbstd_group_size None (the whole minibatch as one group) is "
                         "not supported; the discriminator needs a fixed group size")
    return dict(resolution=int(kw.get("resolution", 1024)), num_channels=int(kw.get("num_channels", 3)),
                channel_base=int(kw.get("fmap_base", 16 << 10)), channel_max=int(kw.get("fmap_max", 512)),
                mbstd_group_size=int(group), mbstd_num_features=features)


# ---------------------------------------------------------------- import

_RES_SCOPE = re.compile(r"^(?:G_synthesis/)?(\d+)x\1/")
_NOISE = re.compile(r"^G_synthesis/noise(\d+)$")
_UNUSED_TF1 = {"lod"}  # G_main's progressive-growing level; StyleGAN2 keeps it at 0


def _above(name: str, resolution: int, num_ws: int) -> bool:
    m = _RES_SCOPE.match(name)
    if m:
        return int(m.group(1)) > resolution
    m = _NOISE.match(name)
    return bool(m) and int(m.group(1)) >= num_ws - 1


def _assign_from_tf1(net, tf1: TF1Network, source_res: int, fresh: set[str] = frozenset()) -> None:
    """Strictly assign ``net`` from a TF1 network's variables (see module docstring)."""
    arrays = tf1.all_variables()
    for name in _UNUSED_TF1 & set(arrays):
        if np.any(arrays.pop(name) != 0):
            raise ValueError(f"{tf1.name}: {name} is not 0; progressive growing is not supported")
    target = net.resolution
    if target < source_res:
        num_ws = getattr(net, "num_ws", 0)
        dropped = sorted(n for n in arrays if _above(n, target, num_ws))
        for n in dropped:
            del arrays[n]
        log.info("%s: dropped %d variables above %dx%d", tf1.name, len(dropped), target, target)
    ours = net.named_variables()
    for name in fresh:  # kept at their fresh initialization
        if name in arrays:
            raise ValueError(f"{tf1.name}: {name} unexpectedly present")
        arrays[name] = ours[name].numpy()
    net.assign_named(arrays, source=f"TF1 network {tf1.name!r}")


def load_tf1_pickle(path: str | os.PathLike, resolution: int | None = None, seed: int | None = 0):
    """(G, D, Gs) as gan.networks from an NVIDIA StyleGAN2 TF1 pickle (restricted unpickling).

    ``resolution`` lower than the pickle's crops the networks as the module docstring says.
    Every pickle variable must be used and every network variable assigned, else ValueError.
    """
    tf1_G, tf1_D, tf1_Gs = read_tf1_pickle(path)
    family = network_family(tf1_G, tf1_D)
    network_family(tf1_Gs, tf1_D)
    g_kw, gs_kw = generator_kwargs(tf1_G), generator_kwargs(tf1_Gs)
    d_kw = discriminator_kwargs(tf1_D, family)
    source_res = g_kw["resolution"]
    if gs_kw["resolution"] != source_res or d_kw["resolution"] != source_res:
        raise ValueError(f"{path}: G, Gs and D resolutions differ")
    target = source_res if resolution is None else int(resolution)
    if target > source_res:
        raise ValueError(f"{path}: cannot import a {source_res} px network at {target} px")
    G = Generator(**{**g_kw, "resolution": target}, seed=seed, name="G")
    Gs = Generator(**{**gs_kw, "resolution": target}, seed=seed, name="Gs")
    D = Discriminator(**{**d_kw, "resolution": target}, seed=seed, name="D")
    _assign_from_tf1(G, tf1_G, source_res)
    _assign_from_tf1(Gs, tf1_Gs, source_res)
    fresh = set() if target == source_res else {f"{target}x{target}/FromRGB/weight",
                                                  f"{target}x{target}/FromRGB/bias"}
    _assign_from_tf1(D, tf1_D, source_res, fresh)
    if fresh:
        log.warning("%s: D's FromRGB at %dx%d is freshly initialized (pickle is %d px)",
                    path, target, target, source_res)
    log.info("%s: %s network, %d px, imported at %d px", path, family, source_res, target)
    return G, D, Gs


# ---------------------------------------------------------------- export

_NOTE_SRC = ("# Written by faceprep gan.legacy.save_tf1_pickle: variables in NVIDIA StyleGAN2 TF1 layout.\n"
             "# The build code is NVIDIA's training/networks_stylegan2.py, not included here.\n")


def _vars_list(net, names) -> list[tuple[str, np.ndarray]]:
    named = net.named_variables()
    return [(n, named[n].numpy()) for n in names]


def _tf1_generator(G, name: str) -> TF1Network:
    kw = G.init_kwargs
    static = {"num_channels": kw["num_channels"], "resolution": kw["resolution"], "label_size": 0,
              "fmap_base": kw["channel_base"], "fmap_max": kw["channel_max"],
              "latent_size": kw["latent_dim"], "dlatent_size": kw["latent_dim"],
              "mapping_fmaps": kw["latent_dim"], "mapping_layers": kw["mapping_layers"],
              "mapping_lrmul": kw["mapping_lrmul"]}
    if kw["w_avg_beta"] != 0.995:
        # no static kwarg for it is both NVIDIA's and accepted by stylegan2-ada-pytorch; readers
        # use 0.995 when training further (the .npz beside the pickle keeps our value)
        log.warning("%s: w_avg_beta %s is not written to the TF1 pickle (readers assume 0.995)",
                    name, kw["w_avg_beta"])
    assert set(static) <= EXPORT_G_KWARGS
    names = list(G.named_variables())
    synthesis = TF1Network("G_synthesis", static, {}, "G_synthesis_stylegan2",
                           [(n.split("/", 1)[1], v) for n, v in
                            _vars_list(G, [n for n in names if n.startswith("G_synthesis/")])], _NOTE_SRC)
    mapping = TF1Network("G_mapping", {**static, "dlatent_broadcast": G.num_ws}, {}, "G_mapping",
                         [(n.split("/", 1)[1], v) for n, v in
                          _vars_list(G, [n for n in names if n.startswith("G_mapping/")])], _NOTE_SRC)
    own = [("lod", np.float32(0.0))] + _vars_list(G, ["dlatent_avg"])
    return TF1Network(name, static, {"synthesis": synthesis, "mapping": mapping}, "G_main", own, _NOTE_SRC)


def _tf1_discriminator(D) -> TF1Network:
    kw = D.init_kwargs
    static = {"num_channels": kw["num_channels"], "resolution": kw["resolution"], "label_size": 0,
              "fmap_base": kw["channel_base"], "fmap_max": kw["channel_max"],
              "mbstd_group_size": kw["mbstd_group_size"], "mbstd_num_features": kw["mbstd_num_features"]}
    if kw["mbstd_group_size"] <= 1:
        # off: stylegan2 skips the layer for group <= 1, stylegan2-ada-pytorch for 0 features
        static.update(mbstd_group_size=0, mbstd_num_features=0)
    assert set(static) <= EXPORT_D_KWARGS
    return TF1Network("D", static, {}, "D_stylegan2", _vars_list(D, list(D.named_variables())), _NOTE_SRC)


# Objects numpy 2 pickles under numpy._core, written under TF1-era module paths.
_WRITE_AS = {TF1Network: TF1_NETWORK, _RECONSTRUCT: ("numpy.core.multiarray", "_reconstruct"),
             _SCALAR: ("numpy.core.multiarray", "scalar")}


class _TF1Pickler(pickle._Pickler):  # the Python pickler lets us name globals as TF1 did
    def save_global(self, obj, name=None):
        target = _WRITE_AS.get(obj) if isinstance(obj, type) or callable(obj) else None
        if target is None:
            return super().save_global(obj, name)
        module, qualname = target
        self.write(pickle.GLOBAL + f"{module}\n{qualname}\n".encode("utf-8"))
        self.memoize(obj)


def save_tf1_pickle(path: str | os.PathLike, G, D, Gs) -> None:
    """Write (G, D, Gs) as a TF1-format pickle (protocol 3), atomically."""
    buf = io.BytesIO()
    _TF1Pickler(buf, protocol=3).dump((_tf1_generator(G, "G"), _tf1_discriminator(D), _tf1_generator(Gs, "Gs")))
    atomic_write_bytes(path, buf.getvalue())


# ---------------------------------------------------------------- export_model

def export_model(network: str | os.PathLike, pkl: str | os.PathLike, npz: str | os.PathLike) -> dict:
    """Our checkpoint (final network or any snapshot) -> ``pkl`` (TF1 network pickle) and ``npz``
    (our format, all float32), then read the pickle back and require every variable to be
    identical. Returns a summary for the log."""
    from gan import checkpoint
    # float32 everywhere: a snapshot of a mixed-precision run is exported ready for CPU use
    G, D, Gs, extra = checkpoint.load_network(network, num_fp16_res=0, conv_clamp=None)
    if D is None or Gs is None:
        raise ValueError(f"{network}: a network pickle needs G, D and Gs")
    save_tf1_pickle(pkl, G, D, Gs)
    G2, D2, Gs2 = load_tf1_pickle(pkl)
    for ours, back in ((G, G2), (D, D2), (Gs, Gs2)):
        theirs = back.named_variables()
        for name, var in ours.named_variables().items():
            if not np.array_equal(var.numpy(), theirs[name].numpy()):
                raise ValueError(f"{pkl}: {ours.name} {name} changed in the round trip")
    checkpoint.save_network(npz, G, D, Gs, {**extra, "exported_from": str(network)})
    return {"network": str(network), "pkl": str(pkl), "npz": str(npz),
            "resolution": G.resolution, "w_avg_beta": G.w_avg_beta}


def main(argv=None) -> None:
    import argparse
    import json
    p = argparse.ArgumentParser(
        prog="python -m gan.legacy",
        description="Export a faceprep network (.npz: final network or snapshot) as an NVIDIA TF1 "
                    "network pickle that stylegan2-ada-pytorch / stylegan3 legacy.py and "
                    "faceprep's importer load, plus a float32 .npz copy.")
    p.add_argument("--network", required=True, help="our checkpoint (.npz)")
    p.add_argument("--pkl", required=True, help="TF1 network pickle to write")
    p.add_argument("--npz", required=True, help="our checkpoint copy to write")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    print(json.dumps(export_model(a.network, a.pkl, a.npz)), flush=True)


if __name__ == "__main__":
    main()
