"""Cost of the animeface small-face pass (``small_faces`` on no_face rows).

    python bench/bench_small_faces.py [--repeat 3] [--scale 2]

Detection time over the testdata images (each also upscaled by --scale, to the size of
typical scraped pictures) at the default min_face 250, with the small-face pass (faces of
min_face/2 up to min_face, pyramid step 1.2, run only when no face of min_face is found)
and without it (SMALL_FLOOR = 1), and how many no_face images get small_faces.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, TESTDATA, machine  # noqa: E402
import conftest  # noqa: E402,F401  (points FACEPREP_ANIMEFACE_CASCADE at ../shared/models)

from pipeline import crop  # noqa: E402
from pipeline.imaging import load_rgb  # noqa: E402

DEFAULTS = yaml.safe_load((REPO / "config.yaml").read_text())["crop"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--scale", type=float, default=2.0)
    a = p.parse_args()
    images = []
    for row in conftest.testdata_rows():
        if row["file"] == "broken/huge_6000x4000.png":
            continue
        try:
            im = load_rgb(TESTDATA / row["file"])[0]
        except Exception:
            continue
        images.append(np.asarray(im))
        images.append(np.asarray(im.resize((round(im.width * a.scale), round(im.height * a.scale)),
                                           Image.Resampling.BILINEAR)))
    detector = crop.make_detector({**DEFAULTS, "method": "animeface"}, {})
    results = {}
    for label, floor in (("without small-face pass", 1.0), ("with small-face pass (default)", 0.5)):
        crop.AnimeFaceDetector.SMALL_FLOOR = floor
        start = time.perf_counter()
        for _ in range(a.repeat):
            found = [detector.detect(px) for px in images]
        seconds = (time.perf_counter() - start) / a.repeat
        small = sum(1 for faces in found if faces and all(min(f.box[2:]) < DEFAULTS["min_face"] for f in faces))
        results[label] = (seconds, small)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"### small-face pass cost ({now}; {machine()}, load average {os.getloadavg()[0]:.1f}; "
          f"`python bench/bench_small_faces.py --repeat {a.repeat} --scale {a.scale}`)\n")
    print(f"| animeface, min_face {DEFAULTS['min_face']}, {len(images)} images | seconds | "
          "images with small_faces |")
    print("|---|---|---|")
    for label, (seconds, small) in results.items():
        print(f"| {label} | {seconds:.2f} | {small} |")


if __name__ == "__main__":
    main()
