"""Training knows its data: run folders per (dataset fingerprint, architecture, pretrained
file), warm starts, pretrained checksums on every run, damaged snapshots skipped.

Real `gan.train` calls (the CLI the finetune rule runs) on real testdata images at 16 px,
exported with pipeline.export's TFRecord writer and listed in an export-format manifest.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import square_testdata_pngs
from PIL import Image

from gan import checkpoint, runs
from gan.networks import Discriminator, Generator
from gan.train import main as train_main
from pipeline.export import write_tfrecords
from pipeline.manifest import Row, write_manifest

RES = 16
TINY = {"channel_base": 256, "channel_max": 32, "mapping_layers": 2, "latent_dim": 32, "batch": 4,
        "mixed_precision": False, "r1_interval": 4, "tick_kimg": 0.016, "snapshot_kimg": 0.032,
        "kimg": 0.032, "round_kimg": 0.016}
TICK_KIMG = re.compile(r"^tick \d+\s+kimg\s+([\d.]+) /", re.M)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Row]:
    """14 real photos and anime pictures, centre-cropped to 16 px PNGs (export manifest rows)."""
    rows = square_testdata_pngs(tmp_path_factory.mktemp("run_images"), RES)
    return sorted(rows, key=lambda r: r.id)


def export_dataset(folder: Path, rows: list[Row]) -> Path:
    """TFRecords + manifest.tsv as the export stage lays them out."""
    write_tfrecords(rows, folder / "tfrecords", "tiny")
    write_manifest(folder / "manifest.tsv", [r.keep(details={"index": i}) for i, r in enumerate(rows)])
    return folder


def train(export: Path, finetune: Path, capsys, **cfg) -> tuple[str, dict]:
    """One `python -m gan.train` (in process); its log and the published network's extra."""
    output = finetune / "network-final.npz"
    output.unlink(missing_ok=True)     # snakemake removes the output before the job runs
    train_main(["--data", str(export / "tfrecords"), "--manifest", str(export / "manifest.tsv"),
                "--run-dir", str(finetune), "--config", json.dumps({**TINY, **cfg}),
                "--output", str(output)])
    return capsys.readouterr().out, checkpoint.read_meta(output)["extra"]


def run_dirs(finetune: Path) -> list[str]:
    return sorted(p.name for p in (finetune / "runs").iterdir() if p.is_dir())


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture
def op_determinism_restored():
    from tensorflow.python.framework import config as tf_config
    was_on = tf_config.is_op_determinism_enabled()
    yield
    if not was_on:
        tf_config.disable_op_determinism()


def test_fingerprint_follows_ids_and_pixels_not_mtimes(images, tmp_path):
    a = export_dataset(tmp_path / "a", images)
    fp = runs.dataset_fingerprint(a / "manifest.tsv")
    assert fp["images"] == len(images)
    for r in images:                   # touching every file changes nothing
        os.utime(r.path, ns=(1_600_000_000 * 10**9,) * 2)
    assert runs.dataset_fingerprint(a / "manifest.tsv") == fp
    fewer = export_dataset(tmp_path / "b", images[1:])
    assert runs.dataset_fingerprint(fewer / "manifest.tsv")["sha256"] != fp["sha256"]
    renamed = [images[0].keep(id="another-id")] + images[1:]
    write_manifest(tmp_path / "renamed.tsv", renamed)
    assert runs.dataset_fingerprint(tmp_path / "renamed.tsv")["sha256"] != fp["sha256"]
    edited = tmp_path / "edited.png"
    with Image.open(images[0].path) as im:
        px = np.asarray(im).copy()
    px[0, 0] ^= 1                      # one pixel, one bit
    Image.fromarray(px).save(edited)
    write_manifest(tmp_path / "edited.tsv", [images[0].keep(path=str(edited))] + images[1:])
    assert runs.dataset_fingerprint(tmp_path / "edited.tsv")["sha256"] != fp["sha256"]


