"""Stage manifests and atomic writes, shared by every stage.

A manifest is a TSV with one row per image a stage received or produced:
``id, source, parent_id, path, width, height, action (keep|drop), reason, details(json)``.
Downstream stages read only the ``keep`` rows; ``path`` always points at the file the
next stage should read (it may live in an upstream stage's folder when a stage only
decides and does not rewrite pixels).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import itertools
import json
import os
import re
import sys
import string
from array import array
from dataclasses import dataclass
from typing import Iterable, Iterator

from util.config import load_config_arg  # noqa: F401  (every stage CLI's --config)
from util.files import (ENCODING, ERRORS, AtomicDir, atomic_write_bytes,  # noqa: F401
                        atomic_write_text, atomic_write_with, read_text)

COLUMNS = ["id", "source", "parent_id", "path", "width", "height", "action", "reason", "details"]
KEEP, DROP = "keep", "drop"

csv.field_size_limit(sys.maxsize)



_set = object.__setattr__


class Row:
    """One manifest row: immutable, lean (slots), ``details`` parsed from its JSON on first use.

    A row read from a manifest keeps its details as the TSV field it was read as (the
    JSON, quoted: ``_text``); a stage that only passes it on (or a gather over a million
    rows) never builds the dicts, and writing an untouched row copies the field back. Used like the frozen dataclass it replaced:
    ``Row(id=..., source=..., details={...})``, ``row.keep(...)``, ``row.drop(...)``, ``==``.
    """

    __slots__ = ("id", "source", "parent_id", "path", "width", "height", "action", "reason",
                 "_details", "_text")
    FIELDS = ("id", "source", "parent_id", "path", "width", "height", "action", "reason", "details")

    def __init__(self, id: str, source: str, parent_id: str = "", path: str = "", width: int = 0,
                 height: int = 0, action: str = KEEP, reason: str = "", details: dict | None = None):
        for name, value in (("id", id), ("source", source), ("parent_id", parent_id), ("path", path),
                            ("width", width), ("height", height), ("action", action),
                            ("reason", reason), ("_details", {} if details is None else details),
                            ("_text", None)):
            _set(self, name, value)

    @classmethod
    def _from_fields(cls, id, source, parent_id, path, width, height, action, reason,
                     details, text) -> "Row":
        # the slots' own setters: 4x faster than object.__setattr__ (a million rows a gather)
        row = _new(cls)
        _s0(row, id), _s1(row, source), _s2(row, parent_id), _s3(row, path), _s4(row, width)
        _s5(row, height), _s6(row, action), _s7(row, reason), _s8(row, details), _s9(row, text)
        return row

    @property
    def details(self) -> dict:
        if self._details is None:
            _set(self, "_details", json.loads(_unquote(self._text)) if self._text else {})
        return self._details

    def peek_details(self) -> dict:
        """The details without keeping the parsed dict on the row: for gathers that read a
        few keys of a million rows (the rows stay lean). Do not mutate the result."""
        if self._details is not None:
            return self._details
        return json.loads(_unquote(self._text)) if self._text else {}

    def details_text(self) -> str:
        """The details as manifest JSON: the text read, when nobody opened the dict."""
        if self._details is None:
            return _unquote(self._text) if self._text else "{}"
        return dumps_details(self._details)

    def details_field(self) -> str:
        """The details as the manifest's TSV field (quoted JSON)."""
        if self._details is None:
            return self._text or "{}"
        return tsv_field(dumps_details(self._details))

    def __setattr__(self, name, value):
        raise AttributeError(f"Row is immutable (use keep/drop to derive one): {name}")

    def __delattr__(self, name):
        raise AttributeError(f"Row is immutable: {name}")

    def _tuple(self) -> tuple:
        return (self.id, self.source, self.parent_id, self.path, self.width, self.height,
                self.action, self.reason, self.details)

    def __eq__(self, other):
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._tuple() == other._tuple()

    __hash__ = None  # like the frozen dataclass with a dict field: not hashable

    def __repr__(self) -> str:
        return "Row(" + ", ".join(f"{k}={v!r}" for k, v in zip(self.FIELDS, self._tuple())) + ")"

    def __reduce__(self):
        return (Row, self._tuple())

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
        extra = changes.pop("details", None)
        details, text = self._details, self._text
        if details is not None:
            details = dict(details)
            details.update(extra or {})
        elif extra:
            text = _merged_text(text, extra)
            if text is None:  # a key to replace: parse, merge, serialize on write
                details = dict(self.details)
                details.update(extra)
        if changes:
            unknown = set(changes) - set(self.FIELDS[:6])
            if unknown:
                raise TypeError(f"Row has no field(s) {sorted(unknown)}")
            get = changes.get
            return Row._from_fields(get("id", self.id), get("source", self.source),
                                    get("parent_id", self.parent_id), get("path", self.path),
                                    get("width", self.width), get("height", self.height),
                                    action, reason, details, text)
        return Row._from_fields(self.id, self.source, self.parent_id, self.path, self.width,
                                self.height, action, reason, details, text)


