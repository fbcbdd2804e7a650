"""survivors: after the dedup gather, hand each shard its duplicates and stop early when
nothing survived.

    python -m pipeline.survivors --dedup R/clean/dedup.tsv --out-dir R/clean/dedup \
        --shards 0,1,... ingest=M crop=M clean=M ...

- ``<out-dir>/<shard>.tsv``: the dedup ``drop`` rows of that shard (manifest format, by
  id). Upscale reads its shard's file and works only on the faces that survived dedup.
  The content of a shard's file changes only when that shard's duplicates change, so
  Snakemake (dedup is a checkpoint; inputs compared by checksum) reruns upscale and
  normalize only for such shards.
- Prints one console line per finished stage (ingest, crop, clean, dedup).
- When no face is left it stops with one actionable line, e.g.
  ``crop kept 0 faces >= 250 px; 14 faces were found at 70-140 px: lower crop.min_face``.
  The settings it names come from the drop rows (crop's ``method``/``min_face``,
  clean's ``min_side``), so they are no params of this step.
"""
from __future__ import annotations

import argparse
import itertools
from collections import Counter
from pathlib import Path

from pipeline import clean as clean_stage, crop as crop_stage, ingest as ingest_stage
from pipeline.console import manifests_summary, say, stage_summary, stop
from pipeline.ingest import shard_of
from pipeline.manifest import Row, by_count, line_row, manifest_lines_of, read_manifest, write_manifest


def split_duplicates(dedup: list[Row], shards: list[str]) -> dict[str, list[Row]]:
    """The dropped rows of ``dedup`` per shard (the shard of the row's source file)."""
    per: dict[str, list[Row]] = {s: [] for s in shards}
    for r in dedup:
        if not r.kept:
            per[shards[shard_of(r.source, len(shards))]].append(r)
    return {s: sorted(rows, key=lambda r: r.id) for s, rows in per.items()}


def _reasons(rows: list[Row]) -> str:
    c = Counter(r.reason or "unspecified" for r in rows if not r.kept)
    return ", ".join(f"{k} {v}" for k, v in by_count(c))


def _hints(stage, rows: list[Row]) -> list[str]:
    """What to change, as ``stage`` (its module) declares it (``DROPS``: hints) for the
    reasons its ``rows`` gave, each once."""
    reasons = {r.reason for r in rows if not r.kept}
    return list(dict.fromkeys(drop.hint_for(rows) for reason, drop in stage.DROPS.items()
                              if reason in reasons and drop.hint))


def _setting(rows: list[Row], key: str):
    """A setting a stage recorded in its drop rows' details (the first one found)."""
    return next((r.details[key] for r in rows if key in r.details), "?")


def why_nothing_left(stages: dict[str, list[Row]]) -> str | None:
    """None when some face survived dedup; else the one line saying where all were lost
    and which setting to change."""
    if any(r.kept for r in stages.get("dedup", [])):
        return None
    ingest = stages.get("ingest", [])
    if not any(r.kept for r in ingest):
        hints = _hints(ingest_stage, ingest) or [ingest_stage.DROPS["unsupported_extension"].hint]
        return f"ingest kept 0 of {len(ingest)} files ({_reasons(ingest)}): {'; '.join(hints)}"
    crop = stages.get("crop", [])
    min_face = _setting(crop, "min_face")
    if not any(r.kept for r in crop):
        # crop records faces it found below crop.min_face as details.small_faces [[x, y, w, h]]
        sides = sorted(max(int(b[2]), int(b[3])) for r in crop
                       for b in (r.details.get("small_faces") or []) if len(b) >= 4)
        images = sum(r.kept for r in ingest)
        if sides:
            return (f"crop kept 0 faces >= {min_face} px; {len(sides)} faces were found at "
                    f"{sides[0]}-{sides[-1]} px: lower crop.min_face (e.g. to {sides[0]})")
        hints = _hints(crop_stage, crop) or [crop_stage.DROPS["no_face"].hint]
        return (f"crop found no face >= {min_face} px in {images} images with crop.method "
                f"{_setting(crop, 'method')} ({_reasons(crop)}): {'; '.join(hints)}")
    clean = stages.get("clean", [])
    hints = _hints(clean_stage, clean) or ["see the clean manifests in results/<name>/clean/"]
    return f"clean kept 0 of {len(clean)} faces ({_reasons(clean)}): {'; '.join(hints)}"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dedup", required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--shards", required=True, help="the shard names, comma-separated")
    p.add_argument("stage_manifests", nargs="*", help="STAGE=R/<stage>/<shard>/manifest.tsv")
    a = p.parse_args(argv)
    paths: dict[str, list[str]] = {}
    for item in a.stage_manifests:
        stage, sep, path = item.partition("=")
        if not sep:
            raise SystemExit(f"survivors: expected STAGE=MANIFEST, got {item!r}")
        paths.setdefault(stage, []).append(path)
    # counted and split without holding the stages' rows (1M rows each: issue 17 item 4);
    # only dedup's drops are kept, for their shards' files
    for stage, stage_paths in paths.items():
        say(manifests_summary(stage, stage_paths))
    drops, kept = [], 0
    for line, is_kept, row in manifest_lines_of(a.dedup):
        if is_kept:
            kept += 1
        else:
            drops.append(line_row(row) if line is not None else row)
    say(stage_summary("dedup", itertools.chain(drops, itertools.repeat(_KEPT, kept))))
    if not kept:  # nothing left: read the rows to say why (as few as the run kept)
        stages = {stage: [r for p in stage_paths for r in read_manifest(p)]
                  for stage, stage_paths in paths.items()}
        stages["dedup"] = read_manifest(a.dedup)
        stop(why_nothing_left(stages))
    for shard, rows in split_duplicates(drops, a.shards.split(",")).items():
        write_manifest(Path(a.out_dir) / f"{shard}.tsv", rows)


_KEPT = Row(id="", source="")  # stands for each kept dedup row in the summary count


if __name__ == "__main__":
    main()
