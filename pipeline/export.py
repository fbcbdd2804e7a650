"""export: the dataset as NVIDIA StyleGAN TFRecords and a stylegan2-ada-pytorch ZIP.

TFRecords follow NVIDIA's TF1 dataset_tool.py exactly: ``<dir>/<name>-rNN.tfrecords`` for
every level NN from log2(R) down to 2, uncompressed, records in the order of
``np.random.RandomState(123).shuffle(arange(N))`` over the images sorted by id; each
record a tf.train.Example with ``shape`` (Int64List [C,H,W]) and ``data`` (raw uint8 CHW);
each lower level is the 2x2 mean of the previous level's *unquantized* float image,
quantized with rint + clip. The ZIP is ZIP_STORED ``00000/img00000000.png`` + dataset.json,
with fixed timestamps so two runs give the same bytes.

    python -m pipeline.export --name N --folder R/export --config JSON --dedup DEDUP NORM_MANIFESTS...
    python -m pipeline.export --name N --folder R/ranked --config JSON --from-export R/export/manifest.tsv \
        --scores R/rank/scores.tsv --rejects FILE --drop-bottom-fraction F
    python -m pipeline.export --name N --folder R/export --tfrecords-of R/export/manifest.tsv
    python -m pipeline.export --name N --folder R/export --zip-of R/export/manifest.tsv

Config ``tfrecords: false`` / ``zip: false`` skip those files (the manifest still records
each image's ``tfrecord_position``); ``--tfrecords-of`` / ``--zip-of`` write them later
for an exported manifest, the same bytes a one-step export writes. The workflow uses
them as separate rules, so a setting that changes only the ZIP never retrains.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import zipfile
from array import array
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from PIL import Image
from tqdm import tqdm

from pipeline.manifest import (HEADER_BYTES, Drop, Row, ShardDir, atomic_write_with, declare, dropped_ids,
                               id_order, iter_manifest, iter_manifests, kept, load_config_arg,
                               manifest_lines_of, read_manifest, row_line, write_manifest)
from pipeline.rank import read_scores
from util.config import with_defaults

# the page's note: a row's error and the sizes its rows carry from ingest and clean
_NOTE = ("error", "bytes", "file_bytes", "colorful_fraction")
# Every reason an exported set (the ranked dataset, a cleaning round's set: pipeline/rounds.py)
# lists an image as dropped for, with the score it had; and the page's funnel's word for the
# faces the dataset does not list (dedup's duplicates, counted, not rows).
DROPS = declare(
    Drop("rejected", "in the rejects file", ("score",), note=_NOTE),
    Drop("bottom_fraction", "in the worst rank.drop_bottom_fraction", ("score", "round"), note=_NOTE),
    Drop("below_threshold", "scored below rank.drop_below by its round's network",
         ("score", "round", "threshold"), note=_NOTE),
    Drop("duplicate", "not exported (a duplicate)"),
)


def config_keys(config: dict) -> dict:
    """Exactly the config an export with files reads (rule ranked_export's param; the
    dataset gather writes only the manifest: rules/export.smk)."""
    return dict(config["export"])

SHUFFLE_SEED = 123  # NVIDIA dataset_tool.py: TFRecordExporter.choose_shuffled_order
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # the earliest date ZIP can store: fixed for reproducibility


# ---------------------------------------------------------------- choosing the images

def dataset_rows(normalized: Iterable[Row], dedup: Iterable[Row] | set[str]) -> list[Row]:
    """Normalized keeps minus dedup drops (rows, or the set of dropped ids), sorted by id
    (the order both tools index by)."""
    duplicates = dedup if isinstance(dedup, set) else {r.id for r in dedup if not r.kept}
    return sorted((r for r in kept(normalized) if r.id not in duplicates), key=lambda r: r.id)


def read_rejects(path: str | os.PathLike | None, warn=None) -> set[str]:
    """The review page's rejects.txt: one image id (or source path) a line, '#' comments.

    UTF-8 with or without a BOM, any line ending. A line that is not UTF-8 (a file saved as
    Latin-1) is reported with its number and read byte for byte, so it still matches a
    source whose name has those bytes; a folder stops with one clear line.
    """
    if not path or not Path(path).exists():
        return set()
    if Path(path).is_dir():
        raise SystemExit(f"faceprep: the rejects file {str(path)!r} is a folder; expected a "
                         "text file with one image id per line")
    warn = warn or (lambda msg: print(msg, file=sys.stderr))
    data = Path(path).read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    out = set()
    for n, raw in enumerate(data.splitlines(), 1):  # LF, CRLF or CR
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            warn(f"{path}: line {n} is not UTF-8 (byte {e.start}); read as raw bytes")
            line = raw.decode("utf-8", "surrogateescape")
        if s := line.split("#", 1)[0].strip():
            out.add(s)
    return out


def ranked_rows(dataset: list[Row], scores: dict[str, float], rejects: set[str],
                drop_bottom_fraction: float) -> list[Row]:
    """Every dataset row, dropped with a reason when rejected or among the worst scores."""
    n_bottom = math.floor(drop_bottom_fraction * len(dataset) + 1e-9)
    by_score = sorted(dataset, key=lambda r: (scores.get(r.id, math.inf), r.id))
    bottom = {r.id for r in by_score[:n_bottom]}
    out = []
    for r in dataset:
        score = {"score": scores[r.id]} if r.id in scores else {}
        if r.id in rejects or r.source in rejects:
            out.append(r.drop("rejected", details=score))
        elif r.id in bottom:
            out.append(r.drop("bottom_fraction", details=score))
        else:
            out.append(r.keep(details=score))
    return out


# ---------------------------------------------------------------- writing

def load_chw(path: str) -> np.ndarray:
    with Image.open(path) as im:
        if im.mode != "RGB":
            raise ValueError(f"{path}: mode {im.mode}, expected RGB (normalize output)")
        return np.asarray(im).transpose(2, 0, 1)  # HWC -> CHW


def lod_images_float(img: np.ndarray):
    """dataset_tool's add_image as written: float32 2x2 means, rint + clip per level."""
    levels = int(np.log2(img.shape[1])) - 1
    current = img
    for lod in range(levels):
        if lod:
            current = current.astype(np.float32)
            current = (current[:, 0::2, 0::2] + current[:, 0::2, 1::2]
                       + current[:, 1::2, 0::2] + current[:, 1::2, 1::2]) * 0.25
        yield np.rint(current).clip(0, 255).astype(np.uint8)


