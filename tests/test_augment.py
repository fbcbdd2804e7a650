"""augment: each op on real normalized faces, exact R x R output like normalize's,
determinism, manifest layout, and the rule."""
import json

import cv2
import numpy as np
import pytest
from conftest import REPO, TESTDATA, normalize_files, run_snakemake
from PIL import Image
from PIL.JpegImagePlugin import get_sampling

from pipeline import augment, normalize
from pipeline.manifest import Row, ShardDir, read_manifest, write_manifest

FACES = [TESTDATA / "anime_miku_noisy.jpg", TESTDATA / "anime_miku_small.png",
         TESTDATA / "photo_Tom_Cruise_avp_2014_4.jpg"]
ALL_OPS = list(augment.OPS)


def cfg(**kw):
    return {"enabled": True, "copies": 2, "seed": 0, "ops": ALL_OPS,
            "resolution": 64, "format": "jpg", "quality": 95, **kw}


def normalized(tmp_path, fmt="jpg", resolution=64):
    """Real normalize output for FACES: (its manifest path, its rows)."""
    out = normalize_files(tmp_path, FACES, ids=[f"face{n}" for n in range(len(FACES))],
                          resolution=resolution, fit="crop", format=fmt)
    return out, read_manifest(out)


def run_augment(tmp_path, manifest, **kw):
    out = tmp_path / "augment" / "0" / "manifest.tsv"
    augment.main(["--input", str(manifest), "--output", str(out), "--config",
                  json.dumps(cfg(**kw)), "--threads", "2"])
    return read_manifest(out)


@pytest.fixture(scope="module")
def face():
    """A 128 x 128 normalized-like face (centre crop of a real anime image)."""
    im = Image.open(TESTDATA / "anime_miku_noisy.jpg").convert("RGB")
    return normalize.fit_square(im, 128, "crop")[0]


def as_float(im):
    return np.asarray(im, dtype=np.float64)


def detail(im):
    """Laplacian variance: how much fine detail (edges, noise) the image holds."""
    return cv2.Laplacian(np.asarray(im.convert("L")), cv2.CV_64F).var()


@pytest.mark.parametrize("op", ALL_OPS)
def test_every_op_keeps_size_and_changes_pixels(face, op):
    for image_id in ("a", "b", "c"):
        _op, params = augment.plan(image_id, 1, [op], seed=0)[0]
        out = augment.apply(face, op, params)
        assert out.size == face.size and out.mode == "RGB"
        assert np.abs(as_float(out) - as_float(face)).mean() > 0.5, (op, params)


def test_ops_do_what_their_names_say(face):
    assert detail(augment.blur(face, 1.0)) < 0.5 * detail(face)
    assert detail(augment.sharpen(face, 1.5, 120)) > 1.5 * detail(face)
    brighter = augment.brightness_contrast(face, 1.1, 1.0)
    assert as_float(brighter).mean() > as_float(face).mean() + 5
    flatter = augment.brightness_contrast(face, 1.0, 0.9)
    assert as_float(flatter).std() < as_float(face).std()
    red = as_float(augment.color(face, (255, 0, 0), 0.08)) - as_float(face)
    assert red[..., 0].mean() > 3 and red[..., 1].mean() < 0 and red[..., 2].mean() < 0
    # rotating back undoes deskew in the middle (the borders are reflected, not kept)
    back = augment.deskew(augment.deskew(face, 3.0), -3.0)
    mid = slice(32, 96)
    assert np.abs(as_float(back)[mid, mid] - as_float(face)[mid, mid]).mean() < 6
    # a 10% horizontal stretch keeps the centre column and moves others outward
    wide = as_float(augment.stretch(face, 1.1, 1.0))
    assert np.abs(wide[:, 63:65] - as_float(face)[:, 63:65]).mean() < 4
    assert np.abs(wide[:, 10] - as_float(face)[:, 10]).mean() > 4


def test_plan_is_deterministic_and_copies_differ():
    assert augment.plan("abc-f0", 3, ALL_OPS, 7) == augment.plan("abc-f0", 3, ALL_OPS, 7)
    assert augment.plan("abc-f0", 3, ALL_OPS, 7) != augment.plan("abc-f0", 3, ALL_OPS, 8)
    ops = [op for op, _ in augment.plan("abc-f0", len(ALL_OPS), ALL_OPS, 7)]
    assert sorted(ops) == sorted(ALL_OPS)  # as many copies as ops: each op once
    # a copy does not depend on how many copies are asked for
    assert augment.plan("x", 2, ALL_OPS, 0) == augment.plan("x", 4, ALL_OPS, 0)[:2]
    assert augment.plan("x", 2, [], 0) == []


