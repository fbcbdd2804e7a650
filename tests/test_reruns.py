"""Exact reruns: one full tiny run, then every single-key edit (and raw add/edit/delete, a
rejects edit) through a real `snakemake -n ranked_dataset`, checked against the expected
rules and against the README's "what reruns" table; then a real run after adding one raw
image runs only that shard's per-image jobs plus the gathers."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from conftest import REPO, TESTDATA, TINY_CONFIG, copy_testdata, deep_merge, run_snakemake

from pipeline.ingest import shard_of

FILES = {"anime_miku_noisy.jpg", "broken/dup_exact_of_anime_miku_noisy.jpg",
         "broken/neardup_of_anime_miku_noisy.jpg", "anime_miku_small.png", "photo_dogs.jpg",
         "photo_2008_001009.jpg", "broken/truncated.jpg"}

DOWN = {"export": 1, "report": 1, "curated": 1, "finetune": 1, "rank": 1, "ranked_export": 1,
        "report_ranking": 1, "rounds": 1}
NORMALIZE = {"normalize": 2, **DOWN}
UPSCALE = {"upscale": 2, **NORMALIZE}
DEDUP = {"dedup": 1, **UPSCALE}  # a dry run lists every shard after dedup (a checkpoint)
CLEAN = {"clean": 2, **DEDUP}
RAW = {"ingest": 1, "crop": 1, "clean": 1, **DEDUP}
REVIEW = {"ranked_export": 1, "report_ranking": 1, "rounds": 1}

# README label -> (config override, expected {rule: jobs}) on the tiny config (png, Lanczos,
# crop none, augment off, no metadata)
EDITS = {
    "normalize.quality": ({"normalize": {"quality": 80}}, {}),
    "upscale.model": ({"upscale": {"model": "photo"}}, {}),
    "upscale.noise": ({"upscale": {"noise": 3}}, {}),
    "upscale.gpu": ({"upscale": {"gpu": "cpu"}}, {}),
    "cache_dir": ({"cache_dir": "elsewhere"}, {}),
    "crop.min_face": ({"crop": {"min_face": 99}}, {}),
    "crop.margin": ({"crop": {"margin": 0.5}}, {}),
    "models.dlib_dir": ({"models": {"dlib_dir": "/nowhere"}}, {}),
    "augment.copies": ({"augment": {"copies": 3}}, {}),
    "ingest.tags_include": ({"ingest": {"tags_include": ["solo"]}}, {}),
    "report.thumb": ({"report": {"thumb": 48}}, {"report": 1, "report_ranking": 1}),
    "rank.drop_bottom_fraction": ({"rank": {"drop_bottom_fraction": 0.25}}, REVIEW),
    "rank.drop_below": ({"rank": {"drop_below": -1.0e6}}, REVIEW),
    "export.zip": ({"export": {"zip": False}}, REVIEW),
    "export.tfrecords": ({"export": {"tfrecords": False}}, REVIEW),
    "rank.shuffles": ({"rank": {"shuffles": 3}}, {"rank": 1, **REVIEW}),
    "finetune.kimg": ({"finetune": {"kimg": 0.128}}, {"finetune": 1, "rank": 1, **REVIEW}),
    "finetune.round_kimg": ({"finetune": {"round_kimg": 0.016}}, {"finetune": 1, "rank": 1, **REVIEW}),
    # round 1's run is found again (its output path is new); round 2 continues it
    "rank.rounds": ({"rank": {"rounds": 2}}, {"finetune_round": 1, "rank_round": 1, "round_set": 1,
                                              "finetune": 1, "rank": 1, **REVIEW}),
    "normalize.format": ({"normalize": {"format": "jpg"}}, NORMALIZE),
    "normalize.fit": ({"normalize": {"fit": "crop"}}, NORMALIZE),
    "normalize.enlarge": ({"normalize": {"enlarge": False}}, NORMALIZE),
    "normalize.background": ({"normalize": {"background": [255, 255, 255]}}, UPSCALE),
    "upscale.method": ({"upscale": {"method": "none"}}, UPSCALE),
    "clean.near_duplicates.radius": ({"clean": {"near_duplicates": {"radius": 6}}}, DEDUP),
    "clean.exact_duplicates": ({"clean": {"exact_duplicates": False}}, DEDUP),
    "clean.min_side": ({"clean": {"min_side": 100}}, CLEAN),
    "ingest.max_pixels": ({"ingest": {"max_pixels": 90_000_000}}, {"ingest": 2, "crop": 2, **CLEAN}),
}
OTHER = {"the rejects file": {"report": 1, "curated": 1, "finetune": 1, "rank": 1, **REVIEW}, "a raw file added": RAW, "a raw file edited": RAW,
         "a raw file deleted": RAW}
RULES = {r for expected in [*OTHER.values(), *(e for _, e in EDITS.values())] for r in expected}


def readme_table() -> dict[str, set[str]]:
    """The README's "what reruns" table: change label -> rule names."""
    text = (REPO / "README.md").read_text(encoding="utf-8").split("### What reruns", 1)[1]
    table = {}
    for line in text.split("\n\n", 3)[2].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 2 or cells[0] in ("change", "---"):
            continue
        label = m.group(1) if (m := re.match(r"`([^`]+)`", cells[0])) else cells[0].split(",")[0]
        table[label] = {w for w in re.findall(r"[a-z_]+", cells[1]) if w in RULES}
    return table


