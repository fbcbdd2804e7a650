"""profiles/slurm on a real SLURM scheduler: a single-node cluster (tests/cluster/start_slurm.sh:
munge, MariaDB + slurmdbd, slurmctld, slurmd from Debian's packages) runs
`snakemake --profile profiles/slurm --workflow-profile none ranked_dataset` on the tiny config.

- every job goes through sbatch: each one the run log says it submitted is in `sacct`, with
  the rule (the plugin's --comment), partition, CPUs, memory, time limit and GPUs the
  profile and the rule promised, and no job ran on the submitting machine instead;
- the run is killed (SIGKILL, as a login node losing the session) once the export job is
  submitted; the job finishes in SLURM; after `--unlock` the same command finishes the
  run, doing only what had not been done (not export: its job recorded its outputs), and
- every output is byte-identical to a run of the same raw folder on the local executor: the
  dataset (export TFRecords, ZIP, manifest), every stage manifest, and, because training on
  CPU runs with TensorFlow op determinism (gan/training_loop.py), the checkpoint, scores,
  ranked dataset and report too. Training bookkeeping under finetune/ (TensorBoard event
  files named by host, pid and time; snapshots, samples, run records) is left out; the
  final network is compared.

Rule names come from the run itself and from sacct, never from a list here. Skipped, with
the reason, when not root or when the SLURM packages are not installed (`make
cluster-packages` installs them; `make test` does so first).
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, run_snakemake, scheduled_jobs, write_config
from test_determinism import make_raw, output_digests

CLUSTER = Path(__file__).resolve().parent
PROFILE = REPO / "profiles" / "slurm"
NEEDED = ("munged", "munge", "mariadbd", "mariadb-install-db", "slurmdbd", "slurmctld", "slurmd",
          "sbatch", "sacct", "sacctmgr")
ETC_CONF = Path("/etc/slurm/slurm.conf")
# the plugin waits 40 s before its first status check; a test cluster answers at once
CLUSTER_ARGS = ("--profile", str(PROFILE), "--workflow-profile", "none",
                "--slurm-init-seconds-before-status-checks", "2", "ranked_dataset")
# training bookkeeping named or filled by wall-clock time, host and pid (TensorBoard event
# files, a training run's creation time); the trained network itself is compared
NOT_DETERMINISTIC = re.compile(r"^finetune/(?!network-final\.npz$)")


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "the SLURM test cluster needs root (slurmd starts jobs as their user)"
    missing = [c for c in NEEDED if shutil.which(c) is None]
    if missing:
        return ("SLURM packages not installed (no " + ", ".join(missing) + "): "
                "`make cluster-packages` installs slurm-wlm slurmdbd munge mariadb-server")
    if ETC_CONF.exists() and "faceprep test cluster" not in ETC_CONF.read_text():
        return f"{ETC_CONF} belongs to a real cluster; not starting a test cluster beside it"
    return None


def free_port_base(count: int = 4) -> int:
    """A port with ``count`` free ports from it on (slurmctld, slurmd, slurmdbd, MariaDB)."""
    for base in range(16817, 30000, 10):
        try:
            for port in range(base, base + count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise AssertionError("no free ports for the test cluster")


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A running single-node cluster; SLURM_CONF points at it for the module."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    state = tmp_path_factory.mktemp("slurm")
    start = subprocess.run([str(CLUSTER / "start_slurm.sh"), str(state)], capture_output=True,
                           text=True, timeout=300,
                           env={**os.environ, "SLURM_PORT_BASE": str(free_port_base())})
    if start.returncode != 0:
        subprocess.run([str(CLUSTER / "stop_slurm.sh"), str(state)], timeout=300)
        raise AssertionError(f"start_slurm.sh failed:\n{start.stdout}\n{start.stderr}")
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(state / "slurm.conf")
    yield state
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old
    daemons = [int(p.read_text()) for p in state.rglob("*.pid")]
    assert len(daemons) == 5, daemons  # munged, mariadbd, slurmdbd, slurmctld, slurmd
    stop = subprocess.run([str(CLUSTER / "stop_slurm.sh"), str(state)], capture_output=True,
                          text=True, timeout=300)
    assert stop.returncode == 0, stop.stderr
    # stopped cleanly: every daemon gone, nothing left behind
    assert not [pid for pid in daemons if Path(f"/proc/{pid}").exists()]
    assert not state.exists() and not ETC_CONF.exists()


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> dict:
    workdir = tmp_path_factory.mktemp("local")
    make_raw(workdir)
    run_snakemake(workdir, "ranked_dataset")
    return {"workdir": workdir}


def squeue_empty() -> bool:
    out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=True)
    return not out.stdout.strip()


@pytest.fixture(scope="module")
def cluster_run(slurm, tmp_path_factory) -> dict:
    """The tiny workflow through SLURM: killed once export is submitted, then resumed."""
    workdir = tmp_path_factory.mktemp("cluster")
    make_raw(workdir)
    cfg = write_config(workdir)
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
           str(workdir), "--configfile", str(cfg), *CLUSTER_ARGS]
    first_log = workdir / "first_run.log"
    t0 = time.monotonic()
    with open(first_log, "w") as log:
        proc = subprocess.Popen(cmd, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
        try:
            # the export gather starts once every per-image stage is done; kill once sbatch
            # has returned its job id (the run log says so)
            while "export" not in submitted_rules(first_log.read_text()):
                if proc.poll() is not None:
                    raise AssertionError("the cluster run ended before export was submitted:\n"
                                         + first_log.read_text()[-6000:])
                assert time.monotonic() - t0 < 1200, "export was not submitted within 20 min"
                time.sleep(0.5)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    # jobs already submitted keep running in SLURM, as they do when a login node goes away
    while not squeue_empty():
        assert time.monotonic() - t0 < 1800, "orphaned SLURM jobs did not finish"
        time.sleep(1)
    # a killed run leaves its lock behind; the user's recovery is unlock + the same command
    run_snakemake(workdir, *CLUSTER_ARGS, "--unlock")
    pending = scheduled_jobs(workdir, "ranked_dataset")
    resumed = run_snakemake(workdir, *CLUSTER_ARGS)
    return {"workdir": workdir, "first_log": first_log.read_text(),
            "resumed_log": resumed.stdout + resumed.stderr, "pending": pending}


# --- the run log: which job went where with what --------------------------------------------

def submitted_jobs(log: str) -> dict[str, dict]:
    """{slurm job id: {rule, threads, resources}} from a snakemake run log."""
    jobs, blocks = {}, {}
    block = None
    for line in log.splitlines():
        if m := re.match(r"^(local)?(?:rule|checkpoint) (\w+):", line):  # dedup is a checkpoint
            block = {"rule": m.group(2), "local": bool(m.group(1)), "threads": 1, "resources": {}}
        elif block is not None and (m := re.match(r"^\s+jobid: (\d+)", line)):
            blocks[m.group(1)] = block
        elif block is not None and (m := re.match(r"^\s+threads: (\d+)", line)):
            block["threads"] = int(m.group(1))
        elif block is not None and line.strip().startswith("resources:"):
            pairs = line.split("resources:", 1)[1].split(", ")
            block["resources"] = dict(p.strip().split("=", 1) for p in pairs if "=" in p)
        elif m := re.match(r"^Job (\d+) has been submitted with SLURM jobid (\d+)", line):
            jobs[m.group(2)] = blocks[m.group(1)]
    return jobs


def submitted_rules(log: str) -> set[str]:
    return {job["rule"] for job in submitted_jobs(log).values()}


def started_rules(log: str) -> list[tuple[str, bool]]:
    """(rule, local) of every job a run log started."""
    return [(m.group(2), bool(m.group(1)))
            for m in re.finditer(r"^(local)?(?:rule|checkpoint) (\w+):", log, re.MULTILINE)]


def finished_rules(log: str) -> set[str]:
    return set(re.findall(r"^Finished jobid: \d+ \(Rule: (\w+)\)", log, re.MULTILINE))


def sacct_jobs() -> dict[str, dict]:
    """Every job the cluster's accounting database knows, by job id."""
    fields = ["JobID", "Comment", "Partition", "AllocCPUS", "ReqMem", "Timelimit", "State",
              "AllocTRES"]
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-a", "-S", "now-1days",
                          "--format", ",".join(fields)],
                         capture_output=True, text=True, check=True).stdout
    rows = [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line.strip()]
    return {r["JobID"]: r for r in rows}


