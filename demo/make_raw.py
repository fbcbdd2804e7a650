"""Build the demo's raw folder from real photos that scikit-image ships (no network).

The astronaut photo (NASA, public domain) is the "character": varied crops, zooms, small
rotations and colour shifts stand in for a folder of different pictures of one person.
Mixed in so every stage has work: exact duplicates saved differently (clean), grayscale
and sepia copies (monochrome filter), small copies (upscale), photos with no face (crop),
a truncated file, an empty file and a text file named .jpg (ingest), nested folders.

    python demo/make_raw.py demo/raw
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

N_VARIANTS = 40


def astronaut_variant(base: Image.Image, rng: np.random.RandomState) -> Image.Image:
    # the face sits near (220, 120) in the 512 x 512 photo; keep it inside every crop
    side = int(rng.uniform(260, 420))
    cx, cy = 220 + rng.randint(-30, 31), 130 + rng.randint(-20, 21)
    left = int(np.clip(cx - side * rng.uniform(0.35, 0.65), 0, 512 - side))
    top = int(np.clip(cy - side * rng.uniform(0.25, 0.45), 0, 512 - side))
    im = base.rotate(rng.uniform(-8, 8), resample=Image.Resampling.BICUBIC,
                     center=(cx, cy), fillcolor=(0, 0, 0))
    im = im.crop((left, top, left + side, top + side))
    im = ImageEnhance.Color(im).enhance(rng.uniform(0.7, 1.3))
    im = ImageEnhance.Brightness(im).enhance(rng.uniform(0.8, 1.2))
    im = ImageEnhance.Contrast(im).enhance(rng.uniform(0.8, 1.2))
    out = int(rng.uniform(300, 520))
    return im.resize((out, out), Image.Resampling.LANCZOS)


def save(im: Image.Image, path: Path, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        return  # never overwrite: the raw folder is the user's (and keeps mtimes for reruns)
    im.save(path, **kw)


def build(dest: Path) -> int:
    from skimage import data

    rng = np.random.RandomState(2026)
    astronaut = Image.fromarray(data.astronaut())
    made = []
    for i in range(N_VARIANTS):
        folder = dest / ("session_a" if i % 2 else "session_b")
        im = astronaut_variant(astronaut, rng)
        path = folder / f"astronaut_{i:02d}.jpg"
        save(im, path, quality=int(rng.uniform(85, 97)))
        made.append(path)
    first = Image.open(made[0])
    save(first, dest / "dupes" / "astronaut_00_copy.png", compress_level=9)   # exact dup, other codec
    save(first.convert("RGB"), dest / "dupes" / "astronaut_00_copy2.png", compress_level=1)
    save(ImageOps.grayscale(Image.open(made[1])), dest / "gray" / "astronaut_01_gray.jpg", quality=90)
    sepia = ImageOps.colorize(ImageOps.grayscale(Image.open(made[2])), "#3b2410", "#f0d9b0")
    save(sepia, dest / "gray" / "astronaut_02_sepia.jpg", quality=90)
    for k in (3, 4, 5):
        small = Image.open(made[k]).resize((150, 150), Image.Resampling.LANCZOS)
        save(small, dest / "small" / f"astronaut_{k:02d}_small.png")
    for name in ("coffee", "rocket", "chelsea"):
        save(Image.fromarray(getattr(data, name)()), dest / "noface" / f"{name}.jpg", quality=92)
    buf = io.BytesIO()
    Image.open(made[6]).save(buf, format="JPEG", quality=90)
    broken = dest / "broken"
    broken.mkdir(parents=True, exist_ok=True)
    for name, payload in (("truncated.jpg", buf.getvalue()[: len(buf.getvalue()) // 2]),
                          ("empty.jpg", b""), ("notes.jpg", b"not an image, just text\n")):
        if not (broken / name).exists():
            (broken / name).write_bytes(payload)
    return sum(1 for p in dest.rglob("*") if p.is_file())


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dest", type=Path)
    a = p.parse_args(argv)
    n = build(a.dest)
    print(f"demo raw folder: {a.dest} ({n} files)", file=sys.stderr)


if __name__ == "__main__":
    main()
