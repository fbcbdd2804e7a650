"""faceprep against the seed's shell recipe, on the same ~2,000 images.

    python bench/compare.py [--mode fair|literal] [--total 2000] [--workdir /tmp/faceprep-compare]
                            [--min-face 48] [--cores 2] [--target export|dataset]

Builds the corpus from ../shared/testdata: every file once as it is (broken ones included),
plus variants of each decodable image (random crop/shift, scale, colour jitter, JPEG
quality) so they are not exact duplicates, up to --total files. Then runs, each from a fresh
output folder on the same corpus:
  seed      bench/seed_pipeline.sh (crop.py under GNU parallel, fdupes, %k < 257, mogrify,
            identify) with the same minimum face size.
            fair:    as a careful engineer runs it: crop.py on 25 images per process, the
                     ImageMagick steps on many files per call, one thread per job;
            literal: the recipe as written, one process per image in every step.
  faceprep  `snakemake --cores N <target>` with crop animeface and the same min_face.
            fair:    configured to make the seed's decisions: the cascade box as it is
                     (margin 0, no rotated or small-face pass), exact-only dedup, the
                     `identify %k` < 257 colour-count test and no other quality floor,
                     damaged files kept (the seed crops what OpenCV decodes), no upscaling
                     or enlarging (a small face padded at its size, like `-resize
                     512x512\\> -extent 512x512`), 512 px PNG; target `export` (the dataset
                     manifest over the normalized PNGs: the seed's output folder).
                     `--target dataset` adds the check page, TFRecords and ZIP (work the
                     seed does not do);
            literal: faceprep's defaults for this job (near-duplicate dedup, chroma test,
                     upscale lanczos, rotated pass) and the `dataset` target.
With --rerun EDIT [EDIT] (faceprep only, the issue 24 loop): after the first run, make
each EDIT on the finished run in turn and time the rerun of the same target: `margin` (crop.margin +0.1 over
the first run's), `add` (100 new variant files in raw/v/<n>/new<k>.jpg), `none` (nothing changed: Snakemake's own part of a rerun). --verify then moves
the rerun's folder to --workdir/rerun, runs a fresh faceprep with the edit in its place (own
cache) and compares every output file under results/ (logs, benchmarks aside) byte for byte.
Prints images/second for both, the ratio (one run), and the faces kept, scored with
MANIFEST.tsv: a kept face is correct when its source (or the original it is a variant of)
is an anime image with a face that is not grayscale; faces from photos, no-face images and
grayscale or sepia images are wrong for an anime dataset. In literal mode faceprep's
near-duplicate step drops the variants (fdupes does not), so its faces are also scored as
an exact-only dedup would keep them (its near-duplicate drops put back).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import yaml
from PIL import Image, ImageEnhance, ImageOps

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from process_cpu import children_cpu, counting_env, per_stage  # noqa: E402  (bench/, beside this script)

TESTDATA = Path(os.environ.get("FACEPREP_SHARED", REPO.parent / "shared")) / "testdata"
CASCADE = TESTDATA.parent / "models" / "lbpcascade_animeface.xml"
# files that are not worth many copies: unreadable, or 24 megapixels of one colour
ONCE = {"broken/truncated.jpg", "broken/zero_bytes.jpg", "broken/text_named.jpg",
        "broken/huge_6000x4000.png"}


def manifest_rows() -> list[dict]:
    with open(TESTDATA / "MANIFEST.tsv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def anime_face_count(row: dict) -> int:
    """Faces a correct anime dataset takes from this original (0: none belong in it)."""
    # derived files are made from anime_miku_*, except the copies of a photo
    anime = row["kind"] == "anime" or (row["kind"] == "derived" and "photo_" not in row["notes"])
    if not anime or row["grayscale"] == "yes":
        return 0
    return int(row["expected_faces"]) if row["expected_faces"].isdigit() else 1


# The anime originals show three distinct faces: anime_miku_noisy and anime_miku_small are
# the same drawing (other background, other size) and every derived file is made from one
# of them; the horizontal flip is a face of its own for a dataset without flips.
ANIME_PICTURES = ("full-body miku", "portrait miku", "mirrored portrait miku")


def anime_picture(row: dict) -> str:
    if row["file"] == "anime_miku_CC_BY-NC.jpg":
        return ANIME_PICTURES[0]
    return ANIME_PICTURES[2] if "flip" in row["notes"] else ANIME_PICTURES[1]


def variant(im: Image.Image, rng: random.Random) -> Image.Image:
    """A slightly different take on ``im``: crop/shift, scale, brightness/contrast/colour."""
    w, h = im.size
    left, top = rng.uniform(0, 0.05) * w, rng.uniform(0, 0.05) * h
    right, bottom = w - rng.uniform(0, 0.05) * w, h - rng.uniform(0, 0.05) * h
    im = im.crop((int(left), int(top), int(right), int(bottom)))
    scale = rng.uniform(0.9, 1.1)
    im = im.resize((max(1, int(im.width * scale)), max(1, int(im.height * scale))),
                   Image.Resampling.BICUBIC)
    im = ImageEnhance.Brightness(im).enhance(rng.uniform(0.93, 1.07))
    im = ImageEnhance.Contrast(im).enhance(rng.uniform(0.93, 1.07))
    if im.mode == "RGB":
        im = ImageEnhance.Color(im).enhance(rng.uniform(0.9, 1.1))
    return im


def decodable_bases(rows: list[dict]) -> list[tuple[dict, Image.Image]]:
    """The originals that get variants, in MANIFEST order (v/<n>/ is the n-th of them)."""
    bases = []
    for row in rows:
        if row["file"] in ONCE:
            continue
        try:
            with Image.open(TESTDATA / row["file"]) as im:
                im = ImageOps.exif_transpose(im)
                gray = im.mode in ("L", "I", "I;16", "1")
                bases.append((row, im.convert("L" if gray else "RGB")))
        except OSError:
            continue
    return bases


def build_corpus(raw: Path, total: int, seed: int = 0) -> None:
    """raw/<file> for every testdata file, then raw/v/<n>/<k>.jpg variants up to ``total``."""
    rng = random.Random(seed)
    rows = manifest_rows()
    for row in rows:
        dest = raw / row["file"]
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(TESTDATA / row["file"], dest)
    bases = decodable_bases(rows)
    per_base = max(0, (total - len(rows)) // len(bases))
    extra = total - len(rows) - per_base * len(bases)
    for n, (row, base) in enumerate(bases):
        for k in range(per_base + (1 if n < extra else 0)):
            dest = raw / f"v/{n:02d}/{k:03d}.jpg"
            dest.parent.mkdir(parents=True, exist_ok=True)
            variant(base, rng).save(dest, quality=rng.randint(80, 95))


def add_variants(raw: Path, count: int, seed: int = 1) -> list[str]:
    """``count`` new variant files raw/v/<n>/new<k>.jpg (another rng seed: new pictures)."""
    rng = random.Random(seed)
    bases = decodable_bases(manifest_rows())
    added = []
    for k in range(count):
        n = k % len(bases)
        rel = f"v/{n:02d}/new{k:03d}.jpg"
        (raw / rel).parent.mkdir(parents=True, exist_ok=True)
        variant(bases[n][1], rng).save(raw / rel, quality=rng.randint(80, 95))
        added.append(rel)
    return added


def output_differences(a: Path, b: Path) -> list[str]:
    """Files under results/ that differ between two faceprep workdirs (logs and
    benchmarks aside)."""
    def files(root: Path) -> dict[str, bytes]:
        out = {}
        for p in sorted((root / "results").rglob("*")):
            rel = p.relative_to(root).as_posix()
            if p.is_file() and not re.search(r"/(logs|benchmarks)/", rel):
                out[rel] = p.read_bytes()
        return out
    fa, fb = files(a), files(b)
    return sorted(k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k))


def corpus_origin(raw: Path) -> dict[str, dict]:
    """{corpus file: MANIFEST row of the original it is (a variant of)}."""
    rows = manifest_rows()
    by_file = {row["file"]: row for row in rows}
    bases = [row for row, _ in decodable_bases(rows)]
    origin = {}
    for p in raw.rglob("*"):
        if p.is_file():
            rel = p.relative_to(raw).as_posix()
            origin[rel] = bases[int(rel.split("/")[1])] if rel.startswith("v/") else by_file[rel]
    return origin


def seed_kept_sources(raw: Path, out: Path) -> list[str]:
    """The source of every face the seed kept (<n>-<k>.png: line n of OUT.map.tsv)."""
    source_of = {}
    with open(f"{out}.map.tsv", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            num, path = line.rstrip("\n").split("\t", 1)
            source_of[num] = os.path.relpath(path, raw)
    return [source_of[p.name.split("-", 1)[0]] for p in out.iterdir()]


def faceprep_kept_sources(results: Path) -> tuple[list[str], list[str]]:
    """Sources of the exported faces, and of the faces dropped as near duplicates."""
    from pipeline.manifest import read_manifest

    kept = [r.source for r in read_manifest(results / "export" / "manifest.tsv") if r.kept]
    near = [r.source for r in read_manifest(results / "clean" / "dedup.tsv")
            if r.reason == "near_duplicate"]
    return kept, near


def run_seed(raw: Path, out: Path, min_face: int, cores: int, batch: int) -> dict:
    env = {**os.environ, "PYTHON": sys.executable, "FACEPREP_ANIMEFACE_CASCADE": str(CASCADE)}
    t0, cpu0 = time.perf_counter(), children_cpu()
    proc = subprocess.run(["bash", str(REPO / "bench" / "seed_pipeline.sh"), str(raw), str(out),
                           str(min_face), str(cores), str(batch)],
                          capture_output=True, text=True, env=env)
    wall, cpu = time.perf_counter() - t0, children_cpu() - cpu0
    if proc.returncode != 0:
        raise SystemExit(f"seed pipeline failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    steps = {m.group(1): float(m.group(2))
             for m in re.finditer(r"^SEED_TIME (\w+) ([\d.]+)$", proc.stdout, re.M)}
    kept = seed_kept_sources(raw, out)
    bad = int(re.search(r"^SEED_BAD_SIZE (\d+)$", proc.stdout, re.M).group(1))
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "steps_s": steps, "kept_sources": kept,
            "not_512": bad}


def detection_floor(raw: Path, min_face: int) -> dict:
    """CPU seconds of the work both sides must do on every file, in this one process on
    one thread: OpenCV decode + equalize + the cascade at min_face (the seed's crop.py
    call), and for each face found a 512 px PNG encode (level 1, Up filter). No pipeline
    doing the same decisions can go below this; seed CPU / this bounds any speed-up."""
    import cv2
    import numpy as np

    from pipeline.imaging import png_bytes
    cv2.setNumThreads(1)
    cascade = cv2.CascadeClassifier(str(CASCADE))
    canvas = Image.new("RGB", (512, 512))
    detect = encode = 0.0
    faces = 0
    for path in sorted(p for p in raw.rglob("*") if p.is_file()):
        t0 = time.process_time()
        image = cv2.imread(str(path))
        if image is None:
            continue
        gray = cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
        found = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5,
                                         minSize=(min_face, min_face))
        t1 = time.process_time()
        for x, y, w, h in found:
            face = Image.fromarray(np.ascontiguousarray(image[y:y + h, x:x + w, ::-1]))
            square = canvas.copy()
            square.paste(face.resize((512, 512)) if max(w, h) > 512 else face)
            png_bytes(square)
        detect, encode, faces = detect + t1 - t0, encode + time.process_time() - t1, faces + len(found)
    return {"decode_detect_cpu_s": round(detect, 2), "encode_512_png_cpu_s": round(encode, 2),
            "faces": faces, "total_cpu_s": round(detect + encode, 2)}


def seed_decisions(min_face: int) -> dict:
    """faceprep settings that make the seed recipe's decisions (see the module doc)."""
    return {
        "ingest": {"damaged": "keep"},
        "crop": {"method": "animeface", "min_face": min_face, "margin": 0.0, "border": "clamp",
                 "rotate_pass": False, "small_faces": False},
        "clean": {"min_side": 1, "exact_duplicates": True,
                  "near_duplicates": {"method": "none", "sources": False, "trims": False},
                  "monochrome": {"method": "colors", "max_colors": 256},
                  "quality": {"min_sharpness": None, "min_brightness": None,
                              "max_brightness": None, "min_contrast": None}},
        "upscale": {"method": "none"},
        "normalize": {"resolution": 512, "format": "png", "fit": "pad", "background": [0, 0, 0],
                      "enlarge": False},
    }


