"""The workflow as a user runs it: real snakemake subprocesses on a tiny config."""
import hashlib
import re
import shutil

from conftest import TESTDATA, copy_testdata, run_snakemake, scheduled_jobs

from pipeline.ingest import shard_of
from pipeline.manifest import read_manifest

FILES = {"anime_miku_noisy.jpg", "anime_miku_CC_BY-NC.jpg", "photo_dogs.jpg", "noface_city.jpg",
         "photo_2008_001009.jpg", "broken/truncated.jpg", "broken/zero_bytes.jpg",
         "broken/cmyk.jpg", "broken/<img src=x onerror=alert(1)>.png"}


def digests(folder):
    return {p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_typo_or_wrong_type_stops_before_any_job(workdir):
    copy_testdata(workdir / "raw", {"anime_miku_noisy.jpg"})
    bad = run_snakemake(workdir, "dataset", "-n", overrides={"normalize": {"qualty": 90}}, check=False)
    assert bad.returncode != 0
    assert "qualty" in bad.stdout + bad.stderr
    bad = run_snakemake(workdir, "dataset", "-n", overrides={"shards": "many"}, check=False)
    assert bad.returncode != 0
    assert "shards" in bad.stdout + bad.stderr and "many" in bad.stdout + bad.stderr
    assert not (workdir / "results" / "tiny" / "ingest").exists()


def test_rerun_schedules_exactly_what_changed(workdir):
    raw = copy_testdata(workdir / "raw", FILES)
    before = digests(raw)
    run_snakemake(workdir, "dataset")
    R = workdir / "results" / "tiny"

    # the broken files are dropped with reasons, nothing crashed, all levels exported
    ingest = {r.source: r for s in ("0", "1") for r in read_manifest(R / "ingest" / s / "manifest.tsv")}
    assert ingest["broken/truncated.jpg"].reason == "truncated"
    assert ingest["broken/zero_bytes.jpg"].reason == "empty_file"
    exported = read_manifest(R / "export" / "manifest.tsv")
    assert len(exported) >= 5
    for lvl in (2, 3, 4, 5):
        assert (R / "export" / "tfrecords" / f"tiny-r{lvl:02d}.tfrecords").stat().st_size > 0

    # up to date: a dry run schedules nothing but the (output-less) target itself
    assert set(scheduled_jobs(workdir, "dataset")) <= {"dataset"}

    # a character file naming one normalize key overrides only that key (the rest of the
    # block stays, or the 32 px outputs would change and everything rerun); that setting
    # reruns normalize (every shard) and the dataset files, nothing upstream
    character = workdir / "characters" / "tiny.yaml"
    character.parent.mkdir()
    character.write_text("normalize:\n  fit: crop\n")
    jobs = scheduled_jobs(workdir, "dataset", configfiles=[character])
    assert {k: v for k, v in jobs.items() if k != "dataset"} == {
        "normalize": 2, "export": 1, "tfrecords": 1, "zip": 1, "report": 1}

    # one new raw image: its shard's ingest/crop/clean plus the gathers; a dry run lists
    # every shard after the dedup checkpoint (tests/test_reruns.py checks the real run)
    shutil.copyfile(TESTDATA / "anime_miku_small.png", raw / "new_one.png")
    jobs = scheduled_jobs(workdir, "dataset")
    assert {k: v for k, v in jobs.items() if k != "dataset"} == {
        "ingest": 1, "crop": 1, "clean": 1, "dedup": 1, "upscale": 2, "normalize": 2, "export": 1,
        "tfrecords": 1, "zip": 1, "report": 1}  # report: the check page, part of the dataset target
    shard = str(shard_of("new_one.png", 2))
    listing = (R / "listing" / f"{shard}.tsv").read_text()
    assert "new_one.png" in listing

    # sources are never modified, moved or deleted
    (raw / "new_one.png").unlink()
    assert digests(raw) == before


def test_lint_is_clean(workdir):
    copy_testdata(workdir / "raw", {"anime_miku_noisy.jpg"})
    proc = run_snakemake(workdir, "--lint", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Lints for" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_make_demo_command_plans_the_whole_loop(tmp_path):
    """The README's main command, as the Makefile runs it, on the demo's real raw folder."""
    import shlex
    import subprocess
    import sys

    from conftest import REPO
    plan = subprocess.run(["make", "-n", "demo", "BIN=venvbin"], cwd=REPO, capture_output=True,
                          text=True, check=True).stdout
    line = next(x for x in plan.splitlines() if x.startswith("venvbin/snakemake "))
    subprocess.run([sys.executable, str(REPO / "demo" / "make_raw.py"), str(tmp_path / "demo" / "raw")],
                   check=True, capture_output=True)
    proc = subprocess.run([sys.executable, "-m", "snakemake", *shlex.split(line)[1:], "-n", "--quiet",
                           "rules", "--directory", str(tmp_path)], cwd=REPO, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    for rule in ("ingest", "crop", "clean", "dedup", "upscale", "normalize", "export", "finetune",
                 "rank", "ranked_export", "report"):
        assert re.search(rf"^{rule}\s+\d+$", out, re.M), (rule, out)
