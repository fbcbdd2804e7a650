"""console: what a user sees while the workflow runs.

Snakemake's console lists jobs; the useful lines (what each stage kept and dropped, why a
job failed) live in ``results/<name>/logs/``. This module puts them on the console:

- ``say(text)``: a stage (or training loop) marks a line for the console. It prints
  ``[faceprep] text`` on stderr, which the rule sends through ``tee`` below.
- ``python -m pipeline.console tee LOG [--append]``: a rule's pipe
  (``cmd 2>&1 | python -m pipeline.console tee {log}``) writes every line to the job's log
  and echoes the marked ones on the console (stderr), as they come. Any stage can use it:
  finetune's tick lines (kimg, sec/kimg, losses, ETA) only need ``say()`` and the pipe.
  The rule's shell runs with ``set -o pipefail``, so the stage's exit status is kept.
- ``python -m pipeline.console summary STAGE=MANIFEST... ``: one line per finished stage
  (kept / dropped by reason), printed by the gathers (dedup, export) once every shard of
  the stages before them is done.
- ``failure_report(snakemake_log)``: for the Snakefile's ``onerror``: the failing job's
  log path and its last lines; an intentional stop (a last log line starting ``faceprep:``)
  is shown as that one line, last on the console.
- ``config_error(config, schema)``: the one line naming a bad key, with "did you mean".
"""
from __future__ import annotations

import argparse
import difflib
import math
import re
import sys
from collections import Counter
from pathlib import Path

MARK = "[faceprep] "
STOP = "faceprep: "  # an intentional, actionable stop: the log's last line starts with it


def say(text: str) -> None:
    """Mark ``text`` for the console (see ``tee``); it also stays in the job's log."""
    for line in str(text).splitlines() or [""]:
        print(MARK + line, file=sys.stderr, flush=True)


def stop(text: str, code: int = 1):
    """End a stage with one actionable line (the last line of its log and of the console)."""
    print(STOP + text, file=sys.stderr, flush=True)
    raise SystemExit(code)


# ---------------------------------------------------------------- shards

def auto_shards(n_files: int) -> int:
    """Shards for ``shards: auto``: 1 below 1,000 files, x2 per x4 files, at most 64.

    Each per-image job costs ~0.3-0.5 CPU-s to start (Python, imports, manifests), five
    per shard: 1,000 images a shard keeps that to a few percent of the work, and a rerun
    of one shard stays short. Cores are not what shards are for: each job runs its images
    on a pool of the cores the shards leave (rules/common.smk SHARD_THREADS). Powers of
    two with wide steps, so adding a few files rarely changes the count (a new count
    reshuffles every shard and reruns every per-image job).
    """
    shards = 1
    while shards < 64 and n_files >= 1000 * 4 ** int(math.log2(shards)):
        shards *= 2
    return shards


# ---------------------------------------------------------------- config errors

def _schema_at(schema: dict, path) -> dict:
    node = schema
    for part in path:
        if isinstance(part, int):
            node = node.get("items", {})
        else:
            node = node.get("properties", {}).get(part, {})
    return node


def config_error(config: dict, schema: dict) -> str | None:
    """None if ``config`` fits ``schema``, else one line naming the key (and a "did you
    mean" for a misspelled one). The first error in document order is reported."""
    import jsonschema
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path])
    if not errors:
        return None
    e = errors[0]
    where = ".".join(str(p) for p in e.absolute_path)
    if e.validator == "additionalProperties":
        known = sorted(_schema_at(schema, e.absolute_path).get("properties", {}))
        extra = sorted(set(e.instance) - set(known)) if isinstance(e.instance, dict) else []
        key = extra[0] if extra else "?"
        full = f"{where}.{key}" if where else key
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        hint = f"; did you mean '{f'{where}.' if where else ''}{close[0]}'?" if close else \
            f"; known keys{f' of {where}' if where else ''}: {', '.join(known)}"
        return f"config error: unknown key '{full}'{hint}"
    if e.validator == "required":
        return f"config error: {e.message}{f' in {where}' if where else ''}"
    about = _schema_at(schema, e.absolute_path).get("description")
    return (f"config error: {where or '(top level)'} = {e.instance!r}: {e.message}"
            + (f" ({where}: {about})" if about else ""))


