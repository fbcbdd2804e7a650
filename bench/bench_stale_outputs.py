"""The end-of-run stale check (pipeline.console.stale_outputs) at 100k-1M dataset rows.

    python bench/bench_stale_outputs.py --rows 100000 [1000000]

Every run that has ranked outputs ends with this check (Snakefile onsuccess): it reads the
export manifest, the curated set's and the last round's set's manifests and compares the
(id, file, pixel hash, rejected) of each. The rows here are shaped like a real run's
(~1.6 KB of details JSON: crop, clean and normalize details with phash trims); 1% of them
rejected. Reported: CPU time (user + sys of a fresh subprocess: the machine is shared,
wall time is not a fair figure) and peak RSS, for the fitting case (nothing to say) and
the stale case (one pixel hash changed: the line is printed).
"""
from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import REPO, machine

CHILD = r"""
import resource, sys, time
from pipeline.console import stale_outputs
R = sys.argv[1]
line = stale_outputs(R, R + "/curated/manifest.tsv", R + "/rejects.txt")
u = resource.getrusage(resource.RUSAGE_SELF)
peak = max(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(u.ru_utime + u.ru_stime, peak // 1024, repr(line[:60]))
"""


def build(root: Path, rows: int) -> None:
    from pipeline.manifest import Row, write_manifest
    from pipeline.rounds import curated_rows
    R = root / "results" / "t"
    trims = "950a6a35f436d3c9" * 48  # the phash trims a real row carries (~770 chars)
    dataset = []
    for n in range(rows):
        i = hashlib.sha256(str(n).encode()).hexdigest()[:16]
        details = {"brightness": 62.94, "colorful_fraction": 0.21, "contrast": 48.48, "file_bytes": 91349,
                   "method": "none", "phash": "951a6a35f466f341", "phash_mirror": "c04f3f70a173e694",
                   "phash_trims": trims, "pixel_sha256": hashlib.sha256(i.encode()).hexdigest(),
                   "sharpness": 1046.8, "source": {"format": "JPEG", "height": 332, "phash_trims": trims,
                                                   "quality": 96, "width": 500},
                   "upscale": {"factor": 1}, "normalize": {"from": [500, 332], "mode": "RGB", "scale": 0.064},
                   "index": n, "tfrecord_position": n}
        dataset.append(Row(id=i, source=f"raw/{n}.jpg", path=f"results/t/normalize/0/{i}.png", width=256,
                           height=256, details=details))
    rejects = {r.id for r in dataset[::100]}
    (R / "rank").mkdir(parents=True)
    (R / "rank" / "scores.tsv").write_text("id\tscore\n")
    write_manifest(R / "export" / "manifest.tsv", dataset)
    write_manifest(R / "curated" / "manifest.tsv", curated_rows(dataset, rejects))
    (R / "rejects.txt").write_text("".join(f"{i}\n" for i in sorted(rejects)))


def measure(root: Path) -> tuple[float, int, str]:
    out = subprocess.run([sys.executable, "-c", CHILD, str(root / "results" / "t")], cwd=REPO, check=True,
                         capture_output=True, text=True, env={"PYTHONPATH": str(REPO)}).stdout.split(" ", 2)
    return float(out[0]), int(out[1]), out[2].strip()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, nargs="+", default=[100_000])
    a = p.parse_args()
    print(f"# {machine()}")
    for rows in a.rows:
        root = Path(tempfile.mkdtemp(prefix="stale_bench_"))
        try:
            build(root, rows)
            cpu, mib, line = measure(root)
            print(f"{rows} rows, fitting: {cpu:.2f} CPU-s, peak {mib} MiB, line {line}")
            export = root / "results" / "t" / "export" / "manifest.tsv"
            text = export.read_text()
            # one image's pixels changed: its pixel hash in the export manifest
            h = text.split('pixel_sha256"":""', 2)[1][:64]
            export.write_text(text.replace(h, "0" * 64, 1))
            cpu, mib, line = measure(root)
            print(f"{rows} rows, stale:   {cpu:.2f} CPU-s, peak {mib} MiB, line {line}")
        finally:
            shutil.rmtree(root)


if __name__ == "__main__":
    main()