def test_new_data_gets_a_new_run_warm_started_from_the_previous_final(
        images, tmp_path, capsys, op_determinism_restored):
    data_a = export_dataset(tmp_path / "export_a", images)
    data_b = export_dataset(tmp_path / "export_b", images[3:])    # e.g. rejects / min_side edit
    finetune = tmp_path / "finetune"

    log_a, extra_a = train(data_a, finetune, capsys)
    run_a = extra_a["run"]["id"]
    assert "start: scratch at kimg 0" in log_a and extra_a["cur_nimg"] == 32
    assert extra_a["run"]["dataset"] == runs.dataset_fingerprint(data_a / "manifest.tsv")
    assert extra_a["run"]["architecture"]["resolution"] == RES
    assert extra_a["run"]["pretrained"] is None and extra_a["run"]["warm_start"]["from"] == "scratch"
    snap_a = finetune / "runs" / run_a / "snapshots"
    before = digests(snap_a)
    # every snapshot records the run identity too
    assert checkpoint.read_meta(snap_a / "network-snapshot-000000032.npz")["extra"]["run"]["id"] == run_a

    # new data: a new run continues run A's final network for round_kimg (counter from 0):
    # a rejects edit costs one continuation, not a fresh kimg
    log_b, extra_b = train(data_b, finetune, capsys)
    run_b = extra_b["run"]["id"]
    assert run_b != run_a and run_dirs(finetune) == sorted([run_a, run_b])
    assert f"warm start {finetune / 'runs' / run_a / 'network-final.npz'} at kimg 0" in log_b
    assert [float(k) for k in TICK_KIMG.findall(log_b)] == [0.016]
    assert extra_b["cur_nimg"] == 16
    # the run keeps what it trained on: ids + pixel hashes, whose sha256 is its fingerprint
    lines = (finetune / "runs" / run_b / "dataset.tsv").read_text()
    assert runs.fingerprint_of_lines(lines) == extra_b["run"]["dataset"]
    assert [line.split("\t")[0] for line in lines.splitlines()] == [r.id for r in images[3:]]
    assert extra_b["run"]["dataset"]["images"] == len(images) - 3
    warm = extra_b["run"]["warm_start"]
    assert (warm["from"], warm["run"]) == ("previous", run_a)
    assert warm["network_sha256"] == runs.file_sha256(finetune / "runs" / run_a / "network-final.npz")
    assert digests(snap_a) == before                       # the old run is untouched
    assert (finetune / "runs" / "latest").read_text().strip() == run_b
    # the published copy is the run's final; samples are the run's grids
    assert (finetune / "network-final.npz").read_bytes() == (
        finetune / "runs" / run_b / "network-final.npz").read_bytes()
    assert digests(finetune / "samples") == digests(finetune / "runs" / run_b / "samples")

    # back to data A: its own run is found again and resumed at its kimg (no new run,
    # no training on top of B's network)
    log_a2, extra_a2 = train(data_a, finetune, capsys)
    assert extra_a2["run"]["id"] == run_a and len(run_dirs(finetune)) == 2
    assert "resume: " in log_a2 and "network-snapshot-000000032.npz at kimg 0.032" in log_a2
    assert TICK_KIMG.findall(log_a2) == []

    # warm_start: pretrained (here: no pretrained file -> scratch) for a third dataset
    data_c = export_dataset(tmp_path / "export_c", images[:-2])
    log_c, extra_c = train(data_c, finetune, capsys, warm_start="pretrained")
    assert "start: scratch at kimg 0" in log_c
    assert extra_c["run"]["warm_start"] == {"mode": "pretrained", "from": "scratch"}
    assert len(run_dirs(finetune)) == 3


def test_pretrained_replaced_at_the_same_path(images, tmp_path, capsys, op_determinism_restored):
    data = export_dataset(tmp_path / "export", images)
    finetune = tmp_path / "finetune"
    pretrained = tmp_path / "pretrained.npz"

    def save_pretrained(seed: int) -> str:
        G = Generator(RES, latent_dim=32, mapping_layers=2, channel_base=256, channel_max=32, seed=seed)
        D = Discriminator(RES, channel_base=256, channel_max=32, seed=seed + 1)
        checkpoint.save_network(pretrained, G, D, None)
        return runs.file_sha256(pretrained)

    first_sha = save_pretrained(1)
    log1, extra1 = train(data, finetune, capsys, pretrained=str(pretrained), pretrained_sha256=first_sha)
    assert f"start: pretrained {pretrained}" in log1
    assert extra1["run"]["pretrained"] == {"path": str(pretrained), "sha256": first_sha}
    # the same bytes under another path: the same run, resumed (nothing to train)
    moved = tmp_path / "moved.npz"
    shutil.copyfile(pretrained, moved)
    log_moved, extra_moved = train(data, finetune, capsys, pretrained=str(moved))
    assert extra_moved["run"]["id"] == extra1["run"]["id"] and "resume: " in log_moved
    assert TICK_KIMG.findall(log_moved) == [] and len(run_dirs(finetune)) == 1

    second_sha = save_pretrained(7)         # a different file at the same path
    assert second_sha != first_sha
    # the config still names the first checksum: refused, although run 1 could be resumed
    with pytest.raises(SystemExit, match="re-download"):
        train(data, finetune, capsys, pretrained=str(pretrained), pretrained_sha256=first_sha, kimg=0.064)
    assert len(run_dirs(finetune)) == 1
    # without a checksum in the config: a new run from the new file (not run 1's network)
    log2, extra2 = train(data, finetune, capsys, pretrained=str(pretrained))
    assert extra2["run"]["id"] != extra1["run"]["id"] and len(run_dirs(finetune)) == 2
    assert f"start: pretrained {pretrained} at kimg 0" in log2
    assert extra2["run"]["pretrained"]["sha256"] == second_sha
    assert extra2["run"]["warm_start"]["from"] == "pretrained"


