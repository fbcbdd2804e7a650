"""ingest: list the raw folder, give every file a stable id and shard, decode-check it,
and apply the optional Danbooru-style metadata filter.

    python -m pipeline.ingest shard --listing L --raw-dir D --output M --config JSON
    python -m pipeline.ingest metadata --metadata posts.jsonl --output T --config JSON
"""
from __future__ import annotations

import argparse
import errno
import hashlib
import json
import multiprocessing
import operator
import os
import re
import stat
import sys
from pathlib import Path

from tqdm import tqdm

from pipeline.imaging import ContentStore, code_digest, decode_check, file_digest, too_large
from pipeline.manifest import Drop, Row, atomic_write_text, declare, load_config_arg, read_text, write_manifest
from util.config import with_defaults

RATING_ALIASES = {"general": "g", "sensitive": "s", "safe": "s", "questionable": "q",
                  "explicit": "e"}


def config_keys(config: dict) -> dict:
    """Exactly the config the per-shard ingest reads (its rule's param): the tags and
    ratings are decided by the metadata filter, whose decisions are an input."""
    return {k: config["ingest"][k] for k in ("extensions", "max_pixels", "damaged")}


def metadata_keys(config: dict) -> dict:
    """Exactly the config the metadata filter reads (rule metadata_filter's param)."""
    return {k: config["ingest"][k] for k in ("tags_include", "tags_exclude", "ratings")}


# ---------------------------------------------------------------- listing and shards

