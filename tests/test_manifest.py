"""Manifests: lean rows with lazy details, streaming reads, the TSV still csv-readable."""
from __future__ import annotations

import csv
import json
import tracemalloc

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
    """The layers: util below both, pipeline may use gan (rank runs the network), gan never
    uses pipeline. gan/runs.py's dataset_fingerprint still reads the export manifest with
    pipeline.manifest (its owner moves it, issue 25 item 3)."""
    import ast

    def imported(path):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        return {(n.module if isinstance(n, ast.ImportFrom) else a.name).split(".")[0]
                for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                for a in n.names if not (isinstance(n, ast.ImportFrom) and n.level)}
    gan = {p.name: imported(p) for p in (REPO / "gan").glob("*.py")}
    assert {name for name, mods in gan.items() if "pipeline" in mods} <= {"runs.py"}
    assert all("util" in gan[name] for name in ("checkpoint.py", "legacy.py", "train.py", "generate.py"))
    for p in (REPO / "util").glob("*.py"):
        assert not imported(p) & {"pipeline", "gan"}, p
