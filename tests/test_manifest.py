"""Manifests: lean rows with lazy details, streaming reads, the TSV still csv-readable."""
from __future__ import annotations

import csv
import json
import re
import tracemalloc

import numpy as np
import pytest
from conftest import REPO

from pipeline.manifest import (COLUMNS, Row, dropped_ids, iter_manifest, read_manifest,
                               write_manifest)

HOSTILE = ["plain.jpg", "tab\there.jpg", 'quote"d.png', "new\nline.jpg", "cr\rname.jpg",
           "sep\u2028line.png", "bytes\udcff\udcfe.jpg", "ünïcödé 名前.png", "", "\"{x}\""]


def rows_with_every_kind_of_name():
    out = []
    for i, name in enumerate(HOSTILE * 3):
        details = {"box": [i, i + 1, 30, 30], "name": name, "nested": {"a": [1.5, None, True]},
                   "text": 'he said "hi"\tand\nleft'} if i % 4 else {}
        row = Row(id=f"id{i:03d}", source=name, parent_id=f"p{i}", path=f"/data/{name}",
                  width=i, height=2 * i, details=details)
        out.append(row.drop("near_duplicate", details={"duplicate_of": "id000"}) if i % 5 == 0 else row)
    return out


def test_round_trip_fast_path_and_csv_fallback_interleaved(tmp_path):
    rows = rows_with_every_kind_of_name()
    write_manifest(tmp_path / "m.tsv", rows)
    back = read_manifest(tmp_path / "m.tsv")
    assert back == rows
    assert [r.details for r in back] == [r.details for r in rows]
    # the file stays the readable contract: csv.reader gives the same fields and JSON
    with open(tmp_path / "m.tsv", newline="", encoding="utf-8", errors="surrogateescape") as f:
        records = list(csv.reader(f, delimiter="\t"))
    assert records[0] == COLUMNS and len(records) == len(rows) + 1
    for rec, r in zip(records[1:], rows):
        assert rec[:4] == [r.id, r.source, r.parent_id, r.path]
        assert json.loads(rec[8]) == r.details
    # passing rows on untouched writes the same bytes; dropped ids without building rows
    write_manifest(tmp_path / "again.tsv", iter_manifest(tmp_path / "m.tsv"))
    assert (tmp_path / "again.tsv").read_bytes() == (tmp_path / "m.tsv").read_bytes()
    assert dropped_ids(tmp_path / "m.tsv") == {r.id for r in rows if not r.kept}


def test_details_are_parsed_only_when_used_and_merges_stay_exact(tmp_path):
    rows = rows_with_every_kind_of_name()
    write_manifest(tmp_path / "m.tsv", rows)
    back = read_manifest(tmp_path / "m.tsv")
    assert all(r._details is None for r in back if r.details_field() != "{}")  # lazy
    for r, orig in zip(back, rows):
        added = r.keep(details={"index": 7, "z": ["x\ty"]})          # new keys: appended as text
        replaced = r.keep(details={"box": [0, 0, 1, 1], "index": 1})  # an existing key: parsed
        assert added.details == {**orig.details, "index": 7, "z": ["x\ty"]}
        assert replaced.details == {**orig.details, "box": [0, 0, 1, 1], "index": 1}
        assert r.keep(path="/elsewhere").details == orig.details
    write_manifest(tmp_path / "merged.tsv", [r.keep(details={"index": i}) for i, r in enumerate(back)])
    assert [r.details for r in read_manifest(tmp_path / "merged.tsv")] == \
        [{**r.details, "index": i} for i, r in enumerate(rows)]
    # immutable, like the frozen dataclass it replaced
    with pytest.raises(AttributeError):
        back[0].path = "x"
    with pytest.raises(TypeError):
        back[0].keep(colour="red")


def test_bad_manifests_are_refused(tmp_path):
    (tmp_path / "h.tsv").write_text("id\tsource\n")
    with pytest.raises(ValueError, match="not a faceprep manifest"):
        read_manifest(tmp_path / "h.tsv")
    with pytest.raises(ValueError, match="not a faceprep manifest"):
        dropped_ids(tmp_path / "h.tsv")
    (tmp_path / "d.tsv").write_text("\t".join(COLUMNS) + "\na\tb\t\tp\t1\t1\tkeep\t\tnot json\n")
    with pytest.raises(ValueError, match="not a JSON object"):
        read_manifest(tmp_path / "d.tsv")
    (tmp_path / "s.tsv").write_text("\t".join(COLUMNS) + "\na\tb\tc\n")
    with pytest.raises(ValueError, match="fields"):
        read_manifest(tmp_path / "s.tsv")


