"""Manifest gathers at 100k-1M rows: memory per row, export's and dedup's own work.

    python bench/bench_gathers.py --rows 100000 1000000 [--old-repo /tmp/fp_old]

Writes synthetic manifests shaped like a real run's with the default config (64 clean shards
whose rows carry crop + clean details as the clean shard step writes them with trims, flips
and sources on: ~1.6 KB of JSON; row ids as ingest makes them, a hash of the path; 64
normalize shards of the rows dedup keeps plus upscale/normalize details; dedup.tsv), then
runs each measurement in a fresh subprocess and reports its CPU time (user + sys, from
getrusage: the machine is shared, wall time is not a fair figure) and peak RSS:
  read       read_manifests over the 64 normalize shards; memory per row held
  export     export's gather without pixels, as the workflow's export rule runs it: the
             normalize shards (dedup's survivors) sorted by id, the export manifest with
             index + tfrecord_position
  dedup      `pipeline.dedup` over the 64 clean shards (hashes, exact + near search)
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
    assert len(held) == rows - rows // 20  # dedup's survivors
elif what == "export":
    from pipeline import export
    if hasattr(export, "write_dataset_manifest"):  # the streamed gather (issue 17 item 4)
        # as the workflow's export rule runs it: normalize lists dedup's survivors only
        export.write_dataset_manifest(norm, set(), folder / "export.tsv")
    else:
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
    import yaml
    cfg = yaml.safe_load(open(sys.argv[4]).read())["clean"]
    cfg["near_duplicates"]["trims"] = sys.argv[5] == "on"
    args = ["--output", str(folder / "dedup_out.tsv"), "--config", json.dumps(cfg),
            *map(str, sorted(folder.glob("clean/*/manifest.tsv")))]
    try:
        from pipeline import dedup
        dedup.main(args)
    except ImportError:  # an --old-repo from before the split (issue 25): clean's subcommand
        from pipeline import clean
        clean.main(["dedup", *args])
t1 = resource.getrusage(resource.RUSAGE_SELF)
peak = hwm_kib()
print("RESULT", json.dumps({"cpu_s": round(t1.ru_utime + t1.ru_stime - t0.ru_utime - t0.ru_stime, 2),
                            "peak_rss_mib": round(peak / 1024, 1),
                            "bytes_per_row": round((peak - base) * 1024 / rows)}))
"""


