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
import html
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
from pipeline.manifest import (Row, atomic_write_bytes, atomic_write_text, dumps_details, kept,
                               load_config_arg, read_manifest)
from pipeline.rank import Score, read_scores

# Stages in data-flow order; dedup (a gather over clean) decides before upscale.
FUNNEL = ("ingest", "crop", "clean", "dedup", "upscale", "normalize", "augment", "export", "ranked")
PROVENANCE_COLUMNS = ["id", "source", "parent_id", "last_stage", "action", "reason", "score",
                      "path", "details"]
SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}")
ASSETS = Path(__file__).with_name("report_assets")
PREVIEW_SIDE = 1024  # upright source previews: enough to see a small face box
DUPLICATE_REASONS = ("exact_duplicate", "near_duplicate", "source_duplicate")


def esc(value) -> str:
    return html.escape(str(value), quote=True)


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
        out.append(FunnelRow(stage, received, kept_count[stage], dropped))
    return out


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


def dataset_fingerprint(export_manifest: str | os.PathLike) -> str:
    """What the dataset is: the sha256 of export's manifest (ids, files, order)."""
    return hashlib.sha256(Path(export_manifest).read_bytes()).hexdigest()


def run_fingerprint(export_manifest: str | os.PathLike) -> str:
    """The dataset fingerprint training records (gan.runs.dataset_fingerprint, issue 11a):
    sha256 over "<id>\t<sha256 of the image file>" of every dataset image in id order."""
    try:
        from gan.runs import dataset_fingerprint as fingerprint_of  # the trainer's own, when there
        return fingerprint_of(export_manifest)["sha256"]
    except ImportError:
        h = hashlib.sha256()
        for r in sorted(kept(read_manifest(export_manifest)), key=lambda r: r.id):
            h.update(f"{r.id}\t{hashlib.sha256(Path(r.path).read_bytes()).hexdigest()}\n".encode())
        return h.hexdigest()


def recorded_fingerprint(network: str | os.PathLike) -> str | None:
    """The dataset fingerprint a checkpoint records: its ``__meta__`` JSON's
    ``extra.run.dataset.sha256`` (gan.checkpoint + gan.runs), or a string entry whose key
    names a fingerprint; None when it records none (an older checkpoint)."""
    import numpy as np
    with np.load(network, allow_pickle=False) as npz:
        for key in npz.files:
            if npz[key].dtype.kind not in "US" or npz[key].size != 1:
                continue
            value = str(npz[key].reshape(()).item())
            if key == "__meta__":
                run = (json.loads(value).get("extra") or {}).get("run") or {}
                sha = (run.get("dataset") or {}).get("sha256") if isinstance(run, dict) else None
                if sha:
                    return str(sha)
            elif "fingerprint" in key.lower():
                return value
    return None


def training_staleness(network: str | os.PathLike | None, export_manifest: str | os.PathLike) -> str:
    """"" when the network was trained on this dataset, else why it looks older.

    The checkpoint's recorded dataset fingerprint decides when it has one (compared with
    the same fingerprint of the export manifest); otherwise file times do.
    """
    if not network or not Path(network).exists() or not Path(export_manifest).exists():
        return ""
    try:
        recorded = recorded_fingerprint(network)
    except (OSError, ValueError, KeyError) as e:
        return f"cannot read the network {network}: {e}"
    if recorded:
        try:
            current = run_fingerprint(export_manifest)
        except OSError as e:
            return f"cannot fingerprint the dataset {export_manifest}: {e}"
        if recorded != current:
            return (f"the network {network} was trained on another dataset (fingerprint "
                    f"{recorded[:12]}, dataset now {current[:12]}): rerun the fine-tune")
        return ""
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
    """The region a face was cut from, in upright source pixels: [l, t, r, b] or 4 [x, y]."""
    if isinstance(details.get("quad"), list) and details["quad"]:
        q = details["quad"]
        flat = [v for p in q for v in (p if isinstance(p, list) else [p])]
        if len(flat) == 8:
            return [[_num(flat[i]), _num(flat[i + 1])] for i in range(0, 8, 2)]
    for key in ("crop", "crop_box"):
        box = details.get(key)
        if isinstance(box, list) and len(box) == 4:
            return [_num(v) for v in box]
    box = details.get("box")  # the detector's x, y, w, h
    if isinstance(box, list) and len(box) == 4:
        x, y, w, h = (float(v) for v in box)
        return [_num(x), _num(y), _num(x + w), _num(y + h)]
    return None


def small_face_boxes(details: dict) -> list:
    """crop's faces below min_face ([x, y, w, h] each) as [l, t, r, b]; [] when absent."""
    out = []
    for b in details.get("small_faces") or []:
        if isinstance(b, list) and len(b) == 4:
            x, y, w, h = (float(v) for v in b)
            out.append([_num(x), _num(y), _num(x + w), _num(y + h)])
    return out


def drop_note(row: Row) -> str:
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
    keys = ("error", "side", "bytes", "file_bytes", "colors", "colorful_fraction", "max_pixels", "extension")
    return ", ".join(f"{k} {d[k]}" for k in keys if k in d)


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
            note = drop_note(r).replace(r.path, r.source) if r.path else drop_note(r)
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