@pytest.mark.parametrize("fmt", ["jpg", "png"])
def test_stage_writes_exact_copies_like_normalize(tmp_path, fmt):
    manifest, originals = normalized(tmp_path, fmt)
    rows = run_augment(tmp_path, manifest, format=fmt)
    assert len(rows) == 3 * len(originals)
    for i, orig in enumerate(originals):
        assert rows[3 * i] == orig  # the original row, path and all, unchanged
        for k, copy in enumerate(rows[3 * i + 1: 3 * i + 3]):
            assert (copy.id, copy.parent_id, copy.source) == (f"{orig.id}-a{k}", orig.id, orig.source)
            assert copy.kept and (copy.width, copy.height) == (64, 64)
            assert copy.details["augment"]["op"] in ALL_OPS
            assert copy.details["normalize"] == orig.details["normalize"]  # provenance kept
            assert normalize.validation_error(copy.path, 64, fmt) == ""
            with Image.open(copy.path) as im, Image.open(orig.path) as o:
                assert (im.format, im.mode, im.size) == (o.format, o.mode, o.size)
                if fmt == "jpg":
                    assert get_sampling(im) == get_sampling(o) == 0  # 4:4:4 like normalize
                assert np.abs(as_float(im) - as_float(o)).mean() > 0.5
    # rerun elsewhere: byte-identical files
    again = run_augment(tmp_path / "again", manifest, format=fmt)
    for a, b in zip(rows, again):
        if a.parent_id:
            assert open(a.path, "rb").read() == open(b.path, "rb").read()
            assert a.details == b.details


def test_drops_pass_through_and_bad_inputs_get_reasons(tmp_path):
    manifest, originals = normalized(tmp_path)
    rows = originals + [
        Row(id="gone", source="g", action="drop", reason="decode_error"),
        Row(id="raw", source=FACES[0].name, path=str(FACES[0]), width=400, height=279),
        Row(id="broken", source="b", path=str(TESTDATA / "broken" / "truncated.jpg"), width=64, height=64)]
    with ShardDir(tmp_path / "aug") as out:
        result = augment.augment_shard(rows, out, cfg(copies=1))
    by_id = {r.id: r for r in result}
    assert by_id["gone"] == rows[-3] and "gone-a0" not in by_id
    assert by_id["raw-a0"].reason == "not_normalized" and by_id["raw-a0"].parent_id == "raw"
    assert by_id["broken-a0"].reason == "decode_error"
    assert sum(r.kept for r in result) == 2 * len(originals) + 2  # + raw, broken themselves


def test_disabled_is_a_pass_through(tmp_path):
    manifest, originals = normalized(tmp_path)
    assert run_augment(tmp_path, manifest, enabled=False) == originals


@pytest.mark.skipif("rules/augment.smk" not in (REPO / "Snakefile").read_text(),
                    reason="the lead includes rules/augment.smk in the Snakefile")
def test_rule_runs_on_normalize_manifests(workdir):
    # normalize manifests made by the real normalize stage, so only augment runs here
    for shard, faces in (("0", FACES[:2]), ("1", FACES[2:])):
        rows = [Row(id=f"s{shard}f{n}", source=f.name, path=str(f), width=1, height=1)
                for n, f in enumerate(faces)]
        write_manifest(workdir / f"clean{shard}.tsv", rows)
        normalize.main(["--input", str(workdir / f"clean{shard}.tsv"), "--output",
                        str(workdir / f"results/tiny/normalize/{shard}/manifest.tsv"), "--config",
                        json.dumps({"resolution": 32, "fit": "pad", "format": "png",
                                    "quality": 95, "background": [0, 0, 0]})])
        # per-shard rules after dedup wait for its checkpoint: record "no duplicates"
        write_manifest(workdir / f"results/tiny/clean/dedup/{shard}.tsv", [])
    write_manifest(workdir / "results/tiny/clean/dedup.tsv", [])
    (workdir / "raw" / FACES[0].name).write_bytes(FACES[0].read_bytes())  # not an empty folder
    targets = [f"results/tiny/augment/{s}/manifest.tsv" for s in "01"]
    run_snakemake(workdir, *targets, "--allowed-rules", "augment",
                  overrides={"augment": {"enabled": True, "copies": 3}})
    rows = read_manifest(workdir / targets[0]) + read_manifest(workdir / targets[1])
    assert len(rows) == len(FACES) * (1 + 3)
    new = [r for r in rows if r.parent_id]
    assert len(new) == 9 and all(r.kept for r in new)
    for r in new:
        assert normalize.validation_error(workdir / r.path, 32, "png") == ""
