"""Decoding any raw image into upright 8-bit sRGB, and the decode check ingest uses.

Pure functions: they never write; callers decide where results go.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import shutil
import sys
import tempfile
import warnings
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageFile, ImageOps, UnidentifiedImageError

from pipeline.manifest import atomic_write_text

# We do our own pixel-count guard (ingest.max_pixels) so the limit is a config value,
# and truncated files must fail loudly instead of decoding grey.
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False

_SRGB = ImageCms.createProfile("sRGB")
_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


# libjpeg's warnings that mean the pixels are not what was encoded (jerror.h JWRN_*).
# Pillow discards libjpeg warnings, so a JPEG with a zeroed run mid-scan decodes to a
# garbage lower half without an error; OpenCV's decoder prints them to stderr.
_JPEG_DAMAGE = ("Corrupt JPEG data", "Premature end of JPEG file",
                "Inconsistent progression sequence")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@contextmanager
def _fd2_captured():
    """Collect what C code writes to file descriptor 2 (libjpeg warnings) while inside."""
    sys.stderr.flush()
    saved = os.dup(2)
    out: list[str] = []
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.append(tmp.read().decode("utf-8", "replace"))


def jpeg_damage(data: bytes) -> str:
    """libjpeg's first corrupt-data / premature-end warning for these JPEG bytes, or "".

    Redirects the process's fd 2 while decoding: call it from one thread at a time
    (ingest checks a shard's files one after another)."""
    import cv2
    with _fd2_captured() as err:
        cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    for line in err[0].splitlines():
        if line.startswith(_JPEG_DAMAGE):
            return line.strip()
    return ""


def png_damage(data: bytes) -> tuple[str, str]:
    """("", "") when every PNG chunk is whole with a correct CRC up to IEND, else
    ("truncated" | "corrupt_data", what is wrong). Pillow stops reading once it has the
    pixels, so a file cut after its image data or with a damaged chunk decodes silently."""
    pos = len(_PNG_SIGNATURE)
    while True:
        if pos + 8 > len(data):
            return "truncated", f"file ends at byte {len(data)} before IEND"
        length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
        name = ctype.decode("latin-1")
        end = pos + 12 + length
        if end > len(data):
            return "truncated", f"{name!r} chunk at byte {pos} cut short ({length} bytes declared)"
        (crc,) = struct.unpack(">I", data[end - 4:end])
        if zlib.crc32(data[pos + 4:end - 4]) != crc:
            return "corrupt_data", f"{name!r} chunk at byte {pos}: CRC mismatch"
        if ctype == b"IEND":
            return "", ""
        pos = end


def too_large(size: int, max_pixels: int) -> bool:
    """No picture of max_pixels is this many bytes (decode_check's file_too_large)."""
    return size > max(1 << 26, 16 * max_pixels)


def decode_check(path: str | Path, max_pixels: int, keep_damaged: bool = False,
                 data: bytes | None = None) -> tuple[str, dict]:
    """Fully decode ``path`` the way later stages will (``load_rgb``). Returns ("", info)
    when usable, else (reason, info).

    Reasons: unreadable, file_too_large, empty_file, not_an_image, decompression_bomb, truncated,
    corrupt_data (libjpeg corrupt-data warnings, PNG chunk CRC), decode_error. With
    ``keep_damaged`` a file that decodes despite truncated/corrupt data is kept and the
    damage is recorded in ``info["damage"]``.
    """
    path = Path(path)
    info: dict = {}
    if data is None:  # else the caller read the file (``data``: its bytes)
        try:
            size = path.stat().st_size
            if too_large(size, max_pixels):
                return "file_too_large", {"bytes": size, "max_pixels": max_pixels}
            data = path.read_bytes()
        except OSError as e:
            return "unreadable", {"error": e.strerror or str(e)}
    elif too_large(len(data), max_pixels):
        return "file_too_large", {"bytes": len(data), "max_pixels": max_pixels}
    info["bytes"] = len(data)
    if not data:
        return "empty_file", info
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                first_real_frame(im, info)  # the size checked is the size used
                info.update(format=im.format, mode=im.mode, width=im.width, height=im.height)
                if im.width * im.height > max_pixels:
                    info["max_pixels"] = max_pixels
                    return "decompression_bomb", info
                frames = getattr(im, "n_frames", 1)
                if frames > 1:
                    info["frames"] = frames
            load_rgb(io.BytesIO(data))  # what crop/clean/normalize will do with it
    except UnidentifiedImageError:
        return "not_an_image", info
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        info["error"] = str(e)
        return "decompression_bomb", info
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        info["error"] = str(e)
        msg = str(e).lower()
        return ("truncated" if "truncated" in msg or "broken data stream" in msg
                or isinstance(e, EOFError) else "decode_error"), info
    except Exception as e:  # a codec bug must not crash a shard of thousands
        info["error"] = f"{type(e).__name__}: {e}"
        return "decode_error", info
    reason, damage = "", ""
    if info["format"] == "JPEG":
        damage = jpeg_damage(data)
        reason = "truncated" if damage.startswith("Premature end") else "corrupt_data"
    elif info["format"] == "PNG":
        reason, damage = png_damage(data)
    if damage:
        info["damage"] = damage
        if not keep_damaged:
            return reason, info
    return "", info


def _to_8bit_gray(im: Image.Image) -> Image.Image:
    a = np.asarray(im, dtype=np.float64)
    if im.mode == "F":
        top = 1.0 if a.max(initial=0) <= 1.0 else 255.0
        a = a * (255.0 / top)
    elif im.mode in _SIXTEEN_BIT and (im.mode != "I" or a.max(initial=0) > 255):
        a = a / 257.0
    return Image.fromarray(np.rint(a).clip(0, 255).astype(np.uint8), "L")


def _icc_to_srgb(im: Image.Image, notes: dict) -> Image.Image:
    icc = im.info.get("icc_profile")
    if not icc:
        return im
    out_mode = "RGBA" if im.mode in ("RGBA", "LA", "PA") else "RGB"
    src_mode = {"LA": "RGBA", "PA": "RGBA", "P": "RGB"}.get(im.mode, im.mode)
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if src_mode != im.mode:
            im = im.convert(src_mode)
        converted = ImageCms.profileToProfile(im, src, _SRGB, outputMode=out_mode)
        notes["icc"] = "converted"
        return converted
    except (ImageCms.PyCMSError, OSError, ValueError) as e:
        # e.g. a grayscale profile on an RGB image: keep pixels, record why
        notes["icc"] = f"ignored: {e}"
        return im


def first_real_frame(im: Image.Image, notes: dict | None = None) -> None:
    """Move ``im`` (just opened) to the frame to use. Image.open is at the first frame, and
    we never seek(0): a PSD refuses it (its frame 0 is the merged image, layers are 1..n).
    A TIFF may start with a thumbnail page (NewSubfileType bit 0, "reduced resolution"):
    use the first full page."""
    if im.format != "TIFF" or not im.tag_v2.get(254, 0) & 1:
        return
    for page in range(1, getattr(im, "n_frames", 1)):
        im.seek(page)
        if not im.tag_v2.get(254, 0) & 1:
            if notes is not None:
                notes["page"] = page
            return
    im.seek(0)


def load_rgb(path: str | Path | io.BytesIO, background: tuple[int, int, int] = (0, 0, 0)) -> tuple[Image.Image, dict]:
    """Open ``path`` as upright 8-bit sRGB ``RGB``. Returns (image, notes about what was done).

    EXIF orientation applied; ICC profile converted to sRGB; CMYK, LAB, 16-bit, float,
    palette and grayscale made RGB; alpha composited over ``background``; first frame
    of an animation, merged image of a PSD, first full-resolution page of a TIFF.
    """
    notes: dict = {}
    with Image.open(path) as src:
        first_real_frame(src, notes)
        notes["mode"] = src.mode
        im = ImageOps.exif_transpose(src)  # copies, also when no orientation tag
        if im is src:
            im = src.copy()
    orientation = src.getexif().get(0x0112, 1) if hasattr(src, "getexif") else 1
    if orientation not in (None, 1):
        notes["exif_orientation"] = orientation
    if im.mode in _SIXTEEN_BIT or im.mode == "F":
        im = _to_8bit_gray(im)
    if im.mode == "LAB":
        lab = ImageCms.createProfile("LAB")
        im = ImageCms.applyTransform(im, ImageCms.buildTransform(lab, _SRGB, "LAB", "RGB"))
        im.info.pop("icc_profile", None)  # the pixels are sRGB now
        notes["icc"] = "lab->srgb"
    elif im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    im = _icc_to_srgb(im, notes)
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        if rgba.getextrema()[3][0] < 255:
            notes["alpha"] = "composited"
        canvas = Image.new("RGBA", rgba.size, tuple(background) + (255,))
        canvas.alpha_composite(rgba)
        im = canvas
    if im.mode != "RGB":
        im = im.convert("RGB")
    im.info.pop("icc_profile", None)
    return im, notes



def load_rgb_of(data: bytes, path: str) -> tuple[Image.Image, dict]:
    """``load_rgb`` of a file's bytes, already read (to hash them); where they do not
    decode, of its path, so the error names the file (a message about the bytes would
    name a memory address)."""
    try:
        return load_rgb(io.BytesIO(data))
    except Exception:
        return load_rgb(path)

def pixel_digest(im: Image.Image) -> str:
    """sha256 of decoded pixels + size: equal for the same picture saved differently."""
    import hashlib
    h = hashlib.sha256(f"{im.mode}:{im.width}x{im.height}:".encode())
    h.update(im.tobytes())
    return h.hexdigest()


def png_bytes(im: Image.Image) -> bytes:
    """``im`` (L, RGB or RGBA) as PNG: zlib level 1 with the Up filter on every row.
    Lossless and deterministic like PIL's encoder, but about 2x faster than its adaptive
    filtering at level 1 (20 -> 11 ms for a 512 px face) and a few percent smaller
    (bench/RESULTS.md); other modes go through PIL."""
    import cv2

    channels = {"L": None, "RGB": [2, 1, 0], "RGBA": [2, 1, 0, 3]}  # OpenCV wants BGR(A)
    if im.mode not in channels:
        buf = io.BytesIO()
        im.save(buf, format="PNG", compress_level=1)
        return buf.getvalue()
    pixels = np.asarray(im)
    if channels[im.mode]:
        pixels = pixels[:, :, channels[im.mode]]
    ok, data = cv2.imencode(".png", pixels, [cv2.IMWRITE_PNG_COMPRESSION, 1,
                                              cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP])
    if not ok:
        raise OSError(f"OpenCV could not encode a {im.mode} {im.width}x{im.height} PNG")
    return data.tobytes()


def save_png(im: Image.Image, path) -> None:
    """Lossless intermediate format between stages (fast, deterministic); ``path`` is a
    file name or a binary file object."""
    data = png_bytes(im)
    if hasattr(path, "write"):
        path.write(data)
    else:
        Path(path).write_bytes(data)


# ---------------------------------------------------------------- results stored by content

def file_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def code_digest(*modules: str) -> str:
    """sha256 of pipeline modules' source (e.g. "imaging.py"): part of a stored result's
    key, so editing the code that made it makes it stale."""
    h = hashlib.sha256()
    for module in modules:
        h.update((Path(__file__).parent / module).read_bytes())
    return h.hexdigest()


def place(src: Path, dest: Path) -> None:
    """Put a stored file into a shard folder (or a shard's file into a store): a hard link
    when possible (files are never modified in place: every write is temp + rename), else
    a copy."""
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)