# ---------------------------------------------------------------- stage summaries

def stage_summary(stage: str, rows) -> str:
    """'crop: 43 kept, 12 dropped (no_face 10, decode_error 2)'."""
    kept, dropped = 0, Counter()
    for r in rows:  # one pass: rows may stream
        if r.kept:
            kept += 1
        else:
            dropped[r.reason or "unspecified"] += 1
    return summary_text(stage, kept, dropped)


def manifests_summary(stage: str, paths) -> str:
    """``stage_summary`` of the manifests at ``paths``, counted without building rows (a
    gather's summary over a million rows)."""
    from pipeline.manifest import verdict_counts
    kept, dropped = 0, Counter()
    for path in paths:
        k, d = verdict_counts(path)
        kept += k
        dropped.update(d)
    return summary_text(stage, kept, dropped)


def summary_text(stage: str, kept: int, dropped: Counter) -> str:
    text = f"{stage}: {kept} kept"
    if dropped:
        from pipeline.manifest import by_count
        reasons = ", ".join(f"{k} {v}" for k, v in by_count(dropped))
        text += f", {sum(dropped.values())} dropped ({reasons})"
    return text


# ---------------------------------------------------------------- failing jobs

ERROR_BLOCK = re.compile(r"^Error in rule (\S+):\n(?P<body>(?:[ \t]+.*\n?)*)", re.M)
LOG_LINE = re.compile(r"^\s+log: (.+?)(?: \(check log file\(s\) for error details\))?$", re.M)


def failed_jobs(snakemake_log_text: str) -> list[tuple[str, list[str]]]:
    """(rule, [job log paths]) of every failed job named in snakemake's own log."""
    out = []
    for m in ERROR_BLOCK.finditer(snakemake_log_text):
        logs = [p.strip() for lm in LOG_LINE.finditer(m.group("body")) for p in lm.group(1).split(",")]
        out.append((m.group(1), logs))
    return out


def tail(path: str | Path, lines: int = 15) -> list[str]:
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    # tqdm redraws with \r: keep the last state of each line
    return [ln.rsplit("\r", 1)[-1] for ln in text.rstrip("\n").split("\n")][-lines:]


def failure_report(snakemake_logs, workdir: str | Path = ".", lines: int = 15) -> str:
    """What the console should end with after a failed run."""
    text = ""
    for p in snakemake_logs or []:
        try:
            text += Path(p).read_text(encoding="utf-8", errors="replace")
        except OSError:
            pass
    jobs = failed_jobs(text)
    if not jobs:
        return ""
    parts, stops = [], []
    for rule, logs in jobs:
        for log in logs:
            path = Path(workdir) / log
            last = [ln for ln in tail(path, lines) if ln.strip()]
            if last and last[-1].startswith(STOP):
                stops.append(last[-1])
                continue
            parts.append(f"--- rule {rule} failed; last lines of {log}:")
            parts.extend("    " + ln for ln in last)
        if not logs:
            parts.append(f"--- rule {rule} failed (it has no log)")
    if parts:
        parts.append("After fixing the cause, rerun the same command; if Snakemake says the "
                      "directory is locked (a killed run), run it once with --unlock first.")
    return "\n".join(parts + sorted(set(stops)))


# ---------------------------------------------------------------- the end of a run

