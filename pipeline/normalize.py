"""normalize: every face becomes exactly R x R 8-bit sRGB RGB, JPEG or PNG.

load_rgb already applied EXIF orientation, ICC -> sRGB, mode and alpha handling; here we
fit (pad: centre on the background like the seed's ``mogrify -extent``; crop: centre
crop), resize with Lanczos, encode, and validate what was written: the in-memory image
(mode, size), the encoded bytes' header and the written file's length. A full re-decode
of the file (about as costly as the encode) is left to ``validate`` below.

    python -m pipeline.normalize --input UPSCALE_MANIFEST --output MANIFEST --config JSON
    python -m pipeline.normalize validate --resolution 512 --format jpg FILE...
"""
from __future__ import annotations

import argparse
import io
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from pipeline.imaging import load_rgb, save_png
from pipeline.manifest import Drop, Row, ShardDir, declare, load_config_arg, read_manifest, stage_argparser
from util.config import with_defaults

FORMATS = {"jpg": "JPEG", "png": "PNG"}

# the page's note: a row's error and the sizes its rows carry from ingest and clean
_NOTE = ("error", "bytes", "file_bytes", "colorful_fraction")
# Every reason this stage drops a face for.
DROPS = declare(
    Drop("decode_error", "the face could not be read", ("error",), note=_NOTE),
    # image_error, header_error
    Drop("invalid_output", "the written image was not the size, mode or format asked for",
         ("error", "normalize"), note=_NOTE),
)


def encode_keys(norm: dict, *extra: str) -> dict:
    """The normalize keys that decide the written files (augment's too); quality only for JPEG."""
    keys = [*extra, "resolution", "format"] + (["quality"] if norm["format"] == "jpg" else [])
    return {k: norm[k] for k in keys}


def config_keys(config: dict) -> dict:
    """Exactly the keys this stage reads (its rule's param)."""
    return encode_keys(config["normalize"], "fit", "background", "enlarge")


