"""The dedup gather on synthetic clean rows shaped like issue 13's (trims, mirror, source).

    python bench/bench_dedup_rows.py [--rows 100000]

Each row carries what the clean shard step now writes: a 64-bit pHash, its mirror hash, 24
trimmed-window hashes, and a ``source`` block (width, height, quality, whole-picture hash,
mirror, 48 trims); every 20th row is a copy of an earlier one (canonical hashes with 1-3
bits flipped, a smaller source). Runs ``python -m pipeline.dedup`` over 64 shard
manifests as the rule does and reports wall time, peak memory and manifest bytes per row.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, machine  # noqa: E402

from pipeline.manifest import Row, write_manifest  # noqa: E402


def hexes(rng, n) -> list[str]:
    return [f"{int(v):016x}" for v in rng.integers(0, np.iinfo(np.uint64).max, size=n,
                                                      dtype=np.uint64, endpoint=True)]


def rows(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        if i % 20 == 19:  # a copy of an earlier row
            base = out[i - 7]
            flip = lambda h: f"{int(h, 16) ^ (1 << int(rng.integers(64))):016x}"
            d = json.loads(json.dumps(base.details))
            d["phash"] = flip(d["phash"])
            d["source"]["phash"] = flip(d["source"]["phash"])
            d["source"]["width"] = d["source"]["width"] // 2
            d["pixel_sha256"] = f"{i:064x}"
        else:
            h = hexes(rng, 1 + 1 + 24 + 1 + 1 + 48)
            d = {"file_bytes": 20000 + i % 997, "pixel_sha256": f"{i:064x}", "phash": h[0],
                 "phash_mirror": h[1], "phash_trims": "".join(h[2:26]),
                 "sharpness": 500.0, "brightness": 120.0, "contrast": 50.0,
                 "source": {"width": 1200, "height": 900, "format": "JPEG", "quality": 90,
                            "phash": h[26], "phash_mirror": h[27], "phash_trims": "".join(h[28:76])}}
        out.append(Row(id=f"{i:016x}-f0", source=f"raw/{i}.jpg", parent_id=f"{i:016x}",
                       path=f"crop/{i % 64:02d}/{i:016x}-f0.png", width=256, height=256, details=d))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--no-trims", action="store_true", help="rows as near_duplicates.trims: false writes them")
    a = p.parse_args()
    data = rows(a.rows)
    if a.no_trims:
        for r in data:
            r.details.pop("phash_trims", None)
            r.details["source"].pop("phash_trims", None)
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())["clean"]
    cfg["near_duplicates"]["flips"] = True
    with tempfile.TemporaryDirectory() as tmp:
        manifests = []
        for s in range(64):
            path = Path(tmp) / f"{s:02d}.tsv"
            write_manifest(path, data[s::64])
            manifests.append(str(path))
        size = sum(os.path.getsize(m) for m in manifests)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pipeline.dedup", "--output", f"{tmp}/dedup.tsv",
                        "--config", json.dumps(cfg), *manifests], check=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
        wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"dedup gather, {a.rows:,} rows ({now}; {machine()}, load average {os.getloadavg()[0]:.1f}; "
          f"`python bench/bench_dedup_rows.py --rows {a.rows}{' --no-trims' if a.no_trims else ''}`): {wall:.1f} s, peak {peak:.0f} MiB, "
          f"{size / a.rows:.0f} manifest bytes per row")


if __name__ == "__main__":
    main()
