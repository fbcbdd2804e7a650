"""Cost of the finetune job's dataset fingerprint (gan.runs.dataset_fingerprint): sha256 of
every exported image's bytes, read from the export manifest.

    python bench/bench_fingerprint.py --images 2000 --resolution 512 --workdir /tmp/fp-bench

Images are real testdata pictures resized to R x R and saved as JPEG q95 (normalize's
default), each with one pixel changed so every file differs. The first pass reads from
the page cache (the files were just written); drop caches yourself for a cold figure.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from common import TESTDATA, machine
from conftest import testdata_rows
from PIL import Image

from gan.runs import dataset_fingerprint
from pipeline.imaging import load_rgb
from pipeline.manifest import Row, write_manifest


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--workdir", default="/tmp/fp-bench")
    a = p.parse_args()
    folder = Path(a.workdir)
    folder.mkdir(parents=True, exist_ok=True)
    bases = []
    for r in testdata_rows():
        if r["kind"] in ("photo", "anime"):
            im, _ = load_rgb(TESTDATA / r["file"])
            bases.append(np.asarray(im.resize((a.resolution, a.resolution), Image.LANCZOS)))
    rows = []
    for i in range(a.images):
        path = folder / f"{i:07d}.jpg"
        if not path.exists():
            px = bases[i % len(bases)].copy()
            px[0, 0, 0] = i % 256
            px[0, 1, 0] = i // 256 % 256
            Image.fromarray(px).save(path, quality=95)
        rows.append(Row(id=f"{i:07d}", source=path.name, path=str(path), width=a.resolution,
                        height=a.resolution))
    write_manifest(folder / "manifest.tsv", rows)
    total = sum(os.path.getsize(r.path) for r in rows)
    t0 = time.perf_counter()
    fp = dataset_fingerprint(folder / "manifest.tsv")
    dt = time.perf_counter() - t0
    print(f"{machine()}; load average {os.getloadavg()[0]:.1f}")
    print(f"{a.images} images ({total / 2**20:.0f} MiB, {a.resolution} px JPEG q95): "
          f"fingerprint {dt:.2f} s ({a.images / dt:.0f} images/s, {total / 2**20 / dt:.0f} MiB/s); "
          f"{fp['sha256'][:12]}")


if __name__ == "__main__":
    main()
