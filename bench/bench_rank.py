"""Discriminator ranking: throughput and how much reshuffling steadies the ranking.

    python bench/bench_rank.py                                  # 64 px, config-f channels
    python bench/bench_rank.py --resolution 128 --images 64 --stability-images 0

1. Throughput of pipeline.rank.score_paths on real test images made R x R, for the seed's
   way (ranker.py: every image once, no mirror: shuffles=1, mirror off) and our default
   (5 shuffles + mirror = 10 D evaluations per image). Reports images/s and D evaluations/s.
2. Stability: a D's logit depends on its minibatch-stddev companions, so one pass gives a
   ranking that depends on the batch order. Ranking the same images with two different
   seeds, the Spearman correlation between the two rankings shows how much of the order is
   the batch lottery (1.0 = none). Uses a small D so it stays quick on CPU.

The D is randomly initialised unless --network names a gan.checkpoint .npz (then its D,
at its resolution, is used for both parts; a trained D is where the coupling shows).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TESTDATA, spearman  # noqa: E402

from pipeline.imaging import decode_check, load_rgb  # noqa: E402
from pipeline.rank import score_paths  # noqa: E402


def make_images(folder: Path, resolution: int, count: int) -> list[str]:
    """``count`` R x R PNGs from every decodable test image (and mirrored / rotated copies)."""
    sources = [p for p in sorted(TESTDATA.rglob("*")) if p.is_file() and p.suffix.lower() in
               (".jpg", ".png", ".gif", ".tif") and not decode_check(p, 40_000_000)[0]]
    bases = [load_rgb(p)[0].resize((resolution, resolution), Image.Resampling.LANCZOS) for p in sources]
    variants = [lambda im: im, ImageOps.mirror, lambda im: im.rotate(90), ImageOps.flip]
    paths = []
    for i in range(count):
        im = variants[(i // len(bases)) % len(variants)](bases[i % len(bases)])
        path = folder / f"{i:05d}.png"
        im.save(path, compress_level=1)
        paths.append(str(path))
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--channel-base", type=int, default=16384)
    p.add_argument("--channel-max", type=int, default=512)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--stability-images", type=int, default=128)
    p.add_argument("--stability-resolution", type=int, default=32)
    p.add_argument("--network", help="score with this checkpoint's D instead of a random one")
    a = p.parse_args()
    trained = None
    if a.network:
        from gan.checkpoint import load_network
        trained = load_network(a.network)[1]
        a.resolution = a.stability_resolution = trained.resolution

    import tensorflow as tf
    from gan.networks import Discriminator
    device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
    print(f"# bench_rank {time.strftime('%Y-%m-%d')} on {platform.node()} ({os.cpu_count()} cores, {device})")
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_images(Path(tmp), a.resolution, a.images)
        D = trained or Discriminator(a.resolution, channel_base=a.channel_base, channel_max=a.channel_max, seed=0)
        print(f"\n## throughput: {a.images} images {a.resolution}px, D "
              f"{a.network or f'channel_base {a.channel_base} max {a.channel_max}'}, "
              f"up to {a.batch} images per D call")
        print("| mode | D evaluations/image | seconds | images/s | D evaluations/s |")
        print("|---|---|---|---|---|")
        modes = [("seed ranker.py style (1 pass, no mirror)", 1, False), ("faceprep default (5 shuffles + mirror)", 5, True)]
        score_paths(D, paths[:a.batch], {"group_size": 4, "shuffles": 1, "mirror": True, "seed": 0,
                                         "batch": a.batch}, a.resolution, progress=False)  # trace once
        for label, shuffles, mirror in modes:
            cfg = {"group_size": 4, "shuffles": shuffles, "mirror": mirror, "seed": 0, "batch": a.batch}
            _, st = score_paths(D, paths, cfg, a.resolution, progress=False)
            print(f"| {label} | {shuffles * (2 if mirror else 1)} | {st['seconds']:.2f} | "
                  f"{st['images_per_second']:.1f} | {st['d_evaluations_per_second']:.1f} |")

    if a.stability_images:
        res = a.stability_resolution
        with tempfile.TemporaryDirectory() as tmp:
            paths = make_images(Path(tmp), res, a.stability_images)
            D = trained or Discriminator(res, channel_base=1024, channel_max=64, seed=0)
            print(f"\n## ranking stability: {len(paths)} images {res}px, small D; Spearman correlation "
                  "between the rankings from two seeds (1.0 = batch order does not matter)")
            print("| shuffles | mirror | Spearman(seed 0, seed 1) | mean std over shuffles / score spread |")
            print("|---|---|---|---|")
            for shuffles, mirror in ((1, False), (5, False), (5, True), (20, True)):
                runs = []
                for seed in (0, 1):
                    cfg = {"group_size": 4, "shuffles": shuffles, "mirror": mirror, "seed": seed, "batch": 64}
                    per_shuffle, _ = score_paths(D, paths, cfg, res, progress=False)
                    runs.append(per_shuffle)
                means = [r.mean(0) for r in runs]
                noise = runs[0].std(0).mean() / means[0].std() if shuffles > 1 else float("nan")
                print(f"| {shuffles} | {mirror} | {spearman(*means):.4f} | {noise:.3f} |")


if __name__ == "__main__":
    main()
