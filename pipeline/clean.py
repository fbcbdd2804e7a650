"""clean: per-image filters and hashes, one shard at a time.

    python -m pipeline.clean shard --input crop/<s>/manifest.tsv --output clean/<s>/manifest.tsv \
        --sources ingest/<s>/manifest.tsv --config JSON [--threads N]

Decides per image and never rewrites pixels: kept rows keep the upstream ``path`` and
carry quality and colour measures in ``details`` (and the whole source picture's under
``details.source``); their perceptual hashes (of the face, its mirror image and trimmed
windows, and of the source picture) go to ``manifest.hashes`` beside the manifest;
dropped rows say why (``file_too_small``, ``too_small``, ``too_dark``, ``too_bright``,
``low_information``, ``blurry``, ``monochrome``, ``decode_error``) with the measured value.
Because the per-image work is cached in the shard manifests, adding images re-hashes only
the shards they land in; within a shard, ``--store`` keeps each face's and each source
picture's measures per file content and settings (``CleanStore``), so a shard rerun (files
added, a framing edit that re-cuts every face from the same sources) measures only what it
has not seen. Exact and near duplicates across shards are the dedup gather's
(pipeline/dedup.py), which reads these hashes.
"""
from __future__ import annotations

import argparse
import io
import json
import threading
from array import array
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import imagehash
import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from pipeline.imaging import ContentStore, code_digest, file_digest, load_rgb, load_rgb_of, pixel_digest
from pipeline.manifest import (Drop, Row, atomic_write_with, declare, load_config_arg, read_manifest,
                               write_manifest)

# Colour measures and perceptual hashes are computed on a copy no larger than this:
# it averages away JPEG chroma noise and makes the cost per image independent of size.
MEASURE_SIDE = 256
# Luminance bins for the chroma measure (16 levels of 16): a sepia tint may change
# with brightness, but slowly.
LUMA_BINS = 16

HASHERS = {"phash": imagehash.phash, "dhash": imagehash.dhash, "whash": imagehash.whash}

# Every reason this stage drops an image for: the page's text, the details its rows carry,
# what to change when it dropped every face (pipeline/survivors.py).
_SIZE = ("file_bytes",)  # every face measured carries its source file's size
DROPS = declare(
    Drop("too_small", "short side below clean.min_side", ("side", "min_side"), note=("side",),
         hint="lower clean.min_side (now {min_side})"),
    Drop("file_too_small", "source file below clean.min_file_bytes", ("file_bytes", "min_file_bytes"),
         note=("file_bytes",), hint="lower clean.min_file_bytes (now {min_file_bytes})"),
    Drop("decode_error", "the face could not be read", ("error",), note=("error",)),
    Drop("too_dark", "mean luma below clean.quality.min_brightness", ("brightness",), note=_SIZE),
    Drop("too_bright", "mean luma above clean.quality.max_brightness", ("brightness",), note=_SIZE),
    Drop("low_information", "luma spread below clean.quality.min_contrast", ("contrast",), note=_SIZE),
    Drop("blurry", "Laplacian variance below clean.quality.min_sharpness", ("sharpness",), note=_SIZE),
    Drop("monochrome", "gray, sepia or screentone (clean.monochrome)",
         ("colorful_fraction", "unique_colors", "monochrome_by"), note=(*_SIZE, "colorful_fraction"),
         hint="set clean.monochrome.method: none if the art is meant to be monochrome"),
)


def resolved(config: dict) -> dict:
    """The clean block with near_duplicates.flips resolved (auto = finetune.mirror): only a
    change that changes flips reruns clean."""
    clean = json.loads(json.dumps(config["clean"]))
    if clean["near_duplicates"]["flips"] == "auto":
        clean["near_duplicates"]["flips"] = bool(config["finetune"]["mirror"])
    return clean


def config_keys(config: dict) -> dict:
    """Exactly the config this stage reads (its rule's param): the clean block but the
    dedup decisions (exact_duplicates, the Hamming radius). A new filter's keys in the
    clean block are part of it without a change here."""
    clean = resolved(config)
    clean.pop("exact_duplicates")
    clean["near_duplicates"].pop("radius")
    return clean


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


