"""Look at a trained generator: truncation sweep, style mixing, per-seed images, interpolation video.

    python -m gan.generate --network results/holo/finetune/network-final.npz \\
        --outdir results/holo/generate --config '{"seeds": [0, 1, 2, 3]}'

``--network`` is our checkpoint (the final network or any snapshot, ``.npz``) or a TF1 network
pickle (``.pkl``, e.g. our exported model or an NVIDIA one); the EMA generator Gs is used.
``--config`` is the ``generate:`` block as JSON (or @file); keys it leaves out take the schema
defaults. Written into ``--outdir`` (each file atomically):

  truncation.png     rows = ``seeds``, columns = ``truncation_psi`` values (1.0 -> 0.5)
  style_mixing.png   NVIDIA's layout: the top row are ``mixing_col_seeds``, the left column
                     ``mixing_row_seeds``; each cell is its row's image with the styles
                     ``mixing_styles`` (w layers) taken from its column
  seeds/seedNNNN.png one image per seed at ``psi``
  interpolation.mp4  a loop through ``video_seeds`` (linear in W at ``psi``), H.264 through the
                     ffmpeg that the imageio-ffmpeg package ships; interpolation.gif when that
                     package is missing (``video_format`` says which)
  generate.json      what was written, from which network, and the video format and why

Images are generated with constant noise (``noise_mode: const``) so reruns give the same pixels.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np

from util.config import load_config_arg, with_defaults
from util.files import atomic_write_text, atomic_write_with

MIN_VIDEO_SIZE = 256   # small networks are scaled up (nearest) so the video is watchable


def video_format() -> tuple[str, str]:
    """('mp4' | 'gif', why): MP4 needs the ffmpeg binary that imageio-ffmpeg ships."""
    if importlib.util.find_spec("imageio_ffmpeg") is None:
        return "gif", "imageio-ffmpeg is not installed (pip install imageio-ffmpeg for MP4)"
    try:
        import imageio_ffmpeg
        exe = imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as e:   # a broken install: say so and still write a video
        return "gif", f"imageio-ffmpeg has no usable ffmpeg ({e})"
    return "mp4", f"ffmpeg {exe}"


# ---------------------------------------------------------------- loading

def load_generator(path: str | os.PathLike):
    """The generator to sample from (Gs, else G) of our checkpoint or a TF1 pickle, float32."""
    path = str(path)
    if path.endswith(".pkl"):
        from gan import legacy
        G, _, Gs = legacy.load_tf1_pickle(path)
    else:
        from gan import checkpoint
        G, _, Gs, _ = checkpoint.load_network(path, num_fp16_res=0, conv_clamp=None)
    net = Gs if Gs is not None else G
    if net is None:
        raise ValueError(f"{path}: has no generator")
    return net


def seed_latents(seeds, latent_dim: int) -> np.ndarray:
    """One z per seed, as NVIDIA's generate.py draws it (RandomState(seed).randn)."""
    return np.stack([np.random.RandomState(int(s)).randn(latent_dim) for s in seeds]).astype(np.float32)


def _ws(Gs, seeds, psi: float, batch: int) -> np.ndarray:
    import tensorflow as tf
    z = seed_latents(seeds, Gs.latent_dim)
    return np.concatenate([Gs.mapping(tf.constant(z[i:i + batch]), truncation_psi=psi).numpy()
                           for i in range(0, len(z), batch)])


def _synthesize(Gs, ws: np.ndarray, batch: int) -> np.ndarray:
    """ws [N, num_ws, latent] -> uint8 NHWC."""
    import tensorflow as tf

    from gan.dataset import to_uint8
    out = [to_uint8(Gs.synthesis(tf.constant(ws[i:i + batch]), noise_mode="const")).numpy()
           for i in range(0, len(ws), batch)]
    empty = np.zeros((0, Gs.resolution, Gs.resolution, Gs.num_channels), np.uint8)
    return np.concatenate(out) if out else empty


# ---------------------------------------------------------------- pictures