class ContentStore:
    """JSON records stored per file content (sha256 of the bytes) and settings, across runs
    and shards: ``<folder>/<settings key>/<digest[:2]>/<digest>.json``. ``settings`` must
    hold everything else the record depends on (options, code, library versions): a record
    is used only where computing it again would give the same. Without a folder it stores
    nothing. A record that cannot be read is a miss; one that cannot be written is skipped
    (a full or read-only cache must not cost the result)."""

    def __init__(self, folder: str | os.PathLike | None, settings: dict):
        self.folder = None
        if folder:
            text = json.dumps(settings, sort_keys=True)
            self.folder = Path(folder) / hashlib.sha256(text.encode()).hexdigest()[:20]
            about = self.folder / "settings.json"  # for a person looking in the cache
            if not about.exists():
                try:
                    atomic_write_text(about, text + "\n")
                except OSError:
                    pass

    def path_of(self, digest: str, suffix: str = ".json") -> Path:
        """Where the record of ``digest`` is stored, or a file stored beside it."""
        return self.folder / digest[:2] / f"{digest}{suffix}"

    def get(self, digest: str) -> dict | None:
        if self.folder is None:
            return None
        try:
            return json.loads(self.path_of(digest).read_bytes())
        except (OSError, ValueError):
            return None

    def put(self, digest: str, record: dict) -> None:
        if self.folder is None:
            return
        path = self.path_of(digest)
        try:
            # temp + rename, without manifest's fsync: that costs ~2 ms a file (4 s of a
            # 2,000-file first run), and a record a power cut loses or cuts short is a miss
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(json.dumps(record))
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as e:
            print(f"faceprep: not stored in {self.folder}: {e}", file=sys.stderr)
