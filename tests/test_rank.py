"""rank: batch plan, shuffle/mirror averaging with a real (tiny) StyleGAN2 D, scores.tsv, CLI."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageOps

from conftest import REPO, TESTDATA
from pipeline.imaging import load_rgb
from pipeline.manifest import Row, write_manifest
from pipeline.rank import (SCORE_COLUMNS, SUBSPACE_GATE_Z, collect_scores, crop_box,
                           d_features, feature_paths, format_scores, knn_distance,
                           plan_batches, rank_rows, read_scores, robust_z, score_dataset, score_paths, scores_network,
                           subspace_model)

RES = 32
FILES = ["anime_miku_CC_BY-NC.jpg", "anime_miku_noisy.jpg", "anime_miku_small.png", "anime_tone.png",
         "noface_city.jpg", "photo_dogs.jpg", "photo_2008_001009.jpg", "broken/cmyk.jpg",
         "broken/<img src=x onerror=alert(1)>.png"]
CFG = {"method": "mean_logit", "group_size": 4, "shuffles": 3, "mirror": True, "seed": 0, "batch": 64,
       "knn_k": 3}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    """Real test images made RES x RES (what normalize hands to export)."""
    out = tmp_path_factory.mktemp("normalized")
    paths = []
    for i, name in enumerate(FILES):
        im, _ = load_rgb(TESTDATA / name)
        path = out / f"{i:02d}.png"
        im.resize((RES, RES), Image.Resampling.LANCZOS).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def discriminator():
    from gan.networks import Discriminator
    return Discriminator(RES, channel_base=256, channel_max=32, mbstd_group_size=4, seed=7)


# ---------------------------------------------------------------- batch plan

@pytest.mark.parametrize("n,group,shuffles,batch", [(9, 4, 3, 64), (3, 4, 2, 64), (100, 4, 2, 16),
                                                    (64, 4, 1, 64), (10, 1, 2, 3)])
def test_plan_scores_each_image_once_per_shuffle_in_full_batches(n, group, shuffles, batch):
    plan, call_size = plan_batches(n, group, shuffles, seed=1, batch=batch)
    assert plan.shape[0] == shuffles and plan.shape[2] == call_size
    assert call_size % group == 0 and call_size <= max(batch, group)
    for k in range(shuffles):
        row = plan[k].reshape(-1)
        assert sorted(row[:n]) == list(range(n))  # every image exactly once
        padding = row[n:]
        assert len(padding) < call_size  # only the last call is padded
        last_call = set(row[(n // call_size) * call_size:n])
        if n - len(last_call) >= len(padding):  # enough other images exist: pad with them
            assert not set(padding) & last_call
    same, _ = plan_batches(n, group, shuffles, seed=1, batch=batch)
    assert np.array_equal(plan, same)


def test_plan_changes_with_seed_and_between_shuffles():
    a, _ = plan_batches(40, 4, 3, seed=0, batch=8)
    b, _ = plan_batches(40, 4, 3, seed=1, batch=8)
    assert not np.array_equal(a, b)
    assert not np.array_equal(a[0], a[1])


def test_collect_scores_ignores_padding():
    plan, call_size = plan_batches(5, 4, 2, seed=3, batch=64)  # 3 padding slots per shuffle
    logits = np.where(np.arange(plan.size) % call_size < 5, plan.reshape(-1) * 10.0, -999.0)
    scores = collect_scores(plan, logits.reshape(plan.shape), 5)
    assert np.array_equal(scores, np.tile(np.arange(5) * 10.0, (2, 1)))


# ---------------------------------------------------------------- scoring with a real D

def test_scores_are_shuffle_and_mirror_averages_of_real_d_logits(images, discriminator):
    import tensorflow as tf
    per_shuffle, stats = score_paths(discriminator, images, CFG, RES, progress=False)
    n = len(images)
    assert per_shuffle.shape == (CFG["shuffles"], n) and stats["images"] == n

    # recompute by hand: every planned call through D, plain and mirrored, then averaged
    plan, _ = plan_batches(n, CFG["group_size"], CFG["shuffles"], CFG["seed"], CFG["batch"])
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in images])
    x_all = pixels.astype(np.float32) / 127.5 - 1
    logits = np.stack([
        np.stack([(discriminator(tf.constant(x_all[call])).numpy()
                   + discriminator(tf.constant(x_all[call][:, :, ::-1])).numpy()) / 2
                  for call in plan[k]]) for k in range(CFG["shuffles"])])
    expected = collect_scores(plan, logits, n)
    np.testing.assert_allclose(per_shuffle, expected, rtol=1e-4, atol=1e-5)

    # minibatch-stddev couples companions: the same image scores differently per shuffle
    assert per_shuffle.std(axis=0).max() > 0
    again, _ = score_paths(discriminator, images, CFG, RES, progress=False)
    assert np.array_equal(per_shuffle, again)  # deterministic for a seed
    other, _ = score_paths(discriminator, images, {**CFG, "seed": 1}, RES, progress=False)
    assert not np.array_equal(per_shuffle, other)


def test_mirror_off_scores_plain_images_only(images, discriminator):
    import tensorflow as tf
    cfg = {**CFG, "mirror": False, "shuffles": 1}
    per_shuffle, _ = score_paths(discriminator, images[:4], cfg, RES, progress=False)
    x = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in images[:4]]).astype(np.float32) / 127.5 - 1
    plan, _ = plan_batches(4, 4, 1, 0, 64)
    logits = discriminator(tf.constant(x[plan[0, 0]])).numpy()
    np.testing.assert_allclose(per_shuffle[0, plan[0, 0]], logits, rtol=1e-4, atol=1e-5)


def test_upside_down_scores_the_same_batches_flipped(images, discriminator):
    """The upright signal's second pass: the same plan (companions), every image flipped
    top to bottom (and, with mirror, also left to right)."""
    import tensorflow as tf
    cfg = {**CFG, "shuffles": 1}
    per_shuffle, _ = score_paths(discriminator, images[:4], cfg, RES, progress=False, upside_down=True)
    x = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in images[:4]]).astype(np.float32) / 127.5 - 1
    plan, _ = plan_batches(4, 4, 1, 0, 64)
    flipped = x[plan[0, 0]][:, ::-1]
    logits = (discriminator(tf.constant(flipped)).numpy()
              + discriminator(tf.constant(flipped[:, :, ::-1].copy())).numpy()) / 2
    np.testing.assert_allclose(per_shuffle[0, plan[0, 0]], logits, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- scores.tsv

def test_rank_rows_sorted_worst_first_with_crop_boxes(tmp_path):
    rows = [Row(id=f"s{i}-f0", source=f"dir/{i}.jpg", path=f"n/{i}.png",
                details={"box": [i, 2 * i, 10 + i, 12 + 2 * i]} if i % 2 else {}) for i in range(4)]
    per_shuffle = np.array([[3.0, -1.0, 2.0, -1.0], [1.0, -3.0, 2.0, -1.0]])
    scores = rank_rows(rows, per_shuffle)
    assert [s.id for s in scores] == ["s1-f0", "s3-f0", "s0-f0", "s2-f0"]  # tie at 2.0: by id
    assert scores[0].score == -2.0 and scores[0].std == 1.0
    # a detection box [x, y, w, h] as the region [l, t, r, b] (manifest.face_region)
    assert scores[0].crop_box == [1, 2, 12, 16] and scores[-1].crop_box is None
    text = format_scores(scores)
    assert text.splitlines()[0].split("\t") == SCORE_COLUMNS
    (tmp_path / "scores.tsv").write_text(text, encoding="utf-8")
    back = read_scores(tmp_path / "scores.tsv")
    assert [(s.id, s.score, s.crop_box, s.source) for s in back] == \
        [(s.id, s.score, s.crop_box, s.source) for s in scores]


def test_crop_box_keys():
    assert crop_box({"crop_box": [1.234, 2, 3, 4]}) == [1.23, 2, 3, 4]
    assert crop_box({"box": [0, 0, 5, 5]}) == [0, 0, 5, 5]  # x, y, w, h -> l, t, r, b
    # crop.py: "box" is the detection (x, y, w, h), "crop" the square actually cut
    assert crop_box({"box": [10, 10, 5, 5], "crop": [8, 8, 17, 17]}) == [8, 8, 17, 17]
    # FFHQ: the quad is what was cut, its "crop" only the quad's bounding box
    quad = [[0.123, 1.0], [2, 3.456], [4, 4], [1, 5]]
    assert crop_box({"quad": quad, "crop": [0, 1, 4, 5], "box": [1, 1, 2, 2]}) == \
        [[0.12, 1.0], [2, 3.46], [4, 4], [1, 5]]
    assert crop_box({"faces": 2}) is None


# ---------------------------------------------------------------- the CLI on a real checkpoint

def test_cli_ranks_dataset_manifest(tmp_path, images, discriminator):
    from gan.checkpoint import save_network
    from gan.networks import Generator, Discriminator
    G = Generator(RES, latent_dim=16, mapping_layers=1, channel_base=256, channel_max=32, seed=1)
    D = Discriminator(RES, channel_base=256, channel_max=32, seed=2)
    # the run record gan.train writes: scores.tsv names it
    run = {"id": "0123456789ab-cdef0123", "round": 2, "dataset": {"sha256": "f" * 64, "images": 3}}
    save_network(tmp_path / "net.npz", G, D, G, {"kimg": 1.5, "run": run})
    rows = [Row(id=f"{i:016x}", source=name, path=p, width=RES, height=RES,
                details={"index": i, "crop_box": [i, i, i + 40, i + 40]})
            for i, (name, p) in enumerate(zip(FILES, images))]
    write_manifest(tmp_path / "manifest.tsv", rows)
    cmd = [sys.executable, "-m", "pipeline.rank", "--manifest", str(tmp_path / "manifest.tsv"),
           "--network", str(tmp_path / "net.npz"), "--output", str(tmp_path / "rank" / "scores.tsv"),
           "--config", json.dumps({**CFG, "method": "combined"})]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "images/s" in proc.stdout and "CPU" in proc.stdout and "method combined" in proc.stdout
    scores = read_scores(tmp_path / "rank" / "scores.tsv")
    assert sorted(s.id for s in scores) == sorted(r.id for r in rows)
    assert [s.score for s in scores] == sorted(s.score for s in scores)
    by_id = {r.id: r for r in rows}
    for s in scores:
        assert s.source == by_id[s.id].source and s.path == by_id[s.id].path
        assert s.crop_box == by_id[s.id].details["crop_box"]
    assert not (tmp_path / "rank" / "histogram.png").exists()  # the page draws the one histogram
    # same D, same seed: the CLI's logit signal matches the library call
    per_shuffle, _ = score_paths(D, images, CFG, RES, progress=False)
    logit = {s.id: s.signals["logit"] for s in scores}
    np.testing.assert_allclose([logit[r.id] for r in rows], per_shuffle.mean(0), atol=2e-6)
    first, header = (tmp_path / "rank" / "scores.tsv").read_text().splitlines()[:2]
    assert first == "# network: run 0123456789ab-cdef0123 round 2 (3 images, dataset ffffffffffff, kimg 1.5)"
    assert scores_network(tmp_path / "rank" / "scores.tsv") == first[len("# network: "):]
    assert header.split("\t") == SCORE_COLUMNS + ["signal:knn", "signal:logit", "signal:upright"]


def test_cli_refuses_a_d_of_another_resolution(tmp_path, images):
    from gan.checkpoint import save_network
    from gan.networks import Discriminator, Generator
    G = Generator(64, latent_dim=16, mapping_layers=1, channel_base=256, channel_max=16, seed=1)
    save_network(tmp_path / "net64.npz", G, Discriminator(64, channel_base=256, channel_max=16), G, {})
    write_manifest(tmp_path / "manifest.tsv", [Row(id="a", source="a.png", path=images[0], width=RES, height=RES)])
    # a subprocess: the CLI switches TF to deterministic kernels for its whole process
    proc = subprocess.run([sys.executable, "-m", "pipeline.rank", "--manifest", str(tmp_path / "manifest.tsv"),
                           "--network", str(tmp_path / "net64.npz"), "--output", str(tmp_path / "scores.tsv"),
                           "--config", json.dumps(CFG)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert re.search(r"32 px but the D .* takes 64 px", proc.stderr), proc.stderr[-2000:]
    assert not (tmp_path / "scores.tsv").exists()


# ---------------------------------------------------------------- combined method: signals

def test_d_features_are_what_d_scores(images, discriminator):
    """d_features is D's own trunk (Discriminator.features, which D's call runs too): D's
    head written out here on it gives D's logits, and it does not depend on the batch companions."""
    import tensorflow as tf
    from gan import ops
    D = discriminator
    x = tf.constant(np.stack([np.asarray(Image.open(p).convert("RGB")) for p in images[:8]])
                    .astype(np.float32) / 127.5 - 1)
    trunk, features = d_features(D, x)
    h = ops.minibatch_stddev(trunk, D.mbstd_group_size, D.mbstd_num_features)
    h = D._conv(h, "4x4/Conv")
    h = tf.reshape(tf.transpose(h, [0, 3, 1, 2]), [-1, h.shape[3] * 16])
    h = ops.bias_act(tf.matmul(h, D._w("4x4/Dense0/weight")), D._w("4x4/Dense0/bias"), act="lrelu")
    logits = ops.bias_act(tf.matmul(h, D._w("Output/weight")), D._w("Output/bias"))[:, 0]
    np.testing.assert_allclose(logits.numpy(), D(x).numpy(), rtol=1e-5, atol=1e-5)
    alone = d_features(D, x[4:8])[1].numpy()
    np.testing.assert_allclose(features.numpy()[4:8], alone, rtol=1e-5, atol=1e-5)


