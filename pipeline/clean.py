"""clean: per-image filters and hashes (per shard), then exact and near duplicates (gather).

    python -m pipeline.clean shard --input crop/<s>/manifest.tsv --output clean/<s>/manifest.tsv \
        --sources ingest/<s>/manifest.tsv --config JSON [--threads N]
    python -m pipeline.clean dedup --output clean/dedup.tsv --config JSON clean/*/manifest.tsv

``shard`` decides per image and never rewrites pixels: kept rows keep the upstream
``path`` and carry their hashes (of the face, its mirror image and trimmed windows, and of
the whole source picture under ``details.source``), quality and colour measures in
``details``; dropped rows say why (``file_too_small``, ``too_small``, ``too_dark``,
``too_bright``, ``low_information``, ``blurry``, ``monochrome``, ``decode_error``) with the
measured value. Because the per-image work is cached in the shard manifests, adding
images re-hashes only the shards they land in.

``dedup`` gathers every shard's kept rows and writes one row per image: exact duplicates
(same decoded pixels), source duplicates (faces at the same place of two source pictures
that match as a whole) and near duplicates (face crops within a Hamming radius) are
dropped with ``details.duplicate_of`` naming the kept image and ``details.distance``. The
keeper is the best source (resolution, then encoding quality, then crop size, file size,
id), and there is no chaining: every drop is within the radius of its own keeper
(``assign_keepers``).

The near-duplicate search is multi-index hashing (Norouzi et al.; Manku et al.'s
permuted tables): split the hash into m blocks; two hashes within radius r differ in at
most r blocks, so they agree exactly on some m - r of them. Bucketing by every
(m - r)-subset of blocks and popcount-verifying the pairs that share a bucket finds every
pair within r without comparing all N^2 pairs (1M hashes in seconds, see
bench/bench_dedup.py).
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import re
import sys
from array import array
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable

import imagehash
import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from pipeline.imaging import load_rgb, pixel_digest
from pipeline.manifest import (ENCODING, ERRORS, HEADER_BYTES, Row, atomic_write_with, line_row,
                               load_config_arg, manifest_lines_of, read_manifest, row_line,
                               write_manifest)

# Colour measures and perceptual hashes are computed on a copy no larger than this:
# it averages away JPEG chroma noise and makes the cost per image independent of size.
MEASURE_SIDE = 256
# Luminance bins for the chroma measure (16 levels of 16): a sepia tint may change
# with brightness, but slowly.
LUMA_BINS = 16

HASHERS = {"phash": imagehash.phash, "dhash": imagehash.dhash, "whash": imagehash.whash}


# ---------------------------------------------------------------- per-image measures

def colorful_fraction(im: Image.Image, chroma_threshold: float) -> float:
    """Fraction of pixels whose colour departs from the picture's own tint at their brightness.

    A monochrome picture's colour is a function of its luminance: none for gray, a tint
    that follows brightness for sepia or cyanotype. So per luminance bin we subtract the
    mean (Cb, Cr) and count pixels further than ``chroma_threshold`` (0-255 scale) from
    it. JPEG chroma noise on a gray picture stays below the threshold; a colour picture
    has different hues at the same brightness.
    """
    ycc = np.asarray(im.convert("YCbCr"), dtype=np.float32).reshape(-1, 3)
    if len(ycc) == 0:
        return 0.0
    luma_bin = np.minimum((ycc[:, 0] * (LUMA_BINS / 256.0)).astype(np.intp), LUMA_BINS - 1)
    count = np.maximum(np.bincount(luma_bin, minlength=LUMA_BINS), 1)
    mean_cb = np.bincount(luma_bin, ycc[:, 1], LUMA_BINS) / count
    mean_cr = np.bincount(luma_bin, ycc[:, 2], LUMA_BINS) / count
    departure = np.hypot(ycc[:, 1] - mean_cb[luma_bin], ycc[:, 2] - mean_cr[luma_bin])
    return float(np.mean(departure > chroma_threshold))


def unique_colors(im: Image.Image) -> int:
    """Number of distinct RGB colours, as ImageMagick's ``identify -format %k`` counts them."""
    return len(im.getcolors(maxcolors=im.width * im.height))


def judge_monochrome(im: Image.Image, small: Image.Image, cfg: dict) -> tuple[bool, dict]:
    """(is monochrome, measured values). ``both`` flags an image either test flags."""
    method = cfg["method"]
    measures: dict = {}
    flagged = []
    if method in ("colors", "both"):
        # the seed's test: a gray or palette picture has at most 256 colours
        measures["unique_colors"] = unique_colors(im)
        if measures["unique_colors"] <= cfg["max_colors"]:
            flagged.append("colors")
    if method in ("chroma", "both"):
        measures["colorful_fraction"] = round(colorful_fraction(small, cfg["chroma_threshold"]), 5)
        if measures["colorful_fraction"] < cfg["min_colorful_fraction"]:
            flagged.append("chroma")
    if flagged:
        measures["monochrome_by"] = flagged
    return bool(flagged), measures


# Trimmed copies hashed per image, so a copy cut a few percent differently (a repost
# cropped on one side, a detector box a few pixels off) still lands within the radius of
# one of them: per axis, nothing or one side trimmed by each step (7 x 7 = 49 windows
# for sources, 5 x 5 = 25 for face crops). Measured on testdata: shifted reposts <= 4
# bits from a trim, distinct pictures >= 12 (bench/RESULTS.md).
SOURCE_TRIMS = (0.03, 0.06, 0.09)
CROP_TRIMS = (0.04, 0.08)


def trim_windows(size: tuple[int, int], steps) -> list[tuple[int, int, int, int]]:
    """Boxes of ``size`` with, per axis, no side or one side trimmed by each step;
    the untrimmed box first."""
    width, height = size
    cuts = [(0.0, 0.0)] + [c for t in steps for c in ((t, 0.0), (0.0, t))]
    return [(round(width * l), round(height * t), width - round(width * r), height - round(height * b))
            for t, b in cuts for l, r in cuts]


