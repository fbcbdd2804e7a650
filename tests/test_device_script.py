"""bench/device.sh --smoke: every step of the device benchmark at toy size on this CPU, so the
script a GPU machine runs first never rots (issue 26 item 4)."""
from __future__ import annotations

import os
import re
import subprocess

from conftest import REPO


def test_device_script_smoke_fills_every_row(tmp_path):
    env = {**os.environ, "DEVICE_OUT": str(tmp_path)}
    proc = subprocess.run(["bash", str(REPO / "bench" / "device.sh"), "--smoke"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    block = (tmp_path / "device.md").read_text(encoding="utf-8")
    assert block.strip() in proc.stdout
    assert "- GPUs (nvidia-smi: name, driver, memory):" in block
    rows = [line for line in block.splitlines() if line.startswith("| ") and "---" not in line][1:]
    steps = {row.split("|")[1].strip().split(" ")[0] for row in rows}
    assert steps == {"finetune", "rank", "waifu2x", "`dataset`,"}, rows
    for row in rows:
        result = row.split("|")[3]
        assert "failed" not in result and "timed out" not in result, row
    finetune = [r for r in rows if r.startswith("| finetune")]
    assert len(finetune) == 2
    # TensorFlow is installed here: every training case is a measured number, the XLA and
    # mixed-precision cases included (or a reason the mode is unavailable on this CPU)
    for row in finetune:
        assert re.search(r"\d+(\.\d+)? sec/kimg", row), row
    assert any(re.search(r"faceprep default .*\| [\d.]+ images/s", r) for r in rows), rows
    assert any(re.search(r"waifu2x cpu \(gpuid=-1\) \| [\d.]+ images/s", r) for r in rows), rows
    dataset = [r for r in rows if r.startswith("| `dataset`")]
    assert [re.search(r"--cores (\d+)", r).group(1) for r in dataset] == ["1", "2"]
    kept = {re.search(r"(\d+) faces kept", r).group(1) for r in dataset}
    assert len(kept) == 1 and int(kept.pop()) > 0, dataset  # same faces at every core count
    logs = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert "waifu2x.log" in logs and "rank.log" in logs