def source_measures(path: str, cfg: dict, data: bytes | None = None) -> dict:
    """What dedup needs about a whole source image: upright size, encoding quality (JPEG:
    estimated IJG quality; lossless formats 100; else unknown) and its hashes (with trims).
    ``data``: the file's bytes where they were already read."""
    with Image.open(path if data is None else io.BytesIO(data)) as raw:
        fmt = raw.format
        quality = jpeg_quality(raw) if fmt == "JPEG" else (100 if fmt in LOSSLESS else None)
    im, _notes = load_rgb(path) if data is None else load_rgb_of(data, path)
    small = im.copy()
    small.thumbnail((MEASURE_SIDE, MEASURE_SIDE))
    out = {"width": im.width, "height": im.height, "format": fmt, "quality": quality}
    near = cfg["near_duplicates"]
    out.update(perceptual_hashes(small, near, SOURCE_TRIMS if near["trims"] else ()))
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


# The per-face filters, in order, after the size floors and the decode: each records what
# it measured in ``details`` and returns the reason it drops the face for ("" keeps it),
# one declared in DROPS. Adding one: the function, its Drop, its keys in the clean block of
# schemas/config.schema.yaml and config.yaml (docs/DEVELOPING.md "Adding a drop filter").

def quality_filter(im: Image.Image, small: Image.Image, details: dict, cfg: dict) -> str:
    details.update(quality_measures(small))
    return judge_quality(details, cfg["quality"])


def monochrome_filter(im: Image.Image, small: Image.Image, details: dict, cfg: dict) -> str:
    if cfg["monochrome"]["method"] == "none":
        return ""
    monochrome, measures = judge_monochrome(im, small, cfg["monochrome"])
    details.update(measures)
    return "monochrome" if monochrome else ""


# quality first: a face darkened to near black is too_dark before it is monochrome
FILTERS = [quality_filter, monochrome_filter]


def source_sizes(ingest_rows: list[Row]) -> dict[str, int]:
    """Source file size by source id, from the ingest manifest (crop rows may not carry it)."""
    return {r.id: r.details["bytes"] for r in ingest_rows if "bytes" in r.details}


class CleanStore:
    """What clean measures, stored per file content and settings (``ContentStore``s under
    ``<cache_dir>/clean``): per face, the decoded size, the drop reason and the measures
    and hashes (everything but the source's size and hashes, which come from elsewhere);
    per source picture, ``source_measures``. The settings hold the clean block (a face's
    record) or its near_duplicates block (a source's), this module's and imaging.py's code
    and the library versions the measures depend on, so a record is used only where
    measuring again would give the same."""

    FORMAT = 1  # bump when a record changes

    def __init__(self, folder: str | None, cfg: dict):
        face_settings = source_settings = None
        if folder:
            import PIL
            import cv2
            common = {"format": self.FORMAT, "code": code_digest("clean.py", "imaging.py"),
                      "pillow": PIL.__version__, "imagehash": imagehash.__version__,
                      "numpy": np.__version__, "opencv": cv2.__version__}
            # min_file_bytes is judged from the ingest size, before any measuring
            face_settings = {**common, "clean": {k: v for k, v in cfg.items() if k != "min_file_bytes"}}
            source_settings = {**common, "near_duplicates": cfg["near_duplicates"]}
        self.faces = ContentStore(folder and f"{folder}/faces", face_settings)
        self.sources = ContentStore(folder and f"{folder}/sources", source_settings)
        self.counts = Counter()  # ("faces" | "sources", "stored" | "measured"): the log says
        self._lock = threading.Lock()  # clean_shard's threads share the store

    def count(self, kind: str, how: str) -> None:
        with self._lock:
            self.counts[kind, how] += 1

    def summary(self) -> str:
        c = self.counts
        return (f"stored measures: faces {c['faces', 'stored']} stored, {c['faces', 'measured']} measured;"
                f" sources {c['sources', 'stored']} stored, {c['sources', 'measured']} measured")

    def served(self, kind: str, path: str, measure, storable=lambda record: True) -> dict:
        """The record of ``kind`` ("faces" | "sources") stored for the bytes of the file at
        ``path``, or ``measure(data)`` of them (``data``: the bytes, read once; None without
        a store or where the file cannot be read, then ``measure`` reads it and says its
        error), stored when ``storable``."""
        store = getattr(self, kind)
        data = None
        if store.folder:
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError:  # unreadable: measured (and its error said) without the store
                pass
        digest = file_digest(data) if data is not None else None
        record = store.get(digest) if digest else None
        self.count(kind, "measured" if record is None else "stored")
        if record is None:
            record = measure(data)
            if digest and storable(record):
                store.put(digest, record)
        return record