def flips_on(near: dict) -> bool:
    """near_duplicates.flips; ``auto`` (follow finetune.mirror) is resolved by the rule,
    and means on when the stage is called directly (training mirrors by default)."""
    return near["flips"] in (True, "auto")


def perceptual_hashes(small: Image.Image, cfg: dict, trims=()) -> dict:
    """Hex perceptual hash, of the mirrored image when ``flips``, and of trimmed windows
    (concatenated, ``<method>_trims``) when ``trims`` are given; keyed by method."""
    method = cfg["method"]
    if method == "none":
        return {}
    hasher = HASHERS[method]
    size = cfg["hash_size"]
    small = small.convert("L")  # every hasher starts with this; once, not per window
    out = {method: str(hasher(small, hash_size=size))}
    if flips_on(cfg):
        out[f"{method}_mirror"] = str(hasher(ImageOps.mirror(small), hash_size=size))
    if trims:
        out[f"{method}_trims"] = "".join(str(hasher(small.crop(box), hash_size=size))
                                         for box in trim_windows(small.size, trims)[1:])
    return out


LOSSLESS = {"PNG", "BMP", "PPM", "TIFF", "TGA", "QOI"}


def jpeg_quality(im: Image.Image) -> int | None:
    """The IJG quality (1-100) a JPEG was saved at, from its luminance quantization table
    (the libjpeg scaling inverted on the table's sum); None if not a JPEG."""
    tables = getattr(im, "quantization", None)
    if im.format != "JPEG" or not tables:
        return None
    standard = sum(_IJG_LUMA)
    scale = 100.0 * sum(tables[0]) / standard  # libjpeg: q = std * S / 100, S = 200 - 2Q or 5000/Q
    quality = (200.0 - scale) / 2.0 if scale <= 100.0 else 5000.0 / scale
    return int(min(max(round(quality), 1), 100))


_IJG_LUMA = (16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57,
             69, 56, 14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55,
             64, 81, 104, 113, 92, 49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100,
             103, 99)


def source_measures(path: str, cfg: dict) -> dict:
    """What dedup needs about a whole source image: upright size, encoding quality (JPEG:
    estimated IJG quality; lossless formats 100; else unknown) and its hashes (with trims)."""
    with Image.open(path) as raw:
        fmt = raw.format
        quality = jpeg_quality(raw) if fmt == "JPEG" else (100 if fmt in LOSSLESS else None)
    im, _notes = load_rgb(path)
    small = im.copy()
    small.thumbnail((MEASURE_SIDE, MEASURE_SIDE))
    out = {"width": im.width, "height": im.height, "format": fmt, "quality": quality}
    near = cfg["near_duplicates"]
    out.update(perceptual_hashes(small, near, SOURCE_TRIMS if near.get("trims", True) else ()))
    return out


def quality_measures(small: Image.Image) -> dict:
    """Face quality measures on the (<= 256 px) measuring copy: ``sharpness`` (variance
    of the Laplacian of the luma), ``brightness`` (mean luma, 0-255), ``contrast``
    (luma standard deviation; near 0 = a flat, low-information crop)."""
    import cv2  # its 3x3 Laplacian and reflected border equal scipy.ndimage.laplace's,
    # without importing scipy.ndimage (0.4 s per process)
    luma = np.asarray(small.convert("L"), dtype=np.float32)
    edges = cv2.Laplacian(luma, cv2.CV_32F, ksize=1, borderType=cv2.BORDER_REFLECT)
    return {"sharpness": round(float(edges.var()), 2),
            "brightness": round(float(luma.mean()), 2),
            "contrast": round(float(luma.std()), 2)}


def judge_quality(measures: dict, cfg: dict) -> str:
    """The drop reason for a face failing a quality floor ("" if it passes); a threshold
    of null switches its filter off."""
    # in this order: a dark face also has little contrast, and a flat one no edges
    checks = (("too_dark", "brightness", "min_brightness", lambda v, t: v < t),
              ("too_bright", "brightness", "max_brightness", lambda v, t: v > t),
              ("low_information", "contrast", "min_contrast", lambda v, t: v < t),
              ("blurry", "sharpness", "min_sharpness", lambda v, t: v < t))
    for reason, measure, key, fails in checks:
        threshold = cfg.get(key)
        if threshold is not None and fails(measures[measure], threshold):
            return reason
    return ""


def source_sizes(ingest_rows: list[Row]) -> dict[str, int]:
    """Source file size by source id, from the ingest manifest (crop rows may not carry it)."""
    return {r.id: r.details["bytes"] for r in ingest_rows if "bytes" in r.details}


def clean_row(row: Row, cfg: dict, sizes: dict[str, int] | None = None,
              sources: dict[str, dict] | None = None) -> Row:
    """Keep (with hashes and measures in details) or drop (with a reason) one image.

    ``sizes``: source file bytes by source id (``source_sizes``); a face row's source id
    is its ``parent_id``. ``sources``: ``source_measures`` by source id, recorded on the
    row as ``details.source`` for source-level dedup.
    """
    source_bytes = row.details.get("bytes")
    if source_bytes is None and sizes is not None:
        source_bytes = sizes.get(row.parent_id or row.id)
    if cfg["min_file_bytes"] and source_bytes is not None and source_bytes < cfg["min_file_bytes"]:
        return row.drop("file_too_small", details={"file_bytes": source_bytes,
                                                   "min_file_bytes": cfg["min_file_bytes"]})
    # upstream sizes are exact (EXIF rotation does not change the short side): no decode needed
    if row.width and row.height and min(row.width, row.height) < cfg["min_side"]:
        return row.drop("too_small", details={"side": min(row.width, row.height),
                                              "min_side": cfg["min_side"]})
    try:
        im, _notes = load_rgb(row.path)
    except Exception as e:  # one unreadable crop must not fail a shard of thousands
        return row.drop("decode_error", details={"error": f"{type(e).__name__}: {e}"})
    size = {"width": im.width, "height": im.height}
    if min(im.size) < cfg["min_side"]:
        return row.drop("too_small", **size, details={"side": min(im.size),
                                                      "min_side": cfg["min_side"]})
    small = im.copy()
    small.thumbnail((MEASURE_SIDE, MEASURE_SIDE))
    details: dict = {"file_bytes": source_bytes}  # dedup prefers the larger source file
    if source_bytes is None and cfg["min_file_bytes"]:
        details["file_bytes_unknown"] = True  # no ingest size upstream: floor not applied
    # quality first: a face darkened to near black is too_dark before it is monochrome
    details.update(quality_measures(small))
    reason = judge_quality(details, cfg.get("quality") or {})
    if reason:
        return row.drop(reason, **size, details=details)
    if cfg["monochrome"]["method"] != "none":
        monochrome, measures = judge_monochrome(im, small, cfg["monochrome"])
        details.update(measures)
        if monochrome:
            return row.drop("monochrome", **size, details=details)
    details["pixel_sha256"] = pixel_digest(im)
    near = cfg["near_duplicates"]
    details.update(perceptual_hashes(small, near, CROP_TRIMS if near.get("trims", True) else ()))
    source = (sources or {}).get(row.parent_id or row.id)
    if source:
        details["source"] = source
    return row.keep(**size, details=details)


