"""report: funnel, drop galleries, escaping, preticked rejects, ranking data, provenance, on a
results tree of real images.

The tree is what the stages leave behind (manifests in the documented format, real
normalized images, real ingest decisions, ranked rows from export's own ranked_rows), so
the report is tested without running the whole workflow; test_browser.py runs it for real.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, TESTDATA
from pipeline.export import ranked_rows
from pipeline.imaging import load_rgb
from pipeline.ingest import ingest_file, shard_of, source_id
from pipeline.manifest import Row, kept, write_manifest
from pipeline.rank import format_scores, rank_rows
from pipeline.report import (build_check, build_ranking, funnel, load_stages, source_preview_name,
                             thumb_name, training_staleness)
from util.config import with_defaults

HOSTILE = "broken/<img src=x onerror=alert(1)>.png"
RAW_FILES = ["anime_miku_CC_BY-NC.jpg", "anime_miku_noisy.jpg", "anime_miku_small.png",
             "noface_city.jpg", "photo_dogs.jpg", "photo_Tom_Cruise_avp_2014_4.jpg", HOSTILE,
             "broken/zero_bytes.jpg", "broken/text_named.jpg", "broken/truncated.jpg",
             "broken/dup_exact_of_anime_miku_noisy.jpg", "broken/gray_of_anime_miku_noisy.jpg"]
RES = 32
CFG = {"thumb": 24}
SHARDS = ["0", "1"]


def build_results(root: Path, rejects: set[str] = frozenset(), drop_bottom_fraction: float = 0.0) -> dict:
    """A finished run's results tree for RAW_FILES (crop/clean decisions made here)."""
    R = root / "results" / "t"
    stage_rows: dict[str, dict[str, list[Row]]] = {s: {sh: [] for sh in SHARDS}
                                                   for s in ("ingest", "crop", "clean", "upscale", "normalize")}
    norm_dir = R / "normalize"
    dup_id = f"{source_id('broken/dup_exact_of_anime_miku_noisy.jpg')}-f0"
    dup_of = {"duplicate_of": f"{source_id('anime_miku_noisy.jpg')}-f0"}
    for rel in RAW_FILES:
        shard = SHARDS[shard_of(rel, len(SHARDS))]
        row = ingest_file(rel, str(TESTDATA), with_defaults("ingest", {"extensions": ["jpg", "png"]}), None)
        stage_rows["ingest"][shard].append(row)
        if not row.kept:
            continue
        if rel == "noface_city.jpg":  # crop found two faces, both below min_face
            stage_rows["crop"][shard].append(row.drop("no_face", details={
                "min_face": 250, "small_faces": [[10, 20, 40, 40], [100, 30, 60, 60]]}))
            continue
        im, _ = load_rgb(row.path)
        w, h = im.size
        boxes = [[0, 0, w // 2, h], [w // 2, 0, w, h]] if rel == HOSTILE else [[0, 0, w, h]]
        for k, box in enumerate(boxes):
            face = Row(id=f"{row.id}-f{k}", source=rel, parent_id=row.id, path=row.path, width=box[2] - box[0],
                       height=box[3] - box[1], details={"crop_box": box})
            stage_rows["crop"][shard].append(face)
            if rel.startswith("broken/gray"):
                stage_rows["clean"][shard].append(face.drop("monochrome"))
                continue
            stage_rows["clean"][shard].append(face.keep())
            if face.id == dup_id:  # dedup runs before upscale, which lists its drops, unprocessed
                stage_rows["upscale"][shard].append(face.drop("exact_duplicate", details=dup_of))
                continue
            stage_rows["upscale"][shard].append(face.keep(details={"upscale": "none"}))
            out = norm_dir / shard / f"{face.id}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            im.crop(box).resize((RES, RES), Image.Resampling.LANCZOS).save(out)
            stage_rows["normalize"][shard].append(face.keep(path=str(out), width=RES, height=RES))
    for stage, shards in stage_rows.items():
        for shard, rows in shards.items():
            write_manifest(R / stage / shard / "manifest.tsv", rows)

    clean_kept = [r for shards in stage_rows["clean"].values() for r in kept(shards)]
    dedup = [r.drop("exact_duplicate", details=dup_of) if r.id == dup_id else r for r in clean_kept]
    write_manifest(R / "clean" / "dedup.tsv", dedup)
    normalized = sorted((r for shards in stage_rows["normalize"].values() for r in kept(shards)),
                        key=lambda r: r.id)
    dataset = [r.keep(details={"index": i}) for i, r in enumerate(normalized)]
    write_manifest(R / "export" / "manifest.tsv", dataset)

    per_shuffle = np.random.default_rng(5).normal(size=(3, len(dataset)))
    scores = [replace(s, signals={"logit": s.score, "knn": -k * 0.5})
              for k, s in enumerate(rank_rows(dataset, per_shuffle))]
    (R / "rank").mkdir(parents=True)
    (R / "rank" / "scores.tsv").write_text(format_scores(scores), encoding="utf-8")
    ranked = ranked_rows(dataset, {s.id: s.score for s in scores}, set(rejects), drop_bottom_fraction)
    write_manifest(R / "ranked" / "manifest.tsv", ranked)

    samples = R / "finetune" / "samples"
    samples.mkdir(parents=True)
    for kimg, picks in (("000000000", dataset[:4]), ("000000064", dataset[-4:])):
        grid = Image.new("RGB", (RES * 4, RES))
        for i, r in enumerate(picks):
            grid.paste(Image.open(r.path), (RES * i, 0))
        grid.save(samples / f"fakes-{kimg}.png")
    return {"R": R, "dataset": dataset, "scores": scores, "stage_rows": stage_rows}


def report_args(tree: dict) -> dict:
    R = tree["R"]
    return dict(stage_manifests=[str(p) for p in sorted(R.glob("*/[01]/manifest.tsv"))],
                dataset=str(R / "export" / "manifest.tsv"), dedup=str(R / "clean" / "dedup.tsv"))


def make_report(tree: dict, rejects: Path | None = None, network: Path | None = None, cfg: dict = CFG) -> dict:
    """Both parts of the page, as the two rules run them; returns the page's data."""
    R = tree["R"]
    args = report_args(tree)
    problems = build_check(name="t", rejects=str(rejects) if rejects else None,
                           output=str(R / "report" / "index.html"), cfg=cfg, **args)
    ranking_problems = build_ranking(ranked=str(R / "ranked" / "manifest.tsv"),
                                     scores_path=str(R / "rank" / "scores.tsv"), network=str(network or ""),
                                     samples_dir=str(R / "finetune" / "samples"),
                                     output=str(R / "report" / "ranking.js"),
                                     provenance_path=str(R / "provenance.tsv"), **args)
    return {"check": page_data(R / "report" / "check.js"), "ranking": page_data(R / "report" / "ranking.js"),
            "problems": problems, "ranking_problems": ranking_problems,
            "page": (R / "report" / "index.html").read_text(encoding="utf-8")}


def page_data(path: Path) -> dict:
    """window.X = JSON.parse("..."); -> the dict (the data files are one JSON string each)."""
    text = path.read_text(encoding="utf-8")
    m = re.fullmatch(r"window\.FACEPREP_[A-Z]+ = JSON\.parse\((\".*\")\);\n", text, re.S)
    assert m, text[:200]
    return json.loads(json.loads(m.group(1)))


def items_of(check: dict) -> dict[str, dict]:
    cols = check["items"]
    return {cols["id"][k]: {c: cols[c][k] for c in cols} | {
        "source": check["sources"][cols["src"][k]], "why": check["reasons"][cols["reason"][k]]}
        for k in range(len(cols["id"]))}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    tree = build_results(root)
    tree.update(make_report(tree))
    return tree


def test_hostile_file_names_are_inert(tree):
    page = tree["page"]
    assert "<img src=x" not in page  # the page's HTML names no file at all
    for name in ("check.js", "ranking.js"):
        text = (tree["R"] / "report" / name).read_text(encoding="utf-8")
        assert "<" not in text and ">" not in text  # JSON escapes: nothing can close a <script>
    assert HOSTILE in tree["check"]["sources"]
    # every file the page links is beside it: thumbnails have safe names
    for t in tree["check"]["items"]["thumb"]:
        assert t in (0, 1) or re.fullmatch(r"[0-9a-f]{40}\.jpg", t)


def test_funnel_counts_match_the_manifests(tree):
    stages = load_stages(report_args(tree)["stage_manifests"], str(tree["R"] / "clean" / "dedup.tsv"),
                         str(tree["R"] / "export" / "manifest.tsv"), str(tree["R"] / "ranked" / "manifest.tsv"))
    rows = {f.stage: f for f in funnel(stages)}
    assert list(rows) == ["ingest", "crop", "clean", "dedup", "upscale", "normalize", "export", "ranked"]
    assert rows["ingest"].received == len(RAW_FILES)
    assert rows["ingest"].dropped == {"empty_file": 1, "not_an_image": 1, "truncated": 1}
    assert rows["crop"].received == len(RAW_FILES) - 3
    assert rows["crop"].dropped == {"no_face": 1}
    assert rows["crop"].kept == len(RAW_FILES) - 3 - 1 + 1  # the hostile photo gave 2 faces
    assert rows["clean"].dropped == {"monochrome": 1}
    assert rows["dedup"].dropped == {"exact_duplicate": 1}
    # upscale lists dedup's drop too: counted once, where it happened
    assert rows["upscale"].received == rows["dedup"].kept and not rows["upscale"].dropped
    assert rows["export"].received == rows["normalize"].kept
    assert rows["export"].kept == len(tree["dataset"]) == rows["normalize"].kept
    assert not rows["export"].dropped
    assert rows["ranked"].kept == len(tree["dataset"])
    # what the numbers count, adding up: crop takes files, gives faces, drops files
    assert (rows["ingest"].unit_in, rows["crop"].unit_in, rows["crop"].unit_kept, rows["crop"].unit_dropped,
            rows["clean"].unit_in) == ("files", "files", "faces", "files", "faces")
    assert rows["crop"].kept_files + sum(rows["crop"].dropped.values()) == rows["crop"].received
    assert rows["crop"].kept_files == rows["crop"].kept - 1  # the hostile photo's 2 faces, one file
    # the check page (no ranked manifest yet) shows the stages up to export
    table = {f["stage"]: f for f in tree["check"]["funnel"]}
    assert list(table) == ["ingest", "crop", "clean", "dedup", "upscale", "normalize", "export"]
    assert [table["ingest"][k] for k in ("in", "kept")] == [len(RAW_FILES), len(RAW_FILES) - 3]
    assert table["crop"]["units"] == ["files", "faces", "files"]
    assert table["crop"]["dropped"] == [["no_face", 1, "no face of at least crop.min_face found"]]
    assert table["dedup"]["dropped"][0][:2] == ["exact_duplicate", 1]


def test_every_image_and_every_drop_is_on_the_page(tree):
    check, R = tree["check"], tree["R"]
    items = items_of(check)
    dataset_ids = [r.id for r in tree["dataset"]]
    assert [i for i, it in items.items() if it["why"] == ""] == dataset_ids  # id order before ranking
    why = {it["source"]: it["why"] for it in items.values() if it["why"]}
    assert why == {"broken/zero_bytes.jpg": "ingest: empty_file", "broken/text_named.jpg": "ingest: not_an_image",
                   "broken/truncated.jpg": "ingest: truncated", "noface_city.jpg": "crop: no_face",
                   "broken/gray_of_anime_miku_noisy.jpg": "clean: monochrome",
                   "broken/dup_exact_of_anime_miku_noisy.jpg": "dedup: exact_duplicate"}
    # undecodable files: listed with their reason, no picture
    assert all(it["thumb"] == 0 for it in items.values() if it["why"].startswith("ingest"))
    # a duplicate cluster: the image kept and the dropped one, distance 0 for an exact copy
    keep = f"{source_id('anime_miku_noisy.jpg')}-f0"
    dup = f"{source_id('broken/dup_exact_of_anime_miku_noisy.jpg')}-f0"
    assert check["clusters"] == [[keep, [[dup, 0]]]]
    assert items[dup]["note"] == f"duplicate of {keep}, distance 0" and items[keep]["thumb"] == 1
    # no-face source: its thumbnail, the two too-small boxes as [l, t, r, b] over an upright preview
    noface = items[source_id("noface_city.jpg")]
    assert noface["geom"] == [[10, 20, 50, 60], [100, 30, 160, 90]] and "2 face(s)" in noface["note"]
    name, w, h = check["previews"][noface["prev"]]
    assert name == source_preview_name("noface_city.jpg")  # the same in every workdir
    with Image.open(TESTDATA / "noface_city.jpg") as im:
        assert (w, h) == im.size
    with Image.open(R / "report" / "sources" / name) as im:
        assert max(im.size) == min(1024, max(w, h)) and im.format == "JPEG"
    # a face of the hostile photo: its crop box over its source; full size = the dataset file
    hostile = [it for it in items.values() if it["source"] == HOSTILE]
    assert len(hostile) == 2 and sorted(it["geom"][0] for it in hostile) == [0, hostile[0]["geom"][2]]
    for it in hostile:
        assert it["prev"] >= 0
        n = len(check["fullExts"])  # <folder index, extension index> for <id><ext> files
        rel = f"{check['fullDirs'][it['full'] // n]}/{it['id']}{check['fullExts'][it['full'] % n]}"
        full = (R / "report" / rel).resolve()
        assert full in {Path(r.path).resolve() for r in tree["dataset"]}
    # thumbnails beside the page at the configured size
    for i, it in items.items():
        if it["thumb"]:
            with Image.open(R / "report" / "thumbs" / thumb_name(i)) as im:
                assert max(im.size) <= CFG["thumb"] and im.format == "JPEG"
    assert tree["problems"] == []


def test_ranking_data_in_score_order_with_signals_and_verdicts(tree):
    rk, scores = tree["ranking"], tree["scores"]
    assert rk["ids"] == [s.id for s in scores] and rk["score"] == [round(s.score, 6) for s in scores]
    assert set(rk["signals"]) == {"logit", "knn"}
    assert rk["signals"]["knn"] == [round(-k * 0.5, 6) for k in range(len(scores))]
    assert rk["status"] == {} and rk["datasetFingerprint"] == tree["check"]["datasetFingerprint"]
    assert rk["samples"] == "samples.png"
    newest = tree["R"] / "finetune" / "samples" / "fakes-000000064.png"
    assert np.array_equal(np.asarray(Image.open(tree["R"] / "report" / "samples.png")), np.asarray(Image.open(newest)))


def test_rejects_file_preticks_ids_and_sources_and_reports_unknown_lines(tmp_path, capfd):
    tree = build_results(tmp_path)
    worst = tree["scores"][0].id
    rejects = tmp_path / "rejects.txt"
    rejects.write_text(f"# my rejects\n{worst}\n{HOSTILE}   # both faces of this file\n"
                       "no-such-id\n</script><img src=x onerror=alert(2)>\n", encoding="utf-8")
    out = make_report(tree, rejects)
    hostile_ids = {r.id for r in tree["dataset"] if r.source == HOSTILE}
    assert len(hostile_ids) == 2
    assert set(out["check"]["preset"]) == {worst, *hostile_ids, "no-such-id", "</script><img src=x onerror=alert(2)>"}
    assert len(out["problems"]) == 1 and "2 line(s)" in out["problems"][0] and "no-such-id" in out["problems"][0]
    assert "match no image" in capfd.readouterr().err  # on the console too
    assert "no-such-id" in out["page"] and "<img src=x" not in out["page"]  # shown, escaped
    # a line that is not UTF-8 (a Latin-1 save): on the page and the console, never a crash
    rejects.write_bytes(b"caf\xe9-not-an-id\n")
    out = make_report(tree, rejects)
    assert out["problems"] and all("rejects file" in p for p in out["problems"])
    assert "rejects file" in capfd.readouterr().err
    # a rejects "file" that cannot be read at all (a folder)
    folder = tmp_path / "rejects-folder"
    folder.mkdir()
    out = make_report(tree, folder)
    assert out["check"]["preset"] == [] and "cannot be read" in out["problems"][0]
    assert "cannot be read" in capfd.readouterr().err


def test_training_older_than_the_dataset_is_reported(tmp_path, capfd):
    tree = build_results(tmp_path)
    export = tree["R"] / "export" / "manifest.tsv"
    net = tmp_path / "network-final.npz"
    np.savez(net, w=np.zeros(2))
    os.utime(net, ns=(export.stat().st_mtime_ns - 10**9,) * 2)  # trained before this export
    assert "older than the dataset" in training_staleness(net, export)
    out = make_report(tree, network=net)
    assert "older than the dataset" in out["ranking_problems"][0]
    assert out["ranking"]["problems"] == out["ranking_problems"]
    assert "older than the dataset" in capfd.readouterr().err
    # a recorded fingerprint (as gan.checkpoint/gan.runs store it) decides over file times
    from util.fingerprint import dataset_fingerprint
    run_fingerprint = lambda manifest: dataset_fingerprint(manifest)["sha256"]  # noqa: E731
    meta = lambda sha: np.array(json.dumps({"extra": {"run": {"id": "r1", "dataset": {"sha256": sha}}}}))  # noqa: E731
    np.savez(net, __meta__=meta(run_fingerprint(export)))
    os.utime(net, ns=(export.stat().st_mtime_ns - 10**9,) * 2)
    assert training_staleness(net, export) == ""
    np.savez(net, __meta__=meta("0" * 64))
    stale = training_staleness(net, export)  # the line rank's log gives, naming the run
    assert "run r1 round 1" in stale and "older than the data it claims" in stale, stale
    # the fingerprint is of the pictures: another image under the same id changes it
    before = run_fingerprint(export)
    first = tree["dataset"][0]
    Image.open(first.path).transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(first.path)
    assert run_fingerprint(export) != before


def test_provenance_for_every_raw_file_and_face(tree):
    import csv
    with open(tree["R"] / "provenance.tsv", newline="", encoding="utf-8") as f:
        rows = {r["id"]: r for r in csv.DictReader(f, delimiter="\t")}
    for rel in RAW_FILES:
        assert source_id(rel) in rows, rel
    raw = lambda rel: rows[source_id(rel)]  # noqa: E731
    assert (raw("broken/zero_bytes.jpg")["last_stage"], raw("broken/zero_bytes.jpg")["reason"]) == ("ingest", "empty_file")
    assert raw("broken/truncated.jpg")["action"] == "drop"
    assert (raw("noface_city.jpg")["last_stage"], raw("noface_city.jpg")["reason"]) == ("crop", "no_face")
    hostile = raw(HOSTILE)
    assert hostile["source"] == HOSTILE and hostile["action"] == "keep"
    assert json.loads(hostile["details"])["faces"] == 2
    gray = rows[f"{source_id('broken/gray_of_anime_miku_noisy.jpg')}-f0"]
    assert (gray["last_stage"], gray["reason"]) == ("clean", "monochrome")
    dup = rows[f"{source_id('broken/dup_exact_of_anime_miku_noisy.jpg')}-f0"]
    assert (dup["last_stage"], dup["reason"]) == ("dedup", "exact_duplicate")
    assert json.loads(dup["details"])["duplicate_of"] == f"{source_id('anime_miku_noisy.jpg')}-f0"
    for r in tree["dataset"]:
        p = rows[r.id]
        assert (p["last_stage"], p["action"]) == ("ranked", "keep") and float(p["score"]) != 0


def test_cli_rerun_reuses_thumbnails_and_removes_stale_ones(tmp_path):
    tree = build_results(tmp_path)
    args, R = report_args(tree), tree["R"]
    cmd = [sys.executable, "-m", "pipeline.report", "check", "--name", "t", "--dataset", args["dataset"],
           "--dedup", args["dedup"], "--rejects", str(tmp_path / "absent.txt"),
           "--output", str(R / "report" / "index.html"), "--config", json.dumps(CFG), "--threads", "2",
           *args["stage_manifests"]]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    thumbs = R / "report" / "thumbs"
    made = {p.name: p.stat().st_mtime_ns for p in thumbs.iterdir() if p.suffix == ".jpg"}
    n_images = sum(1 for it in items_of(page_data(R / "report" / "check.js")).values() if it["thumb"])
    assert len(made) == n_images
    (thumbs / "stale-from-an-old-run.jpg").write_bytes(b"x")
    # one dataset image changes: only its thumbnail is made again
    changed = tree["dataset"][0]
    Image.open(changed.path).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(changed.path)
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    again = {p.name: p.stat().st_mtime_ns for p in thumbs.iterdir() if p.suffix == ".jpg"}
    assert set(again) == set(made)
    assert [n for n in made if made[n] != again[n]] == [thumb_name(changed.id)]
    assert "making 1 images" in proc.stdout
    assert not list(R.glob("report/**/.*.tmp"))  # no temp files left behind


def test_thumb_names_stay_inside_the_folder():
    assert thumb_name("0123abcd-f1") == "0123abcd-f1.jpg"
    for hostile in ("../../etc/passwd", ".hidden", "a/b", "<x>", ""):
        name = thumb_name(hostile)
        assert re.fullmatch(r"[0-9a-f]{40}\.jpg", name), name


def test_images_are_made_in_parallel_and_reused(tmp_path):
    from pipeline.report import make_images
    pictures = ["anime_miku_noisy.jpg", "photo_dogs.jpg", "noface_city.jpg", "broken/truncated.jpg"]
    wanted = {f"t{k:02d}.jpg": (str(TESTDATA / pictures[k % 4]), 48) for k in range(20)}
    sizes = make_images(tmp_path / "thumbs", wanted, threads=2, index_path=tmp_path / "cache" / "thumbs.json")
    made = sorted(p.name for p in (tmp_path / "thumbs").iterdir())
    # the truncated file gives no thumbnail (and no crash); the others their upright size
    assert made == sorted(n for k, n in enumerate(wanted) if k % 4 != 3) == sorted(sizes)
    with Image.open(TESTDATA / "photo_dogs.jpg") as im:
        assert sizes["t01.jpg"] == im.size
    assert not (tmp_path / "thumbs" / "index.json").exists()  # the index lives in the cache
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "thumbs").iterdir()}
    again = make_images(tmp_path / "thumbs", wanted, threads=2, index_path=tmp_path / "cache" / "thumbs.json")
    assert again == sizes and before == {p.name: p.stat().st_mtime_ns for p in (tmp_path / "thumbs").iterdir()}


