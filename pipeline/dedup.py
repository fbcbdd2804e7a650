"""dedup (gather): exact, source and near duplicates across every clean shard.

    python -m pipeline.dedup --output clean/dedup.tsv --config JSON clean/*/manifest.tsv

Gathers every shard's kept rows and writes one row per image: exact duplicates (same
decoded pixels), source duplicates (faces at the same place of two source pictures that
match as a whole) and near duplicates (face crops within a Hamming radius) are dropped
with ``details.duplicate_of`` naming the kept image and ``details.distance``. The keeper
is the best source (resolution, then encoding quality, then crop size, file size, id),
and there is no chaining: every drop is within the radius of its own keeper
(``assign_keepers``). The hashes come from the clean shards' hashes files (pipeline/clean.py); the
search is pipeline/hamming.py.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
from array import array

import numpy as np

from pipeline import hamming
from pipeline.clean import HASH_KINDS, flips_on, hashes_index, hashes_path, read_span, resolved
from pipeline.manifest import (ENCODING, ERRORS, HEADER_BYTES, Drop, atomic_write_with, declare,
                               id_sort_keys, line_row, load_config_arg, manifest_lines_of, plain_fields,
                               row_line)
from util.files import copy_range

_LINK = ("duplicate_of", "distance", "mirrored")
DROPS = declare(
    Drop("exact_duplicate", "the same decoded pixels as the image kept", _LINK),
    Drop("source_duplicate", "its source picture matches the kept face's source, same place",
         (*_LINK, "duplicate_source")),
    Drop("near_duplicate", "the face crop matches the kept one within the Hamming radius", _LINK),
)


def config_keys(config: dict) -> dict:
    """Exactly the config the gather reads (its rule's param): the duplicate settings of
    the clean block, flips resolved as the clean shards hashed them."""
    clean = resolved(config)
    return {k: clean[k] for k in ("exact_duplicates", "near_duplicates")}


def assign_keepers(n: int, priority: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Greedy, without chaining: in ``priority`` order, an item not yet assigned keeps
    itself and claims every unassigned item it is paired with. Every dropped item is thus
    paired directly (within the radius) with its keeper, and the keeper is the best item
    of its neighbourhood. Returns (keeper per item, index of the pair that linked it or -1)."""
    from scipy.sparse import csr_matrix
    edge = np.arange(len(a))
    graph = csr_matrix((np.r_[edge, edge] + 1, (np.r_[a, b], np.r_[b, a])), shape=(n, n))
    link = np.full(n, -1, dtype=np.int64)
    indptr, indices, data = graph.indptr, graph.indices, graph.data
    # an item in no pair keeps itself: the loop walks the paired ones only (a few percent
    # of a million rows), in priority order, on Python lists
    paired = np.diff(indptr) > 0
    keeper = np.where(paired, -1, np.arange(n, dtype=np.int64))
    assigned = keeper.tolist()
    indptr_l = indptr.tolist()
    for k in priority[paired[priority]].tolist():
        if assigned[k] >= 0:
            continue
        assigned[k] = k
        lo, hi = indptr_l[k], indptr_l[k + 1]
        for j, e in zip(indices[lo:hi].tolist(), data[lo:hi].tolist()):
            if assigned[j] < 0:
                assigned[j] = k
                link[j] = e - 1
    return np.array(assigned, dtype=np.int64), link


# a face of a duplicate source matches the face at the same place in the keeper's source:
# centres within this fraction of the source's sides (trims move them up to 9 %), sizes
# within this ratio
FACE_MATCH_OFFSET = 0.12
FACE_MATCH_SIZE = 1.5


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
        self.faces = hamming.HashStore(method, nbits)
        self.blocks = hamming.HashStore(method, nbits)
        # per manifest read, where its kept rows' lines lie (pass two copies them through)
        self.lines: list[np.ndarray | None] = []

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, id: str, parent_id: str, width: int, height: int, d: dict, hashes: bool = True) -> None:
        """One row; ``hashes=False``: its hashes come from its shard's hashes file
        (``add_hashes``), not from ``d``."""
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
        if hashes:
            self.faces.add(d)
        if source:
            self.block.append(len(self.block_size) // 2)
            self.block_size.extend((source.get("width") or 0, source.get("height") or 0))
            if hashes:
                self.blocks.add(source)
        else:
            self.block.append(-1)

    def add_lines(self, kept_spans: array, kept: int) -> None:
        """The next manifest's ``kept`` rows' lines: ``kept_spans`` (their start and end
        offsets, from ``manifest_lines_of``), or None where some were read as rows."""
        spans = np.frombuffer(kept_spans, dtype=np.int64).reshape(-1, 2)
        self.lines.append(spans if len(spans) == kept else None)

    def add_columns(self, path: str, index: tuple[dict, dict[str, tuple[int, int]]], ids: list[str],
                    parents: list[str], crop_pixels: array) -> None:
        """Rows of a shard whose hashes file has the fixed columns (``clean.dedup_columns``):
        what ``add`` reads of the details, without them; then their hashes. ``index``: the
        file's ``hashes_index``."""
        n = len(ids)
        spans = index[1]
        with open(path, "rb") as f:
            def read(name, dtype):
                return np.frombuffer(read_span(f, spans[name]), dtype=dtype)
            keys = read("keys", "<f8").reshape(-1, 3)
            box, digest, has_source = read("box", "<f8"), read("digest", np.uint8), read("has_source", np.uint8)
            source_size = read("source_size", "<f8")
        if len(keys) != n or len(box) != 4 * n or len(digest) != 32 * n or len(has_source) != n:
            raise ValueError(f"dedup: {path} holds the columns of {len(keys)} rows; its manifest has {n} "
                             "kept: rerun clean")
        self.ids.extend(ids)
        self.sources.extend(parents)
        for k, column in ((0, keys[:, 0]), (1, keys[:, 1]), (2, None), (3, keys[:, 2])):
            self.keys[k].frombytes(crop_pixels.tobytes() if column is None
                                   else np.ascontiguousarray(column, dtype=np.float64).tobytes())
        raw = digest.tobytes()
        self.digests.extend(raw[i:i + 32] for i in range(0, len(raw), 32))
        self.box.frombytes(box.astype(np.float64).tobytes())
        first = len(self.block_size) // 2
        block = np.where(has_source > 0, first + np.cumsum(has_source, dtype=np.int64) - 1, -1)
        self.block.frombytes(block.astype(np.int64).tobytes())
        self.block_size.frombytes(source_size.astype(np.float64).tobytes())
        self.add_hashes(path, n, int(np.count_nonzero(has_source)), index)

    def add_hashes(self, path: str, rows: int, sources: int, index: tuple | None = None) -> None:
        """The hashes of the last ``rows`` rows added (``sources`` of them with a source
        block) from their shard's hashes file (``clean.write_hashes``): the counts now,
        the hashes when their search reads them."""
        header, spans = index or hashes_index(path)
        with open(path, "rb") as f:
            for level, store, n in (("face", self.faces, rows), ("source", self.blocks, sources)):
                counts = {kind: np.frombuffer(read_span(f, spans[f"{level}{kind}.count"]), dtype="<i4")
                          for kind in HASH_KINDS}
                if header["method"] != store.method or header["nbits"] != store.nbits or any(
                        len(c) != n for c in counts.values()):
                    raise ValueError(f"dedup: {path} holds {header['method']} {header['nbits']}-bit hashes "
                                     f"of {len(counts[''])} {level}s; its manifest has {n} kept "
                                     f"(expected {store.method}, {store.nbits} bits): rerun clean")
                store.add_file(path, {kind: spans[level + kind] for kind in HASH_KINDS}, counts)

    def priority(self) -> np.ndarray:
        """``keeper_priority``: best copy first; ties by id, then input order."""
        keys = [-np.frombuffer(col, dtype=np.float64) for col in self.keys]
        order = np.lexsort(keys[::-1]).astype(np.int64)  # stable: input order within ties
        # only runs equal on every key go to the ids (sorting a million ids in Python was
        # 0.9 s; ties are few)
        starts = np.flatnonzero(run_starts(keys, order))
        ends = np.r_[starts[1:], len(order)]
        ids = self.ids
        for run in np.flatnonzero(ends - starts > 1).tolist():
            a, b = int(starts[run]), int(ends[run])
            order[a:b] = sorted(order[a:b].tolist(), key=ids.__getitem__)  # stable
        return order

    def face_positions(self, rows: np.ndarray, blocks: np.ndarray) -> tuple[np.ndarray, ...]:
        """Centre x, y and width of faces ``rows``, each in source block ``blocks``, as
        fractions of the source's sides, and whether the source's size is known."""
        box = np.frombuffer(self.box, dtype=np.float64).reshape(-1, 4)[rows]
        width, height = np.frombuffer(self.block_size, dtype=np.float64).reshape(-1, 2)[blocks].T
        with np.errstate(divide="ignore", invalid="ignore"):
            x, y, size = (box[:, 0] + box[:, 2] / 2) / width, (box[:, 1] + box[:, 3] / 2) / height, box[:, 2] / width
        whole = np.isnan(box[:, 0])  # crop.method none: the face is the whole picture
        x[whole], y[whole], size[whole] = 0.5, 0.5, 1.0
        return x, y, size, (width != 0) & (height != 0)


def sorted_groups(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(order, starts): the positions of ``texts`` in sorted order (equal texts in input
    order) and where each run of equal texts begins in it; source ids by their
    ``id_sort_keys`` (a million in hash order: 0.2 s, where sorting the strings took 1.0)."""
    keys = id_sort_keys(texts)
    if keys is None:
        order = sorted(range(len(texts)), key=texts.__getitem__)
        starts = [g for g in range(len(texts)) if not g or texts[order[g]] != texts[order[g - 1]]]
        return np.array(order, dtype=np.int64), np.array(starts, dtype=np.int64)
    order = np.lexsort(keys).astype(np.int64)
    return order, np.flatnonzero(run_starts(keys, order)).astype(np.int64)


def run_starts(keys: list[np.ndarray], order: np.ndarray) -> np.ndarray:
    """A mask over ``order``: True where a run of items equal on every key begins (NaN
    equal to NaN, as ``np.lexsort`` groups them)."""
    new = np.zeros(len(order), dtype=bool)
    new[:1] = True
    for key in keys:
        k = key.take(order)
        differ = k[1:] != k[:-1]
        if k.dtype.kind == "f":
            differ &= ~(np.isnan(k[1:]) & np.isnan(k[:-1]))
        new[1:] |= differ
    return new


def source_face_pairs(cols: DedupColumns, alive: np.ndarray, near: dict) -> tuple[np.ndarray, ...]:
    """Pairs of faces cut from sources that are duplicates of each other (whole pictures
    within the radius: reposts, rescales, re-encodes, crops by a few percent, mirrors), each
    face paired with the face at the same place of the other source. Returns
    (a, b, distance, mirrored) of positions in ``alive`` (the rows still in the running)."""
    nbits = near["hash_size"] ** 2
    # the faces with source measures, grouped by source id (groups in sorted id order,
    # faces in alive order): arrays, not a dict of lists (~300 MB at 1M rows)
    with_source = np.flatnonzero(np.frombuffer(cols.block, dtype=np.int64)[alive] >= 0)
    order, starts = sorted_groups([cols.sources[k] for k in alive[with_source].tolist()])
    members = with_source[order]  # positions in alive
    del order
    ends = np.r_[starts[1:], len(members)] if len(starts) else starts
    # a source's measures: those of its last face here
    block_of = np.frombuffer(cols.block, dtype=np.int64)[alive[members[ends - 1]]]
    owner = np.full(len(cols.block_size) // 2, -1, dtype=np.int64)  # by block: its source's number
    owner[block_of] = np.arange(len(starts))
    sa, sb, sd, sm = hamming.duplicate_pairs(cols.blocks.sets(owner), nbits, near["radius"], flips_on(near))
    cols.blocks.release()  # not searched again: the face search runs without them
    sizes = ends - starts
    positions = cols.face_positions(alive[members], block_of[np.repeat(np.arange(len(starts)), sizes)])
    a, b, pair = matched_faces(sa, sb, sm, starts, sizes, *positions)
    a, b = members[a], members[b]
    return (np.minimum(a, b).astype(np.int64), np.maximum(a, b).astype(np.int64),
            sd[pair].astype(np.int64), sm[pair].astype(bool))


def matched_faces(sa: np.ndarray, sb: np.ndarray, mirrored: np.ndarray, starts: np.ndarray,
                  sizes: np.ndarray, x: np.ndarray, y: np.ndarray, size: np.ndarray,
                  known: np.ndarray) -> tuple[np.ndarray, ...]:
    """For each pair of duplicate sources (sa, sb) and each face k of sb (faces of group g:
    ``starts[g]`` up to ``starts[g] + sizes[g]``, at x, y, size; ``known``: its source's size
    is), the face of sa at the same place: centres within FACE_MATCH_OFFSET, widths within
    FACE_MATCH_SIZE, x mirrored for a mirrored pair; the closest, the first on ties.
    Returns (k, its match, the pair's index), in (pair, k) order; faces without a match left out."""
    pair_of_k, k = hamming.expand_spans(starts[sb], sizes[sb])
    kx = np.where(mirrored[pair_of_k], 1.0 - x[k], x[k])
    first_source = sa[pair_of_k]
    of_k, j = hamming.expand_spans(starts[first_source], sizes[first_source])  # every face of sa, for each k
    with np.errstate(divide="ignore", invalid="ignore"):  # unknown source sizes: not compared
        ratio = size[k][of_k] / size[j]
        offset = np.maximum(np.abs(kx[of_k] - x[j]), np.abs(y[k][of_k] - y[j]))
    fits = np.flatnonzero(known[k][of_k] & known[j] & (1 / FACE_MATCH_SIZE <= ratio)
                          & (ratio <= FACE_MATCH_SIZE) & (offset <= FACE_MATCH_OFFSET))
    fits = fits[np.lexsort((fits, offset[fits], of_k[fits]))]
    best = fits[np.r_[True, of_k[fits][1:] != of_k[fits][:-1]]] if len(fits) else fits
    return k[of_k[best]], j[best], pair_of_k[of_k[best]]


def _may_share_a_digest(digests: list, priority: np.ndarray) -> np.ndarray:
    """The items of ``priority`` (in its order) whose pixel digest may equal another's:
    where every digest is 32 bytes, those whose first 8 bytes do (one sort: at 1M bench
    rows, 2 % of them, where a dict of every digest took a second); else all."""
    try:  # digests are 32 bytes, or a text that is not hex, or None
        joined = b"".join(digests)
    except TypeError:
        return priority
    if len(joined) != 32 * len(digests):
        return priority
    first = np.frombuffer(joined, dtype=np.uint64)[::4]
    order = np.argsort(first, kind="stable")
    head = first.take(order)
    same = head[1:] == head[:-1]
    shared = np.zeros(len(first), dtype=bool)
    shared[order[1:][same]] = True
    shared[order[:-1][same]] = True
    return priority[shared.take(priority)]


def dedup_verdicts(cols: DedupColumns, cfg: dict) -> dict[int, tuple[str, dict]]:
    """{item: (reason, details)} of the items of ``cols`` that dedup drops.

    Drops carry ``duplicate_of`` (the id kept) and ``distance`` (Hamming bits, never above
    the radius: there is no chaining), ``mirrored`` when the match was to the mirrored
    picture, and for source duplicates ``duplicate_source`` (the kept face's source id).
    Exact duplicates (same decoded pixels) go first; among what they keep, a face is a
    ``source_duplicate`` when its whole source picture matches another source and the
    faces sit at the same place, a ``near_duplicate`` when the face crops match. The
    keeper is the best copy (``DedupColumns.priority``).
    """
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
        for k in _may_share_a_digest(digests, priority).tolist():  # the best copy of each keeps it
            keeper = best_with.setdefault(digests[k] or k, k)
            if keeper != k:
                verdict[k] = ("exact_duplicate", {"duplicate_of": ids[keeper], "distance": 0})
                exact_of[k] = keeper
        del best_with
        in_running = np.ones(n, dtype=bool)
        in_running[list(verdict)] = False
        alive = np.flatnonzero(in_running)

    near = cfg["near_duplicates"]
    if near["method"] != "none" and len(alive) > 1:
        nbits = near["hash_size"] ** 2
        kinds, pairs = [], []
        if near["sources"]:
            a, b, d, m = source_face_pairs(cols, alive, near)
            pairs.append((a, b, d, m))
            kinds.append(np.zeros(len(a), dtype=np.int8))  # 0: source level
        owner = np.full(n, -1, dtype=np.int64)  # by row: its position among the alive
        owner[alive] = np.arange(len(alive))
        a, b, d, m = hamming.duplicate_pairs(cols.faces.sets(owner), nbits, near["radius"], flips_on(near))
        cols.faces.release()
        pairs.append((a, b, d, m))
        kinds.append(np.ones(len(a), dtype=np.int8))  # 1: crop level
        a, b, d, m = (np.concatenate(x) for x in zip(*pairs))
        # one link per pair (a < b on both levels): the closest; source level first on ties
        a, b, d, kind, m = hamming.closest_per_pair(a, b, d, np.concatenate(kinds), m)
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


def dedup_manifests(paths: list[str], cfg: dict, output: str) -> dict[str, int]:
    """``dedup_verdicts`` over the kept rows of the manifests at ``paths``, written to
    ``output`` (the same bytes as the row path, tests/dedup_reference.py ``dedup``) in two
    passes that hold no rows: the first reads what dedup needs into ``DedupColumns``, the
    second copies each kept line through, or writes its drop row. Returns the count per
    verdict ("keep" and the drop reasons)."""
    cols = read_dedup_columns(paths, cfg["near_duplicates"])
    verdict = dedup_verdicts(cols, cfg)
    n, lines = len(cols), cols.lines
    del cols
    write_dedup(paths, verdict, output, lines)
    counts = {"keep": n - len(verdict)}
    for reason, _ in verdict.values():
        counts[reason] = counts.get(reason, 0) + 1
    return counts


def read_dedup_columns(paths: list[str], near: dict) -> DedupColumns:
    """Pass one of ``dedup_manifests``: the kept rows' ``DedupColumns``, from the lines."""
    cols = DedupColumns(near["method"], near["hash_size"] ** 2)
    loads = json.loads
    for path in paths:
        # the clean step writes the hashes beside the manifest; a manifest without that
        # file (written by hand, or by an older clean) carries them in its details
        side = hashes_path(path)
        in_details = not os.path.exists(side)
        index = None if in_details else hashes_index(side)
        if index and "keys" in index[1]:
            _add_shard_columns(cols, path, side, index)
            continue
        rows, blocks = len(cols), len(cols.block_size)
        spans = array("q")
        for line, is_kept, f in manifest_lines_of(path, spans):
            if not is_kept:
                continue
            if line is None:  # a row (a quoted name...)
                cols.add(f.id, f.parent_id, f.width, f.height, f.peek_details(), in_details)
                continue
            text = f[8]  # the quoted JSON as bytes: unquoted and parsed without a str copy
            try:
                details = loads(text[1:-1].replace(b'""', b'"') if text[:1] == b'"' else text)
            except UnicodeDecodeError:  # a name that is not UTF-8: as the row path reads it
                details = line_row(f).peek_details()
            cols.add(f[0].decode(ENCODING, ERRORS), f[2].decode(ENCODING, ERRORS), int(f[4]),
                     int(f[5]), details, in_details)
        cols.add_lines(spans, len(cols) - rows)
        if not in_details:
            cols.add_hashes(side, len(cols) - rows, (len(cols.block_size) - blocks) // 2, index)
    return cols


def _add_shard_columns(cols: DedupColumns, path: str, side: str, index: tuple) -> None:
    """A shard whose hashes file has the fixed columns: of its lines only the ids and the
    crop size are read (no details parsed: ~10 s of a million-row gather)."""
    ids, parents, crop_pixels = [], [], array("d")
    spans = array("q")
    for line, is_kept, f in manifest_lines_of(path, spans):
        if not is_kept:
            continue
        if line is None:  # a row (a quoted name...)
            ids.append(f.id)
            parents.append(f.parent_id or f.id)
            crop_pixels.append(f.width * f.height)
            continue
        id = f[0].decode(ENCODING, ERRORS)
        ids.append(id)
        parents.append(f[2].decode(ENCODING, ERRORS) or id)
        crop_pixels.append(int(f[4]) * int(f[5]))
    cols.add_lines(spans, len(ids))
    cols.add_columns(side, index, ids, parents, crop_pixels)


def write_dedup(paths: list[str], verdict: dict[int, tuple[str, dict]], output: str,
                lines: list[np.ndarray | None] | None = None) -> None:
    """Pass two of ``dedup_manifests``: every kept row of ``paths`` (the k-th is item k),
    its line copied through, or its drop row when ``verdict`` has it. ``lines`` (pass
    one's ``DedupColumns.lines``): a manifest whose kept lines are known is copied in runs
    of lines that follow each other in the file, by the kernel, none read again (reading
    them was half of this pass at 1M rows, writing them from Python most of the rest)."""
    drops = np.array(sorted(verdict), dtype=np.int64)

    def drop_line(row, k: int) -> bytes:
        reason, details = verdict[k]
        row.details  # parsed: the drop's keys merge in sorted, as they always did
        return row_line(row.drop(reason, details=details)).encode(ENCODING, ERRORS)

    def write(f):
        f.write(HEADER_BYTES)
        k = 0
        for n, path in enumerate(paths):
            spans = lines[n] if lines is not None else None
            if spans is not None:
                _copy_kept_lines(f, path, spans, k, drops[np.searchsorted(drops, k):np.searchsorted(
                    drops, k + len(spans))], drop_line)
                k += len(spans)
                continue
            for line, is_kept, row in manifest_lines_of(path):
                if not is_kept:
                    continue
                if k in verdict:
                    f.write(drop_line(line_row(row) if line is not None else row, k))
                elif line is not None:
                    f.write(line)  # as read: the clean step writes canonical (sorted) JSON
                else:
                    row.details  # re-serialized, as the row path did
                    f.write(row_line(row).encode(ENCODING, ERRORS))
                k += 1
    atomic_write_with(output, write)


def _copy_kept_lines(out, path: str, spans: np.ndarray, first: int, drops: np.ndarray, drop_line) -> None:
    """Writes to ``out`` the kept lines (items ``first``, ``first`` + 1...) at ``spans``
    (start, end offsets) of the manifest at ``path``, item k in ``drops`` (sorted) as
    ``drop_line(its row, k)``: each run of lines that follow each other in the file
    copied as one range of its bytes."""
    if not len(spans):
        return
    # a run ends where the next kept line does not start at its end (a dropped row or a
    # blank line between them), and around each drop
    drops = drops - first
    cuts = np.union1d(np.flatnonzero(spans[1:, 0] != spans[:-1, 1]) + 1, np.r_[drops, drops + 1])
    bounds = np.r_[0, cuts[(cuts > 0) & (cuts < len(spans))], len(spans)].tolist()
    dropped = set(drops.tolist())
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        for a, b in zip(bounds[:-1], bounds[1:]):
            start, end = int(spans[a, 0]), int(spans[b - 1, 1])
            if a in dropped:  # a run of one
                f.seek(start)
                body = f.read(end - start).removesuffix(b"\n")
                out.write(drop_line(line_row(plain_fields(body)), first + a))
                continue
            copy_range(f, out, start, end - start)
            if end == size and os.pread(f.fileno(), 1, end - 1) != b"\n":
                out.write(b"\n")  # the file's last line, without its newline


# ---------------------------------------------------------------- CLI


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", required=True, help="dedup.tsv to write")
    p.add_argument("--config", required=True, help="the clean config block as JSON")
    p.add_argument("manifests", nargs="*", help="every clean shard manifest.tsv")
    a = p.parse_args(argv)
    counts = dedup_manifests(a.manifests, load_config_arg(a.config), a.output)
    print(f"dedup: {counts['keep']}/{sum(counts.values())} kept, "
          f"{counts.get('exact_duplicate', 0)} exact, "
          f"{counts.get('source_duplicate', 0)} source and "
          f"{counts.get('near_duplicate', 0)} near duplicates dropped")


if __name__ == "__main__":
    main()