def shard_sources(rows: list[Row], ingest_rows: list[Row], cfg: dict, threads: int = 1) -> dict[str, dict]:
    """``source_measures`` of every source a kept row of ``rows`` was cut from, by source id
    (each decoded once per shard); empty when source-level dedup is off. A source that
    cannot be read any more is left out (its faces are deduplicated by their crops)."""
    near = cfg["near_duplicates"]
    if near["method"] == "none" or not near.get("sources", True):
        return {}
    wanted = {r.parent_id or r.id for r in rows if r.kept}
    paths = {r.id: r.path for r in ingest_rows if r.kept and r.id in wanted}

    def measure(item):
        try:
            return item[0], source_measures(item[1], cfg)
        except Exception:  # changed since ingest: no source-level hashes for it
            return item[0], None
    with ThreadPoolExecutor(max(threads, 1)) as pool:
        return {k: v for k, v in pool.map(measure, sorted(paths.items())) if v}


def clean_shard(rows: list[Row], cfg: dict, sizes: dict[str, int] | None = None,
                threads: int = 1, sources: dict[str, dict] | None = None) -> list[Row]:
    """One row per upstream kept row, in order."""
    todo = [r for r in rows if r.kept]
    progress = dict(total=len(todo), desc="clean", unit="img", mininterval=2)
    if threads <= 1:
        return [clean_row(r, cfg, sizes, sources) for r in tqdm(todo, **progress)]
    # decoding, resizing and hashing release the GIL for most of their time
    with ThreadPoolExecutor(threads) as pool:
        return list(tqdm(pool.map(lambda r: clean_row(r, cfg, sizes, sources), todo), **progress))


# ---------------------------------------------------------------- Hamming search

def hex_to_words(hexes: list[str], nbits: int) -> np.ndarray:
    """(N, ceil(nbits/64)) uint64 words of big-endian hex hashes (bit 0 = MSB of word 0)."""
    nwords = max(1, math.ceil(nbits / 64))
    width = nwords * 16
    raw = bytes.fromhex("".join(h.rjust(width, "0") for h in hexes))
    return np.frombuffer(raw, dtype=">u8").astype(np.uint64).reshape(len(hexes), nwords)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Hamming distance of (N, W) uint64 arrays."""
    return np.bitwise_count(a ^ b).sum(axis=1, dtype=np.int64)


def _bit_range(words: np.ndarray, start: int, length: int) -> np.ndarray:
    """Bits [start, start+length) (length <= 64) of every row, as uint64."""
    word, offset = divmod(start, 64)
    col = words[:, word]
    if offset + length <= 64:
        value = col >> np.uint64(64 - offset - length)
    else:  # the block crosses into the next word
        low = offset + length - 64
        value = (col << np.uint64(low)) | (words[:, word + 1] >> np.uint64(64 - low))
    if length < 64:
        value = value & np.uint64((1 << length) - 1)
    return value


def _block_bounds(nbits: int, blocks: int) -> list[tuple[int, int]]:
    edges = [round(i * nbits / blocks) for i in range(blocks + 1)]
    return [(edges[i], edges[i + 1] - edges[i]) for i in range(blocks)]


# rough costs on one core (seconds): per element per log2 step of a sort, per candidate pair
_SORT_COST, _PAIR_COST = 5e-9, 4e-8


def _search_cost(n: int, nbits: int, radius: int, blocks: int) -> float:
    sizes = sorted(length for _, length in _block_bounds(nbits, blocks))
    key_bits = min(64, sum(sizes[: blocks - radius]))
    tables = math.comb(blocks, radius)
    candidates = n * n / 2 * 2.0 ** -key_bits
    return tables * (n * math.log2(max(n, 2)) * _SORT_COST + candidates * _PAIR_COST)


def choose_blocks(n: int, nbits: int, radius: int) -> int:
    """Number of blocks m (>= radius + 1, each <= 64 bits) with the least estimated work."""
    smallest = max(radius + 1, math.ceil(nbits / 64))
    options = range(smallest, min(nbits, smallest + 16) + 1)
    return min(options, key=lambda m: _search_cost(n, nbits, radius, m))


def choose_blocks_between(n_queries: int, n_index: int, nbits: int, radius: int) -> int:
    """``choose_blocks`` for ``pairs_between``: every table sorts both sides, and the
    candidates are Q * N / 2^key_bits (with many trimmed-window queries, few tables win)."""
    def cost(m):
        sizes = sorted(length for _, length in _block_bounds(nbits, m))
        key_bits = min(64, sum(sizes[: m - radius]))
        sort = sum(k * math.log2(max(k, 2)) for k in (n_queries, n_index)) * _SORT_COST
        return math.comb(m, radius) * (sort + n_queries * n_index * 2.0 ** -key_bits * _PAIR_COST)
    smallest = max(radius + 1, math.ceil(nbits / 64))
    return min(range(smallest, min(nbits, smallest + 16) + 1), key=cost)


def _pairs_in_groups(order: np.ndarray, starts: np.ndarray, sizes: np.ndarray, max_pairs: int):
    """Yield (left, right) index arrays of every pair inside each bucket, in batches."""
    group = np.repeat(np.arange(len(sizes)), sizes)
    offset = np.arange(len(group)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    position = starts[group] + offset
    partners = sizes[group] - 1 - offset  # later members of the same bucket
    ends = np.cumsum(partners)
    begin = 0
    while begin < len(position):
        # elements whose pairs fit in this batch (at least one element per batch)
        stop = max(begin + 1, int(np.searchsorted(ends, (ends[begin - 1] if begin else 0)
                                                  + max_pairs, side="right")))
        pos, cnt = position[begin:stop], partners[begin:stop]
        left = np.repeat(pos, cnt)
        right = left + 1 + np.arange(len(left)) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        yield order[left], order[right]
        begin = stop


def near_pairs(words: np.ndarray, nbits: int, radius: int, max_pairs: int = 4_000_000):
    """Every pair (i < j) of rows of ``words`` within Hamming ``radius``, with its distance.

    Sub-quadratic multi-index hashing: see the module docstring. Returns (i, j, d) arrays.
    """
    n = len(words)
    empty = (np.empty(0, np.int64),) * 3
    if n < 2:
        return empty
    blocks = choose_blocks(n, nbits, radius)
    bounds = _block_bounds(nbits, blocks)
    block_values = [_bit_range(words, start, length) for start, length in bounds]
    found_i, found_j, found_d = [], [], []
    for subset in itertools.combinations(range(blocks), blocks - radius):
        key = np.zeros(n, dtype=np.uint64)
        for b in subset:  # concatenated; bits shifted out past 64 only add candidates
            key = (key << np.uint64(bounds[b][1])) | block_values[b]
        order = np.argsort(key, kind="stable")
        sorted_key = key[order]
        starts = np.flatnonzero(np.r_[True, sorted_key[1:] != sorted_key[:-1]])
        sizes = np.diff(np.r_[starts, n])
        shared = sizes > 1
        for left, right in _pairs_in_groups(order, starts[shared], sizes[shared], max_pairs):
            d = hamming(words[left], words[right])
            close = d <= radius
            found_i.append(np.minimum(left, right)[close])
            found_j.append(np.maximum(left, right)[close])
            found_d.append(d[close])
    if not found_i:
        return empty
    i, j, d = (np.concatenate(x).astype(np.int64) for x in (found_i, found_j, found_d))
    # the same pair shares a bucket in several tables: keep it once
    _, first = np.unique(i * n + j, return_index=True)
    return i[first], j[first], d[first]


def near_duplicate_clusters(words: np.ndarray, nbits: int, radius: int,
                            mirrored: np.ndarray | None = None) -> np.ndarray:
    """Cluster label per image: images joined by a chain of hashes within ``radius``
    (single linkage; dedup no longer uses it, bench/bench_dedup.py measures the search).

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
    from scipy.sparse import coo_matrix  # here: the per-shard stage need not import scipy
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(src), dtype=np.int8), (src, dst)), shape=(size, size))
    _, labels = connected_components(graph, directed=False)
    return labels[:n]