def _unquote(field: str) -> str:
    """A TSV field as written by ``tsv_field`` -> its text."""
    return field[1:-1].replace('""', '"') if field[:1] == '"' else field


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_]+")


def _merged_text(field: str | None, extra: dict) -> str | None:
    """The details TSV ``field`` with the new top-level keys of ``extra`` appended, without
    parsing it; None when a key may already be there (then the caller parses). Appended
    keys keep the bytes deterministic: the same rows and code give the same text."""
    if extra and all(type(v) is int for v in extra.values()) and all(map(_PLAIN_KEY.fullmatch, extra)):
        # plain keys, int values (export's index/position): what dumps + quoting would give
        add = '"{' + ",".join(f'""{k}"":{extra[k]}' for k in sorted(extra)) + '}"'
    else:
        text = dumps_details(extra)
        # what tsv_field gives: JSON holds no raw tab/CR/LF, and a key always brings a quote
        add = '"' + text.replace('"', '""') + '"' if text != "{}" else text
    if not field or field == "{}":
        return add
    if field[:2] != '"{':
        return None
    for k in extra:
        if f'""{k}"":' in field:
            return None
    return field[:-2] + "," + add[2:]


_new = object.__new__
_s0, _s1, _s2, _s3, _s4, _s5, _s6, _s7, _s8, _s9 = (Row.__dict__[n].__set__ for n in Row.__slots__)


# Text files we write hold file names as the file system gave them: a name that is not
# valid UTF-8 arrives as a str with surrogate escapes (PEP 383) and goes back out as the
# same bytes, so any name round-trips losslessly (read them back with ``read_text``).


# sorted keys + compact separators: the same data always gives the same bytes. One encoder
# for every row (json.dumps builds a new one per call: a third of a million-row write).
_ENCODE = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode


def dumps_details(details: dict) -> str:
    text = _ENCODE(details)
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


def manifest_lines(rows: Iterable[Row]) -> Iterator[str]:
    """The manifest as TSV lines (header first), one row at a time."""
    yield format_tsv([COLUMNS])
    yield from map(row_line, rows)


def row_line(r: Row) -> str:
    """One row as its manifest line."""
    fields = (r.id, r.source, r.parent_id, r.path, str(r.width), str(r.height), r.action, r.reason)
    if _QUOTE.search("".join(fields)):  # a name with a tab, quote or newline: quote field by field
        head = "\t".join(map(tsv_field, fields))
    else:
        head = "\t".join(fields)
    return f"{head}\t{r.details_field()}\n"


HEADER_BYTES = format_tsv([COLUMNS]).encode(ENCODING)


def plain_fields(line: bytes) -> list[bytes] | None:
    """The 9 fields of one manifest line (bytes, trailing newline removed) when reading it
    as a ``Row`` and writing that row back untouched gives these very bytes: no quote, CR
    or tab in a name, width/height written as ``str(int)``, details a JSON object field
    (the TSV-quoted text, or ``{}``). None otherwise: then read the file as rows.

    Gathers over a million rows use it to copy lines through without building rows."""
    if b"\r" in line:
        return None
    f = line.split(b"\t")
    if len(f) != 9:
        return None
    text = f[8]
    q = line.find(b'"')
    if q == -1:
        if text != b"{}":
            return None
    elif q != len(line) - len(text) or text[:2] != b'"{' or text[-2:] != b'}"':
        return None
    for v in (f[4], f[5]):
        if not v.isdigit() or (v[0] == 48 and len(v) > 1):  # 48: "0"
            return None
    return f