def fit_square(im: Image.Image, resolution: int, fit: str, background=(0, 0, 0),
               enlarge: bool = True) -> tuple[Image.Image, dict]:
    """Scale and pad/crop ``im`` to exactly resolution x resolution. ``enlarge=False``
    never scales up: a smaller image is padded (or cropped) at its own size, like
    ImageMagick's ``-resize RxR\\> -extent RxR``."""
    w, h = im.size
    if fit == "crop":
        scale = resolution / min(w, h)
    else:
        scale = resolution / max(w, h)
    if not enlarge:
        scale = min(scale, 1.0)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    if fit == "crop":
        new_w, new_h = max(new_w, resolution), max(new_h, resolution)
    notes = {"scale": round(scale, 6)}
    if (new_w, new_h) != (w, h):
        # reducing_gap: a box pre-reduction before Lanczos keeps big downscales fast
        im = im.resize((new_w, new_h), Image.Resampling.LANCZOS, reducing_gap=3.0)
    if fit == "crop":
        left, top = (new_w - resolution) // 2, (new_h - resolution) // 2
        return im.crop((left, top, left + resolution, top + resolution)), notes
    canvas = Image.new("RGB", (resolution, resolution), tuple(background))
    canvas.paste(im, ((resolution - new_w) // 2, (resolution - new_h) // 2))
    if (new_w, new_h) != (resolution, resolution):
        notes["padded"] = True
    return canvas, notes


def encode(im: Image.Image, path, fmt: str, quality: int) -> None:
    """Encode ``im`` to ``path`` (a file name or a binary file object)."""
    if fmt == "jpg":
        # 4:4:4 chroma: StyleGAN learns the artefacts of 4:2:0 subsampling otherwise
        im.save(path, format="JPEG", quality=quality, subsampling=0, optimize=False)
    else:
        save_png(im, path)


def encode_bytes(im: Image.Image, fmt: str, quality: int) -> bytes:
    buf = io.BytesIO()
    encode(im, buf, fmt, quality)
    return buf.getvalue()


def image_error(im: Image.Image, resolution: int) -> str:
    """'' if the in-memory ``im`` is resolution x resolution RGB, else why not."""
    if im.size != (resolution, resolution):
        return f"size {im.size[0]}x{im.size[1]} != {resolution}x{resolution}"
    if im.mode != "RGB":
        return f"mode {im.mode} != RGB"
    return ""


def header_error(data: bytes, resolution: int, fmt: str) -> str:
    """'' if the encoded ``data`` declares the right format, size and mode (header only)."""
    try:
        with Image.open(io.BytesIO(data)) as im:  # parses the header, decodes no pixels
            if im.format != FORMATS[fmt]:
                return f"format {im.format} != {FORMATS[fmt]}"
            return image_error(im, resolution)
    except Exception as e:
        return f"unreadable: {e}"


def validation_error(path: str | Path, resolution: int, fmt: str) -> str:
    """'' if ``path`` is exactly a resolution x resolution 8-bit RGB ``fmt`` file, else why not."""
    try:
        with Image.open(path) as im:
            if im.format != FORMATS[fmt]:
                return f"format {im.format} != {FORMATS[fmt]}"
            if im.size != (resolution, resolution):
                return f"size {im.size[0]}x{im.size[1]} != {resolution}x{resolution}"
            if im.mode != "RGB":
                return f"mode {im.mode} != RGB"
            im.load()
    except Exception as e:  # anything unreadable is refused, never passed on
        return f"unreadable: {e}"
    return ""


def normalize_row(row: Row, out: ShardDir, cfg: dict) -> Row:
    try:
        im, notes = load_rgb(row.path, tuple(cfg["background"]))
    except Exception as e:
        return row.drop("decode_error", details={"error": f"{type(e).__name__}: {e}"})
    res, fmt = cfg["resolution"], cfg["format"]
    square, fit_notes = fit_square(im, res, cfg["fit"], cfg["background"], cfg["enlarge"])
    details = {"normalize": {**notes, **fit_notes, "from": [im.width, im.height]}}
    # validate the pixels we hold and the bytes we made instead of decoding the file again
    error = image_error(square, res)
    data = b""
    if not error:
        try:
            data = encode_bytes(square, fmt, cfg["quality"])  # only JPEG reads it (the rule passes it then)
        except Exception as e:
            error = f"encode failed: {type(e).__name__}: {e}"
    error = error or header_error(data, res, fmt)
    tmp_path, final_path = out.path(f"{row.id}.{fmt}")
    if not error:
        try:
            tmp_path.write_bytes(data)  # the shard folder is swapped in whole (atomic)
            if os.stat(tmp_path).st_size != len(data):
                error = f"short write: {os.stat(tmp_path).st_size} of {len(data)} bytes"
        except OSError as e:
            error = f"write failed: {e}"
    if error:
        tmp_path.unlink(missing_ok=True)
        return row.drop("invalid_output", details={**details, "error": error})
    return row.keep(path=final_path, width=res, height=res, details=details)


def normalize_shard(rows: list[Row], out: ShardDir, cfg: dict, threads: int = 1) -> list[Row]:
    """Every kept row normalized; ``cfg`` is (part of) the normalize block, the rest its
    schema defaults."""
    cfg = with_defaults("normalize", cfg)
    todo = [r for r in rows if r.kept]
    with ThreadPoolExecutor(max(1, threads)) as pool:  # PIL releases the GIL in codecs
        return list(tqdm(pool.map(lambda r: normalize_row(r, out, cfg), todo), total=len(todo),
                         desc="normalize", unit="img", mininterval=2))


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "validate":
        p = argparse.ArgumentParser(description="refuse anything not exactly R x R RGB")
        p.add_argument("--resolution", type=int, required=True)
        p.add_argument("--format", choices=sorted(FORMATS), required=True)
        p.add_argument("files", nargs="+")
        a = p.parse_args(argv[1:])
        bad = [(f, e) for f in a.files if (e := validation_error(f, a.resolution, a.format))]
        for f, e in bad:
            print(f"{f}: {e}", file=sys.stderr)
        raise SystemExit(1 if bad else 0)
    a = stage_argparser(__doc__).parse_args(argv)
    cfg = load_config_arg(a.config)
    with ShardDir(Path(a.output).parent) as out:
        rows = normalize_shard(read_manifest(a.input), out, cfg, a.threads)
        out.write_manifest(rows)
    print(f"normalize: {sum(r.kept for r in rows)}/{len(rows)} kept")


if __name__ == "__main__":
    main()
