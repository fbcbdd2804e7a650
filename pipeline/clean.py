"""clean: per-image filters and hashes (per shard), then exact and near duplicates (gather).

    python -m pipeline.clean shard --input crop/<s>/manifest.tsv --output clean/<s>/manifest.tsv \
        --sources ingest/<s>/manifest.tsv --config JSON [--threads N]
    python -m pipeline.clean dedup --output clean/dedup.tsv --config JSON clean/*/manifest.tsv

``shard`` decides per image and never rewrites pixels: kept rows keep the upstream
``path`` and carry their hashes and colour measures in ``details``; dropped rows say why
(``file_too_small``, ``too_small``, ``monochrome``, ``decode_error``) with the measured
value. Because the per-image work is cached in the shard manifests, adding images
re-hashes only the shards they land in.

``dedup`` gathers every shard's kept rows and writes one row per image: exact duplicates
(same decoded pixels) and near duplicates (perceptual hashes within a Hamming radius,
clusters joined transitively) are dropped with ``details.duplicate_of`` pointing at the
member that was kept (highest resolution, then larger source file, then smallest id).

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
import math
from concurrent.futures import ThreadPoolExecutor

import imagehash
import numpy as np
from PIL import Image, ImageOps
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from tqdm import tqdm

from pipeline.imaging import load_rgb, pixel_digest
from pipeline.manifest import Row, load_config_arg, read_manifest, read_manifests, write_manifest

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


def perceptual_hashes(small: Image.Image, cfg: dict) -> dict:
    """Hex perceptual hash (and of the mirrored image when ``flips``), keyed by method."""
    method = cfg["method"]
    if method == "none":
        return {}
    hasher = HASHERS[method]
    out = {method: str(hasher(small, hash_size=cfg["hash_size"]))}
    if cfg["flips"]:
        out[f"{method}_mirror"] = str(hasher(ImageOps.mirror(small), hash_size=cfg["hash_size"]))
    return out


def source_sizes(ingest_rows: list[Row]) -> dict[str, int]:
    """Source file size by source id, from the ingest manifest (crop rows may not carry it)."""
    return {r.id: r.details["bytes"] for r in ingest_rows if "bytes" in r.details}


def clean_row(row: Row, cfg: dict, sizes: dict[str, int] | None = None) -> Row:
    """Keep (with hashes and measures in details) or drop (with a reason) one image.

    ``sizes``: source file bytes by source id (``source_sizes``); a face row's source id
    is its ``parent_id``.
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
    if cfg["monochrome"]["method"] != "none":
        monochrome, measures = judge_monochrome(im, small, cfg["monochrome"])
        details.update(measures)
        if monochrome:
            return row.drop("monochrome", **size, details=details)
    details["pixel_sha256"] = pixel_digest(im)
    details.update(perceptual_hashes(small, cfg["near_duplicates"]))
    return row.keep(**size, details=details)


def clean_shard(rows: list[Row], cfg: dict, sizes: dict[str, int] | None = None,
                threads: int = 1) -> list[Row]:
    """One row per upstream kept row, in order."""
    todo = [r for r in rows if r.kept]
    progress = dict(total=len(todo), desc="clean", unit="img", mininterval=2)
    if threads <= 1:
        return [clean_row(r, cfg, sizes) for r in tqdm(todo, **progress)]
    # decoding, resizing and hashing release the GIL for most of their time
    with ThreadPoolExecutor(threads) as pool:
        return list(tqdm(pool.map(lambda r: clean_row(r, cfg, sizes), todo), **progress))


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
    """Cluster label per image: images joined by a chain of hashes within ``radius``.

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
    graph = coo_matrix((np.ones(len(src), dtype=np.int8), (src, dst)), shape=(size, size))
    _, labels = connected_components(graph, directed=False)
    return labels[:n]


# ---------------------------------------------------------------- dedup (gather)

def _keeper_of_groups(groups: np.ndarray, pixels: np.ndarray, file_bytes: np.ndarray,
                      id_rank: np.ndarray) -> np.ndarray:
    """Per item, the index of its group's best member: most pixels, larger file, smaller id."""
    order = np.lexsort((id_rank, -file_bytes, -pixels, groups))
    sorted_groups = groups[order]
    first = np.r_[True, sorted_groups[1:] != sorted_groups[:-1]]
    best_of_group = order[first][np.cumsum(first) - 1]
    keeper = np.empty(len(groups), dtype=np.int64)
    keeper[order] = best_of_group
    return keeper


