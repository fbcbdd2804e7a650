"""Scale benchmark: Snakemake planning and no-op cost on a 100,000-image raw folder, and the
peak memory of the dedup gather on 100k-1M synthetic hash rows.

    python bench/scale.py --images 100000 --workdir /tmp/faceprep-scale
    python bench/scale.py --skip-snakemake --dedup-rows 100000 1000000   (dedup gather only)
    python bench/scale.py --images 1000000 --empty --workdir /tmp/fp-1m   (1M empty raw files)

What it measures (each a fresh subprocess, wall time and peak RSS from /usr/bin/time):
  dry_run_fresh     `snakemake -n dataset` on a new results tree: lists the raw folder at
                    parse time, writes every shard listing, builds the stages x shards DAG.
  dry_run_listed    the same once the listings exist and are unchanged.
  dry_run_one_new   after adding one image: how many jobs the change schedules.
  noop_rerun        `snakemake --cores 2 dataset` when every output is up to date.
                    With --full-run the outputs come from a real run of the workflow;
                    otherwise every planned output is created empty and recorded with
                    `snakemake --touch` (the workflow's stages are not run), which measures
                    Snakemake's own cost: listing 100k files, DAG, mtime checks.
  dedup_gather      `python -m pipeline.dedup` over 64 synthetic clean manifests.
The workflow runs from a snapshot copy (<workdir>/workflow), so edits to the tree during a
long run are not taken for code changes.
Goal from the design: dry run and no-op under 15 s each at 100k images.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml
from PIL import Image
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from common import cpu_model  # noqa: E402

CONFIG = {
    "name": "scale",
    "shards": 64,
    "crop": {"method": "none"},
    "upscale": {"method": "lanczos"},
    "normalize": {"resolution": 32, "format": "png"},
}


def machine() -> str:
    return f"{os.cpu_count()} cores (nproc {len(os.sched_getaffinity(0))}), {cpu_model()}, {platform.platform()}"


def make_raw_folder(raw: Path, count: int, per_folder: int = 1000) -> None:
    """``count`` distinct 8x8 PNGs (the index is encoded in the pixels), 1000 per folder."""
    raw.mkdir(parents=True, exist_ok=True)
    for i in tqdm(range(count), desc="synthetic raw", unit="img", mininterval=2):
        folder = raw / f"{i // per_folder:04d}"
        if i % per_folder == 0:
            folder.mkdir(exist_ok=True)
        pixels = bytes((i >> (8 * (k % 3))) & 0xFF for k in range(8 * 8 * 3))
        Image.frombytes("RGB", (8, 8), pixels).save(folder / f"img{i:07d}.png")


def make_empty_raw_folder(raw: Path, count: int, per_folder: int = 1000) -> None:
    """``count`` empty .png files, 1000 per folder: enough for the parse-time listing, the
    DAG and the up-to-date checks (no stage runs on them)."""
    for i in tqdm(range(count), desc="empty raw", unit="file", mininterval=2):
        folder = raw / f"{i // per_folder:04d}"
        if i % per_folder == 0:
            folder.mkdir(parents=True, exist_ok=True)
        os.close(os.open(folder / f"img{i:07d}.png", os.O_CREAT | os.O_WRONLY, 0o644))


def timed(cmd: list[str], cwd: Path, env=None) -> dict:
    """Wall seconds, CPU seconds (user + sys), peak RSS (MiB) and output of one
    subprocess, via GNU time."""
    fmt = "FACEPREP_TIME %e %M %U %S"
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", fmt, *cmd], cwd=cwd, capture_output=True,
                          text=True, env=env)
    wall = time.perf_counter() - t0
    m = re.search(r"FACEPREP_TIME ([\d.]+) (\d+) ([\d.]+) ([\d.]+)", proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-3000:]}"
                         f"\n{proc.stderr[-3000:]}")
    return {"wall_s": round(wall, 2), "cpu_s": round(float(m.group(3)) + float(m.group(4)), 2),
            "peak_rss_mib": round(int(m.group(2)) / 1024, 1), "output": proc.stdout + proc.stderr}


def snapshot_workflow(dest: Path) -> Path:
    """A frozen copy of the workflow: edits to the tree during a long run must not count
    as code changes (pipeline/*.py are inputs of their rules)."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for name in ("Snakefile", "config.yaml", "environment.yml", "rules", "pipeline", "gan", "util", "schemas",
                 "profiles"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, dest / name)
    return dest / "Snakefile"


SNAKEFILE = REPO / "Snakefile"


def snakemake_cmd(workdir: Path, config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory",
            str(workdir), "--configfile", str(config), "--cores", "2", *args]


def job_count(output: str) -> int:
    m = re.search(r"^total\s+(\d+)$", output, re.M)
    return int(m.group(1)) if m else 0


def planned_outputs(output: str) -> list[str]:
    files = []
    for line in output.splitlines():
        line = line.strip()
        if line.startswith("output:"):
            files += [f.strip() for f in line[len("output:"):].split(", ") if f.strip()]
    return files


def bench_snakemake(workdir: Path, images: int, shards: int, full_run: bool,
                    empty: bool = False) -> dict:
    global SNAKEFILE
    SNAKEFILE = snapshot_workflow(workdir / "workflow")
    raw = workdir / "raw"
    results: dict = {}
    if not raw.is_dir() or sum(1 for _ in raw.rglob("*.png")) < images:
        shutil.rmtree(raw, ignore_errors=True)
        t0 = time.perf_counter()
        (make_empty_raw_folder if empty else make_raw_folder)(raw, images)
        results["make_raw_s"] = round(time.perf_counter() - t0, 1)
    for stale in ("results", "cache", ".snakemake", "one_more"):
        shutil.rmtree(workdir / stale, ignore_errors=True)
    config = workdir / "scale_config.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "shards": shards, "raw_dir": str(raw)}))

    fresh = timed(snakemake_cmd(workdir, config, "-n", "dataset"), workdir)
    results["dry_run_fresh"] = {"wall_s": fresh["wall_s"], "cpu_s": fresh["cpu_s"],
                                "peak_rss_mib": fresh["peak_rss_mib"], "jobs": job_count(fresh["output"])}
    listed = timed(snakemake_cmd(workdir, config, "dataset", "-n", "--quiet", "rules"), workdir)
    results["dry_run_listed"] = {"wall_s": listed["wall_s"], "cpu_s": listed["cpu_s"],
                                 "peak_rss_mib": listed["peak_rss_mib"],
                                 "jobs": job_count(listed["output"])}

    if full_run:
        run = timed(snakemake_cmd(workdir, config, "dataset"), workdir)
        results["full_run"] = {"wall_s": run["wall_s"], "peak_rss_mib": run["peak_rss_mib"]}
        results["noop_mode"] = "after a real run of the workflow"
    else:
        for f in planned_outputs(fresh["output"]):
            p = workdir / f
            p.parent.mkdir(parents=True, exist_ok=True)
            p.touch()
        timed(snakemake_cmd(workdir, config, "--touch", "dataset"), workdir)
        results["noop_mode"] = "outputs created empty + snakemake --touch (stages not run)"
    planned = job_count(timed(snakemake_cmd(workdir, config, "dataset", "-n", "--quiet", "rules"),
                              workdir)["output"])
    if planned:
        results["noop_rerun"] = {"error": f"not up to date: {planned} jobs planned"}
    else:
        noop = timed(snakemake_cmd(workdir, config, "dataset"), workdir)
        results["noop_rerun"] = {"wall_s": noop["wall_s"], "cpu_s": noop["cpu_s"],
                                 "peak_rss_mib": noop["peak_rss_mib"],
                                 "nothing_to_be_done": "Nothing to be done" in noop["output"]}

    # one new image: only its shard's per-image jobs and the gathers are planned
    extra = raw / "new" / "one_more.png"
    extra.parent.mkdir(exist_ok=True)
    Image.new("RGB", (8, 8), (1, 2, 3)).save(extra)
    one = timed(snakemake_cmd(workdir, config, "dataset", "-n", "--quiet", "rules"), workdir)
    results["dry_run_one_new"] = {"wall_s": one["wall_s"], "cpu_s": one["cpu_s"],
                                  "jobs": job_count(one["output"])}
    extra.unlink()
    extra.parent.rmdir()
    return results


def synthetic_clean_rows(rows: int, seed: int = 0):
    """``rows`` kept clean rows as pipeline.clean writes them (pixel digest, 64-bit pHash,
    source bytes), every 50th an exact and every 20th a near duplicate of an earlier row."""
    import hashlib
    import random

    from pipeline.manifest import Row

    rng = random.Random(seed)
    hashes: list[int] = []
    for i in range(rows):
        if i % 50 == 49:
            h, digest = hashes[i - 7], hashlib.sha256(str(i - 7).encode()).hexdigest()
        else:
            h = hashes[i - 3] ^ (1 << rng.randrange(64)) if i % 20 == 19 else rng.getrandbits(64)
            digest = hashlib.sha256(str(i).encode()).hexdigest()
        hashes.append(h)
        yield Row(id=f"{i:016x}", source=f"raw/{i // 1000:04d}/img{i:07d}.png",
                  path=f"results/x/crop/{i % 64:02d}/{i:016x}.png", width=256, height=256,
                  details={"bytes": 20000 + i % 997, "pixel_sha256": digest,
                           "phash": f"{h:016x}"})


def synthetic_clean_manifests(folder: Path, rows: int, shards: int = 64) -> list[Path]:
    from pipeline.manifest import write_manifest

    per_shard: list[list] = [[] for _ in range(shards)]
    for i, row in enumerate(tqdm(synthetic_clean_rows(rows), total=rows, desc="synthetic rows",
                                 unit="row", mininterval=2)):
        per_shard[i % shards].append(row)
    paths = []
    for s, shard_rows in enumerate(per_shard):
        path = folder / f"{s:02d}" / "manifest.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_manifest(path, shard_rows)
        paths.append(path)
    return paths


def bench_dedup(workdir: Path, rows: int) -> dict:
    folder = workdir / f"dedup_{rows}"
    shutil.rmtree(folder, ignore_errors=True)
    manifests = synthetic_clean_manifests(folder, rows)
    # the clean block as the rule passes it (config.yaml defaults)
    cfg = json.dumps(yaml.safe_load((REPO / "config.yaml").read_text())["clean"])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = timed([sys.executable, "-m", "pipeline.dedup", "--output",
                 str(folder / "dedup.tsv"), "--config", cfg, *map(str, manifests)], workdir, env)
    from pipeline.manifest import read_manifest
    verdicts = read_manifest(folder / "dedup.tsv")
    dropped = {}
    for r in verdicts:
        if not r.kept:
            dropped[r.reason] = dropped.get(r.reason, 0) + 1
    shutil.rmtree(folder, ignore_errors=True)
    return {"rows": rows, "wall_s": res["wall_s"], "peak_rss_mib": res["peak_rss_mib"],
            "rows_out": len(verdicts), "dropped": dropped}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--shards", type=int, default=64)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/faceprep-scale"))
    ap.add_argument("--full-run", action="store_true",
                    help="run the workflow for real before timing the no-op rerun")
    ap.add_argument("--dedup-rows", type=int, nargs="*", default=[],
                    help="synthetic clean rows for the dedup gather (e.g. 100000 1000000)")
    ap.add_argument("--skip-snakemake", action="store_true")
    ap.add_argument("--empty", action="store_true",
                    help="empty .png files as the raw folder (1M files: listing/DAG cost only)")
    args = ap.parse_args(argv)
    os.environ.setdefault("FACEPREP_ANIMEFACE_CASCADE",
                          str(REPO.parent / "shared" / "models" / "lbpcascade_animeface.xml"))
    args.workdir.mkdir(parents=True, exist_ok=True)
    report = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "machine": machine(),
              "command": " ".join([Path(sys.executable).name, *sys.argv])}
    if not args.skip_snakemake:
        report["snakemake"] = {"images": args.images, "shards": args.shards,
                               **bench_snakemake(args.workdir, args.images, args.shards,
                                                 args.full_run, args.empty)}
    report["dedup"] = [bench_dedup(args.workdir, n) for n in args.dedup_rows]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
