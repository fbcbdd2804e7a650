"""Fast, clear stops and a console that tells the story (real snakemake subprocesses)."""
from __future__ import annotations

import time

from conftest import copy_testdata, run_snakemake

from pipeline.console import auto_shards


def last_line(proc) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def test_auto_shards_grow_with_the_raw_folder():
    assert [auto_shards(n) for n in (0, 14, 500, 999, 1000, 3999, 4000, 16_000, 256_000,
                                      1_024_000, 10**7)] == [1, 1, 1, 1, 2, 2, 4, 8, 32, 64, 64]


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
    assert "--- rule crop failed" in proc.stderr, proc.stderr[-3000:]
    tail = proc.stderr[proc.stderr.rindex("--- rule crop failed"):]
    assert "last lines of results/tiny/logs/crop/0.log:" in tail
    assert "RuntimeError" in tail  # dlib's own error, from the log
    assert "--unlock" in tail.strip().splitlines()[-1]


def test_stop_messages_name_the_setting_from_the_manifests():
    """The stop line reads the settings the stages recorded (crop's min_face, clean's
    min_side) and, when crop lists them, the sizes of the faces it found too small."""
    from pipeline.manifest import Row
    from pipeline.survivors import why_nothing_left
    src = [Row(id=f"s{i}", source=f"{i}.jpg") for i in range(3)]
    small = [[10, 10, 70, 70], [5, 5, 140, 120]]
    crop = [r.drop("no_face", details={"method": "animeface", "min_face": 250,
                                       **({"small_faces": small} if r.id == "s0" else {})})
            for r in src]
    assert why_nothing_left({"ingest": src, "crop": crop, "clean": [], "dedup": []}) == (
        "crop kept 0 faces >= 250 px; 2 faces were found at 70-140 px: lower crop.min_face "
        "(e.g. to 70)")
    no_hint = [r.drop("no_face", details={"method": "animeface", "min_face": 250}) for r in src]
    assert "lower crop.min_face or try another crop.method" in why_nothing_left(
        {"ingest": src, "crop": no_hint, "clean": [], "dedup": []})
    faces = [Row(id=f"s{i}-f0", source=f"{i}.jpg") for i in range(3)]
    clean = [f.drop("too_small", details={"side": 40, "min_side": 64}) for f in faces]
    assert why_nothing_left({"ingest": src, "crop": faces, "clean": clean, "dedup": []}) == (
        "clean kept 0 of 3 faces (too_small 3): lower clean.min_side (now 64)")
    assert why_nothing_left({"ingest": src, "crop": faces, "clean": faces, "dedup": faces}) is None


def test_gather_summaries_count_without_building_rows(tmp_path):
    """The export and dedup rules' console lines over a million rows count the manifest
    lines (issue 17 item 4): the same text as counting rows, quoted names included."""
    from pipeline.console import manifests_summary, stage_summary
    from pipeline.manifest import Row, read_manifest, write_manifest
    rows = [Row(id=f"i{k}", source=f"s{k}.png", action="keep" if k % 3 == 0 else "drop",
                reason={0: "", 1: "no_face", 2: ""}[k % 3], details={"k": k}) for k in range(11)]
    rows.append(Row(id="q", source='we"ird\nname.png', action="drop", reason="too_small"))
    write_manifest(tmp_path / "a.tsv", rows[:5])
    write_manifest(tmp_path / "b.tsv", rows[5:])
    both = [tmp_path / "a.tsv", tmp_path / "b.tsv"]
    text = manifests_summary("crop", both)
    assert text == stage_summary("crop", [r for p in both for r in read_manifest(p)])
    assert text == "crop: 4 kept, 8 dropped (no_face 4, unspecified 3, too_small 1)"


def test_a_rerun_whose_cascade_cannot_be_found_stops_with_the_model_message(workdir, monkeypatch):
    """The issue's case: a finished `dataset` run (dedup checkpoint complete) with the cascade
    from $FACEPREP_ANIMEFACE_CASCADE, then a crop.margin edit in a shell without it: crop
    must rerun, so the run stops with the model message (it said "Nothing to be done")."""
    from pipeline import crop
    copy_testdata(workdir / "raw", {"anime_miku_noisy.jpg", "anime_miku_CC_BY-NC.jpg"})
    anime = {"crop": {"method": "animeface", "min_face": 48}}
    run_snakemake(workdir, "dataset", overrides=anime)
    monkeypatch.delenv("FACEPREP_ANIMEFACE_CASCADE")
    proc = run_snakemake(workdir, "dataset", overrides={"crop": {**anime["crop"], "margin": 0.4}}, check=False)
    assert proc.returncode != 0, proc.stderr[-2000:]
    assert "Nothing to be done" not in proc.stdout + proc.stderr
    assert "make models" in last_line(proc) and crop.CASCADE_SHA256 in last_line(proc)