def test_unreadable_snapshots_are_skipped_with_a_warning(images, tmp_path, capsys, op_determinism_restored):
    data = export_dataset(tmp_path / "export", images)
    finetune = tmp_path / "finetune"
    _, extra = train(data, finetune, capsys)
    snaps = finetune / "runs" / extra["run"]["id"] / "snapshots"
    good = snaps / "network-snapshot-000000032.npz"
    # what a kill or a full disk can leave: a zero-byte and a truncated newer snapshot,
    # and a half-written temp file
    (snaps / "network-snapshot-000000096.npz").write_bytes(b"")
    truncated = snaps / "network-snapshot-000000064.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (snaps / ".network-snapshot-000000128.npz.abc123.tmp").write_bytes(b"PK\x03\x04partial")

    log, extra2 = train(data, finetune, capsys, kimg=0.064)
    assert re.search(r"warning: resume: skipping unreadable snapshot \S+network-snapshot-000000096\.npz", log)
    assert re.search(r"warning: resume: skipping unreadable snapshot \S+network-snapshot-000000064\.npz", log)
    assert f"resume: {good} at kimg 0.032" in log
    assert [float(k) for k in TICK_KIMG.findall(log)] == [0.048, 0.064]
    assert extra2["cur_nimg"] == 64 and extra2["run"]["id"] == extra["run"]["id"]
    # training replaced the damaged snapshot at 64 with a good one; the temp file is gone
    assert checkpoint.verify_readable(truncated)["extra"]["cur_nimg"] == 64
    assert not list(snaps.glob(".*.tmp"))


# ---------------------------------------------------------------- the loop, through snakemake
# Real `snakemake ranked_dataset` runs on the tiny config: the rejects file and the cleaning
# rounds reach the network (what the final network's run records it trained on), and a
# kill during round 2 resumes round 2.

LOOP = {"rank": {"rounds": 2, "drop_bottom_fraction": 0.34},
        "finetune": {"kimg": 0.064, "round_kimg": 0.032, "snapshot_kimg": 0.032, "tick_kimg": 0.032}}


def trained_ids(R: Path, network: Path) -> tuple[dict, set[str]]:
    """(the network's run record, the ids its run's dataset.tsv lists), after checking that
    dataset.tsv is what the run's fingerprint is the sha256 of."""
    run = checkpoint.read_meta(network)["extra"]["run"]
    lines = (R / "finetune" / "runs" / run["id"] / "dataset.tsv").read_text()
    assert runs.fingerprint_of_lines(lines) == run["dataset"]
    return run, {line.split("\t")[0] for line in lines.splitlines()}


def rounds_table(R: Path) -> dict[str, str]:
    import csv
    with open(R / "rank" / "rounds.tsv", newline="") as f:
        return {r["id"]: r["dropped"] for r in csv.DictReader(f, delimiter="\t")}


