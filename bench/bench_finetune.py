"""StyleGAN2 training speed: sec/kimg for a resolution, network size and batch.

    python bench/bench_finetune.py                                   # tiny CPU config, 32 px
    python bench/bench_finetune.py --resolution 512 --batch 16 --channel-base 32768 \\
        --channel-max 512 --latent 512 --mapping 8 --kimg 0.5        # config-f shape, on a GPU

Times the real training step (gan.training_loop.Trainer: G step, D step, lazy R1 every
r1_interval minibatches, EMA update) on real test images made R x R and exported with
pipeline.export's TFRecord writer, read back through gan.dataset. Tracing/compilation is
timed apart from the steady state. Reports the device and, on GPU, peak GPU memory
(tf.config.experimental.get_memory_info). With --results, appends a section to
bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, SHARED, cpu_model  # noqa: E402



def make_tfrecords(folder: Path, resolution: int, images: int) -> Path:
    """Real test images (centre-cropped, resized) exported as NVIDIA TFRecords."""
    from PIL import Image

    from pipeline.export import write_tfrecords
    from pipeline.imaging import load_rgb
    from pipeline.manifest import Row

    sources = sorted(p for p in (SHARED / "testdata").glob("*.*") if p.suffix in (".jpg", ".png"))
    rows = []
    for i in range(images):
        im, _ = load_rgb(sources[i % len(sources)])
        side = min(im.size)
        im = im.crop((0, 0, side, side)).resize((resolution, resolution), Image.LANCZOS)
        if i >= len(sources):
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        path = folder / f"img{i:05d}.png"
        im.save(path)
        rows.append(Row(id=path.stem, source=str(path), path=str(path), width=resolution,
                        height=resolution))
    write_tfrecords(rows, folder / "tfrecords", "bench")
    return folder / "tfrecords"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--channel-base", type=int, default=256)
    p.add_argument("--channel-max", type=int, default=32)
    p.add_argument("--latent", type=int, default=32)
    p.add_argument("--mapping", type=int, default=2)
    p.add_argument("--kimg", type=float, default=0.2, help="images timed after warm-up (thousands)")
    p.add_argument("--images", type=int, default=32, help="dataset size")
    p.add_argument("--mixed-precision", default="auto", choices=["auto", "true", "false"])
    p.add_argument("--xla", action="store_true")
    p.add_argument("--ada-target", type=float, default=0.0)
    p.add_argument("--results", action="store_true", help="append the result to bench/RESULTS.md")
    a = p.parse_args()

    import tensorflow as tf

    from gan.dataset import make_dataset
    from util.config import with_defaults
    from gan.training_loop import Trainer, build_networks, setup_devices

    mixed = {"auto": "auto", "true": True, "false": False}[a.mixed_precision]
    cfg = with_defaults("finetune", {"channel_base": a.channel_base, "channel_max": a.channel_max,
                          "latent_dim": a.latent, "mapping_layers": a.mapping, "batch": a.batch,
                          "mixed_precision": mixed, "xla": a.xla, "ada_target": a.ada_target})
    strategy, use_mixed = setup_devices(cfg)
    gpus = tf.config.list_physical_devices("GPU")
    device = (", ".join(tf.config.experimental.get_device_details(g).get("device_name", g.name)
                        for g in gpus) if gpus else f"CPU: {cpu_model()}")

    with tempfile.TemporaryDirectory() as tmp:
        data = make_tfrecords(Path(tmp), a.resolution, a.images)
        with strategy.scope():
            G, D, Gs, _, _ = build_networks(cfg, a.resolution, 3, None, use_mixed)
        trainer = Trainer(G, D, Gs, cfg, strategy, use_mixed)
        batches = iter(strategy.experimental_distribute_dataset(
            make_dataset(data, a.batch, mirror=True, seed=0)))
        params = sum(int(np.prod(v.shape)) for v in G.trainable_variables + D.trainable_variables)

        def run(first_step: int, steps: int) -> None:
            for step in range(first_step, first_step + steps):
                result = trainer.step(next(batches), step, 0.1 if a.ada_target else 0.0)
                trainer.update_ema((step + 1) * a.batch)
            float(result.d_loss)          # wait for the device

        # warm-up: traces the main step and the R1 step (step 0 runs both)
        start = time.time()
        run(0, max(2, trainer.r1_interval + 1))
        warmup_s = time.time() - start
        if gpus:
            tf.config.experimental.reset_memory_stats("GPU:0")
        steps = max(1, int(round(a.kimg * 1000 / a.batch)))
        start = time.time()
        run(1000, steps)   # 1000: a multiple of r1_interval, so R1 runs at its real cadence
        elapsed = time.time() - start
    sec_per_kimg = elapsed / (steps * a.batch) * 1000
    memory = ""
    if gpus:
        peak = tf.config.experimental.get_memory_info("GPU:0")["peak"]
        memory = f"; peak GPU memory {peak / 2**30:.2f} GiB (steady state)"

    line = (f"{a.resolution} px, batch {a.batch}, channel_base {a.channel_base}, channel_max "
            f"{a.channel_max}, latent {a.latent}, mapping {a.mapping}, {params / 1e6:.2f} M params, "
            f"mixed precision {'on' if use_mixed else 'off'}, xla {'on' if a.xla else 'off'}, "
            f"ADA {'on' if a.ada_target else 'off'}: {sec_per_kimg:.1f} sec/kimg "
            f"({steps} steps, {steps * a.batch} images; warm-up/tracing {warmup_s:.1f} s){memory}")
    header = (f"## bench_finetune {time.strftime('%Y-%m-%d')}: {platform.node()}, "
              f"{os.cpu_count()} cores ({cpu_model()}), device {device}, "
              f"TensorFlow {tf.__version__}")
    command = "python bench/bench_finetune.py " + " ".join(sys.argv[1:])
    print(header)
    print(line)
    if a.results:
        with open(REPO / "bench" / "RESULTS.md", "a", encoding="utf-8") as f:
            f.write(f"\n{header}\n\n`{command}`\n\n- {line}\n")


if __name__ == "__main__":
    main()