def test_the_console_ends_with_the_paths_each_target_made(tmp_path):
    """outcome(): a line per target with its paths; with the run's start, only what this run
    wrote (export_model, generate), else everything there (a run with nothing to do)."""
    import os
    from pipeline.console import outcome
    from pipeline.manifest import Row, write_manifest
    R = tmp_path / "results" / "t"
    write_manifest(R / "export" / "manifest.tsv", [Row(id="a", source="a.png"), Row(id="b", source="b.png").drop("x")])
    (R / "report").mkdir(parents=True)
    (R / "report" / "index.html").write_text("page")
    old = time.time() - 100
    for p in (R / "export" / "manifest.tsv", R / "report" / "index.html"):
        os.utime(p, (old, old))
    started = time.time() - 1
    (R / "model").mkdir()
    for name in ("t.pkl", "t.npz"):
        (R / "model" / name).write_bytes(b"x")
    assert outcome(R, since=started) == [f"export_model: {R / 'model' / 't.pkl'}, {R / 'model' / 't.npz'}"]
    (R / "generate" / "seeds").mkdir(parents=True)
    for name in ("truncation.png", "style_mixing.png", "interpolation.mp4", "seeds/seed0001.png", "generate.json"):
        (R / "generate" / name).write_bytes(b"x")
    for p in (R / "model" / "t.pkl", R / "model" / "t.npz"):
        os.utime(p, (old, old))
    (line,) = outcome(R, since=started)
    assert line.startswith(f"generate: {R / 'generate'}/ (") and "truncation.png" in line and "seeds/ (1 PNGs)" in line
    everything = outcome(R, since=time.time() + 10)  # nothing new: where everything is
    assert [ln.split(":")[0] for ln in everything] == ["dataset", "report", "export_model", "generate"]
    assert everything[0] == f"dataset: 1 images (x 1 dropped) -> {R / 'export'}/"


def test_stale_outputs_compare_the_curated_set_with_the_dataset_and_rejects_now(tmp_path):
    """stale_outputs(): nothing to say while the curated set is what the dataset and the
    rejects file make; one line naming the outputs and their targets when the dataset's
    pixels or the rejects changed (a quoted, tab-holding name read as a row, the rest as
    plain lines)."""
    from pipeline.console import image_keys, stale_outputs
    from pipeline.manifest import Row, write_manifest
    from pipeline.rounds import curated_rows
    R = tmp_path / "results" / "t"
    names = ["a.png", 'odd "name"\twith tab.png', "c.png"]
    dataset = [Row(id=f"i{n}", source=s, path=f"results/t/normalize/0/i{n}.png", width=8, height=8,
                   details={"pixel_sha256": f"{n:064x}", "index": n}) for n, s in enumerate(names)]
    write_manifest(R / "export" / "manifest.tsv", dataset)
    rejects = tmp_path / "rejects.txt"
    rejects.write_text("c.png\n")  # a source path
    write_manifest(R / "curated" / "manifest.tsv", curated_rows(dataset, {"c.png"}))
    training = R / "curated" / "manifest.tsv"
    assert stale_outputs(R, training, rejects) == ""  # nothing made from a network yet
    (R / "rank").mkdir()
    (R / "rank" / "scores.tsv").write_text("id\tscore\n")
    (R / "model").mkdir()
    (R / "model" / "t.pkl").write_bytes(b"x")
    assert stale_outputs(R, training, rejects) == ""
    assert image_keys(R / "export" / "manifest.tsv", {"c.png"}) == image_keys(training) == {
        ("i0", "results/t/normalize/0/i0.png", f"{0:064x}", False),
        ("i1", "results/t/normalize/0/i1.png", f"{1:064x}", False),
        ("i2", "results/t/normalize/0/i2.png", f"{2:064x}", True)}
    rejects.write_text("i0\n")
    assert stale_outputs(R, training, rejects) == (
        f"warning: the rejects file changed after the network was trained: {R}/rank/scores.tsv, {R}/model/ "
        "come from the older data; snakemake ranked_dataset export_model refreshes them")
    rejects.write_text("c.png\n")
    changed = [dataset[0], dataset[1].keep(details={"pixel_sha256": "f" * 64}), dataset[2]]
    write_manifest(R / "export" / "manifest.tsv", changed)
    assert stale_outputs(R, training, rejects).startswith(
        "warning: the dataset changed after the network was trained: ")


def test_the_scheduler_timers_that_hold_the_exit_are_cancelled():
    """Snakemake's job rate limiter arms a non-daemon threading.Timer after each scheduling
    round (Python waits for it before exiting: ~1 s after every run that ran a job); the
    Snakefile's onsuccess/onerror cancel them with end_scheduler_timers, which leaves other
    timers alone. Armed here by the scheduler's own method, so a Snakemake that schedules
    differently fails this test instead of silently bringing the wait back."""
    import threading
    from snakemake.scheduling.job_scheduler import JobScheduler
    from pipeline.console import end_scheduler_timers

    class Scheduler:
        _open_jobs = threading.Semaphore(0)

    JobScheduler._schedule_reevalutation(Scheduler(), 30)
    ours = threading.Timer(30, lambda: None)
    ours.start()
    theirs = [t for t in threading.enumerate() if isinstance(t, threading.Timer) and t is not ours]
    assert theirs and not any(t.daemon for t in theirs)
    assert end_scheduler_timers() == len(theirs)
    for t in theirs:
        t.join(2)
    assert not any(t.is_alive() for t in theirs) and ours.is_alive()
    ours.cancel()