def source_id(relpath: str) -> str:
    """Stable id of a source: 64 bits of sha1 of its path relative to the raw folder."""
    return hashlib.sha1(relpath.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def shard_of(relpath: str, nshards: int) -> int:
    return shard_numbers([relpath], nshards)[0]


def shard_numbers(relpaths, nshards: int) -> list[int]:
    """``shard_of`` of each path: int(source_id(p), 16) % nshards without the hex round trip,
    in one loop (a million paths a parse; a call per path costs 0.3 s of it)."""
    sha1, from_bytes = hashlib.sha1, int.from_bytes
    return [from_bytes(sha1(p.encode("utf-8", "surrogateescape")).digest()[:8], "big") % nshards
            for p in relpaths]


# Listing problems: paths under raw_dir that are there but cannot be ingested. Each gets
# one listing line and one dropped manifest row, so nothing under raw_dir vanishes.
HIDDEN_FOLDER = "hidden_folder"            # dot-folders (.git, .thumbnails...) are not searched
UNREADABLE_FOLDER = "unreadable_folder"    # the folder's entries could not be listed
DANGLING_SYMLINK = "dangling_symlink"
SYMLINK_LOOP = "symlink_loop"              # a link to itself or to a folder it is inside
SYMLINK_OUTSIDE = "symlink_outside_raw_dir"
NOT_A_FILE = "not_a_regular_file"          # FIFO, socket, device: opening one could block
SYMLINK_REPEATED = "symlink_repeated"      # folder already listed through MAX_LINKS_PER_FOLDER links
UNREADABLE = "unreadable"                  # a file (or its link target) that cannot be stat'ed or read

# Links can reach a folder along exponentially many paths (a/l1,a/l2 -> b; b/l1,b/l2 -> c...):
# each real folder is listed through at most this many folder links.
MAX_LINKS_PER_FOLDER = 16

# Every reason ingest drops a file for: the details its rows carry (the page's note shows
# the ``note`` ones) and what to change when no file was kept (pipeline/survivors.py).
_NOTE = ("error", "bytes", "max_pixels", "extension")
_HINT = "put readable images in raw_dir (extensions in ingest.extensions)"
_LINK = ("link",)  # a listing problem's row names the link's target, if it is a link
DROPS = declare(*(Drop(reason, text, details, note=_NOTE, hint=_HINT) for reason, text, details in (
    # the listing's (list_raw_dir)
    (HIDDEN_FOLDER, "inside a dot-folder, which is not searched", _LINK),
    (UNREADABLE_FOLDER, "its folder could not be listed", _LINK),
    (DANGLING_SYMLINK, "a link whose target does not exist", _LINK),
    (SYMLINK_LOOP, "a link to itself or to a folder it is inside", _LINK),
    (SYMLINK_OUTSIDE, "a link to a place outside raw_dir", _LINK),
    (NOT_A_FILE, "not a regular file (a FIFO, socket or device)", _LINK),
    (SYMLINK_REPEATED, f"a folder already reached through {MAX_LINKS_PER_FOLDER} links", _LINK),
    # ingest.extensions and the metadata filter (ingest.tags_include, tags_exclude, ratings)
    ("unsupported_extension", "its extension is not in ingest.extensions", ("extension",)),
    ("no_metadata", "no line for it in the metadata (ingest.metadata)", ()),
    ("tag_missing", "lacks a tag of ingest.tags_include", ("missing_tags",)),
    ("tag_excluded", "has a tag of ingest.tags_exclude", ("excluded_tags",)),
    ("rating", "its rating is not in ingest.ratings", ("rating",)),
    ("metadata_malformed", "its metadata line could not be read", ("metadata_line", "error")),
    # the decode check's (pipeline.imaging.decode_check; ingest.max_pixels, ingest.damaged)
    (UNREADABLE, "the file could not be read", ("error",)),
    ("file_too_large", "too large a file for ingest.max_pixels", ("bytes", "max_pixels")),
    ("empty_file", "an empty file", ("bytes",)),
    ("decompression_bomb", "more pixels than ingest.max_pixels", ("bytes", "max_pixels", "error")),
    ("not_an_image", "not an image format that can be read", ("bytes", "error")),
    ("truncated", "the file ends early (ingest.damaged: keep would crop what decodes)",
     ("bytes", "error", "damage")),
    ("corrupt_data", "damaged image data (ingest.damaged: keep would crop what decodes)",
     ("bytes", "damage")),
    ("decode_error", "the file could not be decoded", ("bytes", "error")),
)))


def list_raw_dir(raw_dir: str | os.PathLike) -> list[tuple]:
    """Every path below ``raw_dir``: ``(relative path, size, mtime_ns, problem)``, sorted.

    ``problem`` is "" for a regular file to ingest, else one of the listing reasons above.
    Symlinks are followed while they stay inside raw_dir (a linked file or folder is listed
    under the link's path); a link leaving raw_dir, dangling or looping is listed with its
    reason instead (as is a folder link past the ``MAX_LINKS_PER_FOLDER``-th to the same
    folder). Dot-folders are listed once as ``hidden_folder`` and not searched; dot-files
    are ordinary files.
    """
    root = os.path.realpath(raw_dir)
    if not os.path.isdir(root):
        raise SystemExit(f"faceprep: raw_dir {str(raw_dir)!r} is not a folder")
    found: list[tuple] = []

    def problem(rel: str, full: str, reason: str) -> None:
        try:
            st = os.lstat(full)
            found.append((rel, st.st_size, st.st_mtime_ns, reason))
        except OSError:
            found.append((rel, 0, 0, reason))

    # an explicit stack, not recursion: a hostile tree may nest deeper than Python recurses
    stack = [(root, "", frozenset({root}))]
    via_links: dict[str, int] = {}
    dir_fd = os.stat in os.supports_dir_fd
    while stack:
        real_dir, rel_dir, ancestors = stack.pop()
        try:
            with os.scandir(real_dir) as it:
                entries = sorted(it, key=_name, reverse=True)  # same order every run
        except OSError as e:
            if not rel_dir:
                raise SystemExit(f"faceprep: raw_dir {str(raw_dir)!r} cannot be listed: {e.strerror}")
            problem(rel_dir, real_dir, UNREADABLE_FOLDER)
            continue
        # a file's stat relative to its open folder: the kernel walks one name, not the
        # whole path (a third of the listing at 1M files)
        try:
            fd = os.open(real_dir, os.O_RDONLY | os.O_DIRECTORY) if dir_fd else None
        except OSError:
            fd = None
        try:
            _list_entries(entries, rel_dir, root, fd, ancestors, via_links, stack, found, problem)
        finally:
            if fd is not None:
                os.close(fd)
    found.sort()
    return found


_name = operator.attrgetter("name")


def _list_entries(entries, rel_dir, root, fd, ancestors, via_links, stack, found, problem) -> None:
    """One folder's entries for ``list_raw_dir`` (``fd``: the folder, open, or None)."""
    append, stat_at, is_reg = found.append, os.stat, stat.S_ISREG
    for entry in entries:
        # f-strings and DirEntry.path, not os.path.join: 40% of the listing at 100k files
        name = entry.name
        rel = f"{rel_dir}/{name}" if rel_dir else name
        linked = entry.is_symlink()
        if fd is not None and not linked:
            try:  # the common case, a file in its open folder, first: one stat, one tuple
                st = stat_at(name, dir_fd=fd)
            except OSError:
                problem(rel, entry.path, UNREADABLE)
                continue
            if is_reg(st.st_mode):
                append((rel, st.st_size, st.st_mtime_ns, ""))
                continue
        full = entry.path  # real: real_dir is, entry is no link
        target = full
        if linked:
            try:
                os.stat(full)
            except OSError as e:
                problem(rel, full, SYMLINK_LOOP if e.errno == errno.ELOOP else DANGLING_SYMLINK)
                continue
            target = os.path.realpath(full)
            if os.path.commonpath([root, target]) != root:
                problem(rel, full, SYMLINK_OUTSIDE)
                continue
        if linked or fd is None:  # else st is the folder-relative stat above
            try:
                st = os.stat(target)
            except OSError:
                problem(rel, full, DANGLING_SYMLINK if target != full else UNREADABLE)
                continue
        if stat.S_ISREG(st.st_mode):
            append((rel, st.st_size, st.st_mtime_ns, ""))
        elif stat.S_ISDIR(st.st_mode):
            if entry.name.startswith("."):
                problem(rel, full, HIDDEN_FOLDER)
            elif target in ancestors:
                problem(rel, full, SYMLINK_LOOP)
            elif target != full and via_links.get(target, 0) >= MAX_LINKS_PER_FOLDER:
                problem(rel, full, SYMLINK_REPEATED)
            else:
                if target != full:
                    via_links[target] = via_links.get(target, 0) + 1
                stack.append((target, rel, ancestors | {target}))
        else:
            problem(rel, full, NOT_A_FILE)


def _within(inner: str, outer: str) -> bool:
    inner, outer = os.path.realpath(inner), os.path.realpath(outer)
    return os.path.commonpath([inner, outer]) == outer


def config_path_problem(cfg: dict, rejects: str | None = None) -> str:
    """One line saying why these config paths cannot work together, or "".

    Outputs inside raw_dir would be listed and ingested by the next run (which then never
    settles); raw_dir inside an output folder could be deleted with it.
    """
    raw = cfg["raw_dir"]
    for key in ("results_dir", "cache_dir"):
        out = cfg.get(key)
        if not out:
            continue
        if _within(out, raw):
            return (f"faceprep: {key} {out!r} is inside raw_dir {raw!r}: every run would ingest "
                    f"its own outputs; put {key} outside raw_dir")
        if _within(raw, out):
            return (f"faceprep: raw_dir {raw!r} is inside {key} {out!r}: outputs and sources "
                    f"must not share a folder; move one of them")
    metadata = (cfg.get("ingest") or {}).get("metadata")
    if metadata and not os.path.isfile(metadata):
        what = "a folder" if os.path.isdir(metadata) else "not a file"
        return f"faceprep: ingest.metadata {metadata!r} is {what}; expected a JSONL file"
    if rejects and os.path.isdir(rejects):
        return (f"faceprep: the rejects file {rejects!r} (rank.rejects) is a folder; "
                "expected a text file with one image id per line")
    return ""


# what json.dumps(ensure_ascii=False) escapes in a string; a name without any is just quoted
_JSON_ESCAPED = re.compile(r'[\x00-\x1f\\"]').search


def format_listing(entries) -> str:
    # JSON escapes tab/CR/LF; a 4th column only for problems keeps old listings valid
    if all(len(e) == 4 for e in entries):
        # the usual entry (a file without problem, a name json.dumps would only quote), in
        # one f-string: a million a parse
        return "".join(f'"{rel}"\t{size}\t{mtime}\n' if not problem and not _JSON_ESCAPED(rel)
                       else _listing_line((rel, size, mtime, problem))
                       for rel, size, mtime, problem in entries)
    return "".join(map(_listing_line, entries))


def _listing_line(e) -> str:
    return (f"{json.dumps(e[0], ensure_ascii=False)}\t{e[1]}\t{e[2]}"
            + (f"\t{e[3]}" if len(e) > 3 and e[3] else "") + "\n")


def parse_listing(text: str) -> list[tuple]:
    out = []
    for line in text.split("\n"):  # not splitlines(): U+2028 or \x85 may be in a name
        if not line:
            continue
        rel, size, mtime, *problem = line.split("\t")
        out.append((json.loads(rel), int(size), int(mtime), problem[0] if problem else ""))
    return out


def write_shard_listings(entries, out_dir: str | os.PathLike, shards: list[str]) -> list[str]:
    """Write ``<out_dir>/<shard>.tsv`` for every shard, only where the content changed.

    Returns the shards whose listing was (re)written.
    """
    out_dir = Path(out_dir)
    per_shard: list[list] = [[] for _ in shards]
    for number, e in zip(shard_numbers([e[0] for e in entries], len(shards)), entries):
        per_shard[number].append(e)
    per_shard = dict(zip(shards, per_shard))
    changed = []
    for shard, items in per_shard.items():
        path = out_dir / f"{shard}.tsv"
        text = format_listing(items)
        try:
            if read_text(path) == text:
                continue
        except FileNotFoundError:
            pass
        atomic_write_text(path, text)
        changed.append(shard)
    return changed


# ---------------------------------------------------------------- metadata filter

class BadPost(ValueError):
    """A metadata line that is JSON but not a post we can read (the message says why)."""


def post_tags(post: dict) -> set[str]:
    """Tags of a Danbooru post in either dump style: ``tag_string`` or ``tags: [{name}]``."""
    tags = post["tag_string"] if "tag_string" in post else post.get("tags", [])
    if tags is None:
        return set()
    if isinstance(tags, str):
        return set(tags.split())
    if not isinstance(tags, list):
        raise BadPost(f"tags are a {type(tags).__name__}, expected a string or a list")
    out = set()
    for t in tags:
        name = t.get("name") if isinstance(t, dict) else t
        if not isinstance(name, (str, int)) or isinstance(name, bool):
            raise BadPost(f"a tag is {json.dumps(t)[:60]}, expected a string or {{\"name\": ...}}")
        out.add(str(name))
    return out


def normalize_rating(value) -> str:
    value = str(value or "").lower()
    return RATING_ALIASES.get(value, value[:1])


def judge_post(post: dict, cfg: dict) -> tuple[str, dict]:
    """("", {}) if the post passes the tag/rating filter, else (reason, details)."""
    tags = post_tags(post)
    missing = sorted(set(cfg["tags_include"]) - tags)
    if missing:
        return "tag_missing", {"missing_tags": missing}
    excluded = sorted(set(cfg["tags_exclude"]) & tags)
    if excluded:
        return "tag_excluded", {"excluded_tags": excluded}
    ratings = {normalize_rating(r) for r in cfg["ratings"]}
    rating = normalize_rating(post.get("rating"))
    if ratings and rating not in ratings:
        return "rating", {"rating": rating}
    return "", {}


def post_keys(post: dict) -> list[str]:
    """File stems a post may be saved under: its id and its md5 (Danbooru dumps use both)."""
    keys = []
    for k in ("id", "md5"):
        v = post.get(k)
        if v in (None, ""):
            continue
        if not isinstance(v, (str, int)) or isinstance(v, bool):
            raise BadPost(f"{k} is a {type(v).__name__}, expected a string or a number")
        keys.append(str(v))
    return keys


def metadata_lines(path: str | os.PathLike, warn=None):
    """(line number, text) of every non-blank line of a UTF-8 JSONL file (BOM or not).

    A line that is not UTF-8 is reported through ``warn`` with its number and skipped; a
    folder or a missing file stops with one clear line.
    """
    warn = warn or (lambda msg: print(msg, file=sys.stderr))
    p = Path(path)
    if p.is_dir():
        raise SystemExit(f"faceprep: ingest.metadata {str(path)!r} is a folder; "
                         "expected a JSONL file (one post per line)")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise SystemExit(f"faceprep: cannot read ingest.metadata {str(path)!r}: {e.strerror}")
    for n, raw in enumerate(data.split(b"\n"), 1):
        if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]  # UTF-8 BOM (Windows editors)
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError as e:
            warn(f"metadata line {n}: not UTF-8 (byte {e.start}), skipped")
            continue
        if line:
            yield n, line


