"""The floor of the dedup gather's windowed search (issue 24 item 4): what it must touch.

    python bench/bench_search_floor.py /tmp/faceprep-gathers/1000000-trims-on

Reads the clean shards `bench_gathers.py --keep` left (hashes files) and, for each of the
two searches (source pictures, face crops; default config: trims, flips, radius 4):
  - query-table lookups: queries (whole + windows) x tables (multi-index hashing,
    pipeline/hamming.py), and candidates: index entries sharing a query's key in a table
    (exact: the per-table dot product of the query and index key histograms);
  - the least numpy work per lookup (its key from the first table's blocks, one gather from the
    byte-per-bucket table, the flatnonzero of its hits) and per candidate (gather of its words, xor, popcount,
    compare), timed on random data of the same sizes;
  - floor = lookups x per-lookup + candidates x per-candidate, against the search's own
    CPU seconds (``hamming.duplicate_pairs``).
CPU seconds from getrusage (the machine is shared: wall time is not a fair figure).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from common import REPO, machine

sys.path.insert(0, str(REPO))
from pipeline import dedup, hamming  # noqa: E402


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def counts(queries: list, index: np.ndarray, nbits: int, radius: int) -> tuple[int, tuple, int, int]:
    """(blocks, tables' key blocks, query-table lookups, candidates) of ``pairs_between``
    on these hashes."""
    n_q = sum(len(p) for p in queries)
    blocks, tables = hamming.choose_tables(n_q, len(index), nbits, radius)
    bounds = hamming._block_bounds(nbits, blocks)
    candidates = 0
    for subset in tables:
        bits = sum(bounds[b][1] for b in subset)
        i_hist = np.bincount(hamming._one_word_key(index.view(np.int64).reshape(-1), bounds, subset),
                             minlength=1 << bits)
        q_hist = np.zeros(1 << bits, np.int64)
        for part in queries:
            for c in range(0, len(part), 1 << 20):
                words = part[c:c + (1 << 20)]
                q_hist += np.bincount(hamming._one_word_key(words.view(np.int64).reshape(-1), bounds, subset),
                                      minlength=1 << bits)
        candidates += int(q_hist @ i_hist)
    return blocks, tables, n_q * len(tables), candidates


def unit_costs(n_index: int, nbits: int, blocks: int, key: tuple, reps: int = 20) -> tuple[float, float]:
    """CPU seconds per lookup (key ``key`` of ``blocks`` blocks) and per candidate of the
    least numpy work, 1M at a time."""
    bounds = hamming._block_bounds(nbits, blocks)
    key_bits = sum(bounds[b][1] for b in key)
    rng = np.random.default_rng(0)
    occupied = (rng.random(1 << key_bits) < n_index / 2**key_bits).view(np.uint8)
    words = rng.integers(0, 2**63, n_index).astype(np.uint64)
    keys = rng.integers(0, 1 << key_bits, 1 << 20)
    pos = rng.integers(0, n_index, 1 << 20)
    queries = rng.integers(0, 2**63, 1 << 20).astype(np.uint64)
    out, tmp = np.empty(1 << 20, np.int64), np.empty(1 << 20, np.int64)
    t = cpu()
    for _ in range(reps):  # the key (a shift and a mask a block, an or between), its bucket
        hamming._one_word_key(queries.view(np.int64), bounds, key, out, tmp)
        np.flatnonzero(occupied[keys])
    lookup = (cpu() - t) / reps / (1 << 20)
    t = cpu()
    for _ in range(reps):
        np.flatnonzero(np.bitwise_count(queries ^ words.take(pos)) <= 4)
    candidate = (cpu() - t) / reps / (1 << 20)
    return lookup, candidate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("folder", type=Path)
    a = ap.parse_args()
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {machine()}; load average "
          f"{os.getloadavg()[0]:.1f}; `python bench/bench_search_floor.py {a.folder}`")
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())["clean"]
    near = cfg["near_duplicates"]
    nbits, radius = near["hash_size"] ** 2, near["radius"]
    cols = dedup.read_dedup_columns(sorted(map(str, a.folder.glob("clean/*/manifest.tsv"))), near)
    out = {}
    for name, store, n in (("sources", cols.blocks, len(cols.block_size) // 2), ("faces", cols.faces, len(cols))):
        sets = store.sets(np.arange(n))
        whole, mirror, trims = sets[""], sets["_mirror"], sets["_trims"]
        index = np.concatenate([whole.words, mirror.words])
        queries = [whole.words, *trims.words]
        blocks, tables, lookups, candidates = counts(queries, index, nbits, radius)
        lookup, candidate = unit_costs(len(index), nbits, blocks, tables[0])
        t = cpu()
        pairs = len(hamming.duplicate_pairs(sets, nbits, radius, True)[0])
        search = cpu() - t
        out[name] = {"queries": sum(len(p) for p in queries), "index": len(index),
                     "blocks": blocks, "tables": len(tables),
                     "lookups": lookups, "candidates": candidates, "pairs": pairs,
                     "ns_per_lookup": round(lookup * 1e9, 2), "ns_per_candidate": round(candidate * 1e9, 2),
                     "floor_cpu_s": round(lookups * lookup + candidates * candidate, 2),
                     "search_cpu_s": round(search, 2)}
        print(f"  {name:8s} {out[name]}", flush=True)
        store.release()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
