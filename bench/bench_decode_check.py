"""Cost of ingest's decode check: the version before issue 16 (Pillow load only) against
the current one (load_rgb + libjpeg warnings via OpenCV + PNG chunk CRCs), over the
testdata images. Also counts what each catches in a seeded set of mutated files.
``--scaled``: whether the libjpeg damage check could decode at 1/8 scale (issue 24 item 3):
the first damage line at both scales over the testdata JPEGs and mutated copies, and the
process time of the check's parts.

    .venv/bin/python bench/bench_decode_check.py [--repeat 3] [--mutants 200] [--scaled]
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from common import module_at  # noqa: E402
from conftest import TESTDATA, testdata_rows  # noqa: E402
from pipeline.imaging import decode_check  # noqa: E402
from test_hostile import mutate  # noqa: E402

BEFORE = "cf05257"  # the commit before issue 16


def old_decode_check():
    return module_at(BEFORE, "pipeline/imaging.py", "imaging_before").decode_check


def damage_at_eighth(data: bytes) -> str:
    """``imaging.jpeg_damage`` decoding at 1/8 scale (the one thing changed)."""
    import cv2
    import numpy as np
    from pipeline.imaging import _JPEG_DAMAGE, _fd2_captured
    with _fd2_captured() as err:
        cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_REDUCED_COLOR_8 | cv2.IMREAD_IGNORE_ORIENTATION)
    return next((line.strip() for line in err[0].splitlines() if line.startswith(_JPEG_DAMAGE)), "")


def scaled(repeat: int, mutants: int) -> None:
    import io
    from pipeline.imaging import jpeg_damage, load_rgb
    jpegs = [TESTDATA / r["file"] for r in testdata_rows()
             if Path(r["file"]).suffix.lower() == ".jpg" and (TESTDATA / r["file"]).stat().st_size]
    originals = [f.read_bytes() for f in jpegs]
    rng = random.Random(24)
    datas = originals + [mutate(originals[i % len(originals)], rng)[1] for i in range(mutants)]
    full = [jpeg_damage(d) for d in datas]
    differ = [i for i, d in enumerate(datas) if full[i] != damage_at_eighth(d)]
    damaged = sum(map(bool, full))
    print(f"first damage line, full vs 1/8 scale: {len(datas) - len(differ)} of {len(datas)} the same "
          f"({len(originals)} testdata JPEGs + {mutants} mutants; {damaged} with damage)")

    def cpu(fn) -> float:
        t = time.process_time()
        for _ in range(repeat):
            for f, d in zip(jpegs, originals):
                fn(f, d)
        return (time.process_time() - t) / repeat

    def pillow(f, d):
        try:
            load_rgb(io.BytesIO(d))
        except OSError:  # the truncated testdata file: the check records it
            pass
    parts = {"decode_check": lambda f, d: decode_check(f, 40_000_000),
             "  its Pillow load_rgb": pillow,
             "  its OpenCV damage check, full scale": lambda f, d: jpeg_damage(d),
             "  the same at 1/8 scale": lambda f, d: damage_at_eighth(d)}
    for name, fn in parts.items():
        print(f"{name}: {cpu(fn):.4f} CPU-s for the {len(jpegs)} testdata JPEGs")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--mutants", type=int, default=200)
    p.add_argument("--scaled", action="store_true", help="only the 1/8-scale damage check comparison")
    a = p.parse_args()
    if a.scaled:
        return scaled(a.repeat, a.mutants)
    files = [TESTDATA / r["file"] for r in testdata_rows()]
    old = old_decode_check()
    for name, fn in (("before", old), ("now", decode_check)):
        t = time.perf_counter()
        for _ in range(a.repeat):
            for f in files:
                fn(f, 40_000_000)
        dt = (time.perf_counter() - t) / (a.repeat * len(files))
        print(f"{name}: {dt * 1000:.1f} ms per file ({len(files)} testdata files x {a.repeat})")
    images = [TESTDATA / r["file"] for r in testdata_rows()
              if r["file"] != "broken/huge_6000x4000.png" and (TESTDATA / r["file"]).stat().st_size
              and Path(r["file"]).suffix.lower() in (".jpg", ".png", ".gif", ".tif")]
    rng = random.Random(16)
    tmp = Path(tempfile.mkdtemp())
    caught = {"before": Counter(), "now": Counter()}
    for i in range(a.mutants):
        src = images[i % len(images)]
        kind, data = mutate(src.read_bytes(), rng)
        f = tmp / f"{i}{src.suffix}"
        f.write_bytes(data)
        for name, fn in (("before", old), ("now", decode_check)):
            reason, _ = fn(f, 40_000_000)
            caught[name][(kind, "dropped" if reason else "kept")] += 1
    for name, c in caught.items():
        print(f"{name}: " + ", ".join(f"{k[0]} {k[1]} {v}" for k, v in sorted(c.items())))


if __name__ == "__main__":
    main()
