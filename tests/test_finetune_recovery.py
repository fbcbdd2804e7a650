"""Kills and damage recover: real `snakemake ranked_dataset` runs on the tiny config, killed
with SIGKILL (snakemake and every job it started) during training after a snapshot,
during rank and during the report, with a half-written snapshot temp file and a truncated
snapshot left behind. After `--unlock` and the README's rerun command every output is present and consistent with
the current config and data: the final network comes from the run of the current curated
set's fingerprint at the configured kimg (round_kimg for a run that continues the previous
final network), and rank, ranked export and report were redone from it.
"""
from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

from conftest import run_snakemake, start_snakemake
from test_crash_safety import kill_group, running_stage_jobs
from test_determinism import make_raw

from gan import checkpoint, runs
from pipeline.manifest import kept, read_manifest
from pipeline.rank import read_scores

FT = {"kimg": 0.064, "snapshot_kimg": 0.032, "tick_kimg": 0.032}
TARGET = "ranked_dataset"


def wait_for(proc: subprocess.Popen, what: str, condition, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended before {what}"
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.05)


def job_stats(proc: subprocess.CompletedProcess) -> dict[str, int]:
    out = proc.stdout + proc.stderr
    jobs = {}
    for line in out.split("Job stats:", 1)[1].splitlines()[3:]:
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not m:
            break
        jobs[m.group(1)] = int(m.group(2))
    return jobs


def recover(workdir: Path, overrides: dict) -> subprocess.CompletedProcess:
    """What the README tells a user after a kill: the rerun stops at the lock and says to
    unlock; unlock; rerun."""
    locked = run_snakemake(workdir, TARGET, overrides=overrides, check=False)
    assert locked.returncode != 0 and "--unlock" in locked.stdout + locked.stderr
    run_snakemake(workdir, TARGET, "--unlock", overrides=overrides)
    return run_snakemake(workdir, TARGET, "--rerun-incomplete", overrides=overrides)


def assert_consistent(workdir: Path, kimg: float) -> dict:
    """Every output present; the final network trained kimg on the current curated set (the
    export minus rejects); rank, ranked export and report made from it, in that order.
    Returns the network's run info."""
    R = workdir / "results" / "tiny"
    final = R / "finetune" / "network-final.npz"
    extra = checkpoint.verify_readable(final)["extra"]
    assert extra["cur_nimg"] == round(kimg * 1000)
    run = extra["run"]
    assert run["dataset"] == runs.dataset_fingerprint(R / "curated" / "manifest.tsv")
    assert final.read_bytes() == (R / "finetune" / "runs" / run["id"] / "network-final.npz").read_bytes()
    assert (R / "finetune" / "runs" / "latest").read_text().strip() == run["id"]
    dataset = {r.id for r in kept(read_manifest(R / "export" / "manifest.tsv"))}
    assert {s.id for s in read_scores(R / "rank" / "scores.tsv")} == dataset
    ranked = read_manifest(R / "ranked" / "manifest.tsv")
    assert {r.id for r in ranked} == dataset
    order = [final, R / "rank" / "scores.tsv", R / "ranked" / "manifest.tsv", R / "report" / "ranking.js"]
    mtimes = [p.stat().st_mtime_ns for p in order]
    assert mtimes == sorted(mtimes), "an output is older than what it was made from"
    assert (R / "provenance.tsv").is_file() and (R / "finetune" / "samples" / "reals.png").is_file()
    return run


