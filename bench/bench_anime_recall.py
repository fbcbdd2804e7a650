"""Anime face detection precision/recall: testdata and a labelled set built from it.

    python bench/bench_anime_recall.py [--seed 0] [--n 120]

Testdata: faces found per image vs MANIFEST.tsv's expected_faces (the anime domain of
tests/test_crop.py, min_face 48). Labelled set: the three distinct anime pictures, their
face boxes known (found at min_face 48 and checked by eye), transformed the way a scrape
varies them: scaled 0.6-2.0, rotated -25..25 degrees, mirrored or not, pasted at a random
place on a photo background (the city, the dogs, a VOC photo) and saved as JPEG q70-95;
the box is transformed with the picture. Negatives: every testdata picture without an
anime face (photos of people and dogs, the city, screentone) as they are and at 2x.
A found box matches a true one at IoU >= 0.4 (a rotated face's upright box is looser).
Compared: the cascade as before (one pass) and with ``crop.rotate_pass`` (the default).
"""
from __future__ import annotations

import argparse
import copy
import datetime
import io
import os
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, TESTDATA, machine  # noqa: E402
from conftest import testdata_rows  # noqa: E402

import crop_evaluation  # noqa: E402  (tests/: detector evaluation)
from pipeline import crop  # noqa: E402
from pipeline.imaging import load_rgb  # noqa: E402

DEFAULTS = yaml.safe_load((REPO / "config.yaml").read_text())["crop"]
ANGLE = 25  # tilts up to this many degrees either way
ANIME = ["anime_miku_CC_BY-NC.jpg", "anime_miku_noisy.jpg", "anime_miku_small.png"]
BACKGROUNDS = ["noface_city.jpg", "photo_dogs.jpg", "photo_2008_004176.jpg"]


def truth_boxes() -> dict[str, tuple]:
    detector = crop.make_detector({**DEFAULTS, "method": "animeface", "min_face": 48,
                                   "rotate_pass": False}, {})
    out = {}
    for name in ANIME:
        (face,) = detector.detect(np.asarray(load_rgb(TESTDATA / name)[0]))
        out[name] = face.box
    return out


def labelled_set(n: int, seed: int):
    """[(rgb array, [true boxes])]: transformed anime pictures on photo backgrounds."""
    rng = np.random.default_rng(seed)
    boxes = truth_boxes()
    pictures = {name: load_rgb(TESTDATA / name)[0] for name in ANIME}
    backgrounds = [load_rgb(TESTDATA / name)[0] for name in BACKGROUNDS]
    out = []
    for k in range(n):
        name = ANIME[k % len(ANIME)]
        im = pictures[name]
        x, y, w, h = boxes[name]
        scale = float(rng.uniform(0.6, 2.0))
        angle = float(rng.uniform(-ANGLE, ANGLE))
        mirror = bool(rng.random() < 0.5)
        if mirror:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            x = im.width - x - w
        im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.LANCZOS)
        cx, cy, side = (x + w / 2) * scale, (y + h / 2) * scale, w * scale
        rotated = im.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=(0, 0, 0))
        mask = Image.new("L", im.size, 255).rotate(angle, expand=True)
        # the face centre in the rotated picture (PIL rotates counter-clockwise about the centre)
        t = np.deg2rad(angle)
        dx, dy = cx - im.width / 2, cy - im.height / 2
        rx = dx * np.cos(t) + dy * np.sin(t) + rotated.width / 2
        ry = -dx * np.sin(t) + dy * np.cos(t) + rotated.height / 2
        bg = backgrounds[k % len(backgrounds)]
        factor = max(rotated.width / bg.width, rotated.height / bg.height, 1.0) * float(rng.uniform(1.1, 1.6))
        canvas = bg.resize((round(bg.width * factor), round(bg.height * factor)), Image.Resampling.BICUBIC)
        ox = int(rng.integers(0, canvas.width - rotated.width + 1))
        oy = int(rng.integers(0, canvas.height - rotated.height + 1))
        canvas.paste(rotated, (ox, oy), mask)
        buf = io.BytesIO()
        canvas.save(buf, "JPEG", quality=int(rng.integers(70, 96)))
        buf.seek(0)
        pixels = np.asarray(Image.open(buf).convert("RGB"))
        out.append((pixels, [(ox + rx - side / 2, oy + ry - side / 2, side, side)]))
    return out


def negatives():
    names = [r["file"] for r in testdata_rows()
             if r["kind"] in ("photo", "noface") and r["file"] != "broken/huge_6000x4000.png"]
    out = []
    for name in names:
        im = load_rgb(TESTDATA / name)[0]
        out.append((np.asarray(im), []))
        out.append((np.asarray(im.resize((im.width * 2, im.height * 2), Image.Resampling.LANCZOS)), []))
    return out


def evaluate(images, cfg) -> dict:
    detector = crop.make_detector(cfg, {})
    tp = fp = fn = 0
    start = time.perf_counter()
    for pixels, truth in images:
        found = [f.box for f in detector.detect(pixels) if min(f.box[2:]) >= cfg["min_face"]]
        t, f, n = crop_evaluation.match_boxes(found, truth, 0.4)
        tp, fp, fn = tp + t, fp + f, fn + n
    return {"tp": tp, "fp": fp, "fn": fn, "precision": tp / max(tp + fp, 1),
            "recall": tp / max(tp + fn, 1), "seconds": time.perf_counter() - start}


def testdata_counts(cfg) -> dict:
    rows = {r["file"]: r for r in testdata_rows()}
    detector = crop.make_detector(cfg, {})
    pairs = []
    for name, r in rows.items():
        if r["kind"] == "photo" or "photo_" in r["notes"] or r["expected_faces"] == "?":
            continue
        try:
            pixels = np.asarray(load_rgb(TESTDATA / name)[0])
        except Exception:
            continue  # the broken files ingest drops
        found = [f for f in detector.detect(pixels) if min(f.box[2:]) >= cfg["min_face"]]
        pairs.append((len(found), int(r["expected_faces"])))
    return crop_evaluation.count_metrics(pairs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=120)
    a = p.parse_args()
    positives = labelled_set(a.n, a.seed)
    negs = negatives()
    lines = []
    for label, changes in (("one pass (before)", {"rotate_pass": False}),
                           ("rotate pass +-15 deg (default)", {"rotate_pass": True})):
        cfg = copy.deepcopy({**DEFAULTS, "method": "animeface", "min_face": 40, **changes})
        pos = evaluate(positives, cfg)
        neg = evaluate(negs, cfg)
        td = testdata_counts({**cfg, "min_face": 48})
        fp = pos["fp"] + neg["fp"]
        precision = pos["tp"] / max(pos["tp"] + fp, 1)
        lines.append(f"| {label} | {td['precision']:.3f} / {td['recall']:.3f} ({td['tp']} of "
                     f"{td['tp'] + td['fn']}, {td['fp']} false) | {precision:.3f} / {pos['recall']:.3f} "
                     f"({pos['tp']} of {pos['tp'] + pos['fn']}, {pos['fp']} + {neg['fp']} false) | "
                     f"{pos['seconds'] + neg['seconds']:.1f} |")
        print(lines[-1], flush=True)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"\n### anime face recall ({now}; {machine()}, load average {os.getloadavg()[0]:.1f}; "
          f"`python bench/bench_anime_recall.py --seed {a.seed} --n {a.n}`)\n")
    print(f"| cascade | testdata P / R (min_face 48) | labelled set P / R ({a.n} faces, "
          f"{len(negs)} negatives, min_face 40) | seconds (labelled set) |")
    print("|---|---|---|---|")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