# ---------------------------------------------------------------- dedup (gather)

# pairs_between: table keys up to this many bits are looked up in a direct table (2^24
# bucket sizes and starts: 128 MB at most; 64-bit hashes at radius 4 use 22 bits: 32 MB)
DIRECT_KEY_BITS = 24


def pairs_between(queries: np.ndarray | list[np.ndarray], index: np.ndarray, nbits: int, radius: int,
                  max_pairs: int = 4_000_000, chunk: int = 1 << 20, keep=None):
    """Every (q, i) with ``queries[q]`` within Hamming ``radius`` of ``index[i]``, with the
    distance: the multi-index search of ``near_pairs``, with queries looked up in tables
    built over ``index`` only (trimmed windows are queried, never indexed, so the many
    windows of one image never meet each other). ``queries`` may be a list of arrays (taken
    as concatenated, positions counted across them). Queries go ``chunk`` at a time, their
    keys made per table: memory stays ~100 MB however many windows a million rows bring
    (all blocks of 49M source windows at once were ~2 GB). ``keep(q, i)`` (a mask) drops
    pairs as they are found: an image's windows matching its own picture would otherwise
    pile up once per table (15 tables x 1M self matches at 1M rows)."""
    empty = (np.empty(0, np.int64),) * 3
    parts = queries if isinstance(queries, list) else [queries]  # concatenated, not copied
    starts = np.cumsum([0] + [len(p) for p in parts])
    n_queries = int(starts[-1])
    if n_queries == 0 or len(index) == 0:
        return empty
    blocks = choose_blocks_between(n_queries, len(index), nbits, radius)
    bounds = _block_bounds(nbits, blocks)
    # the index's blocks in the smallest type that holds them (11-bit blocks: a quarter)
    i_blocks = [_bit_range(index, start, length).astype(
        np.uint16 if length <= 16 else np.uint32 if length <= 32 else np.uint64)
        for start, length in bounds]
    found_q, found_i, found_d = [], [], []
    for subset in itertools.combinations(range(blocks), blocks - radius):
        i_key = np.zeros(len(index), dtype=np.uint64)
        for b in subset:
            i_key = (i_key << np.uint64(bounds[b][1])) | i_blocks[b]
        order = np.argsort(i_key, kind="stable")
        key_bits = sum(bounds[b][1] for b in subset)
        if key_bits <= DIRECT_KEY_BITS:
            # keys this short index a table directly: a query's bucket is one lookup, no
            # sort of the (many) queries and no binary search (4x faster at 1M rows)
            # int32 (half the memory) while the index has fewer than 2^31 entries
            dtype = np.int32 if len(index) < 2**31 else np.int64
            bucket_size = np.bincount(i_key.astype(np.int64), minlength=1 << key_bits).astype(dtype)
            bucket_start = np.cumsum(bucket_size, dtype=dtype)
            bucket_start -= bucket_size
        else:
            sorted_key = i_key[order]
        del i_key
        for c0, part in ((int(starts[n]) + c, p[c:c + chunk]) for n, p in enumerate(parts)
                         for c in range(0, len(p), chunk)):
            q_key = np.zeros(len(part), dtype=np.uint64)
            for b in subset:
                q_key = (q_key << np.uint64(bounds[b][1])) | _bit_range(part, *bounds[b])
            if key_bits <= DIRECT_KEY_BITS:
                q_order = np.arange(len(part))
                q_key = q_key.astype(np.int64)
                lo, counts = bucket_start[q_key], bucket_size[q_key]
            else:
                # sorted needles: the binary searches walk memory in order (10x faster at 1M)
                q_order = np.argsort(q_key)
                needles = q_key[q_order]
                lo = np.searchsorted(sorted_key, needles, side="left")
                counts = np.searchsorted(sorted_key, needles, side="right") - lo
                del needles
            del q_key
            hits = np.flatnonzero(counts)
            ends = np.cumsum(counts[hits])
            begin = 0
            while begin < len(hits):  # batches of at most ~max_pairs candidate pairs
                stop = max(begin + 1, int(np.searchsorted(ends, (ends[begin - 1] if begin else 0)
                                                          + max_pairs, side="right")))
                h, c = hits[begin:stop], counts[hits[begin:stop]]
                q = np.repeat(q_order[h], c)
                pos = np.repeat(lo[h], c) + np.arange(len(q)) - np.repeat(np.cumsum(c) - c, c)
                i = order[pos]
                d = hamming(part[q], index[i])
                close = d <= radius
                if keep is not None:
                    close[close] = keep(q[close] + c0, i[close])
                found_q.append(q[close] + c0)
                found_i.append(i[close])
                found_d.append(d[close])
                begin = stop
    if not found_q:
        return empty
    q, i, d = (np.concatenate(x).astype(np.int64) for x in (found_q, found_i, found_d))
    _, first = np.unique(q * len(index) + i, return_index=True)
    return q[first], i[first], d[first]


