"""Repost benchmark for dedup: copies of testdata pictures with known groups.

    python bench/bench_reposts.py [--seed 0] [--faces] [--before]

Originals: the distinct testdata pictures (10 VOC photos, Tom Cruise, the dogs, the city,
three anime pictures), decoded and saved as lossless PNG masters. Per original, copies as
they circulate: rescaled 0.4-1.0, re-encoded as JPEG q50-95, cut 2-8% on one side per axis
(a shift), mirrored, a text watermark, colour jitter, and two combinations; each copy is a
JPEG at q50-95. Controls: distinct but similar pictures (the left and right 55% of every
photo, overlapping by 10%, and the 3 anime pictures of the same character); in face mode
the halves are left out (their faces are the photo's own faces) and the distinct faces are
the other groups' (different people; the three anime pictures share one face drawing).

Every image runs through the real stages in process (ingest -> crop -> clean shard ->
dedup) with the default clean config: ``crop.method none`` (whole pictures), and with
--faces also the face crops (dlib HOG for the photos, animeface min_face 48 for anime).
--before runs the same rows through the dedup of the commit before issue 13 (crop hashes
only, single linkage, crop pixels first, flips off) for comparison.

Scores: copies escaping (a copy's face kept; in face mode also a face the detector
found in a copy but not in its original), distinct images merged (a face dropped as a duplicate of another group),
keeper = original (no face of the original dropped as a copy of something else).
"""
from __future__ import annotations

import argparse
import copy
import datetime
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw, ImageEnhance, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, TESTDATA, machine, module_at  # noqa: E402
import conftest  # noqa: E402,F401  (points FACEPREP_ANIMEFACE_CASCADE at ../shared/models)

from dedup_reference import dedup  # noqa: E402
from pipeline import clean, crop, ingest  # noqa: E402
from pipeline.imaging import load_rgb  # noqa: E402
from pipeline.manifest import ShardDir  # noqa: E402

DEFAULTS = yaml.safe_load((REPO / "config.yaml").read_text())
ORIGINALS = ["photo_2007_007763.jpg", "photo_2008_001009.jpg", "photo_2008_001322.jpg",
             "photo_2008_002079.jpg", "photo_2008_002470.jpg", "photo_2008_002506.jpg",
             "photo_2008_004176.jpg", "photo_2008_007676.jpg", "photo_2009_004587.jpg",
             "photo_Tom_Cruise_avp_2014_4.jpg", "photo_dogs.jpg", "noface_city.jpg",
             "anime_miku_CC_BY-NC.jpg", "anime_miku_noisy.jpg", "anime_miku_small.png"]


def jpeg(im: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=int(quality))
    return buf.getvalue()


def shifted(im: Image.Image, rng) -> Image.Image:
    """Cut 2-8% from one side on each axis (the picture moves in the frame)."""
    fx, fy = rng.uniform(0.02, 0.08, 2)
    w, h = im.size
    dx, dy = round(w * fx), round(h * fy)
    left = dx if rng.random() < 0.5 else 0
    top = dy if rng.random() < 0.5 else 0
    return im.crop((left, top, w - (dx - left), h - (dy - top)))


