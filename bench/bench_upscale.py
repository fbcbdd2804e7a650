"""Seconds per image for the upscale stage: waifu2x (ncnn CPU path, and any Vulkan
device) against Lanczos, on real crops of ../shared/testdata.

    python bench/bench_upscale.py                      # cpu + hardware Vulkan GPUs + Lanczos
    python bench/bench_upscale.py --software-vulkan    # also Mesa llvmpipe (minutes on 2 cores)
    python bench/bench_upscale.py --repeat 5 --threads 2 --sizes 128 256

Each case: one warm-up call (model load, Vulkan pipeline compile), then --repeat timed
x2 passes of a size x size crop; also the stage's own path for a 228 x 159 face to a
512 target (two passes, as the stage does it). Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TESTDATA, cpu_model  # noqa: E402
from PIL import Image  # noqa: E402

from pipeline import upscale  # noqa: E402


def crops(sizes):
    """size x size crops (face and hair) of a 600 x 600 anime image."""
    src = Image.open(TESTDATA / "anime_miku_CC_BY-NC.jpg").convert("RGB")
    return {s: src.crop((300 - s // 2, 0, 300 - s // 2 + s, s)) for s in sizes if s <= 600}


def timed(fn, repeat):
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--model", default="art", choices=sorted(upscale.WAIFU2X_MODELS))
    p.add_argument("--noise", type=int, default=1)
    p.add_argument("--software-vulkan", action="store_true",
                   help="also time software Vulkan devices (llvmpipe), which the stage never uses")
    a = p.parse_args(argv)

    devices, error = upscale.probe_vulkan_devices()
    print(f"# {time.strftime('%Y-%m-%d')} {platform.node()} nproc={os.cpu_count()} "
          f"cpu={cpu_model()} threads={a.threads}")
    print(f"# Vulkan devices: {devices or 'none'} {error}".rstrip())
    images = crops(a.sizes)
    small = Image.open(TESTDATA / "anime_miku_small.png").convert("RGB")  # 228 x 159

    engines = {"waifu2x cpu (gpuid=-1)": "cpu"}
    for index, name in devices:
        if upscale.is_software_device(name) and not a.software_vulkan:
            continue
        engines[f"waifu2x vulkan:{index} {name}"] = index
    rows = []
    for label, gpu in engines.items():
        engine = upscale.Waifu2xEngine(a.model, a.noise, gpu=gpu, threads=a.threads,
                                       allow_software=a.software_vulkan)
        assert engine.device == "cpu" or label.startswith(f"waifu2x {engine.device}"), engine.device
        for size, im in images.items():
            rows.append((label, f"{size} -> {2 * size}", timed(lambda: engine.upscale(im, 1), a.repeat)))
        rows.append((label, "228x159 -> 912x636 (2 passes)",
                     timed(lambda: engine.upscale(small, 2), a.repeat)))
        engine.close()
    for size, im in images.items():
        rows.append(("lanczos", f"{size} -> {2 * size}",
                     timed(lambda: upscale.lanczos_upscale(im, 1), a.repeat * 10)))
    rows.append(("lanczos", "228x159 -> 912x636", timed(lambda: upscale.lanczos_upscale(small, 2),
                                                        a.repeat * 10)))

    rows += stage_timings(a.threads)
    print("\n| upscaler | image | s/image |\n|---|---|---|")
    for label, case, seconds in rows:
        print(f"| {label} | {case} | {seconds:.3f} |")


def stage_timings(threads, count=8):
    """The stage itself (device probe, model load, PNG writes, cache) on ``count`` different
    128 px crops with target 256: a first run (cache misses), then a rerun (cache hits)."""
    import tempfile

    from pipeline.manifest import Row, ShardDir
    src = Image.open(TESTDATA / "anime_miku_CC_BY-NC.jpg").convert("RGB")
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for i in range(count):
            path = Path(tmp) / f"c{i}.png"
            src.crop((i * 50, i * 40, i * 50 + 128, i * 40 + 128)).save(path)
            rows.append(Row(id=f"c{i}", source=path.name, path=str(path), width=128, height=128))
        cfg = {"method": "waifu2x", "model": "art", "noise": 1, "gpu": "auto", "target": 256,
               "background": [0, 0, 0]}
        for label in ("stage waifu2x auto, cache misses", "stage rerun, cache hits"):
            start = time.perf_counter()
            with ShardDir(Path(tmp) / "shard") as shard:
                upscale.Upscaler(cfg, Path(tmp) / "cache", threads).shard(rows, shard)
            out.append((label, f"{count} x 128 -> 256", (time.perf_counter() - start) / count))
    return out



if __name__ == "__main__":
    main()
