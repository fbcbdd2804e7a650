# faceprep: raw images of one character -> clean, uniform, ranked StyleGAN dataset.
#   snakemake --cores 16 ranked_dataset                        (config.yaml)
#   snakemake ranked_dataset --cores 16 --configfile characters/holo.yaml  (target first:
#   --configfile takes every word after it)
# This file only loads config and includes rules; logic lives in pipeline/ and gan/.

configfile: workflow.source_path("config.yaml")


include: "rules/common.smk"
include: "rules/ingest.smk"
include: "rules/crop.smk"
include: "rules/clean.smk"
include: "rules/upscale.smk"
include: "rules/normalize.smk"
include: "rules/augment.smk"
include: "rules/export.smk"
include: "rules/finetune.smk"
include: "rules/rank.smk"
include: "rules/report.smk"
include: "rules/model.smk"


rule all:
    default_target: True
    input:
        rules.ranked_dataset.input,


onerror:
    # The console ends with what went wrong: the failing job's log tail and path, or the
    # one-line reason of an intentional stop (pipeline/console.py).
    from pipeline.console import end_scheduler_timers, failure_report

    _text = failure_report(log)
    end_scheduler_timers()  # the process exits now, not a second later
    if _text:
        print(f"Complete log(s): {', '.join(map(str, log))}\n{_text}", file=sys.stderr)
        sys.exit(1)  # snakemake prints nothing after this, so the reason stays the last line


_RUN_STARTED = __import__("time").time()  # the console's last lines: what this run made


onsuccess:
    from pipeline.console import end_scheduler_timers, outcome

    for _line in outcome(R, since=_RUN_STARTED):
        print(f"faceprep: {_line}", file=sys.stderr)
    # outputs made from a network trained on older data (e.g. after a `dataset`-only rerun)
    from pipeline.console import stale_outputs

    _stale = stale_outputs(R, round_set(ROUNDS)["manifest"], REJECTS)
    if _stale:
        print(f"faceprep: {_stale}", file=sys.stderr)
    end_scheduler_timers()  # the process exits now, not a second later
