"""report: the static review page and provenance.tsv.

``R/report/index.html`` opens from disk (no server, no network): the stage funnel (what
each stage received, kept and dropped, by reason), the newest training sample grid, the
score histogram, and the bottom-k / top-k images by Discriminator score with thumbnail,
score, source path and crop box. Each image has a reject checkbox (preticked from the
rejects file); "download rejects.txt" saves a file export reads as is: one dataset image
id a line, ``#`` starts a comment. Images and thumbnails are files beside the page.

``R/provenance.tsv``: for every raw file and every face, the last stage it reached,
keep/drop, the reason, its score and details (all manifests joined).

    python -m pipeline.report --name N --dataset R/export/manifest.tsv --dedup R/clean/dedup.tsv \
        --ranked R/ranked/manifest.tsv --scores R/rank/scores.tsv --histogram R/rank/histogram.png \
        --samples R/finetune/samples --rejects FILE --output R/report/index.html \
        --provenance R/provenance.tsv --config JSON R/<stage>/<shard>/manifest.tsv...
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import html
import io
import json
import re
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from pipeline.export import read_rejects
from pipeline.manifest import (Row, ShardDir, atomic_write_text, dumps_details, kept,
                               load_config_arg, read_manifest)
from pipeline.rank import Score, read_scores

# Stages in data-flow order; dedup (a gather over clean) applies at export.
FUNNEL = ("ingest", "crop", "clean", "upscale", "normalize", "augment", "dedup", "export", "ranked")
RECEIVES_FROM = {"crop": "ingest", "clean": "crop", "upscale": "clean", "normalize": "upscale",
                 "augment": "normalize",
                 "dedup": "clean", "export": "normalize", "ranked": "export"}
PROVENANCE_COLUMNS = ["id", "source", "parent_id", "last_stage", "action", "reason", "score",
                      "path", "details"]
SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}")


def esc(value) -> str:
    return html.escape(str(value), quote=True)


# ---------------------------------------------------------------- funnel

@dataclass
class FunnelRow:
    stage: str
    received: int
    kept: int
    dropped: Counter = field(default_factory=Counter)


def funnel(stages: dict[str, list[Row]]) -> list[FunnelRow]:
    """Per stage: images in (the previous stage's keeps), kept, dropped by reason.

    A stage whose manifest does not list every image it received (export lists only its
    dataset) gets the difference as ``duplicate`` (dedup is the only step between).
    """
    out = []
    kept_count = {s: sum(r.kept for r in rows) for s, rows in stages.items()}
    for stage in FUNNEL:
        if stage not in stages:
            continue
        rows = stages[stage]
        prev = RECEIVES_FROM.get(stage)
        if stage == "export" and "augment" in stages:
            prev = "augment"  # the optional stage sits between normalize and export
        received = kept_count[prev] if prev in kept_count else len(rows)
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


# ---------------------------------------------------------------- images beside the page

def thumb_name(image_id: str) -> str:
    """A file name for an id that cannot escape the thumbs folder."""
    if SAFE_NAME.fullmatch(image_id):
        return f"{image_id}.jpg"
    return hashlib.sha1(image_id.encode("utf-8", "surrogateescape")).hexdigest() + ".jpg"


def write_thumb(src: str, dest: Path, side: int) -> bool:
    try:
        with Image.open(src) as im:
            im = im.convert("RGB")
            im.thumbnail((side, side), Image.Resampling.LANCZOS)
            im.save(dest, format="JPEG", quality=90)
        return True
    except (OSError, ValueError) as e:  # a missing file must not lose the whole page
        print(f"report: no thumbnail for {src!r}: {e}")
        return False


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
                shutil.copyfile(src, dest)
            else:
                im = im.convert("RGB")
                im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
                im.save(dest, format="PNG")
        return True
    except (OSError, ValueError) as e:
        print(f"report: cannot copy {src}: {e}")
        return False


# ---------------------------------------------------------------- HTML

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
td.reasons,th.reasons,td.stage{text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:8px}
.card{margin:0;padding:6px;border:1px solid #ccc;border-radius:4px;width:var(--thumb);font-size:11px}
.card img{display:block;width:var(--thumb);height:var(--thumb);object-fit:contain;background:#eee}
.card .src,.card .id{overflow-wrap:anywhere}
.card.rejected{border-color:#c00;background:#fee}
.status{color:#a00}
#toolbar{position:sticky;top:0;background:#fff;padding:6px 0;border-bottom:1px solid #ccc}
img.wide{max-width:100%}
"""

SCRIPT = """
(function () {
  const data = JSON.parse(document.getElementById('review-data').textContent);
  const boxes = Array.from(document.querySelectorAll('input.reject'));
  const shown = new Set(boxes.map(b => b.dataset.id));
  function ticked() {
    // rejects not shown on this page are kept as they are
    const ids = new Set(data.preset.filter(id => !shown.has(id)));
    boxes.forEach(b => { if (b.checked) ids.add(b.dataset.id); });
    return Array.from(ids).sort();
  }
  function refresh() {
    boxes.forEach(b => b.closest('.card').classList.toggle('rejected', b.checked));
    document.getElementById('reject-count').textContent = String(ticked().length);
  }
  boxes.forEach(b => b.addEventListener('change', () => {
    // the same image may be in both grids: keep its boxes in step
    boxes.forEach(o => { if (o.dataset.id === b.dataset.id) o.checked = b.checked; });
    refresh();
  }));
  document.getElementById('download').addEventListener('click', () => {
    const text = data.header.map(l => '# ' + l).join('\\n') + '\\n' + ticked().map(id => id + '\\n').join('');
    const url = URL.createObjectURL(new Blob([text], {type: 'text/plain'}));
    const a = document.createElement('a');
    a.href = url; a.download = 'rejects.txt';
    document.body.appendChild(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  });
  refresh();
})();
"""


def script_json(value) -> str:
    """JSON safe inside <script>: no '<', '>' or '&' can end the element early."""
    return (json.dumps(value, ensure_ascii=True).replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("&", "\\u0026"))


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


def card_html(position: int, s: Score, thumb: str | None, rejected: bool, status: str) -> str:
    box = esc(json.dumps(s.crop_box)) if s.crop_box is not None else "whole image"
    img = (f"<img src='thumbs/{esc(thumb)}' alt='{esc(s.source)}'>" if thumb
           else "<div class='missing'>no thumbnail</div>")
    note = f"<div class='status'>{esc(status)}</div>" if status else ""
    return (f"<figure class='card' data-id='{esc(s.id)}'>{img}<figcaption>"
            f"<div>#{position} score <b>{s.score:.4f}</b> &plusmn; {s.std:.4f}</div>"
            f"<div class='src' title='{esc(s.source)}'>{esc(s.source)}</div>"
            f"<div>crop box {box}</div><div class='id'>{esc(s.id)}</div>{note}"
            f"<label><input type='checkbox' class='reject' data-id='{esc(s.id)}'"
            f"{' checked' if rejected else ''}> reject</label></figcaption></figure>")


def render(name: str, funnel_rows: list[FunnelRow], scores: list[Score], thumbs: dict[str, str],
           preset: list[str], ranked_status: dict[str, str], cfg: dict,
           sample_grid: str | None, histogram: str | None) -> str:
    n = len(scores)
    bottom_k, top_k = min(cfg["bottom_k"], n), min(cfg["top_k"], n)
    bottom = list(enumerate(scores[:bottom_k], 1))
    top = list(enumerate(scores, 1))[n - top_k:][::-1] if top_k else []
    preset_set = set(preset)

    def grid(items):
        return "<div class='grid'>" + "".join(
            card_html(pos, s, thumbs.get(s.id), s.id in preset_set, ranked_status.get(s.id, ""))
            for pos, s in items) + "</div>"

    one_line = " ".join(str(name).split())  # a comment line must stay one line
    data = {"preset": preset,
            "header": [f"faceprep rejects for {one_line}",
                       "one dataset image id a line (ids as in rank/scores.tsv); '#' starts a comment",
                       f"save as characters/{one_line}.rejects.txt (or the rank.rejects path) "
                       "and rerun ranked_dataset"]}
    samples = (f"<img class='wide' src='{esc(sample_grid)}' alt='latest training samples'>"
               if sample_grid else "<p>No training sample grid yet.</p>")
    hist = (f"<img src='{esc(histogram)}' alt='score histogram'>" if histogram
            else "<p>No histogram.</p>")
    csp = ("default-src 'none'; img-src 'self' file: data:; style-src 'unsafe-inline'; "
           "script-src 'unsafe-inline'")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<title>faceprep report: {esc(name)}</title>
<style>{STYLE}:root{{--thumb:{int(cfg['thumb'])}px}}</style></head>
<body>
<h1>faceprep report: {esc(name)}</h1>
<p>{n} images in the dataset, ranked by the fine-tuned Discriminator (lowest score = least
like the rest). Full per-image history: <a href="../provenance.tsv">provenance.tsv</a>;
all scores: <a href="../rank/scores.tsv">rank/scores.tsv</a>.</p>
<h2>Stage funnel</h2>
{funnel_html(funnel_rows)}
<h2>Latest training samples</h2>
{samples}
<h2>Score histogram</h2>
{hist}
<h2>Review</h2>
<div id="toolbar">Tick the images to drop, then
<button id="download" type="button">download rejects.txt</button>
(<span id="reject-count">0</span> rejects). Save it as
<code>characters/{esc(name)}.rejects.txt</code> (or the path in <code>rank.rejects</code>) and
rerun <code>snakemake ranked_dataset</code>: only the re-export and this page are redone.</div>
<h3>Bottom {bottom_k} (worst scores)</h3>
{grid(bottom)}
<h3>Top {top_k} (best scores)</h3>
{grid(top)}
<script type="application/json" id="review-data">{script_json(data)}</script>
<script>{SCRIPT}</script>
</body></html>
"""


# ---------------------------------------------------------------- building it

def stage_of(manifest_path: str) -> str:
    """R/<stage>/<shard>/manifest.tsv -> stage."""
    return Path(manifest_path).parent.parent.name


def load_stages(stage_manifests: list[str], dedup: str | None, dataset: str,
                ranked: str | None) -> dict[str, list[Row]]:
    stages: dict[str, list[Row]] = {}
    for path in stage_manifests:
        stages.setdefault(stage_of(path), []).extend(read_manifest(path))
    for stage, path in (("dedup", dedup), ("export", dataset), ("ranked", ranked)):
        if path and Path(path).exists():
            stages[stage] = read_manifest(path)
    return stages


def preset_rejects(rejects_file: str | None, dataset: list[Row]) -> list[str]:
    """Ids the page pretick: lines naming a dataset id, or a source (all its images).

    Lines that match nothing are carried over unchanged so a download never loses them.
    """
    lines = read_rejects(rejects_file)
    out = {r.id for r in dataset if r.id in lines or r.source in lines}
    matched = {r.id for r in dataset} | {r.source for r in dataset}
    return sorted(out | (lines - matched))


def build_report(*, name: str, stage_manifests: list[str], dataset: str, dedup: str | None,
                 ranked: str | None, scores_path: str, histogram: str | None,
                 samples_dir: str | None, rejects: str | None, output: str, provenance_path: str,
                 cfg: dict) -> None:
    stages = load_stages(stage_manifests, dedup, dataset, ranked)
    scores = read_scores(scores_path)
    by_id = {s.id: s for s in scores}
    dataset_rows = list(kept(stages.get("export", [])))
    ranked_status = {r.id: r.reason for r in stages.get("ranked", []) if not r.kept}
    n = len(scores)
    shown = scores[:min(cfg["bottom_k"], n)] + scores[max(n - cfg["top_k"], 0):]
    out_dir = Path(output).parent
    with ShardDir(out_dir) as folder:
        (folder.tmp / "thumbs").mkdir()
        thumbs = {}
        for s in tqdm({s.id: s for s in shown}.values(), desc="report thumbs", unit="img", mininterval=2):
            name_ = thumb_name(s.id)
            if write_thumb(s.path, folder.tmp / "thumbs" / name_, cfg["thumb"]):
                thumbs[s.id] = name_
        grid = newest_sample_grid(samples_dir)
        sample_name = None
        if grid is not None and copy_scaled(grid, folder.tmp / "samples.png"):
            sample_name = "samples.png"
        hist_name = None
        if histogram and Path(histogram).exists():
            shutil.copyfile(histogram, folder.tmp / "histogram.png")
            hist_name = "histogram.png"
        page = render(name, funnel(stages), scores, thumbs, preset_rejects(rejects, dataset_rows),
                      ranked_status, cfg, sample_name, hist_name)
        atomic_write_text(folder.tmp / Path(output).name, page)
    atomic_write_text(provenance_path, format_provenance(provenance(stages, by_id)))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", required=True)
    p.add_argument("--dataset", required=True, help="R/export/manifest.tsv")
    p.add_argument("--dedup", help="R/clean/dedup.tsv")
    p.add_argument("--ranked", help="R/ranked/manifest.tsv")
    p.add_argument("--scores", required=True, help="R/rank/scores.tsv")
    p.add_argument("--histogram", help="R/rank/histogram.png")
    p.add_argument("--samples", help="R/finetune/samples (newest grid is shown)")
    p.add_argument("--rejects", default="", help="rejects file (may not exist yet)")
    p.add_argument("--output", required=True, help="R/report/index.html")
    p.add_argument("--provenance", required=True, help="R/provenance.tsv")
    p.add_argument("--config", required=True, help="the report block as JSON")
    p.add_argument("stage_manifests", nargs="*", help="R/<stage>/<shard>/manifest.tsv")
    a = p.parse_args(argv)
    build_report(name=a.name, stage_manifests=a.stage_manifests, dataset=a.dataset, dedup=a.dedup,
                 ranked=a.ranked, scores_path=a.scores, histogram=a.histogram,
                 samples_dir=a.samples, rejects=a.rejects.strip() or None, output=a.output,
                 provenance_path=a.provenance, cfg=load_config_arg(a.config))
    print(f"report: {a.output}\nprovenance: {a.provenance}")


if __name__ == "__main__":
    main()
