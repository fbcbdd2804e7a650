"""Fast, clear stops and a console that tells the story (real snakemake subprocesses)."""
from __future__ import annotations

import time

from conftest import copy_testdata, run_snakemake

from pipeline.console import auto_shards


def last_line(proc) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def test_auto_shards_grow_with_the_raw_folder():
    assert [auto_shards(n) for n in (0, 14, 99, 100, 399, 400, 1600, 25_600, 102_400, 10**6)] == \
        [1, 1, 1, 2, 2, 4, 8, 32, 64, 64]


def test_empty_raw_folder_stops_at_once_with_one_line(workdir):
    start = time.monotonic()
    proc = run_snakemake(workdir, "ranked_dataset", overrides={"shards": "auto"}, check=False)
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    assert last_line(proc) == (f"faceprep: raw_dir '{workdir / 'raw'}' holds no files: put the "
                               "character's images there (sub-folders are searched too)")
    assert len(proc.stderr.strip().splitlines()) <= 3, proc.stderr  # + snakemake's profile notes
    assert not (workdir / "results").exists()
    assert elapsed < 60, elapsed  # parse time only; no job starts

    (workdir / "raw" / "notes.txt").write_text("no images here")
    proc = run_snakemake(workdir, "ranked_dataset", check=False)
    assert "holds 1 file but none ends in ingest.extensions" in last_line(proc)


def test_config_errors_end_with_the_key_and_did_you_mean(workdir):
    copy_testdata(workdir / "raw", {"anime_miku_noisy.jpg"})
    proc = run_snakemake(workdir, "dataset", "-n", overrides={"shard": 2}, check=False)
    assert proc.returncode != 0
    assert last_line(proc) == "faceprep: config error: unknown key 'shard'; did you mean 'shards'?"
    assert len(proc.stderr.strip().splitlines()) <= 3, proc.stderr
    proc = run_snakemake(workdir, "dataset", "-n", overrides={"normalize": {"qualty": 90}}, check=False)
    assert last_line(proc) == ("faceprep: config error: unknown key 'normalize.qualty'; "
                               "did you mean 'normalize.quality'?")
    proc = run_snakemake(workdir, "dataset", "-n", overrides={"normalize": {"fit": "stretch"}},
                         check=False)
    assert last_line(proc).startswith("faceprep: config error: normalize.fit = 'stretch': ")


def test_no_face_kept_stops_after_the_gather_naming_crop_min_face(workdir):
    """Anime faces below crop.min_face: the run stops at the first gather (dedup), before
    any upscale/normalize job, with one line that names the setting; the console also
    showed what each stage kept."""
    copy_testdata(workdir / "raw", {"anime_miku_noisy.jpg", "anime_miku_CC_BY-NC.jpg",
                                    "anime_miku_small.png"})
    start = time.monotonic()
    proc = run_snakemake(workdir, "ranked_dataset", check=False,
                         overrides={"crop": {"method": "animeface", "min_face": 700}})
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    line = last_line(proc)
    assert line.startswith("faceprep: crop ") and "lower crop.min_face" in line, proc.stderr[-3000:]
    assert ">= 700 px" in line
    assert "faceprep: ingest: 3 kept" in proc.stderr
    assert "faceprep: crop: 0 kept, 3 dropped (no_face 3)" in proc.stderr
    assert not (workdir / "results" / "tiny" / "upscale").exists()
    assert elapsed < 120, elapsed


def test_a_failing_job_shows_its_log_tail_and_path(workdir):
    """A corrupt dlib model file: the crop job fails; the console ends with that job's log
    path, the error from its last lines and what to do about a lock."""
    copy_testdata(workdir / "raw", {"photo_2008_001009.jpg"})
    models = workdir / "dlib_models"
    models.mkdir()
    (models / "shape_predictor_68_face_landmarks.dat").write_bytes(b"not a model")
    (models / "mmod_human_face_detector.dat").write_bytes(b"not a model")
    proc = run_snakemake(workdir, "dataset", check=False,
                         overrides={"crop": {"method": "dlib"}, "models": {"dlib_dir": str(models)},
                                    "shards": 1})
    assert proc.returncode != 0
    tail = proc.stderr[proc.stderr.rindex("--- rule crop failed"):]
    assert "last lines of results/tiny/logs/crop/0.log:" in tail
    assert "RuntimeError" in tail  # dlib's own error, from the log
    assert "--unlock" in tail.strip().splitlines()[-1]