def test_knn_distance_matches_brute_force_and_flags_outliers():
    rng = np.random.default_rng(0)
    cluster = rng.normal(size=(60, 8))
    outliers = rng.normal(size=(3, 8)) * 0.5 + 6
    f = np.concatenate([cluster, outliers])
    d = knn_distance(f, k=4, chunk=16)   # several chunks
    z = (f - f.mean(0)) / (f.std(0) + 1e-8)
    full = np.sqrt(((z[:, None] - z[None]) ** 2).sum(-1))
    np.fill_diagonal(full, np.inf)
    np.testing.assert_allclose(d, np.sort(full, axis=1)[:, :4].mean(1), rtol=1e-5)
    assert set(np.argsort(d)[-3:]) == {60, 61, 62}
    # projected on fewer principal axes, the outliers still stand out
    assert set(np.argsort(knn_distance(f, k=4, dims=2))[-3:]) == {60, 61, 62}
    assert knn_distance(f[:1], k=4).tolist() == [0.0]


def test_robust_z_ignores_a_few_extremes():
    v = np.concatenate([np.linspace(-1, 1, 50), [1000.0, -1000.0]])
    z = robust_z(v)
    assert abs(z[25]) < 0.1 and 1.0 < z[49] < 2.5 and z[50] > 500
    assert np.all(robust_z(np.ones(5)) == 0)


