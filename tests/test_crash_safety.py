"""Crash safety: SIGKILL the whole workflow (snakemake and every job it started) at random
moments, unlock, rerun with --rerun-incomplete, and the dataset must come out byte-identical
to an uninterrupted run, with no source file changed.

Each kill point gets a fresh working folder, so the five points sample the whole run
(listing, per-shard stages, dedup, export) instead of only its start. The moments are drawn
from fixed seeds as fractions of the uninterrupted run's wall time.
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil

from conftest import run_snakemake, start_snakemake
from test_determinism import OVERRIDES, make_raw, output_digests, source_digests

KILL_SEEDS = [11, 22, 33, 44, 55]
TARGET = "dataset"


def running_stage_jobs(proc: subprocess.Popen) -> list[str]:
    """Command lines of the pipeline stages snakemake is running right now."""
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for child in children:
        try:
            cmd = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "-m pipeline." in cmd:
            found.append(cmd.split("-m ", 1)[1].split(" ", 1)[0])
    return found


def kill_group(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the group is gone once every member is reaped
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError("processes of the killed workflow survived SIGKILL")


def kill_at(workdir: Path, seconds: float) -> list[str] | None:
    """Run until ``seconds`` then SIGKILL; the stage jobs it interrupted, or None when the
    run had already finished."""
    proc = start_snakemake(workdir, "--rerun-incomplete", TARGET, overrides=OVERRIDES)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return None
        time.sleep(0.02)
    if proc.poll() is not None:
        return None
    interrupted = running_stage_jobs(proc)
    kill_group(proc)
    return interrupted


def test_sigkill_at_random_moments_then_rerun_gives_identical_dataset(tmp_path):
    reference = tmp_path / "reference"
    raw = make_raw(reference)
    t0 = time.monotonic()
    run_snakemake(reference, TARGET, overrides=OVERRIDES)
    full_run_s = time.monotonic() - t0
    expected = output_digests(reference)
    assert any(rel.endswith(".tfrecords") for rel in expected) and "export/tiny.zip" in expected

    interrupted_jobs = []
    for seed in KILL_SEEDS:
        workdir = tmp_path / f"killed_{seed}"
        raw = make_raw(workdir)
        sources = source_digests(raw)
        fraction = random.Random(seed).uniform(0.05, 0.9)
        interrupted = None
        for shrink in (1, 0.5, 0.25):  # the run may go faster than the reference: kill sooner
            interrupted = kill_at(workdir, fraction * shrink * full_run_s)
            if interrupted is not None:
                break
            for finished in ("results", "cache", ".snakemake"):
                shutil.rmtree(workdir / finished, ignore_errors=True)
        assert interrupted is not None, f"seed {seed}: the run finished before every kill"
        interrupted_jobs += interrupted
        # a killed run leaves its lock behind; the user's recovery is unlock + rerun
        run_snakemake(workdir, TARGET, "--unlock", overrides=OVERRIDES)
        run_snakemake(workdir, TARGET, "--rerun-incomplete", overrides=OVERRIDES)
        got = output_digests(workdir)
        differing = sorted(rel for rel in expected.keys() | got.keys()
                           if expected.get(rel) != got.get(rel))
        assert not differing, f"seed {seed} (kill at {fraction:.2f} of the run): {differing}"
        assert source_digests(raw) == sources, f"seed {seed}: a source file changed"
    # the kills landed inside stage jobs, not only between them
    assert interrupted_jobs, "no kill interrupted a running stage"