def plan(workdir: Path, tag: str, overrides: dict | None = None) -> dict[str, int]:
    """{rule: jobs} of a real `snakemake -n ranked_dataset` (own config file: runs in parallel)."""
    cfg = deep_merge(TINY_CONFIG, overrides or {})
    cfg["raw_dir"] = str(workdir / "raw")
    path = workdir / f"plan_{tag}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=True))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"),
                           "--directory", str(workdir), "--configfile", str(path), "--cores", "2",
                           "ranked_dataset", "-n", "--quiet", "rules"],
                          cwd=workdir, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    jobs = {}
    for line in out.split("Job stats:", 1)[-1].splitlines() if "Job stats:" in out else []:
        if m := re.match(r"^(\w+)\s+(\d+)$", line.strip()):
            if m.group(1) not in ("total", "ranked_dataset"):
                jobs[m.group(1)] = int(m.group(2))
    return jobs


def executed(proc: subprocess.CompletedProcess) -> dict[str, int]:
    """{rule: jobs} a real run executed, from its console."""
    jobs: dict[str, int] = {}
    for m in re.finditer(r"^local(?:rule|checkpoint) (\w+):", proc.stdout + proc.stderr, re.M):
        jobs[m.group(1)] = jobs.get(m.group(1), 0) + 1
    return jobs


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("reruns")
    copy_testdata(workdir / "raw", FILES)
    run_snakemake(workdir, "ranked_dataset")
    assert plan(workdir, "up_to_date") == {}
    return workdir


def test_readme_table_matches_the_tested_changes():
    table = readme_table()
    expected = {label: set(e) for label, (_, e) in EDITS.items()} | \
               {label: set(e) for label, e in OTHER.items()}
    assert table == expected
    assert len(EDITS) >= 15


def test_each_single_key_edit_reruns_exactly_its_rules(built):
    with ThreadPoolExecutor(2) as pool:
        plans = dict(zip(EDITS, pool.map(lambda kv: plan(built, kv[0], kv[1][0]), EDITS.items())))
    wrong = {k: (plans[k], e) for k, (_, e) in EDITS.items() if plans[k] != e}
    assert not wrong, wrong


def test_raw_and_rejects_edits_rerun_exactly_their_rules(built):
    raw = built / "raw"
    # rejects: created, then edited
    rejects = built / "characters" / "tiny.rejects.txt"
    rejects.parent.mkdir(exist_ok=True)
    rejects.write_text("# none yet\n")
    assert plan(built, "rejects") == OTHER["the rejects file"]
    rejects.unlink()
    assert plan(built, "no_rejects") == {}

    # a raw file added, edited (content and mtime), deleted: its shard plus the gathers
    shutil.copyfile(TESTDATA / "anime_miku_CC_BY-NC.jpg", raw / "added.jpg")
    assert plan(built, "added") == RAW
    (raw / "added.jpg").unlink()
    edited = raw / "photo_dogs.jpg"
    original, st = edited.read_bytes(), edited.stat()
    edited.write_bytes(original + b"\0")
    assert plan(built, "edited") == RAW
    edited.write_bytes(original)
    os.utime(edited, ns=(st.st_atime_ns, st.st_mtime_ns))
    moved = built / "photo_dogs.jpg.away"
    edited.rename(moved)
    assert plan(built, "deleted") == RAW
    moved.rename(edited)
    assert plan(built, "restored") == {}


def test_adding_a_raw_image_runs_only_its_shard(built):
    """The real run (not -n): after the dedup checkpoint only the new file's shard is
    upscaled and normalized again; the other shard's duplicates file is unchanged."""
    raw = built / "raw"
    shutil.copyfile(TESTDATA / "anime_miku_CC_BY-NC.jpg", raw / "added.jpg")
    proc = run_snakemake(built, "dataset")
    assert executed(proc) == {"ingest": 1, "crop": 1, "clean": 1, "dedup": 1, "upscale": 1,
                              "normalize": 1, "export": 1, "zip": 1, "tfrecords": 1, "report": 1,
                              "dataset": 1}
    # the console told the story: per-stage lines from the gathers, the dataset at the end
    out = proc.stderr
    assert "faceprep: ingest: 7 kept, 1 dropped (truncated 1)" in out
    dedup = re.search(r"^faceprep: dedup: 5 kept, 2 dropped (\(.*\))$", out, re.M)
    assert dedup and "exact_duplicate 1" in dedup.group(1), out
    # upscale lists dedup's duplicates as dropped, with dedup's reasons
    assert f"faceprep: upscale: 5 kept, 2 dropped {dedup.group(1)}" in out
    assert "faceprep: dataset: 5 images -> results/tiny/export/" in out
    shard = str(shard_of("added.jpg", 2))
    assert re.search(rf"wildcards: shard={shard}\b", proc.stdout + proc.stderr)
    assert not re.search(rf"wildcards: shard={1 - int(shard)}\b", proc.stdout + proc.stderr)
