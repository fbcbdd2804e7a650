"""Shared test helpers: where ../shared lives, the testdata manifest, real snakemake runs."""
from __future__ import annotations

import copy
import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FACEPREP_SHARED", REPO.parent / "shared")).resolve()
TESTDATA = SHARED / "testdata"
MODELS = SHARED / "models"
CASCADE = MODELS / "lbpcascade_animeface.xml"

# Tests read models from ../shared/models, never from the network.
os.environ.setdefault("FACEPREP_ANIMEFACE_CASCADE", str(CASCADE))

# A tiny but complete configuration: 2 shards, 32 px, a CPU-sized GAN.
TINY_CONFIG = {
    "name": "tiny",
    "shards": 2,
    "crop": {"method": "none"},
    "upscale": {"method": "lanczos"},
    "normalize": {"resolution": 32, "format": "png"},
    "finetune": {"channel_base": 256, "channel_max": 32, "mapping_layers": 2, "latent_dim": 32,
                 "kimg": 0.064, "round_kimg": 0.032, "batch": 4, "snapshot_kimg": 0.032, "mixed_precision": False},
    "rank": {"shuffles": 2},
    "report": {"thumb": 32},
}


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def testdata_rows() -> list[dict]:
    """MANIFEST.tsv of ../shared/testdata as dicts (file, kind, expected_faces, grayscale...)."""
    with open(TESTDATA / "MANIFEST.tsv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def copy_testdata(dest: Path, files=None) -> Path:
    """Copy (some of) the testdata images into ``dest`` (a raw folder tests may touch)."""
    import shutil
    dest.mkdir(parents=True, exist_ok=True)
    for row in testdata_rows():
        if files is None or row["file"] in files:
            target = dest / row["file"]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(TESTDATA / row["file"], target)
    return dest


def square_testdata_pngs(folder: Path, res: int) -> list:
    """The photo and anime testdata images, centre-cropped square and resized to ``res`` px
    PNGs in ``folder`` (a tiny real GAN dataset), as manifest rows in MANIFEST.tsv order."""
    from PIL import Image

    from pipeline.imaging import load_rgb
    from pipeline.manifest import Row
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for r in testdata_rows():
        if r["kind"] not in ("photo", "anime"):
            continue
        im, _ = load_rgb(TESTDATA / r["file"])
        side = min(im.size)
        left, top = (im.width - side) // 2, (im.height - side) // 2
        im = im.crop((left, top, left + side, top + side)).resize((res, res), Image.LANCZOS)
        path = folder / f"{Path(r['file']).stem}.png"
        im.save(path)
        rows.append(Row(id=path.stem, source=r["file"], path=str(path), width=res, height=res))
    return rows


def voc_boxes() -> dict[str, list[tuple]]:
    """The annotated photo faces (x, y, w, h), read with dlib's own dataset loader."""
    import dlib
    boxes = {}
    for xml in ("dlib_training_boxes.xml", "dlib_testing_boxes.xml"):
        meta = dlib.image_dataset_metadata.load_image_dataset_metadata(str(TESTDATA / xml))
        for image in meta.images:
            boxes["photo_" + image.filename] = [
                (b.rect.left(), b.rect.top(), b.rect.width(), b.rect.height()) for b in image.boxes]
    return boxes


def normalize_files(workdir: Path, files, ids=None, **settings) -> Path:
    """Run the real normalize CLI on ``files``; returns its manifest (ids i0, i1... or ``ids``).

    ``settings`` override the normalize block (64 px, pad, jpg q95, black background).
    """
    import json

    from pipeline import normalize
    from pipeline.manifest import Row, write_manifest
    ids = ids or [f"i{n}" for n in range(len(files))]
    rows = [Row(id=i, source=Path(f).name, path=str(f), width=1, height=1) for i, f in zip(ids, files)]
    workdir.mkdir(parents=True, exist_ok=True)
    write_manifest(workdir / "upstream.tsv", rows)
    out = workdir / "normalize" / "0" / "manifest.tsv"
    cfg = {"resolution": 64, "fit": "pad", "format": "jpg", "quality": 95, "background": [0, 0, 0],
           **settings}
    normalize.main(["--input", str(workdir / "upstream.tsv"), "--output", str(out),
                    "--config", json.dumps(cfg), "--threads", "2"])
    return out


def write_config(workdir: Path, overrides: dict | None = None) -> Path:
    cfg = deep_merge(TINY_CONFIG, overrides or {})
    cfg.setdefault("raw_dir", str(workdir / "raw"))
    path = workdir / "test_config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=True))
    return path


def snakemake_command(workdir: Path, *args: str, overrides: dict | None = None,
                      configfiles=()) -> list[str]:
    """The command line a user runs: this checkout's workflow in ``workdir`` on the tiny
    config (written there, with ``overrides``), 2 cores. ``configfiles`` are passed after
    the test config, like a user's character file."""
    cfg = write_config(workdir, overrides)
    return [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
            str(workdir), "--configfile", str(cfg), *map(str, configfiles), "--cores", "2", *args]


def run_snakemake(workdir: Path, *args: str, overrides: dict | None = None, check: bool = True,
                  timeout: float = 1800, configfiles=()) -> subprocess.CompletedProcess:
    """Run the real workflow in ``workdir`` (a subprocess, as a user would)."""
    cmd = snakemake_command(workdir, *args, overrides=overrides, configfiles=configfiles)
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-8000:]}")
    return proc


def start_snakemake(workdir: Path, *args: str, overrides: dict | None = None) -> subprocess.Popen:
    """The workflow as ``run_snakemake`` runs it, not waited for, output discarded, in its
    own process group (so one killpg reaches snakemake and all of its jobs)."""
    return subprocess.Popen(snakemake_command(workdir, *args, overrides=overrides), cwd=workdir,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def scheduled_jobs(workdir: Path, target: str, overrides: dict | None = None,
                   configfiles=()) -> dict[str, int]:
    """{rule: count} that `snakemake -n` would run for ``target`` (empty when up to date)."""
    proc = run_snakemake(workdir, target, "-n", "--quiet", "rules", overrides=overrides,
                         configfiles=configfiles)
    jobs: dict[str, int] = {}
    out = proc.stdout + proc.stderr
    table = out.split("Job stats:", 1)
    if len(table) < 2:
        return jobs
    for line in table[1].splitlines():
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if m and m.group(1) != "total":
            jobs[m.group(1)] = int(m.group(2))
        elif jobs and not line.strip():
            break
    return jobs


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "raw").mkdir()
    return tmp_path
