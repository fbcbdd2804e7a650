"""Hamming search over perceptual hashes: every pair within a radius, sub-quadratic.

Multi-index hashing (Norouzi et al.; Manku et al.'s permuted tables): split the hash into m
blocks; two hashes within radius r differ in at most r blocks, so they agree exactly on
some m - r of them. Tables keyed by sets of blocks (their concatenated bits) hold the
index, one set inside every (m - r)-set of blocks (those sets themselves, or a covering
of them by fewer blocks: ``covering``); a query's candidates are the index entries that
share its key in some table, and a popcount verifies them. That finds every pair within r
without comparing all N^2 pairs (1M hashes in seconds, see bench/bench_dedup.py).

Hashes are big-endian bytes in the clean shards' hashes files (fixed-width hex in older
manifests' details); ``HashStore`` keeps them as raw bytes and
``words_of`` is the one place they become uint64 words (bit 0 = MSB of word 0). The
dedup gather (pipeline/dedup.py) is the user: it asks ``duplicate_pairs`` which items'
pictures match.
"""
from __future__ import annotations

import functools
import itertools
import math
import sys
from array import array

import numpy as np

# rough costs on one core (seconds): per element per log2 step of a sort, per candidate pair
_SORT_COST, _PAIR_COST = 5e-9, 4e-8

# table keys up to this many bits are looked up in a direct table (2^24 bucket sizes and
# starts: 128 MB at most; 64-bit hashes at radius 4 use 22 bits: 32 MB)
DIRECT_KEY_BITS = 24

# the kinds of hashes an item has (clean.perceptual_hashes): the whole picture, its mirror
# image, its trimmed windows (concatenated)
HASH_KEYS = ("", "_mirror", "_trims")


def words_of(raw: bytearray, nbits: int) -> np.ndarray:
    """(N, ceil(nbits/64)) native uint64 words of big-endian hash bytes (``bytes.fromhex``
    of fixed-width hex, concatenated). Converted in place: the result is a view of ``raw``
    (no copy: 600 MB at 1M rows), which then holds native words, not big-endian bytes."""
    words = raw.view(np.uint64) if isinstance(raw, np.ndarray) else np.frombuffer(raw, dtype=np.uint64)
    if sys.byteorder == "little":
        words.byteswap(inplace=True)
    return words.reshape(-1, max(1, math.ceil(nbits / 64)))


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


def search_cost(n_queries: int, n_index: int, nbits: int, blocks: int, tables: int, key_blocks: int) -> float:
    """Estimated seconds of ``pairs_between`` with ``blocks`` blocks and ``tables`` tables
    keyed by ``key_blocks`` blocks: every table sorts both sides, and verifies
    Q * N / 2^key_bits candidates (with many trimmed-window queries, few tables win)."""
    sizes = sorted(length for _, length in _block_bounds(nbits, blocks))
    key_bits = min(64, sum(sizes[:key_blocks]))
    sort = sum(k * math.log2(max(k, 2)) for k in (n_queries, n_index)) * _SORT_COST
    return tables * (sort + n_queries * n_index * 2.0 ** -key_bits * _PAIR_COST)


# a covering is looked for where its incidence matrix (sets of agreeing blocks x candidate
# keys) has at most this many cells: 9 blocks, keys of 3 at radius 4 have 10,584
_COVERING_CELLS = 100_000


def _masks(blocks: int, size: int) -> np.ndarray:
    return np.array([sum(1 << b for b in c) for c in itertools.combinations(range(blocks), size)], np.int64)