class _HashSet:
    """Hashes of items: ``words`` (K, nwords) uint64, item k's being rows ends[k-1]:ends[k];
    ``owner[k]`` is the id item k has in a search (-1: not part of it)."""

    def __init__(self, words: np.ndarray, ends: np.ndarray, owner: np.ndarray):
        self.words, self.ends, self.owner = words, ends, owner

    def owners(self, rows: np.ndarray) -> np.ndarray:
        return self.owner[np.searchsorted(self.ends, rows, side="right")]


def _hash_words(details: list[dict], method: str, nbits: int, key: str = "") -> _HashSet:
    """The hashes ``details[k][method + key]`` (a concatenation of several hashes for
    ``_trims``), owned by k; rows without them have none."""
    nwords = max(1, math.ceil(nbits / 64))
    width = nwords * 16
    values, counts = [], []
    for d in details:
        value = d.get(method + key) if d else None
        values.append(value or "")
        counts.append(len(value or "") // width)
    # hashes are fixed-width hex: decode them all in one go (no per-hash Python work)
    raw = bytes.fromhex("".join(values))
    words = np.frombuffer(raw, dtype=">u8").astype(np.uint64).reshape(-1, nwords)
    return _HashSet(words, np.cumsum(counts, dtype=np.int64), np.arange(len(details), dtype=np.int64))


def duplicate_pairs(details: list[dict], method: str, nbits: int, radius: int, flips: bool):
    """Pairs (a < b) of items whose pictures match within ``radius``: any window of one
    (the whole picture and its trims) against the other's whole picture, or its mirror
    image when ``flips``. Returns (a, b, distance, mirrored) with each pair once, at its
    smallest distance."""
    words = {key: _hash_words(details, method, nbits, key) for key in ("", "_mirror", "_trims")}
    return _duplicate_pairs(words, nbits, radius, flips)


def _duplicate_pairs(sets: dict, nbits: int, radius: int, flips: bool):
    """``duplicate_pairs`` over ``_HashSet``s by key ("", "_mirror", "_trims"), between
    their owners (items owned by -1 take no part). The result does not depend on the
    order of the hashes, only on who owns them."""
    whole, mirror, trims = sets[""], sets["_mirror"], sets["_trims"]
    index = np.concatenate([whole.words, mirror.words]) if flips else whole.words
    n_whole = len(whole.words)

    def owners(q, i):
        a = np.empty(len(q), dtype=np.int64)
        first = q < n_whole
        a[first] = whole.owners(q[first])
        a[~first] = trims.owners(q[~first] - n_whole)
        mirrored = i >= n_whole
        b = np.empty(len(i), dtype=np.int64)
        b[~mirrored] = whole.owners(i[~mirrored])
        b[mirrored] = mirror.owners(i[mirrored] - n_whole)
        return a, b, mirrored

    def between_items(q, i):  # a pair of two different items, both in the running
        a, b, _ = owners(q, i)
        return (a != b) & (a >= 0) & (b >= 0)
    q, i, d = pairs_between([whole.words, trims.words], index, nbits, radius, keep=between_items)
    a, b, mirrored = owners(q, i)
    other = (a != b) & (a >= 0) & (b >= 0)
    a, b, d, mirrored = a[other], b[other], d[other], mirrored[other]
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    # per pair the closest match (unmirrored first on ties)
    order = np.lexsort((mirrored, d, hi, lo))
    lo, hi, d, mirrored = lo[order], hi[order], d[order], mirrored[order]
    first = np.r_[True, (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])] if len(lo) else np.zeros(0, bool)
    return lo[first], hi[first], d[first], mirrored[first]


def keeper_priority(rows: list[Row]) -> np.ndarray:
    """Order of ``rows`` from best to worst copy: largest source resolution, then the least
    compressed source (JPEG quality; lossless 100; unknown last), then most crop pixels,
    then the larger source file, then the smaller id (stable across runs and shards)."""
    cols = DedupColumns("none", 64)
    for r in rows:
        cols.add(r.id, r.parent_id, r.width, r.height, r.peek_details())
    return cols.priority()