def _planted_junk_rows(folder, res: int) -> tuple[list[Row], set[str]]:
    """Real annotated photo faces (res x res crops) plus planted junk of several kinds."""
    from PIL import ImageDraw
    from conftest import voc_boxes
    rows, junk = [], {}
    for name, boxes in sorted(voc_boxes().items()):
        im, _ = load_rgb(TESTDATA / name)
        for k, (x, y, w, h) in enumerate(boxes):
            cx, cy, side = x + w / 2, y + h / 2, 1.8 * max(w, h)
            face = im.crop((round(cx - side / 2), round(cy - side / 2), round(cx + side / 2),
                            round(cy + side / 2))).resize((res, res), Image.Resampling.LANCZOS)
            rows.append((f"{name[6:-4]}-f{k}", face))
    rng = np.random.default_rng(1)
    junk["noise"] = Image.fromarray(rng.integers(0, 256, (res, res, 3), dtype=np.uint8))
    junk["flat"] = Image.new("RGB", (res, res), (200, 40, 40))
    card = Image.new("RGB", (res, res), "white")
    ImageDraw.Draw(card).multiline_text((2, 4), "SALE\n50%", fill="black")
    junk["text"] = card
    city, _ = load_rgb(TESTDATA / "noface_city.jpg")
    junk["city"] = city.crop((0, 0, 160, 160)).resize((res, res), Image.Resampling.LANCZOS)
    tone, _ = load_rgb(TESTDATA / "anime_tone.png")
    junk["screentone"] = tone.crop((0, 0, 120, 120)).resize((res, res), Image.Resampling.LANCZOS)
    rows += [(f"junk-{k}", im) for k, im in junk.items()]
    out = []
    for i, (rid, im) in enumerate(rows):
        path = folder / f"{rid}.png"
        im.save(path)
        out.append(Row(id=rid, source=path.name, path=str(path), width=res, height=res,
                       details={"index": i}))
    return out, {f"junk-{k}" for k in junk}


