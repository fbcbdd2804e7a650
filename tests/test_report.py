"""report: funnel, grids, escaping, preticked rejects, provenance, on a results tree of real images.

The tree is what the stages leave behind (manifests in the documented format, real
normalized images, real ingest decisions, ranked rows from export's own ranked_rows), so
the report is tested without running the whole workflow; test_browser.py runs it for real.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, TESTDATA
from pipeline.export import ranked_rows
from pipeline.imaging import load_rgb
from pipeline.ingest import ingest_file, shard_of, source_id
from pipeline.manifest import Row, kept, write_manifest
from pipeline.rank import format_scores, histogram_png, rank_rows
from pipeline.report import build_report, funnel, load_stages, thumb_name

HOSTILE = "broken/<img src=x onerror=alert(1)>.png"
RAW_FILES = ["anime_miku_CC_BY-NC.jpg", "anime_miku_noisy.jpg", "anime_miku_small.png",
             "noface_city.jpg", "photo_dogs.jpg", "photo_Tom_Cruise_avp_2014_4.jpg", HOSTILE,
             "broken/zero_bytes.jpg", "broken/text_named.jpg", "broken/truncated.jpg",
             "broken/dup_exact_of_anime_miku_noisy.jpg", "broken/gray_of_anime_miku_noisy.jpg"]
RES = 32
CFG = {"bottom_k": 4, "top_k": 3, "thumb": 24}
SHARDS = ["0", "1"]


def build_results(root: Path, rejects: set[str] = frozenset()) -> dict:
    """A finished run's results tree for RAW_FILES (crop/clean decisions made here)."""
    R = root / "results" / "t"
    stage_rows: dict[str, dict[str, list[Row]]] = {s: {sh: [] for sh in SHARDS}
                                                   for s in ("ingest", "crop", "clean", "upscale", "normalize")}
    norm_dir = R / "normalize"
    for rel in RAW_FILES:
        shard = SHARDS[shard_of(rel, len(SHARDS))]
        row = ingest_file(rel, str(TESTDATA), {"extensions": ["jpg", "png"], "max_pixels": 40_000_000}, None)
        stage_rows["ingest"][shard].append(row)
        if not row.kept:
            continue
        if rel == "noface_city.jpg":
            stage_rows["crop"][shard].append(row.drop("no_face"))
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
            stage_rows["upscale"][shard].append(face.keep(details={"upscale": "none"}))
            out = norm_dir / shard / f"{face.id}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            im.crop(box).resize((RES, RES), Image.Resampling.LANCZOS).save(out)
            stage_rows["normalize"][shard].append(face.keep(path=str(out), width=RES, height=RES))
    for stage, shards in stage_rows.items():
        for shard, rows in shards.items():
            write_manifest(R / stage / shard / "manifest.tsv", rows)

    clean_kept = [r for shards in stage_rows["clean"].values() for r in kept(shards)]
    dup_id = f"{source_id('broken/dup_exact_of_anime_miku_noisy.jpg')}-f0"
    dedup = [r.drop("exact_duplicate", details={"duplicate_of": f"{source_id('anime_miku_noisy.jpg')}-f0"})
             if r.id == dup_id else r for r in clean_kept]
    write_manifest(R / "clean" / "dedup.tsv", dedup)
    normalized = sorted((r for shards in stage_rows["normalize"].values() for r in kept(shards)
                         if r.id != dup_id), key=lambda r: r.id)
    dataset = [r.keep(details={"index": i}) for i, r in enumerate(normalized)]
    write_manifest(R / "export" / "manifest.tsv", dataset)

    per_shuffle = np.random.default_rng(5).normal(size=(3, len(dataset)))
    scores = rank_rows(dataset, per_shuffle)
    (R / "rank").mkdir(parents=True)
    (R / "rank" / "scores.tsv").write_text(format_scores(scores), encoding="utf-8")
    (R / "rank" / "histogram.png").write_bytes(histogram_png([s.score for s in scores]))
    ranked = ranked_rows(dataset, {s.id: s.score for s in scores}, set(rejects), 0.0)
    write_manifest(R / "ranked" / "manifest.tsv", ranked)

    samples = R / "finetune" / "samples"
    samples.mkdir(parents=True)
    for kimg, picks in (("000000000", dataset[:4]), ("000000064", dataset[-4:])):
        grid = Image.new("RGB", (RES * 4, RES))
        for i, r in enumerate(picks):
            grid.paste(Image.open(r.path), (RES * i, 0))
        grid.save(samples / f"fakes-{kimg}.png")
    return {"R": R, "dataset": dataset, "scores": scores, "stage_rows": stage_rows}


