"""Fast stops, shards: auto and upscale-after-dedup, measured with real snakemake runs.

    python bench/bench_stops.py --workdir /tmp/faceprep-stops [--demo]

  empty_folder   `snakemake ranked_dataset` on an empty raw folder: seconds to the message,
                 console lines, jobs run.
  no_face        3 anime images, crop.method animeface with min_face 700 (no face that
                 big): seconds to the stop line, jobs run, console lines.
  auto_shards    `snakemake -n dataset` job counts for raw folders of 50 / 500 / 5,000
                 files (hard links of one image) with shards: auto.
  demo           (--demo) the demo's raw folder to the `dataset` target: faces dedup
                 dropped, how many of them were below the upscale target (the old order
                 upscaled those first), and how many dropped faces upscale touched (0).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
TESTDATA = Path(os.environ.get("FACEPREP_SHARED", REPO.parent / "shared")) / "testdata"
os.environ.setdefault("FACEPREP_ANIMEFACE_CASCADE",
                      str(TESTDATA.parent / "models" / "lbpcascade_animeface.xml"))
TINY = {"name": "tiny", "crop": {"method": "none"}, "upscale": {"method": "lanczos"},
        "normalize": {"resolution": 32, "format": "png"}}


def snakemake(workdir: Path, cfg: dict, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    path = workdir / "bench_config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"),
                           "--directory", str(workdir), "--configfile", str(path), "--cores", "2",
                           *args], cwd=workdir, capture_output=True, text=True)
    return proc, time.monotonic() - start


def jobs_run(proc) -> int:
    return len(re.findall(r"^local(?:rule|checkpoint) \w+:", proc.stdout + proc.stderr, re.M))


def console(proc) -> tuple[int, str]:
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    return len(lines), lines[-1] if lines else ""


def fresh(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "raw").mkdir(parents=True)
    return folder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/faceprep-stops"))
    p.add_argument("--demo", action="store_true")
    a = p.parse_args()
    print(f"nproc {os.cpu_count()}, load average {os.getloadavg()}")

    w = fresh(a.workdir / "empty")
    proc, secs = snakemake(w, {**TINY, "raw_dir": str(w / "raw")}, "ranked_dataset")
    n, last = console(proc)
    print(f"empty_folder: {secs:.1f} s, rc {proc.returncode}, {jobs_run(proc)} jobs, {n} console lines; last: {last}")

    w = fresh(a.workdir / "noface")
    for f in ("anime_miku_noisy.jpg", "anime_miku_CC_BY-NC.jpg", "anime_miku_small.png"):
        shutil.copyfile(TESTDATA / f, w / "raw" / f)
    cfg = {**TINY, "raw_dir": str(w / "raw"), "crop": {"method": "animeface", "min_face": 700}}
    proc, secs = snakemake(w, cfg, "ranked_dataset")
    n, last = console(proc)
    print(f"no_face: {secs:.1f} s, rc {proc.returncode}, {jobs_run(proc)} jobs, {n} console lines; last: {last}")

    for count in (50, 500, 5000):
        w = fresh(a.workdir / f"auto{count}")
        first = w / "raw" / "0.png"
        shutil.copyfile(TESTDATA / "anime_miku_small.png", first)
        for i in range(1, count):
            os.link(first, w / "raw" / f"{i}.png")
        proc, secs = snakemake(w, {**TINY, "raw_dir": str(w / "raw")}, "dataset", "-n", "--quiet", "rules")
        total = re.search(r"^total\s+(\d+)$", proc.stdout + proc.stderr, re.M)
        shards = len(list((w / "results" / "tiny" / "listing").glob("*.tsv")))
        print(f"auto_shards: {count} files -> {shards} shards, {total.group(1) if total else '?'} jobs "
              f"planned for `dataset` ({secs:.1f} s dry run)")

    if a.demo:
        from pipeline.manifest import read_manifest
        w = a.workdir / "demo"
        shutil.rmtree(w, ignore_errors=True)
        subprocess.run([sys.executable, str(REPO / "demo" / "make_raw.py"), str(w / "raw")], check=True,
                       capture_output=True)
        cfg = yaml.safe_load((REPO / "characters" / "demo.yaml").read_text())
        cfg["raw_dir"] = str(w / "raw")
        proc, secs = snakemake(w, cfg, "dataset")
        assert proc.returncode == 0, proc.stderr[-3000:]
        R = w / "results" / "demo"
        dedup = read_manifest(R / "clean" / "dedup.tsv")
        dropped = {r.id: r for r in dedup if not r.kept}
        target = cfg["normalize"]["resolution"]
        below = sum(min(r.width, r.height) < target for r in dropped.values())
        up = [r for m in sorted((R / "upscale").glob("*/manifest.tsv")) for r in read_manifest(m)]
        touched = sum(1 for r in up if r.id in dropped and "upscaler" in r.details)
        upscaled = sum(1 for r in up if r.details.get("upscale", {}).get("factor", 1) > 1)
        print(f"demo: {len(dedup)} faces after clean, {len(dropped)} dropped by dedup, {below} of them "
              f"below the {target} px target (upscaled first in the old order); upscale touched "
              f"{touched} dropped faces and upscaled {upscaled} survivors; `dataset` in {secs:.0f} s")
        print(json.dumps({"jobs": jobs_run(proc)}))


if __name__ == "__main__":
    main()
