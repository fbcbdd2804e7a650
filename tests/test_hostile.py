"""Hostile and careless input (issue 16): every raw path accounted for, any file name
survives the manifests, damaged images caught, metadata/rejects parsed defensively,
config that cannot escape. Real files, real CLIs, one real snakemake run."""
from __future__ import annotations

import csv
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, TESTDATA, run_snakemake, snakemake_command, testdata_rows

from pipeline import export, ingest, normalize
from pipeline.imaging import decode_check
from pipeline.manifest import Row, read_manifest, read_manifests, write_manifest

CFG = {"extensions": ["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"],
       "max_pixels": 20_000_000, "damaged": "drop", "metadata": None, "tags_include": [],
       "tags_exclude": [], "ratings": []}

# File names no testdata file has; each is a real picture so it travels the whole workflow.
HOSTILE_NAMES = {
    "cr\rname.jpg": "anime_miku_noisy.jpg",
    "lf\nname.png": "anime_miku_small.png",
    "tab\tname.jpg": "photo_2008_001009.jpg",
    "quote\"s 'and' \\back\\slash.jpg": "noface_city.jpg",
    os.fsdecode(b"latin1_caf\xe9_\xff.jpg"): "photo_Tom_Cruise_avp_2014_4.jpg",  # not UTF-8
    "l" * 251 + ".jpg": "photo_dogs.jpg",  # 255 bytes, the longest name ext4 allows
    "sep\u2028line\x85next.jpg": "photo_2008_001322.jpg",  # str.splitlines() splits these
}


def can_drop_read_permission() -> bool:
    return os.geteuid() != 0 or shutil.which("setpriv") is not None


def unprivileged(cmd: list[str]) -> list[str]:
    """``cmd`` such that a chmod 000 folder is unreadable to it (root ignores permissions)."""
    if os.geteuid() == 0:
        return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *cmd]
    return cmd


def zeroed_run_jpeg(src: Path) -> bytes:
    """A baseline JPEG with 200 bytes zeroed mid-scan: Pillow decodes a garbage lower half."""
    data = bytearray(src.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 200] = bytes(200)
    return bytes(data)


def png_cut_after_idat(src: Path) -> bytes:
    """A PNG missing its IEND chunk (and half of the last chunk's CRC): pixels all there."""
    data = src.read_bytes()
    return data[:data.rindex(b"IEND") - 4 - 2]


def png_bad_crc(src: Path) -> bytes:
    """A PNG whose first IDAT chunk fails its CRC (Pillow does not check IDAT CRCs)."""
    data = bytearray(src.read_bytes())
    pos = data.index(b"IDAT")
    (length,) = struct.unpack(">I", data[pos - 4:pos])
    data[pos + 4 + length] ^= 0xFF
    return bytes(data)


def psd_bytes(im: Image.Image) -> bytes:
    """A flat 8-bit RGB Photoshop file (raw planes, no layers), as an editor exports it."""
    rgb = np.asarray(im.convert("RGB"))
    h, w, _ = rgb.shape
    head = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, h, w, 8, 3)
    sections = struct.pack(">III", 0, 0, 0)  # colour mode data, resources, layers: empty
    return head + sections + struct.pack(">H", 0) + rgb.transpose(2, 0, 1).tobytes()