@functools.lru_cache(maxsize=None)
def covering(blocks: int, exact: int, key_blocks: int) -> tuple[tuple[int, ...], ...] | None:
    """Sets of ``key_blocks`` of the blocks such that every set of ``exact`` blocks holds
    one (greedy: each time the set held by most of those not yet covered, the first on
    ties), or None where that is too big to look for. Two hashes that agree on ``exact``
    blocks then share a key in some table: at radius 4 on 64 bits, 12 tables keyed by 3
    of 9 blocks (21-22 bits) find every pair the 15 keyed by 2 of 6 find (20-22 bits),
    with a fifth fewer lookups (bench/RESULTS.md, 1M rows)."""
    if key_blocks == exact:
        return tuple(itertools.combinations(range(blocks), exact))
    if math.comb(blocks, exact) * math.comb(blocks, key_blocks) > _COVERING_CELLS:
        return None
    keys, agree = _masks(blocks, key_blocks), _masks(blocks, exact)
    held = (agree[:, None] & keys[None, :]) == keys[None, :]
    chosen, left = [], np.ones(len(agree), bool)
    while left.any():
        best = int(np.argmax(held[left].sum(axis=0)))
        chosen.append(tuple(b for b in range(blocks) if keys[best] >> b & 1))
        left &= ~held[:, best]
    return tuple(chosen)


def choose_tables(n_queries: int, n_index: int, nbits: int, radius: int) -> tuple[int, tuple[tuple[int, ...], ...]]:
    """(m, keys): the number of blocks (>= radius + 1, each <= 64 bits) and each table's
    key blocks, with the least ``search_cost``. A pair within the radius agrees on some
    m - radius blocks, so a table per such set finds every pair; so does a covering of
    those sets by fewer blocks a key (longer blocks, fewer tables), which wins where the
    queries are many. A covering is looked for only where the fewest tables it could have
    would cost less than the best so far."""
    smallest = max(radius + 1, math.ceil(nbits / 64))
    best = None
    for m in range(smallest, min(nbits, smallest + 16) + 1):
        exact = m - radius
        for key_blocks in range(exact, 0, -1):
            # each key is held by comb(m - k, exact - k) of the comb(m, exact) agreeing sets
            fewest = math.ceil(math.comb(m, exact) / math.comb(m - key_blocks, exact - key_blocks))
            if best is not None and search_cost(n_queries, n_index, nbits, m, fewest, key_blocks) >= best[0]:
                continue
            keys = covering(m, exact, key_blocks)
            if keys is None:
                continue
            cost = search_cost(n_queries, n_index, nbits, m, len(keys), key_blocks)
            if best is None or cost < best[0]:
                best = (cost, m, keys)
    return best[1], best[2]


def _candidate_batches(starts: np.ndarray, counts: np.ndarray, max_pairs: int):
    """Yield (element, position) arrays: element k paired with each position in
    starts[k] .. starts[k] + counts[k] - 1, in batches of about ``max_pairs`` pairs (at
    least one element per batch), so memory stays bounded however big a bucket is."""
    ends = np.cumsum(counts)
    begin = 0
    while begin < len(counts):
        stop = max(begin + 1, int(np.searchsorted(ends, (ends[begin - 1] if begin else 0) + max_pairs,
                                                  side="right")))
        element, position = expand_spans(starts[begin:stop], counts[begin:stop])
        yield element + begin, position
        begin = stop