# Level ``lod`` is the mean of 4**lod source pixels: an integer sum S over 4**lod. While
# S < 2**24 every float32 step of dataset_tool's code is exact (sums of k/4**j and * 0.25
# are exact in float32), so its value is exactly S / 4**lod and rint (ties to even) of it
# can be done on the integer sum: the same bytes at a fraction of the cost. 255 * 4**lod
# < 2**24 holds for lod <= 8, i.e. every level of an image up to 1024 px.
EXACT_INTEGER_LODS = 8


def _round_half_even_shift(total: np.ndarray, shift: int) -> np.ndarray:
    """rint(total / 2**shift) with ties to even, in integers."""
    if shift == 0:
        return total
    q = total >> shift
    rem = total & ((1 << shift) - 1)
    half = 1 << (shift - 1)
    return q + ((rem > half) | ((rem == half) & (q & 1).astype(bool)))


def lod_images(img: np.ndarray):
    """Yield the quantized CHW image for every level, top first (dataset_tool's add_image).

    Byte-identical to ``lod_images_float``; integer sums where that is exact (see above).
    """
    levels = int(np.log2(img.shape[1])) - 1
    if levels - 1 > EXACT_INTEGER_LODS:
        yield from lod_images_float(img)
        return
    yield img
    total = img.astype(np.uint32)
    for lod in range(1, levels):
        total = (total[:, 0::2, 0::2] + total[:, 0::2, 1::2]
                 + total[:, 1::2, 0::2] + total[:, 1::2, 1::2])
        yield _round_half_even_shift(total, 2 * lod).astype(np.uint8)


def shuffled_order(n: int) -> np.ndarray:
    order = np.arange(n)
    np.random.RandomState(SHUFFLE_SEED).shuffle(order)
    return order


def record_positions(n: int) -> list[int]:
    """The TFRecord position of each of ``n`` images (rows in id order)."""
    position = np.empty(n, dtype=np.int64)
    position[shuffled_order(n)] = np.arange(n)
    return position.tolist()


