#!/usr/bin/env bash
# The device benchmark (issue 26 item 4): `bash bench/device.sh` on any machine (it finds the
# GPUs and cores it has), `--smoke` for every step at toy size on the CPU (CI). Prints one
# markdown block for bench/RESULTS.md; bench/device.py says what each step measures.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then :; elif [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
exec "$PYTHON" bench/device.py "$@"