def test_sigkill_in_training_rank_and_report_then_unlock_and_rerun(tmp_path, monkeypatch):
    workdir = tmp_path
    monkeypatch.chdir(workdir)     # manifests name files relative to the working folder
    raw = make_raw(workdir)
    R = workdir / "results" / "tiny"
    run_snakemake(workdir, TARGET, overrides={"finetune": FT})
    first = assert_consistent(workdir, FT["kimg"])
    snaps = R / "finetune" / "runs" / first["id"] / "snapshots"

    # 1. raise kimg, SIGKILL once training wrote its first new snapshot
    more = {"finetune": {**FT, "kimg": 0.128}}
    proc = start_snakemake(workdir, TARGET, overrides=more)
    wait_for(proc, "snapshot at 96", lambda: (snaps / "network-snapshot-000000096.npz").exists())
    kill_group(proc)
    assert not (R / "finetune" / "network-final.npz").exists()    # snakemake removed it
    # what a kill while writing the next snapshot leaves (a temp file), and a truncated
    # snapshot as a crashed copy or full disk would
    good = (snaps / "network-snapshot-000000096.npz").read_bytes()
    (snaps / ".network-snapshot-000000128.npz.x1y2z3.tmp").write_bytes(good[:1000])
    (snaps / "network-snapshot-000000128.npz").write_bytes(good[: len(good) // 3])

    rerun = recover(workdir, more)
    jobs = job_stats(rerun)
    assert {"finetune", "rank", "ranked_export", "report_ranking"} <= set(jobs), jobs   # not "Nothing to be done"
    log = (R / "logs" / "finetune" / "all.log").read_text()
    assert re.search(r"warning: resume: skipping unreadable snapshot \S+network-snapshot-000000128\.npz", log)
    assert "network-snapshot-000000096.npz at kimg 0.096" in log
    assert "start:" not in log
    # the same story on the console while it runs: the run, the skipped file, the ticks
    console = rerun.stdout + rerun.stderr
    assert re.search(r"^finetune: warning: resume: skipping unreadable snapshot \S+000000128\.npz", console, re.M)
    assert re.search(r"^finetune: tick \d+\s+kimg\s+0\.128 / 0\.128\s+sec/kimg .* eta ", console, re.M)
    second = assert_consistent(workdir, 0.128)
    assert second["id"] == first["id"]
    assert not list(snaps.glob(".*.tmp"))

    # 2. change the data (a raw file that reached the dataset is deleted), SIGKILL during rank
    dataset = kept(read_manifest(R / "export" / "manifest.tsv"))
    victim = raw / next(r.source for r in dataset if r.source.startswith("photo_"))   # no duplicates
    victim.unlink()
    proc = start_snakemake(workdir, TARGET, overrides=more)
    wait_for(proc, "rank job", lambda: "pipeline.rank" in running_stage_jobs(proc))
    kill_group(proc)
    rerun = recover(workdir, more)
    assert "rank" in job_stats(rerun)
    third = assert_consistent(workdir, 0.032)    # round_kimg of the tiny config
    assert third["id"] != first["id"] and third["dataset"]["images"] == first["dataset"]["images"] - 1
    assert third["warm_start"]["from"] == "previous" and third["warm_start"]["run"] == first["id"]
    # the new run continued the previous final for round_kimg, its counter from 0 on the
    # new data; the old run is kept as it was
    new_snaps = sorted(p.name for p in (R / "finetune" / "runs" / third["id"] / "snapshots").glob("*[0-9].npz"))
    assert new_snaps == ["network-snapshot-000000032.npz"]
    assert (snaps / "network-snapshot-000000128.npz").exists()

    # 3. a rejects file appears (the curated set changes: a new run continues the last final
    # network for round_kimg without the rejected image), SIGKILL during the report
    rejected = sorted(r.id for r in kept(read_manifest(R / "export" / "manifest.tsv")))[0]
    (workdir / "characters").mkdir()
    (workdir / "characters" / "tiny.rejects.txt").write_text(f"{rejected}\n")
    proc = start_snakemake(workdir, TARGET, overrides=more)
    wait_for(proc, "report job", lambda: "pipeline.report" in running_stage_jobs(proc))
    kill_group(proc)
    rerun = recover(workdir, more)
    assert "report_ranking" in job_stats(rerun)
    fourth = assert_consistent(workdir, 0.032)
    assert fourth["warm_start"]["run"] == third["id"] and fourth["dataset"]["images"] == third["dataset"]["images"] - 1
    trained = (R / "finetune" / "runs" / fourth["id"] / "dataset.tsv").read_text().splitlines()
    assert rejected not in {line.split("\t")[0] for line in trained}
    assert {r.id: r.reason for r in read_manifest(R / "ranked" / "manifest.tsv")}[rejected] == "rejected"