def grid(cells: list[list[np.ndarray | None]], size: int, channels: int) -> np.ndarray:
    """Rows of HWC uint8 images (None = black cell) -> one image."""
    rows, cols = len(cells), max(len(r) for r in cells)
    out = np.zeros((rows * size, cols * size, channels), np.uint8)
    for r, row in enumerate(cells):
        for c, img in enumerate(row):
            if img is not None:
                out[r * size:(r + 1) * size, c * size:(c + 1) * size] = img
    return out


def _save_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image
    im = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    atomic_write_with(path, lambda f: im.save(f, format="PNG", compress_level=6))


def truncation_sweep(Gs, seeds, psis, batch: int) -> np.ndarray:
    """Rows = seeds, columns = psi values."""
    columns = [_synthesize(Gs, _ws(Gs, seeds, float(psi), batch), batch) for psi in psis]
    return grid([[columns[c][r] for c in range(len(psis))] for r in range(len(seeds))],
                Gs.resolution, Gs.num_channels)


def mixing_layers(styles, num_ws: int) -> list[int]:
    """The w layers taken from the column seed; layers the network lacks are dropped."""
    layers = sorted({int(i) for i in styles if 0 <= int(i) < num_ws})
    if not layers:
        raise ValueError(f"mixing_styles {list(styles)} names no layer of a {num_ws}-layer network")
    return layers


def style_mixing(Gs, row_seeds, col_seeds, styles, psi: float, batch: int) -> np.ndarray:
    """NVIDIA's style_mixing.py figure: row images with ``styles`` layers from the columns."""
    layers = mixing_layers(styles, Gs.num_ws)
    row_ws, col_ws = _ws(Gs, row_seeds, psi, batch), _ws(Gs, col_seeds, psi, batch)
    row_img, col_img = _synthesize(Gs, row_ws, batch), _synthesize(Gs, col_ws, batch)
    mixed = np.repeat(row_ws, len(col_seeds), axis=0)          # (row, col) pairs, row-major
    mixed[:, layers] = np.tile(col_ws, (len(row_seeds), 1, 1))[:, layers]
    cells_img = _synthesize(Gs, mixed, batch)
    cells = [[None] + list(col_img)]
    for r in range(len(row_seeds)):
        cells.append([row_img[r]] + list(cells_img[r * len(col_seeds):(r + 1) * len(col_seeds)]))
    return grid(cells, Gs.resolution, Gs.num_channels)


def interpolation_frames(Gs, seeds, frames_per_seed: int, psi: float, batch: int):
    """Frames (uint8 HWC) looping through ``seeds``: linear in W, back to the first seed."""
    ws = _ws(Gs, seeds, psi, batch)
    t = np.arange(frames_per_seed, dtype=np.float32) / frames_per_seed
    for k in range(len(ws)):
        a, b = ws[k], ws[(k + 1) % len(ws)]
        path = a[None] + (b - a)[None] * t[:, None, None]
        for i in range(0, len(path), batch):
            yield from _synthesize(Gs, path[i:i + batch], batch)


def _upscale(frame: np.ndarray, factor: int) -> np.ndarray:
    if frame.shape[-1] == 1:
        frame = np.repeat(frame, 3, axis=-1)
    return frame.repeat(factor, axis=0).repeat(factor, axis=1) if factor > 1 else frame


def write_video(path: Path, frames, fps: int, size: int, fmt: str) -> None:
    """MP4 (H.264, yuv420p, through imageio-ffmpeg's ffmpeg) or GIF (Pillow), atomically."""
    factor = max(1, MIN_VIDEO_SIZE // size)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if fmt == "mp4":
            import imageio_ffmpeg
            side = size * factor
            writer = imageio_ffmpeg.write_frames(str(tmp), (side, side), fps=fps, codec="libx264",
                                                 pix_fmt_out="yuv420p", quality=8,
                                                 macro_block_size=1, ffmpeg_log_level="error")
            writer.send(None)
            for frame in frames:
                writer.send(np.ascontiguousarray(_upscale(frame, factor)))
            writer.close()
        else:
            from PIL import Image
            images = [Image.fromarray(_upscale(f, factor)) for f in frames]
            images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                           duration=max(20, round(1000 / fps)), loop=0)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------- main