def minutes(limit: str) -> int:
    """sacct Timelimit ([D-]HH:MM:SS) in minutes."""
    days, _, hms = limit.rpartition("-")
    h, m, s = (int(x) for x in hms.split(":"))
    return (int(days or 0) * 24 + h) * 60 + m + (s > 0)


def profile_partition(rule: str) -> str:
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    own = (profile.get("set-resources") or {}).get(rule, {})
    return own.get("slurm_partition", profile["default-resources"]["slurm_partition"])


# --- tests -------------------------------------------------------------------------------

def test_every_job_is_a_slurm_job_with_the_promised_resources(cluster_run):
    logs = cluster_run["first_log"] + "\n" + cluster_run["resumed_log"]
    submitted = (submitted_jobs(cluster_run["first_log"])
                 | submitted_jobs(cluster_run["resumed_log"]))
    # nothing but local (target) rules ran on the submitting machine
    n_remote = sum(1 for _, local in started_rules(logs) if not local)
    assert n_remote == len(submitted) > 0
    accounted = sacct_jobs()
    assert set(submitted) <= set(accounted), "submitted jobs missing from sacct"
    for job_id, job in submitted.items():
        row, res = accounted[job_id], job["resources"]
        rule = row["Comment"].removeprefix("rule_").split("_wildcards_")[0]
        assert rule == job["rule"], (job_id, row["Comment"])
        assert row["Partition"] == res["slurm_partition"] == profile_partition(rule), (rule, row)
        assert int(row["AllocCPUS"]) == job["threads"], (rule, row)
        assert row["ReqMem"] == f"{res['mem_mb']}M", (rule, row)
        assert minutes(row["Timelimit"]) == int(res["runtime"]), (rule, row)
        gpus = re.search(r"gres/gpu=(\d+)", row["AllocTRES"])
        assert int(gpus.group(1) if gpus else 0) == int(res.get("gpu", 0)), (rule, row)
    # the killed run's jobs finished in SLURM anyway; every other job completed
    states = {accounted[j]["State"] for j in submitted}
    assert states == {"COMPLETED"}, states
    # the GPU rules of the tiny config (finetune, rank) really asked for a GPU
    gpu_rules = {j["rule"] for j in submitted.values() if int(j["resources"].get("gpu", 0))}
    assert gpu_rules and all(profile_partition(r) == "gpu" for r in gpu_rules)


