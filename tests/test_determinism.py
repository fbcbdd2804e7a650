"""Determinism: two clean runs of the real workflow in different folders give byte-identical
outputs at every stage (crop, clean/dedup, upscale, normalize, export TFRecords + ZIP).

Manifests name files by path, and the raw folder's path differs between the runs, so text
files are compared with the working folder replaced by a placeholder; images, TFRecords and
the ZIP are compared byte for byte. Logs and benchmark timings are not outputs.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from conftest import copy_testdata, run_snakemake

# anime faces (one exact and one near duplicate), a grayscale copy, a photo the anime
# cascade misfires on, a photo without faces and two broken files
RAW_FILES = {
    "anime_miku_noisy.jpg", "anime_miku_small.png", "anime_miku_CC_BY-NC.jpg",
    "broken/dup_exact_of_anime_miku_noisy.jpg", "broken/neardup_of_anime_miku_noisy.jpg",
    "broken/gray_of_anime_miku_noisy.jpg", "photo_2009_004587.jpg", "photo_dogs.jpg",
    "broken/truncated.jpg", "broken/zero_bytes.jpg",
}
# crop with the anime cascade so crop boxes and crops are part of what must not vary
OVERRIDES = {"crop": {"method": "animeface", "min_face": 48}}
TEXT_SUFFIXES = {".tsv", ".json", ".txt", ".html", ".csv"}
NOT_OUTPUTS = {"logs", "benchmarks"}
FIXED_MTIME_NS = 1_700_000_000 * 10**9


def make_raw(workdir: Path) -> Path:
    """The raw subset, with one fixed mtime so the shard listings do not differ by copy time."""
    raw = copy_testdata(workdir / "raw", files=RAW_FILES)
    for p in raw.rglob("*"):
        if p.is_file():
            os.utime(p, ns=(FIXED_MTIME_NS, FIXED_MTIME_NS))
    return raw


def output_digests(workdir: Path, name: str = "tiny") -> dict[str, str]:
    """{path under results/<name>: sha256} of every output file, workdir-neutral."""
    root = workdir / "results" / name
    digests = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if not p.is_file() or rel.parts[0] in NOT_OUTPUTS:
            continue
        data = p.read_bytes()
        if p.suffix in TEXT_SUFFIXES:
            data = data.replace(str(workdir).encode(), b"<WORKDIR>")
        digests[rel.as_posix()] = hashlib.sha256(data).hexdigest()
    return digests


def source_digests(raw: Path) -> dict[str, tuple[str, int]]:
    """(sha256, mtime_ns) of every source file: sources are never modified."""
    return {p.relative_to(raw).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(),
                                            p.stat().st_mtime_ns)
            for p in sorted(raw.rglob("*")) if p.is_file()}


def test_two_clean_runs_are_byte_identical(tmp_path):
    runs = []
    for name in ("first", "second"):
        workdir = tmp_path / name
        raw = make_raw(workdir)
        before = source_digests(raw)
        run_snakemake(workdir, "dataset", overrides=OVERRIDES)
        assert source_digests(raw) == before
        runs.append(output_digests(workdir))
    first, second = runs
    # every stage produced files (crops, normalized images, the dataset), not just manifests
    stages = {rel.split("/")[0] for rel in first}
    assert {"ingest", "crop", "clean", "upscale", "normalize", "export"} <= stages
    assert any(rel.startswith("crop/") and rel.endswith(".png") for rel in first)
    assert sum(rel.startswith("export/tfrecords/") for rel in first) == 4  # r05..r02
    assert "export/tiny.zip" in first and "clean/dedup.tsv" in first
    differing = sorted(rel for rel in first.keys() | second.keys()
                       if first.get(rel) != second.get(rel))
    assert not differing, f"outputs differ between two clean runs: {differing}"
