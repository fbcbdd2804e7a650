"""augment (optional, off by default): extra training images made from normalized faces
with the seed's ImageMagick ``dataAugment`` operations, one operation per new image.

    python -m pipeline.augment --input NORMALIZE_MANIFEST --output MANIFEST --config JSON

Config: the ``augment`` block (enabled, copies, seed, ops) plus normalize's
``resolution``, ``format`` and ``quality``, so new images are encoded exactly like the
normalized ones. The output manifest lists every input row unchanged, each kept one
followed by ``copies`` new rows (id ``<id>-a<k>``, parent_id ``<id>``). Mirroring is
left to training (``finetune.mirror``).

Deterministic: the operation and its parameters come from a generator seeded with
(seed, image id, copy number), so reruns and other shard layouts give the same images;
the parameters are recorded in ``details.augment``.
"""
from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageEnhance, ImageFilter
from tqdm import tqdm

from pipeline.imaging import load_rgb
from pipeline.manifest import Drop, Row, ShardDir, declare, load_config_arg, read_manifest, stage_argparser
from pipeline.normalize import encode, encode_keys, validation_error

# ImageMagick -colorize colours of the seed's colour shifts
COLORS = {"red": (255, 0, 0), "orange": (255, 165, 0), "yellow": (255, 255, 0),
          "green": (0, 128, 0), "blue": (0, 0, 255), "purple": (128, 0, 128)}


# the page's note: a row's error and the sizes its rows carry from ingest and clean
_NOTE = ("error", "bytes", "file_bytes", "colorful_fraction")
# Every reason this stage drops a new copy for: its ``details.augment`` holds the op, its
# parameters and the error or size.
DROPS = declare(*(Drop(reason, text, ("augment",), note=_NOTE) for reason, text in (
    ("decode_error", "the face to copy could not be read"),
    ("not_normalized", "the face to copy is not normalize.resolution square"),
    ("augment_error", "the augmentation failed"))))


def config_keys(config: dict) -> dict:
    """Exactly the config this stage reads (its rule's param): the augment block, and the
    new images are encoded exactly like normalize's (its size, format and quality)."""
    return {**config["augment"], **encode_keys(config["normalize"])}


# ---------------------------------------------------------------- operations
# Each keeps the image size; parameters are explicit so a row's details reproduce it.

def _affine(im: Image.Image, matrix: np.ndarray) -> Image.Image:
    # reflecting the border keeps the corners filled with picture, not black wedges
    out = cv2.warpAffine(np.asarray(im), matrix, im.size, flags=cv2.INTER_CUBIC,
                         borderMode=cv2.BORDER_REFLECT_101)
    return Image.fromarray(out)


def deskew(im: Image.Image, angle: float) -> Image.Image:
    """Rotate by ``angle`` degrees about the centre (the seed's ``-deskew``: a slight tilt)."""
    centre = ((im.width - 1) / 2, (im.height - 1) / 2)
    return _affine(im, cv2.getRotationMatrix2D(centre, angle, 1.0))


def stretch(im: Image.Image, x: float, y: float) -> Image.Image:
    """Scale by (x, y) about the centre and keep the middle (``-resize 110%x100%``)."""
    cx, cy = (im.width - 1) / 2, (im.height - 1) / 2
    return _affine(im, np.array([[x, 0, (1 - x) * cx], [0, y, (1 - y) * cy]], dtype=np.float64))


def color(im: Image.Image, rgb: tuple[int, int, int], amount: float) -> Image.Image:
    """Blend toward a colour (``-fill <colour> -colorize <amount>``)."""
    return Image.blend(im, Image.new("RGB", im.size, tuple(rgb)), amount)


def blur(im: Image.Image, radius: float) -> Image.Image:
    return im.filter(ImageFilter.GaussianBlur(radius))


def sharpen(im: Image.Image, radius: float, percent: int) -> Image.Image:
    return im.filter(ImageFilter.UnsharpMask(radius=radius, percent=percent, threshold=0))


def brightness_contrast(im: Image.Image, brightness: float, contrast: float) -> Image.Image:
    """Multiply brightness, then stretch contrast about the mean (``-brightness-contrast``)."""
    return ImageEnhance.Contrast(ImageEnhance.Brightness(im).enhance(brightness)).enhance(contrast)


def _away_from_one(rng: np.random.Generator, low: float, high: float) -> float:
    """A factor in [1-high, 1-low] or [1+low, 1+high]: never a no-op."""
    return 1.0 + float(rng.choice([-1, 1])) * float(rng.uniform(low, high))


def _draw_stretch(rng: np.random.Generator) -> dict:
    factor = float(rng.uniform(1.04, 1.12))
    return {"x": factor, "y": 1.0} if rng.random() < 0.5 else {"x": 1.0, "y": factor}