def expand_spans(starts: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every position of every span (``starts[k]`` up to ``starts[k] + counts[k]``), in
    order, with its span's number k."""
    span = np.repeat(np.arange(len(counts)), counts)
    first = np.cumsum(counts) - counts
    return span, starts[span] + np.arange(len(span)) - first[span]


# a query's bucket holds few entries (0.5 on average at 1M rows): its candidates are
# verified layer by layer (the first entry of every bucket hit, then the second...), which
# needs no expansion of (bucket, position) pairs; past this many layers (big buckets of
# many equal hashes) the rest are expanded in batches
_LAYERS = 4


def _filter_shift(bounds: list[tuple[int, int]], subset: tuple[int, ...]) -> int:
    """The right shift whose low 32 bits of a one-word hash hold the fewest of a table's
    key bits (which every candidate shares, so they filter nothing)."""
    key = {bit for b in subset for bit in range(bounds[b][0], bounds[b][0] + bounds[b][1])}
    first = min(range(33), key=lambda start: len(key.intersection(range(start, start + 32))))
    return 32 - first


def _verify(part: np.ndarray, q: np.ndarray, lo: np.ndarray, counts: np.ndarray, table_words: np.ndarray,
            order: np.ndarray, radius: int, max_pairs: int, index: np.ndarray, shift: int):
    """Yield (q, i, d): queries ``part[q]`` against the index entries at sorted positions
    lo .. lo + counts - 1 of a table, the pairs within ``radius``; ``i`` is the entry's
    index position. ``table_words`` are the index's words in that table's order, read
    without going through ``order``; for one-word hashes only 32 of their bits
    (``(word >> shift)`` as uint32, fewest key bits): at most ``radius`` of those differ
    for a pair, which rules out nearly every candidate from a table half the size (2.5x
    faster to read at 1M rows), and the few left are verified on ``index``'s words."""
    single = part.shape[1] == 1
    if single:  # 1-D takes: a third faster than indexing rows of (N, 1) arrays
        qw, words, whole = part.reshape(-1).take(q), table_words.reshape(-1), index.reshape(-1)
        qf = (qw >> np.uint64(shift)).astype(np.uint32)
    else:
        qw = part[q]
    for layer in range(_LAYERS):
        if layer:
            more = np.flatnonzero(counts > layer)
            if not len(more):
                return
            q, lo, counts, qw = q.take(more), lo.take(more), counts.take(more), qw[more]
            pos = lo + layer
            if single:
                qf = qf.take(more)
        else:
            pos = lo
        if single:
            maybe = np.flatnonzero(np.bitwise_count(qf ^ words.take(pos)) <= radius)
            i = order.take(pos.take(maybe))
            d = np.bitwise_count(qw.take(maybe) ^ whole.take(i))
            close = np.flatnonzero(d <= radius)
            if len(close):
                yield q.take(maybe.take(close)), i.take(close), d.take(close)
            continue
        d = hamming(qw, table_words[pos])
        close = np.flatnonzero(d <= radius)
        if len(close):
            yield q[close], order[pos[close]], d[close]
    more = np.flatnonzero(counts > _LAYERS)
    for h, pos in _candidate_batches(lo[more] + _LAYERS, counts[more] - _LAYERS, max_pairs):
        qq, i = q[more[h]], order[pos]
        d = hamming(part[qq], index[i])
        close = np.flatnonzero(d <= radius)
        if len(close):
            yield qq[close], i[close], d[close]


def _one_word_key(words: np.ndarray, bounds: list[tuple[int, int]], subset: tuple[int, ...],
                  out: np.ndarray | None = None, tmp: np.ndarray | None = None) -> np.ndarray:
    """The table key of one-word hashes (``words``: 1-D int64 view of uint64 hashes): the
    blocks of ``subset`` concatenated, each moved into place by one shift and a mask (in
    place, into ``out``: a quarter of the time of extracting and joining the blocks)."""
    out = np.empty(len(words), np.int64) if out is None else out[:len(words)]
    tmp = np.empty(len(words), np.int64) if tmp is None else tmp[:len(words)]
    runs = []  # neighbouring blocks in order are one range of bits: one shift and mask
    for b in subset:
        start, length = bounds[b]
        if runs and runs[-1][0] + runs[-1][1] == start:
            runs[-1] = (runs[-1][0], runs[-1][1] + length)
        else:
            runs.append((start, length))
    rest = sum(length for _, length in runs)
    for n, (start, length) in enumerate(runs):
        rest -= length
        # an arithmetic shift: the sign bits it brings in are above the mask
        target = out if n == 0 else tmp
        np.right_shift(words, 64 - start - length - rest, out=target)
        mask = ((1 << length) - 1) << rest
        np.bitwise_and(target, mask - (1 << 64) if mask >> 63 else mask, out=target)  # as int64
        if n:
            np.bitwise_or(out, tmp, out=out)
    return out


def _short_key_order(key: np.ndarray, key_bits: int) -> np.ndarray:
    """Positions of ``key`` (at most 32 bits) in key order, in position order within a key:
    two stable sorts of 16-bit halves, which numpy does by radix, in linear time (2M
    22-bit keys: 64 ms, where sorting them packed with their positions took 115)."""
    low_bits = key_bits // 2
    order = np.argsort((key & ((1 << low_bits) - 1)).astype(np.uint16), kind="stable")
    return order.take(np.argsort((key >> low_bits).astype(np.uint16).take(order), kind="stable"))


def pairs_between(queries: np.ndarray | list[np.ndarray], index: np.ndarray, nbits: int, radius: int,
                  max_pairs: int = 4_000_000, chunk: int = 1 << 20, keep=None, on_pairs=None):
    """Every (q, i) with ``queries[q]`` within Hamming ``radius`` of ``index[i]``, with the
    distance, each pair once. Tables are built over ``index`` only (trimmed windows are
    queried, never indexed, so the many windows of one image never meet each other).
    ``queries`` may be a list of arrays (taken as concatenated, positions counted across
    them). Queries go ``chunk`` at a time, their keys made per table: memory stays ~100 MB
    however many windows a million rows bring (all blocks of 49M source windows at once
    were ~2 GB). ``keep(q, i)`` (a mask) drops pairs as they are found: an image's windows
    matching its own picture would otherwise pile up once per table (12 tables x 1M self
    matches at 1M rows). ``on_pairs(q, i, d)``, when given, takes each batch as it is found
    (after ``keep``), the same pair once per table that finds it; then nothing is collected
    and None is returned."""
    empty = (np.empty(0, np.int64),) * 3
    parts = queries if isinstance(queries, list) else [queries]  # concatenated, not copied
    starts = np.cumsum([0] + [len(p) for p in parts])
    n_queries = int(starts[-1])
    if n_queries == 0 or len(index) == 0:
        return empty
    blocks, tables = choose_tables(n_queries, len(index), nbits, radius)
    bounds = _block_bounds(nbits, blocks)
    # the index's blocks in the smallest type that holds them (11-bit blocks: a quarter)
    i_blocks = [_bit_range(index, start, length).astype(
        np.uint16 if length <= 16 else np.uint32 if length <= 32 else np.uint64)
        for start, length in bounds] if index.shape[1] > 1 else []
    # positions in int32 while the index has fewer than 2^31 entries (half the memory)
    dtype = np.int32 if len(index) < 2**31 else np.int64
    found_q, found_i, found_d = [], [], []
    one_word = index.shape[1] == 1
    if one_word:  # keys in place, two buffers for every chunk and table
        key_buf = np.empty(min(chunk, max(len(p) for p in parts)), np.int64)
        tmp_buf = np.empty_like(key_buf)
    for subset in tables:
        key_bits = sum(bounds[b][1] for b in subset)
        if one_word:
            i_key = _one_word_key(index.view(np.int64).reshape(-1), bounds, subset)
            if key_bits > DIRECT_KEY_BITS:  # sorted and searched as unsigned, as the queries
                i_key = i_key.view(np.uint64)
        else:
            i_key = np.zeros(len(index), dtype=np.uint64)
            for b in subset:  # concatenated; bits shifted out past 64 only add candidates
                i_key = (i_key << np.uint64(bounds[b][1])) | i_blocks[b]
        direct = key_bits <= DIRECT_KEY_BITS
        if direct:
            order = _short_key_order(i_key, key_bits).astype(dtype)
        else:
            order = np.argsort(i_key).astype(dtype)  # any order within a bucket: pairs are sets
        if one_word:
            shift = _filter_shift(bounds, subset)
            table_words = (index.reshape(-1).take(order) >> np.uint64(shift)).astype(np.uint32)
        else:
            shift, table_words = 0, index[order]
        if direct:
            # keys this short index a table directly: a query's bucket is one lookup, no
            # sort of the (many) queries and no binary search (4x faster at 1M rows)
            bucket_size = np.bincount(i_key.astype(np.intp, copy=False), minlength=1 << key_bits)
            bucket_start = np.zeros((1 << key_bits) + 1, dtype=dtype)
            np.cumsum(bucket_size, dtype=dtype, out=bucket_start[1:])  # summed in its type: 10x
            # a byte a bucket (4 MB at 22 bits, mostly in cache): its size up to 255, 0 for
            # empty; the starts (16 MB) are read for the queries that hit only (half the
            # time at 1M), and the ends only for buckets of 255 or more
            occupied = np.minimum(bucket_size, 255, out=bucket_size).astype(np.uint8)
            del bucket_size
        else:
            sorted_key = i_key[order]
        del i_key
        for c0, part in ((int(starts[n]) + c, p[c:c + chunk]) for n, p in enumerate(parts)
                         for c in range(0, len(p), chunk)):
            if one_word:
                q_key = _one_word_key(part.view(np.int64).reshape(-1), bounds, subset, key_buf, tmp_buf)
                if not direct:
                    q_key = q_key.view(np.uint64)
            else:
                q_key = np.zeros(len(part), dtype=np.uint64)
                for b in subset:
                    q_key = (q_key << np.uint64(bounds[b][1])) | _bit_range(part, *bounds[b])
            if direct:
                q_key = q_key.astype(np.intp, copy=False)
                sizes = occupied.take(q_key)
                q_of_hit = np.flatnonzero(sizes != 0)  # on bools: 10x faster than on bytes
                key = q_key.take(q_of_hit)
                lo = bucket_start.take(key)
                counts = sizes.take(q_of_hit).astype(dtype)
                big = np.flatnonzero(counts == 255)
                if len(big):
                    counts[big] = bucket_start.take(key.take(big) + 1) - lo.take(big)
                hits = slice(None)
                del key, sizes
            else:
                # sorted needles: the binary searches walk memory in order (10x faster at 1M)
                q_order = np.argsort(q_key)
                needles = q_key[q_order]
                lo = np.searchsorted(sorted_key, needles, side="left")
                counts = np.searchsorted(sorted_key, needles, side="right") - lo
                del needles
                hits = np.flatnonzero(counts != 0)
                q_of_hit = q_order[hits]
            del q_key
            for q, i, d in _verify(part, q_of_hit, lo[hits], counts[hits], table_words, order, radius,
                                   max_pairs, index, shift):
                q = q + c0
                if keep is not None:
                    kept = keep(q, i)
                    q, i, d = q[kept], i[kept], d[kept]
                if on_pairs is not None:
                    on_pairs(q, i, d)
                    continue
                found_q.append(q)
                found_i.append(i)
                found_d.append(d)
        # freed before the next table's are built (two tables' would be ~100 MB at once)
        del order, table_words
        if direct:
            del bucket_start, occupied
        else:
            del sorted_key
    if on_pairs is not None:
        return None
    if not found_q:
        return empty
    q, i, d = (np.concatenate(x).astype(np.int64) for x in (found_q, found_i, found_d))
    # the same pair shares a bucket in several tables: keep it once
    _, first = np.unique(q * len(index) + i, return_index=True)
    return q[first], i[first], d[first]


def near_pairs(words: np.ndarray, nbits: int, radius: int, max_pairs: int = 4_000_000):
    """Every pair (i < j) of rows of ``words`` within Hamming ``radius``, with its distance
    (``pairs_between`` of the rows with themselves). Returns (i, j, d) arrays."""
    return pairs_between(words, words, nbits, radius, max_pairs, keep=lambda q, i: q < i)


def _packed(keys: tuple[np.ndarray, ...]) -> tuple[np.ndarray, list[int]] | None:
    """The keys (the first the least significant) packed into one int64 each, and each
    key's span; None where they are not all integers >= 0 or do not fit."""
    if len(keys[0]) == 0 or any(k.dtype.kind not in "biu" or k.min() < 0 for k in keys):
        return None
    spans = [int(k.max()) + 1 for k in keys]
    if math.prod(spans) >= 1 << 62:
        return None
    packed, room = np.zeros(len(keys[0]), np.int64), 1
    for k, span in zip(keys, spans):
        packed += k.astype(np.int64) * room
        room *= span
    return packed, spans


def _lexsort(keys: tuple[np.ndarray, ...]) -> np.ndarray:
    """``np.lexsort(keys)`` (the last key first; stable), by one stable sort of the keys
    packed into an int64 where they are integers >= 0 that fit (3x faster for millions)."""
    packed = _packed(keys)
    return np.lexsort(keys) if packed is None else np.argsort(packed[0], kind="stable")


def closest_per_pair(lo: np.ndarray, hi: np.ndarray, distance: np.ndarray, tiebreak: np.ndarray,
                     *more: np.ndarray) -> tuple[np.ndarray, ...]:
    """Each pair (lo, hi) once: its link with the smallest distance, then the smallest
    ``tiebreak``. Returns (lo, hi, distance, tiebreak, *more) of those links, sorted by
    pair."""
    keys = (tiebreak, distance, hi, lo)
    packed = None if more else _packed(keys)
    if packed is not None:
        # nothing but the keys: links with equal packed keys are equal, so the packed
        # values are sorted themselves (no order to keep, nothing to gather: 2.7x faster
        # than the stable argsort for 6M links) and unpacked after
        values, spans = packed
        values = np.sort(values)
        pair = values // (spans[0] * spans[1])
        values = values[np.r_[True, pair[1:] != pair[:-1]]]
        columns = []
        for k, span in zip(keys, spans):
            values, column = np.divmod(values, span)
            columns.append(column.astype(k.dtype, copy=False))
        tiebreak, distance, hi, lo = columns
        return lo, hi, distance, tiebreak
    order = _lexsort(keys)
    columns = [x[order] for x in (lo, hi, distance, tiebreak, *more)]
    lo, hi = columns[0], columns[1]
    first = np.r_[True, (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])] if len(lo) else np.zeros(0, bool)
    return tuple(x[first] for x in columns)