def run_faceprep(raw: Path, workdir: Path, settings: dict, shards, cores: int,
                 target: str) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "compare_config.yaml"
    config.write_text(yaml.safe_dump({
        "name": "compare", "raw_dir": str(raw), "shards": shards,
        "results_dir": str(workdir / "results"), "cache_dir": str(workdir / "cache"),
        **settings}))
    extra = {"FACEPREP_ANIMEFACE_CASCADE": str(CASCADE)}
    goal = str(workdir / "results/compare/export/manifest.tsv") if target == "export" else target
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
           str(workdir), "--configfile", str(config), "--cores", str(cores), goal]
    with counting_env() as (env, lines):  # each Python process's CPU (bench/process_cpu.py)
        t0, cpu0 = time.perf_counter(), children_cpu()
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**env, **extra})
        wall, cpu = time.perf_counter() - t0, children_cpu() - cpu0
        processes = per_stage(lines)
    if proc.returncode != 0:
        raise SystemExit(f"faceprep failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    from pipeline.manifest import read_manifest

    results = workdir / "results" / "compare"
    kept, near = faceprep_kept_sources(results)
    export = read_manifest(results / "export" / "manifest.tsv")
    bad = 0
    for r in export:
        if r.kept:
            with Image.open(r.path if os.path.isabs(r.path) else workdir / r.path) as im:
                bad += im.size != (512, 512)
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "target": target, "shards": shards,
            "job_seconds_by_rule": rule_seconds(results),
            # Snakemake's benchmark cpu_time samples a job now and then and missed a quarter of
            # crop's CPU at 2,000 files: each process's own, from the kernel, at its exit
            "process_cpu_s": {stage: cpu for stage, (_, cpu, _) in processes.items()},
            "kept_sources": kept, "not_512": bad, "near_dup_sources": near}