def report_args(tree: dict, rejects: Path | None, cfg: dict = CFG) -> dict:
    R = tree["R"]
    return dict(name="t", stage_manifests=[str(p) for p in sorted(R.glob("*/[01]/manifest.tsv"))],
                dataset=str(R / "export" / "manifest.tsv"), dedup=str(R / "clean" / "dedup.tsv"),
                ranked=str(R / "ranked" / "manifest.tsv"), scores_path=str(R / "rank" / "scores.tsv"),
                histogram=str(R / "rank" / "histogram.png"), samples_dir=str(R / "finetune" / "samples"),
                rejects=str(rejects) if rejects else None, output=str(R / "report" / "index.html"),
                provenance_path=str(R / "provenance.tsv"), cfg=cfg)


class Cards(HTMLParser):
    """The review cards of the page: [(data-id, checked, img src, caption text)]."""

    def __init__(self, page: str):
        super().__init__()
        self.cards: list[dict] = []
        self.funnel: list[list[str]] = []
        self._in_card = self._in_cell = False
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "figure" and a.get("class") == "card":
            self.cards.append({"id": a["data-id"], "text": "", "img": None, "checked": None})
            self._in_card = True
        elif tag == "img" and self._in_card:
            self.cards[-1]["img"] = a["src"]
        elif tag == "input" and self._in_card:
            assert a["data-id"] == self.cards[-1]["id"]
            self.cards[-1]["checked"] = "checked" in a
        elif tag == "tr" and "data-stage" in a:
            self.funnel.append([])
        elif tag == "td" and self.funnel:
            self.funnel[-1].append("")
            self._in_cell = True

    def handle_endtag(self, tag):
        if tag == "figure":
            self._in_card = False
        elif tag == "td":
            self._in_cell = False

    def handle_data(self, data):
        if self._in_card:
            self.cards[-1]["text"] += data
        if self._in_cell:
            self.funnel[-1][-1] += data


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    tree = build_results(root)
    build_report(**report_args(tree, None))
    tree["page"] = (tree["R"] / "report" / "index.html").read_text(encoding="utf-8")
    return tree


def test_hostile_file_names_are_escaped(tree):
    page = tree["page"]
    assert "<img src=x onerror" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;.png" in page
    cards = Cards(page).cards
    hostile = [c for c in cards if HOSTILE in c["text"]]
    assert hostile, "the hostile file's faces are in the dataset and should be in a grid"
    # every <img> on the page is one we wrote
    srcs = re.findall(r"<img\b[^>]*\bsrc='([^']*)'", page)
    assert srcs and all(s in ("samples.png", "histogram.png") or s.startswith("thumbs/") for s in srcs)


def test_funnel_counts_match_the_manifests(tree):
    stages = load_stages(report_args(tree, None)["stage_manifests"], str(tree["R"] / "clean" / "dedup.tsv"),
                         str(tree["R"] / "export" / "manifest.tsv"), str(tree["R"] / "ranked" / "manifest.tsv"))
    rows = {f.stage: f for f in funnel(stages)}
    assert list(rows) == ["ingest", "crop", "clean", "upscale", "normalize", "dedup", "export", "ranked"]
    assert rows["ingest"].received == len(RAW_FILES)
    assert rows["ingest"].dropped == {"empty_file": 1, "not_an_image": 1, "truncated": 1}
    assert rows["crop"].received == len(RAW_FILES) - 3
    assert rows["crop"].dropped == {"no_face": 1}
    assert rows["crop"].kept == len(RAW_FILES) - 3 - 1 + 1  # the hostile photo gave 2 faces
    assert rows["clean"].dropped == {"monochrome": 1}
    assert rows["dedup"].dropped == {"exact_duplicate": 1}
    assert rows["export"].received == rows["normalize"].kept
    assert rows["export"].kept == len(tree["dataset"]) == rows["normalize"].kept - 1
    assert rows["export"].dropped == {"duplicate": 1}
    assert rows["ranked"].kept == len(tree["dataset"])
    table = {cells[0]: cells for cells in Cards(tree["page"]).funnel}
    assert table["ingest"][1:4] == [str(len(RAW_FILES)), str(len(RAW_FILES) - 3), "3"]
    assert "no_face: 1" in table["crop"][4] and "exact_duplicate: 1" in table["dedup"][4]