def test_rejects_and_cleaning_rounds_reach_the_final_network(tmp_path, monkeypatch):
    from conftest import run_snakemake
    from test_determinism import make_raw

    from pipeline.manifest import kept, read_manifest
    from pipeline.rank import read_scores, scores_network
    monkeypatch.chdir(tmp_path)
    make_raw(tmp_path)
    R = tmp_path / "results" / "tiny"
    final, round1 = R / "finetune" / "network-final.npz", R / "finetune" / "round-1" / "network-final.npz"
    run_snakemake(tmp_path, "ranked_dataset", overrides=LOOP)
    dataset = {r.id: r for r in kept(read_manifest(R / "export" / "manifest.tsv"))}
    assert len(dataset) >= 5
    table = rounds_table(R)
    dropped1 = {i for i, d in table.items() if d == "round 1"}
    assert len(dropped1) == int(0.34 * len(dataset))
    run1, ids1 = trained_ids(R, round1)
    run2, ids2 = trained_ids(R, final)
    assert ids1 == set(dataset) and run1["round"] == 1
    # round 2 continued round 1's network on what round 1 left
    assert ids2 == set(dataset) - dropped1 and run2["round"] == 2 and run2["parent"] == run1["id"]
    assert run2["warm_start"]["from"] == "parent" and checkpoint.read_meta(final)["extra"]["cur_nimg"] == 32
    assert {r.id for r in kept(read_manifest(R / "ranked" / "manifest.tsv"))} == \
        set(dataset) - {i for i, d in table.items() if d}
    # every output made from the final network names its run and round
    assert scores_network(R / "rank" / "scores.tsv").startswith(f"run {run2['id']} round 2 ")
    assert scores_network(R / "rank" / "round-1" / "scores.tsv").startswith(f"run {run1['id']} round 1 ")
    assert {s.id for s in read_scores(R / "rank" / "round-1" / "scores.tsv")} == set(dataset)
    page = (R / "report" / "rounds.js").read_text()
    assert run2["id"] in page and "FACEPREP_ROUNDS" in page

    # the user rejects one image by id and another by its source path
    by_id, by_source = sorted(ids2)[:2]
    (tmp_path / "characters").mkdir()
    rejects = tmp_path / "characters" / "tiny.rejects.txt"
    rejects.write_text(f"{by_id}\n{dataset[by_source].source}  # a source path\n")
    first_round1 = round1.read_bytes()
    proc = run_snakemake(tmp_path, "ranked_dataset", overrides=LOOP)
    console = proc.stdout + proc.stderr
    run1b, ids1b = trained_ids(R, round1)
    run2b, ids2b = trained_ids(R, final)
    assert not {by_id, by_source} & (ids1b | ids2b)
    assert ids1b == set(dataset) - {by_id, by_source}
    assert ids2b == ids1b - {i for i, d in rounds_table(R).items() if d == "round 1"}
    assert rounds_table(R)[by_id] == rounds_table(R)[by_source] == "rejected"
    # one continuation of round_kimg per round, round 1 from the last final network
    assert run1b["warm_start"]["from"] == "previous" and run1b["warm_start"]["run"] == run2["id"]
    assert checkpoint.read_meta(round1)["extra"]["cur_nimg"] == 32
    assert checkpoint.read_meta(final)["extra"]["cur_nimg"] == 32
    assert re.search(rf"^finetune: run: new run \S+{run1b['id']} \(round 1\) .* trains 0.032 kimg", console, re.M)

    # back to the earlier rejects file (none): both rounds' runs are found again, untrained
    rejects.write_text("")
    proc = run_snakemake(tmp_path, "ranked_dataset", overrides=LOOP)
    console = proc.stdout + proc.stderr
    assert "new run" not in console and not re.search(r"^finetune: tick", console, re.M)
    assert trained_ids(R, final)[0]["id"] == run2["id"] and trained_ids(R, round1)[0]["id"] == run1["id"]
    assert round1.read_bytes() == first_round1


def test_a_kill_during_round_2_resumes_round_2(tmp_path, monkeypatch):
    from conftest import run_snakemake, start_snakemake
    from test_crash_safety import kill_group
    from test_determinism import make_raw
    from test_finetune_recovery import job_stats, recover, wait_for
    monkeypatch.chdir(tmp_path)
    make_raw(tmp_path)
    R = tmp_path / "results" / "tiny"
    loop = {**LOOP, "finetune": {**LOOP["finetune"], "round_kimg": 0.128}}

    def round2_snapshot() -> bool:
        for info in (R / "finetune" / "runs").glob("*/run.json"):
            if json.loads(info.read_text()).get("round") == 2:
                return (info.parent / "snapshots" / "network-snapshot-000000032.npz").exists()
        return False

    proc = start_snakemake(tmp_path, "ranked_dataset", overrides=loop)
    wait_for(proc, "round 2's first snapshot", round2_snapshot, timeout=1200)
    kill_group(proc)
    round1 = R / "finetune" / "round-1" / "network-final.npz"
    before = (round1.stat().st_mtime_ns, round1.read_bytes())
    assert not (R / "finetune" / "network-final.npz").exists()
    rerun = recover(tmp_path, loop)
    jobs = job_stats(rerun)
    assert "finetune" in jobs and "finetune_round" not in jobs and "rank_round" not in jobs, jobs
    assert (round1.stat().st_mtime_ns, round1.read_bytes()) == before
    log = (R / "logs" / "finetune" / "all.log").read_text()
    assert re.search(r"^resume: \S+network-snapshot-0000000(32|64|96)\.npz at kimg", log, re.M)
    assert "start:" not in log and "new run" not in log
    extra = checkpoint.read_meta(R / "finetune" / "network-final.npz")["extra"]
    assert extra["run"]["round"] == 2 and extra["cur_nimg"] == 128
    assert extra["run"]["parent"] == checkpoint.read_meta(round1)["extra"]["run"]["id"]
    # the same story the second time: nothing left to do
    assert "Nothing to be done" in (p := run_snakemake(tmp_path, "ranked_dataset", overrides=loop)).stdout + p.stderr


