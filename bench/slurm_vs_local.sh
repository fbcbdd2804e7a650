#!/usr/bin/env bash
# Wall time of `ranked_dataset` on the tiny test config (tests/conftest.py TINY_CONFIG, the
# raw subset of tests/test_determinism.py) on the local executor and through profiles/slurm
# on the single-node test cluster (tests/cluster/start_slurm.sh), one after the other on
# the same machine. Root; needs `make cluster-packages`.
#   bench/slurm_vs_local.sh [WORKDIR]      (default /tmp/fp-slurm-bench; emptied first)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(realpath -m "${1:-/tmp/fp-slurm-bench}")
PY=$REPO/.venv/bin/python
rm -rf "$WORK"
mkdir -p "$WORK"
trap '"$REPO/tests/cluster/stop_slurm.sh" "$WORK/slurm"' EXIT

# two identical working folders (raw copy with fixed mtimes + the tiny config)
cd "$REPO/tests"
"$PY" - "$WORK" <<'EOF'
import sys
from pathlib import Path
from conftest import write_config
from test_determinism import make_raw
for name in ("local", "cluster"):
    w = Path(sys.argv[1]) / name
    make_raw(w)
    write_config(w)
EOF

t0=$(date +%s.%N)
"$REPO/tests/cluster/start_slurm.sh" "$WORK/slurm" >/dev/null
t1=$(date +%s.%N)
export SLURM_CONF=$WORK/slurm/slurm.conf
echo "date $(date -u '+%F %H:%M UTC'), nproc $(nproc), load before: $(cut -d' ' -f1-3 /proc/loadavg)"
awk -v a="$t0" -v b="$t1" 'BEGIN {printf "cluster start: %.1f s\n", b - a}'

run() {  # run NAME ARGS...: time one snakemake run in WORK/NAME
  local name=$1 s e; shift
  s=$(date +%s.%N)
  "$PY" -m snakemake -s "$REPO/Snakefile" --directory "$WORK/$name" \
    --configfile "$WORK/$name/test_config.yaml" "$@" ranked_dataset >"$WORK/$name.log" 2>&1
  e=$(date +%s.%N)
  awk -v n="$name" -v a="$s" -v b="$e" -v j="$(grep -c '^\(local\)\?rule ' "$WORK/$name.log")" \
    'BEGIN {printf "%s: %.1f s, %d jobs\n", n, b - a, j}'
}
run local --cores 2
run cluster --profile "$REPO/profiles/slurm" --workflow-profile none \
  --slurm-init-seconds-before-status-checks 2
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
sacct -X -n -P --format Comment,Elapsed | sort