def test_scores_tsv_and_the_page_show_the_same_region_of_a_dlib_ffhq_face(tmp_path):
    """A real dlib/FFHQ face records both ``quad`` (the rotated region it was cut from) and
    ``crop`` (that quad's bounding box): scores.tsv and the page must both give the quad."""
    from test_crop import cfg as crop_cfg, ingest_rows, run_crop
    from pipeline.manifest import face_region
    from pipeline.rank import Score, format_scores, read_scores, crop_box
    from pipeline.report import face_geometry
    rows = run_crop(tmp_path / "0", ingest_rows(["photo_Tom_Cruise_avp_2014_4.jpg"]),
                    crop_cfg(method="dlib", min_face=30, dlib_detector="hog", dlib_upsample=1))
    face = next(r for r in rows if r.kept)
    assert face.details["align"] == "ffhq" and len(face.details["crop"]) == 4  # both recorded
    quad = face.details["quad"]
    assert face_region(face.details) == quad
    (tmp_path / "scores.tsv").write_text(format_scores([Score(face.id, 0.0, 0.0, face.source,
                                                              crop_box(face.details), face.path)]))
    (score,) = read_scores(tmp_path / "scores.tsv")
    page = face_geometry(face.details)
    assert np.allclose(score.crop_box, quad, atol=0.01) and np.allclose(page, quad, atol=0.051)
    # a box crop: [l, t, r, b] both ways; a bare detection [x, y, w, h] becomes [l, t, r, b] both ways
    assert crop_box({"crop": [1, 2, 30, 40], "box": [5, 5, 9, 9]}) == face_geometry({"crop": [1, 2, 30, 40]}) == [1, 2, 30, 40]
    assert crop_box({"box": [5, 6, 10, 20]}) == face_geometry({"box": [5, 6, 10, 20]}) == [5, 6, 15, 26]