def test_rows_held_in_memory_are_lean(tmp_path):
    """20,000 rows with ~480 bytes of details each: about 1 KB a row held (the parsed
    dicts took ~3.7 KB a row before)."""
    details = {"box": [1002, 223, 408, 408], "crop": [900, 19, 1512, 733], "neighbors": 38,
               "padded": False, "file_bytes": 4893691, "pixel_sha256": "ab" * 32,
               "phash": "cca74147f6be1f72", "phash_mirror": "8c1745a79a6a5f92", "colors": 77020,
               "chroma": 11.5063, "upscaler": "lanczos", "upscale": {"factor": 2, "from": [408, 408]},
               "normalize": {"scale": 0.627451, "from": [816, 816]}}
    n = 20_000
    write_manifest(tmp_path / "big.tsv", (
        Row(id=f"{i:016x}-f0", source=f"raw/{i // 1000:04d}/img{i:07d}.jpg", parent_id=f"{i:016x}",
            path=f"/results/x/normalize/{i % 64:02d}/{i:016x}-f0.png", width=512, height=512,
            details=details) for i in range(n)))
    tracemalloc.start()
    rows = read_manifest(tmp_path / "big.tsv")
    held, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(rows) == n and rows[-1].details["phash"] == "cca74147f6be1f72"
    assert held / n < 1300, held / n


# ---------------------------------------------------------------- util (below pipeline and gan)

def test_schema_defaults_are_config_yaml_block_by_block():
    """util.config.defaults is the one reader of defaults (gan.train, gan.generate, benches):
    the schema's defaults, nested blocks filled in, are config.yaml's values."""
    import yaml

    from util.config import defaults, with_defaults
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    blocks = [k for k, v in config.items() if isinstance(v, dict)]
    assert {"clean", "finetune", "generate", "rank"} <= set(blocks)
    for block in blocks:
        assert defaults(block) == config[block], block
    assert with_defaults("generate", {"psi": 0.5})["psi"] == 0.5
    with pytest.raises(ValueError, match="psii"):
        with_defaults("generate", {"psii": 0.5})


def test_gan_does_not_import_pipeline_and_util_imports_neither():
    """The layers: util below both (the dataset fingerprint too), pipeline may use gan
    (rank runs the network), gan never uses pipeline."""
    import ast

    def imported(path):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        return {(n.module if isinstance(n, ast.ImportFrom) else a.name).split(".")[0]
                for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                for a in n.names if not (isinstance(n, ast.ImportFrom) and n.level)}
    gan = {p.name: imported(p) for p in (REPO / "gan").glob("*.py")}
    assert not {name for name, mods in gan.items() if "pipeline" in mods}
    assert all("util" in gan[name] for name in ("checkpoint.py", "legacy.py", "train.py", "generate.py"))
    for p in (REPO / "util").glob("*.py"):
        assert not imported(p) & {"pipeline", "gan"}, p


def test_fingerprint_reads_manifests_as_the_pipeline_writes_them(tmp_path):
    """util.fingerprint reads manifests with the csv module, not pipeline.manifest: the
    lines it hashes are those of the rows read_manifest gives, hostile names included,
    so dataset fingerprints (run folder names) stay what they were."""
    import hashlib

    from util.fingerprint import dataset_lines, kept_images
    rows = []
    for i, name in enumerate(HOSTILE):
        image = tmp_path / f"{i}.bin"
        image.write_bytes(name.encode("utf-8", "surrogateescape") + bytes([i]))
        row = Row(id=f"{name}{i:02d}", source=name, path=str(image), details={"name": name})
        rows.append(row.drop("too_dark") if i % 3 == 0 else row)
    write_manifest(tmp_path / "m.tsv", rows)
    back = read_manifest(tmp_path / "m.tsv")
    assert kept_images(tmp_path / "m.tsv") == [(r.id, r.path) for r in back if r.kept]
    expected = "".join(f"{r.id}\t{hashlib.sha256(open(r.path, 'rb').read()).hexdigest()}\n"
                       for r in sorted((r for r in back if r.kept), key=lambda r: r.id))
    assert dataset_lines(tmp_path / "m.tsv") == expected and expected.count("\n") == 6


STAGES = ("ingest", "crop", "clean", "dedup", "upscale", "normalize", "augment", "export")