def outcome(results: str | Path, since: float | None = None) -> list[str]:
    """The console's last lines: what a finished run made in ``results`` (R), a line per
    target with its paths (the dataset and the ranked dataset with their drops by reason,
    the report, the model files, the generated figures). With ``since`` (the run's start,
    seconds since the epoch) only what this run wrote; when it wrote nothing, everything
    there is (a run with nothing to do still says where the results are)."""
    from pipeline.manifest import read_manifest
    R = Path(results)
    made: list[tuple[float, str]] = []  # (mtime, line)

    def when(path: Path) -> float:
        try:
            return path.stat().st_mtime
        except OSError:
            return -1.0

    for folder, what in (("export", "dataset"), ("ranked", "ranked dataset")):
        manifest = R / folder / "manifest.tsv"
        if manifest.is_file():
            try:
                rows = read_manifest(manifest)
            except (OSError, ValueError):
                continue
            kept = sum(r.kept for r in rows)
            dropped = Counter(r.reason for r in rows if not r.kept)
            why = f" ({', '.join(f'{k} {v}' for k, v in sorted(dropped.items()))} dropped)" if dropped else ""
            made.append((when(manifest), f"{what}: {kept} images{why} -> {R / folder}/"))
    report = R / "report" / "index.html"
    if report.is_file():
        newest = max(when(report), when(R / "report" / "ranking.js"))
        made.append((newest, f"report: {report}"))
    models = sorted((R / "model").glob("*.pkl")) + sorted((R / "model").glob("*.npz"))
    if models:
        made.append((max(map(when, models)), "export_model: " + ", ".join(str(m) for m in models)))
    index = R / "generate" / "generate.json"
    if index.is_file():
        figures = sorted(p for p in (R / "generate").iterdir() if p.is_file() and p.name != "generate.json")
        seeds = sorted((R / "generate" / "seeds").glob("*.png"))
        shown = ", ".join(p.name for p in figures) + (f", seeds/ ({len(seeds)} PNGs)" if seeds else "")
        made.append((when(index), f"generate: {R / 'generate'}/ ({shown}); linked from the report page"))
    fresh = [line for t, line in made if since is None or t >= since]
    return fresh or [line for _, line in made]


PIXEL_HASH = re.compile(rb'""pixel_sha256"":""([0-9a-f]{64})""')


def image_keys(manifest: str | Path, rejects: set[str] | None = None) -> set[tuple]:
    """What a set holds, as training would see it: (id, file, pixel hash, rejected?) of
    every row (each set lists the whole dataset, its drops too), read without building rows
    or parsing details (100k rows: ~1 CPU-s, bench/bench_stale_outputs.py). With
    ``rejects`` (the dataset's manifest): its kept rows, rejected as the curated rule would
    (the rejects file names the id or the source)."""
    from pipeline.manifest import ENCODING, ERRORS, manifest_lines_of
    from pipeline.rounds import is_rejected  # rounds imports this module
    out = set()
    for line, kept, f in manifest_lines_of(manifest):
        if line is not None:
            found = PIXEL_HASH.search(f[8])
            id_, source, path, reason = (v.decode(ENCODING, ERRORS) for v in (f[0], f[1], f[3], f[7]))
            sha = found.group(1).decode() if found else None
        else:  # a record that does not read as a plain line (a quoted name): its row
            id_, source, path, reason, sha = f.id, f.source, f.path, f.reason, f.details.get("pixel_sha256")
        if rejects is None:
            out.add((id_, path, sha, reason == "rejected"))
        elif kept:
            out.add((id_, path, sha, is_rejected(id_, source, rejects)))
    return out