def test_a_folder_where_the_detector_finds_no_face_is_a_warning_naming_the_setting(tmp_path, capfd):
    """dlib on a mix of drawings and photographs (the issue's case): the anime folder gives
    no face; the console and the top of the page say so and name crop.method: animeface."""
    import shutil
    from test_crop import INGEST_CFG, cfg as crop_cfg, run_crop
    from pipeline.report import coverage, render_index
    raw = tmp_path / "raw"
    anime = ["anime_miku_CC_BY-NC.jpg", "anime_miku_noisy.jpg", "anime_miku_small.png", "anime_tone.png"]
    photos = ["photo_Tom_Cruise_avp_2014_4.jpg", "photo_2008_002470.jpg", "photo_2009_004587.jpg"]
    for folder, names in (("anime", anime), ("photos", photos)):
        (raw / folder).mkdir(parents=True)
        for n in names:
            shutil.copyfile(TESTDATA / n, raw / folder / n)
    rels = [f"anime/{n}" for n in anime] + [f"photos/{n}" for n in photos]
    ingest_rows = [ingest_file(rel, str(raw), INGEST_CFG, None) for rel in rels]
    crop_rows = run_crop(tmp_path / "crop" / "0", ingest_rows,
                         crop_cfg(method="dlib", min_face=30, dlib_detector="hog", dlib_upsample=1))
    folders, warnings = coverage({"ingest": ingest_rows, "crop": crop_rows})
    table = {f["folder"]: f for f in folders}
    assert table["anime"]["files"] == table["anime"]["read"] == 4 and table["anime"]["noFace"] >= 3
    assert table["photos"]["withFace"] == 3 and table["photos"]["faces"] >= 3
    # files add up: with a face + without = read
    assert all(f["withFace"] + f["noFace"] == f["read"] for f in folders)
    (warning,) = warnings
    assert warning.startswith("raw folder anime/:") and "crop.method: animeface" in warning
    page = render_index("t", [], warnings, "characters/t.rejects.txt")
    assert "crop.method: animeface" in page and 'id="warnings"' in page

    # the same drawings spread over ten folders: one line for them all, not a screenful
    from pipeline.manifest import Row
    def spread(rows):
        moved = [Row(**({f: getattr(r, f) for f in Row.FIELDS} | {"source": r.source.replace("anime/", f"anime{i}/")}))
                 for i in range(10) for r in rows if r.source.startswith("anime/")]
        return moved + [r for r in rows if r.source.startswith("photos/")]
    folders, warnings = coverage({"ingest": spread(ingest_rows), "crop": spread(crop_rows)})
    (warning,) = warnings
    no_face = table["anime"]["noFace"]
    assert warning.startswith(f"10 raw folders where most files gave no face ({10 * no_face} of 40 files")
    assert len(re.findall(r"anime\d/", warning)) == 8 and "and 2 more" in warning
    assert "crop.method: animeface" in warning and "coverage table" in warning
    assert {f["folder"] for f in folders if f["warn"]} == {f"anime{i}" for i in range(10)}