def build_hostile_raw(raw: Path) -> dict[str, str]:
    """A raw folder with hostile names, links, dot-folders, special and damaged files.

    Returns {relative path: expected ingest verdict} ("keep" or the drop reason) for every
    path that must appear in the listing/manifests: each exactly once.
    """
    raw.mkdir(parents=True, exist_ok=True)
    expected = {}
    for name, src in HOSTILE_NAMES.items():
        shutil.copyfile(TESTDATA / src, raw / name)
        expected[name] = "keep"
    (raw / "sub").mkdir()
    shutil.copyfile(TESTDATA / "photo_2009_004587.jpg", raw / "sub" / "inner.jpg")
    expected["sub/inner.jpg"] = "keep"
    # links: followed while they stay inside raw_dir, listed under the link's own path
    os.symlink("tab\tname.jpg", raw / "link_to_file.jpg")
    expected["link_to_file.jpg"] = "keep"
    os.symlink("sub", raw / "linked_sub")
    expected["linked_sub/inner.jpg"] = "keep"
    os.symlink("..", raw / "sub" / "up")  # a folder link back to an ancestor
    expected["sub/up"] = "symlink_loop"
    expected["linked_sub/up"] = "symlink_loop"
    os.symlink("self.jpg", raw / "self.jpg")  # ELOOP
    expected["self.jpg"] = "symlink_loop"
    os.symlink("missing.jpg", raw / "dangling.jpg")
    expected["dangling.jpg"] = "dangling_symlink"
    os.symlink(TESTDATA / "noface_city.jpg", raw / "outside.jpg")
    expected["outside.jpg"] = "symlink_outside_raw_dir"
    os.symlink(TESTDATA, raw / "outside_dir")
    expected["outside_dir"] = "symlink_outside_raw_dir"
    # dot-folders are not searched (.git, .thumbnails); dot-files are ordinary files
    (raw / ".thumbnails").mkdir()
    shutil.copyfile(TESTDATA / "anime_tone.png", raw / ".thumbnails" / "t.png")
    expected[".thumbnails"] = "hidden_folder"
    shutil.copyfile(TESTDATA / "photo_2008_002079.jpg", raw / ".dotfile.jpg")
    expected[".dotfile.jpg"] = "keep"
    os.mkfifo(raw / "pipe.jpg")  # opening it would block the shard forever
    expected["pipe.jpg"] = "not_a_regular_file"
    # damaged files that Pillow alone decodes without complaint
    (raw / "zeroed_run.jpg").write_bytes(zeroed_run_jpeg(TESTDATA / "anime_miku_noisy.jpg"))
    expected["zeroed_run.jpg"] = "corrupt_data"
    (raw / "cut.png").write_bytes(png_cut_after_idat(TESTDATA / "broken" / "alpha.png"))
    expected["cut.png"] = "truncated"
    with Image.open(TESTDATA / "photo_2008_002470.jpg") as im:
        (raw / "photoshop.jpg").write_bytes(psd_bytes(im))
    expected["photoshop.jpg"] = "keep"  # a PSD named .jpg: its merged image is used
    if can_drop_read_permission():
        (raw / "locked").mkdir()
        shutil.copyfile(TESTDATA / "anime_tone.png", raw / "locked" / "x.png")
        os.chmod(raw / "locked", 0)
        expected["locked"] = "unreadable_folder"
        shutil.copyfile(TESTDATA / "photo_2008_002506.jpg", raw / "locked_file.jpg")
        os.chmod(raw / "locked_file.jpg", 0)
        expected["locked_file.jpg"] = "unreadable"
    return expected


def read_tsv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_every_raw_path_accounted_for_and_any_name_survives_a_real_run(workdir):
    raw = workdir / "raw"
    expected = build_hostile_raw(raw)
    cmd = snakemake_command(workdir, "ranked_dataset")
    proc = subprocess.run(unprivileged(cmd), cwd=workdir, capture_output=True, text=True,
                          errors="replace", timeout=1800)
    if (raw / "locked").exists():
        os.chmod(raw / "locked", 0o755)
    assert proc.returncode == 0, proc.stderr[-6000:]
    R = workdir / "results" / "tiny"

    # ingest: exactly one row per expected path, with the expected verdict
    rows = read_manifests(sorted(R.glob("ingest/*/manifest.tsv")))
    counts = Counter(r.source for r in rows)
    assert counts == Counter(list(expected)), set(counts) ^ set(expected)
    verdict = {r.source: ("keep" if r.kept else r.reason) for r in rows}
    assert verdict == expected
    by_source = {r.source: r for r in rows}
    assert by_source["photoshop.jpg"].details["format"] == "PSD"
    assert "Corrupt JPEG data" in by_source["zeroed_run.jpg"].details["damage"]
    assert by_source["outside.jpg"].details["link"] == str(TESTDATA / "noface_city.jpg")

    # provenance: one row per raw path (crop method none: no faces split off), names exact
    prov = read_tsv(R / "provenance.tsv")
    assert Counter(p["source"] for p in prov) == Counter(list(expected))
    for p in prov:
        if expected[p["source"]] != "keep":
            assert (p["last_stage"], p["action"], p["reason"]) == (
                "ingest", "drop", expected[p["source"]]), p

    # every hostile name reached the dataset with its exact bytes
    exported = {r.source for r in read_manifest(R / "export" / "manifest.tsv")}
    assert set(HOSTILE_NAMES) <= exported | {
        r.source for r in read_manifests(sorted(R.glob("clean/dedup.tsv"))) if not r.kept}
    assert os.fsdecode(b"latin1_caf\xe9_\xff.jpg") in exported
    assert (R / "report" / "index.html").stat().st_size > 0
    # sources never modified
    assert (raw / "cr\rname.jpg").read_bytes() == (TESTDATA / "anime_miku_noisy.jpg").read_bytes()


