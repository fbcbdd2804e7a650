"""Dedup helpers for tests and bench only (the stage modules do not use them): the row
path of the dedup gather, hex hashes as words, single-linkage clusters."""
from __future__ import annotations

import math

import numpy as np

from pipeline.dedup import DedupColumns, dedup_verdicts
from pipeline.hamming import near_pairs, words_of
from pipeline.manifest import Row


def dedup(rows: list[Row], cfg: dict) -> list[Row]:
    """One row per kept clean row: keep, or drop as exact_duplicate / source_duplicate /
    near_duplicate (``pipeline.dedup.dedup_verdicts``), from rows in memory; the gather
    (``dedup_manifests``) must write the same bytes."""
    rows = [r for r in rows if r.kept]
    near = cfg["near_duplicates"]
    cols = DedupColumns(near["method"], near["hash_size"] ** 2)
    for r in rows:
        cols.add(r.id, r.parent_id, r.width, r.height, r.peek_details())
    verdict = dedup_verdicts(cols, cfg)
    # a drop's keys merge into the parsed details (sorted), as dedup_manifests writes them
    return [r.drop(verdict[k][0], details={**r.details, **verdict[k][1]}) if k in verdict else r
            for k, r in enumerate(rows)]


def hex_to_words(hexes: list[str], nbits: int) -> np.ndarray:
    """(N, ceil(nbits/64)) uint64 words of big-endian hex hashes, shorter ones zero-padded
    on the left: through the stage's one decoder (``hamming.words_of``)."""
    width = max(1, math.ceil(nbits / 64)) * 16
    return words_of(bytearray.fromhex("".join(h.rjust(width, "0") for h in hexes)), nbits)


def near_duplicate_clusters(words: np.ndarray, nbits: int, radius: int,
                            mirrored: np.ndarray | None = None) -> np.ndarray:
    """Cluster label per image: images joined by a chain of hashes within ``radius``
    (single linkage; dedup does not use it, bench/bench_dedup.py measures the search).

    ``mirrored`` (same shape as ``words``) are the hashes of the mirrored images: an image
    then also matches a mirrored copy of another.
    """
    n = len(words)
    entries = words if mirrored is None else np.concatenate([words, mirrored])
    owner = np.tile(np.arange(n), 1 if mirrored is None else 2)
    # identical hashes (re-saves, and the many exact copies of big scrapes) share one entry,
    # so the search never sees a bucket of thousands of equal values
    if entries.shape[1] == 1:  # 1-D unique is much faster than unique over rows
        distinct, value_of_entry = np.unique(entries[:, 0], return_inverse=True)
        distinct = distinct[:, None]
    else:
        distinct, value_of_entry = np.unique(entries, axis=0, return_inverse=True)
    value_of_entry = value_of_entry.reshape(-1)
    i, j, _ = near_pairs(distinct, nbits, radius)
    # graph over images [0, n) and distinct values [n, n + U)
    src = np.concatenate([owner, n + i])
    dst = np.concatenate([n + value_of_entry, n + j])
    size = n + len(distinct)
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(src), dtype=np.int8), (src, dst)), shape=(size, size))
    _, labels = connected_components(graph, directed=False)
    return labels[:n]
