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

``save_tf1_pickle`` writes the same format (protocol 3, numpy.core paths, as TF1-era
pickles); its ``build_module_src`` is a note, not NVIDIA's code, so TF1 dnnlib itself cannot
rebuild such a file: it exists for round trips and for inspection with our importer.
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
from pipeline.manifest import atomic_write_bytes

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

# TF1 build-function arguments that change the architecture, with the only value we build.
_G_FIXED = {"label_size": 0, "fmap_decay": 1.0, "architecture": "skip", "nonlinearity": "lrelu",
            "mapping_nonlinearity": "lrelu", "normalize_latents": True, "resample_kernel": [1, 3, 3, 1],
            "synthesis_func": "G_synthesis_stylegan2", "mapping_func": "G_mapping"}
_D_FIXED = {"label_size": 0, "fmap_decay": 1.0, "architecture": "resnet", "nonlinearity": "lrelu",
            "resample_kernel": [1, 3, 3, 1]}
_BUILD_FUNCS = {"G": "G_main", "D": "D_stylegan2", "G_mapping": "G_mapping",
                "G_synthesis": "G_synthesis_stylegan2"}


def _check_fixed(kwargs: dict, fixed: dict, what: str) -> None:
    bad = {k: kwargs[k] for k, v in fixed.items()
           if k in kwargs and not _same_value(kwargs[k], v)}
    if kwargs.get("fmap_min", 1) > 1:
        bad["fmap_min"] = kwargs["fmap_min"]
    if bad:
        raise ValueError(f"{what}: unsupported TF1 architecture arguments {bad} "
                         f"(we build StyleGAN2 config-e/f: {fixed})")


def _same_value(a, b) -> bool:
    if isinstance(b, list):
        return list(np.ravel(a)) == b
    return a == b


def _check_build_func(net: TF1Network, role: str) -> None:
    func = net.build_func_name.rsplit(".", 1)[-1]
    if func != _BUILD_FUNCS[role]:
        raise ValueError(f"{net.name}: build function {func!r} is not {_BUILD_FUNCS[role]!r}; only "
                         "StyleGAN2 (config-e/f) networks can be imported")


def generator_kwargs(net: TF1Network) -> dict:
    """Our Generator kwargs from a TF1 G_main network's static kwargs (TF1 defaults)."""
    _check_build_func(net, "G")
    kw = net.static_kwargs
    _check_fixed(kw, _G_FIXED, net.name)
    for comp in net.components.values():
        _check_build_func(comp, comp.name if comp.name in _BUILD_FUNCS else "G_synthesis")
    latent, dlatent, fmaps = (kw.get("latent_size", 512), kw.get("dlatent_size", 512),
                              kw.get("mapping_fmaps", 512))
    if not latent == dlatent == fmaps:
        raise ValueError(f"{net.name}: latent_size {latent}, dlatent_size {dlatent} and mapping_fmaps "
                         f"{fmaps} differ; we support one latent width")
    return dict(resolution=int(kw.get("resolution", 1024)), num_channels=int(kw.get("num_channels", 3)),
                latent_dim=int(latent), mapping_layers=int(kw.get("mapping_layers", 8)),
                channel_base=int(kw.get("fmap_base", 16 << 10)), channel_max=int(kw.get("fmap_max", 512)),
                mapping_lrmul=float(kw.get("mapping_lrmul", 0.01)),
                w_avg_beta=float(kw.get("dlatent_avg_beta", 0.995) or 0.995))


def discriminator_kwargs(net: TF1Network) -> dict:
    _check_build_func(net, "D")
    kw = net.static_kwargs
    _check_fixed(kw, _D_FIXED, net.name)
    return dict(resolution=int(kw.get("resolution", 1024)), num_channels=int(kw.get("num_channels", 3)),
                channel_base=int(kw.get("fmap_base", 16 << 10)), channel_max=int(kw.get("fmap_max", 512)),
                mbstd_group_size=int(kw.get("mbstd_group_size", 4)),
                mbstd_num_features=int(kw.get("mbstd_num_features", 1)))


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
    g_kw, gs_kw, d_kw = generator_kwargs(tf1_G), generator_kwargs(tf1_Gs), discriminator_kwargs(tf1_D)
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
              "mapping_lrmul": kw["mapping_lrmul"], "dlatent_avg_beta": kw["w_avg_beta"]}
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
