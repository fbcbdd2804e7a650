"""Training knows its data: run folders per (dataset fingerprint, architecture, pretrained
file), warm starts, pretrained checksums on every run, damaged snapshots skipped.

Real `gan.train` calls (the CLI the finetune rule runs) on real testdata images at 16 px,
exported with pipeline.export's TFRecord writer and listed in an export-format manifest.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import square_testdata_pngs
from PIL import Image

from gan import checkpoint, runs
from gan.networks import Discriminator, Generator
from gan.train import main as train_main
from pipeline.export import write_tfrecords
from pipeline.manifest import Row, write_manifest

RES = 16
TINY = {"channel_base": 256, "channel_max": 32, "mapping_layers": 2, "latent_dim": 32, "batch": 4,
        "mixed_precision": False, "r1_interval": 4, "tick_kimg": 0.016, "snapshot_kimg": 0.032,
        "kimg": 0.032}
TICK_KIMG = re.compile(r"^tick \d+\s+kimg\s+([\d.]+) /", re.M)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Row]:
    """14 real photos and anime pictures, centre-cropped to 16 px PNGs (export manifest rows)."""
    rows = square_testdata_pngs(tmp_path_factory.mktemp("run_images"), RES)
    return sorted(rows, key=lambda r: r.id)


def export_dataset(folder: Path, rows: list[Row]) -> Path:
    """TFRecords + manifest.tsv as the export stage lays them out."""
    write_tfrecords(rows, folder / "tfrecords", "tiny")
    write_manifest(folder / "manifest.tsv", [r.keep(details={"index": i}) for i, r in enumerate(rows)])
    return folder


def train(export: Path, finetune: Path, capsys, **cfg) -> tuple[str, dict]:
    """One `python -m gan.train` (in process); its log and the published network's extra."""
    output = finetune / "network-final.npz"
    output.unlink(missing_ok=True)     # snakemake removes the output before the job runs
    train_main(["--data", str(export / "tfrecords"), "--manifest", str(export / "manifest.tsv"),
                "--run-dir", str(finetune), "--config", json.dumps({**TINY, **cfg}),
                "--output", str(output)])
    return capsys.readouterr().out, checkpoint.read_meta(output)["extra"]


def run_dirs(finetune: Path) -> list[str]:
    return sorted(p.name for p in (finetune / "runs").iterdir() if p.is_dir())


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture
def op_determinism_restored():
    from tensorflow.python.framework import config as tf_config
    was_on = tf_config.is_op_determinism_enabled()
    yield
    if not was_on:
        tf_config.disable_op_determinism()


def test_fingerprint_follows_ids_and_pixels_not_mtimes(images, tmp_path):
    a = export_dataset(tmp_path / "a", images)
    fp = runs.dataset_fingerprint(a / "manifest.tsv")
    assert fp["images"] == len(images)
    for r in images:                   # touching every file changes nothing
        os.utime(r.path, ns=(1_600_000_000 * 10**9,) * 2)
    assert runs.dataset_fingerprint(a / "manifest.tsv") == fp
    fewer = export_dataset(tmp_path / "b", images[1:])
    assert runs.dataset_fingerprint(fewer / "manifest.tsv")["sha256"] != fp["sha256"]
    renamed = [images[0].keep(id="another-id")] + images[1:]
    write_manifest(tmp_path / "renamed.tsv", renamed)
    assert runs.dataset_fingerprint(tmp_path / "renamed.tsv")["sha256"] != fp["sha256"]
    edited = tmp_path / "edited.png"
    with Image.open(images[0].path) as im:
        px = np.asarray(im).copy()
    px[0, 0] ^= 1                      # one pixel, one bit
    Image.fromarray(px).save(edited)
    write_manifest(tmp_path / "edited.tsv", [images[0].keep(path=str(edited))] + images[1:])
    assert runs.dataset_fingerprint(tmp_path / "edited.tsv")["sha256"] != fp["sha256"]