def generate(network: str | os.PathLike, outdir: str | os.PathLike, cfg: dict,
             video: str | None = None) -> dict:
    """Write every figure of the module docstring into ``outdir``; returns the index."""
    cfg = with_defaults("generate", cfg)
    outdir = Path(outdir)
    import tensorflow as tf
    for gpu in tf.config.list_physical_devices("GPU"):   # share a GPU instead of taking it all
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:   # already initialized in this process: keep its setting
            pass
    Gs = load_generator(network)
    batch, psi = int(cfg["batch"]), float(cfg["psi"])
    fmt, why = video_format()
    if video is not None and video != fmt:
        if video == "mp4":
            raise SystemExit(f"generate: MP4 asked for but {why}")
        fmt, why = "gif", "GIF asked for"
    from gan.runs import describe, network_provenance
    prov = network_provenance(network)   # the run and cleaning round it came from
    index = {"network": str(network), "run": prov, "made_by": describe(prov),
             "resolution": Gs.resolution, "psi": psi, "files": {}}

    _save_png(outdir / "truncation.png", truncation_sweep(Gs, cfg["seeds"], cfg["truncation_psi"], batch))
    index["files"]["truncation"] = "truncation.png"
    _save_png(outdir / "style_mixing.png", style_mixing(Gs, cfg["mixing_row_seeds"], cfg["mixing_col_seeds"],
                                                        cfg["mixing_styles"], psi, batch))
    index["files"]["style_mixing"] = "style_mixing.png"
    index["mixing_layers"] = mixing_layers(cfg["mixing_styles"], Gs.num_ws)
    images = _synthesize(Gs, _ws(Gs, cfg["seeds"], psi, batch), batch)
    index["files"]["seeds"] = []
    for seed, img in zip(cfg["seeds"], images):
        name = f"seeds/seed{int(seed):04d}.png"
        _save_png(outdir / name, img)
        index["files"]["seeds"].append(name)
    name = f"interpolation.{fmt}"
    write_video(outdir / name, interpolation_frames(Gs, cfg["video_seeds"], int(cfg["video_frames_per_seed"]),
                                                    psi, batch), int(cfg["video_fps"]), Gs.resolution, fmt)
    index["files"]["video"] = name
    index["video_format"], index["video_why"] = fmt, why
    atomic_write_text(outdir / "generate.json", json.dumps(index, indent=1, sort_keys=True) + "\n")
    return index


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m gan.generate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--network", required=True,
                   help="our checkpoint (.npz: network-final.npz or a snapshot) or a TF1 pickle (.pkl)")
    p.add_argument("--outdir", required=True, help="folder for the figures (created)")
    p.add_argument("--config", default="{}", help="the generate config block as JSON or @file "
                   "(seeds, truncation_psi, psi, mixing_row_seeds, mixing_col_seeds, mixing_styles, "
                   "video_seeds, video_frames_per_seed, video_fps, batch)")
    p.add_argument("--video", choices=["mp4", "gif"], default=None,
                   help="force a video format (default: mp4 when imageio-ffmpeg is installed, else gif)")
    p.add_argument("--training-set", help="the final round's set: a network older than it gets a warning")
    a = p.parse_args(argv)
    if a.training_set:
        from gan.runs import staleness
        if stale := staleness(a.network, a.training_set):
            print(stale, file=sys.stderr, flush=True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    index = generate(a.network, a.outdir, load_config_arg(a.config), video=a.video)
    print(json.dumps(index, sort_keys=True), flush=True)



def figure_links(generate_dir: str | os.PathLike, relative_to: str | os.PathLike) -> list[tuple[str, str]]:
    """[(label, path relative to ``relative_to``)] of the figures a finished generate run lists
    in generate.json (for a report page to link); [] when there is none. No TensorFlow."""
    generate_dir = Path(generate_dir)
    try:
        index = json.loads((generate_dir / "generate.json").read_text())
    except (OSError, ValueError):
        return []
    files = index.get("files", {})
    named = [("truncation sweep", files.get("truncation")), ("style mixing", files.get("style_mixing")),
             (f"interpolation video ({index.get('video_format', '?')})", files.get("video"))]
    named += [(Path(f).stem, f) for f in files.get("seeds", [])]
    return [(label, os.path.relpath(generate_dir / f, relative_to)) for label, f in named
            if f and (generate_dir / f).is_file()]


if __name__ == "__main__":
    main()