def rerun(args, edit: str, verify: bool, raw: Path, settings: dict, shards, target: str,
          first: dict) -> tuple[dict, dict]:
    """The edit on the finished run, the timed rerun, and (``verify``) a fresh run with
    every edit so far to compare. Returns the report and the edited settings."""
    import copy
    edited = copy.deepcopy(settings)
    if edit == "margin":
        crop = edited.setdefault("crop", {})
        crop["margin"] = round((crop.get("margin") or 0.25) + 0.1, 2)
        what = f"crop.margin -> {crop['margin']}"
    elif edit == "none":  # Snakemake's own part of every rerun: start, DAG, checkpoint re-plan
        what = "nothing changed"
    else:
        what = f"{len(add_variants(raw, 100))} files added"
    # the benchmark files of the first run would be summed with the rerun's
    shutil.rmtree(args.workdir / "faceprep" / "results" / "compare" / "benchmarks", ignore_errors=True)
    again = run_faceprep(raw, args.workdir / "faceprep", edited, shards, args.cores, target)
    out = {"edit": what, "wall_s": again["wall_s"], "cpu_s": again["cpu_s"],
           "wall_over_first": round(again["wall_s"] / first["wall_s"], 3),
           "cpu_over_first": round(again["cpu_s"] / first["cpu_s"], 3),
           "job_seconds_by_rule": again["job_seconds_by_rule"],
           "crop_logs": [line for log in sorted((args.workdir / "faceprep" / "results" / "compare"
                                                 / "logs" / "crop").glob("*.log"))
                         for line in log.read_text().splitlines() if "detections:" in line],
           "load_average_after": os.getloadavg()}
    if verify:
        # the fresh run in the same folder (absolute paths are in the outputs, and the page
        # hashes the manifest), the rerun's moved aside; its own cache
        rerun_dir = args.workdir / "rerun"
        shutil.rmtree(rerun_dir, ignore_errors=True)
        (args.workdir / "faceprep").rename(rerun_dir)
        run_faceprep(raw, args.workdir / "faceprep", edited, shards, args.cores, target)
        diff = output_differences(rerun_dir, args.workdir / "faceprep")
        out["outputs_differing_from_a_fresh_run"] = diff[:20]
        out["byte_identical_to_fresh_run"] = not diff
    return out, edited