class HashSet:
    """Hashes of items: ``words`` (K, nwords) uint64 (or a list of parts, taken as
    concatenated: see ``HashStore.parts``), item k's being rows ends[k-1]:ends[k];
    ``owner[k]`` is the id item k has in a search (-1: not part of it)."""

    def __init__(self, words: np.ndarray, ends: np.ndarray, owner: np.ndarray):
        self.words, self.ends, self.owner = words, ends, owner

    def owners(self, rows: np.ndarray) -> np.ndarray:
        return self.owner[np.searchsorted(self.ends, rows, side="right")]


class HashStore:
    """Hashes of many items (``<method>``, ``<method>_mirror``, ``<method>_trims``): from a
    details dict's hex (``add``, a row at a time, kept as raw bytes: no Python string per
    hash) or from a clean shard's hashes file (``add_file``: only where they are, read
    when a search needs them, so a gather holds one level's hashes at a time)."""

    def __init__(self, method: str, nbits: int):
        self.method, self.nbits = method, nbits
        self.nwords = max(1, math.ceil(nbits / 64))
        self.width = self.nwords * 16  # hex digits per hash
        # per kind, in item order: bytearrays (rows added) and (path, offset, bytes) spans
        self.pieces: dict[str, list] = {key: [] for key in HASH_KEYS}
        self.counts = {key: array("i") for key in HASH_KEYS}
        self._words: dict[str, np.ndarray] = {}
        self._new_buffers()

    def _new_buffers(self) -> None:
        # (details key, buffer, counts) per kind: the loop of add, a million times
        self._slots = []
        for key in HASH_KEYS:
            self.pieces[key].append(bytearray())
            self._slots.append((self.method + key, self.pieces[key][-1], self.counts[key]))

    def add(self, d: dict | None) -> None:
        width, fromhex = self.width, bytes.fromhex
        for name, raw, counts in self._slots:
            value = (d.get(name) if d else None) or ""
            raw += fromhex(value)
            counts.append(len(value) // width)

    def add_file(self, path: str, spans: dict[str, tuple[int, int]], counts: dict[str, np.ndarray]) -> None:
        """Many items at once: per kind, the (offset, bytes) of their concatenated
        big-endian hashes in the file at ``path`` and the hashes per item."""
        for key in HASH_KEYS:
            total = int(np.sum(counts[key], dtype=np.int64))
            if spans[key][1] != total * self.width // 2:
                raise ValueError(f"{path}: {spans[key][1]} bytes of {self.method}{key} do not "
                                 f"hold {total} hashes of {self.nbits} bits")
            self.pieces[key].append((path, *spans[key]))
            self.counts[key].frombytes(np.asarray(counts[key], dtype=np.int32).tobytes())
        self._new_buffers()

    def words(self, key: str) -> np.ndarray:
        """One kind's hashes as (K, nwords) uint64, gathered into one buffer on first use."""
        if key not in self._words:
            parts = self.parts(key)
            out = np.empty((sum(len(p) for p in parts), self.nwords), np.uint64)
            at = 0
            for n, part in enumerate(parts):
                out[at:at + len(part)] = part[:]
                at += len(part)
                parts[n] = None  # each part freed as it is copied
            self.pieces[key] = []
            self._words[key] = out
        return self._words[key]

    def parts(self, key: str) -> list:
        """One kind's hashes in item order as arrays (rows added) and ``FileWords`` (read
        a slice at a time): the queries of a search, which never need them all at once
        (the 49 windows of a million sources: 400 MB)."""
        out, pieces = [], self.pieces[key]
        for n, piece in enumerate(pieces):
            if isinstance(piece, bytearray):  # hex of rows added: decoded once, in place
                pieces[n] = piece = words_of(piece, self.nbits) if piece else None
            if isinstance(piece, tuple):
                out.append(FileWords(*piece, self.nwords))
            elif piece is not None:
                out.append(piece)
        return out

    def release(self) -> None:
        """Frees the hashes after their last search."""
        self._words.clear()
        self.pieces = {key: [] for key in HASH_KEYS}

    def sets(self, owner: np.ndarray) -> dict[str, HashSet]:
        """{kind: HashSet} of every item's hashes, item k owned by ``owner[k]``; the
        windows (``_trims``, only ever queried) as ``parts``."""
        out = {}
        for key in HASH_KEYS:
            ends = np.cumsum(np.frombuffer(self.counts[key], dtype=np.int32), dtype=np.int64)
            out[key] = HashSet(self.parts(key) if key == "_trims" else self.words(key), ends, owner)
        return out


class FileWords:
    """(K, nwords) uint64 hashes at ``offset`` of a file (little-endian words), read when
    sliced: ``len()`` and ``[a:b]`` as an array's."""

    def __init__(self, path: str, offset: int, size: int, nwords: int):
        self.path, self.offset, self.nwords = path, offset, nwords
        self.rows = size // (8 * nwords)

    def __len__(self) -> int:
        return self.rows

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, _ = rows.indices(self.rows)
        count = max(0, stop - start) * self.nwords
        words = np.fromfile(self.path, dtype="<u8", count=count, offset=self.offset + start * 8 * self.nwords)
        if len(words) != count:
            raise ValueError(f"{self.path}: truncated")
        return words.astype(np.uint64, copy=False).reshape(-1, self.nwords)


def duplicate_pairs(sets: dict[str, HashSet], nbits: int, radius: int, flips: bool, merge_every: int = 1 << 22):
    """Pairs (a < b) of owners whose pictures match within ``radius``: any window of one
    (the whole picture and its trims) against the other's whole picture, or its mirror
    image when ``flips`` (items owned by -1 take no part). Returns (a, b, distance,
    mirrored) with each pair once, at its smallest distance (unmirrored first on ties).
    The result does not depend on the order of the hashes, only on who owns them. The links
    found are merged to one per pair whenever ``merge_every`` are held."""
    whole, mirror, trims = sets[""], sets["_mirror"], sets["_trims"]
    windows = trims.words if isinstance(trims.words, list) else [trims.words]
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

    # each pair of owners at its closest as the batches come: a repost-heavy set finds the
    # same owner pair through millions of window pairs, which are not all held and sorted
    links = [(np.zeros(0, np.int64),) * 3 + (np.zeros(0, bool),)]  # (lo, hi, distance, mirrored)
    held, limit = 0, merge_every

    def merged():
        return closest_per_pair(*(np.concatenate(column) for column in zip(*links)))

    def add(q, i, d):
        nonlocal held, limit
        a, b, mirrored = owners(q, i)
        other = (a != b) & (a >= 0) & (b >= 0)
        a, b = a[other], b[other]
        links.append((np.minimum(a, b), np.maximum(a, b), d[other].astype(np.int64), mirrored[other]))
        held += len(a)
        if held > limit:  # bounded memory: merge what is held so far
            links[:] = [merged()]
            held = len(links[0][0])
            limit = max(limit, 2 * held)
    # each whole picture finds itself once a table (12M of the 13M pairs found at 1M rows):
    # dropped as found, before their owners are looked up
    pairs_between([whole.words, *windows], index, nbits, radius, on_pairs=add,
                  keep=lambda q, i: (q != i) | (q >= n_whole))
    return merged()