def stale_outputs(results: str | Path, training_set: str | Path, rejects: str | Path | None) -> str:
    """One ``warning:`` line when the outputs made from the final network (scores, the ranked
    dataset, the page's ranking, the exported model, the figures) come from a network
    trained on other data than the dataset and rejects file now hold, naming them and the
    targets that refresh them; "" when they fit (or none exist).

    Cheap, from manifests: the curated set is compared with what the curated rule would make
    now (the dataset's images with their pixel hashes, minus the rejects file), the last
    round's set (``training_set``) with the curated set, and the fingerprint the final
    network records with the one of that set. A `dataset`-only rerun after a crop or clean
    edit is the case this catches: it leaves the network and everything made from it as
    they were."""
    R = Path(results)
    made = [(R / "rank" / "scores.tsv", "ranked_dataset"), (R / "ranked", "ranked_dataset"),
            (R / "report" / "ranking.js", "ranked_dataset"), (R / "model", "export_model"),
            (R / "generate", "generate")]
    made = [(p, t) for p, t in made if p.exists() and (not p.is_dir() or any(p.iterdir()))]
    curated, network = R / "curated" / "manifest.tsv", R / "finetune" / "network-final.npz"
    if not made or not curated.is_file() or not (R / "export" / "manifest.tsv").is_file():
        return ""
    try:
        from pipeline.export import read_rejects
        trained = image_keys(curated)
        now = image_keys(R / "export" / "manifest.tsv", read_rejects(rejects, warn=lambda message: None))
        why = ""
        if {k[:3] for k in now} != {k[:3] for k in trained}:
            why = "the dataset changed after the network was trained"
        elif now != trained:
            why = "the rejects file changed after the network was trained"
        elif Path(training_set) != curated and Path(training_set).is_file() and image_keys(training_set) != trained:
            why = "the curated set changed after the last round's set was made"
        elif network.is_file() and (Path(training_set).parent / "fingerprint.json").is_file():
            import json
            from gan.runs import network_provenance
            recorded = network_provenance(network).get("dataset")
            current = json.loads((Path(training_set).parent / "fingerprint.json").read_text()).get("sha256")
            if recorded and current and recorded != current:
                why = f"the network {network} was trained on another set than {training_set}"
    except (OSError, ValueError, SystemExit) as e:  # a summary must not fail a finished run
        return f"warning: cannot tell whether the ranking fits the dataset ({type(e).__name__}: {e})"
    if not why:
        return ""
    targets = list(dict.fromkeys(t for _, t in made))
    return (f"warning: {why}: {', '.join(f'{p}/' if p.is_dir() else str(p) for p, _ in made)} "
            f"come from the older data; snakemake {' '.join(targets)} refreshes them")


def end_scheduler_timers() -> int:
    """Cancel the timers Snakemake's job scheduler left; returns how many. Its job rate
    limiter (--max-jobs-per-timespan, default 100/1s) arms a non-daemon
    ``threading.Timer`` of one timespan after each scheduling round, and Python waits for
    the last one before it exits: every run that ran a job ended ~1 s after its last line
    (snakemake 9.27). Called once the run is over (onsuccess, onerror), when nothing waits
    on them any more."""
    import threading
    timers = [t for t in threading.enumerate() if isinstance(t, threading.Timer)
              and getattr(t.function, "__module__", "").startswith("snakemake.scheduling")]
    for timer in timers:
        timer.cancel()
    return len(timers)


# ---------------------------------------------------------------- CLI

def tee_main(log: str, append: bool) -> None:
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab" if append else "wb") as out:
        for raw in sys.stdin.buffer:
            out.write(raw)
            out.flush()
            if raw.startswith(MARK.encode()):
                sys.stderr.write("faceprep: " + raw[len(MARK):].decode("utf-8", "replace"))
                sys.stderr.flush()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tee", help="copy stdin to LOG, echo [faceprep] lines on stderr")
    t.add_argument("log")
    t.add_argument("--append", action="store_true")
    s = sub.add_parser("summary", help="one line per stage: STAGE=MANIFEST ...")
    s.add_argument("stage_manifests", nargs="+")
    a = p.parse_args(argv)
    if a.cmd == "tee":
        tee_main(a.log, a.append)
        return
    by_stage: dict[str, list] = {}
    for item in a.stage_manifests:
        stage, _, path = item.partition("=")
        by_stage.setdefault(stage, []).append(path)
    for stage, paths in by_stage.items():
        say(manifests_summary(stage, paths))


if __name__ == "__main__":
    main()