# op -> (function, parameter draw). Ranges follow the seed's mild settings (110% stretch,
# 5% colorize, small blur/sharpen/brightness-contrast).
OPS = {
    "deskew": (deskew, lambda rng: {"angle": float(rng.choice([-1, 1]) * rng.uniform(1.0, 4.0))}),
    "stretch": (stretch, _draw_stretch),
    "color": (color, lambda rng: {"rgb": COLORS[str(rng.choice(sorted(COLORS)))],
                                  "amount": float(rng.uniform(0.03, 0.08))}),
    "blur": (blur, lambda rng: {"radius": float(rng.uniform(0.6, 1.5))}),
    "sharpen": (sharpen, lambda rng: {"radius": float(rng.uniform(1.0, 2.0)),
                                      "percent": int(rng.integers(60, 151))}),
    "brightness_contrast": (brightness_contrast, lambda rng: {
        "brightness": _away_from_one(rng, 0.04, 0.12), "contrast": _away_from_one(rng, 0.04, 0.12)}),
}


def rng_for(seed: int, image_id: str, copy: int | str) -> np.random.Generator:
    """A generator that depends only on (seed, image, copy): stable across shard layouts."""
    digest = hashlib.sha256(f"{seed}\0{image_id}\0{copy}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def _rounded(params: dict) -> dict:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in params.items()}


def plan(image_id: str, copies: int, ops: list[str], seed: int) -> list[tuple[str, dict]]:
    """(op, params) for each copy. Copies of one image walk the op list from a per-image
    starting point, so they differ from each other (up to len(ops) copies)."""
    if not ops:
        return []
    start = int(rng_for(seed, image_id, "start").integers(len(ops)))
    out = []
    for k in range(copies):
        op = ops[(start + k) % len(ops)]
        out.append((op, _rounded(OPS[op][1](rng_for(seed, image_id, k)))))
    return out


def apply(im: Image.Image, op: str, params: dict) -> Image.Image:
    out = OPS[op][0](im, **params)
    if out.size != im.size or out.mode != "RGB":  # every op must keep R x R RGB
        raise RuntimeError(f"{op} changed the image to {out.mode} {out.size}")
    return out


# ---------------------------------------------------------------- the stage

def augment_row(row: Row, out: ShardDir, cfg: dict) -> list[Row]:
    """The new rows made from one normalized image (written into ``out``)."""
    res, fmt = cfg["resolution"], cfg["format"]
    copies = plan(row.id, cfg["copies"], cfg["ops"], cfg["seed"])
    if not copies:
        return []
    ids = [f"{row.id}-a{k}" for k in range(len(copies))]

    def dropped(reason, **details):
        return [row.drop(reason, id=i, parent_id=row.id, path="",
                         details={"augment": {"op": op, **p, **details}})
                for i, (op, p) in zip(ids, copies)]

    try:
        im, _notes = load_rgb(row.path)
    except Exception as e:
        return dropped("decode_error", error=f"{type(e).__name__}: {e}")
    if im.size != (res, res):
        return dropped("not_normalized", size=list(im.size))
    rows = []
    for new_id, (op, params) in zip(ids, copies):
        record = {"op": op, **params, "seed": cfg["seed"]}
        tmp_path, final_path = out.path(f"{new_id}.{fmt}")
        try:
            encode(apply(im, op, params), tmp_path, fmt, cfg.get("quality"))  # only JPEG reads it (config_keys passes it then)
            error = validation_error(tmp_path, res, fmt)
        except Exception as e:
            error = f"{type(e).__name__}: {e}"
        if error:
            tmp_path.unlink(missing_ok=True)
            rows.append(row.drop("augment_error", id=new_id, parent_id=row.id, path="",
                                 details={"augment": {**record, "error": error}}))
        else:
            rows.append(row.keep(id=new_id, parent_id=row.id, path=final_path, width=res,
                                 height=res, details={"augment": record}))
    return rows


def augment_shard(rows: list[Row], out: ShardDir, cfg: dict, threads: int = 1) -> list[Row]:
    """Every input row unchanged, each kept one followed by its new copies."""
    if not cfg["enabled"]:
        cfg = {**cfg, "copies": 0}
    todo = [r for r in rows if r.kept]
    with ThreadPoolExecutor(max(1, threads)) as pool:  # PIL and OpenCV release the GIL
        made = dict(zip((r.id for r in todo), tqdm(
            pool.map(lambda r: augment_row(r, out, cfg), todo), total=len(todo),
            desc="augment", unit="img", mininterval=2)))
    result = []
    for r in rows:
        result.append(r)
        result.extend(made.get(r.id, []) if r.kept else [])
    return result


def main(argv=None) -> None:
    a = stage_argparser(__doc__).parse_args(argv)
    cfg = load_config_arg(a.config)
    output = Path(a.output)
    with ShardDir(output.parent) as out:
        rows = augment_shard(read_manifest(a.input), out, cfg, a.threads)
        out.write_manifest(rows, output.name)
    new = sum(1 for r in rows if r.parent_id and r.id.startswith(f"{r.parent_id}-a"))
    print(f"augment: {len(rows) - new} input rows, {new} new "
          f"({sum(1 for r in rows if r.kept)} kept in all)")


if __name__ == "__main__":
    main()
