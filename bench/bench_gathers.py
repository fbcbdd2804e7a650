"""Manifest gathers at 100k-1M rows: memory per row, export's and dedup's own work.

    python bench/bench_gathers.py --rows 100000 1000000 [--old-repo /tmp/fp_old]

Writes synthetic manifests shaped like a real run's (64 normalize shards whose rows carry
crop/clean/upscale/normalize details, ~480 bytes of JSON; 64 clean shards of hashes), then
runs each measurement in a fresh subprocess and reports its CPU time (user + sys, from
getrusage: the machine is shared, wall time is not a fair figure) and peak RSS:
  read       read_manifests over the 64 normalize shards; memory per row held
  export     export's gather without pixels: dataset_rows (normalize shards minus dedup
             drops, sorted) and the export manifest with index + tfrecord_position
  dedup      `pipeline.clean dedup` over the 64 clean shards (hashes, exact + near search)
--old-repo runs the same children with another checkout's pipeline/ first on the path
(e.g. `git archive <commit> pipeline | tar -x -C /tmp/fp_old`), for before/after figures.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import REPO, machine

CHILD = r"""
import json, resource, sys, time
import numpy as np
what, folder, rows = sys.argv[1], sys.argv[2], int(sys.argv[3])
from pathlib import Path
folder = Path(folder)
def hwm_kib():  # VmHWM: peak RSS of this process image (ru_maxrss survives exec on Linux)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
from pipeline.manifest import read_manifest, read_manifests, write_manifest
base = hwm_kib()
t0 = resource.getrusage(resource.RUSAGE_SELF)
norm = sorted(folder.glob("normalize/*/manifest.tsv"))
if what == "read":
    held = read_manifests(norm)
    assert len(held) == rows
elif what == "export":
    from pipeline import export
    try:
        from pipeline.manifest import dropped_ids, iter_manifests
        dataset = export.dataset_rows(iter_manifests(norm), dropped_ids(folder / "dedup.tsv"))
    except ImportError:  # the old pipeline: lists only
        dataset = export.dataset_rows(read_manifests(norm), read_manifest(folder / "dedup.tsv"))
    order = export.shuffled_order(len(dataset))
    positions = np.empty(len(dataset), dtype=np.int64)
    positions[order] = np.arange(len(dataset))
    positions = positions.tolist()
    if hasattr(export, "listed_rows"):
        write_manifest(folder / "export.tsv", export.listed_rows(dataset, positions))
    else:
        write_manifest(folder / "export.tsv", [r.keep(details={"index": i, "tfrecord_position": positions[i]})
                                               for i, r in enumerate(dataset)])
elif what == "dedup":
    from pipeline import clean
    import yaml
    cfg = yaml.safe_load(open(sys.argv[4]).read())["clean"]
    clean.main(["dedup", "--output", str(folder / "dedup_out.tsv"), "--config", json.dumps(cfg),
                *map(str, sorted(folder.glob("clean/*/manifest.tsv")))])
t1 = resource.getrusage(resource.RUSAGE_SELF)
peak = hwm_kib()
print("RESULT", json.dumps({"cpu_s": round(t1.ru_utime + t1.ru_stime - t0.ru_utime - t0.ru_stime, 2),
                            "peak_rss_mib": round(peak / 1024, 1),
                            "bytes_per_row": round((peak - base) * 1024 / rows)}))
"""


def details_for(i: int, rng: random.Random) -> dict:
    """What a normalize row carries after crop (animeface), clean, upscale and normalize."""
    x, y, w = rng.randrange(2000), rng.randrange(2000), rng.randrange(100, 900)
    return {"box": [x, y, w, w], "crop": [x - w // 4, y - w // 2, x + w + w // 4, y + w + w // 4],
            "neighbors": rng.randrange(3, 40), "padded": False, "file_bytes": rng.randrange(10**4, 10**7),
            "pixel_sha256": "%064x" % rng.getrandbits(256), "phash": "%016x" % rng.getrandbits(64),
            "phash_mirror": "%016x" % rng.getrandbits(64), "colors": rng.randrange(10**5),
            "chroma": round(rng.random() * 40, 4), "upscaler": "lanczos",
            "upscale": {"factor": 2, "from": [w, w]},
            "normalize": {"scale": round(512 / (2 * w), 6), "from": [2 * w, 2 * w]}}


def make_manifests(folder: Path, rows: int, shards: int = 64) -> None:
    sys.path.insert(0, str(REPO / "bench"))
    from scale import synthetic_clean_manifests

    from pipeline.manifest import Row, write_manifest
    rng = random.Random(0)
    per_shard: list[list] = [[] for _ in range(shards)]
    dedup = []
    for i in range(rows):
        row = Row(id=f"{i:016x}-f0", source=f"raw/{i // 1000:04d}/img{i:07d}.jpg",
                  parent_id=f"{i:016x}", path=f"{folder}/normalize/{i % shards:02d}/{i:016x}-f0.png",
                  width=512, height=512, details=details_for(i, rng))
        per_shard[i % shards].append(row)
        dedup.append(row.drop("near_duplicate", details={"duplicate_of": f"{i - 3:016x}-f0",
                                                         "distance": 3}) if i % 20 == 19 else row)
    for s, shard_rows in enumerate(per_shard):
        write_manifest(folder / "normalize" / f"{s:02d}" / "manifest.tsv", shard_rows)
    write_manifest(folder / "dedup.tsv", dedup)
    synthetic_clean_manifests(folder / "clean", rows, shards)


def run_child(repo: Path, what: str, folder: Path, rows: int) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{repo}:{REPO}"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, what, str(folder), str(rows),
                           str(REPO / "config.yaml")], env=env, capture_output=True, text=True,
                          cwd=repo)  # python -c puts the working folder first on sys.path
    if proc.returncode:
        raise SystemExit(f"{what} failed:\n{proc.stderr[-3000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return {**json.loads(line[7:]), "wall_s": round(time.perf_counter() - t0, 1)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000])
    ap.add_argument("--workdir", default="/tmp/faceprep-gathers")
    ap.add_argument("--old-repo", help="a checkout whose pipeline/ to measure as 'before'")
    ap.add_argument("--only", nargs="+", default=["read", "export", "dedup"])
    a = ap.parse_args(argv)
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {machine()}; "
          f"load average {os.getloadavg()[0]:.1f}")
    for rows in a.rows:
        folder = Path(a.workdir) / str(rows)
        shutil.rmtree(folder, ignore_errors=True)
        # in a child: this process stays small, so the measuring children start small
        subprocess.run([sys.executable, "-c", "import sys; sys.path[:0] = sys.argv[3:]; "
                        "from bench_gathers import make_manifests; from pathlib import Path; "
                        "make_manifests(Path(sys.argv[1]), int(sys.argv[2]))",
                        str(folder), str(rows), str(REPO / "bench"), str(REPO)], check=True)
        mib = sum(p.stat().st_size for p in folder.glob("normalize/*/manifest.tsv")) / 2**20
        print(f"rows {rows}: normalize manifests {mib:.0f} MiB")
        for label, repo in [("before", a.old_repo), ("after", str(REPO))]:
            if not repo:
                continue
            for what in a.only:
                print(f"  {label:6s} {what:6s} {run_child(Path(repo), what, folder, rows)}", flush=True)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