def dedup(rows: list[Row], cfg: dict) -> list[Row]:
    """One row per kept clean row: keep, or drop as exact_duplicate / near_duplicate.

    Drops carry ``duplicate_of`` (the id kept) and, for near duplicates, ``distance`` to
    it (above the radius when the cluster joined them through a chain) and ``mirrored``
    when the match was to the mirrored image. Exact duplicates go first; near-duplicate
    clusters are formed among what they keep.
    """
    rows = [r for r in rows if r.kept]
    n = len(rows)
    if n == 0:
        return []
    pixels = np.array([r.width * r.height for r in rows], dtype=np.int64)
    file_bytes = np.array([r.details.get("file_bytes") or r.details.get("bytes") or 0
                           for r in rows], dtype=np.int64)
    ids = [r.id for r in rows]
    id_rank = np.empty(n, dtype=np.int64)
    id_rank[sorted(range(n), key=ids.__getitem__)] = np.arange(n)
    verdict: dict[int, tuple[str, dict]] = {}
    alive = np.arange(n)  # images still in the running for near duplicates

    if cfg["exact_duplicates"]:
        # group = index of the first row with the same decoded pixels
        first_with: dict = {}
        group = np.fromiter((first_with.setdefault(r.details.get("pixel_sha256") or k, k)
                             for k, r in enumerate(rows)), dtype=np.int64, count=n)
        keeper = _keeper_of_groups(group, pixels, file_bytes, id_rank)
        for k in np.flatnonzero(keeper != np.arange(n)):
            verdict[int(k)] = ("exact_duplicate", {"duplicate_of": rows[keeper[k]].id})
        alive = np.flatnonzero(keeper == np.arange(n))

    near = cfg["near_duplicates"]
    method = near["method"]
    if method != "none":
        alive = np.array([k for k in alive if rows[k].details.get(method)], dtype=np.int64)
    if method != "none" and len(alive) > 1:
        nbits = near["hash_size"] ** 2
        words = hex_to_words([rows[k].details[method] for k in alive], nbits)
        mirrored = None
        if near["flips"]:
            mirrored = hex_to_words([rows[k].details.get(f"{method}_mirror")
                                     or rows[k].details[method] for k in alive], nbits)
        labels = near_duplicate_clusters(words, nbits, near["radius"], mirrored)
        keeper = _keeper_of_groups(labels, pixels[alive], file_bytes[alive], id_rank[alive])
        dropped = np.flatnonzero(keeper != np.arange(len(alive)))
        distance = hamming(words[dropped], words[keeper[dropped]])
        flipped = np.zeros(len(dropped), dtype=bool)
        if mirrored is not None:
            to_mirror = hamming(words[dropped], mirrored[keeper[dropped]])
            flipped = to_mirror < distance
            distance = np.minimum(distance, to_mirror)
        for k, dist, flip in zip(dropped, distance, flipped):
            details = {"duplicate_of": rows[alive[keeper[k]]].id, "distance": int(dist)}
            if flip:
                details["mirrored"] = True
            verdict[int(alive[k])] = ("near_duplicate", details)

    return [r.drop(verdict[k][0], details=verdict[k][1]) if k in verdict else r
            for k, r in enumerate(rows)]


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
        sizes = source_sizes(read_manifest(a.sources)) if a.sources else None
        rows = clean_shard(read_manifest(a.input), cfg, sizes, a.threads)
        write_manifest(a.output, rows)
        reasons = {}
        for r in rows:
            reasons[r.reason or "keep"] = reasons.get(r.reason or "keep", 0) + 1
        print(f"clean: {reasons.get('keep', 0)}/{len(rows)} kept; {reasons}")
        return
    rows = dedup(read_manifests(a.manifests), cfg)
    write_manifest(a.output, rows)
    kept = sum(r.kept for r in rows)
    print(f"dedup: {kept}/{len(rows)} kept, "
          f"{sum(r.reason == 'exact_duplicate' for r in rows)} exact and "
          f"{sum(r.reason == 'near_duplicate' for r in rows)} near duplicates dropped")


if __name__ == "__main__":
    main()