def clean_details(i: int, rng: random.Random, trims: bool = True) -> dict:
    """What a clean row carries with the default config (trims on, flips, sources): crop
    (animeface) details, quality measures, pixel digest, pHash + mirror + 24 window hashes,
    and the whole source's block (size, format, quality, hash + mirror + 48 windows), as
    `pipeline/clean.py` writes them (~1.6 KB of JSON); ``trims=False``: no window hashes,
    as clean writes them with near_duplicates.trims: false."""
    x, y, w = rng.randrange(2000), rng.randrange(2000), rng.randrange(100, 900)
    h = ["%016x" % rng.getrandbits(64) for _ in range(76)]
    if not trims:
        h[2:26] = h[28:76] = [""]
    return {"box": [x, y, w, w], "crop": [x - w // 4, y - w // 2, x + w + w // 4, y + w + w // 4],
            "load": {"mode": "RGB"}, "margin": 0.25, "method": "animeface",
            "neighbours": rng.randrange(3, 40), "padded": [0, 0, 0, 0],
            "file_bytes": rng.randrange(10**4, 10**7), "sharpness": round(rng.random() * 3000, 2),
            "brightness": round(rng.random() * 255, 2), "contrast": round(rng.random() * 80, 2),
            "pixel_sha256": "%064x" % rng.getrandbits(256), "phash": h[0], "phash_mirror": h[1],
            "phash_trims": "".join(h[2:26]),
            "source": {"format": "JPEG", "height": 2400, "width": 1800, "quality": 90,
                       "phash": h[26], "phash_mirror": h[27], "phash_trims": "".join(h[28:76])}}


def flip_bit(hex_hash: str, rng: random.Random) -> str:
    return "%016x" % (int(hex_hash, 16) ^ (1 << rng.randrange(64)))


def make_manifests(folder: Path, rows: int, shards: int = 64, trims: bool = True, layout: str = "file") -> None:
    """64 clean shards (every 50th row an exact copy, every 20th a repost of the row 7
    before at half the size: face and source hashes 1 bit off), dedup.tsv (the near copies dropped) and 64
    normalize shards (the rows dedup keeps, with upscale/normalize details: upscale leaves
    dedup's duplicates out, so the workflow's export reads no dedup.tsv). Written line by line:
    nothing is held but the hashes. ``layout`` "file": the hashes (and the fixed columns)
    in each clean shard's hashes file, not in the details (``clean.split_hashes``, as clean
    writes them since issue 24 item 4);
    "details": in the details, as clean wrote them before."""
    from pipeline.clean import hashes_path, split_hashes, write_hashes
    from pipeline.ingest import source_id
    from pipeline.manifest import HEADER_BYTES, Row, row_line
    near = {"method": "phash", "hash_size": 8}
    arrays: list[dict[str, list[bytes]]] = [{} for _ in range(shards)]  # each row's, per shard

    def opened(stage):
        out = []
        for s in range(shards):
            (folder / stage / f"{s:02d}").mkdir(parents=True, exist_ok=True)
            f = open(folder / stage / f"{s:02d}" / "manifest.tsv", "wb")
            f.write(HEADER_BYTES)
            out.append(f)
        return out
    clean, norm = opened("clean"), opened("normalize")
    dedup = open(folder / "dedup.tsv", "wb")
    dedup.write(HEADER_BYTES)
    rng = random.Random(0)
    recent: list[dict] = []
    sids: list[str] = []  # the last 8 rows' source ids
    # the (never written) image paths name the same folder whatever the layout: the two
    # layouts' dedup.tsv compare (bench/same_without_hashes.py)
    root = folder.parent / folder.name.removesuffix("-details")
    for i in range(rows):
        d = clean_details(i, rng, trims)
        if not trims:
            del d["phash_trims"], d["source"]["phash_trims"]
        if i % 50 == 49 and len(recent) >= 7:
            d = {**recent[-7], "box": d["box"]}
        elif i % 20 == 19 and len(recent) >= 7:
            base = recent[-7]
            d = {**base, "phash": flip_bit(base["phash"], rng), "pixel_sha256": d["pixel_sha256"],
                 "box": [v // 2 for v in base["box"]], "crop": [v // 2 for v in base["crop"]],
                 "source": {**base["source"], "phash": flip_bit(base["source"]["phash"], rng),
                            "width": base["source"]["width"] // 2,
                            "height": base["source"]["height"] // 2}}
        recent = (recent + [d])[-8:]
        w = d["box"][2]
        # ids as ingest makes them (a hash of the path): rows in path order, ids in none
        source = f"raw/{i // 1000:04d}/img{i:07d}.jpg"
        sid = source_id(source)
        sids = (sids + [sid])[-8:]
        row = Row(id=f"{sid}-f0", source=source, parent_id=sid, path=f"{root}/crop/{i % shards:02d}/{sid}-f0.png",
                  width=w, height=w, details=d)
        if layout == "file":  # the arrays of one row: concatenated, a shard's
            (row,), one = split_hashes([row], near)
            for name, data in one.items():
                arrays[i % shards].setdefault(name, []).append(data)
        clean[i % shards].write(row_line(row).encode())
        dedup.write(row_line(row.drop("near_duplicate", details={"duplicate_of": f"{sids[-8]}-f0",
                                                                 "distance": 1})
                             if i % 20 == 19 else row).encode())
        if i % 20 == 19:  # dedup's duplicate: upscale leaves it out, normalize never lists it
            continue
        norm[i % shards].write(row_line(row.keep(
            path=f"{root}/normalize/{i % shards:02d}/{sid}-f0.png", width=512, height=512,
            details={"upscaler": "lanczos", "upscale": {"factor": 2, "from": [w, w]},
                     "normalize": {"scale": round(512 / (2 * w), 6), "from": [2 * w, 2 * w]}})).encode())
    for f in clean + norm + [dedup]:
        f.close()
    if layout == "file":
        for s in range(shards):
            write_hashes(hashes_path(folder / "clean" / f"{s:02d}" / "manifest.tsv"),
                         {name: b"".join(parts) for name, parts in arrays[s].items()}, near)


def run_child(repo: Path, what: str, folder: Path, rows: int, trims: bool = True) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{repo}:{REPO}"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, what, str(folder), str(rows),
                           str(REPO / "config.yaml"), "on" if trims else "off"], env=env, capture_output=True, text=True,
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
    ap.add_argument("--keep", action="store_true", help="keep the manifests (and reuse them)")
    ap.add_argument("--trims", choices=["on", "off"], default="on",
                    help="clean.near_duplicates.trims of the rows and the dedup run (default on)")
    ap.add_argument("--layout", choices=["file", "details"], default="file",
                    help="clean's hashes in a binary file per shard (default, since issue 24 item 4)"
                         " or in the details (as before; for an --old-repo from before)")
    a = ap.parse_args(argv)
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {machine()}; "
          f"load average {os.getloadavg()[0]:.1f}")
    for rows in a.rows:
        folder = Path(a.workdir) / f"{rows}-trims-{a.trims}{'-details' if a.layout == 'details' else ''}"
        if not (a.keep and (folder / "dedup.tsv").exists()):
            shutil.rmtree(folder, ignore_errors=True)
            # in a child: this process stays small, so the measuring children start small
            subprocess.run([sys.executable, "-c", "import sys; sys.path[:0] = sys.argv[5:]; "
                            "from bench_gathers import make_manifests; from pathlib import Path; "
                            "make_manifests(Path(sys.argv[1]), int(sys.argv[2]), trims=sys.argv[3] == 'on', layout=sys.argv[4])",
                            str(folder), str(rows), a.trims, a.layout, str(REPO / "bench"), str(REPO)], check=True)
        mib = sum(p.stat().st_size for p in folder.glob("normalize/*/manifest.tsv")) / 2**20
        print(f"rows {rows}: normalize manifests {mib:.0f} MiB")
        for label, repo in [("before", a.old_repo), ("after", str(REPO))]:
            if not repo:
                continue
            for what in a.only:
                print(f"  {label:6s} {what:6s} {run_child(Path(repo), what, folder, rows, a.trims == 'on')}",
                      flush=True)
                out = {"export": "export.tsv", "dedup": "dedup_out.tsv"}.get(what)
                if out:  # kept to check both code paths wrote the same bytes
                    (folder / out).rename(folder / f"{what}-{label}.tsv")
        for what in ("export", "dedup"):
            if a.old_repo and what in a.only:
                same = (folder / f"{what}-before.tsv").read_bytes() == (folder / f"{what}-after.tsv").read_bytes()
                print(f"  {what} output before/after byte-identical: {same}")
        if not a.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