def format_manifest(rows: Iterable[Row]) -> str:
    return "".join(manifest_lines(rows))


def write_manifest(path: str | os.PathLike, rows: Iterable[Row]) -> None:
    """Atomically write ``rows`` (any iterable: streamed, never joined into one string)."""
    def write(f):
        buf = []
        for i, line in enumerate(manifest_lines(rows)):
            buf.append(line)
            if i % 4096 == 4095:
                f.write("".join(buf).encode(ENCODING, ERRORS))
                buf.clear()
        f.write("".join(buf).encode(ENCODING, ERRORS))
    atomic_write_with(path, write)


_INTERNED = {KEEP: KEEP, DROP: DROP, "": ""}


def _records(f) -> Iterator[list[str]]:
    """The TSV records of ``f`` (opened with newline="\n"), as csv.reader would give them.

    Except the last field (the details), which comes as written (quoted; ``_unquote``
    reads it): unquoting it is the costliest step of a read, and most rows are only
    passed on. Fast path for the lines faceprep writes: names without tab/quote/newline
    and the details as the only quoted field (JSON never holds a raw tab or newline), so
    one split does it. Any other line (a quoted name, a field spanning lines) goes to
    csv.reader, which reads exactly the lines of that one record.
    """
    it = iter(f)
    for line in it:
        if line.endswith("\n"):
            line = line[:-1]
        q = line.find('"')
        if q == -1:
            yield line.split("\t")
            continue
        if (q and line[q - 1] == "\t" and line.endswith('}"') and line.startswith('{', q + 1)
                and line.count("\t", 0, q) == len(COLUMNS) - 1):
            c = line[:q - 1].split("\t")
            c.append(line[q:])
            yield c
            continue
        record = next(csv.reader(itertools.chain([line + "\n"], it), delimiter="\t"), None)
        if record is not None:
            if len(record) >= len(COLUMNS):
                record[len(COLUMNS) - 1] = tsv_field(record[len(COLUMNS) - 1])
            yield record


@contextlib.contextmanager
def _manifest_records(path: str | os.PathLike) -> Iterator[Iterator[list[str]]]:
    """The records of a manifest after its header (ValueError if it is not one)."""
    with open(path, newline="\n", encoding=ENCODING, errors=ERRORS) as f:
        records = _records(f)
        header = next(records, None)
        if header != COLUMNS:
            raise ValueError(f"{path}: not a faceprep manifest (header {header!r})")
        yield records


def iter_manifest(path: str | os.PathLike) -> Iterator[Row]:
    """The rows of one manifest, read as they are needed (details stay JSON text)."""
    with _manifest_records(path) as records:
        words = dict(_INTERNED)  # action/reason repeat: one string object each
        make = Row._from_fields
        for n, c in enumerate(records, 2):
            if len(c) < len(COLUMNS):
                if c == [""] or not c:
                    continue  # a blank line, as csv.reader skips
                raise ValueError(f"{path}: record {n} has {len(c)} fields, expected {len(COLUMNS)}")
            text = c[8]
            if text and text[:2] != '"{' and text[0] != "{":
                raise ValueError(f"{path}: record {n}: details are not a JSON object: {text[:60]!r}")
            action = words.setdefault(c[6], c[6])
            reason = words.setdefault(c[7], c[7]) if len(words) < 10000 else c[7]
            yield make(c[0], c[1], c[2], c[3], int(c[4] or 0), int(c[5] or 0), action, reason,
                       None if text else {}, text or None)


def line_row(fields: list[bytes]) -> Row:
    """The row of a line's ``plain_fields``, as ``iter_manifest`` reads it."""
    f = [v.decode(ENCODING, ERRORS) for v in fields]
    return Row._from_fields(f[0], f[1], f[2], f[3], int(f[4]), int(f[5]), f[6], f[7], None, f[8])