def metadata_decisions(lines, cfg: dict, warn=None) -> dict[str, tuple[str, dict]]:
    """Decisions per file stem from ``(line number, JSON text)`` pairs (or plain lines).

    Malformed lines are reported with their number and skipped; a post whose id we can
    read but whose tags we cannot gets ``metadata_malformed`` so its file says why.
    """
    warn = warn or (lambda msg: print(msg, file=sys.stderr))
    cfg = with_defaults("ingest", cfg)
    decisions: dict[str, tuple[str, dict]] = {}
    for n, item in enumerate(lines, 1):
        if isinstance(item, tuple):
            n, item = item
        line = item.strip()
        if not line:
            continue
        try:
            post = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as e:
            warn(f"metadata line {n}: not JSON ({str(e)[:80]}), skipped")
            continue
        if not isinstance(post, dict):
            warn(f"metadata line {n}: a JSON {type(post).__name__}, not an object, skipped")
            continue
        try:
            keys = post_keys(post)
        except BadPost as e:
            warn(f"metadata line {n}: {e}, skipped")
            continue
        try:
            verdict = judge_post(post, cfg)
        except BadPost as e:
            warn(f"metadata line {n}: {e}; its files are dropped as metadata_malformed")
            verdict = ("metadata_malformed", {"metadata_line": n, "error": str(e)})
        for key in keys:
            decisions[key] = verdict
    return decisions


