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
