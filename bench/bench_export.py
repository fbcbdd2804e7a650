"""export end to end: one process vs worker processes, before vs after (CPU and wall).

    python bench/bench_export.py [--images 200] [--resolution 512] [--old-repo /tmp/fp_old]

Normalizes the decodable top-level testdata images to R x R PNG once, lists them ``--images``
times under distinct ids (a dataset of that size; the pixels repeat), then runs
``python -m pipeline.export`` (TFRecords + ZIP) as a subprocess with --threads 1 and 2,
and with --old-repo's pipeline (one process: it has no --threads). Reported: CPU seconds
(user + sys of the process and its workers, from /usr/bin/time) and wall seconds (the
machine is shared: wall is indicative only), and whether the TFRecords are byte-identical
to the first run's.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, TESTDATA, machine


def timed(cmd, cwd, env) -> dict:
    proc = subprocess.run(["/usr/bin/time", "-f", "FP_TIME %e %U %S %M", *cmd], cwd=cwd, env=env,
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    wall, user, sys_, rss = re.search(r"FP_TIME ([\d.]+) ([\d.]+) ([\d.]+) (\d+)", proc.stderr).groups()
    return {"cpu_s": round(float(user) + float(sys_), 2), "wall_s": float(wall),
            "peak_rss_mib": round(int(rss) / 1024)}


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted((folder / "tfrecords").glob("*.tfrecords")):
        h.update(p.read_bytes())
    return h.hexdigest()[:12]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--old-repo")
    a = ap.parse_args(argv)
    from conftest import normalize_files

    from pipeline.manifest import read_manifest, write_manifest
    work = Path(tempfile.mkdtemp(prefix="bench-export-"))
    files = sorted(p for p in TESTDATA.iterdir() if p.suffix.lower() in (".jpg", ".png") and p.is_file())
    norm = read_manifest(normalize_files(work / "n", files, resolution=a.resolution, fit="crop",
                                         format="png"))
    rows = [r.keep(id=f"{i:06d}") for i, r in zip(range(a.images), norm * (a.images // len(norm) + 1))]
    write_manifest(work / "dataset.tsv", rows)
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {machine()}; load average "
          f"{os.getloadavg()[0]:.1f}; {len(rows)} images {a.resolution} px PNG; TFRecords + ZIP")
    runs = [("after --threads 1", REPO, ["--threads", "1"]), ("after --threads 2", REPO, ["--threads", "2"])]
    if a.old_repo:
        runs.insert(0, ("before (one process)", Path(a.old_repo), []))
    first = None
    for label, repo, extra in runs:
        out = work / label.replace(" ", "_")
        env = {**os.environ, "PYTHONPATH": str(repo)}
        res = timed([sys.executable, "-m", "pipeline.export", "--name", "b", "--folder", str(out),
                     "--config", json.dumps({"zip": True}), *extra, str(work / "dataset.tsv")], repo, env)
        d = digest(out)
        first = first or d
        print(f"  {label:22s} {res} per image {res['cpu_s'] / len(rows) * 1000:.1f} CPU ms; "
              f"tfrecords {'identical' if d == first else 'DIFFER'}", flush=True)
        shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
