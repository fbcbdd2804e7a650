"""Training runs: one folder per (dataset fingerprint, architecture, pretrained file,
parent run).

    <finetune>/runs/<data fp[:12]>-<model[:8]>/
        run.json                 identity (dataset fingerprint, architecture, pretrained sha256,
                                 cleaning round and parent run), where it was warm-started
                                 from, how many kimg it trains
        dataset.tsv              id <tab> sha256 of every training image: its sha256 is the
                                 dataset fingerprint (what the run trained on, checkable)
        snapshots/ samples/ tb/  as gan.training_loop writes them
        network-final.npz        this run's final network
    <finetune>/runs/latest       id of the run that last produced <finetune>/network-final.npz
    <finetune>/network-final.npz a copy of the current run's final (the rule's output)
    <finetune>/samples/          a copy of the current run's sample grids (the report reads it)

A run is resumed only onto the exact data, architecture and pretrained file it was
started with; other data gets its own run, warm-started from the previous run's final
network (`warm_start: previous`) or the pretrained file (`warm_start: pretrained`). Runs
are never deleted: going back to earlier data finds its run again.

Cleaning rounds (rank.rounds): round 1 trains on the curated set; round k > 1 is a run
whose parent is round k-1's run: it continues from the parent's final network on what
round k-1's ranking left. The parent is part of the run's identity, so the same data
reached by another chain of rounds is another run, and the same chain finds its runs again.
A run that continues a network (a parent, or warm start from the previous final) trains
`round_kimg`; one from the pretrained file or from scratch trains `kimg`.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from util.files import AtomicDir, atomic_write_text, file_sha256
# what a training set is (ids + image bytes): below both packages, pipeline.rounds writes it too
from util.fingerprint import dataset_fingerprint, dataset_lines, fingerprint_of_lines  # noqa: F401

RUNS = "runs"
LATEST = "latest"
FINAL = "network-final.npz"
DATASET_LINES = "dataset.tsv"
# Config keys that shape a network built from scratch (a pretrained file brings its own).
SCRATCH_ARCH_KEYS = ("latent_dim", "mapping_layers", "channel_base", "channel_max")


def log(msg: str) -> None:
    print(msg, flush=True)


def tfrecords_fingerprint(data_dir: str | os.PathLike) -> dict:
    """Without a manifest: sha256 of the top-level TFRecord file (the pixels training reads)."""
    from gan.dataset import dataset_info
    info = dataset_info(data_dir)
    return {"sha256": file_sha256(info.path), "images": info.num_images}


def architecture(cfg: dict, resolution: int, channels: int) -> dict:
    arch = {"resolution": int(resolution), "num_channels": int(channels)}
    if not cfg.get("pretrained"):
        arch.update({k: int(cfg[k]) for k in SCRATCH_ARCH_KEYS})
    return arch


def pretrained_identity(cfg: dict) -> dict | None:
    """{path, sha256} of the pretrained file, hashed on every run that uses it; a file that
    does not match finetune.pretrained_sha256 is refused (also when resuming)."""
    path = cfg.get("pretrained")
    if not path:
        return None
    digest = file_sha256(path)
    expected = cfg.get("pretrained_sha256")
    if expected and digest != expected.lower():
        raise SystemExit(f"finetune: {path} has sha256 {digest}, but finetune.pretrained_sha256 "
                         f"says {expected}: re-download it (or correct the checksum)")
    return {"path": str(path), "sha256": digest}


def _model_key(arch: dict, pretrained: dict | None, parent: str | None = None) -> str:
    model = {"architecture": arch, "pretrained_sha256": pretrained and pretrained["sha256"]}
    if parent:  # a later cleaning round: the run it continues is part of what it is
        model["parent"] = parent
    return hashlib.sha256(json.dumps(model, sort_keys=True).encode()).hexdigest()


def same_model(a: dict, b: dict) -> bool:
    """Runs whose networks are interchangeable: same architecture, same pretrained file."""
    return (a.get("architecture") == b.get("architecture")
            and (a.get("pretrained") or {}).get("sha256") == (b.get("pretrained") or {}).get("sha256"))


def same_identity(a: dict, b: dict) -> bool:
    """What `resume` requires: same data fingerprint, architecture and pretrained file."""
    return (a.get("id") == b.get("id")
            and (a.get("dataset") or {}).get("sha256") == (b.get("dataset") or {}).get("sha256")
            and a.get("parent") == b.get("parent")
            and same_model(a, b))


@dataclass
class Run:
    dir: Path
    info: dict            # run.json: identity + warm_start (recorded in every snapshot)

    @property
    def id(self) -> str:
        return self.info["id"]

    @property
    def final(self) -> Path:
        return self.dir / FINAL

    @property
    def warm_start_network(self) -> Path | None:
        network = (self.info.get("warm_start") or {}).get("network")
        return Path(network) if network else None


def read_run(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "run.json").read_text())
    except (OSError, ValueError):
        return None


def _readable_final(run_dir: Path) -> bool:
    from gan import checkpoint
    try:
        checkpoint.read_meta(run_dir / FINAL)
        return True
    except Exception:  # missing, truncated, not ours: not a warm-start source
        return False


def previous_run(runs_dir: Path, identity: dict) -> Path | None:
    """The run to warm-start from: the one that last produced the final network (runs/latest),
    else the newest finished one, among runs of the same architecture and pretrained file."""
    candidates = []
    latest = runs_dir / LATEST
    if latest.is_file():
        candidates.append(runs_dir / latest.read_text().strip())
    finished = [p.parent for p in runs_dir.glob(f"*/{FINAL}")]
    candidates += sorted(finished, key=lambda p: (p / FINAL).stat().st_mtime_ns, reverse=True)
    for folder in candidates:
        info = read_run(folder)
        if (folder.name != identity["id"] and info and same_model(info, identity)
                and _readable_final(folder)):
            return folder
    return None


def migrate_old_layout(finetune_dir: Path) -> None:
    """Snapshots from before run folders (<finetune>/snapshots, samples, tb) are kept, moved into
    runs/unfingerprinted-<time>/: they record no data fingerprint, so they are never resumed."""
    if not (finetune_dir / "snapshots").is_dir():
        return
    old = [finetune_dir / name for name in ("snapshots", "samples", "tb") if (finetune_dir / name).is_dir()]
    dest = finetune_dir / RUNS / f"unfingerprinted-{time.strftime('%Y%m%d-%H%M%S')}"
    dest.mkdir(parents=True, exist_ok=True)
    for path in old:
        os.replace(path, dest / path.name)
    log(f"runs: moved {', '.join(p.name for p in old)} (no data fingerprint) to {dest}; "
        "kept, not resumed")


def parent_run(network: str | os.PathLike) -> dict:
    """{id, network, network_sha256} of the run that made ``network`` (a round's final): the
    run's own copy (runs/<id>/network-final.npz) when it still matches, so the record does
    not point at a file the next round or rejects edit overwrites."""
    run = network_extra(network).get("run") or {}
    if not run.get("id"):
        raise SystemExit(f"finetune: {network} records no training run; it cannot be a round's parent")
    digest = file_sha256(network)
    own = Path(network).resolve().parents[1] / RUNS / run["id"] / FINAL  # <finetune>/round-K/..
    path = own if own.is_file() and file_sha256(own) == digest else Path(network)
    return {"id": run["id"], "network": str(path), "network_sha256": digest}


def target_kimg(cfg: dict, warm_start: dict) -> float:
    """What a run trains: `round_kimg` when it continues a network (a parent round, or the
    previous final after a data change such as a rejects edit), else `kimg`."""
    continues = warm_start.get("from") in ("parent", "previous")
    return float(cfg["round_kimg"] if continues and cfg.get("round_kimg") else cfg["kimg"])


def prepare_run(finetune_dir: str | os.PathLike, cfg: dict, fingerprint: dict, resolution: int,
                channels: int, parent: dict | None = None, round_: int = 1,
                data_lines: str | None = None) -> Run:
    """The run folder for this data + model (+ parent round): the existing one (resume) or a
    new one with its warm-start source chosen and recorded. ``parent`` (parent_run) makes it
    a later cleaning round that continues that run's final network. ``data_lines``
    (dataset_lines) is kept as the run's dataset.tsv."""
    finetune_dir = Path(finetune_dir)
    migrate_old_layout(finetune_dir)
    runs_dir = finetune_dir / RUNS
    arch = architecture(cfg, resolution, channels)
    pretrained = pretrained_identity(cfg)
    run_id = f"{fingerprint['sha256'][:12]}-{_model_key(arch, pretrained, parent and parent['id'])[:8]}"
    identity = {"id": run_id, "dataset": fingerprint, "architecture": arch, "pretrained": pretrained}
    if parent:
        identity["parent"] = parent["id"]
    folder = runs_dir / run_id
    info = read_run(folder)
    if info is not None and same_identity(info, identity):
        source = Run(folder, info).warm_start_network
        if source is None or _readable_final(source.parent):
            log(f"run: {folder} (round {info.get('round', round_)}, this data and model; "
                f"resuming it if it has snapshots)")
            return Run(folder, info)
        log(f"run: {folder}: its warm-start network {source} is gone; choosing again")
    if parent:
        warm = {"mode": "parent", "from": "parent", "run": parent["id"], "network": parent["network"],
                "network_sha256": parent["network_sha256"]}
    else:
        warm = {"mode": cfg["warm_start"]}
        if warm["mode"] == "previous" and (prev := previous_run(runs_dir, identity)) is not None:
            warm.update({"from": "previous", "run": prev.name, "network": str(prev / FINAL),
                         "network_sha256": file_sha256(prev / FINAL)})
        elif pretrained is not None:
            warm.update({"from": "pretrained", **pretrained})
        else:
            warm.update({"from": "scratch"})
    info = {**identity, "round": int(round_), "warm_start": warm,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    folder.mkdir(parents=True, exist_ok=True)
    if data_lines is not None:
        atomic_write_text(folder / DATASET_LINES, data_lines)
    atomic_write_text(folder / "run.json", json.dumps(info, indent=1, sort_keys=True) + "\n")
    others = sorted(p.name for p in runs_dir.iterdir() if p.is_dir() and p != folder)
    log(f"run: new run {folder} (round {round_}) for {fingerprint['images']} images "
        f"(dataset {fingerprint['sha256'][:12]}); warm start from {warm['from']}"
        + (f" run {warm['run']}" if warm["from"] in ("previous", "parent") else "")
        + f"; trains {target_kimg(cfg, warm):g} kimg"
        + (f"; earlier runs kept: {', '.join(others)}" if others else ""))
    return Run(folder, info)


def publish(run: Run, finetune_dir: str | os.PathLike, output: str | os.PathLike) -> None:
    """Copy the run's final network to the rule's output and its samples to <finetune>/samples,
    then point runs/latest at it (last: a kill before leaves the previous pointer)."""
    finetune_dir = Path(finetune_dir)
    tmp = Path(output).with_name(f".{Path(output).name}.publish.tmp")
    shutil.copyfile(run.final, tmp)
    os.replace(tmp, output)
    src = run.dir / "samples"
    if src.is_dir():
        with AtomicDir(finetune_dir / "samples") as out:
            for p in sorted(src.glob("*.png")):
                shutil.copyfile(p, out.tmp / p.name)
    atomic_write_text(finetune_dir / RUNS / LATEST, run.id + "\n")


# ---------------------------------------------------------------- provenance of outputs

def network_extra(network: str | os.PathLike) -> dict:
    """A gan.checkpoint file's ``extra`` metadata, read with numpy alone (no TensorFlow:
    the CPU rules that only name a network start in a second)."""
    import numpy as np
    with np.load(network, allow_pickle=False) as data:
        return json.loads(str(data["__meta__"])).get("extra") or {}


def network_provenance(network: str | os.PathLike) -> dict:
    """What every output made from ``network`` names: the run and cleaning round that made it,
    the kimg it had seen, the fingerprint of the set it trained on ({} for a network that
    records no run: a pretrained file, an old checkpoint, a TF1 pickle)."""
    try:
        extra = network_extra(network)
    except Exception:  # a .pkl or a file of another tool: it names no run
        return {}
    run = extra.get("run") or {}
    if not run.get("id"):
        return {}
    return {"run": run["id"], "round": int(run.get("round", 1)), "kimg": extra.get("kimg"),
            "dataset": (run.get("dataset") or {}).get("sha256", ""),
            "images": (run.get("dataset") or {}).get("images")}


def describe(prov: dict) -> str:
    """One line: 'run <id> round <k> (<n> images, dataset <fp12>, kimg <x>)'."""
    if not prov:
        return "a network that records no training run"
    kimg = prov.get("kimg")
    return (f"run {prov['run']} round {prov['round']} ({prov.get('images')} images, dataset "
            f"{prov['dataset'][:12]}" + (f", kimg {kimg:g}" if isinstance(kimg, (int, float)) else "") + ")")


def staleness(network: str | os.PathLike, training_set: str | os.PathLike) -> str:
    """"" when ``network`` was trained on ``training_set`` (a round's manifest) as it is now,
    else one line saying it is older than that data."""
    prov = network_provenance(network)
    if not prov:
        return ""
    current = dataset_fingerprint(training_set)
    if prov["dataset"] == current["sha256"]:
        return ""
    return (f"warning: {network} ({describe(prov)}) is older than the data it claims: "
            f"{training_set} is now dataset {current['sha256'][:12]} ({current['images']} images); "
            "rerun ranked_dataset")


def main(argv=None) -> None:
    import argparse
    p = argparse.ArgumentParser(description="the run and round a network comes from, as JSON")
    p.add_argument("--network", required=True)
    p.add_argument("--training-set", help="the round's manifest: warn when the network is older")
    p.add_argument("--output", required=True, help="JSON to write (network, run, round, ...)")
    a = p.parse_args(argv)
    prov = network_provenance(a.network)
    stale = staleness(a.network, a.training_set) if a.training_set else ""
    if stale:
        print(stale, file=sys.stderr, flush=True)
    atomic_write_text(a.output, json.dumps({"network": str(a.network), **prov, "stale": stale},
                                           indent=1, sort_keys=True) + "\n")
    log(f"{a.network}: {describe(prov)}")


if __name__ == "__main__":
    main()