def write_decisions(path, decisions: dict[str, tuple[str, dict]]) -> None:
    # keys are JSON (an id may hold a tab or newline); ASCII-only, one line each
    lines = [f"{json.dumps(k)}\t{reason}\t{json.dumps(d, sort_keys=True)}\n"
             for k, (reason, d) in sorted(decisions.items())]
    atomic_write_text(path, "".join(lines))


def read_decisions(path) -> dict[str, tuple[str, dict]]:
    out = {}
    for line in read_text(path).split("\n"):
        if line:
            key, reason, details = line.split("\t")
            out[json.loads(key)] = (reason, json.loads(details))
    return out


# ---------------------------------------------------------------- per-shard ingest

def check_store(folder: str | os.PathLike | None, cfg: dict) -> ContentStore:
    """Decode checks stored per file content (``ContentStore`` under
    ``<cache_dir>/ingest``): an ingest rerun (files added to the shard, a shard count
    change) checks only files it has not seen with these settings and this code."""
    settings = None
    if folder:
        import cv2
        import PIL
        settings = {"format": 1, "max_pixels": cfg["max_pixels"],
                    "damaged": cfg["damaged"], "code": code_digest("imaging.py"),
                    "pillow": PIL.__version__, "opencv": cv2.__version__}
    return ContentStore(folder, settings)