def manifest_lines_of(path: str | os.PathLike, kept_spans: array | None = None
                      ) -> Iterator[tuple[bytes | None, bool, object]]:
    """Every record of a manifest as (line, kept, fields or row), for gathers that copy
    most rows through: ``line`` (bytes, newline included) is what writing its row back
    untouched gives, with its ``plain_fields`` (``line_row`` makes the row when needed);
    a record that would not write back as read (a quoted name, a field spanning lines)
    comes as (None, kept, Row), and so does every record after it in that file.
    ``kept_spans``, when given, gets the start and end byte offsets in the file of each
    kept record yielded with its line (the end past its newline, or at the file's end)."""
    done = 0
    with open(path, "rb") as f:
        header = f.readline()
        if header == HEADER_BYTES:
            at = len(header)
            for line in f:
                start, at = at, at + len(line)
                body = line[:-1] if line[-1:] == b"\n" else line
                fields = plain_fields(body)
                if fields is None:
                    if not body:
                        continue  # a blank line, as csv.reader skips
                    break
                kept = fields[6] == b"keep"
                if kept and kept_spans is not None:
                    kept_spans.append(start)
                    kept_spans.append(at)
                yield line if len(body) < len(line) else body + b"\n", kept, fields
                done += 1
            else:
                return
    for r in itertools.islice(iter_manifest(path), done, None):
        yield None, r.kept, r


def verdict_counts(path: str | os.PathLike) -> tuple[int, dict[str, int]]:
    """(kept rows, {drop reason ("unspecified" when empty): rows}) of a manifest, counted
    without building rows (stage summaries over a million rows)."""
    kept, dropped = 0, {}
    for line, is_kept, fields in manifest_lines_of(path):
        if is_kept:
            kept += 1
            continue
        reason = (fields[7].decode(ENCODING, ERRORS) if line is not None else fields.reason) or "unspecified"
        dropped[reason] = dropped.get(reason, 0) + 1
    return kept, dropped


def id_sort_keys(ids: list[str]) -> list | None:
    """Numbers that sort as ``ids`` do, as ``np.lexsort`` keys (the last the first), where
    every id starts with 16 lowercase hex digits (``ingest.source_id``; a face's id adds
    ``-f<k>``): those digits as a 64-bit number (lowercase hex of one width sorts as its
    value), then the rest's rank among the distinct rests. None for other ids."""
    import numpy as np
    n = len(ids)
    heads = "".join([i[:16] for i in ids])
    if len(heads) != 16 * n or heads != heads.lower():  # a shorter id; upper case sorts otherwise
        return None
    try:
        raw = bytes.fromhex(heads)
    except ValueError:  # not hex
        return None
    if len(raw) != 8 * n:  # fromhex skips whitespace
        return None
    value = np.frombuffer(raw, dtype=">u8").astype(np.uint64)
    rests = [i[16:] for i in ids]
    distinct = sorted(set(rests))
    if len(distinct) <= 1:
        return [value]
    rank = {rest: k for k, rest in enumerate(distinct)}
    return [np.fromiter(map(rank.__getitem__, rests), dtype=np.int64, count=n), value]


def id_order(ids: list[str]):
    """The positions of ``ids`` in sorted order, equal ids in input order (an int64 array):
    by ``id_sort_keys`` where it can (a million face ids in hash order: 0.35 s, where
    sorting the strings took 0.45-0.87 s)."""
    import numpy as np
    keys = id_sort_keys(ids)
    if keys is None:
        return np.array(sorted(range(len(ids)), key=ids.__getitem__), dtype=np.int64)
    return np.lexsort(keys).astype(np.int64)  # stable


def dropped_ids(path: str | os.PathLike) -> set[str]:
    """The ids of a manifest's drop rows, without building rows (dedup.tsv at 1M rows)."""
    out = set()
    with open(path, "rb") as f:
        if f.readline() == HEADER_BYTES:
            for line in f:
                # the head only: split stops before the details (most of a 2 KB line)
                c = line.split(b"\t", 8)
                q = line.find(b'"')
                if len(c) != 9 or (q != -1 and q != len(line) - len(c[8])) or b"\r" in line:
                    if line.strip(b"\n"):
                        break  # a quoted name, a record over several lines: read as records
                    continue
                if c[6] == b"drop":
                    out.add(c[0].decode(ENCODING, ERRORS))
            else:
                return out
    with _manifest_records(path) as records:
        return {c[0] for c in records if len(c) >= len(COLUMNS) and c[6] == DROP}