def test_new_data_gets_a_new_run_warm_started_from_the_previous_final(
        images, tmp_path, capsys, op_determinism_restored):
    data_a = export_dataset(tmp_path / "export_a", images)
    data_b = export_dataset(tmp_path / "export_b", images[3:])    # e.g. rejects / min_side edit
    finetune = tmp_path / "finetune"

    log_a, extra_a = train(data_a, finetune, capsys)
    run_a = extra_a["run"]["id"]
    assert "start: scratch at kimg 0" in log_a and extra_a["cur_nimg"] == 32
    assert extra_a["run"]["dataset"] == runs.dataset_fingerprint(data_a / "manifest.tsv")
    assert extra_a["run"]["architecture"]["resolution"] == RES
    assert extra_a["run"]["pretrained"] is None and extra_a["run"]["warm_start"]["from"] == "scratch"
    snap_a = finetune / "runs" / run_a / "snapshots"
    before = digests(snap_a)
    # every snapshot records the run identity too
    assert checkpoint.read_meta(snap_a / "network-snapshot-000000032.npz")["extra"]["run"]["id"] == run_a

    # new data: a new run trains kimg on it (counter from 0), from run A's final network
    log_b, extra_b = train(data_b, finetune, capsys)
    run_b = extra_b["run"]["id"]
    assert run_b != run_a and run_dirs(finetune) == sorted([run_a, run_b])
    assert f"warm start {finetune / 'runs' / run_a / 'network-final.npz'} at kimg 0" in log_b
    assert [float(k) for k in TICK_KIMG.findall(log_b)] == [0.016, 0.032]
    assert extra_b["cur_nimg"] == 32
    assert extra_b["run"]["dataset"]["images"] == len(images) - 3
    warm = extra_b["run"]["warm_start"]
    assert (warm["from"], warm["run"]) == ("previous", run_a)
    assert warm["network_sha256"] == runs.file_sha256(finetune / "runs" / run_a / "network-final.npz")
    assert digests(snap_a) == before                       # the old run is untouched
    assert (finetune / "runs" / "latest").read_text().strip() == run_b
    # the published copy is the run's final; samples are the run's grids
    assert (finetune / "network-final.npz").read_bytes() == (
        finetune / "runs" / run_b / "network-final.npz").read_bytes()
    assert digests(finetune / "samples") == digests(finetune / "runs" / run_b / "samples")

    # back to data A: its own run is found again and resumed at its kimg (no new run,
    # no training on top of B's network)
    log_a2, extra_a2 = train(data_a, finetune, capsys)
    assert extra_a2["run"]["id"] == run_a and len(run_dirs(finetune)) == 2
    assert "resume: " in log_a2 and "network-snapshot-000000032.npz at kimg 0.032" in log_a2
    assert TICK_KIMG.findall(log_a2) == []

    # warm_start: pretrained (here: no pretrained file -> scratch) for a third dataset
    data_c = export_dataset(tmp_path / "export_c", images[:-2])
    log_c, extra_c = train(data_c, finetune, capsys, warm_start="pretrained")
    assert "start: scratch at kimg 0" in log_c
    assert extra_c["run"]["warm_start"] == {"mode": "pretrained", "from": "scratch"}
    assert len(run_dirs(finetune)) == 3


def test_pretrained_replaced_at_the_same_path(images, tmp_path, capsys, op_determinism_restored):
    data = export_dataset(tmp_path / "export", images)
    finetune = tmp_path / "finetune"
    pretrained = tmp_path / "pretrained.npz"

    def save_pretrained(seed: int) -> str:
        G = Generator(RES, latent_dim=32, mapping_layers=2, channel_base=256, channel_max=32, seed=seed)
        D = Discriminator(RES, channel_base=256, channel_max=32, seed=seed + 1)
        checkpoint.save_network(pretrained, G, D, None)
        return runs.file_sha256(pretrained)

    first_sha = save_pretrained(1)
    log1, extra1 = train(data, finetune, capsys, pretrained=str(pretrained), pretrained_sha256=first_sha)
    assert f"start: pretrained {pretrained}" in log1
    assert extra1["run"]["pretrained"] == {"path": str(pretrained), "sha256": first_sha}
    # the same bytes under another path: the same run, resumed (nothing to train)
    moved = tmp_path / "moved.npz"
    shutil.copyfile(pretrained, moved)
    log_moved, extra_moved = train(data, finetune, capsys, pretrained=str(moved))
    assert extra_moved["run"]["id"] == extra1["run"]["id"] and "resume: " in log_moved
    assert TICK_KIMG.findall(log_moved) == [] and len(run_dirs(finetune)) == 1

    second_sha = save_pretrained(7)         # a different file at the same path
    assert second_sha != first_sha
    # the config still names the first checksum: refused, although run 1 could be resumed
    with pytest.raises(SystemExit, match="re-download"):
        train(data, finetune, capsys, pretrained=str(pretrained), pretrained_sha256=first_sha, kimg=0.064)
    assert len(run_dirs(finetune)) == 1
    # without a checksum in the config: a new run from the new file (not run 1's network)
    log2, extra2 = train(data, finetune, capsys, pretrained=str(pretrained))
    assert extra2["run"]["id"] != extra1["run"]["id"] and len(run_dirs(finetune)) == 2
    assert f"start: pretrained {pretrained} at kimg 0" in log2
    assert extra2["run"]["pretrained"]["sha256"] == second_sha
    assert extra2["run"]["warm_start"]["from"] == "pretrained"


def test_unreadable_snapshots_are_skipped_with_a_warning(images, tmp_path, capsys, op_determinism_restored):
    data = export_dataset(tmp_path / "export", images)
    finetune = tmp_path / "finetune"
    _, extra = train(data, finetune, capsys)
    snaps = finetune / "runs" / extra["run"]["id"] / "snapshots"
    good = snaps / "network-snapshot-000000032.npz"
    # what a kill or a full disk can leave: a zero-byte and a truncated newer snapshot,
    # and a half-written temp file
    (snaps / "network-snapshot-000000096.npz").write_bytes(b"")
    truncated = snaps / "network-snapshot-000000064.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (snaps / ".network-snapshot-000000128.npz.abc123.tmp").write_bytes(b"PK\x03\x04partial")

    log, extra2 = train(data, finetune, capsys, kimg=0.064)
    assert re.search(r"warning: resume: skipping unreadable snapshot \S+network-snapshot-000000096\.npz", log)
    assert re.search(r"warning: resume: skipping unreadable snapshot \S+network-snapshot-000000064\.npz", log)
    assert f"resume: {good} at kimg 0.032" in log
    assert [float(k) for k in TICK_KIMG.findall(log)] == [0.048, 0.064]
    assert extra2["cur_nimg"] == 64 and extra2["run"]["id"] == extra["run"]["id"]
    # training replaced the damaged snapshot at 64 with a good one; the temp file is gone
    assert checkpoint.verify_readable(truncated)["extra"]["cur_nimg"] == 64
    assert not list(snaps.glob(".*.tmp"))