def _reasons_given(path, also=()) -> set[str]:
    """The drop reasons a module's code writes: the first argument of every ``.drop(...)``
    and ``dropped(...)`` call, and of every ``problem(...)`` (ingest's listing), as a string
    or a module-level string constant; ``also``: the functions whose (reason, details)
    tuples or returned strings are reasons (the checks and verdicts a stage writes)."""
    import ast
    tree = ast.parse(path.read_text(encoding="utf-8"))
    constants = {t.id: n.value.value for n in tree.body if isinstance(n, ast.Assign)
                 and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)
                 for t in n.targets if isinstance(t, ast.Name)}

    def word(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return {node.value}
        if isinstance(node, ast.Name) and node.id in constants:
            return {constants[node.id]}
        if isinstance(node, ast.IfExp):
            return word(node.body) | word(node.orelse)
        return set()
    out = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Call) and n.args:
            name = n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", "")
            if name in ("drop", "dropped"):
                out |= word(n.args[0])
            elif name == "problem" and len(n.args) == 3:
                out |= word(n.args[2])
        if isinstance(n, ast.FunctionDef) and n.name in also:
            for r in ast.walk(n):
                if isinstance(r, ast.Tuple) and r.elts:
                    out |= word(r.elts[0])
                elif isinstance(r, ast.Return) and r.value is not None:
                    out |= word(r.value)
    return out - {""}


def test_every_drop_reason_a_stage_writes_is_declared_in_its_module():
    """Each stage module declares the reasons it drops images for (``DROPS``: the page's
    words, the note's keys, the stop line's hint); the report and the console read them from
    there, so a reason its code writes but does not declare is a defect this finds."""
    import importlib
    verdicts = {"ingest": ("judge_post", "metadata_decisions"), "clean": ("judge_quality", "monochrome_filter"),
                "dedup": ("dedup_verdicts",)}
    given = {stage: _reasons_given(REPO / "pipeline" / f"{stage}.py", verdicts.get(stage, ()))
             for stage in STAGES}
    # ingest's decode check lives in pipeline/imaging.py; rounds writes export's reasons
    given["ingest"] |= _reasons_given(REPO / "pipeline" / "imaging.py",
                                      ("decode_check", "png_damage", "jpeg_damage"))
    given["export"] |= _reasons_given(REPO / "pipeline" / "rounds.py")
    assert {"no_face", "crop_error"} <= given["crop"] and {"near_duplicate"} <= given["dedup"]
    assert {"too_dark", "blurry", "monochrome"} <= given["clean"]
    assert {"empty_file", "truncated", "symlink_loop", "tag_missing", "metadata_malformed"} <= given["ingest"]
    for stage, reasons in given.items():
        declared = importlib.import_module(f"pipeline.{stage}").DROPS
        assert reasons <= set(declared), (stage, reasons - set(declared))


def test_the_page_and_the_stop_line_read_every_stage_s_declarations():
    """report.DECLARED_DROPS holds every funnel stage's own DROPS (no table of reason words
    in report.py) and a stage's stop line takes its hints from its declarations."""
    from pipeline import crop, export, ingest, report, survivors
    from pipeline.manifest import Row
    assert report.DECLARED_DROPS["crop"] is crop.DROPS and report.DECLARED_DROPS["ranked"] is export.DROPS
    assert report.reason_text("crop", "no_face") == crop.DROPS["no_face"].text
    assert not hasattr(report, "REASON_TEXT")
    bad = Row(id="a", source="a.txt").drop("unsupported_extension", details={"extension": "txt"})
    assert report.drop_note(bad, "ingest") == "extension txt"
    assert survivors.why_nothing_left({"ingest": [bad]}) == (
        f"ingest kept 0 of 1 files (unsupported_extension 1): {ingest.DROPS['unsupported_extension'].hint}")


def test_config_defaults_are_written_only_in_the_schema_and_config_yaml():
    """No stage, gan module or rule repeats a config default inline (``cfg.get("key",
    default)``): a config block reaches the code whole (the rule's param, filled in by
    ``util.config.with_defaults`` at a CLI) and is read as ``cfg["key"]``."""
    import ast

    from util.config import _schema
    keys = {*_schema()["properties"],
            *(k for block in _schema()["properties"].values() for k in block.get("properties", {}))}
    config_names = {"cfg", "crop", "clean", "config", "norm", "up", "quality", "mono"}
    found = []
    files = [*(REPO / "pipeline").glob("*.py"), *(REPO / "gan").glob("*.py")]
    for path in files:
        for n in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "get"
                    and len(n.args) == 2 and isinstance(n.args[0], ast.Constant) and n.args[0].value in keys):
                continue
            receiver = n.func.value
            name = receiver.attr if isinstance(receiver, ast.Attribute) else getattr(receiver, "id", "")
            if name in config_names or isinstance(receiver, ast.Subscript) and getattr(receiver.value, "id", "") == "config":
                found.append(f"{path.name}:{n.lineno} .get({n.args[0].value!r}, ...)")
    rules = "\n".join(p.read_text() for p in [*(REPO / "rules").glob("*.smk"), REPO / "Snakefile"])
    found += re.findall(r'config\[[^\]]+\]\.get\("\w+", [^)]*\)', rules)
    assert not found, found


