"""The device benchmark (issue 26 item 4): one run on whatever machine this is.

    bash bench/device.sh            # full: 512 px config-f training and ranking, waifu2x,
                                    #       the 2,000-file `dataset` run at 1..nproc cores
    bash bench/device.sh --smoke    # every step at toy size on the CPU (CI runs this)

It finds the GPUs (nvidia-smi, TensorFlow, Vulkan) and cores the machine has, runs each
step as its own bench script in a child process with a time limit, and prints ONE markdown
block for bench/RESULTS.md (also written to bench/out/device/device.md, or $DEVICE_OUT).
A step that cannot run here (TensorFlow missing, no GPU for a 512 px network) gets a row
that says why, never a number: GPU figures are measured, never estimated.

Steps (full mode):
1. finetune sec/kimg at 512 px, config-f (channel_base 32768, max 512, latent 512,
   mapping 8): fp32 and mixed precision, each without and with XLA, at batch 16; mixed
   precision at batch 32; steady-state peak GPU memory for each (bench_finetune.py).
2. rank images/s at 512 px with a config-f D (bench_rank.py: the seed's 1-pass way and
   faceprep's default).
3. waifu2x 256 -> 512 images/s on each Vulkan GPU and on the ncnn CPU path (bench_upscale.py).
4. the 2,000-file `dataset` run (bench/compare.py --mode fair --only faceprep) at 1, 2, 4,
   8, 16 cores (up to nproc): wall, CPU seconds, faces kept. Without TensorFlow the run
   leaves the TFRecords out (export.tfrecords: false) and says so.
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
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"


def run(cmd: list[str], timeout: float, log: Path) -> tuple[int | None, str]:
    """(exit code or None on time-out, stdout+stderr); the output is also kept in ``log``."""
    start = time.time()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
        code, text = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        out = e.stdout or b""
        code, text = None, out.decode(errors="replace") if isinstance(out, bytes) else out
    log.write_text(f"$ {' '.join(cmd)}\n# {time.time() - start:.1f} s\n{text}", encoding="utf-8")
    return code, text


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else "no output")[:200].replace("|", "/")


def failure(code, text: str, timeout: float) -> str:
    return f"timed out after {timeout:.0f} s" if code is None else f"failed (exit {code}): {last_line(text)}"


def nvidia_gpus() -> list[str]:
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def tensorflow_status(py: str) -> tuple[str | None, int, str]:
    """(TensorFlow version or None, GPUs it sees, why not when it cannot be imported)."""
    code = ("import tensorflow as tf, json; print(json.dumps([tf.__version__, "
            "len(tf.config.list_physical_devices('GPU'))]))")
    try:
        proc = subprocess.run([py, "-c", code], capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return None, 0, "importing tensorflow timed out"
    if proc.returncode != 0:
        return None, 0, last_line(proc.stderr)
    version, gpus = json.loads(proc.stdout.strip().splitlines()[-1])
    return version, gpus, ""


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def finetune_rows(py, smoke, tf_version, tf_gpus, tf_error, logs) -> list[str]:
    if smoke:
        shape = ["--resolution", "32", "--channel-base", "256", "--channel-max", "32",
                 "--latent", "32", "--mapping", "2", "--kimg", "0.016", "--images", "16"]
        # fp32 and mixed precision; XLA is left to full mode: compiling even the tiny
        # network with XLA on 2 shared CPU cores ran past 300 s (tests/test_gan_* cover it)
        cases = [("fp32", "false", False, 4), ("mixed", "true", False, 4)]
        timeout = 300
    else:
        shape = ["--resolution", "512", "--channel-base", "32768", "--channel-max", "512",
                 "--latent", "512", "--mapping", "8", "--kimg", "0.2", "--images", "64"]
        cases = [("fp32", "false", False, 16), ("fp32", "false", True, 16),
                 ("mixed", "true", False, 16), ("mixed", "true", True, 16),
                 ("mixed", "true", False, 32)]
        timeout = 150
    rows = []
    for precision, flag, xla, batch in cases:
        label = f"| finetune {'32 px tiny' if smoke else '512 px config-f'} | {precision}, XLA {'on' if xla else 'off'}, batch {batch} |"
        if tf_version is None:
            rows.append(f"{label} not measured: TensorFlow cannot be imported here ({tf_error}) | |")
            continue
        if not smoke and not tf_gpus:
            rows.append(f"{label} not measured: TensorFlow {tf_version} sees no GPU | |")
            continue
        cmd = [py, str(BENCH / "bench_finetune.py"), *shape, "--batch", str(batch),
               "--mixed-precision", flag] + (["--xla"] if xla else [])
        code, text = run(cmd, timeout, logs / f"finetune_{precision}_xla{int(xla)}_b{batch}.log")
        m = re.search(r"([\d.]+) sec/kimg.*?(?:peak GPU memory ([\d.]+) GiB)?$", text, re.M)
        if code == 0 and m:
            mixed_used = re.search(r"mixed precision (on|off)", text).group(1)
            note = "" if (mixed_used == "on") == (precision == "mixed") else f" (mixed precision {mixed_used}: not available here)"
            rows.append(f"{label} {m.group(1)} sec/kimg{note} | {m.group(2) + ' GiB' if m.group(2) else '-'} |")
        else:
            rows.append(f"{label} {failure(code, text, timeout)} | |")
    return rows


def rank_rows(py, smoke, tf_version, tf_gpus, tf_error, logs) -> list[str]:
    label = f"| rank {'32 px tiny D' if smoke else '512 px config-f D'} |"
    if tf_version is None:
        return [f"{label} | not measured: TensorFlow cannot be imported here ({tf_error}) | |"]
    if not smoke and not tf_gpus:
        return [f"{label} | not measured: TensorFlow {tf_version} sees no GPU | |"]
    args = (["--resolution", "32", "--images", "16", "--channel-base", "256", "--channel-max", "32",
             "--batch", "16"] if smoke else
            ["--resolution", "512", "--images", "256", "--channel-base", "32768", "--channel-max", "512",
             "--batch", "64"])
    timeout = 300 if smoke else 150
    code, text = run([py, str(BENCH / "bench_rank.py"), *args, "--stability-images", "0"],
                     timeout, logs / "rank.log")
    rows = []
    for m in re.finditer(r"^\| (seed ranker\.py style[^|]*|faceprep default[^|]*) \| (\d+) \| [\d.]+ \| ([\d.]+) \|", text, re.M):
        rows.append(f"{label} {m.group(1).strip()} ({m.group(2)} D evaluations/image) | {m.group(3)} images/s | |")
    return rows or [f"{label} | {failure(code, text, timeout)} | |"]


def waifu2x_rows(py, smoke, logs) -> list[str]:
    size = 64 if smoke else 256
    args = ["--sizes", str(size), "--repeat", "1" if smoke else "10"]
    timeout = 300
    code, text = run([py, str(BENCH / "bench_upscale.py"), *args], timeout, logs / "waifu2x.log")
    devices = re.search(r"^# Vulkan devices: (.*)$", text, re.M)
    rows = [f"| waifu2x | Vulkan devices seen | {devices.group(1).strip().replace('|', '/') if devices else 'unknown'} | |"]
    for m in re.finditer(rf"^\| (waifu2x [^|]+) \| {size} -> {2 * size} \| ([\d.]+) \|", text, re.M):
        seconds = float(m.group(2))
        rows.append(f"| waifu2x {size} -> {2 * size} | {m.group(1).strip()} | {1 / seconds:.1f} images/s "
                    f"({seconds:.3f} s/image) | |")
    if len(rows) == 1:
        rows.append(f"| waifu2x {size} -> {2 * size} | | {failure(code, text, timeout)} | |")
    return rows


def dataset_rows(py, smoke, tf_version, logs) -> list[str]:
    total = 60 if smoke else 2000
    ncores = len(os.sched_getaffinity(0))
    counts = [c for c in ((1, 2) if smoke else (1, 2, 4, 8, 16)) if c <= ncores] or [ncores]
    if not smoke and ncores not in counts and ncores > counts[-1]:
        counts.append(ncores)
    workdir = Path(tempfile.mkdtemp(prefix="faceprep-device-"))
    extra = [] if tf_version else ["--no-tfrecords"]
    note = "" if tf_version else " (TFRecords left out: no TensorFlow here)"
    rows = []
    try:
        for i, cores in enumerate(counts):
            cmd = [py, str(BENCH / "compare.py"), "--mode", "fair", "--only", "faceprep",
                   "--target", "dataset", "--total", str(total), "--cores", str(cores),
                   "--workdir", str(workdir), *extra] + (["--keep-corpus"] if i else [])
            timeout = 600 if smoke else 240
            code, text = run(cmd, timeout, logs / f"dataset_{cores}cores.log")
            label = f"| `dataset`, {total} files{note} | --cores {cores} |"
            try:
                report = json.loads(text[text.index("{"):text.rindex("}") + 1])
                fp = report["faceprep"]
                rows.append(f"{label} {fp['wall_s']} s wall, {fp['cpu_s']} CPU-s, "
                            f"{fp['images_per_s']} files/s, {fp['kept']} faces kept | |")
            except (ValueError, KeyError):
                rows.append(f"{label} {failure(code, text, timeout)} | |")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="every step at toy size on the CPU")
    ap.add_argument("--only", nargs="+", choices=["finetune", "rank", "waifu2x", "dataset"])
    a = ap.parse_args(argv)
    py = sys.executable
    out = Path(os.environ.get("DEVICE_OUT", REPO / "bench" / "out" / "device"))
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    started = time.time()
    gpus = nvidia_gpus()
    tf_version, tf_gpus, tf_error = tensorflow_status(py)
    steps = a.only or ["finetune", "rank", "waifu2x", "dataset"]
    rows: list[str] = []
    for step in steps:
        print(f"device bench: {step} ...", file=sys.stderr, flush=True)
        if step == "finetune":
            rows += finetune_rows(py, a.smoke, tf_version, tf_gpus, tf_error, logs)
        elif step == "rank":
            rows += rank_rows(py, a.smoke, tf_version, tf_gpus, tf_error, logs)
        elif step == "waifu2x":
            rows += waifu2x_rows(py, a.smoke, logs)
        else:
            rows += dataset_rows(py, a.smoke, tf_version, logs)
    block = "\n".join([
        f"## Device benchmark{' (smoke: toy sizes, not figures)' if a.smoke else ''}: "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}",
        "",
        f"- Command: `bash bench/device.sh{' --smoke' if a.smoke else ''}`"
        f"{' --only ' + ' '.join(a.only) if a.only else ''} ({time.time() - started:.0f} s in all)",
        f"- Machine: {platform.node()}, {len(os.sched_getaffinity(0))} cores ({cpu_model()}), "
        f"load average at the end {', '.join(f'{x:.1f}' for x in os.getloadavg())}",
        f"- GPUs (nvidia-smi: name, driver, memory): {'; '.join(gpus) if gpus else 'none'}",
        f"- Python {platform.python_version()}; TensorFlow: "
        + (f"{tf_version}, {tf_gpus} GPU(s) visible" if tf_version else f"not importable ({tf_error})"),
        "",
        "| step | case | result | peak GPU memory |",
        "|---|---|---|---|",
        *rows,
    ])
    (out / "device.md").write_text(block + "\n", encoding="utf-8")
    print(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