def rule_seconds(results: Path, column: str = "s") -> dict[str, float]:
    """Snakemake's `benchmark:` wall seconds (or another column), summed over each rule's
    jobs."""
    totals: dict[str, float] = {}
    for tsv in sorted((results / "benchmarks").glob("*/*.tsv")):
        with open(tsv, newline="") as f:
            first = next(csv.DictReader(f, delimiter="\t"))
        totals[tsv.parent.name] = round(totals.get(tsv.parent.name, 0) + float(first[column]), 2)
    return totals


def score(kept_sources: list[str], origin: dict[str, dict]) -> dict:
    """Correct faces: per source, at most as many as its original has anime faces."""
    per_source = Counter(kept_sources)
    correct = wrong = extra = 0
    for source, n in per_source.items():
        expected = anime_face_count(origin[source])
        correct += min(n, expected)
        extra += max(0, n - expected) if expected else 0
        wrong += n if not expected else 0
    originals = {origin[s]["file"] for s in per_source if anime_face_count(origin[s])}
    pictures = {anime_picture(origin[s]) for s in per_source if anime_face_count(origin[s])}
    return {"kept": len(kept_sources), "correct": correct, "wrong_source": wrong,
            "extra_from_anime_source": extra, "anime_originals_covered": len(originals),
            "distinct_anime_faces": f"{len(pictures)} of {len(ANIME_PICTURES)}"}


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                  if line.startswith("model name")), "unknown CPU")
    return f"nproc {len(os.sched_getaffinity(0))}, {model}"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--mode", choices=["fair", "literal"], default="fair")
    ap.add_argument("--total", type=int, default=2000, help="corpus size (files)")
    ap.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)),
                    help="parallel -j for the seed, --cores for faceprep")
    ap.add_argument("--target", choices=["export", "dataset"],
                    help="faceprep's target (default: export in fair mode, dataset in literal)")
    ap.add_argument("--keep-corpus", action="store_true",
                    help="reuse --workdir/raw if it exists (the same corpus for several runs)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/faceprep-compare"))
    ap.add_argument("--min-face", type=int, default=48,
                    help="cascade minSize for both (the anime faces in testdata are 70-144 px)")
    ap.add_argument("--shards", default="auto", help="faceprep shards (auto or a number)")
    ap.add_argument("--only", choices=["seed", "faceprep"])
    ap.add_argument("--upscale", choices=["lanczos", "none", "waifu2x"], default="lanczos",
                    help="literal mode: faceprep's upscale method")
    ap.add_argument("--format", choices=["png", "jpg"], default="png",
                    help="literal mode: faceprep's dataset image format (the seed writes PNG)")
    ap.add_argument("--no-tfrecords", action="store_true",
                    help="faceprep without TFRecords (export.tfrecords: false): for a machine "
                         "without TensorFlow (bench/device.py)")
    ap.add_argument("--floor", action="store_true",
                    help="also measure the work both must do (decode + cascade + 512 px PNG "
                         "per face) in one process on one thread: the bound on any ratio")
    ap.add_argument("--rerun", choices=["margin", "add", "none"], nargs="+",
                    help="faceprep only: time a rerun after each edit of the finished run, "
                         "one after another (each compared with the first run); none: a "
                         "rerun with nothing changed (the fixed part of every rerun)")
    ap.add_argument("--verify", action="store_true",
                    help="with --rerun: compare the rerun's outputs with a fresh run's")
    ap.add_argument("--rescore", action="store_true",
                    help="score the outputs already in --workdir (no runs, no timings)")
    args = ap.parse_args(argv)
    raw = args.workdir / "raw"
    if args.rescore:
        origin = corpus_origin(raw)
        report = {}
        seed_out = args.workdir / "seed_out"
        if seed_out.is_dir():
            report["seed"] = score(seed_kept_sources(raw, seed_out), origin)
        results = args.workdir / "faceprep" / "results" / "compare"
        if results.is_dir():
            kept, near = faceprep_kept_sources(results)
            report["faceprep"] = {**score(kept, origin),
                                  "if_near_duplicates_kept": score(kept + near, origin)}
        print(json.dumps(report, indent=2))
        return
    target = args.target or ("export" if args.mode == "fair" else "dataset")
    shards = args.shards if args.shards == "auto" else int(args.shards)
    if args.keep_corpus and raw.is_dir():
        for out in ("seed_out", "seed_out.map.tsv", "faceprep", "rerun"):
            path = args.workdir / out
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    else:
        shutil.rmtree(args.workdir, ignore_errors=True)
        build_corpus(raw, args.total)
    origin = corpus_origin(raw)
    n_files = sum(1 for p in raw.rglob("*") if p.is_file())
    expected = sum(anime_face_count(row) for row in origin.values())
    report = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "machine": machine(),
              "load_average_before": os.getloadavg(), "mode": args.mode,
              "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "corpus_files": n_files, "anime_faces_in_corpus": expected}
    runs = {}
    if args.rerun:
        args.only = "faceprep"
    if args.only != "faceprep":
        runs["seed"] = run_seed(raw, args.workdir / "seed_out", args.min_face, args.cores,
                                25 if args.mode == "fair" else 1)
    if args.only != "seed":
        if args.mode == "fair":
            settings = seed_decisions(args.min_face)
        else:
            settings = {"crop": {"method": "animeface", "min_face": args.min_face},
                        "upscale": {"method": args.upscale},
                        "normalize": {"resolution": 512, "format": args.format}}
        if args.no_tfrecords:
            settings["export"] = {**settings.get("export", {}), "tfrecords": False}
        runs["faceprep"] = run_faceprep(raw, args.workdir / "faceprep", settings, shards,
                                        args.cores, target)
        edited = settings
        for n, edit in enumerate(args.rerun or []):
            verify = args.verify and n == len(args.rerun) - 1
            report[f"rerun_{edit}"], edited = rerun(args, edit, verify, raw, edited, shards,
                                                    target, runs["faceprep"])
    for name, run in runs.items():
        kept = run.pop("kept_sources")
        near = run.pop("near_dup_sources", None)
        report[name] = {**run, "images_per_s": round(n_files / run["wall_s"], 2),
                        **score(kept, origin)}
        if near:
            # the seed has no near-duplicate step: score what an exact-only dedup would keep
            report[name]["near_duplicates_dropped"] = len(near)
            report[name]["if_near_duplicates_kept"] = score(kept + near, origin)
    report["load_average_after"] = os.getloadavg()
    for p in raw.glob("v/*/new*.jpg"):  # --rerun add: the corpus stays as built
        p.unlink()
    if args.floor:
        floor = detection_floor(raw, args.min_face)
        report["floor"] = floor
        if "seed" in runs:
            report["floor"]["seed_cpu_over_floor"] = round(
                report["seed"]["cpu_s"] / floor["total_cpu_s"], 2)
    if len(runs) == 2:
        report["speedup_faceprep_over_seed"] = round(
            report["faceprep"]["images_per_s"] / report["seed"]["images_per_s"], 2)
        report["cpu_ratio_seed_over_faceprep"] = round(
            report["seed"]["cpu_s"] / report["faceprep"]["cpu_s"], 2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