def test_stages_import_numpy_without_its_huge_page_advice():
    """pipeline/__init__.py turns numpy's madvise(MADV_HUGEPAGE) off before numpy loads (the
    gathers paid for it in system time: bench/RESULTS.md); a user's own setting wins."""
    import os
    import subprocess
    import sys
    multiarray = pytest.importorskip("numpy._core.multiarray")
    if not hasattr(multiarray, "_set_madvise_hugepage"):
        pytest.skip("this numpy has no switch to read the setting back")
    # _set_madvise_hugepage returns the setting it replaces: the one in force
    code = ("import pipeline.dedup, numpy._core.multiarray as m; "
            "print(m._set_madvise_hugepage(True))")
    env = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"}
    ours = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                          capture_output=True, text=True, check=True)
    theirs = subprocess.run([sys.executable, "-c", code], cwd=REPO,
                            env={**env, "NUMPY_MADVISE_HUGEPAGE": "1"},
                            capture_output=True, text=True, check=True)
    assert (ours.stdout.strip(), theirs.stdout.strip()) == ("False", "True")


def test_copy_range_copies_in_the_kernel_and_without_it(tmp_path, monkeypatch):
    """util.files.copy_range (the dedup gather's pass two): a range of one file appended
    to another after what the writer holds, by copy_file_range and, where that fails part
    way (another file system), by reading and writing the rest; a file shorter than the
    range stops it."""
    import os
    from util.files import copy_range
    src = tmp_path / "src"
    src.write_bytes(bytes(range(256)) * 4096)
    real = os.copy_file_range
    for failing in (False, True):
        calls = []

        def partly(*args, **kw):  # copies 1000 bytes, then says it cannot
            calls.append(args)
            if failing and len(calls) > 1:
                raise OSError(18, "Invalid cross-device link")
            return real(args[0], args[1], min(args[2], 1000), *args[3:], **kw)
        monkeypatch.setattr(os, "copy_file_range", partly)
        out = tmp_path / f"out{failing}"
        with open(src, "rb") as f, open(out, "wb") as o:
            o.write(b"head")
            copy_range(f, o, 7, 300_000)
            o.write(b"tail")
        assert out.read_bytes() == b"head" + src.read_bytes()[7:300_007] + b"tail"
        assert len(calls) == (2 if failing else 300)
        with open(src, "rb") as f, open(out, "wb") as o, pytest.raises(ValueError, match="shorter"):
            copy_range(f, o, 1_000_000, 100_000)


@pytest.mark.parametrize("kind", ["face ids", "ten faces", "source ids", "upper case", "a space",
                                  "a short id", "other ids", "none"])
def test_id_order_is_the_order_of_sorting_the_ids(kind):
    """``id_order``: the positions of sorting the id strings (equal ids in input order),
    whether they are ingest's ids (sorted as numbers, then the rest: -f10 before -f2) or not."""
    from pipeline.ingest import source_id
    from pipeline.manifest import id_order, id_sort_keys
    rng = np.random.default_rng(5)
    sources = [source_id(f"raw/{k}.jpg") for k in rng.integers(0, 300, 2000)]
    faces = rng.integers(0, 12 if kind == "ten faces" else 3, 2000)
    ids = [s if kind == "source ids" else f"{s}-f{k}" for s, k in zip(sources, faces)]
    if kind == "upper case":
        ids[5] = ids[5].upper()
    elif kind == "a space":
        ids[7] = ids[7][:8] + " " + ids[7][9:]
    elif kind == "a short id":
        ids[3] = ids[3][:12]
    elif kind == "other ids":
        ids = [f"img-{k}" for k in rng.integers(0, 300, 2000)]
    elif kind == "none":
        ids = []
    fast = kind in ("face ids", "ten faces", "source ids", "none")
    assert (id_sort_keys(ids) is not None) == fast
    order = id_order(ids)
    assert order.dtype == np.int64 and order.tolist() == sorted(range(len(ids)), key=ids.__getitem__)