# ---------------------------------------------------------------- rank.drop_below, and a stale ranking
# One module run: two rounds without a threshold, then rank.drop_below set between round 1's
# second and third worst scores (what a user reads off rank/rounds.tsv); then a clean edit and
# a `dataset`-only rerun, which leaves the network and what it made behind the data.

ROUNDS2 = {"rank": {"rounds": 2}, "finetune": LOOP["finetune"]}


def scores_of(path: Path) -> dict[str, float]:
    from pipeline.rank import read_scores
    return {s.id: s.score for s in read_scores(path)}


@pytest.fixture(scope="module")
def thresholded(tmp_path_factory):
    from conftest import run_snakemake
    from test_determinism import make_raw
    from test_reruns import executed
    workdir = tmp_path_factory.mktemp("threshold")
    make_raw(workdir)
    R = workdir / "results" / "tiny"
    run_snakemake(workdir, "ranked_dataset", overrides=ROUNDS2)
    first = scores_of(R / "rank" / "round-1" / "scores.tsv")
    low = sorted(first.values())
    threshold = round((low[1] + low[2]) / 2, 6)
    overrides = {**ROUNDS2, "rank": {**ROUNDS2["rank"], "drop_below": threshold}}
    proc = run_snakemake(workdir, "ranked_dataset", overrides=overrides)
    return workdir, R, first, threshold, overrides, proc, executed(proc)


def test_a_score_threshold_drops_what_each_round_scored_below_it(thresholded):
    from pipeline.manifest import kept, read_manifest
    workdir, R, first, threshold, _, proc, jobs = thresholded
    dataset = {r.id for r in kept(read_manifest(R / "export" / "manifest.tsv"))}
    below1 = {i for i, s in first.items() if s < threshold}
    assert len(below1) == 2 and set(first) == dataset
    # only what reads the threshold reran, and what comes after it: round 1 was not retrained
    assert jobs == {"round_set": 1, "finetune": 1, "rank": 1, "ranked_export": 1, "report_ranking": 1,
                    "rounds": 1, "ranked_dataset": 1}, jobs
    table = rounds_table(R)
    assert {i for i, d in table.items() if d.startswith("round 1")} == below1
    assert {table[i] for i in below1} == {"round 1 below_threshold"}
    # the final network's run trained on the dataset minus what round 1 scored below it
    run2, ids2 = trained_ids(R, R / "finetune" / "network-final.npz")
    assert run2["round"] == 2 and ids2 == dataset - below1
    # round 2 applies the same threshold to its own network's scores
    second = scores_of(R / "rank" / "scores.tsv")
    below2 = {i for i in ids2 if second[i] < threshold}
    assert {i for i, d in table.items() if d == "round 2 below_threshold"} == below2
    ranked = read_manifest(R / "ranked" / "manifest.tsv")
    assert {r.id for r in kept(ranked)} == dataset - below1 - below2 and {r.id for r in kept(ranked)}
    assert all(r.reason == "below_threshold" and r.details["threshold"] == threshold
               and r.details["score"] < threshold for r in ranked if not r.kept)
    page = (R / "report" / "rounds.js").read_text()
    assert '\\"drop_below\\":' in page and "below_threshold" in page
    # everything fits the data: no stale warning (nor any other)
    assert "faceprep: warning:" not in proc.stderr


