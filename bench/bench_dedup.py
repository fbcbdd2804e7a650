"""Near-duplicate search at scale: N random 64-bit hashes with planted near-duplicate pairs.

    python bench/bench_dedup.py                     # 1,000,000 hashes, radius 4
    python bench/bench_dedup.py --n 200000 --flips --rows

Reports seconds for the pair search (pipeline.hamming.near_pairs), for the clustering the
dedup gather does (search + connected components), optionally for ``dedup()`` on
manifest rows and for the whole gather CLI over 64 shard manifests (--rows) and with mirrored hashes (--flips), and the recall of the planted
pairs (every planted pair lies within the radius, so the target is 1.0).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402,F401  (pipeline/ and tests/ on the path)
from dedup_reference import dedup, near_duplicate_clusters  # noqa: E402
from pipeline.dedup import main as dedup_cli  # noqa: E402
from pipeline.hamming import choose_tables, hamming, near_pairs  # noqa: E402
from pipeline.manifest import Row, write_manifest  # noqa: E402
from util.config import defaults  # noqa: E402


def planted_hashes(n: int, pairs: int, radius: int, seed: int):
    """Random (n, 1) uint64 hashes; rows [n - pairs, n) are copies of rows [0, pairs) with
    1..radius random bits flipped (each distance equally often)."""
    rng = np.random.default_rng(seed)
    words = rng.integers(0, np.iinfo(np.uint64).max, size=(n, 1), dtype=np.uint64, endpoint=True)
    originals = np.arange(pairs)
    copies = np.arange(n - pairs, n)
    distances = 1 + np.arange(pairs) % radius
    flipped = words[originals, 0].copy()
    for k, dist in enumerate(distances):
        for bit in rng.choice(64, size=dist, replace=False):
            flipped[k] ^= np.uint64(1) << np.uint64(bit)
    words[copies, 0] = flipped
    return words, originals, copies


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--pairs", type=int, default=10_000, help="planted near-duplicate pairs")
    p.add_argument("--radius", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--flips", action="store_true", help="also cluster with mirrored hashes")
    p.add_argument("--rows", action="store_true", help="also time dedup() on manifest rows")
    a = p.parse_args(argv)

    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, python {platform.python_version()},"
          f" numpy {np.__version__}")
    words, originals, copies = planted_hashes(a.n, a.pairs, a.radius, a.seed)
    assert (hamming(words[originals], words[copies]) <= a.radius).all()
    print(f"{a.n:,} hashes, {a.pairs:,} planted pairs at distance 1..{a.radius}, "
          "%d blocks, %d tables" % (lambda m, keys: (m, len(keys)))(*choose_tables(a.n, a.n, 64, a.radius)))

    (i, j, d), seconds = timed(near_pairs, words, 64, a.radius)
    found = set(zip(i.tolist(), j.tolist()))
    recall = np.mean([(int(o), int(c)) in found for o, c in zip(originals, copies)])
    print(f"near_pairs: {seconds:.2f} s, {len(i):,} pairs within {a.radius}, "
          f"recall {recall:.4f} ({len(i) - a.pairs} beyond the planted ones)")

    labels, seconds = timed(near_duplicate_clusters, words, 64, a.radius)
    cluster_recall = np.mean(labels[originals] == labels[copies])
    print(f"near_duplicate_clusters: {seconds:.2f} s, cluster recall {cluster_recall:.4f}")

    if a.flips:
        mirrored = np.random.default_rng(a.seed + 1).integers(
            0, np.iinfo(np.uint64).max, size=words.shape, dtype=np.uint64, endpoint=True)
        labels, seconds = timed(near_duplicate_clusters, words, 64, a.radius, mirrored)
        print(f"near_duplicate_clusters with mirrored hashes ({2 * a.n:,} entries): "
              f"{seconds:.2f} s, cluster recall {np.mean(labels[originals] == labels[copies]):.4f}")

    if a.rows:
        rows = [Row(id=f"{k:016x}", source=f"{k}.png", path=f"{k}.png", width=512, height=512,
                    details={"bytes": 1000, "pixel_sha256": f"{k:064x}", "phash": f"{w:016x}"})
                for k, w in enumerate(words[:, 0].tolist())]
        cfg = defaults("clean")
        cfg["near_duplicates"].update(method="phash", hash_size=8, radius=a.radius, flips=False)
        out, seconds = timed(dedup, rows, cfg)
        dropped = sum(r.reason == "near_duplicate" for r in out)
        print(f"dedup() on {len(rows):,} rows: {seconds:.2f} s, {dropped:,} near duplicates dropped")
        # the whole gather as the rule runs it: read 64 shard manifests, dedup, write dedup.tsv
        with tempfile.TemporaryDirectory() as tmp:
            manifests = [f"{tmp}/{s:02d}.tsv" for s in range(64)]
            for s, path in enumerate(manifests):
                write_manifest(path, rows[s::64])
            _, seconds = timed(dedup_cli, ["--output", f"{tmp}/dedup.tsv",
                                           "--config", json.dumps(cfg), *manifests])
            print(f"python -m pipeline.dedup over 64 manifests: {seconds:.2f} s")


if __name__ == "__main__":
    main()
