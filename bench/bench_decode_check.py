"""Cost of ingest's decode check: the version before issue 16 (Pillow load only) against
the current one (load_rgb + libjpeg warnings via OpenCV + PNG chunk CRCs), over the
testdata images. Also counts what each catches in a seeded set of mutated files.

    .venv/bin/python bench/bench_decode_check.py [--repeat 3] [--mutants 200]
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


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--mutants", type=int, default=200)
    a = p.parse_args()
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