def test_near_misses_for_each_threshold_with_values_and_what_moving_it_changes():
    """Real clean decisions on real faces: the sharpness floor set at the median drops half;
    the page lists the kept faces just above it and the dropped ones just below, and says
    what lowering it to the nearest dropped value adds."""
    import yaml
    from pipeline.clean import clean_row
    from pipeline.crop import pass_through
    from pipeline.report import near_misses
    names = ["anime_miku_CC_BY-NC.jpg", "anime_miku_noisy.jpg", "anime_miku_small.png",
             "photo_Tom_Cruise_avp_2014_4.jpg", "photo_2008_002470.jpg", "photo_dogs.jpg",
             "noface_city.jpg", "anime_miku_small_noisy.jpg"]
    ingest = [ingest_file(n, str(TESTDATA), with_defaults("ingest", {"extensions": ["jpg", "png"]}), None)
              for n in names]
    faces = [pass_through(r) for r in ingest]
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())["clean"]
    measured = sorted(clean_row(f, cfg).details["sharpness"] for f in faces)
    floor = measured[len(measured) // 2]
    cfg["quality"]["min_sharpness"] = floor
    clean = [clean_row(f, cfg) for f in faces]
    assert {r.reason for r in clean if not r.kept} == {"blurry"}
    (nm,) = [n for n in near_misses({"crop": faces, "clean": clean}, {"quality": cfg["quality"]})
             if n["setting"] == "clean.quality.min_sharpness"]
    kept_side = [v for _, v, k in nm["items"] if k]
    dropped_side = [v for _, v, k in nm["items"] if not k]
    assert kept_side == sorted(v for v in measured if v >= floor)[:6]  # closest above first
    assert dropped_side == sorted((v for v in measured if v < floor), reverse=True)[:6]  # closest below first
    assert nm["value"] == floor
    assert nm["advice"].startswith(f"lowering clean.quality.min_sharpness to {dropped_side[0]} adds 1 face")
    assert f"raising it just above {kept_side[0]} drops 1 face" in nm["advice"]
    # crop.min_face: a file whose faces were all too small, with the largest of them
    noface = Row(id="n", source="n.jpg", details={"min_face": 250, "small_faces": [[0, 0, 154, 160], [5, 5, 90, 90]]})
    (mf,) = near_misses({"crop": [noface.drop("no_face")]}, {"min_face": 250})
    assert mf["items"] == [["n", 154, False]] and mf["advice"] == "lowering crop.min_face to 154 adds 1 file"
