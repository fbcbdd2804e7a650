"""ingest: list the raw folder, give every file a stable id and shard, decode-check it,
and apply the optional Danbooru-style metadata filter.

    python -m pipeline.ingest shard --listing L --raw-dir D --output M --config JSON
    python -m pipeline.ingest metadata --metadata posts.jsonl --output T --config JSON
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

from tqdm import tqdm

from pipeline.imaging import decode_check
from pipeline.manifest import (Row, atomic_write_text, load_config_arg, write_manifest)

RATING_ALIASES = {"general": "g", "sensitive": "s", "safe": "s", "questionable": "q",
                  "explicit": "e"}


# ---------------------------------------------------------------- listing and shards

def source_id(relpath: str) -> str:
    """Stable id of a source: 64 bits of sha1 of its path relative to the raw folder."""
    return hashlib.sha1(relpath.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def shard_of(relpath: str, nshards: int) -> int:
    return int(source_id(relpath), 16) % nshards


def list_raw_dir(raw_dir: str | os.PathLike) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime_ns) of every file below ``raw_dir``, sorted."""
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise SystemExit(f"faceprep: raw_dir {str(raw_dir)!r} is not a folder")
    found = []
    for root, dirs, files in os.walk(raw_dir):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            full = os.path.join(root, name)
            try:
                st = os.stat(full)
            except OSError:
                continue  # vanished or dangling link: nothing to ingest
            found.append((os.path.relpath(full, raw_dir), st.st_size, st.st_mtime_ns))
    found.sort()
    return found


def format_listing(entries) -> str:
    return "".join(f"{json.dumps(rel, ensure_ascii=False)}\t{size}\t{mtime}\n"
                   for rel, size, mtime in entries)


def parse_listing(text: str) -> list[tuple[str, int, int]]:
    out = []
    for line in text.splitlines():
        rel, size, mtime = line.split("\t")
        out.append((json.loads(rel), int(size), int(mtime)))
    return out


def write_shard_listings(entries, out_dir: str | os.PathLike, shards: list[str]) -> list[str]:
    """Write ``<out_dir>/<shard>.tsv`` for every shard, only where the content changed.

    Returns the shards whose listing was (re)written.
    """
    out_dir = Path(out_dir)
    per_shard: dict[str, list] = {s: [] for s in shards}
    for e in entries:
        per_shard[shards[shard_of(e[0], len(shards))]].append(e)
    changed = []
    for shard, items in per_shard.items():
        path = out_dir / f"{shard}.tsv"
        text = format_listing(items)
        try:
            if path.read_text(encoding="utf-8") == text:
                continue
        except FileNotFoundError:
            pass
        atomic_write_text(path, text)
        changed.append(shard)
    return changed


# ---------------------------------------------------------------- metadata filter

def post_tags(post: dict) -> set[str]:
    """Tags of a Danbooru post in either dump style: ``tag_string`` or ``tags: [{name}]``."""
    if "tag_string" in post:
        return set(str(post["tag_string"]).split())
    tags = post.get("tags", [])
    if isinstance(tags, str):
        return set(tags.split())
    return {t["name"] if isinstance(t, dict) else str(t) for t in tags}


def normalize_rating(value) -> str:
    value = str(value or "").lower()
    return RATING_ALIASES.get(value, value[:1])


def judge_post(post: dict, cfg: dict) -> tuple[str, dict]:
    """("", {}) if the post passes the tag/rating filter, else (reason, details)."""
    tags = post_tags(post)
    missing = sorted(set(cfg.get("tags_include", [])) - tags)
    if missing:
        return "tag_missing", {"missing_tags": missing}
    excluded = sorted(set(cfg.get("tags_exclude", [])) & tags)
    if excluded:
        return "tag_excluded", {"excluded_tags": excluded}
    ratings = {normalize_rating(r) for r in cfg.get("ratings", [])}
    rating = normalize_rating(post.get("rating"))
    if ratings and rating not in ratings:
        return "rating", {"rating": rating}
    return "", {}


def post_keys(post: dict) -> list[str]:
    """File stems a post may be saved under: its id and its md5 (Danbooru dumps use both)."""
    return [str(post[k]) for k in ("id", "md5") if post.get(k) not in (None, "")]


def metadata_decisions(lines, cfg: dict) -> dict[str, tuple[str, dict]]:
    decisions: dict[str, tuple[str, dict]] = {}
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        try:
            post = json.loads(line)
        except json.JSONDecodeError:
            print(f"metadata line {n}: not JSON, skipped", file=sys.stderr)
            continue
        verdict = judge_post(post, cfg)
        for key in post_keys(post):
            decisions[key] = verdict
    return decisions


def write_decisions(path, decisions: dict[str, tuple[str, dict]]) -> None:
    lines = [f"{k}\t{reason}\t{json.dumps(d, sort_keys=True)}\n"
             for k, (reason, d) in sorted(decisions.items())]
    atomic_write_text(path, "".join(lines))


def read_decisions(path) -> dict[str, tuple[str, dict]]:
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            key, reason, details = line.rstrip("\n").split("\t")
            out[key] = (reason, json.loads(details))
    return out


# ---------------------------------------------------------------- per-shard ingest

def ingest_file(relpath: str, raw_dir: str, cfg: dict, decisions: dict | None) -> Row:
    """One manifest row for one listed file: keep, or drop with a reason."""
    row = Row(id=source_id(relpath), source=relpath, path=os.path.join(raw_dir, relpath))
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
    reason, info = decode_check(row.path, cfg["max_pixels"])
    width, height = info.pop("width", 0), info.pop("height", 0)
    if reason:
        return row.drop(reason, width=width, height=height, details=info)
    return row.keep(width=width, height=height, details=info)


def ingest_shard(entries, raw_dir: str, cfg: dict, decisions: dict | None) -> list[Row]:
    return [ingest_file(rel, raw_dir, cfg, decisions)
            for rel, _size, _mtime in tqdm(entries, desc="ingest", unit="img", mininterval=2)]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("shard", help="decode-check one shard's listing")
    s.add_argument("--listing", required=True)
    s.add_argument("--raw-dir", required=True)
    s.add_argument("--metadata-decisions", default="")
    s.add_argument("--output", required=True, help="manifest.tsv to write")
    s.add_argument("--config", required=True)
    m = sub.add_parser("metadata", help="apply the tag/rating filter to a metadata JSONL")
    m.add_argument("--metadata", required=True)
    m.add_argument("--output", required=True)
    m.add_argument("--config", required=True)
    a = p.parse_args(argv)
    cfg = load_config_arg(a.config)
    if a.cmd == "metadata":
        with open(a.metadata, encoding="utf-8") as f:
            decisions = metadata_decisions(f, cfg)
        write_decisions(a.output, decisions)
        print(f"metadata: {len(decisions)} posts, "
              f"{sum(1 for r, _ in decisions.values() if not r)} pass the filter")
        return
    entries = parse_listing(Path(a.listing).read_text(encoding="utf-8"))
    decisions = read_decisions(a.metadata_decisions) if a.metadata_decisions.strip() else None
    rows = ingest_shard(entries, a.raw_dir, cfg, decisions)
    write_manifest(a.output, rows)
    kept = sum(r.kept for r in rows)
    print(f"ingest: {kept}/{len(rows)} kept")


if __name__ == "__main__":
    main()
