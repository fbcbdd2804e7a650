#!/usr/bin/env bash
# The seed's shell recipe, for benchmarks against faceprep (bench/compare.py runs it):
#   crop (bench/seed_crop.py, lbpcascade_animeface, one python process per image under GNU
#   parallel) -> fdupes -rdN -> delete images with `identify -format %k` < 257 colours ->
#   mogrify -resize 512x512\> -extent 512x512\> -gravity center -background black ->
#   identify check that every file is 512x512.
#
#   bench/seed_pipeline.sh RAW_DIR OUT_DIR [MIN_FACE=250] [JOBS=nproc] [BATCH=1]
#
# BATCH=1 is the literal recipe: one process per image in every step. BATCH=N runs it as a
# careful engineer would: crop.py on N images per process, ImageMagick on as many files per
# call as fit (parallel -X), one thread per job (OpenCV and ImageMagick), JOBS jobs at once.
#
# RAW_DIR is only read. Prints "SEED_TIME <step> <seconds>" per step and
# "SEED_KEPT <n>" / "SEED_BAD_SIZE <n>" at the end; OUT_DIR.map.tsv maps crop <n>-<k>.png
# to its source (line n). Installs Debian's imagemagick,
# parallel and fdupes when missing (needs root or sudo).
set -euo pipefail

RAW=$(realpath "$1")
OUT=$2
MIN_FACE=${3:-250}
JOBS=${4:-$(nproc)}
BATCH=${5:-1}
HERE=$(cd "$(dirname "$0")" && pwd)
PYTHON=${PYTHON:-python3}
CASCADE=${FACEPREP_ANIMEFACE_CASCADE:-$HERE/../../shared/models/lbpcascade_animeface.xml}

need=()
command -v parallel >/dev/null || need+=(parallel)
command -v fdupes >/dev/null || need+=(fdupes)
{ [ -x /usr/bin/mogrify ] && [ -x /usr/bin/identify ]; } || need+=(imagemagick)
if [ ${#need[@]} -gt 0 ]; then
    SUDO=$([ "$(id -u)" -eq 0 ] && echo "" || echo sudo)
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Debian's ImageMagick, whatever else is earlier on PATH
IDENTIFY=/usr/bin/identify
MOGRIFY=/usr/bin/mogrify

mkdir -p "$OUT"
OUT=$(realpath "$OUT")
MAP=$OUT.map.tsv   # <job number> TAB <source path>: which source each <n>-<k>.png came from
export PYTHON CASCADE MIN_FACE OUT IDENTIFY
if [ "$BATCH" -gt 1 ]; then
    export MAGICK_THREAD_LIMIT=1 OMP_NUM_THREADS=1  # parallel gives each job its own core
fi

elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.3f", b - a }'; }

step() {  # step NAME COMMAND...: run and time one stage
    local name=$1; shift
    local t0; t0=$(date +%s.%N)
    "$@"
    echo "SEED_TIME $name $(elapsed "$t0")"
}

crop_all() {
    # {#} (the job number = line in $MAP) keeps names unique across folders
    find "$RAW" -type f -print0 | sort -z > "$MAP.list"
    tr '\0' '\n' < "$MAP.list" | awk '{ print NR "\t" $0 }' > "$MAP"
    if [ "$BATCH" -gt 1 ]; then  # "<line number>\t<path>" items, BATCH per process
        parallel -j "$JOBS" -n "$BATCH" -a "$MAP" \
            "$PYTHON" "$HERE/seed_crop.py" --batch "$CASCADE" "$OUT" "$MIN_FACE" 2>/dev/null || true
    else
        parallel -0 -j "$JOBS" -a "$MAP.list" \
            '"$PYTHON" '"$HERE"'/seed_crop.py "$CASCADE" {} "$OUT/{#}-" "$MIN_FACE"' 2>/dev/null || true
    fi
    rm -f "$MAP.list"
}

dedup_exact() {
    fdupes -rdN "$OUT" >/dev/null 2>&1
}

drop_gray() {
    if [ "$BATCH" -gt 1 ]; then  # crop names are <n>-<k>.png: no spaces to split on
        find "$OUT" -type f -print0 | parallel -0 -X -j "$JOBS" "$IDENTIFY" -format "'%k %i\n'" 2>/dev/null \
            | awk '$1 < 257 { print $2 }' | xargs -r rm -f
        return
    fi
    find "$OUT" -type f -print0 | parallel -0 -j "$JOBS" \
        'if [ "$("$IDENTIFY" -format %k {} 2>/dev/null || echo 0)" -lt 257 ]; then rm -f {}; fi'
}

pad_resize() {
    find "$OUT" -type f -print0 | parallel -0 $([ "$BATCH" -gt 1 ] && echo -X) -j "$JOBS" \
        "$MOGRIFY" -resize 512x512\\\> -extent 512x512\\\> -gravity center -background black {}
}

check_size() {
    BAD=$(find "$OUT" -type f -print0 | parallel -0 $([ "$BATCH" -gt 1 ] && echo -X) -j "$JOBS" "$IDENTIFY" | grep -Fvc " 512x512 " || true)
}

T0=$(date +%s.%N)
step crop crop_all
step fdupes dedup_exact
step grayscale drop_gray
step mogrify pad_resize
step identify check_size
echo "SEED_TIME total $(elapsed "$T0")"
echo "SEED_KEPT $(find "$OUT" -type f | wc -l)"
echo "SEED_BAD_SIZE $BAD"