def test_unreadable_folder_listed_with_its_reason(tmp_path):
    if not can_drop_read_permission():
        pytest.skip("running as root without setpriv: permissions cannot be dropped")
    raw = tmp_path / "raw"
    (raw / "locked").mkdir(parents=True)
    (raw / "locked" / "a.png").write_bytes(b"x")
    (raw / "ok.png").write_bytes(b"x")
    os.chmod(raw / "locked", 0)
    code = ("import json, sys; from pipeline.ingest import list_raw_dir; "
            "print(json.dumps(list_raw_dir(sys.argv[1])))")
    out = subprocess.run(unprivileged([sys.executable, "-c", code, str(raw)]), cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    os.chmod(raw / "locked", 0o755)
    listed = {e[0]: e[3] for e in json.loads(out)}
    assert listed == {"locked": "unreadable_folder", "ok.png": ""}


def test_listing_round_trips_any_name(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in HOSTILE_NAMES:
        (raw / name).write_bytes(b"x")
    entries = ingest.list_raw_dir(raw)
    assert {e[0] for e in entries} == set(HOSTILE_NAMES)
    ingest.write_shard_listings(entries, tmp_path / "listing", ["0"])
    assert ingest.parse_listing((tmp_path / "listing" / "0.tsv").read_bytes().decode(
        "utf-8", "surrogateescape")) == entries
    # and the manifest format: every name, in every text column and in details
    rows = [Row(id=n, source=n, parent_id=n, path=str(raw / n), details={"name": n, "bad": "\ud800"})
            for n in [*HOSTILE_NAMES, '"', "", " x ", "a\r\n"]]
    write_manifest(tmp_path / "m.tsv", rows)
    assert read_manifest(tmp_path / "m.tsv") == rows


def test_listing_survives_nesting_deeper_than_python_recursion(tmp_path):
    raw = tmp_path / "raw"
    deep = str(raw)
    os.mkdir(deep)
    for _ in range(sys.getrecursionlimit() + 200):
        deep = os.path.join(deep, "d")
        os.mkdir(deep)
    Path(deep, "x.png").write_bytes(b"x")
    try:
        (entry,) = ingest.list_raw_dir(raw)
        assert entry[0].endswith("/d/x.png") and entry[3] == ""
    finally:  # bottom up: Python 3.11's shutil.rmtree (pytest's cleanup) recurses too
        os.remove(os.path.join(deep, "x.png"))
        while deep != str(raw):
            os.rmdir(deep)
            deep = os.path.dirname(deep)


def test_listing_of_exponentially_many_link_paths_is_bounded(tmp_path):
    """Two links per level to the next level: 2**24 paths if every link were followed."""
    raw = tmp_path / "raw"
    levels = 24
    for k in range(levels):
        (raw / f"a{k}").mkdir(parents=True)
        if k:
            for link in ("l1", "l2"):
                os.symlink(f"../a{k}", raw / f"a{k - 1}" / link)
    (raw / f"a{levels - 1}" / "x.png").write_bytes(b"x")
    entries = ingest.list_raw_dir(raw)
    paths = [e[0] for e in entries]
    assert len(paths) == len(set(paths)) < 5000
    assert f"a{levels - 1}/x.png" in paths
    assert Counter(e[3] for e in entries)["symlink_repeated"] > 0
    assert ingest.list_raw_dir(raw) == entries  # the same choice every time


def run_ingest(tmp_path: Path, raw: Path, cfg=CFG) -> list[Row]:
    ingest.write_shard_listings(ingest.list_raw_dir(raw), tmp_path / "listing", ["0"])
    out = tmp_path / "ingest" / "manifest.tsv"
    ingest.main(["shard", "--listing", str(tmp_path / "listing" / "0.tsv"), "--raw-dir", str(raw),
                 "--output", str(out), "--config", json.dumps(cfg)])
    return read_manifest(out)


def test_damaged_images_dropped_or_kept_with_a_flag_and_first_frame_used(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "zeroed.jpg").write_bytes(zeroed_run_jpeg(TESTDATA / "anime_miku_noisy.jpg"))
    (raw / "cut.png").write_bytes(png_cut_after_idat(TESTDATA / "anime_miku_small.png"))
    (raw / "flipped.png").write_bytes(png_bad_crc(TESTDATA / "anime_miku_small.png"))
    # the same damage is invisible to Pillow alone: that is what was let through before
    for name in ("zeroed.jpg", "cut.png"):
        with Image.open(raw / name) as im:
            im.load()
    with Image.open(TESTDATA / "photo_2008_002470.jpg") as im:
        (raw / "layered.jpg").write_bytes(psd_bytes(im))
        first = im.convert("RGB").resize((64, 64))
    frames = [first, Image.new("RGB", (64, 64), (255, 0, 255))]
    frames[0].save(raw / "anim.png", save_all=True, append_images=frames[1:])  # APNG
    # a TIFF whose first page is a red thumbnail flagged "reduced resolution"
    import tifffile
    thumb = np.zeros((16, 16, 3), np.uint8)
    thumb[..., 0] = 255
    tifffile.imwrite(raw / "thumb_first.tif", thumb, subfiletype=1, photometric="rgb")
    tifffile.imwrite(raw / "thumb_first.tif", np.asarray(first), append=True, photometric="rgb")

    rows = {r.source: r for r in run_ingest(tmp_path / "a", raw)}
    assert (rows["zeroed.jpg"].reason, rows["cut.png"].reason, rows["flipped.png"].reason) == (
        "corrupt_data", "truncated", "corrupt_data")
    assert "CRC" in rows["flipped.png"].details["damage"]
    assert rows["layered.jpg"].kept and rows["anim.png"].kept
    assert rows["anim.png"].details["frames"] == 2
    assert (rows["thumb_first.tif"].width, rows["thumb_first.tif"].details["page"]) == (64, 1)

    kept = {r.source: r for r in run_ingest(tmp_path / "b", raw, {**CFG, "damaged": "keep"})}
    assert all(r.kept for r in kept.values())
    assert kept["zeroed.jpg"].details["damage"].startswith("Corrupt JPEG data")

    # later stages read what ingest kept: the PSD's merged image, the APNG's first frame
    out = tmp_path / "normalize" / "0" / "manifest.tsv"
    normalize.main(["--input", str(tmp_path / "a" / "ingest" / "manifest.tsv"), "--output", str(out),
                    "--config", json.dumps({"resolution": 64, "fit": "crop", "format": "png",
                                            "quality": 95, "background": [0, 0, 0]})])
    normed = {r.source: r for r in read_manifest(out)}
    assert normed["layered.jpg"].kept
    for name in ("anim.png", "thumb_first.tif"):
        with Image.open(normed[name].path) as im:
            assert np.abs(np.asarray(im, np.int16) - np.asarray(first, np.int16)).mean() < 2, name


def mutate(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    kind = rng.choice(["zero", "truncate", "flip"])
    buf = bytearray(data)
    if kind == "zero":
        start = rng.randrange(len(buf))
        n = rng.randint(1, 512)
        buf[start:start + n] = bytes(len(buf[start:start + n]))
    elif kind == "truncate":
        del buf[rng.randrange(1, len(buf)):]
    else:
        for _ in range(rng.randint(1, 16)):
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
    return kind, bytes(buf)


def test_property_mutated_testdata_never_crash_ingest_or_normalize(tmp_path):
    """Random bytes zeroed, truncated or flipped in real images: both stages finish, every
    file gets a row, and whatever ingest keeps, normalize can read."""
    rng = random.Random(16)
    images = [r["file"] for r in testdata_rows() if r["file"] != "broken/huge_6000x4000.png"
              and (TESTDATA / r["file"]).stat().st_size > 0
              and Path(r["file"]).suffix.lower() in (".jpg", ".png", ".gif", ".tif")]
    raw = tmp_path / "raw"
    raw.mkdir()
    kinds = Counter()
    for i in range(64):
        src = images[i % len(images)]
        kind, data = mutate((TESTDATA / src).read_bytes(), rng)
        kinds[kind] += 1
        (raw / f"{i:02d}_{kind}{Path(src).suffix}").write_bytes(data)
    rows = run_ingest(tmp_path, raw)
    assert sorted(r.source for r in rows) == sorted(os.listdir(raw))
    assert all(r.kept or r.reason for r in rows)
    out = tmp_path / "normalize" / "0" / "manifest.tsv"
    normalize.main(["--input", str(tmp_path / "ingest" / "manifest.tsv"), "--output", str(out),
                    "--config", json.dumps({"resolution": 32, "fit": "pad", "format": "jpg",
                                            "quality": 90, "background": [0, 0, 0]}), "--threads", "2"])
    normed = read_manifest(out)
    ingest_kept = {r.id for r in rows if r.kept}
    assert {r.id for r in normed} == ingest_kept
    assert all(r.kept for r in normed), [(r.source, r.reason) for r in normed if not r.kept]
    # the mutations were real: a good share of the files was caught
    assert sum(not r.kept for r in rows) >= 24, Counter(r.reason for r in rows)


def test_metadata_jsonl_parsed_defensively(tmp_path, capsys):
    lines = [
        b"\xef\xbb\xbf" + json.dumps({"id": 1, "tag_string": "miku solo", "rating": "s"}).encode(),
        b'"just a string"',
        b"[1, 2, 3]",
        json.dumps({"id": 4, "tags": 17}).encode(),          # tags of the wrong type
        json.dumps({"id": 5, "tags": [{"name": "miku"}, None]}).encode(),
        json.dumps({"id": {"nested": 1}, "tag_string": "miku"}).encode(),
        b'{"id": 7, "tag_string": "miku caf\xe9"}',           # Latin-1 byte
        b"{not json",
        b"",
        json.dumps({"id": "tab\tid", "md5": "m8", "tag_string": "miku"}).encode(),
    ]
    jsonl = tmp_path / "posts.jsonl"
    jsonl.write_bytes(b"\r\n".join(lines) + b"\n")
    out = tmp_path / "decisions.tsv"
    ingest.main(["metadata", "--metadata", str(jsonl), "--output", str(out),
                 "--config", json.dumps({**CFG, "tags_include": ["miku"]})])
    err = capsys.readouterr().err
    for n in (2, 3, 4, 5, 6, 7, 8):
        assert f"metadata line {n}:" in err, (n, err)
    decisions = ingest.read_decisions(out)
    assert decisions["1"] == ("", {})  # the BOM did not hide the first post
    assert decisions["4"][0] == "metadata_malformed" and decisions["4"][1]["metadata_line"] == 4
    assert decisions["tab\tid"] == ("", {}) and decisions["m8"] == ("", {})
    assert "7" not in decisions
    with pytest.raises(SystemExit, match="is a folder"):
        ingest.main(["metadata", "--metadata", str(tmp_path), "--output", str(out),
                     "--config", json.dumps(CFG)])


def test_rejects_file_parsed_defensively(tmp_path, capsys):
    rejects = tmp_path / "rejects.txt"
    rejects.write_bytes(b"\xef\xbb\xbfaaaa000011112222\r\n# rejet\xe9 par moi\r\n"
                        b"bbbb000011112222  # comment\r\ncaf\xe9.jpg\r\n\r\ncccc\rdddd\n")
    got = export.read_rejects(rejects)
    assert got == {"aaaa000011112222", "bbbb000011112222", os.fsdecode(b"caf\xe9.jpg"), "cccc", "dddd"}
    err = capsys.readouterr().err
    assert "line 2 is not UTF-8" in err and "line 4 is not UTF-8" in err
    with pytest.raises(SystemExit, match="is a folder"):
        export.read_rejects(tmp_path)


def test_config_cannot_escape(workdir):
    from snakemake.utils import validate
    from conftest import deep_merge, TINY_CONFIG
    import yaml
    base = deep_merge(yaml.safe_load((REPO / "config.yaml").read_text()), TINY_CONFIG)
    base["raw_dir"] = str(workdir / "raw")
    schema = str(REPO / "schemas" / "config.schema.yaml")
    for bad in (".", "..", "-x", "--cores", "a/b", "a\\b", ".hidden", ""):
        with pytest.raises(Exception, match="does not match|too short|is not valid"):
            validate({**base, "name": bad}, schema=schema)
    validate({**base, "name": "holo_2.v1-x"}, schema=schema)

    raw = str(workdir / "raw")
    problem = ingest.config_path_problem
    assert problem({"raw_dir": raw, "results_dir": "results", "cache_dir": "cache"}) == ""
    assert "inside raw_dir" in problem({"raw_dir": raw, "results_dir": f"{raw}/out"})
    assert "cache_dir" in problem({"raw_dir": raw, "results_dir": "r", "cache_dir": raw})
    assert "inside results_dir" in problem({"raw_dir": raw, "results_dir": str(workdir)})
    assert "ingest.metadata" in problem({"raw_dir": raw, "ingest": {"metadata": raw}})
    assert "is a folder" in problem({"raw_dir": raw}, rejects=raw)

    # through snakemake: refused at parse time, one line, before anything is written
    (workdir / "raw" / "a.jpg").write_bytes((TESTDATA / "anime_miku_noisy.jpg").read_bytes())
    bad = run_snakemake(workdir, "dataset", "-n", overrides={"results_dir": f"{raw}/results"},
                        check=False)
    assert bad.returncode != 0
    lines = [ln for ln in (bad.stdout + bad.stderr).splitlines() if ln.startswith("faceprep:")]
    assert len(lines) == 1 and "results_dir" in lines[0] and "inside raw_dir" in lines[0]
    assert not (workdir / "raw" / "results").exists()
    bad = run_snakemake(workdir, "dataset", "-n", overrides={"name": "-x"}, check=False)
    assert bad.returncode != 0 and "'-x' does not match" in bad.stdout + bad.stderr


def test_metadata_with_bad_lines_through_a_real_run_in_an_awkward_results_dir(workdir):
    raw = workdir / "raw"
    for name in ("anime_miku_noisy.jpg", "noface_city.jpg"):
        shutil.copyfile(TESTDATA / name, raw / name)
    jsonl = workdir / "posts.jsonl"
    jsonl.write_bytes(b"\xef\xbb\xbf" + json.dumps({"md5": "anime_miku_noisy", "tag_string": "miku"}).encode()
                      + b"\n[1]\n" + json.dumps({"md5": "noface_city", "tags": {"a": 1}}).encode() + b"\n")
    results = "res'ults dir"  # a quote and a space in every output path of the shell commands
    run_snakemake(workdir, f"{results}/tiny/ingest/0/manifest.tsv", f"{results}/tiny/ingest/1/manifest.tsv",
                  overrides={"results_dir": results, "ingest": {"metadata": str(jsonl),
                                                                "tags_include": ["miku"]}})
    R = workdir / results / "tiny"
    rows = {r.source: r for r in read_manifests(sorted(R.glob("ingest/*/manifest.tsv")))}
    assert rows["anime_miku_noisy.jpg"].kept
    assert rows["noface_city.jpg"].reason == "metadata_malformed"
    log = (R / "logs" / "metadata_filter" / "all.log").read_text()
    assert "metadata line 2:" in log and "metadata line 3:" in log