def test_bottom_and_top_grids_with_thumbnails_scores_sources_boxes(tree):
    cards = Cards(tree["page"]).cards
    scores = tree["scores"]
    bottom, top = cards[:CFG["bottom_k"]], cards[CFG["bottom_k"]:]
    assert [c["id"] for c in bottom] == [s.id for s in scores[:CFG["bottom_k"]]]
    assert [c["id"] for c in top] == [s.id for s in scores[::-1][:CFG["top_k"]]]
    by_id = {s.id: s for s in scores}
    for c in cards:
        s = by_id[c["id"]]
        assert f"{s.score:.4f}" in c["text"] and s.source in c["text"]
        assert json.dumps(s.crop_box) in c["text"]
        assert c["checked"] is False
        thumb = tree["R"] / "report" / c["img"]
        with Image.open(thumb) as im:
            assert im.format == "JPEG" and max(im.size) == CFG["thumb"]
    # the newest sample grid (highest kimg) and the histogram sit beside the page
    report = tree["R"] / "report"
    newest = tree["R"] / "finetune" / "samples" / "fakes-000000064.png"
    assert np.array_equal(np.asarray(Image.open(report / "samples.png")), np.asarray(Image.open(newest)))
    assert (report / "histogram.png").read_bytes() == (tree["R"] / "rank" / "histogram.png").read_bytes()


def test_rejects_file_preticks_ids_and_sources_and_keeps_unknown_lines(tmp_path):
    tree = build_results(tmp_path)
    scores = tree["scores"]
    worst = scores[0].id
    rejects = tmp_path / "rejects.txt"
    rejects.write_text(f"# my rejects\n{worst}\n{HOSTILE}   # both faces of this file\n"
                       "no-such-id\n</script><img src=x onerror=alert(2)>\n", encoding="utf-8")
    build_report(**report_args(tree, rejects, {"bottom_k": len(scores), "top_k": 0, "thumb": 16}))
    page = (tree["R"] / "report" / "index.html").read_text(encoding="utf-8")
    hostile_ids = {r.id for r in tree["dataset"] if r.source == HOSTILE}
    assert len(hostile_ids) == 2
    checked = {c["id"] for c in Cards(page).cards if c["checked"]}
    assert checked == {worst} | hostile_ids
    data = json.loads(re.search(r'<script type="application/json" id="review-data">(.*?)</script>',
                                page, re.S).group(1))
    assert set(data["preset"]) == {worst, *hostile_ids, "no-such-id", "</script><img src=x onerror=alert(2)>"}
    assert "onerror=alert(2)" not in page.replace("\\u003c", "").split("review-data")[0]
    assert page.count("</script>") == 2  # the JSON cannot close its element early


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


def test_cli_rerun_reflects_rejects_and_replaces_stale_thumbnails(tmp_path):
    tree = build_results(tmp_path)
    scores = tree["scores"]
    args = report_args(tree, None)
    cmd = [sys.executable, "-m", "pipeline.report", "--name", "t", "--dataset", args["dataset"],
           "--dedup", args["dedup"], "--ranked", args["ranked"], "--scores", args["scores_path"],
           "--histogram", args["histogram"], "--samples", args["samples_dir"],
           "--rejects", str(tmp_path / "absent.txt"), "--output", args["output"],
           "--provenance", args["provenance_path"], "--config", json.dumps(CFG), *args["stage_manifests"]]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    thumbs = tree["R"] / "report" / "thumbs"
    assert len(list(thumbs.iterdir())) == CFG["bottom_k"] + CFG["top_k"]
    # the user rejects the worst image; export re-runs, then the page is rebuilt smaller
    write_manifest(tree["R"] / "ranked" / "manifest.tsv",
                   ranked_rows(tree["dataset"], {s.id: s.score for s in scores}, {scores[0].id}, 0.0))
    cmd[cmd.index("--config") + 1] = json.dumps({**CFG, "bottom_k": 1, "top_k": 0})
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in thumbs.iterdir()] == [thumb_name(scores[0].id)]
    card = Cards((tree["R"] / "report" / "index.html").read_text(encoding="utf-8")).cards
    assert len(card) == 1 and "rejected" in card[0]["text"]
    assert not list(tree["R"].glob(".report*"))  # no temp folders left behind


def test_thumb_names_stay_inside_the_folder():
    assert thumb_name("0123abcd-f1") == "0123abcd-f1.jpg"
    for hostile in ("../../etc/passwd", ".hidden", "a/b", "<x>", ""):
        name = thumb_name(hostile)
        assert re.fullmatch(r"[0-9a-f]{40}\.jpg", name), name
