"""rounds: the sets training reads, and what each cleaning round removed.

    python -m pipeline.rounds curated --dataset R/export/manifest.tsv --rejects FILE \
        --folder R/curated --name N [--config JSON] [--threads T]
    python -m pipeline.rounds next --previous R/curated/manifest.tsv --scores R/rank/round-1/scores.tsv \
        --round 1 --drop-bottom-fraction F [--drop-below T] --folder R/rounds/round-2 --name N [--config JSON]
    python -m pipeline.rounds table --dataset R/export/manifest.tsv --sets M1 M2 ... \
        --scores S1 S2 ... --networks N1 N2 ... --output R/rank/rounds.tsv --page R/report/rounds.js [--drop-below T]

- ``curated``: the dataset minus the rejects file (a line matches an image id or its source
  path). Round 1 trains on it; ``make curated_dataset`` gives it without any training.
- ``next``: what round k leaves: the previous set minus the worst ``drop_bottom_fraction``
  of its images by round k's scores (floor of fraction x images; ties broken by id) and,
  with ``--drop-below T`` (rank.drop_below), minus every image round k's network scored
  below T. An image below T is dropped ``below_threshold`` (the fraction would not save
  it), one only in the worst fraction ``bottom_fraction``. A T that would leave nothing
  stops the job with one line (round k's network and scores stay; nothing retrains). Round
  k+1 trains on what is left; after the last round it is the ranked dataset.
- Each set is exported (TFRecords as training reads them; ZIP when asked), its manifest lists
  the kept images and every image an earlier step dropped (reason ``rejected``,
  ``bottom_fraction`` with details ``round`` and ``score``, or ``below_threshold`` with
  ``round``, ``score`` and ``threshold``), and ``fingerprint.json`` is the
  training fingerprint of its images (ids + pixel hashes; util.fingerprint.dataset_fingerprint): the
  run that trains on the set is named after it.
- ``table``: per image, which step dropped it (``rejected``, ``round K`` for its worst
  fraction, ``round K below_threshold``) and its score in every round
  (``rank/rounds.tsv``), and per round the network's run, the set it trained on and how many
  images its ranking dropped, for the page (``report/rounds.js``).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
from pathlib import Path

from pipeline.console import stop
from pipeline.manifest import Row, atomic_write_text, load_config_arg, read_manifest

REJECTED = "rejected"
BOTTOM = "bottom_fraction"
BELOW = "below_threshold"  # scored below rank.drop_below by its round's network
TRAINING_FILES = {"tfrecords": True, "zip": False}  # what a round's training needs


def is_rejected(id_: str, source: str, rejects: set[str]) -> bool:
    """The rejects file names an image by its id or its source path."""
    return id_ in rejects or source in rejects


def curated_rows(dataset: list[Row], rejects: set[str]) -> list[Row]:
    """Every dataset image; dropped ``rejected`` when the rejects file names it."""
    return [r.drop(REJECTED) if is_rejected(r.id, r.source, rejects) else r
            for r in dataset if r.kept]


def next_round_rows(previous: list[Row], scores: dict[str, float], fraction: float,
                    round_: int, threshold: float | None = None) -> list[Row]:
    """``previous`` (a round's set: kept + earlier drops) after round ``round_``'s ranking:
    the worst floor(fraction x kept) kept images dropped, and with ``threshold`` every kept
    image scoring below it, each with its score (an image without a score is never below it)."""
    kept = [r for r in previous if r.kept]
    n_bottom = math.floor(fraction * len(kept) + 1e-9)
    worst = {r.id for r in sorted(kept, key=lambda r: (scores.get(r.id, math.inf), r.id))[:n_bottom]}
    below = set() if threshold is None else {r.id for r in kept if scores.get(r.id, math.inf) < threshold}
    if below and not {r.id for r in kept} - worst - below and len(worst) < len(kept):
        stop(nothing_left_message(threshold, round_, [scores[r.id] for r in kept if r.id in scores]))
    out = []
    for r in previous:
        if r.kept and r.id in below:  # the threshold alone drops it: lowering the fraction would not keep it
            out.append(r.drop(BELOW, details={"round": round_, "score": scores[r.id], "threshold": threshold}))
        elif r.kept and r.id in worst:
            out.append(r.drop(BOTTOM, details={"round": round_, "score": scores.get(r.id)}))
        else:
            out.append(r)
    return out


def nothing_left_message(threshold: float, round_: int, values: list[float]) -> str:
    """Why a threshold that drops every image is refused, and what to set instead."""
    values = sorted(values)
    median = values[len(values) // 2]
    return (f"rank.drop_below {threshold:g} would drop all {len(values)} images round {round_} trained on "
            f"(its network scored them {values[0]:.4g} to {values[-1]:.4g}, median {median:.4g}; "
            "each round's network scores on its own scale: see rank/rounds.tsv): set rank.drop_below "
            f"to at most {values[-1]:.4g} or to null and rerun; round {round_}'s network and scores are kept, "
            "nothing retrains")


def write_set(rows: list[Row], folder: Path, name: str, cfg: dict, threads: int,
              fingerprint: bool = True) -> None:
    """Export the kept rows (files per ``cfg``) with the drops listed after them, then the
    set's training fingerprint."""
    from pipeline.export import export
    keep = [r for r in rows if r.kept]
    export(keep, folder, name, cfg, extra_rows=[r for r in rows if not r.kept], threads=threads)
    if fingerprint:
        from util.fingerprint import dataset_fingerprint
        atomic_write_text(folder / "fingerprint.json",
                          json.dumps(dataset_fingerprint(folder / "manifest.tsv"), sort_keys=True) + "\n")
    dropped = len(rows) - len(keep)
    print(f"rounds: {folder}: {len(keep)} images" + (f", {dropped} dropped before" if dropped else ""))


# ---------------------------------------------------------------- table

def dropped_by(sets: list[list[Row]]) -> dict[str, str]:
    """{id: 'rejected' | 'round K' | 'round K below_threshold'} over the sets (curated first,
    the ranked set last): 'round K' is round K's worst fraction."""
    out = {}
    for rows in sets:
        for r in rows:
            if not r.kept and r.id not in out:
                out[r.id] = REJECTED if r.reason == REJECTED else \
                    f"round {r.details.get('round', '?')}" + (f" {BELOW}" if r.reason == BELOW else "")
    return out


def format_table(ids: list[str], dropped: dict[str, str], scores: list[dict[str, float]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, delimiter="\t", lineterminator="\n")
    w.writerow(["id", "dropped"] + [f"score:round-{k}" for k in range(1, len(scores) + 1)])
    for i in ids:
        w.writerow([i, dropped.get(i, "")] + [f"{s[i]:.6f}" if i in s else "" for s in scores])
    return buf.getvalue()


def rounds_summary(sets: list[list[Row]], scores: list[dict[str, float]], networks: list[str]) -> list[dict]:
    """Per round: its network's run, the images it trained on, what its ranking dropped."""
    from gan.runs import network_provenance
    out = []
    for k, network in enumerate(networks, 1):
        trained = sum(r.kept for r in sets[k - 1])
        after = sets[k] if k < len(sets) else sets[k - 1]
        dropped = sorted((r for r in after if not r.kept and r.reason in (BOTTOM, BELOW)
                          and r.details.get("round") == k), key=lambda r: scores[k - 1].get(r.id, 0))
        out.append({"round": k, "network": network, **network_provenance(network),
                    "trained_on": trained, "dropped": [r.id for r in dropped]})
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="part", required=True)
    c = sub.add_parser("curated")
    c.add_argument("--dataset", required=True, help="R/export/manifest.tsv")
    c.add_argument("--rejects", default="", help="the rejects file (may not exist)")
    n = sub.add_parser("next")
    n.add_argument("--previous", required=True, help="the round's set manifest")
    n.add_argument("--scores", required=True, help="the round's scores.tsv")
    n.add_argument("--round", type=int, required=True)
    n.add_argument("--drop-bottom-fraction", type=float, default=0.0)
    n.add_argument("--drop-below", type=float, default=None,
                   help="rank.drop_below: also drop every image this round's network scored below it")
    for s in (c, n):
        s.add_argument("--folder", required=True)
        s.add_argument("--name", required=True)
        s.add_argument("--config", default=json.dumps(TRAINING_FILES), help="export files: tfrecords, zip")
        s.add_argument("--no-fingerprint", action="store_true")
        s.add_argument("--threads", type=int, default=1)
    t = sub.add_parser("table")
    t.add_argument("--dataset", required=True)
    t.add_argument("--sets", nargs="+", required=True, help="curated, round 2.., ranked manifests")
    t.add_argument("--scores", nargs="+", required=True, help="scores.tsv of round 1..N")
    t.add_argument("--networks", nargs="+", required=True, help="final network of round 1..N")
    t.add_argument("--output", required=True, help="rank/rounds.tsv")
    t.add_argument("--page", required=True, help="report/rounds.js")
    t.add_argument("--drop-below", type=float, default=None, help="rank.drop_below (for the page)")
    a = p.parse_args(argv)
    if a.part == "table":
        from pipeline.rank import read_scores
        from pipeline.report import data_script
        sets = [read_manifest(m) for m in a.sets]
        scores = [{s.id: s.score for s in read_scores(path)} for path in a.scores]
        ids = sorted(r.id for r in read_manifest(a.dataset) if r.kept)
        dropped = dropped_by(sets)
        atomic_write_text(a.output, format_table(ids, dropped, scores))
        summary = rounds_summary(sets, scores, a.networks)
        page = {"rounds": summary, "dropped": dropped,
                # the rejects the training saw: the page compares them with the rejects file now
                "rejected": sorted(r.id for r in sets[0] if not r.kept and r.reason == REJECTED),
                "scores": {i: [round(s[i], 4) if i in s else None for s in scores] for i in dropped},
                # only when set: an unset threshold leaves the page's data as it was
                **({"drop_below": a.drop_below} if a.drop_below is not None else {})}
        atomic_write_text(a.page, data_script("FACEPREP_ROUNDS", page))
        for r in summary:
            print(f"rounds: round {r['round']}: trained on {r['trained_on']} images (run {r.get('run', '?')}), "
                  f"its ranking dropped {len(r['dropped'])}")
        return
    from pipeline.export import read_rejects
    cfg = load_config_arg(a.config)
    if a.part == "curated":
        dataset = read_manifest(a.dataset)
        rejects = read_rejects(a.rejects.strip() or None)
        unknown = rejects - {r.id for r in dataset} - {r.source for r in dataset}
        if unknown:
            print(f"rounds: {len(unknown)} rejects name no dataset image: {sorted(unknown)[:5]}")
        rows = curated_rows(dataset, rejects)
    else:
        from pipeline.rank import read_scores
        scores = {s.id: s.score for s in read_scores(a.scores)}
        rows = next_round_rows(read_manifest(a.previous), scores, a.drop_bottom_fraction, a.round,
                               a.drop_below)
    write_set(rows, Path(a.folder), a.name, cfg, a.threads, fingerprint=not a.no_fingerprint)


if __name__ == "__main__":
    main()
