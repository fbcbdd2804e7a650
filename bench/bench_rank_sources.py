"""Does the Discriminator ranker find junk on more than one source of faces, and does a
cleaning round help?  Per source: AUC, junk in the worst 10, per signal and per junk kind.

    python bench/bench_rank_sources.py                     # build, train (cached), score
    python bench/bench_rank_sources.py --sources photo --methods combined subspace --seeds 0 1
    python bench/bench_rank_sources.py --rounds 2 --round-methods combined subspace   # + cleaning rounds

Three sources of real faces, each ranked on its own (a dataset is one character), each with
the same 10 kinds of planted junk, at 32 px (a tiny StyleGAN2 trained from scratch on 2 CPU
cores with the real `python -m gan.train`; networks cached in bench/out/rank_sources/):

- photo: the annotated VOC faces of ../shared/testdata (dlib_*_boxes.xml, 1.8x context) of
  every picture but photo_2008_007676.jpg, plus Tom Cruise and scikit-image's astronaut;
- lfw: the first 60 of the 100 grey LFW faces that scikit-image ships (skimage.data.lfw_subset);
- anime: 60 framings of the two Miku faces of the test data (anime_miku_CC_BY-NC.jpg,
  anime_miku_noisy.jpg): random context 1.3-2.3x, shift, +-12 degrees, mirror, colour jitter.

Junk, 10 per source: text card, UI overlay on a face, background patch and body (or second
background) patch cut from the SAME pictures as the real faces, sketch (edge map) of a face,
collage of 4 faces, heavy JPEG (q 4) of a face, the wrong character (a cat: skimage's chelsea;
for anime a recoloured Miku, hair and eyes no longer teal), an upside-down face, a flat colour.
Faces that junk is made from are HELD OUT of the real set, so no junk has a clean twin among
the faces: photo: the 7 faces of photo_2008_007676.jpg; lfw: LFW faces 60-99; anime:
anime_miku_small.png (the third Miku picture). One known leak, kept so that the figures in
bench/RESULTS.md stay reproducible: photo's upside-down junk is a second framing of Tom
Cruise, whose 1.8x framing is a real face (the 10 kinds need 8 held-out faces, photo has 7).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, TESTDATA, auc, machine, spearman  # noqa: E402

from util.config import defaults  # noqa: E402
from pipeline.imaging import load_rgb  # noqa: E402
from pipeline.manifest import Row, read_manifest, write_manifest  # noqa: E402

RES = 32
OUT = REPO / "bench" / "out" / "rank_sources"
SOURCES = ("photo", "lfw", "anime")
# a tiny D that trains in minutes on 2 shared cores (32 px: blocks 32, 16, 8, 4)
GAN = {"channel_base": 512, "channel_max": 32, "mapping_layers": 2, "latent_dim": 32,
       "batch": 8, "mixed_precision": False, "tick_kimg": 1, "pl_weight": 0}
HELD_OUT_PHOTO = "photo_2008_007676.jpg"
ANIME_BOXES = {"anime_miku_CC_BY-NC.jpg": (254, 40, 72, 72), "anime_miku_noisy.jpg": (116, 67, 136, 136),
               "anime_miku_small.png": (67, 38, 77, 77)}   # lbpcascade_animeface on each file


def square(im: Image.Image, box, context: float, dx: float = 0, dy: float = 0, size: int = RES) -> Image.Image:
    """The context x box square around a (x, y, w, h) box, shifted by (dx, dy) box sides, at ``size``."""
    x, y, w, h = box
    cx, cy, side = x + w * (0.5 + dx), y + h * (0.5 + dy), max(w, h) * context
    return im.crop(tuple(round(v) for v in (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2))
                   ).resize((size, size), Image.Resampling.LANCZOS)


# ---------------------------------------------------------------- junk makers (shared by all sources)

def text_card(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    card = Image.new("RGB", (RES * 4, RES * 4), tuple(int(v) for v in rng.integers(0, 256, 3)))
    ImageDraw.Draw(card).multiline_text((6, 10), "NEW!\nchapter 12\n@artist\nfollow", fill=(250, 250, 250),
                                        font=ImageFont.load_default(size=20), spacing=4)
    return card.resize((RES, RES), Image.Resampling.LANCZOS)


def ui_overlay(face: Image.Image) -> Image.Image:
    """A screenshot-like frame: a title bar and buttons with text over the face."""
    big = face.resize((RES * 4, RES * 4), Image.Resampling.LANCZOS)
    d = ImageDraw.Draw(big)
    font = ImageFont.load_default(size=16)
    d.rectangle((0, 0, RES * 4, 30), fill=(40, 40, 48))
    d.text((6, 6), "12:04   LIVE  x", fill="white", font=font)
    d.rectangle((0, RES * 4 - 40, RES * 4, RES * 4), fill=(245, 245, 245))
    d.rounded_rectangle((6, RES * 4 - 34, 60, RES * 4 - 6), 6, fill=(220, 40, 60))
    d.text((10, RES * 4 - 30), "LIKE", fill="white", font=font)
    d.text((68, RES * 4 - 30), "share", fill="black", font=font)
    return big.resize((RES, RES), Image.Resampling.LANCZOS)


def sketch(face: Image.Image) -> Image.Image:
    """Black edge lines on white: a line drawing of the face."""
    import cv2
    big = np.asarray(face.resize((RES * 4, RES * 4), Image.Resampling.LANCZOS).convert("L"))
    edges = cv2.Canny(cv2.GaussianBlur(big, (3, 3), 0), 40, 120)
    edges = cv2.dilate(edges, np.ones((2, 2), np.uint8))
    return Image.fromarray(255 - edges).convert("RGB").resize((RES, RES), Image.Resampling.LANCZOS)


def collage(faces: list[Image.Image]) -> Image.Image:
    out = Image.new("RGB", (RES, RES))
    for k, f in enumerate(faces[:4]):
        out.paste(f.resize((RES // 2, RES // 2), Image.Resampling.LANCZOS), ((k % 2) * RES // 2, (k // 2) * RES // 2))
    return out


def heavy_jpeg(face: Image.Image, quality: int = 4) -> Image.Image:
    buf = io.BytesIO()
    face.save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def cat_face(gray: bool = False) -> Image.Image:
    import skimage.data
    im = Image.fromarray(skimage.data.chelsea()).crop((130, 20, 330, 220)).resize((RES, RES), Image.Resampling.LANCZOS)
    return ImageOps.grayscale(im).convert("RGB") if gray else im


def flat(colour) -> Image.Image:
    return Image.new("RGB", (RES, RES), colour)


def common_junk(held: list[Image.Image], bg: Image.Image, body: Image.Image, wrong: Image.Image,
                colour, seed: int) -> list[tuple[str, Image.Image]]:
    """The 10 kinds, ``held`` = faces held out of the real set (at least 8)."""
    return [("text_card", text_card(seed)), ("ui_overlay", ui_overlay(held[0])),
            ("bg_patch", bg), ("body_patch", body), ("sketch", sketch(held[1])),
            ("collage", collage(held[2:6])), ("heavy_jpeg", heavy_jpeg(held[6])),
            ("wrong_character", wrong), ("upside_down", ImageOps.flip(held[7])), ("flat", flat(colour))]


# ---------------------------------------------------------------- sources

def photo_source() -> tuple[list, list]:
    import skimage.data
    from conftest import voc_boxes
    real, held, pictures = [], [], {}
    for name, boxes in sorted(voc_boxes().items()):
        im, _ = load_rgb(TESTDATA / name)
        pictures[name] = (im, boxes)
        for k, box in enumerate(boxes):
            (held if name == HELD_OUT_PHOTO else real).append((f"{Path(name).stem}-f{k}", square(im, box, 1.8)))
    tom, _ = load_rgb(TESTDATA / "photo_Tom_Cruise_avp_2014_4.jpg")
    import dlib
    det = dlib.get_frontal_face_detector()
    r = det(np.asarray(tom), 1)[0]
    real.append(("tom_cruise", square(tom, (r.left(), r.top(), r.width(), r.height()), 1.8)))
    real.append(("astronaut", square(Image.fromarray(skimage.data.astronaut()), (165, 55, 105, 105), 1.8)))
    held.append(("tom_cruise_again", square(tom, (r.left(), r.top(), r.width(), r.height()), 1.6)))
    held_faces = [f for _, f in held]
    # a face-free square and a torso below a face, both from pictures whose faces are real
    im, boxes = pictures["photo_2008_002506.jpg"]
    bg = im.crop((0, 250, 120, 370)).resize((RES, RES), Image.Resampling.LANCZOS)
    im, boxes = pictures["photo_2008_001322.jpg"]
    x, y, w, h = boxes[1]
    body = square(im, (x, y + 1.6 * h, w, h), 1.8)
    junk = common_junk(held_faces, bg, body, cat_face(), (200, 40, 40), seed=1)
    return real, junk


def lfw_source() -> tuple[list, list]:
    import skimage.data
    lfw = skimage.data.lfw_subset()  # 100 faces, then 100 background patches of the same pictures
    as_rgb = [Image.fromarray((a * 255).round().astype(np.uint8)).convert("RGB")
              .resize((RES, RES), Image.Resampling.LANCZOS) for a in lfw]
    real = [(f"lfw{k:03d}", as_rgb[k]) for k in range(60)]
    held = as_rgb[60:100]
    junk = common_junk(held, as_rgb[177], as_rgb[162], cat_face(gray=True), (128, 128, 128), seed=2)
    junk[3] = ("bg_patch_2", junk[3][1])   # LFW crops are tight: no body, a second background
    return real, junk


def anime_source() -> tuple[list, list]:
    rng = np.random.default_rng(5)
    real = []
    for name in ("anime_miku_CC_BY-NC.jpg", "anime_miku_noisy.jpg"):
        im, _ = load_rgb(TESTDATA / name)
        x, y, w, h = ANIME_BOXES[name]
        for k in range(30):
            context, dx, dy = rng.uniform(1.3, 2.3), *rng.uniform(-0.15, 0.15, 2)
            angle = rng.uniform(-12, 12)
            # rotated inside a wider square, then its centre: no empty corners
            wide = square(im, (x, y, w, h), context * 1.5, dx, dy, size=RES * 3)
            face = wide.rotate(angle, Image.Resampling.BICUBIC).crop((RES // 2, RES // 2, RES * 5 // 2, RES * 5 // 2))
            face = face.resize((RES, RES), Image.Resampling.LANCZOS)
            if rng.random() < 0.5:
                face = ImageOps.mirror(face)
            arr = np.asarray(face, dtype=np.float32) * rng.uniform(0.85, 1.15) + rng.uniform(-12, 12)
            real.append((f"{Path(name).stem}-v{k:02d}", Image.fromarray(arr.clip(0, 255).astype(np.uint8))))
    small, _ = load_rgb(TESTDATA / "anime_miku_small.png")
    box = ANIME_BOXES["anime_miku_small.png"]
    held = [square(small, box, c, dx, dy) for c, dx, dy in
            ((1.8, 0, 0), (1.6, 0.05, 0), (1.5, 0, 0), (1.7, -.1, 0), (2.0, .1, .05), (1.9, 0, -.05),
             (1.8, 0, .05), (1.7, .05, .05))]
    cc, _ = load_rgb(TESTDATA / "anime_miku_CC_BY-NC.jpg")
    bg = cc.crop((0, 300, 150, 450)).resize((RES, RES), Image.Resampling.LANCZOS)       # below-left of her
    x, y, w, h = ANIME_BOXES["anime_miku_CC_BY-NC.jpg"]
    body = square(cc, (x, y + 1.8 * h, w, h), 1.8)                                      # her chest and arms
    # the wrong character: the held-out Miku recoloured (hue turned by 140 degrees)
    hsv = np.asarray(held[0].convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(int) + 100) % 256
    wrong = Image.fromarray(hsv, "HSV").convert("RGB")
    junk = common_junk(held, bg, body, wrong, (240, 240, 240), seed=3)
    return real, junk


BUILDERS = {"photo": photo_source, "lfw": lfw_source, "anime": anime_source}


def build_dataset(source: str) -> Path:
    """PNGs + a manifest (details.junk, details.kind) + TFRecords; returns the manifest."""
    folder = OUT / source / "data"
    manifest = folder / "manifest.tsv"
    if manifest.is_file():
        return manifest
    real, junk = BUILDERS[source]()
    items = [(n, im, False, "face") for n, im in real] + [(f"junk-{n}", im, True, n) for n, im in junk]
    rows = []
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for i, (name, im, is_junk, kind) in enumerate(items):
        path = folder / "images" / f"{name}.png"
        im.convert("RGB").save(path)
        rows.append(Row(id=name, source=f"{name}.png", path=str(path), width=RES, height=RES,
                        details={"index": i, "junk": is_junk, "kind": kind}))
    from pipeline.export import write_tfrecords
    write_tfrecords(rows, folder / "tfrecords", source)
    write_manifest(manifest, rows)
    return manifest


def train(source: str, seed: int, kimg: float, pretrained: Path | None = None, tag: str = "") -> Path:
    """The real training CLI, once per (source, seed, kimg, tag): cached under OUT.
    ``pretrained``: continue from that network (a cleaning round) on ``data``."""
    data = OUT / source / (f"data-{tag}" if tag else "data")
    run = OUT / source / "runs" / f"seed{seed}-kimg{kimg:g}{'-' + tag if tag else ''}"
    final = run / "network-final.npz"
    if final.is_file():
        return final
    cfg = {**GAN, "kimg": kimg, "seed": seed, "snapshot_kimg": max(kimg / 4, 0.5)}
    if pretrained:
        cfg["pretrained"] = str(pretrained)
    t = time.time()
    subprocess.run([sys.executable, "-m", "gan.train", "--data", str(data / "tfrecords"),
                    "--run-dir", str(run), "--config", json.dumps(cfg), "--output", str(final)],
                   cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    print(f"trained {source} {run.name} in {time.time() - t:.0f} s", flush=True)
    return final


def in_worst(scores: np.ndarray, junk: np.ndarray, k: int) -> int:
    return int(junk[np.argsort(scores, kind="stable")[:k]].sum())


def score(D, rows, method: str, shuffles: int) -> tuple[np.ndarray, dict, float]:
    """(score per row, {signal: values turned so that low = bad}, seconds) with pipeline.rank."""
    from pipeline import rank
    cfg = {**defaults("rank"), "method": method, "shuffles": shuffles}
    t = time.time()
    scores = {s.id: s for s in rank.score_dataset(D, rows, cfg, RES, progress=False)}
    signals = {name: np.array([scores[r.id].signals[name] for r in rows])
               * (-1 if rank.SIGNALS[name]["worse"] == "high" else 1)
               for name in next(iter(scores.values())).signals}
    return np.array([scores[r.id].score for r in rows]), signals, time.time() - t


def kind_ranks(values: np.ndarray, rows) -> str:
    order = np.argsort(np.argsort(values, kind="stable"), kind="stable")
    return ", ".join(f"{r.details['kind']} {order[i] + 1}" for i, r in enumerate(rows) if r.details["junk"])


def report_source(source: str, nets: dict, methods: list[str], shuffles: int) -> dict:
    """One table per source: every method and its signals, per training seed."""
    from gan.checkpoint import load_network
    rows = list(read_manifest(build_dataset(source)))
    junk = np.array([bool(r.details["junk"]) for r in rows])
    n, nj = len(rows), int(junk.sum())
    print(f"\n### {source}: {n - nj} faces + {nj} junk\n")
    print(f"| method / signal | seed | AUC | junk in worst 10 | rank seconds | rank of each junk (of {n}) |")
    print("|---|---|---|---|---|---|")
    out = {}
    for method in methods:
        for seed, net in nets.items():
            D = load_network(net)[1]
            s, signals, secs = score(D, rows, method, shuffles)
            out[(method, seed)] = s
            print(f"| **{method}** | {seed} | {auc(s, junk):.3f} | {in_worst(s, junk, 10)}/{nj} | {secs:.1f} | "
                  f"{kind_ranks(s, rows)} |")
            for name, v in signals.items():
                print(f"|   signal {name} | {seed} | {auc(v, junk):.3f} | {in_worst(v, junk, 10)}/{nj} | | "
                      f"{kind_ranks(v, rows)} |")
    seeds = list(nets)
    if len(seeds) >= 2:   # does the ranking depend on the training run?
        print(f"\n| method | Spearman(seed {seeds[0]}, seed {seeds[1]}), all | faces only |\n|---|---|---|")
        for method in methods:
            x, y = out[(method, seeds[0])], out[(method, seeds[1])]
            print(f"| {method} | {spearman(x, y):.3f} | {spearman(x[~junk], y[~junk]):.3f} |")
    return out


def write_subset(source: str, rows: list[Row], tag: str) -> None:
    """What a cleaning round keeps, as its own dataset folder (manifest + TFRecords)."""
    folder = OUT / source / f"data-{tag}"
    if (folder / "manifest.tsv").is_file():
        return
    from pipeline.export import write_tfrecords
    write_tfrecords(rows, folder / "tfrecords", source)
    write_manifest(folder / "manifest.tsv", rows)


def simulate_rounds(source: str, seed: int, kimg: float, round_kimg: float, rounds: int,
                    drop: float, method: str, shuffles: int) -> None:
    """train -> rank -> drop the worst ``drop`` fraction -> continue ``round_kimg`` on what is
    left -> rank again, as rank.rounds does; what each round caught and removed."""
    from gan.checkpoint import load_network
    rows = list(read_manifest(build_dataset(source)))
    net = train(source, seed, kimg)
    print(f"\n#### {source}, seed {seed}: {rounds} rounds, method {method}, drop the worst "
          f"{drop:.0%} per round, round 1 = {kimg:g} kimg, each next round +{round_kimg:g} kimg\n")
    print("| round | images | junk left | AUC | junk in worst 10 | junk in worst k (k = junk left) | "
          "dropped (junk) | mean rank percentile of the junk still left: this round's D / last round's D |")
    print("|---|---|---|---|---|---|---|---|")
    prev_net = None
    for k in range(1, rounds + 1):
        junk = np.array([bool(r.details["junk"]) for r in rows])
        s, _, _ = score(load_network(net)[1], rows, method, shuffles)
        n_drop = int(round(drop * len(rows)))
        worst = np.argsort(s, kind="stable")[:n_drop]
        pct = lambda v: float(np.mean(np.argsort(np.argsort(v, kind="stable"))[junk]) / (len(rows) - 1))  # noqa: E731
        compare = "-"
        if prev_net is not None and junk.any():
            s_prev, _, _ = score(load_network(prev_net)[1], rows, method, shuffles)
            compare = f"{pct(s):.3f} / {pct(s_prev):.3f}"
        elif junk.any():
            compare = f"{pct(s):.3f} / -"
        nj = int(junk.sum())
        print(f"| {k} | {len(rows)} | {nj} | {auc(s, junk) if nj else float('nan'):.3f} | "
              f"{in_worst(s, junk, 10)} | {in_worst(s, junk, nj)}/{nj} | {n_drop} ({int(junk[worst].sum())}) | "
              f"{compare} |", flush=True)
        print(f"|   | junk in the set: {', '.join(r.details['kind'] for r in rows if r.details['junk']) or 'none'}; "
              f"dropped: {', '.join(rows[i].details['kind'] for i in worst) or 'none'} | | | | | | |", flush=True)
        if k == rounds:
            break
        keep = np.sort(np.argsort(s, kind="stable")[n_drop:])
        rows = [rows[i] for i in keep]
        tag = f"seed{seed}-{method}-r{k + 1}"
        write_subset(source, rows, tag)
        prev_net, net = net, train(source, seed, round_kimg, pretrained=net, tag=tag)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sources", nargs="+", default=list(SOURCES), choices=SOURCES)
    p.add_argument("--kimg", type=float, default=20)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--methods", nargs="+", default=["mean_logit", "combined"])
    p.add_argument("--shuffles", type=int, default=5)
    p.add_argument("--rounds", type=int, default=0, help="also simulate this many cleaning rounds")
    p.add_argument("--round-methods", nargs="+", default=["combined"], help="methods the rounds rank with")
    p.add_argument("--round-kimg", type=float, default=5)
    p.add_argument("--drop", type=float, default=0.15, help="fraction dropped per round")
    p.add_argument("--train-only", action="store_true")
    a = p.parse_args()
    nets = {src: {seed: train(src, seed, a.kimg) for seed in a.seeds}
            for src in a.sources if build_dataset(src)}
    if a.train_only:
        return
    from pipeline import rank
    rank.configure_devices()
    print(f"# bench_rank_sources {time.strftime('%Y-%m-%d %H:%M')} on {platform.node()} ({machine()}, "
          f"load average {os.getloadavg()[0]:.1f}); {RES} px, {a.kimg:g} kimg from scratch, {json.dumps(GAN)}")
    for src in a.sources:
        report_source(src, nets[src], a.methods, a.shuffles)
    for src in a.sources:
        for seed in a.seeds if a.rounds else []:
            for method in a.round_methods:
                simulate_rounds(src, seed, a.kimg, a.round_kimg, a.rounds, a.drop, method, a.shuffles)


if __name__ == "__main__":
    main()