NO_STORE = CleanStore(None, {})


def measure_face(path: str, cfg: dict, store: CleanStore = NO_STORE) -> tuple[str, dict | None, dict]:
    """(drop reason or "", {"width", "height"} or None where it does not decode, details:
    the filters' measures, then the pixel and perceptual hashes of a kept face) of one
    face file, stored per content (``store``)."""
    def measure(data):
        reason, size, details = _measure_face(path, cfg, data)
        return {"reason": reason, "size": size, "details": details}
    # a decode error is not stored: it names no content
    record = store.served("faces", path, measure, storable=lambda record: record["size"] is not None)
    return record["reason"], record["size"], record["details"]


def _measure_face(path: str, cfg: dict, data: bytes | None = None) -> tuple[str, dict | None, dict]:
    try:
        im, _notes = load_rgb(path) if data is None else load_rgb_of(data, path)
    except Exception as e:  # one unreadable crop must not fail a shard of thousands
        return "decode_error", None, {"error": f"{type(e).__name__}: {e}"}
    size = {"width": im.width, "height": im.height}
    if min(im.size) < cfg["min_side"]:
        return "too_small", size, {"side": min(im.size), "min_side": cfg["min_side"]}
    small = im.copy()
    small.thumbnail((MEASURE_SIDE, MEASURE_SIDE))
    details: dict = {}
    for check in FILTERS:
        reason = check(im, small, details, cfg)
        if reason:
            return reason, size, details
    details["pixel_sha256"] = pixel_digest(im)
    near = cfg["near_duplicates"]
    details.update(perceptual_hashes(small, near, CROP_TRIMS if near["trims"] else ()))
    return "", size, details


