"""Does the ranking push planted junk to the bottom?  AUC, junk caught, seed-to-seed Spearman.

    python bench/bench_rank_junk.py                 # build data, train 2 seeds (cached), score
    python bench/bench_rank_junk.py --kimg 20 --seeds 0 1 --methods mean_logit combined

Dataset (64 px): the 43 annotated photo faces of the test data (dlib's VOC boxes, cropped
with context) plus mirrored and re-framed variants, 100 faces in all, and 10 planted junk
images (~9 %): two noise squares, two text cards, two flat colours, three background
patches (city, screentone, a face-free corner of a VOC photo) and one upside-down face.
A CPU-sized StyleGAN2 (the demo's channels) is trained from scratch on it once per seed
with the real `python -m gan.train`; networks are cached in bench/out/rank_junk/ (train
each config once). Each method then ranks the dataset with pipeline.rank's own code:

- AUC: probability that a random junk image scores below a random face (1.0 = perfect);
- junk in the bottom 10 % / 20 % of the ranking (of 10 planted);
- Spearman between the rankings of the two training seeds (same data, same rank config).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, TESTDATA, auc, machine, spearman  # noqa: E402

from util.config import defaults  # noqa: E402
from pipeline.imaging import load_rgb  # noqa: E402
from pipeline.manifest import Row, read_manifest, write_manifest  # noqa: E402

RES = 64
OUT = REPO / "bench" / "out" / "rank_junk"
# the demo's network (characters/demo.yaml), trained from scratch
GAN = {"channel_base": 1024, "channel_max": 64, "mapping_layers": 2, "latent_dim": 64,
       "batch": 8, "mixed_precision": False, "tick_kimg": 1}


def face_crops(context: float = 1.8) -> list[tuple[str, Image.Image]]:
    """(name, RES x RES face) for every annotated photo face, ``context`` x its box."""
    from conftest import voc_boxes
    out = []
    for name, boxes in sorted(voc_boxes().items()):
        im, _ = load_rgb(TESTDATA / name)
        for k, (x, y, w, h) in enumerate(boxes):
            cx, cy, side = x + w / 2, y + h / 2, max(w, h) * context
            box = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
            out.append((f"{Path(name).stem}-f{k}", im.crop(tuple(round(v) for v in box))
                        .resize((RES, RES), Image.Resampling.LANCZOS)))
    return out


def junk_images() -> list[tuple[str, Image.Image]]:
    rng = np.random.default_rng(14)
    junk = []
    junk.append(("noise_uniform", Image.fromarray(rng.integers(0, 256, (RES, RES, 3), dtype=np.uint8))))
    blurred = Image.fromarray(rng.integers(0, 256, (RES, RES, 3), dtype=np.uint8)).filter(ImageFilter.GaussianBlur(2))
    junk.append(("noise_blurred", ImageOps.autocontrast(blurred)))
    font = ImageFont.load_default()
    for name, bg, fg, text in (("text_card_white", "white", "black", "SALE\n50% OFF\nTODAY"),
                               ("text_card_dark", (30, 30, 60), (240, 220, 80), "@artist\nfollow\nme!")):
        card = Image.new("RGB", (RES, RES), bg)
        ImageDraw.Draw(card).multiline_text((4, 8), text, fill=fg, font=font, spacing=6)
        junk.append((name, card))
    junk.append(("flat_red", Image.new("RGB", (RES, RES), (200, 40, 40))))
    junk.append(("flat_gray", Image.new("RGB", (RES, RES), (128, 128, 128))))

    def patch(file, box):
        im, _ = load_rgb(TESTDATA / file)
        return im.crop(box).resize((RES, RES), Image.Resampling.LANCZOS)
    junk.append(("bg_city", patch("noface_city.jpg", (0, 0, 160, 160))))
    junk.append(("bg_screentone", patch("anime_tone.png", (0, 0, 120, 120))))
    junk.append(("bg_voc_corner", patch("photo_2008_002506.jpg", (0, 250, 120, 370))))
    return junk


def build_dataset(folder: Path) -> Path:
    """PNGs + a dataset manifest (details.junk marks the planted ones); returns the manifest."""
    manifest = folder / "manifest.tsv"
    if manifest.is_file():
        return manifest
    folder.mkdir(parents=True, exist_ok=True)
    faces = face_crops()
    items = [(n, im, False) for n, im in faces]
    items += [(n + "-mirror", ImageOps.mirror(im), False) for n, im in faces]
    wide = {n: im for n, im in face_crops(context=2.2)}
    for n, _ in faces[: 100 - 2 * len(faces)]:   # re-framed (wider) copies up to 100 faces
        items.append((n + "-wide", wide[n], False))
    junk = junk_images()
    upside_src = faces[len(faces) // 2]
    junk.append(("upside_down_" + upside_src[0], ImageOps.flip(upside_src[1])))
    items += [(n, im, True) for n, im in junk]
    rows = []
    for i, (name, im, is_junk) in enumerate(items):
        path = folder / "images" / f"{name}.png"
        path.parent.mkdir(exist_ok=True)
        im.convert("RGB").save(path)
        rows.append(Row(id=name, source=f"{name}.png", path=str(path), width=RES, height=RES,
                        details={"index": i, "junk": is_junk}))
    from pipeline.export import write_tfrecords
    write_tfrecords(rows, folder / "tfrecords", "junk")
    write_manifest(manifest, rows)
    return manifest


def train(data: Path, seed: int, kimg: float, extra: dict) -> Path:
    """The real training CLI, once per (seed, kimg, extra): cached under OUT."""
    tag = f"seed{seed}-kimg{kimg:g}" + "".join(f"-{k}{v}" for k, v in sorted(extra.items()))
    run = OUT / "runs" / tag
    final = run / "network-final.npz"
    if final.is_file():
        return final
    cfg = {**GAN, "kimg": kimg, "seed": seed, "snapshot_kimg": max(kimg / 10, 0.5), **extra}
    t = time.time()
    subprocess.run([sys.executable, "-m", "gan.train", "--data", str(data / "tfrecords"),
                    "--run-dir", str(run), "--config", json.dumps(cfg), "--output", str(final)],
                   cwd=REPO, check=True)
    print(f"trained {tag} in {time.time() - t:.0f} s", flush=True)
    return final


def caught(scores: np.ndarray, junk: np.ndarray, fraction: float) -> int:
    bottom = np.argsort(scores, kind="stable")[: int(round(fraction * len(scores)))]
    return int(junk[bottom].sum())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kimg", type=float, default=20)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--methods", nargs="+", default=["mean_logit", "combined"])
    p.add_argument("--train-extra", default="{}", help="extra finetune keys as JSON (e.g. r1_gamma)")
    p.add_argument("--shuffles", type=int, default=5)
    p.add_argument("--train-only", action="store_true")
    a = p.parse_args()
    extra = json.loads(a.train_extra)
    manifest = build_dataset(OUT / "data")
    rows = list(read_manifest(manifest))
    junk = np.array([bool(r.details.get("junk")) for r in rows])
    nets = {seed: train(OUT / "data", seed, a.kimg, extra) for seed in a.seeds}
    if a.train_only:
        return

    from pipeline import rank
    rank.configure_devices()
    print(f"# bench_rank_junk {time.strftime('%Y-%m-%d %H:%M')} on {platform.node()} ({machine()}, "
          f"load average {os.getloadavg()[0]:.1f}); {len(rows)} images, {int(junk.sum())} junk; "
          f"{a.kimg:g} kimg from scratch, {json.dumps({**GAN, **extra})}")
    report(rows, nets, a.methods, a.shuffles, "all 110 images")
    # the faces' mirrored / re-framed twins sit next to them in any feature space, which
    # flatters a nearest-neighbour score: rank the 43 originals + the junk alone as well
    report([r for r in rows if not r.id.endswith(("-mirror", "-wide"))], nets, a.methods,
           a.shuffles, "originals only (43 faces + 10 junk, no twins)")


def report(rows, nets: dict, methods: list[str], shuffles: int, label: str) -> None:
    from gan.checkpoint import load_network
    from pipeline import rank
    junk = np.array([bool(r.details.get("junk")) for r in rows])
    table = {}
    for method in methods:
        cfg = {**defaults("rank"), "method": method, "shuffles": shuffles}
        per_seed = {}
        for seed, net in nets.items():
            D = load_network(net)[1]
            t = time.time()
            scores = rank.score_dataset(D, rows, cfg, RES, progress=False)
            by_id = {s.id: s for s in scores}
            # signals turned so that low = bad, like the score
            per_seed[seed] = (np.array([by_id[r.id].score for r in rows]),
                              {name: np.array([by_id[r.id].signals[name] for r in rows])
                               * (-1 if rank.SIGNALS[name]["worse"] == "high" else 1)
                               for name in scores[0].signals}, time.time() - t)
        table[method] = per_seed
    n, nj = len(rows), int(junk.sum())
    print(f"\n### {label}\n")
    print(f"| method | seed | AUC | junk in bottom 10% | bottom 20% | rank seconds | worst-ranked junk (rank of {n}) |")
    print("|---|---|---|---|---|---|---|")
    for method, per_seed in table.items():
        for seed, (s, signals, secs) in per_seed.items():
            order = np.argsort(np.argsort(s, kind="stable"), kind="stable")
            worst = max((order[i], rows[i].id) for i in np.flatnonzero(junk))
            print(f"| {method} | {seed} | {auc(s, junk):.3f} | {caught(s, junk, .1)}/{nj} | "
                  f"{caught(s, junk, .2)}/{nj} | {secs:.1f} | {worst[1]} ({worst[0] + 1}) |")
            for name, v in signals.items():
                print(f"|   signal {name} | {seed} | {auc(v, junk):.3f} | {caught(v, junk, .1)}/{nj} | "
                      f"{caught(v, junk, .2)}/{nj} | | |")
    seeds = list(nets)
    if len(seeds) >= 2:
        s0, s1 = seeds[:2]
        print(f"\n| method | Spearman(seed {s0}, seed {s1}), all | faces only |")
        print("|---|---|---|")
        for method, per_seed in table.items():
            x, y = per_seed[s0][0], per_seed[s1][0]
            print(f"| {method} | {spearman(x, y):.3f} | {spearman(x[~junk], y[~junk]):.3f} |")
            for name in per_seed[s0][1]:
                x, y = per_seed[s0][1][name], per_seed[s1][1][name]
                print(f"|   signal {name} | {spearman(x, y):.3f} | {spearman(x[~junk], y[~junk]):.3f} |")


if __name__ == "__main__":
    main()