def test_a_dataset_only_rerun_says_the_ranking_is_stale(thresholded):
    """The page of the thresholded run shows the threshold (rounds panel, near misses); after
    a clean edit and `snakemake dataset` (not ranked_dataset) the network, its scores and the
    ranked set are from the older dataset: the console's last lines and the page's header
    say so in one line each, naming the target that refreshes them."""
    from conftest import run_snakemake
    from test_browser import HAVE_CHROMIUM, open_page, start_chromium
    workdir, R, first, threshold, overrides, _, _ = thresholded
    page = (R / "report" / "index.html").as_uri()
    driver = None
    if HAVE_CHROMIUM:
        (workdir / "chromium").mkdir()
        driver, _ = start_chromium(workdir / "chromium")
    try:
        if driver:
            open_page(driver, page)
            text = lambda i: driver.execute_script(f"return document.getElementById('{i}').textContent")  # noqa: E731
            assert text("rounds-threshold").startswith(f"rank.drop_below = {threshold}: each round also dropped")
            assert all(i in text("rounds-table") for i, s in first.items() if s < threshold)
            second = scores_of(R / "rank" / "scores.tsv")
            below2 = {i for i, d in rounds_table(R).items() if d == "round 2 below_threshold"}
            assert text("rounds-table").count(", below rank.drop_below)") == 2 + len(below2)
            driver.find_element("css selector", "#tabs a[data-tab='near']").click()
            near = driver.find_element("css selector", "#near section[data-setting='rank.drop_below']")
            assert f"rank.drop_below = {threshold}" in near.text
            # the last round's cut: the kept images just above it, its drops just below
            assert near.find_elements("css selector", ".card.near-kept")
            assert len(near.find_elements("css selector", ".card.near-dropped")) == min(len(below2), 6)
            if below2:
                best = max(below2, key=second.get)
                assert f"lowering rank.drop_below to {second[best]:g} keeps {best}" in near.text
            else:
                assert "nothing in round 2 scored below it" in near.text

        proc = run_snakemake(workdir, "dataset", overrides={**overrides, "clean": {"min_side": 290}})
        lines = [ln for ln in proc.stderr.splitlines() if "warning: the dataset changed" in ln]
        r = R.relative_to(workdir)
        assert lines == [f"faceprep: warning: the dataset changed after the network was trained: {r}/rank/scores.tsv, "
                         f"{r}/ranked/, {r}/report/ranking.js come from the older data; snakemake ranked_dataset "
                         "refreshes them"], proc.stderr[-3000:]
        # with the end-of-run lines: right after the paths the run made
        end = proc.stderr.splitlines()
        assert end[end.index(lines[0]) - 1].startswith("faceprep: report: "), proc.stderr[-2000:]

        if not driver:
            pytest.skip("the page's half needs chromium (apt-get install chromium chromium-driver)")
        open_page(driver, page)
        problems = driver.execute_script("return document.getElementById('problems').textContent")
    finally:
        if driver:
            driver.quit()
    assert "warning: the dataset changed after the network was trained: the ranking below, rank/scores.tsv, " \
           "ranked/" in problems and "snakemake ranked_dataset refreshes them" in problems, problems


def test_a_threshold_that_would_drop_everything_stops_after_the_round_it_judges(thresholded):
    """rank.drop_below above every score: the run stops with one line naming the round and
    its score range, after round 1's training and ranking (kept: fixing the value retrains
    nothing before it); nothing of round 2 is made from an empty set."""
    from conftest import run_snakemake
    from test_console import last_line
    workdir, R, _, _, overrides, _, _ = thresholded
    dataset_edit = {"clean": {"min_side": 290}}  # the previous test's dataset, not rebuilt here
    round2 = R / "rounds" / "round-2" / "manifest.tsv"
    proc = run_snakemake(workdir, "ranked_dataset", check=False, overrides={
        **overrides, **dataset_edit, "rank": {**overrides["rank"], "drop_below": 1.0e9}})
    assert proc.returncode != 0
    first = scores_of(R / "rank" / "round-1" / "scores.tsv")
    assert last_line(proc).startswith(f"faceprep: rank.drop_below 1e+09 would drop all {len(first)} images "
                                      f"round 1 trained on (its network scored them {min(first.values()):.4g} to "
                                      f"{max(first.values()):.4g}, median "), last_line(proc)
    assert "round 1's network and scores are kept, nothing retrains" in last_line(proc)
    assert not round2.exists()  # the failed job's outputs are removed: no set of 0 images
    assert (R / "finetune" / "round-1" / "network-final.npz").exists()
    # with the threshold back, round 1 is not trained or ranked again
    from test_reruns import executed
    jobs = executed(run_snakemake(workdir, "ranked_dataset", overrides={**overrides, **dataset_edit}))
    assert "finetune_round" not in jobs and "rank_round" not in jobs and jobs["round_set"] == 1, jobs
