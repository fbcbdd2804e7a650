"""Stage manifests and atomic writes, shared by every stage.

A manifest is a TSV with one row per image a stage received or produced:
``id, source, parent_id, path, width, height, action (keep|drop), reason, details(json)``.
Downstream stages read only the ``keep`` rows; ``path`` always points at the file the
next stage should read (it may live in an upstream stage's folder when a stage only
decides and does not rewrite pixels).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Iterator

COLUMNS = ["id", "source", "parent_id", "path", "width", "height", "action", "reason", "details"]
KEEP, DROP = "keep", "drop"

csv.field_size_limit(sys.maxsize)

_UMASK = os.umask(0)
os.umask(_UMASK)


@dataclass(frozen=True)
class Row:
    id: str
    source: str
    parent_id: str = ""
    path: str = ""
    width: int = 0
    height: int = 0
    action: str = KEEP
    reason: str = ""
    details: dict = field(default_factory=dict)

    @property
    def kept(self) -> bool:
        return self.action == KEEP

    def keep(self, **changes) -> "Row":
        """A kept copy of this row with ``changes`` applied (details are merged)."""
        return self._derive(KEEP, "", changes)

    def drop(self, reason: str, **changes) -> "Row":
        """A dropped copy of this row; ``reason`` is a short machine-readable word."""
        return self._derive(DROP, reason, changes)

    def _derive(self, action: str, reason: str, changes: dict) -> "Row":
        details = dict(self.details)
        details.update(changes.pop("details", {}))
        return replace(self, action=action, reason=reason, details=details, **changes)


# Text files we write hold file names as the file system gave them: a name that is not
# valid UTF-8 arrives as a str with surrogate escapes (PEP 383) and goes back out as the
# same bytes, so any name round-trips losslessly (read them back with ``read_text``).
ENCODING, ERRORS = "utf-8", "surrogateescape"


def dumps_details(details: dict) -> str:
    # sorted keys + compact separators: the same data always gives the same bytes
    text = json.dumps(details, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    try:
        text.encode(ENCODING, ERRORS)
    except UnicodeEncodeError:  # a lone surrogate no file name can hold (e.g. from JSON input)
        text = json.dumps(details, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return text


_QUOTE = re.compile(r'[\t"\r\n]')


def tsv_field(value) -> str:
    """One TSV field, quoted like the csv module's (doubled quotes) whenever it holds a tab,
    quote, CR or LF. csv.writer leaves CR unquoted with a "\\n" line terminator, and a
    reader then splits the row."""
    s = "" if value is None else str(value)
    return f'"{s.replace(chr(34), chr(34) * 2)}"' if _QUOTE.search(s) else s


def format_tsv(rows: Iterable[Iterable]) -> str:
    """Rows of fields as TSV text that ``csv.reader(f, delimiter="\\t")`` reads back exactly."""
    return "".join("\t".join(tsv_field(v) for v in row) + "\n" for row in rows)


class tsv_writer:
    """Drop-in for ``csv.writer(f, delimiter="\\t", lineterminator="\\n")`` that also
    quotes CR (see ``tsv_field``)."""

    def __init__(self, f):
        self._f = f

    def writerow(self, row: Iterable) -> None:
        self._f.write(format_tsv([row]))

    def writerows(self, rows: Iterable[Iterable]) -> None:
        self._f.write(format_tsv(rows))


def format_manifest(rows: Iterable[Row]) -> str:
    return format_tsv([COLUMNS] + [[r.id, r.source, r.parent_id, r.path, r.width, r.height,
                                    r.action, r.reason, dumps_details(r.details)] for r in rows])


def write_manifest(path: str | os.PathLike, rows: Iterable[Row]) -> None:
    atomic_write_text(path, format_manifest(rows))


def read_manifest(path: str | os.PathLike) -> list[Row]:
    with open(path, newline="", encoding=ENCODING, errors=ERRORS) as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if header != COLUMNS:
            raise ValueError(f"{path}: not a faceprep manifest (header {header!r})")
        return [Row(id=c[0], source=c[1], parent_id=c[2], path=c[3], width=int(c[4] or 0),
                    height=int(c[5] or 0), action=c[6], reason=c[7],
                    details=json.loads(c[8]) if c[8] else {}) for c in reader]


def read_manifests(paths: Iterable[str | os.PathLike]) -> list[Row]:
    rows: list[Row] = []
    for p in paths:
        rows.extend(read_manifest(p))
    return rows


def kept(rows: Iterable[Row]) -> Iterator[Row]:
    return (r for r in rows if r.kept)


# ---------------------------------------------------------------- atomic writes

def _atomic_write(path: str | os.PathLike, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    _atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode(ENCODING, ERRORS))


def read_text(path: str | os.PathLike) -> str:
    """A text file written by ``atomic_write_text`` (names with any bytes come back as written)."""
    return Path(path).read_text(encoding=ENCODING, errors=ERRORS)


def atomic_write_with(path: str | os.PathLike, write) -> None:
    """Atomically create ``path`` by calling ``write(fileobj)`` on a temp file beside it."""
    _atomic_write(path, write)


class ShardDir:
    """Builds a stage's shard folder beside its final place, then swaps it in.

    Readers (and a rerun after a kill) see either the previous complete folder or the
    new complete one, never a half-written one.

        with ShardDir("results/x/crop/07") as out:
            img.save(out.tmp / "a.png"); rows.append(row.keep(path=str(out.final / "a.png")))
            out.write_manifest(rows)
    """

    def __init__(self, final: str | os.PathLike):
        self.final = Path(final)
        self.tmp = self.final.parent / f".{self.final.name}.tmp"
        self._old = self.final.parent / f".{self.final.name}.old"
        self._rows: list[Row] | None = None

    def __enter__(self) -> "ShardDir":
        for stale in (self.tmp, self._old):
            shutil.rmtree(stale, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        return self

    def path(self, name: str) -> tuple[Path, str]:
        """(where to write now, what to record in the manifest) for a file ``name``."""
        return self.tmp / name, str(self.final / name)

    def write_manifest(self, rows: Iterable[Row], name: str = "manifest.tsv") -> None:
        atomic_write_text(self.tmp / name, format_manifest(rows))

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        if self.final.exists():
            os.replace(self.final, self._old)
        os.replace(self.tmp, self.final)
        shutil.rmtree(self._old, ignore_errors=True)


# ---------------------------------------------------------------- CLI helpers

def stage_argparser(description: str) -> argparse.ArgumentParser:
    """The arguments every per-shard stage CLI takes (rules pass the same ones)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--input", required=True, help="upstream manifest.tsv")
    p.add_argument("--output", required=True, help="this stage's shard folder")
    p.add_argument("--config", required=True, help="this stage's config block as JSON")
    p.add_argument("--threads", type=int, default=1)
    return p


def load_config_arg(text: str) -> dict:
    """``--config`` is JSON text, or ``@file`` holding JSON or YAML."""
    if text.startswith("@"):
        import yaml
        return yaml.safe_load(Path(text[1:]).read_text())
    return json.loads(text)
