"""What every bench script needs: where things are and which machine produced a figure."""
from __future__ import annotations

import os
import platform
import sys
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
