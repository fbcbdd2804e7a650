"""Cluster profiles: each one loads in a real `snakemake --profile ... -n` and maps GPU rules
to GPU requests.

Two levels, because the executor plugins are optional installs:
- always: the profile minus its plugin-only keys (executor, `slurm-*`/`kubernetes-*`
  settings, storage provider) goes through snakemake's own option parser and a dry run of
  ranked_dataset; the GPU rules must carry the resources the plugins read.
- with the plugin installed: the untouched profile, a full dry run through the plugin, and
  for SLURM the plugin's own sbatch GPU flag for those resources.
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import yaml

from conftest import REPO, copy_testdata, run_snakemake

PROFILES = REPO / "profiles"
GPU_RULES = ("upscale", "finetune", "rank")
# waifu2x makes upscale a GPU rule too (gpu=1); the test never runs it, only plans it.
GPU_CONFIG = {"upscale": {"method": "waifu2x"}}
# as the README's cluster commands: profiles/default (one GPU job at a time) is for a
# workstation and, being the workflow profile, would override the cluster profile
NO_WORKSTATION_PROFILE = ("--workflow-profile", "none")
PLUGIN_MODULE = {"slurm": "snakemake_executor_plugin_slurm",
                 "kubernetes": "snakemake_executor_plugin_kubernetes"}
# keys only the executor / storage plugins understand
PLUGIN_ONLY = re.compile(r"^(executor|slurm-.*|kubernetes-.*|container-image|"
                         r"default-storage-.*|storage-.*|shared-fs-usage)$")


def load_profile(name: str) -> dict:
    return yaml.safe_load((PROFILES / name / "config.yaml").read_text())


def planned_resources(output: str) -> dict[str, dict[str, str]]:
    """{rule: {resource: value}} from the job blocks of a non-quiet dry run."""
    found: dict[str, dict[str, str]] = {}
    rule = None
    for line in output.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):", line)
        if m:
            rule = m.group(1)
        elif rule and line.strip().startswith("resources:"):
            pairs = line.split("resources:", 1)[1].split(", ")
            found[rule] = dict(p.strip().split("=", 1) for p in pairs if "=" in p)
    return found


def workflow_rules(workdir: Path) -> set[str]:
    proc = run_snakemake(workdir, "--list-rules")
    return {m.group(1) for line in proc.stdout.splitlines() if (m := re.match(r"^(\w+)( \(|$)", line))}


@pytest.fixture
def raw_workdir(workdir: Path) -> Path:
    copy_testdata(workdir / "raw", files={"anime_miku_noisy.jpg", "photo_dogs.jpg"})
    return workdir


@pytest.mark.parametrize("name", ["slurm", "kubernetes"])
def test_profile_names_only_real_rules(name, raw_workdir):
    profile = load_profile(name)
    assert set(profile["set-resources"]) <= workflow_rules(raw_workdir)
    # every rule that declares a gpu resource is placed by the profile
    assert set(GPU_RULES) <= set(profile["set-resources"])


@pytest.mark.parametrize("name", ["slurm", "kubernetes"])
def test_profile_core_options_dry_run(name, raw_workdir, tmp_path):
    """Snakemake's own parser and scheduler take the profile's core options; GPU rules
    come out with gpu=1 and what the plugin needs to turn that into a GPU request."""
    core = {k: v for k, v in load_profile(name).items() if not PLUGIN_ONLY.match(k)}
    stripped = tmp_path / "profile"
    stripped.mkdir()
    (stripped / "config.yaml").write_text(yaml.safe_dump(core))
    proc = run_snakemake(raw_workdir, "--profile", str(stripped), *NO_WORKSTATION_PROFILE, "-n",
                         "ranked_dataset", overrides=GPU_CONFIG)
    plan = planned_resources(proc.stdout + proc.stderr)
    for rule in GPU_RULES:
        assert plan[rule]["gpu"] == "1", (rule, plan[rule])
    assert plan["finetune"]["mem_mb"] == "16000"        # the rule's own value wins
    if name == "slurm":
        for rule in GPU_RULES:
            assert plan[rule]["slurm_partition"] == "gpu"
        assert plan["crop"]["slurm_partition"] == "cpu"
        assert "gpu" not in plan["crop"]
    else:
        for rule in GPU_RULES:
            assert plan[rule]["gpu_manufacturer"] == "nvidia"
        assert "gpu_manufacturer" not in plan["crop"]


def plugin_installed(name: str) -> bool:
    return importlib.util.find_spec(PLUGIN_MODULE[name]) is not None


@pytest.mark.parametrize("name", ["slurm", "kubernetes"])
def test_profile_full_dry_run_with_plugin(name, raw_workdir):
    if not plugin_installed(name):
        pytest.skip(f"{PLUGIN_MODULE[name]} not installed (optional cluster requirement)")
    extra = []
    if name == "kubernetes":
        # the profile's storage prefix is the working directory on the shared volume
        extra = ["--default-storage-prefix", str(raw_workdir)]
    proc = run_snakemake(raw_workdir, "--profile", str(PROFILES / name), *NO_WORKSTATION_PROFILE,
                         *extra, "-n", "ranked_dataset", overrides=GPU_CONFIG)
    plan = planned_resources(proc.stdout + proc.stderr)
    assert set(GPU_RULES) <= set(plan)
    for rule in GPU_RULES:
        assert plan[rule]["gpu"] == "1"


def test_slurm_plugin_turns_gpu_resource_into_gpus_flag(raw_workdir):
    if not plugin_installed("slurm"):
        pytest.skip("snakemake_executor_plugin_slurm not installed (optional cluster requirement)")
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    proc = run_snakemake(raw_workdir, "--profile", str(PROFILES / "slurm"),
                         *NO_WORKSTATION_PROFILE, "-n", "ranked_dataset", overrides=GPU_CONFIG)
    plan = planned_resources(proc.stdout + proc.stderr)

    class Resources(dict):
        __getattr__ = dict.get

    class Job:
        def __init__(self, rule):
            self.rule = rule
            self.resources = Resources({k: int(v) if v.isdigit() else v
                                        for k, v in plan[rule].items()})

    for rule in GPU_RULES:
        assert set_gres_string(Job(rule)).strip() == "--gpus=1"
    assert set_gres_string(Job("crop")) == ""