def watermarked(im: Image.Image, rng) -> Image.Image:
    out = im.copy()
    draw = ImageDraw.Draw(out)
    size = max(10, im.height // 16)
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    x = rng.integers(0, max(1, im.width // 3))
    draw.text((int(x), im.height - size - 4), "@reposter 2024", fill=(255, 255, 255), font=font,
              stroke_width=1, stroke_fill=(0, 0, 0))
    return out


def jittered(im: Image.Image, rng) -> Image.Image:
    out = ImageEnhance.Brightness(im).enhance(rng.uniform(0.9, 1.1))
    out = ImageEnhance.Contrast(out).enhance(rng.uniform(0.9, 1.1))
    return ImageEnhance.Color(out).enhance(rng.uniform(0.8, 1.2))


def rescaled(im: Image.Image, rng, low=0.4) -> Image.Image:
    s = rng.uniform(low, 1.0)
    return im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.Resampling.LANCZOS)


COPIES = {
    "rescale": lambda im, rng: rescaled(im, rng),
    "reencode": lambda im, rng: im,
    "shift": shifted,
    "mirror": lambda im, rng: im.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
    "watermark": watermarked,
    "colour": jittered,
    "shift+rescale": lambda im, rng: rescaled(shifted(im, rng), rng, 0.6),
    "mirror+colour": lambda im, rng: jittered(im.transpose(Image.Transpose.FLIP_LEFT_RIGHT), rng),
}


def build(raw: Path, seed: int) -> dict[str, tuple[str, str]]:
    """Write the benchmark pictures; returns {relative path: (group, kind)}."""
    rng = np.random.default_rng(seed)
    truth = {}
    for name in ORIGINALS:
        im, _ = load_rgb(TESTDATA / name)
        group = Path(name).stem
        (raw / group).mkdir(parents=True, exist_ok=True)
        im.save(raw / group / "original.png")
        truth[f"{group}/original.png"] = (group, "original")
        for kind, make in COPIES.items():
            rel = f"{group}/{kind.replace('+', '_')}.jpg"
            (raw / rel).write_bytes(jpeg(make(im, rng), rng.integers(50, 96)))
            truth[rel] = (group, kind)
        if name.startswith("photo_") and name != "photo_dogs.jpg":  # distinct, overlapping halves
            w, h = im.size
            for side, box in (("left", (0, 0, round(w * 0.55), h)), ("right", (w - round(w * 0.55), 0, w, h))):
                rel = f"controls/{group}_{side}.png"
                (raw / "controls").mkdir(exist_ok=True)
                im.crop(box).save(raw / rel)
                truth[rel] = (f"{group}_{side}", "control")
    return truth


def run_stages(raw: Path, work: Path, truth: dict, crop_cfg: dict, clean_cfg: dict, dedup_fn):
    rows = [ingest.ingest_file(rel, str(raw), DEFAULTS["ingest"], None) for rel in sorted(truth)]
    start = time.perf_counter()
    with ShardDir(work / "crop") as out:
        cropped = crop.crop_shard(rows, crop_cfg, {}, out, threads=2)
        out.write_manifest(cropped)
    crop_s = time.perf_counter() - start
    start = time.perf_counter()
    sources = clean.shard_sources(cropped, rows, clean_cfg, 2)
    cleaned = clean.clean_shard(cropped, clean_cfg, clean.source_sizes(rows), 2, sources)
    clean_s = time.perf_counter() - start
    start = time.perf_counter()
    out = dedup_fn([r for r in cleaned if r.kept], clean_cfg)
    return out, cleaned, crop_s, clean_s, time.perf_counter() - start


# the three anime pictures are different pictures with the same face drawing (the small
# one is the portrait without its background, the full-body one reuses the head): at the
# face level they are one face
SAME_FACE = {"anime_miku_small": "anime_miku_noisy", "anime_miku_CC_BY-NC": "anime_miku_noisy"}


def score(out, truth, faces: bool = False) -> dict:
    by_id = {r.id: r for r in out}
    group = {r.id: truth[r.source][0] for r in out}
    if faces:
        group = {k: SAME_FACE.get(g, g) for k, g in group.items()}
    kind = {r.id: truth[r.source][1] for r in out}
    kept_originals = {(group[r.id]) for r in out if r.kept and kind[r.id] in ("original", "control")}
    escaped = [r for r in out if r.kept and kind[r.id] not in ("original", "control")
               and group[r.id] in kept_originals]
    merged = [r for r in out if not r.kept and group[by_id[r.details["duplicate_of"]].id] != group[r.id]]
    # an original dropped for a copy (in face mode an original may go to the other
    # original of the same face)
    wrong_keeper = [r for r in out if not r.kept and kind[r.id] in ("original", "control")
                    and kind[r.details["duplicate_of"]] not in ("original", "control")]
    chained = [r for r in out if not r.kept and not by_id[r.details["duplicate_of"]].kept]
    over_radius = [r for r in out if not r.kept and r.details.get("distance", 0) > 4]
    copies = sum(1 for r in out if kind[r.id] not in ("original", "control"))
    by_kind = {}
    for r in escaped:
        by_kind[kind[r.id]] = by_kind.get(kind[r.id], 0) + 1
    reasons = {}
    for r in out:
        reasons[r.reason or "keep"] = reasons.get(r.reason or "keep", 0) + 1
    return {"images": len(out), "copies": copies, "escaped": len(escaped), "escaped_by_kind": by_kind,
            "merged": len(merged), "wrong_keeper": len(wrong_keeper), "pointer_to_dropped": len(chained),
            "over_radius": len(over_radius), "reasons": reasons,
            "examples": [(r.source, r.reason, r.details.get("duplicate_of")) for r in (merged + wrong_keeper)[:4]]}


def old_dedup():
    """The dedup of the commit before issue 13, with its own clean_row."""
    return module_at("cf05257", "pipeline/clean.py", "clean_before")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--faces", action="store_true", help="also with face crops (dlib / animeface)")
    p.add_argument("--before", action="store_true", help="also the dedup before issue 13")
    a = p.parse_args()
    clean_cfg = copy.deepcopy(DEFAULTS["clean"])
    clean_cfg["near_duplicates"]["flips"] = True  # finetune.mirror's default
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        truth = build(raw, a.seed)
        modes = [("whole pictures (crop none)", {"none": None})]
        if a.faces:
            modes.append(("faces (dlib hog photos, animeface anime)", {"dlib": "photo", "animeface": "anime"}))
        for label, methods in modes:
            outs = []
            for method, domain in methods.items():
                # controls are distinct pictures, but the faces in a photo's halves are the
                # photo's own faces (duplicates by design): whole-picture mode only
                part = {k: v for k, v in truth.items()
                        if domain is None or (("anime" in k) == (domain == "anime")
                                              and not k.startswith("controls/"))}
                crop_cfg = {**DEFAULTS["crop"], "method": method,
                            "min_face": 48 if method == "animeface" else 30}
                work = Path(tmp) / f"{label[:5]}-{method}"
                outs.append((part, crop_cfg, work))
            for name, fn, cfg in (("after", dedup, clean_cfg),) + (
                    (("before", None, None),) if a.before else ()):
                rows, seconds = [], [0.0, 0.0, 0.0]
                for part, crop_cfg, work in outs:
                    if name == "before":
                        before = old_dedup()
                        old_cfg = copy.deepcopy(DEFAULTS["clean"])
                        old_cfg["near_duplicates"].update(flips=False)
                        old_cfg["near_duplicates"].pop("sources")
                        old_cfg.pop("quality")
                        rws = [ingest.ingest_file(rel, str(raw), DEFAULTS["ingest"], None) for rel in sorted(part)]
                        with ShardDir(work / "crop_before") as o:
                            cropped = crop.crop_shard(rws, crop_cfg, {}, o, threads=2)
                            o.write_manifest(cropped)
                        cleaned = before.clean_shard(cropped, old_cfg, before.source_sizes(rws), 2)
                        out = before.dedup([r for r in cleaned if r.kept], old_cfg)
                    else:
                        out, _, c1, c2, c3 = run_stages(raw, work, part, crop_cfg, cfg, fn)
                        seconds = [seconds[0] + c1, seconds[1] + c2, seconds[2] + c3]
                    rows.extend(out)
                s = score(rows, truth, faces=label.startswith("faces"))
                s.update(mode=label, version=name, seconds=[round(x, 1) for x in seconds])
                results.append(s)
                print(s, flush=True)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"\n### repost benchmark ({now}; {machine()}, load average "
          f"{os.getloadavg()[0]:.1f}; `python bench/bench_reposts.py --seed {a.seed}"
          f"{' --faces' if a.faces else ''}{' --before' if a.before else ''}`)\n")
    print("| images | dedup | copies | escaped | distinct merged | keeper not the original | drop pointing at a dropped image | drop beyond radius |")
    print("|---|---|---|---|---|---|---|---|")
    for s in results:
        print(f"| {s['mode']} | {s['version']} | {s['copies']} | {s['escaped']} {s['escaped_by_kind'] or ''} | "
              f"{s['merged']} | {s['wrong_keeper']} | {s['pointer_to_dropped']} | {s['over_radius']} |")


if __name__ == "__main__":
    main()