def check_images(rows: list[Row]) -> int:
    """All images must share one power-of-two square size; refuse the export otherwise."""
    sizes = {(r.width, r.height) for r in rows}
    if len(sizes) != 1:
        raise SystemExit(f"export: images differ in size {sorted(sizes)}; refusing")
    (w, h), = sizes
    if w != h or w < 4 or w & (w - 1):
        raise SystemExit(f"export: {w}x{h} is not a power-of-two square; refusing")
    return w


def _level_bytes(job: tuple[str, int]) -> list[tuple[tuple, bytes]]:
    """Worker: decode one normalized image once, return every level's (shape, raw CHW bytes)."""
    path, resolution = job
    img = load_chw(path)
    if img.shape != (3, resolution, resolution):
        raise SystemExit(f"export: {path} is {img.shape}, refusing")
    return [(q.shape, q.tobytes()) for q in lod_images(img)]


PNG_RGB8 = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"  # + width, height, then depth 8, colour type 2


def _zip_member(path: str) -> bytes:
    """Worker: the ZIP's PNG for one image. An 8-bit RGB PNG (normalize's output with
    ``format: png``) goes in as its own bytes; anything else is decoded and encoded as PNG."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:16] == PNG_RGB8 and data[24:26] == b"\x08\x02":
        return data
    buf = io.BytesIO()
    with Image.open(io.BytesIO(data)) as im:
        im.convert("RGB").save(buf, format="PNG", compress_level=0, optimize=False)
    return buf.getvalue()


def _mapped(fn, jobs: list, threads: int, desc: str):
    """``map(fn, jobs)`` in order; in ``threads`` worker processes when threads > 1.

    Processes, not threads: the numpy level arithmetic holds the GIL. The pool starts
    here, before the caller imports TensorFlow: forked workers never load it (a fork after
    TensorFlow has started its threads is not safe, so then the workers come from a
    forkserver).
    """
    bar = dict(desc=desc, unit="img", mininterval=2, total=len(jobs))
    if threads <= 1 or len(jobs) < 2 * threads:
        return tqdm(map(fn, jobs), **bar)
    import multiprocessing
    method = "forkserver" if "tensorflow" in sys.modules else "fork"
    pool = multiprocessing.get_context(method).Pool(threads)

    def results():
        with pool:
            yield from tqdm(pool.imap(fn, jobs, chunksize=4), **bar)
    return results()


def write_tfrecords(rows: list[Row], folder: Path, name: str, threads: int = 1) -> list[int]:
    """Write <folder>/<name>-rNN.tfrecords; returns the record position of each row."""
    resolution = check_images(rows)
    log2 = int(np.log2(resolution))
    order = shuffled_order(len(rows))
    jobs = [(rows[idx].path, resolution) for idx in order]
    levels = _mapped(_level_bytes, jobs, threads, "tfrecords")
    import tensorflow as tf  # after the workers started (see _mapped)

    with ShardDir(folder) as out:
        opts = tf.io.TFRecordOptions(compression_type="")
        writers = [tf.io.TFRecordWriter(str(out.tmp / f"{name}-r{log2 - lod:02d}.tfrecords"), opts)
                   for lod in range(log2 - 1)]
        try:
            for image_levels in levels:
                for writer, (shape, data) in zip(writers, image_levels):
                    example = tf.train.Example(features=tf.train.Features(feature={
                        "shape": tf.train.Feature(int64_list=tf.train.Int64List(value=shape)),
                        "data": tf.train.Feature(bytes_list=tf.train.BytesList(value=[data])),
                    }))
                    # deterministic: protobuf may otherwise order the map differently per process
                    writer.write(example.SerializeToString(deterministic=True))
        finally:
            for w in writers:
                w.close()
    return record_positions(len(rows))


def zip_name(index: int) -> str:
    idx = f"{index:08d}"
    return f"{idx[:5]}/img{idx}.png"  # stylegan2-ada-pytorch dataset_tool.py layout


def write_zip(rows: list[Row], path: Path, threads: int = 1) -> None:
    # normalized PNGs go in as their bytes (a file read: no worker needed); JPEGs are
    # decoded and encoded as PNG in the workers
    png = all(r.path.lower().endswith(".png") for r in rows)
    members = _mapped(_zip_member, [r.path for r in rows], 1 if png else threads, "zip")

    def write(f):
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as zf:
            for i, data in enumerate(members):
                _writestr(zf, zip_name(i), data)
            _writestr(zf, "dataset.json", json.dumps({"labels": None}).encode())
    atomic_write_with(path, write)


def _writestr(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
    info.external_attr = 0o644 << 16
    zf.writestr(info, data, compress_type=zipfile.ZIP_STORED)


def listed_rows(rows: list[Row], positions: list[int], extra_rows=()) -> Iterator[Row]:
    """The export manifest's rows (streamed): each image with its ZIP index and TFRecord
    position, then ``extra_rows`` (a ranked export's drops)."""
    for i, r in enumerate(rows):
        yield r.keep(details={"index": i, "tfrecord_position": positions[i]})
    yield from extra_rows


def write_dataset_manifest(normalized: Iterable[str | os.PathLike], duplicates: set[str],
                           path: str | os.PathLike) -> int:
    """The export manifest of ``normalized`` (manifest paths) minus ``duplicates``, without
    pixels: exactly the bytes of ``write_manifest(path, listed_rows(dataset_rows(...),
    record_positions(n)))``, in two passes that hold no rows (1M rows: issue 17 item 4); writes nothing when no image is left.

    Pass one keeps each kept row's id and where its line is (``manifest_lines_of``); pass
    two reads the lines back in id order and appends ``index`` and ``tfrecord_position`` to
    the details text, as ``Row.keep`` does. A file with any line a row would not write back
    byte for byte (a quoted name, a row to re-serialize) is read as rows instead. Returns
    the image count.
    """
    ENC, ERR = "utf-8", "surrogateescape"
    files = [str(p) for p in normalized]
    ids: list[str] = []
    # where each image's line is: file number (-1: a row of rows_of), offset, length,
    # length of its details field; in arrays (a million tuples were ~150 MB)
    file_of, offset_of, size_of, text_of = array("i"), array("q"), array("i"), array("i")
    rows_of: dict[int, Row] = {}
    for fno, name in enumerate(files):
        start, spans, nth = len(ids), array("q"), -1
        for line, is_kept, fields in manifest_lines_of(name, spans):
            if line is None or (is_kept and fields[7]):  # keep() clears a reason: rewrite the row
                break
            if is_kept:
                nth += 1
                ident = fields[0].decode(ENC, ERR)
                if ident not in duplicates:
                    ids.append(ident)
                    file_of.append(fno), offset_of.append(spans[2 * nth])
                    size_of.append(spans[2 * nth + 1] - spans[2 * nth]), text_of.append(len(fields[8]))
        else:
            continue
        # this file as rows (the same code as the one-pass export)
        for column in (ids, file_of, offset_of, size_of, text_of):
            del column[start:]
        for r in kept(iter_manifest(name)):
            if r.id not in duplicates:
                rows_of[len(ids)] = r
                ids.append(r.id)
                file_of.append(-1), offset_of.append(0), size_of.append(0), text_of.append(0)
    order = id_order(ids).tolist()  # stable: equal ids keep file order
    del ids
    positions = record_positions(len(order))
    fds: dict[int, int] = {}

    def write(out):
        buf = [HEADER_BYTES]
        pread, index_key, position_key = os.pread, b'""index"":', b'""tfrecord_position"":'
        for i, k in enumerate(order):
            fno = file_of[k]
            if fno >= 0:
                if fno not in fds:
                    fds[fno] = os.open(files[fno], os.O_RDONLY)
                data = pread(fds[fno], size_of[k], offset_of[k])
                cut = 3 if data[-1:] == b"\n" else 2  # the closing }" (and newline)
                # a plain line's head holds no quote: the keys can only be in the details
                if index_key not in data and position_key not in data:
                    if text_of[k] == 2:  # {} (plain_fields: the only unquoted details)
                        buf.append(b'%s"{""index"":%d,""tfrecord_position"":%d}"\n'
                                   % (data[:-cut], i, positions[i]))
                    else:
                        buf.append(b'%s,""index"":%d,""tfrecord_position"":%d}"\n'
                                   % (data[:-cut], i, positions[i]))
                    if len(buf) >= 4096:
                        out.write(b"".join(buf))
                        buf.clear()
                    continue
                # a key to replace: as Row.keep does it
                fields = data[:len(data) + 2 - cut].decode(ENC, ERR).split("\t")  # no newline
                row = Row._from_fields(*fields[:4], int(fields[4]), int(fields[5]),
                                       *fields[6:8], None, fields[8])
            else:
                row = rows_of[k]
            buf.append(row_line(row.keep(details={"index": i, "tfrecord_position": positions[i]})
                                ).encode(ENC, ERR))
        out.write(b"".join(buf))
    if not order:
        return 0  # nothing written: the caller stops, an earlier manifest stays as it was
    try:
        atomic_write_with(path, write)
    finally:
        for fd in fds.values():
            os.close(fd)
    return len(order)


def export(rows: list[Row], folder: Path, name: str, cfg: dict, extra_rows: list[Row] = (),
           threads: int = 1) -> None:
    """Write TFRecords, ZIP (if configured) and the manifest (last) for ``rows`` (kept)."""
    if not rows:
        raise SystemExit("export: no images left to export (see the stage manifests for why)")
    cfg = with_defaults("export", cfg)
    if cfg["tfrecords"]:
        positions = write_tfrecords(rows, folder / "tfrecords", name, threads)
    else:
        positions = record_positions(len(rows))
    if cfg["zip"]:
        write_zip(rows, folder / f"{name}.zip", threads)
    write_manifest(folder / "manifest.tsv", listed_rows(rows, positions, extra_rows))
    print(f"export: {len(rows)} images -> {folder}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", required=True)
    p.add_argument("--folder", required=True)
    p.add_argument("--config", default="{}")
    p.add_argument("--dedup", help="R/clean/dedup.tsv")
    p.add_argument("--tfrecords-of", help="write the TFRecords of this exported manifest")
    p.add_argument("--zip-of", help="write the ZIP of this exported manifest")
    p.add_argument("manifests", nargs="*", help="normalize shard manifests")
    p.add_argument("--from-export", help="re-export this dataset manifest (ranked_dataset)")
    p.add_argument("--scores")
    p.add_argument("--rejects", default="")
    p.add_argument("--drop-bottom-fraction", type=float, default=0.0)
    p.add_argument("--threads", type=int, default=1, help="worker processes for decoding/levels")
    a = p.parse_args(argv)
    cfg = with_defaults("export", load_config_arg(a.config))
    folder = Path(a.folder)
    if a.tfrecords_of or a.zip_of:
        # only what the files need of each row (a million rows' details are GBs)
        items = [(r.peek_details()["index"], Row(id=r.id, source=r.source, path=r.path,
                                                 width=r.width, height=r.height))
                 for r in kept(iter_manifest(a.tfrecords_of or a.zip_of))]
        items.sort(key=lambda item: item[0])
        listed = [row for _, row in items]
        if not listed:
            raise SystemExit("export: no images left to export (see the stage manifests for why)")
        if a.tfrecords_of:
            write_tfrecords(listed, folder / "tfrecords", a.name, a.threads)
        else:
            write_zip(listed, folder / f"{a.name}.zip", a.threads)
        print(f"export: {len(listed)} images -> {folder}")
        return
    if a.from_export:
        dataset = list(kept(read_manifest(a.from_export)))
        scores = {s.id: s.score for s in read_scores(a.scores)} if a.scores else {}
        rejects = read_rejects(a.rejects.strip() or None)
        unknown = rejects - {r.id for r in dataset} - {r.source for r in dataset}
        if unknown:
            print(f"export: {len(unknown)} rejects name no dataset image: {sorted(unknown)[:5]}",
                  file=sys.stderr)
        decided = ranked_rows(dataset, scores, rejects, a.drop_bottom_fraction)
        keep_rows = [r for r in decided if r.kept]
        export(keep_rows, folder, a.name, cfg, extra_rows=[r for r in decided if not r.kept],
               threads=a.threads)
        return
    duplicates = dropped_ids(a.dedup) if a.dedup else set()
    if not cfg["tfrecords"] and not cfg["zip"]:
        # the workflow's export gather: only the manifest, streamed (no rows held)
        folder.mkdir(parents=True, exist_ok=True)
        n = write_dataset_manifest(a.manifests, duplicates, folder / "manifest.tsv")
        if not n:
            raise SystemExit("export: no images left to export (see the stage manifests for why)")
        print(f"export: {n} images -> {folder}")
        return
    rows = dataset_rows(iter_manifests(a.manifests), duplicates)
    export(rows, folder, a.name, cfg, threads=a.threads)


if __name__ == "__main__":
    main()