def clean_row(row: Row, cfg: dict, sizes: dict[str, int] | None = None,
              sources: dict[str, dict] | None = None, store: CleanStore = NO_STORE) -> Row:
    """Keep (with hashes and measures in details) or drop (with a reason) one image.

    ``sizes``: source file bytes by source id (``source_sizes``); a face row's source id
    is its ``parent_id``. ``sources``: ``source_measures`` by source id, recorded on the
    row as ``details.source`` for source-level dedup. ``store``: measures stored per face
    content (``CleanStore``).
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
    reason, size, measured = measure_face(row.path, cfg, store)
    if size is None:
        return row.drop(reason, details=measured)
    if reason == "too_small":  # the decoded size floor: only the side measured
        return row.drop(reason, **size, details=measured)
    details: dict = {"file_bytes": source_bytes}  # dedup prefers the larger source file
    if source_bytes is None and cfg["min_file_bytes"]:
        details["file_bytes_unknown"] = True  # no ingest size upstream: floor not applied
    details.update(measured)
    if reason:
        return row.drop(reason, **size, details=details)
    source = (sources or {}).get(row.parent_id or row.id)
    if source:
        details["source"] = source
    return row.keep(**size, details=details)


def stored_source_measures(path: str, cfg: dict, store: CleanStore = NO_STORE) -> dict:
    """``source_measures``, stored per file content (``store``)."""
    return store.served("sources", path, lambda data: source_measures(path, cfg, data))


def shard_sources(rows: list[Row], ingest_rows: list[Row], cfg: dict, threads: int = 1,
                  store: CleanStore = NO_STORE) -> dict[str, dict]:
    """``source_measures`` of every source a kept row of ``rows`` was cut from, by source id
    (each decoded once per shard, or served from ``store``); empty when source-level dedup
    is off. A source that cannot be read any more is left out (its faces are deduplicated
    by their crops)."""
    near = cfg["near_duplicates"]
    if near["method"] == "none" or not near["sources"]:
        return {}
    wanted = {r.parent_id or r.id for r in rows if r.kept}
    paths = {r.id: r.path for r in ingest_rows if r.kept and r.id in wanted}

    def measure(item):
        try:
            return item[0], stored_source_measures(item[1], cfg, store)
        except Exception:  # changed since ingest: no source-level hashes for it
            return item[0], None
    with ThreadPoolExecutor(max(threads, 1)) as pool:
        return {k: v for k, v in pool.map(measure, sorted(paths.items())) if v}


def clean_shard(rows: list[Row], cfg: dict, sizes: dict[str, int] | None = None,
                threads: int = 1, sources: dict[str, dict] | None = None,
                store: CleanStore = NO_STORE) -> list[Row]:
    """One row per upstream kept row, in order."""
    todo = [r for r in rows if r.kept]
    progress = dict(total=len(todo), desc="clean", unit="img", mininterval=2)
    if threads <= 1:
        return [clean_row(r, cfg, sizes, sources, store) for r in tqdm(todo, **progress)]
    # decoding, resizing and hashing release the GIL for most of their time
    with ThreadPoolExecutor(threads) as pool:
        return list(tqdm(pool.map(lambda r: clean_row(r, cfg, sizes, sources, store), todo), **progress))


# ---------------------------------------------------------------- the hashes file

# The perceptual hashes of a shard's kept rows do not go into the manifest's details (76
# hex hashes were ~1.3 KB of a 2 KB line that every later gather parsed or copied): they
# go to a binary file beside it, ``hashes_path(manifest)``. Layout: the line
# ``faceprep-hashes 2``, a line of JSON ({"method", "nbits", "arrays": [[name, bytes]...]}),
# then the arrays' bytes in that order. Per level (``face``: every kept row in manifest
# order; ``source``: the kept rows whose details carry ``source``, in the same order) and
# kind ("", "_mirror", "_trims", as ``hamming.HASH_KEYS``): ``<level><kind>.count`` (int32
# little-endian, hashes per row) and ``<level><kind>`` (the hashes, concatenated, each as
# ceil(bits / 64) little-endian uint64 words, the most significant first: the words the
# search compares, read without conversion). The dedup gather reads it
# (pipeline/dedup.py); the manifest stays the readable record of every other measure.
HASHES_MAGIC = b"faceprep-hashes 2\n"
HASH_LEVELS = ("face", "source")
HASH_KINDS = ("", "_mirror", "_trims")


def hashes_path(manifest) -> str:
    """The hashes file of a clean shard manifest: ``manifest.tsv`` -> ``manifest.hashes``."""
    manifest = str(manifest)
    return (manifest[:-4] if manifest.endswith(".tsv") else manifest) + ".hashes"


def split_hashes(rows: list[Row], near: dict) -> tuple[list[Row], dict[str, bytes]]:
    """(rows without their hash keys, the hashes file's arrays by name): the kept rows'
    ``<method>``, ``<method>_mirror``, ``<method>_trims`` of the face and of ``source``."""
    method = near["method"]
    width = max(1, -(-near["hash_size"] ** 2 // 64)) * 16  # hex digits per hash
    raw = {level + kind: bytearray() for level in HASH_LEVELS for kind in HASH_KINDS}
    counts = {name: array("i") for name in raw}
    out = []
    for r in rows:
        if not r.kept:
            out.append(r)
            continue
        details = dict(r.details)
        holders = [("face", details)]
        if details.get("source"):
            details["source"] = dict(details["source"])
            holders.append(("source", details["source"]))
        for level, holder in holders:
            for kind in HASH_KINDS:
                value = holder.pop(method + kind, None) or ""
                raw[level + kind] += bytes.fromhex(value)
                counts[level + kind].append(len(value) // width)
        out.append(Row(r.id, r.source, r.parent_id, r.path, r.width, r.height, r.action, r.reason,
                       details))
    arrays = {}
    for name in raw:
        arrays[name + ".count"] = np.frombuffer(counts[name], dtype=np.int32).astype("<i4").tobytes()
        arrays[name] = np.frombuffer(raw[name], dtype=">u8").astype("<u8").tobytes()
    arrays.update(dedup_columns([r for r in rows if r.kept]))
    return out, arrays


def dedup_columns(kept: list[Row]) -> dict[str, bytes]:
    """The other values the dedup gather reads of each kept row, exactly as
    ``dedup.DedupColumns.add`` reads them from the details (it does the reading here too),
    as fixed columns, so that the gather parses no details: ``keys`` (source pixels,
    encoding quality or -1, file bytes: float64 each), ``box`` (x, y, w, h; NaN without
    one), ``digest`` (the pixel sha256's 32 bytes), ``has_source`` (uint8) and
    ``source_size`` (width, height of the rows with a source), little-endian. Empty (the
    gather then reads the details) if a row has a value these cannot hold."""
    from pipeline.dedup import DedupColumns  # dedup imports this module
    columns = DedupColumns("", 0)
    try:
        for r in kept:
            columns.add(r.id, r.parent_id, r.width, r.height, r.details, hashes=False)
    except ValueError:  # a box that is not [x, y, w, h]
        return {}
    if any(type(d) is not bytes for d in columns.digests):  # no pixel sha256, or not hex
        return {}
    source_pixels, quality, _crop_pixels, file_bytes = (np.frombuffer(k, dtype=np.float64) for k in columns.keys)
    little = lambda a: np.asarray(a, dtype="<f8").tobytes()  # noqa: E731
    return {"keys": little(np.stack([source_pixels, quality, file_bytes], axis=1)),
            "box": little(np.frombuffer(columns.box, dtype=np.float64)),
            "digest": b"".join(columns.digests),
            "has_source": (np.frombuffer(columns.block, dtype=np.int64) >= 0).astype(np.uint8).tobytes(),
            "source_size": little(np.frombuffer(columns.block_size, dtype=np.float64))}


def write_hashes(path, arrays: dict[str, bytes], near: dict) -> None:
    """The hashes file (atomic): the same arrays always give the same bytes."""
    header = json.dumps({"method": near["method"], "nbits": near["hash_size"] ** 2,
                         "arrays": [[name, len(data)] for name, data in arrays.items()]},
                        separators=(",", ":")).encode() + b"\n"

    def write(f):
        f.write(HASHES_MAGIC + header)
        for data in arrays.values():
            f.write(data)
    atomic_write_with(path, write)


def hashes_index(path) -> tuple[dict, dict[str, tuple[int, int]]]:
    """(header, {array name: (offset in the file, bytes)}) of a hashes file, read without
    its arrays (a gather reads each kind when it searches it); ValueError if not one."""
    with open(path, "rb") as f:
        if f.readline() != HASHES_MAGIC:
            raise ValueError(f"{path}: not a faceprep hashes file")
        header = json.loads(f.readline())
        offset = f.tell()
        size = f.seek(0, 2)
    spans = {}
    for name, length in header["arrays"]:
        spans[name] = (offset, length)
        offset += length
    if offset != size:
        raise ValueError(f"{path}: {size} bytes, its header says {offset}")
    return header, spans


def read_span(f, span: tuple[int, int]) -> bytes:
    """One array's bytes of a hashes file open as ``f``: ``span`` is its (offset, bytes)
    from ``hashes_index``."""
    offset, length = span
    f.seek(offset)
    return f.read(length)


def read_hashes(path) -> tuple[dict, dict[str, bytes]]:
    """(header, arrays by name) of a hashes file; ValueError if it is not one."""
    header, spans = hashes_index(path)
    with open(path, "rb") as f:
        return header, {name: read_span(f, span) for name, span in spans.items()}


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
    s.add_argument("--store", default="",
                   help="folder of stored measures (CleanStore); none: measure every image")
    a = p.parse_args(argv)
    cfg = load_config_arg(a.config)
    store = CleanStore(a.store or None, cfg)
    ingest_rows = read_manifest(a.sources) if a.sources else []
    sizes = source_sizes(ingest_rows) if a.sources else None
    rows = read_manifest(a.input)
    sources = shard_sources(rows, ingest_rows, cfg, a.threads, store)
    rows = clean_shard(rows, cfg, sizes, a.threads, sources, store)
    written, arrays = split_hashes(rows, cfg["near_duplicates"])
    write_hashes(hashes_path(a.output), arrays, cfg["near_duplicates"])  # before: the rule's
    write_manifest(a.output, written)  # outputs are complete once the manifest is there
    reasons = {}
    for r in rows:
        reasons[r.reason or "keep"] = reasons.get(r.reason or "keep", 0) + 1
    print(f"clean: {reasons.get('keep', 0)}/{len(rows)} kept; {reasons}")
    if store.faces.folder:
        print(f"clean: {store.summary()}")


if __name__ == "__main__":
    main()
