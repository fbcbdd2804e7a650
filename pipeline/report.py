"""report: the review page (a check page before training, the ranking once rank has run)
and provenance.tsv.

``R/report/`` opens from disk (no server, no network, no build step): ``index.html`` with
``review.js``/``review.css`` beside it and two data files it loads as scripts:

* ``check.js`` (``python -m pipeline.report check``, part of the ``dataset`` target, so it
  exists before any GPU time): the stage funnel, every image of the dataset and every
  image or file a stage dropped, with its reason; duplicate clusters (the image kept, the
  dropped ones, their Hamming distances); no-face sources with the too-small boxes drawn;
  each face over its source with the crop box; the rejects file's ticks and its problems.
* ``ranking.js`` (``python -m pipeline.report ranking``, after rank): scores in score
  order with their signals, the ranked export's verdicts, the newest training samples,
  and whether the training is older than the dataset. Absent, the page says rank has
  not run yet.

Thumbnails (``thumbs/``) and upright source previews (``sources/``) are files beside the
page, kept between runs and remade only when their input file changes; the full-size
view is the dataset file itself (a relative link). ``R/provenance.tsv``: for every raw
file and every face, the last stage it reached, keep/drop, the reason, its score.

    python -m pipeline.report check --name N --dataset R/export/manifest.tsv \
        --dedup R/clean/dedup.tsv --rejects FILE --output R/report/index.html \
        --config JSON [--threads T] R/<stage>/<shard>/manifest.tsv...
    python -m pipeline.report ranking --dataset R/export/manifest.tsv --ranked R/ranked/manifest.tsv \
        --scores R/rank/scores.tsv --network R/finetune/network-final.npz \
        --samples R/finetune/samples --dedup R/clean/dedup.tsv --output R/report/ranking.js \
        --provenance R/provenance.tsv R/<stage>/<shard>/manifest.tsv...

Problems the user must see (reject lines that match no image, an unreadable rejects file,
training older than the dataset) go on the page and to stderr, which the rule shows on
the console.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import importlib
import inspect
import io
import json
import os
import re
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from pipeline.export import read_rejects
from pipeline.manifest import (Row, atomic_write_bytes, atomic_write_text, by_count, dumps_details, face_region, kept,
                               load_config_arg, read_manifest)
from pipeline.rank import Score, read_scores
from util.config import default_rejects

# Stages in data-flow order; dedup (a gather over clean) decides before upscale.
FUNNEL = ("ingest", "crop", "clean", "dedup", "upscale", "normalize", "augment", "export", "ranked")
PROVENANCE_COLUMNS = ["id", "source", "parent_id", "last_stage", "action", "reason", "score",
                      "path", "details"]
SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}")
ASSETS = Path(__file__).with_name("report_assets")
PREVIEW_SIDE = 1024  # upright source previews: enough to see a small face box
# the drop reasons every stage declares (its module's DROPS: the page's words, the note's
# keys); the ranked dataset is export's (pipeline/rounds.py re-exports it)
DECLARED_DROPS = {stage: importlib.import_module(f"pipeline.{'export' if stage == 'ranked' else stage}").DROPS
                  for stage in FUNNEL}
DUPLICATE_REASONS = tuple(DECLARED_DROPS["dedup"])


def config_keys(config: dict) -> dict:
    """Exactly the config the check page reads (rule report's param): the thumbnail size
    and the thresholds its near misses show, each only where its stage reads it
    (crop.min_face means nothing to crop.method none)."""
    from pipeline import crop
    clean = config["clean"]
    return {"thumb": config["report"]["thumb"], "thresholds": {
        "min_face": crop.config_keys(config)["crop"].get("min_face"), "min_side": clean["min_side"],
        "quality": clean["quality"] or {}, "monochrome": clean["monochrome"],
        "radius": clean["near_duplicates"]["radius"]}}


def warn(message: str) -> None:
    """A problem the user must see: stderr goes to the console (the rule tees it)."""
    print(f"WARNING report: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- funnel

@dataclass
class FunnelRow:
    stage: str
    received: int
    kept: int
    dropped: Counter = field(default_factory=Counter)
    # what the numbers count: ingest counts files, crop takes files and gives faces (its
    # drops are files without a face), every later stage counts faces
    unit_in: str = "faces"
    unit_kept: str = "faces"
    unit_dropped: str = "faces"
    kept_files: int | None = None  # crop: the files its faces came from (+ dropped = in)


def funnel(stages: dict[str, list[Row]]) -> list[FunnelRow]:
    """Per stage: images in, kept, dropped by reason.

    A stage lists every image it received, so "in" is its row count (crop: the sources
    its faces came from), whatever order the stages run in. Export lists only its
    dataset: "in" is what its input stage kept, the difference shown as ``duplicate``.
    """
    out = []
    kept_count = {s: sum(r.kept for r in rows) for s, rows in stages.items()}
    for stage in FUNNEL:
        if stage not in stages:
            continue
        rows = stages[stage]
        if stage == "export":
            prev = "augment" if "augment" in stages else "normalize"
            received = kept_count.get(prev, len(rows))
        elif stage == "crop":
            received = len({r.parent_id if r.parent_id and r.id != r.parent_id else r.id for r in rows})
        else:
            received = len(rows)
        dropped = Counter(r.reason or "unspecified" for r in rows if not r.kept)
        if stage == "export":
            unlisted = received - len(rows)
            if unlisted > 0:
                dropped["duplicate"] += unlisted
        row = FunnelRow(stage, received, kept_count[stage], dropped)
        if stage == "ingest":
            row.unit_in = row.unit_kept = row.unit_dropped = "files"
        elif stage == "crop":
            row.unit_in = row.unit_dropped = "files"
            row.kept_files = len({r.parent_id or r.id for r in rows if r.kept})
        out.append(row)
    return out


def funnel_data(rows: list[FunnelRow]) -> list[dict]:
    """The funnel for the page: each stage's counts, what they count, drop reasons by count
    with their words (reason_text)."""
    return [{"stage": f.stage, "in": f.received, "kept": f.kept, "keptFiles": f.kept_files,
             "units": [f.unit_in, f.unit_kept, f.unit_dropped],
             "dropped": [[r, n, reason_text(f.stage, r)] for r, n in by_count(f.dropped)]}
            for f in rows]


# ---------------------------------------------------------------- drop reasons in words

def reason_text(stage: str, reason: str) -> str:
    """A drop reason in words for the page, as its stage declares it ("" when there are
    none beyond its name)."""
    declared = DECLARED_DROPS.get(stage, {}).get(reason)
    return declared.text if declared else ""


# ---------------------------------------------------------------- coverage per raw folder

COVERAGE_MIN_FILES = 3      # a folder smaller than this says little
COVERAGE_WARN_FRACTION = 0.5  # more than this share of a folder's readable files gave no face
COVERAGE_FOLDER_LINES = 3   # more folders than this to warn of: one line for them all
COVERAGE_FOLDER_NAMES = 8   # the folders that one line names


def folder_of(source: str) -> str:
    """The raw sub-folder of a source ("." for the top of raw_dir)."""
    return source.rsplit("/", 1)[0] if "/" in source else "."


def where_of(folder: str) -> str:
    return "the top of raw_dir" if folder == "." else f"raw folder {folder}/"


def tries_for(small: list[int], method: str, min_face) -> list[str]:
    """What to try where files gave no face: the faces found under min_face (sorted sizes), the
    other detector."""
    tries = []
    if small:
        tries.append(f"{len(small)} faces were found below crop.min_face ({min_face} px), the largest "
                     f"{small[-1]} px: lowering crop.min_face to {small[-1]} keeps them")
    if method == "dlib":
        tries.append("crop.method: dlib finds photographed faces; for drawn (anime) faces try "
                     "crop.method: animeface")
    elif method == "animeface":
        tries.append("crop.method: animeface finds drawn faces; for photographs try crop.method: dlib")
    if not small and min_face:
        tries.append(f"or lower crop.min_face (now {min_face} px)")
    return tries


def coverage(stages: dict[str, list[Row]]) -> tuple[list[dict], list[str]]:
    """Per raw sub-folder: files in, files read, files with a face, faces out, whether to warn;
    and a warning (naming the setting to try) for each folder where most files read gave no
    face, or one for them all where there are more than COVERAGE_FOLDER_LINES such folders."""
    table: dict[str, dict] = {}
    for r in stages.get("ingest", []):
        t = table.setdefault(folder_of(r.source), {"folder": folder_of(r.source), "files": 0, "read": 0,
                                                    "withFace": 0, "noFace": 0, "faces": 0, "small": []})
        t["files"] += 1
        t["read"] += r.kept
    crop = stages.get("crop", [])
    method = next((r.details.get("method") for r in crop if r.details.get("method")), "")
    min_face = next((r.details["min_face"] for r in crop if "min_face" in r.details), None)
    with_face: dict[str, set] = {}
    for r in crop:
        t = table.get(folder_of(r.source))
        if t is None:
            continue
        if r.kept:
            t["faces"] += 1
            with_face.setdefault(t["folder"], set()).add(r.parent_id or r.id)
        elif r.reason == "no_face":
            t["noFace"] += 1
            t["small"] += [max(int(b[2]), int(b[3])) for b in (r.details.get("small_faces") or []) if len(b) == 4]
    flagged = []  # (folder, its counts, the sizes of faces under min_face)
    for folder, t in sorted(table.items()):
        t["withFace"] = len(with_face.get(folder, ()))
        small = sorted(t.pop("small"))
        t["warn"] = t["read"] >= COVERAGE_MIN_FILES and t["noFace"] > COVERAGE_WARN_FRACTION * t["read"]
        if t["warn"]:
            flagged.append((folder, t, small))
    detector = f"crop.method {method or '?'}"
    if len(flagged) <= COVERAGE_FOLDER_LINES:
        warnings = [shown(f"{where_of(folder)}: {t['noFace']} of {t['read']} files gave no face ({detector}): "
                          + "; ".join(tries_for(small, method, min_face))) for folder, t, small in flagged]
    else:  # one line, not a screenful: the folder table marks each of them
        worst_first = sorted(flagged, key=lambda f: -f[1]["noFace"])
        names = [f"{f}/" if f != "." else "the top of raw_dir" for f, _, _ in worst_first]
        more = len(names) - COVERAGE_FOLDER_NAMES
        listed = ", ".join(names[:COVERAGE_FOLDER_NAMES]) + (f" and {more} more" if more > 0 else "")
        no_face, read = (sum(t[k] for _, t, _ in flagged) for k in ("noFace", "read"))
        small = sorted(b for _, _, sizes in flagged for b in sizes)
        warnings = [shown(f"{len(flagged)} raw folders where most files gave no face ({no_face} of {read} "
                          f"files, {detector}): {listed}; the Dropped tab's coverage table lists each: "
                          + "; ".join(tries_for(small, method, min_face)))]
    return list(table.values()), warnings


# ---------------------------------------------------------------- provenance

def provenance(stages: dict[str, list[Row]], scores: dict[str, Score]) -> list[list[str]]:
    """One row per raw file and per face: the last stage that listed it and its verdict."""
    last: dict[str, tuple[str, Row]] = {}
    for stage in FUNNEL:
        for row in stages.get(stage, []):
            if stage == "dedup" and row.kept:
                continue  # dedup keeps say nothing new; a later stage may have dropped it
            last[row.id] = (stage, row)
    ranked_listed = {r.id for r in stages.get("ranked", [])}
    faces_of = Counter(r.parent_id for r in stages.get("crop", []) if r.parent_id and r.id != r.parent_id)
    table = []
    for image_id, (stage, row) in last.items():
        details = dict(row.details)
        if stage == "ingest" and row.kept and faces_of[image_id]:
            stage, details = "crop", {**details, "faces": faces_of[image_id]}  # split into faces
        elif stage == "export" and "ranked" in stages and image_id not in ranked_listed:
            row = row.drop("not_in_ranked")
            stage = "ranked"
        score = f"{scores[image_id].score:.6f}" if image_id in scores else ""
        table.append([row.id, row.source, row.parent_id, stage, row.action, row.reason, score,
                      row.path, dumps_details(details)])
    table.sort(key=lambda t: (t[1], t[0]))
    return table


def format_provenance(table: list[list[str]]) -> str:
    buf = io.StringIO()
    from pipeline.manifest import tsv_writer  # quotes CR too: any file name (issue 16)
    writer = tsv_writer(buf)
    writer.writerow(PROVENANCE_COLUMNS)
    writer.writerows(table)
    return buf.getvalue()


# ---------------------------------------------------------------- reading the results tree

def stage_of(manifest_path: str) -> str:
    """R/<stage>/<shard>/manifest.tsv -> stage."""
    return Path(manifest_path).parent.parent.name


def load_stages(stage_manifests: list[str], dedup: str | None, dataset: str | None,
                ranked: str | None = None) -> dict[str, list[Row]]:
    """Rows by stage; any per-shard stage the rule passes is read, whatever its name."""
    stages: dict[str, list[Row]] = {}
    for path in stage_manifests:
        stages.setdefault(stage_of(path), []).extend(read_manifest(path))
    for stage, path in (("dedup", dedup), ("export", dataset), ("ranked", ranked)):
        if path and Path(path).exists():
            stages[stage] = read_manifest(path)
    # a later stage may list an image an earlier one dropped (upscale lists dedup's
    # duplicates as dropped, never processed): count and show each drop once, where it happened
    dropped: set[str] = set()
    for stage in sorted(stages, key=lambda s: FUNNEL.index(s) if s in FUNNEL else len(FUNNEL)):
        if stage in ("export", "ranked"):
            continue
        rows = stages[stage]
        stages[stage] = [r for r in rows if r.kept or r.id not in dropped]
        dropped.update(r.id for r in rows if not r.kept)
    return stages


def manifest_digest(export_manifest: str | os.PathLike) -> str:
    """The sha256 of export's manifest (ids, files, order): the check and ranking pages carry
    it, so the page can tell whether its two halves were made from the same dataset."""
    return hashlib.sha256(Path(export_manifest).read_bytes()).hexdigest()


def training_staleness(network: str | os.PathLike | None, export_manifest: str | os.PathLike) -> str:
    """"" when the network was trained on this dataset, else why it looks older.

    The fingerprint of the set the network trained on, as its training run recorded it,
    decides when it has one (``gan.runs.staleness``: the same fingerprint of
    ``export_manifest``, ids and image bytes); otherwise (a pretrained file, a TF1 pickle)
    file times do.
    """
    if not network or not Path(network).exists() or not Path(export_manifest).exists():
        return ""
    from gan.runs import network_provenance, staleness  # numpy only, no TensorFlow
    if network_provenance(network).get("dataset"):
        try:  # the line rank's log gives too
            return staleness(network, export_manifest).removeprefix("warning: ")
        except OSError as e:
            return f"cannot fingerprint the dataset {export_manifest}: {e}"
    if os.stat(network).st_mtime_ns < os.stat(export_manifest).st_mtime_ns:
        return (f"the network {network} is older than the dataset {export_manifest}: "
                "its scores may not fit the images now in it; rerun the fine-tune")
    return ""


def shown(text: str) -> str:
    """Text for the page and the console: a name with non-UTF-8 bytes (surrogate-escaped)
    must not stop the page from being written."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def read_rejects_checked(path: str | None) -> tuple[set[str], list[str]]:
    """(reject lines, problems): an unreadable file is a problem, not a crash; lines the
    reader warns about (read_rejects's ``warn``, where it has one) are problems too."""
    if not path:
        return set(), []
    warnings: list[str] = []
    kwargs = {"warn": warnings.append} if "warn" in inspect.signature(read_rejects).parameters else {}
    try:
        lines = read_rejects(path, **kwargs)
    except (OSError, UnicodeDecodeError, ValueError, SystemExit) as e:
        return set(), [shown(f"the rejects file {path} cannot be read ({type(e).__name__}: {e}); "
                             "the page starts with no rejects and saving would replace it")]
    return lines, [shown(f"rejects file: {w}") for w in warnings]


def preset_rejects(lines: set[str], dataset: list[Row]) -> tuple[list[str], list[str]]:
    """(ids the page preticks, lines that match no image).

    A line names a dataset id or a source (all its images). Unmatched lines are carried
    over unchanged so a download or save never loses them.
    """
    out = {r.id for r in dataset if r.id in lines or r.source in lines}
    matched = {r.id for r in dataset} | {r.source for r in dataset}
    unmatched = sorted(lines - matched)
    return sorted(out | set(unmatched)), unmatched


# ---------------------------------------------------------------- images beside the page

def thumb_name(image_id: str) -> str:
    """A file name for an id that cannot escape the thumbs folder."""
    if SAFE_NAME.fullmatch(image_id):
        return f"{image_id}.jpg"
    return hashlib.sha1(image_id.encode("utf-8", "surrogateescape")).hexdigest() + ".jpg"


def source_preview_name(source: str) -> str:
    """The preview of a source (its path relative to raw_dir: the same in every workdir)."""
    # 80 bits of sha1: no collision among millions of sources, and short in check.js
    return hashlib.sha1(source.encode("utf-8", "surrogateescape")).hexdigest()[:20] + ".jpg"


def _make_image(job: tuple[str, str, int]) -> tuple[str, int, int, str]:
    """(dest, upright width, upright height, error): a JPEG of at most side x side."""
    from pipeline.imaging import load_rgb
    src, dest, side = job
    try:
        im, _ = load_rgb(src)
        w, h = im.size
        im.thumbnail((side, side), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=85)
        atomic_write_bytes(dest, buf.getvalue())
        return dest, w, h, ""
    except Exception as e:  # a missing or broken file must not lose the whole page
        return dest, 0, 0, f"{type(e).__name__}: {e}"


def file_key(path: str, side: int) -> str:
    st = os.stat(path)
    return f"{path}|{st.st_size}|{st.st_mtime_ns}|{side}"


def make_images(folder: Path, wanted: dict[str, tuple[str, int]], threads: int = 1,
                index_path: Path | None = None) -> dict[str, tuple[int, int]]:
    """Files ``folder/<name>`` from ``wanted`` {name: (source file, side)}, remade only when
    the source changed; others in the folder are removed. Returns {name: upright size}.

    What each file was made from (path, size, mtime) is kept in ``index_path``: outside
    the results (the rule puts it under cache_dir) so two runs still give identical results.
    """
    folder.mkdir(parents=True, exist_ok=True)
    index_path = Path(index_path) if index_path else folder / "index.json"
    try:
        old = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old = {}
    done: dict[str, list] = {}
    jobs = []
    for name, (src, side) in wanted.items():
        try:
            key = file_key(src, side)
        except OSError:
            continue
        prev = old.get(name)
        if prev and prev[0] == key and (folder / name).exists():
            done[name] = prev
        else:
            jobs.append((src, str(folder / name), side))
            done[name] = [key, 0, 0]
    if jobs:
        print(f"report: making {len(jobs)} images in {folder} ({len(wanted) - len(jobs)} reused)", flush=True)
        if threads > 1 and len(jobs) > 16:
            with ProcessPoolExecutor(max_workers=threads) as pool:
                results = list(pool.map(_make_image, jobs, chunksize=max(1, len(jobs) // (threads * 8))))
        else:
            results = [_make_image(j) for j in jobs]
        for dest, w, h, err in results:
            name = Path(dest).name
            if err:
                print(f"report: no image for {name}: {err}")
                done.pop(name, None)
            else:
                done[name][1:] = [w, h]
    for stale in folder.iterdir():
        if stale.name not in done and stale != index_path:
            stale.unlink()
    atomic_write_text(index_path, json.dumps(done, sort_keys=True))
    return {name: (v[1], v[2]) for name, v in done.items()}


def newest_sample_grid(samples_dir: str | None) -> Path | None:
    """The sample grid of the latest snapshot (names carry the kimg, zero-padded)."""
    if not samples_dir or not Path(samples_dir).is_dir():
        return None
    grids = sorted(Path(samples_dir).glob("fakes*.png")) or sorted(
        Path(samples_dir).glob("*.png"), key=lambda p: (p.stat().st_mtime_ns, p.name))
    return grids[-1] if grids else None


def copy_scaled(src: Path, dest: Path, max_side: int = 1536) -> bool:
    try:
        with Image.open(src) as im:
            if max(im.size) <= max_side:
                atomic_write_bytes(dest, Path(src).read_bytes())
            else:
                im = im.convert("RGB")
                im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
                buf = io.BytesIO()
                im.save(buf, format="PNG")
                atomic_write_bytes(dest, buf.getvalue())
        return True
    except (OSError, ValueError) as e:
        print(f"report: cannot copy {src}: {e}")
        return False


# ---------------------------------------------------------------- what each image shows

def _num(v) -> float | int:
    """A coordinate for the page: 0.1 px is plenty, and whole numbers print without '.0'."""
    v = round(float(v), 1)
    return int(v) if v.is_integer() else v


def face_geometry(details: dict):
    """The region a face was cut from (manifest.face_region, as scores.tsv has it), in
    upright source pixels to 0.1 px: [l, t, r, b] or 4 [x, y] corners."""
    region = face_region(details)
    if region is None:
        return None
    return [[_num(x), _num(y)] for x, y in region] if isinstance(region[0], list) else [_num(v) for v in region]


def small_face_boxes(details: dict) -> list:
    """crop's faces below min_face ([x, y, w, h] each) as [l, t, r, b]; [] when absent."""
    out = []
    for b in details.get("small_faces") or []:
        if isinstance(b, list) and len(b) == 4:
            x, y, w, h = (float(v) for v in b)
            out.append([_num(x), _num(y), _num(x + w), _num(y + h)])
    return out


def drop_note(row: Row, stage: str = "") -> str:
    """One line about why a row was dropped (the details a user needs)."""
    d = row.details
    if row.reason in DUPLICATE_REASONS:
        dist = d.get("distance", 0 if row.reason == "exact_duplicate" else "?")
        return f"duplicate of {d.get('duplicate_of', '?')}, distance {dist}"
    if row.reason == "no_face":
        n = len(d.get("small_faces") or [])
        parts = [f"min_face {d['min_face']}" if "min_face" in d else ""]
        if n:
            parts.append(f"{n} face(s) found below min_face")
        return "; ".join(p for p in parts if p)
    declared = DECLARED_DROPS.get(stage, {}).get(row.reason)
    return ", ".join(f"{k} {d[k]}" for k in (declared.note if declared else ()) if k in d)


@dataclass
class Item:
    id: str
    source: str
    reason: str            # "" for a dataset image, else "<stage>: <reason>"
    image: str = ""        # the file its thumbnail and full view come from
    geom: object = None    # region over the source (see face_geometry), or small boxes
    preview: str = ""      # source file to show it over ("" = none)
    note: str = ""


def collect_items(stages: dict[str, list[Row]]) -> tuple[list[Item], list[list]]:
    """Dataset images (id order) then every drop, and the duplicate clusters."""
    raw_path = {r.source: r.path for r in stages.get("ingest", []) if r.kept}
    items = []
    for r in sorted(kept(stages.get("export", [])), key=lambda r: r.id):
        geom = face_geometry(r.details)
        items.append(Item(r.id, r.source, "", r.path, geom, raw_path.get(r.source, "") if geom else ""))
    clusters: dict[str, list] = {}
    for stage, rows in stages.items():
        if stage in ("export", "ranked"):
            continue  # their verdicts are the dataset itself and the ranking's
        for r in rows:
            if r.kept:
                continue
            reason = f"{stage}: {r.reason or 'unspecified'}"
            # error texts name the file: show it as the user knows it (and keep the page
            # the same in every workdir)
            note = drop_note(r, stage).replace(r.path, r.source) if r.path else drop_note(r, stage)
            if stage == "ingest":
                items.append(Item(r.id, r.source, reason, "", None, "", note))
            elif r.reason == "no_face" or (stage == "crop" and r.parent_id in ("", r.id)):
                # a whole source: show it, with the too-small faces crop found
                src = raw_path.get(r.source, r.path)
                items.append(Item(r.id, r.source, reason, src, small_face_boxes(r.details), src, note))
            else:
                geom = face_geometry(r.details)
                items.append(Item(r.id, r.source, reason, r.path, geom,
                                  raw_path.get(r.source, "") if geom else "", note))
            if r.reason in DUPLICATE_REASONS:
                d = r.details
                dist = d.get("distance", 0 if r.reason == "exact_duplicate" else None)
                clusters.setdefault(str(d.get("duplicate_of", "")), []).append([r.id, dist])
    return items, [[k, v] for k, v in sorted(clusters.items())]


# ---------------------------------------------------------------- near misses

NEAR = 6  # images shown on each side of a threshold


def _count(n: int, unit: str) -> str:
    return f"{n} {unit if n != 1 else unit.rstrip('s')}"


def _near(setting: str, threshold, measure: str, kept_vals: list, dropped_vals: list, low_is_bad: bool,
          unit: str = "faces") -> dict | None:
    """One threshold's near misses: kept images closest to it, dropped ones just past it
    ([id, value, kept]), and what moving it to the nearest dropped value changes."""
    if threshold is None or not (kept_vals or dropped_vals):
        return None
    inside = sorted(kept_vals, key=lambda x: (x[1] if low_is_bad else -x[1], x[0]))[:NEAR]
    past = sorted(dropped_vals, key=lambda x: (-x[1] if low_is_bad else x[1], x[0]))[:NEAR]
    advice = []
    if past:
        v = past[0][1]
        n = sum(1 for _, x in dropped_vals if (x >= v if low_is_bad else x <= v))
        advice.append(f"{'lowering' if low_is_bad else 'raising'} {setting} to {v} adds {_count(n, unit)}")
    if inside:
        v = inside[0][1]
        n = sum(1 for _, x in kept_vals if (x <= v if low_is_bad else x >= v))
        beyond = f"just above {v}" if low_is_bad else f"just below {v}"
        advice.append(f"{'raising' if low_is_bad else 'lowering'} it {beyond} drops {_count(n, 'faces')}")
    return {"setting": setting, "value": threshold, "measure": measure, "advice": "; ".join(advice),
            "items": [[i, v, True] for i, v in inside] + [[i, v, False] for i, v in past]}


def near_misses(stages: dict[str, list[Row]], thresholds: dict) -> list[dict]:
    """For every threshold that drops images (crop.min_face, clean.min_side, the quality
    floors, monochrome, the near-duplicate radius): the kept images closest to it and the
    dropped ones just past it, with their values. The score cut is the page's (ranking.js)."""
    out = []
    crop, clean = stages.get("crop", []), stages.get("clean", [])
    # crop.min_face: a face is kept when the shorter side of its detection box reaches it
    faces = [(r.id, min(int(r.details["box"][2]), int(r.details["box"][3]))) for r in crop
             if r.kept and isinstance(r.details.get("box"), list) and len(r.details["box"]) == 4]
    small = [(r.id, b) for r in crop if r.reason == "no_face"
             for b in [max((min(int(f[2]), int(f[3])) for f in r.details.get("small_faces") or [] if len(f) == 4),
                           default=None)] if b is not None]
    out.append(_near("crop.min_face", thresholds.get("min_face"), "face side px", faces, small, True, "files"))
    out.append(_near("clean.min_side", thresholds.get("min_side"), "short side px",
                     [(r.id, min(r.width, r.height)) for r in clean if r.kept and r.width and r.height],
                     [(r.id, r.details["side"]) for r in clean if r.reason == "too_small" and "side" in r.details], True))
    quality = thresholds.get("quality") or {}
    for key, measure, reason, low_is_bad in (("min_sharpness", "sharpness", "blurry", True),
                                             ("min_brightness", "brightness", "too_dark", True),
                                             ("max_brightness", "brightness", "too_bright", False),
                                             ("min_contrast", "contrast", "low_information", True)):
        kept_vals = [(r.id, r.details[measure]) for r in clean if r.kept and measure in r.details]
        dropped = [(r.id, r.details[measure]) for r in clean if r.reason == reason and measure in r.details]
        out.append(_near(f"clean.quality.{key}", quality.get(key), measure, kept_vals, dropped, low_is_bad))
    mono = thresholds.get("monochrome") or {}
    if mono.get("method") in ("chroma", "both"):
        out.append(_near("clean.monochrome.min_colorful_fraction", mono.get("min_colorful_fraction"),
                         "colourful fraction",
                         [(r.id, r.details["colorful_fraction"]) for r in clean if r.kept and "colorful_fraction" in r.details],
                         [(r.id, r.details["colorful_fraction"]) for r in clean
                          if r.reason == "monochrome" and "colorful_fraction" in r.details], True))
    if mono.get("method") in ("colors", "both"):
        out.append(_near("clean.monochrome.max_colors", mono.get("max_colors"), "unique colours",
                         [(r.id, r.details["unique_colors"]) for r in clean if r.kept and "unique_colors" in r.details],
                         [(r.id, r.details["unique_colors"]) for r in clean
                          if r.reason == "monochrome" and "unique_colors" in r.details], False))
    # the radius: dropped copies at the largest distances (kept pairs' distances are not recorded)
    near = [(r.id, int(r.details["distance"])) for r in stages.get("dedup", [])
            if r.reason == "near_duplicate" and "distance" in r.details]
    radius = thresholds.get("radius")
    if near and radius is not None:
        near.sort(key=lambda x: (-x[1], x[0]))
        d = near[0][1]
        n = sum(1 for _, x in near if x == d)
        out.append({"setting": "clean.near_duplicates.radius", "value": radius, "measure": "Hamming distance",
                    "advice": f"lowering clean.near_duplicates.radius to {d - 1} keeps {_count(n, 'faces')}",
                    "items": [[i, v, False] for i, v in near[:NEAR]]})
    return [nm for nm in out if nm]


# ---------------------------------------------------------------- page

def script_json(value) -> str:
    """JSON safe inside <script>: no '<', '>' or '&' can end the element early."""
    return (json.dumps(value, ensure_ascii=True, separators=(",", ":")).replace("<", "\\u003c")
            .replace(">", "\\u003e").replace("&", "\\u0026"))


def data_script(var: str, value) -> str:
    """A data file the page loads with <script src>: a JSON string given to JSON.parse,
    which Chromium reads about twice as fast as the same object literal (100k images:
    ~0.4 s instead of ~0.9 s, bench/RESULTS.md)."""
    return f"window.{var} = JSON.parse({json.dumps(script_json(value))});\n"


CSP = ("default-src 'none'; img-src 'self' file: data: blob:; style-src 'self' file:; "
       "script-src 'self' file:; connect-src 'self'")


def render_index(name: str, problems: list[str], warnings: list[str], rejects_path: str) -> str:
    """The page shell (report_assets/index.html.j2, autoescaped): its panels' places and the
    problems and warnings (readable without JavaScript); review.js renders every panel."""
    import jinja2
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(ASSETS), autoescape=True,
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.get_template("index.html.j2").render(name=name, csp=CSP, problems=problems,
                                                    warnings=warnings, rejects_path=rejects_path)


FULL_EXTS = [".png", ".jpg", ".jpeg", ".webp"]


class FullPaths:
    """Full-size links, compact: ``<id><ext>`` in a known folder is one number
    (folder index * 4 + extension index), anything else the relative path itself."""

    def __init__(self, page_dir: Path):
        self.page_dir = page_dir.resolve()
        self.dirs: list[str] = []
        self._dir_index: dict[str, int] = {}
        self._rel: dict[str, str] = {}

    def entry(self, image_id: str, path: str):
        if not path:
            return ""
        folder, base = os.path.split(path)
        rel = self._rel.get(folder)
        if rel is None:  # one resolve per folder, not per image
            rel = self._rel[folder] = Path(os.path.relpath(Path(folder or ".").resolve(), self.page_dir)).as_posix()
        stem, ext = os.path.splitext(base)
        if stem == image_id and ext in FULL_EXTS:
            d = self._dir_index.setdefault(rel, len(self.dirs))
            if d == len(self.dirs):
                self.dirs.append(rel)
            return d * len(FULL_EXTS) + FULL_EXTS.index(ext)
        return f"{rel}/{base}"


def check_data(name: str, items: list[Item], clusters: list, thumbs: dict, previews: dict,
               page_dir: Path, preset: list[str], problems: list[str], fingerprint: str,
               rejects_path: str, funnel_rows: list[FunnelRow] = (), folders: list[dict] = (),
               warnings: list[str] = (), near: list[dict] = ()) -> dict:
    """The page's data, in columns (a 100,000-image dataset stays a few MB)."""
    sources, source_index = [], {}
    preview_list, preview_index = [], {}
    reasons, reason_index = [""], {"": 0}
    cols = {k: [] for k in ("id", "src", "reason", "thumb", "full", "geom", "prev", "note")}
    full = FullPaths(page_dir)
    for it in items:
        si = source_index.setdefault(it.source, len(sources))
        if si == len(sources):
            sources.append(it.source)
        ri = reason_index.setdefault(it.reason, len(reasons))
        if ri == len(reasons):
            reasons.append(it.reason)
        pi = -1
        if it.preview and source_preview_name(it.source) in previews:
            pname = source_preview_name(it.source)
            pi = preview_index.setdefault(pname, len(preview_list))
            if pi == len(preview_list):
                preview_list.append([pname, *previews[pname]])
        tname = thumb_name(it.id)
        has_thumb = tname in thumbs
        cols["id"].append(it.id)
        cols["src"].append(si)
        cols["reason"].append(ri)
        # 1: thumbs/<id>.jpg, a string: another name, 0: none (keeps the file small)
        cols["thumb"].append((1 if tname == f"{it.id}.jpg" else tname) if has_thumb else 0)
        cols["full"].append(full.entry(it.id, it.image) if has_thumb else "")
        cols["geom"].append(it.geom)
        cols["prev"].append(pi)
        cols["note"].append(it.note)
    one_line = " ".join(str(name).split())  # a comment line must stay one line
    return {"version": 1, "name": name, "datasetFingerprint": fingerprint,
            "rejectsPath": rejects_path, "sources": sources, "reasons": reasons,
            "previews": preview_list, "fullDirs": full.dirs, "fullExts": FULL_EXTS,
            "items": cols, "clusters": clusters,
            "preset": preset, "problems": problems, "warnings": list(warnings),
            "funnel": funnel_data(list(funnel_rows)), "folders": list(folders),
            "nearMisses": list(near),
            "header": [f"faceprep rejects for {one_line}",
                       "one dataset image id a line (ids as in rank/scores.tsv); '#' starts a comment",
                       f"save as {' '.join(rejects_path.split())} and rerun ranked_dataset"]}


def copy_assets(out_dir: Path) -> None:
    for asset in ("review.js", "review.css"):
        atomic_write_bytes(out_dir / asset, (ASSETS / asset).read_bytes())


# ---------------------------------------------------------------- the two builds

def build_check(*, name: str, stage_manifests: list[str], dataset: str, dedup: str | None,
                rejects: str | None, output: str, cfg: dict, threads: int = 1,
                rejects_shown: str | None = None, cache: str | None = None) -> list[str]:
    """The page before training: index.html, check.js, thumbnails, source previews.

    Returns the problems it found (also on the page and on stderr)."""
    out_dir = Path(output).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(".*.tmp"):  # temp files of a killed run (atomic writes)
        stale.unlink(missing_ok=True)
    stages = load_stages(stage_manifests, dedup, dataset)
    items, clusters = collect_items(stages)
    side = int(cfg["thumb"])
    wanted_thumbs = {thumb_name(it.id): (it.image, side) for it in items if it.image}
    wanted_previews = {source_preview_name(it.source): (it.preview, PREVIEW_SIDE) for it in items if it.preview}
    cache_dir = Path(cache) if cache else None
    thumbs = make_images(out_dir / "thumbs", wanted_thumbs, threads, cache_dir and cache_dir / "thumbs.json")
    previews = make_images(out_dir / "sources", wanted_previews, threads, cache_dir and cache_dir / "sources.json")

    lines, problems = read_rejects_checked(rejects)
    dataset_rows = [r for r in kept(stages.get("export", []))]
    preset, unmatched = preset_rejects(lines, dataset_rows)
    if unmatched:
        listed = ", ".join(repr(u) for u in unmatched[:10]) + (" ..." if len(unmatched) > 10 else "")
        problems.append(shown(f"{len(unmatched)} line(s) of the rejects file {rejects} match no image "
                              f"of the dataset: {listed}"))
    folders, warnings = coverage(stages)
    for p in problems + warnings:
        warn(p)
    fingerprint = manifest_digest(dataset) if Path(dataset).exists() else ""
    shown_path = rejects_shown or rejects or default_rejects(name)
    data = check_data(name, items, clusters, thumbs, previews, out_dir, preset, problems,
                      fingerprint, shown_path, funnel(stages), folders, warnings,
                      near_misses(stages, cfg.get("thresholds") or {}))
    copy_assets(out_dir)
    atomic_write_text(out_dir / "check.js", data_script("FACEPREP_CHECK", data))
    # where `python -m pipeline.review` saves (an absolute path: the server may run elsewhere)
    atomic_write_text(out_dir / "review.json", json.dumps(
        {"name": name, "rejects": str(Path(rejects).resolve()) if rejects else ""}, indent=1) + "\n")
    atomic_write_text(output, render_index(name, problems, warnings, shown_path))
    return problems


def build_ranking(*, stage_manifests: list[str], dataset: str, dedup: str | None, ranked: str | None,
                  scores_path: str, network: str | None, samples_dir: str | None, output: str,
                  provenance_path: str, training_set: str | None = None) -> list[str]:
    """ranking.js beside the page (scores, signals, verdicts, samples) and provenance.tsv."""
    out_dir = Path(output).parent
    stages = load_stages(stage_manifests, dedup, dataset, ranked)
    scores = read_scores(scores_path)
    problems = []
    # the set the network's round trained on (the curated set or what earlier rounds left)
    stale = training_staleness(network, training_set or dataset)
    if stale:
        problems.append(shown(stale))
    names = sorted({n for s in scores for n in s.signals})
    sample = None
    grid = newest_sample_grid(samples_dir)
    if grid is not None and copy_scaled(grid, out_dir / "samples.png"):
        sample = "samples.png"
    for p in problems:
        warn(p)
    worse_than, decided = explain_scores(scores, names)
    data = {"datasetFingerprint": manifest_digest(dataset), "ids": [s.id for s in scores],
            "score": [round(s.score, 6) for s in scores], "std": [round(s.std, 6) for s in scores],
            # the std is the score's spread over reshuffled batches: 0 everywhere (one shuffle)
            # means nothing, and the page then shows no "±"
            "stdMeaningful": any(s.std > 0 for s in scores),
            "signals": {n: [round(s.signals[n], 6) if n in s.signals else None for s in scores] for n in names},
            "signalInfo": {n: signal_info(n) for n in names},
            "worseThan": worse_than, "decided": decided,
            "status": {r.id: r.reason for r in stages.get("ranked", []) if not r.kept},
            "samples": sample, "problems": problems}
    atomic_write_text(output, data_script("FACEPREP_RANKING", data))
    atomic_write_text(provenance_path, format_provenance(provenance(stages, {s.id: s for s in scores})))
    return problems


def signal_info(name: str) -> dict:
    """What a signal means for the page: label, which end is bad, the words for a low one."""
    from pipeline.rank import SIGNALS
    info = SIGNALS.get(name, {})
    return {"label": info.get("label", name), "worse": info.get("worse", "low"),
            "lowMeans": info.get("low_means", f"low {name}")}


def explain_scores(scores: list[Score], names: list[str]) -> tuple[dict[str, list], list[int]]:
    """Per signal, the percent of ranked images that are better on it than each image (0 =
    the best, 100 = the worst); and per image the signal that pulled its score down most
    (an index into ``names``, -1 when none did), from rank.contributions, the very parts
    the combined score adds up."""
    import numpy as np
    from pipeline.rank import SIGNALS, contributions
    n = len(scores)
    worse_than: dict[str, list] = {}
    values = {}
    for name in names:
        v = np.array([s.signals.get(name, np.nan) for s in scores], dtype=np.float64)
        values[name] = v
        good = -v if SIGNALS.get(name, {}).get("worse") == "high" else v  # higher = better
        finite = np.sort(good[np.isfinite(good)])
        better = len(finite) - np.searchsorted(finite, good, side="right")
        pct = np.round(100 * better / max(len(finite) - 1, 1))
        worse_than[name] = [int(p) if np.isfinite(g) else None for p, g in zip(pct, good)]
    decided = [-1] * n
    if n and names and "knn" in names and all(name in SIGNALS for name in names) \
            and all(np.isfinite(v).all() for v in values.values()):
        parts = contributions(values)
        stacked = np.stack([parts[name] for name in names])
        low = stacked.argmin(axis=0)
        decided = [int(k) if stacked[k, i] < 0 else -1 for i, k in enumerate(low)]
    return worse_than, decided


def build_figures(generate_dir: str, output: str) -> list[tuple[str, str]]:
    """figures.js beside the page: links to what `generate` made (grids, video, seeds)."""
    from gan.generate import figure_links  # no TensorFlow import
    links = figure_links(generate_dir, Path(output).parent)
    atomic_write_text(output, data_script("FACEPREP_FIGURES", [{"label": l, "href": h} for l, h in links]))
    return links


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="part", required=True)
    c = sub.add_parser("check", help="the page before training (dataset target)")
    c.add_argument("--name", required=True)
    c.add_argument("--dataset", required=True, help="R/export/manifest.tsv")
    c.add_argument("--dedup", help="R/clean/dedup.tsv")
    c.add_argument("--rejects", default="", help="rejects file (may not exist yet)")
    c.add_argument("--output", required=True, help="R/report/index.html")
    c.add_argument("--config", required=True, help="the report block as JSON")
    c.add_argument("--threads", type=int, default=1)
    c.add_argument("--cache", help="where to remember what each thumbnail was made from "
                                   "(default: an index.json in each image folder)")
    c.add_argument("stage_manifests", nargs="*", help="R/<stage>/<shard>/manifest.tsv")
    r = sub.add_parser("ranking", help="the ranking beside the page (after rank)")
    r.add_argument("--dataset", required=True)
    r.add_argument("--dedup")
    r.add_argument("--ranked", help="R/ranked/manifest.tsv")
    r.add_argument("--scores", required=True)
    r.add_argument("--network", help="R/finetune/network-final.npz (is it older than the dataset?)")
    r.add_argument("--samples", help="R/finetune/samples (newest grid is shown)")
    r.add_argument("--output", required=True, help="R/report/ranking.js")
    r.add_argument("--provenance", required=True, help="R/provenance.tsv")
    r.add_argument("--training-set", help="the manifest the network's round trained on (default --dataset)")
    r.add_argument("stage_manifests", nargs="*")
    f = sub.add_parser("figures", help="links to the generate target's figures (after generate)")
    f.add_argument("--generate", required=True, help="R/generate (holds generate.json)")
    f.add_argument("--output", required=True, help="R/report/figures.js")
    a = p.parse_args(argv)
    if a.part == "figures":
        print(f"figures: {len(build_figures(a.generate, a.output))} linked in {a.output}")
    elif a.part == "check":
        build_check(name=a.name, stage_manifests=a.stage_manifests, dataset=a.dataset, dedup=a.dedup,
                    rejects=a.rejects.strip() or None, output=a.output, cfg=load_config_arg(a.config),
                    threads=a.threads, rejects_shown=a.rejects.strip() or None, cache=a.cache)
        print(f"report: {a.output}")
    else:
        build_ranking(stage_manifests=a.stage_manifests, dataset=a.dataset, dedup=a.dedup, ranked=a.ranked,
                      scores_path=a.scores, network=a.network, samples_dir=a.samples, output=a.output,
                      provenance_path=a.provenance, training_set=a.training_set)
        print(f"ranking: {a.output}\nprovenance: {a.provenance}")


if __name__ == "__main__":
    main()