def funnel_html(rows: list[FunnelRow]) -> str:
    lines = ["<table id='funnel'><tr><th class='reasons'>stage</th><th>in</th><th>kept</th>"
             "<th>dropped</th><th class='reasons'>drop reasons</th></tr>"]
    for f in rows:
        reasons = ", ".join(f"{esc(r)}: {n}" for r, n in sorted(f.dropped.items(), key=lambda x: (-x[1], x[0])))
        lines.append(f"<tr data-stage='{esc(f.stage)}'><td class='stage'>{esc(f.stage)}</td>"
                     f"<td>{f.received}</td><td>{f.kept}</td><td>{sum(f.dropped.values())}</td>"
                     f"<td class='reasons'>{reasons}</td></tr>")
    lines.append("</table>")
    return "\n".join(lines)


CSP = ("default-src 'none'; img-src 'self' file: data: blob:; style-src 'self' file:; "
       "script-src 'self' file:; connect-src 'self'")


def render_index(name: str, funnel_rows: list[FunnelRow], problems: list[str], rejects_path: str) -> str:
    """The page shell: what needs no script is in the HTML, the rest comes from the data files."""
    probs = "".join(f"<li>{esc(p)}</li>" for p in problems)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<title>faceprep report: {esc(name)}</title>
<link rel="stylesheet" href="review.css"></head>
<body>
<h1>faceprep report: {esc(name)}</h1>
<ul id="problems" class="problems">{probs}</ul>
<p id="summary"></p>
<p>Per-image history: <a href="../provenance.tsv">provenance.tsv</a> (after rank);
scores: <a href="../rank/scores.tsv">rank/scores.tsv</a>. Keys in the review grid:
<kbd>&rarr;</kbd>/<kbd>j</kbd> next, <kbd>&larr;</kbd>/<kbd>k</kbd> previous,
<kbd>x</kbd> toggle reject, <kbd>Enter</kbd> open, <kbd>Esc</kbd> close.</p>
<h2>Stage funnel</h2>
{funnel_html(funnel_rows)}
<h2>What was dropped</h2>
<div id="drops"><p>Loading&hellip; (this page needs JavaScript and check.js beside it)</p></div>
<h2>Ranking</h2>
<div id="ranking"><p id="no-ranking">Rank has not run yet: the scores appear here after
<code>snakemake ranked_dataset</code>.</p></div>
<h2>Review</h2>
<div id="toolbar">
<label>score &ge; <input id="score-min" type="number" step="any" size="7"></label>
<label>&le; <input id="score-max" type="number" step="any" size="7"></label>
<label>folder <select id="folder"></select></label>
<label>stage / reason <select id="reason"></select></label>
<span id="shown-count">0</span> shown &middot;
<b><span id="reject-count">0</span></b> rejects <span id="unmatched-count"></span>
<button id="download" type="button">download rejects.txt</button>
<button id="save" type="button" hidden>save rejects</button>
<span id="save-status" role="status"></span>
<div class="hint">Save the download as <code>{esc(rejects_path)}</code> and rerun
<code>snakemake ranked_dataset</code> (or serve this page with <code>python -m pipeline.review {esc(name)}</code>
and press save).</div>
</div>
<div id="grid" tabindex="0" aria-label="review grid"></div>
<div id="viewer" hidden role="dialog" aria-modal="true">
<div class="bar"><button id="v-prev" type="button">&larr; previous</button>
<button id="v-next" type="button">next &rarr;</button>
<button id="v-reject" type="button">reject</button>
<button id="v-close" type="button">close (Esc)</button></div>
<div class="panes"><figure><img id="v-full" alt="full size"><figcaption id="v-info"></figcaption></figure>
<figure id="v-source-fig"><div class="overlay-wrap"><img id="v-source" alt="source image"><svg id="v-box"></svg></div>
<figcaption id="v-source-info"></figcaption></figure></div>
</div>
<script src="check.js"></script>
<script src="ranking.js"></script>
<script src="figures.js"></script>
<script src="rounds.js"></script>
<script src="review.js"></script>
</body></html>
"""


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
               rejects_path: str) -> dict:
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
            "preset": preset, "problems": problems,
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
    for p in problems:
        warn(p)
    fingerprint = dataset_fingerprint(dataset) if Path(dataset).exists() else ""
    shown_path = rejects_shown or rejects or f"characters/{name}.rejects.txt"
    data = check_data(name, items, clusters, thumbs, previews, out_dir, preset, problems,
                      fingerprint, shown_path)
    copy_assets(out_dir)
    atomic_write_text(out_dir / "check.js", data_script("FACEPREP_CHECK", data))
    # where `python -m pipeline.review` saves (an absolute path: the server may run elsewhere)
    atomic_write_text(out_dir / "review.json", json.dumps(
        {"name": name, "rejects": str(Path(rejects).resolve()) if rejects else ""}, indent=1) + "\n")
    atomic_write_text(output, render_index(name, funnel(stages), problems, shown_path))
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
    data = {"datasetFingerprint": dataset_fingerprint(dataset), "ids": [s.id for s in scores],
            "score": [round(s.score, 6) for s in scores], "std": [round(s.std, 6) for s in scores],
            "signals": {n: [round(s.signals[n], 6) if n in s.signals else None for s in scores] for n in names},
            "status": {r.id: r.reason for r in stages.get("ranked", []) if not r.kept},
            "samples": sample, "problems": problems}
    atomic_write_text(output, data_script("FACEPREP_RANKING", data))
    atomic_write_text(provenance_path, format_provenance(provenance(stages, {s.id: s for s in scores})))
    return problems


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