def checked(path: str, cfg: dict, store: ContentStore | None = None) -> tuple[str, dict]:
    """``decode_check`` of one file, or its stored result for the same bytes."""
    max_pixels, keep_damaged = cfg["max_pixels"], cfg["damaged"] == "keep"
    if store is None or store.folder is None:
        return decode_check(path, max_pixels, keep_damaged)
    try:
        if too_large(os.stat(path).st_size, max_pixels):
            return decode_check(path, max_pixels, keep_damaged)
        with open(path, "rb") as f:
            data = f.read()
    except OSError:  # unreadable: said by the check itself, never stored
        return decode_check(path, max_pixels, keep_damaged)
    digest = file_digest(data)
    record = store.get(digest)
    if isinstance(record, dict) and isinstance(record.get("info"), dict):
        return record.get("reason", ""), record["info"]
    reason, info = decode_check(path, max_pixels, keep_damaged, data)
    store.put(digest, {"reason": reason, "info": info})
    return reason, info


def ingest_file(relpath: str, raw_dir: str, cfg: dict, decisions: dict | None,
                problem: str = "", store: ContentStore | None = None) -> Row:
    """One manifest row for one listed path: keep, or drop with a reason."""
    row = Row(id=source_id(relpath), source=relpath, path=os.path.join(raw_dir, relpath))
    if problem:  # found by the listing: a link, folder or special file we do not read
        details = {}
        if os.path.islink(row.path):
            try:
                details["link"] = os.readlink(row.path)
            except OSError:
                pass
        return row.drop(problem, details=details)
    ext = Path(relpath).suffix.lower().lstrip(".")
    if ext not in cfg["extensions"]:
        return row.drop("unsupported_extension", details={"extension": ext})
    if decisions is not None:
        stem = Path(relpath).stem
        if stem not in decisions:
            return row.drop("no_metadata")
        reason, details = decisions[stem]
        if reason:
            return row.drop(reason, details=details)
    reason, info = checked(row.path, cfg, store)
    width, height = info.pop("width", 0), info.pop("height", 0)
    if reason:
        return row.drop(reason, width=width, height=height, details=info)
    return row.keep(width=width, height=height, details=info)


