"""The dataset fingerprint: what a training set is (its ids and image bytes), below both
packages: gan.runs names run folders after it, pipeline.rounds writes it beside each set and
the report compares it with a network's.

It reads a stage manifest (pipeline/manifest.py writes them) with the csv module: the
format is TSV that ``csv.reader(f, delimiter="\\t")`` reads back exactly, so this needs
no part of the pipeline package.
"""
from __future__ import annotations

import csv
import hashlib
import os
import sys
from concurrent.futures import ThreadPoolExecutor

from util.files import ENCODING, ERRORS, file_sha256


def kept_images(manifest: str | os.PathLike) -> list[tuple[str, str]]:
    """(id, path) of every kept row of a stage manifest, in file order."""
    csv.field_size_limit(sys.maxsize)  # a row's details may be long (as pipeline.manifest reads them)
    with open(manifest, newline="", encoding=ENCODING, errors=ERRORS) as f:
        records = csv.reader(f, delimiter="\t")
        header = next(records, [])
        if not {"id", "path", "action"} <= set(header):
            raise ValueError(f"{manifest}: not a faceprep manifest (header {header!r})")
        id_, path, action = (header.index(k) for k in ("id", "path", "action"))
        width = len(header)
        out = []
        for n, c in enumerate(records, 2):
            if not c:
                continue  # a blank line
            if len(c) < width:
                raise ValueError(f"{manifest}: record {n} has {len(c)} fields, expected {width}")
            if c[action] == "keep":
                out.append((c[id_], c[path]))
        return out


def dataset_lines(manifest: str | os.PathLike) -> str:
    """"<id>\t<sha256 of the image's bytes>\n" for every kept image of ``manifest``, in id
    order: what a fingerprint is the sha256 of (kept as dataset.tsv in each run)."""
    images = sorted(kept_images(manifest), key=lambda image: image[0])
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # hashlib frees the GIL
        digests = list(pool.map(file_sha256, [path for _, path in images]))
    return "".join(f"{id_}\t{digest}\n" for (id_, _), digest in zip(images, digests))


def fingerprint_of_lines(lines: str) -> dict:
    return {"sha256": hashlib.sha256(lines.encode("utf-8", "surrogateescape")).hexdigest(),
            "images": lines.count("\n")}


def dataset_fingerprint(manifest: str | os.PathLike) -> dict:
    """sha256 over (id, sha256 of the exported image's bytes) of every dataset image, in id
    order: the same pictures under the same ids give the same fingerprint whatever the files'
    mtimes; a changed, added, removed or renamed image gives another."""
    return fingerprint_of_lines(dataset_lines(manifest))
