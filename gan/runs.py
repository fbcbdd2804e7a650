"""Training runs: one folder per (dataset fingerprint, architecture, pretrained file).

    <finetune>/runs/<data fp[:12]>-<model[:8]>/
        run.json                 identity (dataset fingerprint, architecture, pretrained sha256),
                                 where it was warm-started from
        snapshots/ samples/ tb/  as gan.training_loop writes them
        network-final.npz        this run's final network
    <finetune>/runs/latest       id of the run that last produced <finetune>/network-final.npz
    <finetune>/network-final.npz a copy of the current run's final (the rule's output)
    <finetune>/samples/          a copy of the current run's sample grids (the report reads it)

A run is resumed only onto the exact data, architecture and pretrained file it was
started with; other data gets its own run, warm-started from the previous run's final
network (`warm_start: previous`) or the pretrained file (`warm_start: pretrained`). Runs
are never deleted: going back to earlier data finds its run again.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pipeline.manifest import kept, read_manifest  # dataset_fingerprint reads the export manifest
from util.files import AtomicDir, atomic_write_text, file_sha256

RUNS = "runs"
LATEST = "latest"
FINAL = "network-final.npz"
# Config keys that shape a network built from scratch (a pretrained file brings its own).
SCRATCH_ARCH_KEYS = ("latent_dim", "mapping_layers", "channel_base", "channel_max")


def log(msg: str) -> None:
    print(msg, flush=True)


def dataset_fingerprint(manifest: str | os.PathLike) -> dict:
    """sha256 over (id, sha256 of the exported image's bytes) of every dataset image, in id
    order: the same pictures under the same ids give the same fingerprint whatever the files'
    mtimes; a changed, added, removed or renamed image gives another."""
    rows = sorted(kept(read_manifest(manifest)), key=lambda r: r.id)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # hashlib frees the GIL
        digests = list(pool.map(file_sha256, [r.path for r in rows]))
    h = hashlib.sha256()
    for r, digest in zip(rows, digests):
        h.update(f"{r.id}\t{digest}\n".encode())
    return {"sha256": h.hexdigest(), "images": len(rows)}


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


def _model_key(arch: dict, pretrained: dict | None) -> str:
    model = {"architecture": arch, "pretrained_sha256": pretrained and pretrained["sha256"]}
    return hashlib.sha256(json.dumps(model, sort_keys=True).encode()).hexdigest()


def same_model(a: dict, b: dict) -> bool:
    """Runs whose networks are interchangeable: same architecture, same pretrained file."""
    return (a.get("architecture") == b.get("architecture")
            and (a.get("pretrained") or {}).get("sha256") == (b.get("pretrained") or {}).get("sha256"))


def same_identity(a: dict, b: dict) -> bool:
    """What `resume` requires: same data fingerprint, architecture and pretrained file."""
    return (a.get("id") == b.get("id")
            and (a.get("dataset") or {}).get("sha256") == (b.get("dataset") or {}).get("sha256")
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


def prepare_run(finetune_dir: str | os.PathLike, cfg: dict, fingerprint: dict, resolution: int,
                channels: int) -> Run:
    """The run folder for this data + model: the existing one (resume) or a new one with
    its warm-start source chosen and recorded."""
    finetune_dir = Path(finetune_dir)
    migrate_old_layout(finetune_dir)
    runs_dir = finetune_dir / RUNS
    arch = architecture(cfg, resolution, channels)
    pretrained = pretrained_identity(cfg)
    run_id = f"{fingerprint['sha256'][:12]}-{_model_key(arch, pretrained)[:8]}"
    identity = {"id": run_id, "dataset": fingerprint, "architecture": arch, "pretrained": pretrained}
    folder = runs_dir / run_id
    info = read_run(folder)
    if info is not None and same_identity(info, identity):
        source = Run(folder, info).warm_start_network
        if source is None or _readable_final(source.parent):
            log(f"run: {folder} (this data and model; resuming it if it has snapshots)")
            return Run(folder, info)
        log(f"run: {folder}: its warm-start network {source} is gone; choosing again")
    warm = {"mode": cfg.get("warm_start", "previous")}
    if warm["mode"] == "previous" and (prev := previous_run(runs_dir, identity)) is not None:
        warm.update({"from": "previous", "run": prev.name, "network": str(prev / FINAL),
                     "network_sha256": file_sha256(prev / FINAL)})
    elif pretrained is not None:
        warm.update({"from": "pretrained", **pretrained})
    else:
        warm.update({"from": "scratch"})
    info = {**identity, "warm_start": warm, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "run.json", json.dumps(info, indent=1, sort_keys=True) + "\n")
    others = sorted(p.name for p in runs_dir.iterdir() if p.is_dir() and p != folder)
    log(f"run: new run {folder} for {fingerprint['images']} images (dataset {fingerprint['sha256'][:12]}); "
        f"warm start from {warm['from']}"
        + (f" run {warm['run']}" if warm["from"] == "previous" else "")
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