_shard_job = None  # (raw_dir, cfg, decisions, store): the worker processes inherit it through fork


def _checked(entry) -> Row:
    raw_dir, cfg, decisions, store = _shard_job
    return ingest_file(entry[0], raw_dir, cfg, decisions, entry[3] if len(entry) > 3 else "", store)


def ingest_shard(entries, raw_dir: str, cfg: dict, decisions: dict | None,
                 threads: int = 1, store: ContentStore | None = None) -> list[Row]:
    """Rows in listing order. ``threads`` > 1 checks files in that many worker processes
    (not threads: the libjpeg warning capture redirects the process's fd 2). ``store``:
    decode checks of earlier runs (``check_store``)."""
    global _shard_job
    _shard_job = (raw_dir, cfg, decisions, store)
    progress = dict(total=len(entries), desc="ingest", unit="img", mininterval=2)
    if threads <= 1 or len(entries) < 64 or "fork" not in multiprocessing.get_all_start_methods():
        return [_checked(e) for e in tqdm(entries, **progress)]
    # fork: the workers inherit the job (metadata decisions can be large) instead of a pickle
    with multiprocessing.get_context("fork").Pool(threads) as pool:
        return list(tqdm(pool.imap(_checked, entries, chunksize=16), **progress))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("shard", help="decode-check one shard's listing")
    s.add_argument("--listing", required=True)
    s.add_argument("--raw-dir", required=True)
    s.add_argument("--metadata-decisions", default="")
    s.add_argument("--output", required=True, help="manifest.tsv to write")
    s.add_argument("--config", required=True)
    s.add_argument("--threads", type=int, default=1, help="worker processes")
    s.add_argument("--checks", default="", help="folder of stored decode checks (check_store)")
    m = sub.add_parser("metadata", help="apply the tag/rating filter to a metadata JSONL")
    m.add_argument("--metadata", required=True)
    m.add_argument("--output", required=True)
    m.add_argument("--config", required=True)
    a = p.parse_args(argv)
    cfg = with_defaults("ingest", load_config_arg(a.config))
    if a.cmd == "metadata":
        decisions = metadata_decisions(metadata_lines(a.metadata), cfg)
        write_decisions(a.output, decisions)
        print(f"metadata: {len(decisions)} posts, "
              f"{sum(1 for r, _ in decisions.values() if not r)} pass the filter")
        return
    entries = parse_listing(read_text(a.listing))
    decisions = read_decisions(a.metadata_decisions) if a.metadata_decisions.strip() else None
    rows = ingest_shard(entries, a.raw_dir, cfg, decisions, a.threads, check_store(a.checks, cfg))
    write_manifest(a.output, rows)
    kept = sum(r.kept for r in rows)
    print(f"ingest: {kept}/{len(rows)} kept")


if __name__ == "__main__":
    main()
