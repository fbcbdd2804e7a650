"""faceprep's stages: one module per stage, each run as ``python -m pipeline.<stage>``."""
import os

# numpy asks the kernel for transparent huge pages (madvise) for every array of 4 MB and
# up. Where the kernel then compacts memory to find them (THP "madvise" with defrag
# "madvise", a common default), the gathers' short-lived arrays of tens of MB paid for it
# in system time, and unevenly: the 1M-row export gather 8.4-10.2 -> 7.3-8.0 CPU-s, the
# compare corpus's dedup 2.4-2.9 -> 1.9 s (bench/RESULTS.md, 2026-12-05). numpy reads
# this when it is imported, which is after this package in every ``python -m pipeline.*``;
# a value the user set wins.
os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")
