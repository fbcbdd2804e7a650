"""Crop stage throughput (images/second) and detection precision/recall on ../shared/testdata.

    python bench/bench_crop.py [--copies 4] [--threads 1 2] [--cnn]

Throughput: one shard job as the rule runs it (`python -m pipeline.crop`, a fresh process,
model loading included) over every testdata image ingest keeps, repeated --copies times
(the flat 6000x4000 stress image left out), for each method and --threads value. Anchor:
the seed's crop step (bench/seed_crop.py, one python process per image, 2 at a time as
GNU parallel -j 2 ran it) on the same images, same cascade and minimum face size.

Precision/recall: faces found per image vs MANIFEST.tsv's expected_faces (anime domain for
animeface, photo domain for dlib), and for dlib the PASCAL VOC boxes of
dlib_*_boxes.xml matched at IoU >= 0.5. --cnn adds dlib's CNN (MMOD) detector (slow on CPU).
Prints a markdown section for bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, SHARED, TESTDATA, machine  # noqa: E402
from conftest import voc_boxes  # noqa: E402

import crop_evaluation  # noqa: E402  (tests/: detector evaluation)
from pipeline import crop, ingest  # noqa: E402
from pipeline.manifest import Row, read_manifest, write_manifest  # noqa: E402
from util.config import with_defaults  # noqa: E402

CASCADE = Path(os.environ.get("FACEPREP_ANIMEFACE_CASCADE", SHARED / "models" / "lbpcascade_animeface.xml"))
CROP_DEFAULTS = yaml.safe_load((REPO / "config.yaml").read_text())["crop"]
INGEST_CFG = with_defaults("ingest", {"max_pixels": 40_000_000})
STRESS = "broken/huge_6000x4000.png"


def testdata_manifest() -> dict[str, dict]:
    with open(TESTDATA / "MANIFEST.tsv", newline="", encoding="utf-8") as f:
        return {r["file"]: r for r in csv.DictReader(f, delimiter="\t")}


def is_photo(r: dict) -> bool:
    return r["kind"] == "photo" or "photo_" in r["notes"]


def kept_rows(names) -> list[Row]:
    rows = [ingest.ingest_file(n, str(TESTDATA), INGEST_CFG, None) for n in names]
    return [r for r in rows if r.kept]


def run_stage(rows: list[Row], crop_cfg: dict, threads: int, workdir: Path) -> tuple[float, list[Row]]:
    """Seconds for one `python -m pipeline.crop` shard job over ``rows``, and its rows."""
    manifest = workdir / "ingest.tsv"
    write_manifest(manifest, rows)
    out = workdir / "crop" / "0" / "manifest.tsv"
    cfg = {"crop": crop_cfg, "models": crop.used_models(crop_cfg, {"animeface_cascade": str(CASCADE)})}
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipeline.crop", "--input", str(manifest), "--output",
                    str(out), "--config", json.dumps(cfg), "--threads", str(threads)],
                   check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start, read_manifest(out)


def run_seed(rows: list[Row], min_face: int, jobs: int, workdir: Path) -> float:
    """Seconds for the seed's one-process-per-image crop over ``rows``, ``jobs`` at a time."""
    seed = REPO / "bench" / "seed_crop.py"
    (workdir / "seed").mkdir()

    def one(item):
        k, row = item
        subprocess.run([sys.executable, str(seed), str(CASCADE), row.path,
                        str(workdir / "seed" / f"{k}-"), str(min_face)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    start = time.perf_counter()
    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(one, enumerate(rows)))
    return time.perf_counter() - start


def repeat(rows: list[Row], copies: int) -> list[Row]:
    return [Row(id=f"{r.id}c{c}", source=r.source, path=r.path) for c in range(copies) for r in rows]


def detection_metrics(rows: list[Row], expected: dict[str, dict], truth: dict | None) -> str:
    found: dict[str, list[Row]] = {}
    for r in rows:
        found.setdefault(r.source, [])
        if r.kept:
            found[r.source].append(r)
    m = crop_evaluation.count_metrics([(len(v), int(expected[k]["expected_faces"])) for k, v in found.items()])
    def ratio(v):
        return "n/a" if v is None else f"{v:.3f}"

    text = (f"precision {ratio(m['precision'])}, recall {ratio(m['recall'])} "
            f"(tp {m['tp']}, fp {m['fp']}, fn {m['fn']}; {len(found)} images)")
    if truth:
        tp = fp = fn = 0
        for name, boxes in truth.items():
            t, f, n = crop_evaluation.match_boxes([r.details["box"] for r in found.get(name, [])], boxes)
            tp, fp, fn = tp + t, fp + f, fn + n
        text += (f"; VOC boxes IoU>=0.5: precision {tp / max(tp + fp, 1):.3f}, "
                 f"recall {tp / max(tp + fn, 1):.3f} ({tp}/{tp + fn})")
    return text




def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--copies", type=int, default=4, help="times each image is repeated (throughput)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--cnn", action="store_true", help="also time and score the CNN detector")
    a = p.parse_args()

    expected = testdata_manifest()
    every = kept_rows([n for n in expected if n != STRESS])
    corpus = repeat(every, a.copies)
    anime_names = [n for n, r in expected.items() if not is_photo(r) and r["expected_faces"] != "?"]
    photo_names = [n for n, r in expected.items()
                   if (is_photo(r) or r["kind"] == "noface") and n != STRESS]
    truth = voc_boxes()

    methods = [
        ("animeface, min_face 250 (default)", crop_cfg := {**CROP_DEFAULTS, "method": "animeface"}),
        ("animeface, min_face 48", {**crop_cfg, "min_face": 48}),
        ("dlib hog upsample 1 + ffhq, min_face 30",
         {**CROP_DEFAULTS, "method": "dlib", "min_face": 30, "dlib_detector": "hog", "dlib_upsample": 1}),
        ("none", {**CROP_DEFAULTS, "method": "none"}),
    ]
    if a.cnn:
        methods.append(("dlib cnn upsample 1 + ffhq, min_face 30",
                        {**CROP_DEFAULTS, "method": "dlib", "min_face": 30, "dlib_detector": "cnn",
                         "dlib_upsample": 1}))

    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for label, cfg in methods:
            cnn = cfg["method"] == "dlib" and cfg["dlib_detector"] == "cnn"
            images = every if cnn else corpus  # ~2-10 s per image on CPU: one copy, 2 threads
            for threads in [max(a.threads)] if cnn else a.threads:
                work = tmp / f"{len(lines)}"
                work.mkdir()
                seconds, _ = run_stage(images, cfg, threads, work)
                lines.append(f"| crop: {label} | {threads} | {len(images)} | {seconds:.1f} | "
                             f"{len(images) / seconds:.3g} |")
                print(lines[-1], file=sys.stderr)
        for min_face in (CROP_DEFAULTS["min_face"], 48):
            work = tmp / f"seed{min_face}"
            work.mkdir()
            seconds = run_seed(corpus, min_face, 2, work)
            lines.append(f"| seed crop.py, 1 process per image, 2 at a time, min_face {min_face} | "
                         f"2 | {len(corpus)} | {seconds:.1f} | {len(corpus) / seconds:.3g} |")
            print(lines[-1], file=sys.stderr)

        quality = []
        for label, cfg in methods:
            if cfg["method"] == "none":
                continue
            work = tmp / f"q{len(quality)}"
            work.mkdir()
            photo = cfg["method"] == "dlib"
            _, rows = run_stage(kept_rows(photo_names if photo else anime_names), cfg, 2, work)
            quality.append(f"- {label}, on the {'photo' if photo else 'anime'} set: "
                           + detection_metrics(rows, expected, truth if photo else None))
            print(quality[-1], file=sys.stderr)

    print(f"\n## crop\n\n{datetime.date.today().isoformat()}, {machine()}, "
          f"Python {platform.python_version()}; other jobs shared the CPU, so timings are noisy.\n"
          f"Command: `python bench/bench_crop.py {' '.join(sys.argv[1:])}`.\n\n"
          f"Throughput: one shard job as the rule runs it (fresh process, model loading included) "
          f"over the {len(every)} testdata images ingest keeps (without the 6000x4000 flat "
          f"image) x {a.copies} copies.\n\n"
          "| run | threads/jobs | images | seconds | images/s |\n|---|---|---|---|---|\n"
          + "\n".join(lines)
          + "\n\nDetection quality (faces per image vs MANIFEST.tsv expected_faces; anime set = "
          "anime + no-face images + derived copies of anime images, photo set = photos, their "
          "renamed copies and the no-face images):\n\n" + "\n".join(quality) + "\n")


if __name__ == "__main__":
    main()