def test_killed_cluster_run_resumes_and_redoes_only_unfinished_work(cluster_run):
    done_before = finished_rules(cluster_run["first_log"])
    pending = cluster_run["pending"]
    assert done_before and pending
    # export was in SLURM when the run was killed and finished there: the snakemake inside
    # the job records its outputs as complete on the shared disk, so it is not redone;
    # what had not been submitted yet (finetune onwards) is
    assert "export" not in done_before and "export" not in pending
    assert "finetune" in pending
    assert not set(pending) & done_before, (pending, done_before)
    rerun = [rule for rule, _ in started_rules(cluster_run["resumed_log"])]
    assert sorted(rerun) == sorted(r for r, n in pending.items() for _ in range(n))
    assert scheduled_jobs(cluster_run["workdir"], "ranked_dataset") == {}


def test_cluster_outputs_identical_to_local_run(cluster_run, local_run):
    cluster = output_digests(cluster_run["workdir"])
    local = output_digests(local_run["workdir"])
    cluster = {k: v for k, v in cluster.items() if not NOT_DETERMINISTIC.match(k)}
    local = {k: v for k, v in local.items() if not NOT_DETERMINISTIC.match(k)}
    # the dataset and the ranked dataset are among them (ranked_dataset writes the ranked
    # ZIP; the export's own ZIP belongs to the `dataset` target)
    # (training reads the curated set's TFRecords: export's own belong to the `dataset` target)
    for folder in ("export", "curated", "ranked"):
        assert f"{folder}/manifest.tsv" in local
    for folder in ("curated", "ranked"):
        assert any(k.startswith(folder + "/") and k.endswith(".tfrecords") for k in local)
    assert any(k.startswith("ranked/") and k.endswith(".zip") for k in local)
    assert any(k.endswith("/manifest.tsv") and k.count("/") == 2 for k in local)  # per shard
    assert "finetune/network-final.npz" in local and "rank/scores.tsv" in local
    assert cluster == local
