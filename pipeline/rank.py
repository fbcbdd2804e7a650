"""rank: score every dataset image with the fine-tuned Discriminator, worst first.

The D's minibatch-stddev layer makes an image's logit depend on the other images of its
group, so each image is scored in ``shuffles`` random batches (fresh permutation each
time, seeded) and the scores are averaged; ``mirror`` also averages the horizontally
flipped batch. Every batch is full: the last one is padded with other dataset images,
whose extra logits are discarded. Runs on the GPU when TensorFlow sees one.

``method: mean_logit`` ranks by that mean logit (the seed's ranker). ``method: combined``
(default) also computes, from the same network file, each image's distance to its
``knn_k`` nearest dataset images in D's features and an upright test (logit minus the
logit of the image upside down), and ranks by ``combine`` of the three; every signal is
written as a ``signal:<name>`` column (SIGNALS says what each means). ``method: subspace``
adds the distance to the dataset's principal subspace in the same features and its upright
test (the distance of the image upside down over its own), and ranks by combine_subspace.

    python -m pipeline.rank --manifest R/export/manifest.tsv --network R/finetune/network-final.npz \
        --output R/rank/scores.tsv --config JSON

The score histograms are the review page's (review.js draws them from ranking.js).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from pipeline.manifest import Row, atomic_write_text, face_region, kept, load_config_arg, read_manifest

SCORE_COLUMNS = ["id", "score", "std", "source", "crop_box", "path"]
SIGNAL_PREFIX = "signal:"


def config_keys(config: dict) -> dict:
    """Exactly the keys that change the scores (the rule's param), so editing
    drop_bottom_fraction or the rejects path does not rerun the (GPU) rank job."""
    return {k: config["rank"][k] for k in ("method", "group_size", "shuffles", "mirror", "seed",
                                           "batch", "knn_k")}


# mean_logit: the seed's ranking (mean D logit only); combined: logit + the outlier signals;
# subspace: combined's signals + the distance to the dataset's principal subspace and its
# upright test (measured on bench/bench_rank_sources.py, see combine_subspace)
METHODS = ("combined", "mean_logit", "subspace")
# What each signal:<name> column means and which end is bad, for the report's "why low".
SIGNALS = {
    # "low_means": the page's words for an image this signal pulls down
    "logit": {"label": "D logit (mean over shuffles)", "worse": "low",
              "low_means": "the D finds it unlike the data"},
    # logit(image) - logit(image upside down): faces score far better upright; symmetric
    # junk (noise, flat colour) scores the same both ways; an upside-down face scores worse
    "upright": {"label": "D logit upright minus upside down", "worse": "low",
                "low_means": "looks upside down, or no face either way"},
    # mean distance to the knn_k nearest dataset images in D's features (before
    # minibatch-stddev): junk is far from every face, whatever its logit
    "knn": {"label": "distance to the nearest dataset images in D's features", "worse": "high",
            "low_means": "far from every other face"},
    # method subspace: how far an image lies from the dataset's principal subspace in D's
    # features (whitened distance inside it + distance off it, each over its median)
    "subspace": {"label": "distance to the dataset's principal subspace in D's features", "worse": "high",
                 "low_means": "unlike the dataset's main kinds of face"},
    # log(subspace distance of the image upside down / of the image): a face moves away when
    # turned over, symmetric junk does not, an upside-down face comes closer
    "upright_subspace": {"label": "subspace distance upside down over upright (log)", "worse": "low",
                         "low_means": "looks upside down, or no face either way"},
}


# ---------------------------------------------------------------- batch plan

def plan_batches(n: int, group_size: int, shuffles: int, seed: int, batch: int) -> tuple[np.ndarray, int]:
    """Image indices for every D call, as an array [shuffles, calls, call_size].

    Row ``k`` holds a fresh permutation of ``range(n)`` (the first ``n`` slots, each
    image exactly once) followed by padding taken from other images, so every call has
    ``call_size`` images, a multiple of ``group_size``. Returns (plan, call_size).
    """
    if n <= 0:
        raise ValueError("nothing to rank")
    groups_needed = -(-n // group_size)
    call_size = min(max(batch // group_size, 1), groups_needed) * group_size
    slots = -(-n // call_size) * call_size
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(shuffles):
        perm = rng.permutation(n)
        pad = slots - n
        if pad:
            last_call = perm[(n // call_size) * call_size:]
            # companions from outside the last call when there are enough, else any image
            others = np.setdiff1d(np.arange(n), last_call, assume_unique=True)
            pool = others if len(others) >= pad else np.arange(n)
            perm = np.concatenate([perm, rng.choice(pool, pad, replace=pad > len(pool))])
        rows.append(perm)
    return np.stack(rows).reshape(shuffles, slots // call_size, call_size), call_size


def collect_scores(plan: np.ndarray, logits: np.ndarray, n: int) -> np.ndarray:
    """Per-shuffle score of every image [shuffles, n] from the logits of ``plan``'s layout.

    Only the first ``n`` slots of a shuffle are counted (the rest are padding).
    """
    shuffles = plan.shape[0]
    flat_idx = plan.reshape(shuffles, -1)[:, :n]
    flat_logits = logits.reshape(shuffles, -1)[:, :n]
    scores = np.empty((shuffles, n), dtype=np.float64)
    for k in range(shuffles):
        scores[k, flat_idx[k]] = flat_logits[k]
    return scores


# ---------------------------------------------------------------- scoring

def _image_dataset(paths: list[str], resolution: int | None):
    """tf.data pipeline: file -> NHWC float32 in [-1, 1] (what the gan/ networks take)."""
    import tensorflow as tf

    def load(path):
        img = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        if resolution is not None:
            img = tf.ensure_shape(img, [resolution, resolution, 3])
        return tf.cast(img, tf.float32) / 127.5 - 1.0

    return tf.data.Dataset.from_tensor_slices(paths).map(load, num_parallel_calls=tf.data.AUTOTUNE,
                                                         deterministic=True)


def score_paths(D, paths: list[str], cfg: dict, resolution: int | None = None,
                progress: bool = True, upside_down: bool = False) -> tuple[np.ndarray, dict]:
    """Scores [shuffles, n] (mirror already averaged in) of the images at ``paths``.

    ``D`` maps NHWC float32 in [-1, 1] to logits [N]. Also returns timing stats.
    ``upside_down`` scores every batch flipped top to bottom (same plan, same companions).
    """
    import tensorflow as tf

    n = len(paths)
    plan, call_size = plan_batches(n, cfg["group_size"], cfg["shuffles"], cfg["seed"],
                                   cfg["batch"])
    flat = plan.reshape(-1)
    images = _image_dataset([paths[i] for i in flat], resolution).batch(call_size).prefetch(2)

    @tf.function(reduce_retracing=True)
    def d_logits(x):
        if upside_down:
            x = tf.reverse(x, axis=[1])
        logits = tf.reshape(D(x), [-1])
        if cfg["mirror"]:
            # the flipped batch keeps the same companions, flipped too
            logits = (logits + tf.reshape(D(tf.reverse(x, axis=[2])), [-1])) / 2
        return logits

    out = np.empty(flat.shape, dtype=np.float64)
    start = time.perf_counter()
    desc = "rank (upside down)" if upside_down else "rank"
    with tqdm(total=len(flat), desc=desc, unit="img", mininterval=2, disable=not progress) as bar:
        pos = 0
        for x in images:
            logits = d_logits(x).numpy()
            out[pos:pos + len(logits)] = logits
            pos += len(logits)
            bar.update(len(logits))
    elapsed = time.perf_counter() - start
    evaluations = len(flat) * (2 if cfg["mirror"] else 1)
    stats = {"images": n, "seconds": elapsed, "images_per_second": n / elapsed,
             "d_evaluations_per_second": evaluations / elapsed, "call_size": call_size,
             "padding_per_shuffle": plan.shape[1] * call_size - n}
    return collect_scores(plan, out, n), stats


# ---------------------------------------------------------------- D features

def d_features(D, images):
    """(D's 4x4 map before minibatch-stddev, D's view of each image [N, F]): unlike the logit
    it depends on the image alone, not on its batch companions. F = every residual block's
    channel means (coarse colour/texture statistics per scale) + the 4x4 map (layout), all
    from ``Discriminator.features``, the trunk D's own logits are computed from.
    """
    import tensorflow as tf

    trunk, blocks = D.features(images)
    parts = [tf.reduce_mean(tf.cast(x, tf.float32), axis=[1, 2]) for x in blocks]
    return trunk, tf.concat(parts + [tf.reshape(trunk, [tf.shape(trunk)[0], -1])], axis=1)


def feature_paths(D, paths: list[str], resolution: int | None, batch: int, mirror: bool,
                  upside_down: bool = False) -> np.ndarray:
    """d_features of every image [N, F] (mirror: averaged with the flipped image's;
    upside_down: of every image turned top to bottom)."""
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def features(x):
        if upside_down:
            x = tf.reverse(x, axis=[1])
        f = d_features(D, x)[1]
        return (f + d_features(D, tf.reverse(x, axis=[2]))[1]) / 2 if mirror else f

    return np.concatenate([features(x).numpy().astype(np.float64)
                           for x in _image_dataset(paths, resolution).batch(max(batch, 1))])


def principal_axes(x: np.ndarray, dims: int, iterations: int = 3) -> np.ndarray:
    """[F, dims] top principal axes of the (centred) rows of ``x`` by randomized SVD
    (Halko et al.; seeded, so deterministic): a full SVD of 4096 x 12k features takes minutes."""
    omega = np.random.default_rng(0).standard_normal((x.shape[1], dims + 8)).astype(x.dtype)
    y = x @ omega
    for _ in range(iterations):
        y = x @ (x.T @ np.linalg.qr(y)[0])
    q = np.linalg.qr(y)[0]
    _, _, vt = np.linalg.svd(q.T @ x, full_matrices=False)
    return vt[:dims].T


def knn_distance(features: np.ndarray, k: int, dims: int = 64, chunk: int | None = None,
                 basis_rows: int = 4096) -> np.ndarray:
    """Mean distance of each row to its ``k`` nearest other rows (an outlier score).

    Features are standardised per dimension (no single large channel dominates) and
    projected on their ``dims`` principal axes (found on at most ``basis_rows`` evenly
    spread rows), so the exact O(N^2) search costs O(N^2 dims) and ``chunk`` rows of
    distances at a time (default: ~64M distances) keep memory flat.
    """
    n = len(features)
    k = min(k, n - 1)
    if k < 1:
        return np.zeros(n)
    f = np.asarray(features, dtype=np.float32)   # a 20k x 12k-feature dataset stays < 1 GB
    f = (f - f.mean(axis=0)) / (f.std(axis=0) + 1e-8)
    if f.shape[1] > dims:
        f = f @ principal_axes(f[np.linspace(0, n - 1, min(n, basis_rows)).astype(int)], dims)
    f = f.astype(np.float64)
    chunk = chunk or max(1, min(n, (1 << 26) // n))
    sq = (f * f).sum(axis=1)
    out = np.empty(n)
    for start in range(0, n, chunk):
        block = f[start:start + chunk]
        d2 = sq[start:start + chunk, None] + sq[None, :] - 2 * block @ f.T
        d2[np.arange(len(block)), np.arange(start, start + len(block))] = np.inf  # not itself
        nearest = np.partition(d2, k - 1, axis=1)[:, :k]
        out[start:start + chunk] = np.sqrt(np.maximum(nearest, 0)).mean(axis=1)
    return out


def subspace_model(features: np.ndarray, dims: int = 8, basis_rows: int = 4096, chunk: int = 4096):
    """A distance to the principal subspace of ``features`` [N, F], fitted once, as a function
    of any rows of the same features: inside the top ``dims`` axes the whitened (Mahalanobis)
    norm, off them the residual norm, each divided by its median over the dataset and added
    (the PCA outlier test's T^2 and Q, on one scale). Features are standardised with the
    dataset's statistics; axes found on at most ``basis_rows`` evenly spread rows; rows are
    standardised ``chunk`` at a time in float32 (no second copy of a 20k x 12k matrix).
    """
    f = np.asarray(features)
    n = len(f)
    mean, std = f.mean(axis=0), f.std(axis=0) + 1e-8
    dims = max(1, min(dims, n - 1, f.shape[1]))
    basis = ((f[np.linspace(0, n - 1, min(n, basis_rows)).astype(int)] - mean) / std).astype(np.float32)
    axes = principal_axes(basis, dims)

    def project(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(coordinates on the axes [M, dims], squared norm [M]) of standardised rows."""
        proj, sq = [], []
        for start in range(0, len(rows), chunk):
            q = ((np.asarray(rows[start:start + chunk]) - mean) / std).astype(np.float32)
            proj.append((q @ axes).astype(np.float64))
            sq.append((q.astype(np.float64) ** 2).sum(axis=1))
        return np.concatenate(proj), np.concatenate(sq)

    proj0, _ = project(f)
    spread = proj0.std(axis=0) + 1e-8

    def parts(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        proj, sq = project(rows)
        return (np.sqrt(((proj / spread) ** 2).sum(axis=1)),
                np.sqrt(np.maximum(sq - (proj * proj).sum(axis=1), 0)))

    inside0, off0 = parts(f)
    scale_in, scale_off = np.median(inside0) or 1.0, np.median(off0) or 1.0

    def distance(rows: np.ndarray) -> np.ndarray:
        inside, off = parts(rows)
        return inside / scale_in + off / scale_off
    return distance


# ---------------------------------------------------------------- scores.tsv

def _rounded(value):
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    return round(value, 2) if isinstance(value, float) else value


def crop_box(details: dict) -> list | None:
    """The source region an image was cut from (manifest.face_region: the page shows the
    same), or None for a whole image."""
    region = face_region(details)
    return None if region is None else _rounded(region)


@dataclass(frozen=True)
class Score:
    id: str
    score: float
    std: float
    source: str
    crop_box: list | None
    path: str
    # the named signals the combined score was made from (e.g. {"logit": .., "knn": ..}),
    # written as `signal:<name>` columns after the fixed ones; empty for a plain ranking
    signals: dict = field(default_factory=dict)


def rank_rows(rows: list[Row], per_shuffle: np.ndarray) -> list[Score]:
    """Scores sorted worst (lowest D logit) first; ties broken by id for determinism."""
    mean, std = per_shuffle.mean(axis=0), per_shuffle.std(axis=0)
    scored = [Score(r.id, float(m), float(s), r.source, crop_box(r.details), r.path)
              for r, m, s in zip(rows, mean, std)]
    return sorted(scored, key=lambda s: (s.score, s.id))


def robust_z(values, ref=None) -> np.ndarray:
    """(v - median) / (1.4826 MAD) of ``ref`` (default: ``values``): a z-score that a few
    extreme images cannot squash."""
    values = np.asarray(values, dtype=np.float64)
    ref = values if ref is None else np.asarray(ref, dtype=np.float64)
    med = np.median(ref)
    mad = 1.4826 * np.median(np.abs(ref - med))
    if mad <= 1e-12:
        mad = ref.std() or 1.0
    return (values - med) / mad


# A secondary signal pulls the score down only past this many robust standard deviations
# below the dataset's median (see combine).
GATE_Z = 2.0


def combine(signals: dict[str, np.ndarray], ref: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """The combined score (higher = better) from the signals' robust z-scores, each turned so
    that higher is better: the kNN outlier score, plus min(z + GATE_Z, 0) of every other signal.

    Measured on bench/bench_rank_junk.py: the kNN distance alone catches most junk and ranks
    the same way whatever the training seed, while a small-data D's logit (and the upright
    test) swing between trainings and even rank noise or text above faces; averaged in they
    cut the seed-to-seed Spearman from 0.94 to 0.72. So they only count where they are
    extreme (an upside-down face is near other faces in D's features but fails the upright
    test).
    ``ref`` gives the signals the z-scores are taken against (default: ``signals``).
    """
    parts = contributions(signals, ref)
    return parts["knn"] + sum(v for name, v in parts.items() if name != "knn")


def contributions(signals: dict[str, np.ndarray], ref: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Each signal's part of ``combine`` (the score is their sum; the most negative part
    is what pulled an image down, which the page says in words)."""
    ref = ref or signals
    z = {name: robust_z(signals[name], ref[name]) * (-1 if SIGNALS[name]["worse"] == "high" else 1)
         for name in signals}
    return {name: v if name == "knn" else np.minimum(v + GATE_Z, 0) for name, v in z.items()}


# method subspace: the gated signals count from this many robust standard deviations down
SUBSPACE_GATE_Z = 1.0


def combine_subspace(signals: dict[str, np.ndarray], ref: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """method subspace (higher = better): the kNN and subspace outlier scores' robust
    z-scores, plus min(z + SUBSPACE_GATE_Z, 0) of the logit, upright and upright_subspace
    signals (each turned so that higher is better).

    Chosen among ~40 combinations (bench/bench_rank_signals.py) on bench_rank_sources.py's
    three sources of faces with ten kinds of junk, 32 px tiny D, 10 networks (seed 0, 5-20
    kimg): mean AUC 0.930 against combined's 0.913, worst 0.900 against 0.871, about the same
    junk in the worst 10. Not the default: it does not win on every source (bench/RESULTS.md).
    """
    ref = ref or signals
    z = {name: robust_z(signals[name], ref[name]) * (-1 if SIGNALS[name]["worse"] == "high" else 1)
         for name in signals}
    return z["knn"] + z["subspace"] + sum(np.minimum(z[name] + SUBSPACE_GATE_Z, 0)
                                          for name in ("logit", "upright", "upright_subspace"))


def score_dataset(D, rows: list[Row], cfg: dict, resolution: int | None = None,
                  progress: bool = True, stats: dict | None = None) -> list[Score]:
    """Score every row's image with ``D`` per ``cfg['method']``; worst first.

    mean_logit: the mean logit over shuffles (and mirror), the seed's ranking. combined:
    three signals (see SIGNALS and combine), each written beside the score. subspace:
    combined's three + subspace and upright_subspace (see combine_subspace).
    """
    method = cfg["method"]
    if method not in METHODS:
        raise ValueError(f"rank.method must be one of {METHODS}, not {method!r}")
    paths = [r.path for r in rows]
    per_shuffle, st = score_paths(D, paths, cfg, resolution, progress)
    if stats is not None:
        stats.update(st)
    if method == "mean_logit":
        return rank_rows(rows, per_shuffle)
    start = time.perf_counter()
    # paired with per_shuffle: the same batches, turned upside down
    flipped, _ = score_paths(D, paths, cfg, resolution, progress, upside_down=True)
    features = feature_paths(D, paths, resolution, cfg["batch"], cfg["mirror"])
    knn = knn_distance(features, cfg["knn_k"])
    fixed = {"knn": knn}   # the signals that do not depend on the batch companions
    if method == "subspace":
        distance = subspace_model(features)
        own = distance(features)
        turned = distance(feature_paths(D, paths, resolution, cfg["batch"], cfg["mirror"], upside_down=True))
        fixed.update(subspace=own, upright_subspace=np.log(turned / np.maximum(own, 1e-12)))
    if stats is not None:
        stats["signal_seconds"] = time.perf_counter() - start
    upright = per_shuffle - flipped
    signals = {"logit": per_shuffle.mean(axis=0), "upright": upright.mean(axis=0), **fixed}
    combiner = combine_subspace if method == "subspace" else combine
    combined = combiner(signals)
    # std: how much the combined score moves between shuffles (only the logits do)
    std = np.std([combiner({"logit": per_shuffle[k], "upright": upright[k], **fixed}, signals)
                  for k in range(len(per_shuffle))], axis=0)
    scored = [Score(r.id, float(combined[i]), float(std[i]), r.source, crop_box(r.details), r.path,
                    {name: float(v[i]) for name, v in signals.items()}) for i, r in enumerate(rows)]
    return sorted(scored, key=lambda s: (s.score, s.id))


# scores.tsv starts with this comment line when it knows its network: which run and
# cleaning round scored the images (read_scores skips it)
NETWORK_LINE = "# network: "


def format_scores(scores: list[Score], network: str = "") -> str:
    """scores.tsv: ``network`` (gan.runs.describe: the run and round) as a first comment line."""
    buf = io.StringIO()
    if network:
        buf.write(NETWORK_LINE + " ".join(network.split()) + "\n")
    from pipeline.manifest import tsv_writer  # quotes CR too: any file name (issue 16)
    writer = tsv_writer(buf)
    names = sorted({name for s in scores for name in s.signals})
    writer.writerow(SCORE_COLUMNS + [SIGNAL_PREFIX + n for n in names])
    for s in scores:
        box = json.dumps(s.crop_box, separators=(",", ":")) if s.crop_box is not None else ""
        writer.writerow([s.id, f"{s.score:.6f}", f"{s.std:.6f}", s.source, box, s.path]
                        + [f"{s.signals[n]:.6f}" if n in s.signals else "" for n in names])
    return buf.getvalue()


def read_scores(path: str | os.PathLike) -> list[Score]:
    """scores.tsv back as Score rows, in file order (worst first)."""
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:  # any name
        first = f.readline()
        if not first.startswith("#"):
            f.seek(0)
        return [Score(r["id"], float(r["score"]), float(r["std"]), r["source"],
                      json.loads(r["crop_box"]) if r["crop_box"] else None, r["path"],
                      {k[len(SIGNAL_PREFIX):]: float(v) for k, v in r.items()
                       if k.startswith(SIGNAL_PREFIX) and v != ""})
                for r in csv.DictReader(f, delimiter="\t")]


# ---------------------------------------------------------------- CLI

def scores_network(path: str | os.PathLike) -> str:
    """The run and round a scores.tsv names on its first line ("" when it names none)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        first = f.readline().rstrip("\n")
    return first[len(NETWORK_LINE):] if first.startswith(NETWORK_LINE) else ""


def configure_devices() -> str:
    """Deterministic kernels (same seed, same scores, also on GPU); GPU memory grown as
    needed rather than all taken. Returns which device scores."""
    import tensorflow as tf
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    tf.config.experimental.enable_op_determinism()
    return f"GPU x{len(gpus)}" if gpus else "CPU"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", required=True, help="R/export/manifest.tsv (the dataset)")
    p.add_argument("--network", required=True, help="gan.checkpoint .npz with the D")
    p.add_argument("--output", required=True, help="scores.tsv to write")
    p.add_argument("--config", required=True, help="the rank block as JSON")
    p.add_argument("--training-set", help="the manifest the network's round trained on: a network "
                   "older than it gets a warning")
    a = p.parse_args(argv)
    cfg = load_config_arg(a.config)
    rows = list(kept(read_manifest(a.manifest)))
    if not rows:
        raise SystemExit(f"rank: {a.manifest} lists no images")

    from gan.runs import describe, network_provenance, staleness
    network = describe(network_provenance(a.network))
    stale = staleness(a.network, a.training_set) if a.training_set else ""
    if stale:
        print(stale, file=sys.stderr, flush=True)
    device = configure_devices()
    from gan.checkpoint import load_network
    _G, D, _Gs, _extra = load_network(a.network)
    d_group = getattr(D, "mbstd_group_size", None)
    if d_group and d_group != cfg["group_size"]:
        print(f"rank: warning: rank.group_size={cfg['group_size']} but the D's minibatch-stddev "
              f"group is {d_group}", file=sys.stderr)
    resolution = rows[0].width or None
    d_resolution = getattr(D, "resolution", None)
    if resolution and d_resolution and resolution != d_resolution:
        raise SystemExit(f"rank: the dataset is {resolution} px but the D of {a.network} takes "
                         f"{d_resolution} px (finetune at normalize.resolution)")
    print(f"rank: {len(rows)} images with {network} on {device}, method {cfg['method']}, {cfg['shuffles']} shuffles"
          f"{' + mirror' if cfg['mirror'] else ''}, group size {cfg['group_size']}", flush=True)
    stats: dict = {}
    scores = score_dataset(D, rows, cfg, resolution, stats=stats)
    atomic_write_text(a.output, format_scores(scores, network))  # last: its presence means done
    print(f"rank: {stats['images_per_second']:.1f} images/s "
          f"({stats['d_evaluations_per_second']:.1f} D evaluations/s, {stats['seconds']:.1f} s, "
          f"{stats['call_size']} images per D call"
          + (f"; signals {stats['signal_seconds']:.1f} s" if "signal_seconds" in stats else "")
          + f"); worst {scores[0].score:.4f} {scores[0].id}, best {scores[-1].score:.4f} {scores[-1].id}")


if __name__ == "__main__":
    main()