def read_manifest(path: str | os.PathLike) -> list[Row]:
    return list(iter_manifest(path))


def iter_manifests(paths: Iterable[str | os.PathLike]) -> Iterator[Row]:
    for p in paths:
        yield from iter_manifest(p)


def read_manifests(paths: Iterable[str | os.PathLike]) -> list[Row]:
    return list(iter_manifests(paths))


# ---------------------------------------------------------------- drop reasons

@dataclass(frozen=True)
class Drop:
    """A drop reason a stage can give, declared once in the stage's module (``DROPS``):
    what the review page says about it (``text``), the details keys its rows carry
    (``details``; the page's note shows the ``note`` ones) and, for a stage that can drop
    every image, what to change (``hint``: ``{key}`` fields are filled from the drop
    rows' details, e.g. the setting the stage recorded). No ``text``: the page shows the
    reason's name alone."""
    reason: str
    text: str = ""
    details: tuple[str, ...] = ()
    note: tuple[str, ...] = ()
    hint: str = ""

    def hint_for(self, rows: Iterable[Row]) -> str:
        """``hint`` with each ``{key}`` the value of the first of ``rows`` recording it."""
        rows = list(rows)
        fields = {f for _, f, _, _ in string.Formatter().parse(self.hint) if f}
        return self.hint.format(**{f: next((r.details[f] for r in rows if f in r.details), "?")
                                   for f in fields})


def declare(*drops: Drop) -> dict[str, Drop]:
    """A stage's ``DROPS``: its drop reasons by name."""
    return {d.reason: d for d in drops}


def by_count(counts: dict[str, int]) -> list[tuple[str, int]]:
    """Drop reasons and their counts, most frequent first, then by name (every summary:
    console, survivors, the report's funnel)."""
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def kept(rows: Iterable[Row]) -> Iterator[Row]:
    return (r for r in rows if r.kept)


# ---------------------------------------------------------------- a face's region

def face_region(details: dict) -> list | None:
    """The source region a face was cut from, in upright source pixels, or None (a whole
    image): the one reading of crop's details that scores.tsv and the page both use.

    FFHQ alignment cuts the rotated ``quad`` (4 [x, y] corners; its ``crop`` is only the
    quad's bounding box), so ``quad`` comes first; box crops record ``crop`` (or the older
    ``crop_box``) as [left, top, right, bottom]; last, the detector's ``box`` [x, y, w, h]
    is turned into [left, top, right, bottom].
    """
    quad = details.get("quad")
    if isinstance(quad, (list, tuple)) and quad:
        flat = [v for p in quad for v in (p if isinstance(p, (list, tuple)) else [p])]
        if len(flat) == 8:
            return [[flat[i], flat[i + 1]] for i in range(0, 8, 2)]
    for key in ("crop_box", "crop"):
        box = details.get(key)
        if isinstance(box, (list, tuple)) and len(box) == 4:
            return list(box)
    box = details.get("box")
    if isinstance(box, (list, tuple)) and len(box) == 4:
        x, y, w, h = box
        return [x, y, x + w, y + h]
    return None


# ---------------------------------------------------------------- shard folders

class ShardDir(AtomicDir):
    """Builds a stage's shard folder beside its final place, then swaps it in (``AtomicDir``)
    with its manifest.

        with ShardDir("results/x/crop/07") as out:
            img.save(out.tmp / "a.png"); rows.append(row.keep(path=str(out.final / "a.png")))
            out.write_manifest(rows)
    """

    def write_manifest(self, rows: Iterable[Row], name: str = "manifest.tsv") -> None:
        write_manifest(self.tmp / name, rows)


# ---------------------------------------------------------------- CLI helpers

def stage_argparser(description: str) -> argparse.ArgumentParser:
    """The arguments every per-shard stage CLI takes (rules pass the same ones)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--input", required=True, help="upstream manifest.tsv")
    p.add_argument("--output", required=True, help="this stage's shard folder")
    p.add_argument("--config", required=True, help="this stage's config block as JSON")
    p.add_argument("--threads", type=int, default=1)
    return p
