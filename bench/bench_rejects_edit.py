"""What a rejects edit costs on the demo: one round_kimg continuation per cleaning round.

    python bench/bench_rejects_edit.py WORKDIR [--rejects 2] [--cores 2]

WORKDIR gets demo/raw (demo/make_raw.py) and a first `snakemake ranked_dataset` on
characters/demo.yaml when it has none; then the worst-scored N images of the first ranking
go into characters/demo.rejects.txt and ranked_dataset runs again. Prints, for the first
run and for the rejects edit, each round's training (kimg trained, seconds from the
benchmark files) and the rerun's wall time.
"""
from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gan.runs import network_extra  # noqa: E402
from pipeline.rank import read_scores  # noqa: E402


def snakemake(workdir: Path, cores: int) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
                    str(workdir), "--configfile", str(REPO / "characters" / "demo.yaml"), "--cores",
                    str(cores), "ranked_dataset"], cwd=workdir, check=True, capture_output=True)
    return time.perf_counter() - start


def seconds(bench: Path) -> float:
    with open(bench, newline="") as f:
        return float(next(csv.DictReader(f, delimiter="\t"))["s"])


def training(R: Path) -> list[str]:
    rounds = sorted(R.glob("finetune/round-*/network-final.npz")) + [R / "finetune" / "network-final.npz"]
    benches = sorted(R.glob("benchmarks/finetune/round-*.tsv")) + [R / "benchmarks" / "finetune" / "all.tsv"]
    out = []
    for k, (net, bench) in enumerate(zip(rounds, benches), 1):
        extra = network_extra(net)
        out.append(f"round {k}: run {extra['run']['id']} trained {extra['cur_nimg'] / 1000:g} kimg "
                   f"from {extra['run']['warm_start']['from']}, finetune job {seconds(bench):.1f} s")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workdir", type=Path)
    p.add_argument("--rejects", type=int, default=2)
    p.add_argument("--cores", type=int, default=2)
    a = p.parse_args()
    R = a.workdir / "results" / "demo"
    if not (R / "rank" / "scores.tsv").exists():
        subprocess.run([sys.executable, str(REPO / "demo" / "make_raw.py"), "demo/raw"], cwd=a.workdir, check=True)
        print(f"first run: {snakemake(a.workdir, a.cores):.1f} s")
    print("before the edit:", *training(R), sep="\n  ")
    worst = [s.id for s in read_scores(R / "rank" / "scores.tsv")][: a.rejects]
    rejects = a.workdir / "characters" / "demo.rejects.txt"
    rejects.parent.mkdir(exist_ok=True)
    rejects.write_text("".join(f"{i}\n" for i in worst))
    wall = snakemake(a.workdir, a.cores)
    print(f"rejects edit ({len(worst)} ids): ranked_dataset rerun {wall:.1f} s wall", *training(R), sep="\n  ")


if __name__ == "__main__":
    main()
