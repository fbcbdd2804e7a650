"""What every bench script needs: where things are and which machine produced a figure."""
from __future__ import annotations

import importlib.util
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FACEPREP_SHARED", REPO.parent / "shared")).resolve()
TESTDATA = SHARED / "testdata"

for path in (REPO, REPO / "tests"):  # pipeline/, gan/ and the test-data helpers in conftest
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> str:
    """'N cores, <CPU model>' for RESULTS.md lines."""
    return f"{os.cpu_count()} cores, {cpu_model()}"


def module_at(commit: str, relpath: str, name: str):
    """``relpath`` as it was at ``commit`` (git show), imported as module ``name``: the
    "before" side of a before/after bench, without checking the old commit out."""
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{commit}:{relpath}"],
                            capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def spearman(a, b) -> float:
    """Spearman rank correlation of two score arrays (ties broken by position)."""
    import numpy as np
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def auc(scores, junk) -> float:
    """P(a junk image scores below a face), ties count half: how well ``scores`` (low = bad)
    put the ``junk`` mask (numpy bool array) at the bottom."""
    j, f = scores[junk], scores[~junk]
    return float(((j[:, None] < f[None, :]).sum() + 0.5 * (j[:, None] == f[None, :]).sum())
                 / (len(j) * len(f)))
