"""Where a 1M-row gather's CPU time and memory go, phase by phase (issue 17 item 4).

    python bench/bench_gather_phases.py /tmp/faceprep-gathers/1000000 [--no-dedup]

Reads the manifests `bench_gathers.py --keep` left in that folder and times, in this one
process (CPU seconds from getrusage; peak RSS from VmHWM after each phase):
  dedup   pass one (lines -> DedupColumns), the source-picture search, the face search,
          the rest of the verdicts, pass two (dedup.tsv written)
  export  dedup.tsv's dropped ids, the streamed export manifest
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

from common import REPO, machine

import yaml


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def hwm_mib() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--no-dedup", action="store_true")
    a = ap.parse_args()
    from pipeline import dedup, export, hamming
    from pipeline.manifest import dropped_ids
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {machine()}; load average "
          f"{os.getloadavg()[0]:.1f}; `python bench/bench_gather_phases.py {a.folder}`")
    out: dict = {}

    def phase(name, fn):
        t0 = cpu()
        result = fn()
        out[name] = {"cpu_s": round(cpu() - t0, 2), "peak_rss_mib": round(hwm_mib())}
        print(f"  {name:28s} {out[name]}", flush=True)
        return result
    if not a.no_dedup:
        cfg = yaml.safe_load((REPO / "config.yaml").read_text())["clean"]
        cfg["near_duplicates"]["trims"] = "trims-off" not in str(a.folder)
        paths = sorted(map(str, a.folder.glob("clean/*/manifest.tsv")))
        cols = phase("dedup pass one (columns)", lambda: dedup.read_dedup_columns(paths, cfg["near_duplicates"]))
        searches = {}
        original = hamming.duplicate_pairs

        def timed(*args, **kw):
            t0 = cpu()
            result = original(*args, **kw)
            searches[f"search {len(searches) + 1}"] = round(cpu() - t0, 2)
            return result
        hamming.duplicate_pairs = timed
        verdict = phase("dedup verdicts (searches)", lambda: dedup.dedup_verdicts(cols, cfg))
        hamming.duplicate_pairs = original
        print(f"    searches (sources, faces): {searches}")
        lines = cols.lines
        del cols
        phase("dedup pass two (write)", lambda: dedup.write_dedup(paths, verdict, str(a.folder / "dedup_phases.tsv"),
                                                                  lines))
        del verdict
    norm = sorted(a.folder.glob("normalize/*/manifest.tsv"))
    dup = phase("export dedup.tsv drop ids", lambda: dropped_ids(a.folder / "dedup.tsv"))
    phase("export manifest (streamed)", lambda: export.write_dataset_manifest(norm, dup, a.folder / "export_phases.tsv"))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