def assign_keepers(n: int, priority: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Greedy, without chaining: in ``priority`` order, an item not yet assigned keeps
    itself and claims every unassigned item it is paired with. Every dropped item is thus
    paired directly (within the radius) with its keeper, and the keeper is the best item
    of its neighbourhood. Returns (keeper per item, index of the pair that linked it or -1)."""
    from scipy.sparse import csr_matrix
    edge = np.arange(len(a))
    graph = csr_matrix((np.r_[edge, edge] + 1, (np.r_[a, b], np.r_[b, a])), shape=(n, n))
    keeper = np.full(n, -1, dtype=np.int64)
    link = np.full(n, -1, dtype=np.int64)
    indptr, indices, data = graph.indptr, graph.indices, graph.data
    for k in priority.tolist():
        if keeper[k] >= 0:
            continue
        keeper[k] = k
        for j, e in zip(indices[indptr[k]:indptr[k + 1]].tolist(), data[indptr[k]:indptr[k + 1]].tolist()):
            if keeper[j] < 0:
                keeper[j] = k
                link[j] = e - 1
    return keeper, link


# a face of a duplicate source matches the face at the same place in the keeper's source:
# centres within this fraction of the source's sides (trims move them up to 9 %), sizes
# within this ratio
FACE_MATCH_OFFSET = 0.12
FACE_MATCH_SIZE = 1.5

_HASH_KEYS = ("", "_mirror", "_trims")


class _Hashes:
    """Hex hashes of many items, kept as their raw bytes in one buffer per key (a million
    rows' 76 hashes each: no Python string per hash)."""

    def __init__(self, method: str, nbits: int):
        self.method, self.nbits = method, nbits
        self.width = max(1, math.ceil(nbits / 64)) * 16  # hex digits per hash
        self.raw = {key: bytearray() for key in _HASH_KEYS}
        self.counts = {key: array("i") for key in _HASH_KEYS}
        # (details key, buffer, counts) per kind: the loop of add, a million times
        self._slots = [(method + key, self.raw[key], self.counts[key]) for key in _HASH_KEYS]

    def add(self, d: dict | None) -> None:
        width, fromhex = self.width, bytes.fromhex
        for name, raw, counts in self._slots:
            value = (d.get(name) if d else None) or ""
            raw += fromhex(value)
            counts.append(len(value) // width)

    def sets(self, owner: np.ndarray) -> dict:
        """{key: _HashSet} of every item's hashes, item k owned by ``owner[k]``. The words
        are the buffers themselves, byte-swapped in place (no copy: 600 MB at 1M rows)."""
        out = {}
        for key in _HASH_KEYS:
            raw = self.raw[key]
            if not isinstance(raw, np.ndarray):  # first use: big-endian bytes -> native words
                raw = np.frombuffer(raw, dtype=np.uint64)  # a writable view of the bytearray
                if sys.byteorder == "little":
                    raw.byteswap(inplace=True)
                self.raw[key] = raw
            words = raw.reshape(-1, self.width // 16)
            ends = np.cumsum(np.frombuffer(self.counts[key], dtype=np.int32), dtype=np.int64)
            out[key] = _HashSet(words, ends, owner)
        return out


_HEX64 = re.compile(r"[0-9a-f]{64}")


class DedupColumns:
    """What the dedup gather needs of each kept clean row, in columns: ids, source ids,
    the keeper priority keys, pixel digest, face box, hashes of the face and of its source
    picture (``details.source``). Rows are added one at a time and not kept, so a gather
    over a million manifest rows holds ~1 KB a row of hashes instead of the rows."""

    def __init__(self, method: str, nbits: int):
        self.ids: list[str] = []
        self.sources: list[str] = []  # parent_id or id
        self.keys = [array("d") for _ in range(4)]  # source pixels, quality, crop pixels, file bytes
        self.digests: list = []
        self.box = array("d")  # x, y, w, h; nan when no box
        self.block = array("q")  # index into the source blocks, -1 when no details.source
        self.block_size = array("d")  # source width, height (0 when unknown)
        self.faces = _Hashes(method, nbits)
        self.blocks = _Hashes(method, nbits)

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, id: str, parent_id: str, width: int, height: int, d: dict) -> None:
        self.ids.append(id)
        self.sources.append(parent_id or id)
        source = d.get("source")
        src = source or {}
        quality = src.get("quality")
        source_pixels, quality_key, crop_pixels, file_bytes = self.keys
        source_pixels.append((src.get("width", 0) * src.get("height", 0)) or width * height)
        quality_key.append(quality if quality is not None else -1)
        crop_pixels.append(width * height)
        file_bytes.append(d.get("file_bytes") or d.get("bytes") or 0)
        digest = d.get("pixel_sha256")
        # 32 bytes instead of a 64-character string; any other text stays as it is (a str
        # never equals bytes, and two digests are equal exactly when their texts are)
        self.digests.append(bytes.fromhex(digest) if type(digest) is str and _HEX64.fullmatch(digest)
                            else digest or None)
        box = d.get("box")
        if box is not None and len(box) != 4:  # would shift every later face's box
            raise ValueError(f"dedup: {id}: details.box {box!r} is not [x, y, w, h]")
        self.box.extend((math.nan,) * 4 if box is None else box)
        self.faces.add(d)
        if source:
            self.block.append(len(self.block_size) // 2)
            self.block_size.extend((source.get("width") or 0, source.get("height") or 0))
            self.blocks.add(source)
        else:
            self.block.append(-1)

    def priority(self) -> np.ndarray:
        """``keeper_priority``: best copy first; ties by id, then input order."""
        n = len(self.ids)
        id_rank = np.empty(n, dtype=np.int64)
        id_rank[sorted(range(n), key=self.ids.__getitem__)] = np.arange(n)
        keys = [-np.frombuffer(col, dtype=np.float64) for col in self.keys]
        return np.lexsort((id_rank, keys[3], keys[2], keys[1], keys[0])).astype(np.int64)

    def face_position(self, k: int, block: int) -> tuple[float, float, float] | None:
        """Centre and size of face ``k`` in source block ``block``, as fractions of its sides."""
        width, height = self.block_size[2 * block], self.block_size[2 * block + 1]
        if not width or not height:
            return None
        x, y, w, h = self.box[4 * k:4 * k + 4]
        if math.isnan(x):  # crop.method none: the face is the whole picture
            return 0.5, 0.5, 1.0
        return (x + w / 2) / width, (y + h / 2) / height, w / width


def source_face_pairs(cols: DedupColumns, alive: np.ndarray, near: dict) -> tuple[np.ndarray, ...]:
    """Pairs of faces cut from sources that are duplicates of each other (whole pictures
    within the radius: reposts, rescales, re-encodes, crops by a few percent, mirrors), each
    face paired with the face at the same place of the other source. Returns
    (a, b, distance, mirrored) of positions in ``alive`` (the rows still in the running)."""
    nbits = near["hash_size"] ** 2
    # the faces with source measures, grouped by source id (groups in sorted id order,
    # faces in alive order): arrays, not a dict of lists (~300 MB at 1M rows)
    with_source = np.flatnonzero(np.frombuffer(cols.block, dtype=np.int64)[alive] >= 0)
    sids = [cols.sources[k] for k in alive[with_source].tolist()]
    order = sorted(range(len(sids)), key=sids.__getitem__)
    starts = np.array([g for g in range(len(order)) if not g or sids[order[g]] != sids[order[g - 1]]],
                      dtype=np.int64)
    members = with_source[np.array(order, dtype=np.int64)]  # positions in alive
    del sids, order
    ends = np.r_[starts[1:], len(members)] if len(starts) else starts
    # a source's measures: those of its last face here
    block_of = np.frombuffer(cols.block, dtype=np.int64)[alive[members[ends - 1]]]
    owner = np.full(len(cols.block_size) // 2, -1, dtype=np.int64)  # by block: its source's number
    owner[block_of] = np.arange(len(starts))
    sa, sb, sd, sm = _duplicate_pairs(cols.blocks.sets(owner), nbits, near["radius"], flips_on(near))
    faces_of = lambda g: members[starts[g]:ends[g]].tolist()  # noqa: E731
    out = ([], [], [], [])
    for s, t, dist, flip in zip(sa.tolist(), sb.tolist(), sd.tolist(), sm.tolist()):
        s_faces = [(j, cols.face_position(int(alive[j]), int(block_of[s]))) for j in faces_of(s)]
        for k in faces_of(t):
            pos = cols.face_position(int(alive[k]), int(block_of[t]))
            if pos is None:
                continue
            x, y, size = pos
            if flip:
                x = 1.0 - x
            best = None
            for j, other in s_faces:
                if other is None or not (1 / FACE_MATCH_SIZE <= size / other[2] <= FACE_MATCH_SIZE):
                    continue
                offset = max(abs(x - other[0]), abs(y - other[1]))
                if offset <= FACE_MATCH_OFFSET and (best is None or offset < best[0]):
                    best = (offset, j)
            if best is not None:
                for lst, v in zip(out, (min(k, best[1]), max(k, best[1]), dist, flip)):
                    lst.append(v)
    return tuple(np.array(x, dtype=dt) for x, dt in zip(out, (np.int64, np.int64, np.int64, bool)))


def dedup_verdicts(cols: DedupColumns, cfg: dict) -> dict[int, tuple[str, dict]]:
    """{item: (reason, details)} of the items of ``cols`` that dedup drops (see ``dedup``)."""
    n = len(cols)
    if n == 0:
        return {}
    priority = cols.priority()
    rank = np.empty(n, dtype=np.int64)
    rank[priority] = np.arange(n)
    verdict: dict[int, tuple[str, dict]] = {}
    alive = np.arange(n)  # images still in the running for near duplicates
    exact_of: dict[int, int] = {}
    ids = cols.ids

    if cfg["exact_duplicates"]:
        best_with: dict = {}
        digests = cols.digests
        for k in priority.tolist():  # the best copy of each pixel digest keeps it
            keeper = best_with.setdefault(digests[k] or k, k)
            if keeper != k:
                verdict[k] = ("exact_duplicate", {"duplicate_of": ids[keeper], "distance": 0})
                exact_of[k] = keeper
        del best_with
        alive = np.array([k for k in range(n) if k not in verdict], dtype=np.int64)

    near = cfg["near_duplicates"]
    if near["method"] != "none" and len(alive) > 1:
        nbits = near["hash_size"] ** 2
        kinds, pairs = [], []
        if near.get("sources", True):
            a, b, d, m = source_face_pairs(cols, alive, near)
            pairs.append((a, b, d, m))
            kinds.append(np.zeros(len(a), dtype=np.int8))  # 0: source level
        owner = np.full(n, -1, dtype=np.int64)  # by row: its position among the alive
        owner[alive] = np.arange(len(alive))
        a, b, d, m = _duplicate_pairs(cols.faces.sets(owner), nbits, near["radius"], flips_on(near))
        pairs.append((a, b, d, m))
        kinds.append(np.ones(len(a), dtype=np.int8))  # 1: crop level
        a, b, d, m = (np.concatenate(x) for x in zip(*pairs))
        kind = np.concatenate(kinds)
        # one link per pair: the closest; source level first on ties
        order = np.lexsort((kind, d, np.maximum(a, b), np.minimum(a, b)))
        a, b, d, m, kind = a[order], b[order], d[order], m[order], kind[order]
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        first = np.r_[True, (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])] if len(a) else np.zeros(0, bool)
        a, b, d, m, kind = a[first], b[first], d[first], m[first], kind[first]
        sub_priority = np.argsort(rank[alive], kind="stable")
        keeper, link = assign_keepers(len(alive), sub_priority, a, b)
        for k in np.flatnonzero(keeper != np.arange(len(alive))).tolist():
            e = link[k]
            keep_k = int(alive[keeper[k]])
            details = {"duplicate_of": ids[keep_k], "distance": int(d[e])}
            if m[e]:
                details["mirrored"] = True
            if kind[e] == 0:
                details["duplicate_source"] = cols.sources[keep_k]
            verdict[int(alive[k])] = ("source_duplicate" if kind[e] == 0 else "near_duplicate", details)
        # a pixel twin of an image dropped here is a duplicate of the same keeper
        for k, twin in exact_of.items():
            if twin in verdict:
                verdict[k] = verdict[twin]
    return verdict


def dedup_columns(rows: Iterable[Row], near: dict) -> DedupColumns:
    cols = DedupColumns(near["method"], near["hash_size"] ** 2)
    for r in rows:
        cols.add(r.id, r.parent_id, r.width, r.height, r.peek_details())
    return cols


def dedup(rows: list[Row], cfg: dict) -> list[Row]:
    """One row per kept clean row: keep, or drop as exact_duplicate / source_duplicate /
    near_duplicate.

    Drops carry ``duplicate_of`` (the id kept) and ``distance`` (Hamming bits, never above
    the radius: there is no chaining), ``mirrored`` when the match was to the mirrored
    picture, and for source duplicates ``duplicate_source`` (the kept face's source id).
    Exact duplicates (same decoded pixels) go first; among what they keep, a face is a
    ``source_duplicate`` when its whole source picture matches another source and the
    faces sit at the same place, a ``near_duplicate`` when the face crops match. The
    keeper is the best copy (``keeper_priority``).
    """
    rows = [r for r in rows if r.kept]
    verdict = dedup_verdicts(dedup_columns(rows, cfg["near_duplicates"]), cfg)
    # a drop's keys merge into the parsed details (sorted), as dedup_manifests writes them
    return [r.drop(verdict[k][0], details={**r.details, **verdict[k][1]}) if k in verdict else r
            for k, r in enumerate(rows)]


def dedup_manifests(paths: list[str], cfg: dict, output: str) -> dict[str, int]:
    """``dedup`` over the kept rows of the manifests at ``paths``, written to ``output``
    (the same bytes as ``write_manifest(output, dedup(read_manifests(paths), cfg))``) in two
    passes that hold no rows: the first reads what dedup needs into ``DedupColumns``, the
    second copies each kept line through, or writes its drop row. Returns the count per
    verdict ("keep" and the drop reasons)."""
    cols = read_dedup_columns(paths, cfg["near_duplicates"])
    verdict = dedup_verdicts(cols, cfg)
    n = len(cols)
    del cols
    write_dedup(paths, verdict, output)
    counts = {"keep": n - len(verdict)}
    for reason, _ in verdict.values():
        counts[reason] = counts.get(reason, 0) + 1
    return counts


def read_dedup_columns(paths: list[str], near: dict) -> DedupColumns:
    """Pass one of ``dedup_manifests``: the kept rows' ``DedupColumns``, from the lines."""
    cols = DedupColumns(near["method"], near["hash_size"] ** 2)
    loads = json.loads
    for path in paths:
        for line, is_kept, f in manifest_lines_of(path):
            if not is_kept:
                continue
            if line is None:  # a row (a quoted name...)
                cols.add(f.id, f.parent_id, f.width, f.height, f.peek_details())
                continue
            text = f[8]  # the quoted JSON as bytes: unquoted and parsed without a str copy
            try:
                details = loads(text[1:-1].replace(b'""', b'"') if text[:1] == b'"' else text)
            except UnicodeDecodeError:  # a name that is not UTF-8: as the row path reads it
                details = line_row(f).peek_details()
            cols.add(f[0].decode(ENCODING, ERRORS), f[2].decode(ENCODING, ERRORS), int(f[4]),
                     int(f[5]), details)
    return cols


def write_dedup(paths: list[str], verdict: dict[int, tuple[str, dict]], output: str) -> None:
    """Pass two of ``dedup_manifests``: every kept row of ``paths`` (the k-th is item k),
    its line copied through, or its drop row when ``verdict`` has it."""
    def lines():
        k = 0
        for path in paths:
            for line, is_kept, row in manifest_lines_of(path):
                if not is_kept:
                    continue
                if k in verdict:
                    reason, details = verdict[k]
                    row = line_row(row) if line is not None else row
                    row.details  # parsed: the drop's keys merge in sorted, as they always did
                    yield row_line(row.drop(reason, details=details)).encode(ENCODING, ERRORS)
                elif line is not None:
                    yield line  # as read: the clean step writes canonical (sorted) JSON
                else:
                    row.details  # re-serialized, as the row path did
                    yield row_line(row).encode(ENCODING, ERRORS)
                k += 1

    def write(f):
        buf = [HEADER_BYTES]
        for line in lines():
            buf.append(line)
            if len(buf) >= 4096:
                f.write(b"".join(buf))
                buf.clear()
        f.write(b"".join(buf))
    atomic_write_with(output, write)


# ---------------------------------------------------------------- CLI

def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("shard", help="size floors, monochrome filter and hashes of one shard")
    s.add_argument("--input", required=True, help="upstream (crop) manifest.tsv")
    s.add_argument("--sources", default="", help="the shard's ingest manifest.tsv (file sizes)")
    s.add_argument("--output", required=True, help="manifest.tsv to write")
    s.add_argument("--config", required=True, help="the clean config block as JSON")
    s.add_argument("--threads", type=int, default=1)
    d = sub.add_parser("dedup", help="exact and near duplicates over every shard")
    d.add_argument("--output", required=True, help="dedup.tsv to write")
    d.add_argument("--config", required=True, help="the clean config block as JSON")
    d.add_argument("manifests", nargs="*", help="every clean shard manifest.tsv")
    a = p.parse_args(argv)
    cfg = load_config_arg(a.config)
    if a.cmd == "shard":
        ingest_rows = read_manifest(a.sources) if a.sources else []
        sizes = source_sizes(ingest_rows) if a.sources else None
        rows = read_manifest(a.input)
        sources = shard_sources(rows, ingest_rows, cfg, a.threads)
        rows = clean_shard(rows, cfg, sizes, a.threads, sources)
        write_manifest(a.output, rows)
        reasons = {}
        for r in rows:
            reasons[r.reason or "keep"] = reasons.get(r.reason or "keep", 0) + 1
        print(f"clean: {reasons.get('keep', 0)}/{len(rows)} kept; {reasons}")
        return
    counts = dedup_manifests(a.manifests, cfg, a.output)
    print(f"dedup: {counts['keep']}/{sum(counts.values())} kept, "
          f"{counts.get('exact_duplicate', 0)} exact, "
          f"{counts.get('source_duplicate', 0)} source and "
          f"{counts.get('near_duplicate', 0)} near duplicates dropped")


if __name__ == "__main__":
    main()
