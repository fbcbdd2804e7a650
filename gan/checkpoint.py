"""Our network checkpoints: one .npz of TF1-named arrays plus JSON metadata, never pickle.

Layout: arrays ``G/<TF1 name>``, ``D/<TF1 name>``, ``Gs/<TF1 name>`` and ``__meta__`` (a
string array holding JSON: format, version, each network's constructor kwargs or null, and
the caller's ``extra`` dict). Written atomically (temp file beside it + os.replace), read
with ``np.load(allow_pickle=False)``.
"""
from __future__ import annotations

import json
import os

import numpy as np

from gan.networks import Discriminator, Generator
from util.files import atomic_write_with

FORMAT = "faceprep-stylegan2"
VERSION = 1
_META = "__meta__"
_KINDS = {"G": Generator, "D": Discriminator, "Gs": Generator}


def _kwargs_for_json(net) -> dict | None:
    return None if net is None else dict(net.init_kwargs)


def network_arrays(net, prefix: str) -> dict[str, np.ndarray]:
    return {f"{prefix}/{name}": var.numpy() for name, var in net.named_variables().items()}


def save_network(path: str | os.PathLike, G, D, Gs, extra: dict | None = None) -> None:
    """Write G, D, Gs (any may be None) and ``extra`` (JSON-able) to ``path`` atomically."""
    arrays: dict[str, np.ndarray] = {}
    for prefix, net in (("G", G), ("D", D), ("Gs", Gs)):
        if net is not None:
            arrays.update(network_arrays(net, prefix))
    meta = {"format": FORMAT, "version": VERSION,
            "networks": {prefix: _kwargs_for_json(net) for prefix, net in (("G", G), ("D", D), ("Gs", Gs))},
            "extra": extra or {}}
    arrays[_META] = np.array(json.dumps(meta, sort_keys=True))
    atomic_write_with(path, lambda f: np.savez(f, **arrays))


def read_meta(path: str | os.PathLike) -> dict:
    """The JSON metadata of a checkpoint (cheap: arrays are not read)."""
    with np.load(path, allow_pickle=False) as data:
        return _parse_meta(data, path)


def verify_readable(path: str | os.PathLike) -> dict:
    """The metadata, after reading every array (zip CRCs checked): raises on a zero-byte,
    truncated or damaged file."""
    with np.load(path, allow_pickle=False) as data:
        meta = _parse_meta(data, path)
        for key in data.files:
            data[key]
    return meta


def _parse_meta(data, path) -> dict:
    if _META not in data.files:
        raise ValueError(f"{path}: not a {FORMAT} checkpoint (no {_META})")
    meta = json.loads(str(data[_META]))
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ValueError(f"{path}: unsupported checkpoint format {meta.get('format')!r} "
                         f"version {meta.get('version')!r}")
    return meta


def load_network(path: str | os.PathLike, **overrides):
    """(G, D, Gs, extra) from a checkpoint; a network that was saved as None comes back None.
    Every array must match the rebuilt network's names and shapes exactly. ``overrides``
    replace constructor kwargs that do not change the variables (e.g. ``num_fp16_res=0`` to
    run a GPU-trained mixed-precision network on CPU)."""
    with np.load(path, allow_pickle=False) as data:
        meta = _parse_meta(data, path)
        by_prefix: dict[str, dict[str, np.ndarray]] = {p: {} for p in _KINDS}
        for key in data.files:
            if key == _META:
                continue
            prefix, _, name = key.partition("/")
            if prefix not in by_prefix:
                raise ValueError(f"{path}: unexpected array {key!r}")
            by_prefix[prefix][name] = data[key]
    nets = []
    for prefix, cls in _KINDS.items():
        kwargs = meta["networks"].get(prefix)
        if kwargs is None:
            if by_prefix[prefix]:
                raise ValueError(f"{path}: arrays for {prefix} but no constructor kwargs")
            nets.append(None)
            continue
        net = cls(**{**kwargs, **overrides}, name=prefix)
        net.assign_named(by_prefix[prefix], source=f"{path} [{prefix}]")
        nets.append(net)
    G, D, Gs = nets
    return G, D, Gs, meta["extra"]


def clone_network(net, name: str | None = None):
    """A new network with the same constructor kwargs and a copy of every variable
    (e.g. Gs, the generator's moving average)."""
    clone = type(net)(**net.init_kwargs, name=name or net.name)
    clone.assign_named({n: v.numpy() for n, v in net.named_variables().items()},
                       source=f"clone of {net.name}")
    return clone
