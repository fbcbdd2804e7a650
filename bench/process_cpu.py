"""Where a run's CPU goes, process by process: every Python process a command starts.

    python bench/process_cpu.py [--out FILE] -- snakemake --cores 2 ...

Runs the command with a ``sitecustomize`` on PYTHONPATH that, when each Python process
exits, appends its own CPU seconds (user + system, all its threads), those of the children
it waited for, and its wall seconds to a file. Then prints them summed per stage (``python -m pipeline.<stage>``: its first
argument; Snakemake's own process: ``snakemake``), beside the whole tree's CPU.

Snakemake's `benchmark:` cpu_time samples a job with psutil now and then, so it misses
what a job spends between samples and after the last: on the 2,000-file compare run it gave
crop 30.1 CPU-s where the two crop processes spent 40.0 (bench/RESULTS.md). This counts
what each process spent, from the kernel, at its exit. A process killed by a signal, or
one that replaces itself (exec), writes no line; the shells between Snakemake and its jobs
are in the tree's total only.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from common import machine

SITECUSTOMIZE = '''\
import atexit, os, resource, sys, time
_started = time.perf_counter()

def _faceprep_process_cpu():
    own, waited = (resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    line = "\\t".join((str(os.getpid()), str(os.getppid()), f"{own.ru_utime + own.ru_stime:.3f}",
                      f"{waited.ru_utime + waited.ru_stime:.3f}", f"{time.perf_counter() - _started:.3f}",
                      " ".join(sys.argv)[:300].replace("\\t", " ").replace("\\n", " ")))
    with open(os.environ["FACEPREP_PROCESS_CPU"], "a") as f:
        f.write(line + "\\n")  # one short append a process: lines do not interleave

atexit.register(_faceprep_process_cpu)
'''


def stage_of(argv: str) -> str:
    """``pipeline.<stage>`` (its subcommand, if any) or ``snakemake`` or the script."""
    words = argv.split()
    script = words[0] if words else "?"
    name = Path(script).stem
    if Path(script).parent.name == "pipeline":
        sub = words[1] if len(words) > 1 and not words[1].startswith("-") else ""
        return f"{name} {sub}".strip()
    if "snakemake" in script:
        return "snakemake"
    return name


@contextlib.contextmanager
def counting_env(lines: Path | None = None):
    """Yields (env, lines): an environment whose Python processes each append their CPU
    line to ``lines`` (a temporary file unless given) when they exit."""
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "sitecustomize.py").write_text(SITECUSTOMIZE)
        lines = lines or Path(tmp, "processes.tsv")
        lines.unlink(missing_ok=True)
        yield {**os.environ, "FACEPREP_PROCESS_CPU": str(lines),
               "PYTHONPATH": os.pathsep.join(filter(None, (tmp, os.environ.get("PYTHONPATH"))))}, lines


def per_stage(lines: Path) -> dict[str, tuple[int, float, float]]:
    """{stage: (processes, CPU s, longest wall s)} of the lines the processes wrote. A
    process's CPU: its own and that of the children it waited for (a fork pool's workers
    end by os._exit, so they never write a line), less the children that wrote their own
    line; Snakemake's own process: its own only (its jobs are the other rows)."""
    records = [line.split("\t", 5) for line in lines.read_text().splitlines()] if lines.exists() else []
    recorded = defaultdict(float)
    for pid, ppid, own, waited, seconds, argv in records:
        recorded[ppid] += float(own) + float(waited)
    out: dict[str, list] = defaultdict(lambda: [0, 0.0, 0.0])
    for pid, ppid, own, waited, seconds, argv in records:
        stage = stage_of(argv)
        row = out[stage]
        row[0] += 1
        row[1] += float(own) + (0 if stage == "snakemake" else float(waited) - recorded[pid])
        row[2] = max(row[2], float(seconds))
    return {stage: (n, round(cpu, 2), round(longest, 2))
            for stage, (n, cpu, longest) in sorted(out.items(), key=lambda kv: -kv[1][1])}


def children_cpu() -> float:
    """User + system CPU seconds of every finished child process so far (the whole tree:
    parallel's jobs, snakemake's jobs), which the load of other processes does not inflate
    as much as wall time."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, help="keep the per-process lines here (TSV: pid, parent pid, "
                    "own CPU s, waited-for children's CPU s, wall s, argv)")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    command = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not command:
        ap.error("no command")
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {machine()}; load average "
          f"{os.getloadavg()[0]:.1f}; `{' '.join(command)}`", flush=True)
    with counting_env(a.out) as (env, lines):
        t0, cpu0 = time.perf_counter(), children_cpu()
        proc = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wall, tree = time.perf_counter() - t0, children_cpu() - cpu0
        stages = per_stage(lines)
    if proc.returncode:
        print(proc.stderr[-3000:], file=sys.stderr)
    counted = sum(cpu for _, cpu, _ in stages.values())
    print(f"exit {proc.returncode}; wall {wall:.2f} s; CPU of the whole tree {tree:.2f} s, of the "
          f"{sum(n for n, _, _ in stages.values())} Python processes {counted:.2f} s (the rest: "
          f"shells and other programs)")
    print("| process | count | CPU s | longest wall s |\n|---|---:|---:|---:|")
    for stage, (count, cpu, longest) in stages.items():
        print(f"| {stage} | {count} | {cpu:.2f} | {longest:.2f} |")
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