def test_combined_ranks_planted_junk_low(tmp_path, discriminator):
    """43 real faces + 5 planted junk (noise, flat colour, text card, city, screentone).

    Uses the module's D untrained (training one here costs minutes on a shared CPU; the
    trained case, with seed-to-seed agreement, is bench/bench_rank_junk.py): even random
    D features put junk far from every face, so the combined method ranks all 5 junk in
    the bottom 8 of 48 while the untrained D's logit ranks them anywhere.
    """
    rows, junk = _planted_junk_rows(tmp_path, RES)
    cfg = {**CFG, "method": "combined", "shuffles": 2, "knn_k": 5}
    scores = score_dataset(discriminator, rows, cfg, RES, progress=False)
    assert [s.score for s in scores] == sorted(s.score for s in scores)
    assert sorted(s.id for s in scores) == sorted(r.id for r in rows)
    assert all(set(s.signals) == {"logit", "upright", "knn"} for s in scores)
    ids = [s.id for s in scores]
    assert max(ids.index(j) for j in junk) < 8, ids[:10]
    # the knn signal says why: every junk image is far from its nearest dataset neighbours
    knn = {s.id: s.signals["knn"] for s in scores}
    face_knn = sorted(v for k, v in knn.items() if k not in junk)
    assert min(knn[j] for j in junk) > face_knn[len(face_knn) // 2]
    # combined = knn z-score + the gated logit and upright z-scores, recomputed by hand
    signals = {n: np.array([s.signals[n] for s in scores]) for n in ("logit", "upright", "knn")}
    z = {n: robust_z(v) for n, v in signals.items()}
    expected = -z["knn"] + np.minimum(z["logit"] + 2, 0) + np.minimum(z["upright"] + 2, 0)
    np.testing.assert_allclose([s.score for s in scores], expected, atol=2e-9)
    assert all(s.std >= 0 for s in scores) and max(s.std for s in scores) > 0
    # mean_logit on the same D is the seed's ranking: its scores are the mean logits
    plain = {s.id: s for s in score_dataset(discriminator, rows, {**cfg, "method": "mean_logit"},
                                            RES, progress=False)}
    assert all(not s.signals for s in plain.values())
    for s in scores:
        assert abs(plain[s.id].score - s.signals["logit"]) < 1e-9
    with pytest.raises(ValueError, match="rank.method"):
        score_dataset(discriminator, rows[:4], {**cfg, "method": "best"}, RES, progress=False)


def test_rule_passes_every_scoring_key():
    """rank.method and knn_k change scores: they must be in what the rule passes."""
    import yaml
    schema = yaml.safe_load((REPO / "schemas" / "config.schema.yaml").read_text())
    rank_keys = set(schema["properties"]["rank"]["properties"])
    from pipeline.rank import config_keys
    SCORING_KEYS = config_keys({"rank": dict.fromkeys(rank_keys)})
    assert {"method", "knn_k"} <= set(SCORING_KEYS) <= rank_keys
    # what is dropped after scoring, and how many rounds: not the scores
    assert rank_keys - set(SCORING_KEYS) == {"drop_bottom_fraction", "drop_below", "rejects", "rounds"}
    config = yaml.safe_load((REPO / "config.yaml").read_text())["rank"]
    assert {k: config[k] for k in ("method", "knn_k")} == \
        {k: schema["properties"]["rank"]["properties"][k]["default"] for k in ("method", "knn_k")}


# ---------------------------------------------------------------- subspace method: signals

def test_subspace_distance_is_pca_t2_plus_q_on_real_d_features(tmp_path, discriminator):
    """subspace_model on D's features of real faces + junk equals the PCA outlier test written
    out with a full SVD: whitened norm inside the top axes + residual norm, each over its median."""
    rows, junk = _planted_junk_rows(tmp_path, RES)
    f = feature_paths(discriminator, [r.path for r in rows], RES, 64, True)
    dims = 4
    got = subspace_model(f, dims=dims)(f)
    z = (f - f.mean(0)) / (f.std(0) + 1e-8)
    _, _, vt = np.linalg.svd(z, full_matrices=False)
    proj = z @ vt[:dims].T
    inside = np.sqrt(((proj / proj.std(0)) ** 2).sum(1))
    off = np.linalg.norm(z - proj @ vt[:dims], axis=1)
    np.testing.assert_allclose(got, inside / np.median(inside) + off / np.median(off), rtol=1e-3)
    # on these features every planted junk image lies farther off than the median face
    ids = [r.id for r in rows]
    faces = [v for i, v in zip(ids, got) if i not in junk]
    assert min(v for i, v in zip(ids, got) if i in junk) > np.median(faces)
    # rows that were not in the fit are measured against the dataset's subspace
    assert np.allclose(subspace_model(f, dims=dims)(f[:3]), got[:3])


def test_upside_down_features_are_the_flipped_images_features(tmp_path, images, discriminator):
    """feature_paths(upside_down=True) = the features of the images turned over on disk."""
    flipped = []
    for i, p in enumerate(images[:5]):
        out = tmp_path / f"{i}.png"
        ImageOps.flip(Image.open(p)).save(out)
        flipped.append(str(out))
    np.testing.assert_allclose(feature_paths(discriminator, images[:5], RES, 4, True, upside_down=True),
                               feature_paths(discriminator, flipped, RES, 4, True), rtol=1e-5, atol=1e-5)


def test_subspace_method_ranks_planted_junk_low(tmp_path, discriminator):
    """43 real faces + 5 planted junk, the module's untrained D (as the combined test): the
    five signals are written, the score is combine_subspace of them (recomputed here), and
    the junk ranks in the bottom 8 of 48."""
    rows, junk = _planted_junk_rows(tmp_path, RES)
    cfg = {**CFG, "method": "subspace", "shuffles": 2, "knn_k": 5}
    scores = score_dataset(discriminator, rows, cfg, RES, progress=False)
    assert [s.score for s in scores] == sorted(s.score for s in scores)
    names = {"logit", "upright", "knn", "subspace", "upright_subspace"}
    assert all(set(s.signals) == names for s in scores)
    ids = [s.id for s in scores]
    assert max(ids.index(j) for j in junk) < 8, ids[:10]
    signals = {n: np.array([s.signals[n] for s in scores]) for n in names}
    z = {n: robust_z(v) for n, v in signals.items()}
    gate = SUBSPACE_GATE_Z
    expected = (-z["knn"] - z["subspace"] + np.minimum(z["logit"] + gate, 0) + np.minimum(z["upright"] + gate, 0)
                + np.minimum(z["upright_subspace"] + gate, 0))
    np.testing.assert_allclose([s.score for s in scores], expected, atol=2e-9)
    # a flat image is the same upside down: its upright test is 0 exactly
    by_id = {s.id: s for s in scores}
    assert abs(by_id["junk-flat"].signals["upright_subspace"]) < 1e-9
    # the signals shared with combined are combined's own
    plain = {s.id: s for s in score_dataset(discriminator, rows, {**cfg, "method": "combined"}, RES, progress=False)}
    for s in scores:
        for n in ("logit", "upright", "knn"):
            assert s.signals[n] == plain[s.id].signals[n]
