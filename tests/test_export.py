import glob
import json
import os
import zipfile

import numpy as np
import pytest
from conftest import TESTDATA, normalize_files
from PIL import Image

from pipeline import export
from pipeline.manifest import Row, iter_manifests, read_manifest, write_manifest

tf = pytest.importorskip("tensorflow")

SOURCES = ["anime_miku_noisy.jpg", "anime_miku_CC_BY-NC.jpg", "photo_dogs.jpg", "noface_city.jpg",
           "photo_2008_001009.jpg", "anime_tone.png", "photo_Tom_Cruise_avp_2014_4.jpg"]


def normalized_dataset(tmp_path, resolution=32, fmt="png"):
    return normalize_files(tmp_path, [TESTDATA / name for name in SOURCES],
                           ids=[f"id{n:02d}" for n in range(len(SOURCES))],
                           resolution=resolution, fit="crop", format=fmt)


def run_export(tmp_path, norm, dedup=None, zip_=True, folder="export"):
    args = ["--name", "tiny", "--folder", str(tmp_path / folder), "--config",
            json.dumps({"zip": zip_})]
    if dedup:
        args += ["--dedup", str(dedup)]
    export.main(args + [str(norm)])
    return tmp_path / folder


def parse_like_nvidia(path):
    """How NVIDIA's training/dataset.py reads a level: FixedLenFeature shape[3] + raw bytes."""
    def parse(record):
        features = tf.io.parse_single_example(record, features={
            "shape": tf.io.FixedLenFeature([3], tf.int64),
            "data": tf.io.FixedLenFeature([], tf.string)})
        data = tf.io.decode_raw(features["data"], tf.uint8)
        return tf.reshape(data, features["shape"])
    return np.stack([x.numpy() for x in tf.data.TFRecordDataset(str(path)).map(parse)])


def independent_levels(img_chw):
    """Box-filter pyramid in float64 by reshape-mean (not the exporter's slicing code)."""
    levels, cur = [], img_chw.astype(np.float64)
    while cur.shape[1] >= 4:
        levels.append(np.clip(np.rint(cur), 0, 255).astype(np.uint8))
        c, h, w = cur.shape
        cur = cur.reshape(c, h // 2, 2, w // 2, 2).mean(axis=(2, 4))
    return levels


def test_tfrecords_match_nvidia_layout_and_pixels(tmp_path):
    norm = normalized_dataset(tmp_path)
    out = run_export(tmp_path, norm)
    files = sorted(glob.glob(str(out / "tfrecords" / "*.tfrecords")))
    assert [os.path.basename(f) for f in files] == [f"tiny-r{n:02d}.tfrecords" for n in (2, 3, 4, 5)]
    rows = sorted(read_manifest(norm), key=lambda r: r.id)
    order = np.arange(len(rows))
    np.random.RandomState(123).shuffle(order)  # dataset_tool.py's choose_shuffled_order
    expected = [independent_levels(np.asarray(Image.open(rows[i].path)).transpose(2, 0, 1))
                for i in order]
    for lvl, res in enumerate((32, 16, 8, 4)):
        got = parse_like_nvidia(out / "tfrecords" / f"tiny-r{int(np.log2(res)):02d}.tfrecords")
        assert got.shape == (len(rows), 3, res, res)
        want = np.stack([e[lvl] for e in expected])
        # float32 accumulation vs float64 may round an exact .5 differently: at most 1 level
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
        assert (got == want).mean() > 0.999
    # the exporter's own manifest says where each image went
    listed = read_manifest(out / "manifest.tsv")
    assert [r.id for r in listed] == [r.id for r in rows]
    for r in listed:
        assert order[r.details["tfrecord_position"]] == r.details["index"]


def test_zip_matches_stylegan2_ada_layout(tmp_path):
    norm = normalized_dataset(tmp_path)
    out = run_export(tmp_path, norm)
    rows = sorted(read_manifest(norm), key=lambda r: r.id)
    with zipfile.ZipFile(out / "tiny.zip") as zf:
        names = zf.namelist()
        assert names == [f"00000/img{i:08d}.png" for i in range(len(rows))] + ["dataset.json"]
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
        assert json.loads(zf.read("dataset.json")) == {"labels": None}
        for i, r in enumerate(rows):
            with zf.open(names[i]) as f:
                assert (np.asarray(Image.open(f)) == np.asarray(Image.open(r.path))).all()


def test_two_exports_are_byte_identical(tmp_path):
    norm = normalized_dataset(tmp_path, fmt="jpg")
    a, b = run_export(tmp_path, norm, folder="a"), run_export(tmp_path, norm, folder="b")
    for rel in ["tiny.zip", "manifest.tsv"] + [f"tfrecords/tiny-r{n:02d}.tfrecords" for n in (2, 3, 4, 5)]:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def test_dedup_drops_and_ranked_reexport(tmp_path):
    norm = normalized_dataset(tmp_path)
    rows = read_manifest(norm)
    dedup = tmp_path / "dedup.tsv"
    write_manifest(dedup, [r.drop("near_duplicate", details={"duplicate_of": rows[0].id})
                           if r.id == "id03" else r for r in rows])
    out = run_export(tmp_path, norm, dedup=dedup, zip_=False)
    listed = read_manifest(out / "manifest.tsv")
    assert "id03" not in {r.id for r in listed} and len(listed) == len(rows) - 1
    assert not (out / "tiny.zip").exists()

    scores = tmp_path / "scores.tsv"
    scores.write_text("id\tscore\tstd\tsource\tcrop_box\tpath\n" + "".join(
        f"{r.id}\t{float(i)}\t0.0\t{r.source}\t\t{r.path}\n" for i, r in enumerate(listed)))
    rejects = tmp_path / "rejects.txt"
    rejects.write_text(f"# from the review page\n{listed[3].id}\n{listed[5].source}\n")
    export.main(["--name", "tiny", "--folder", str(tmp_path / "ranked"), "--config", '{"zip": true}',
                 "--from-export", str(out / "manifest.tsv"), "--scores", str(scores),
                 "--rejects", str(rejects), "--drop-bottom-fraction", "0.2"])
    ranked = read_manifest(tmp_path / "ranked" / "manifest.tsv")
    reasons = {r.id: r.reason for r in ranked if not r.kept}
    # 6 images: floor(0.2 * 6) = 1 worst score dropped, plus the two rejects
    assert reasons == {listed[0].id: "bottom_fraction", listed[3].id: "rejected",
                       listed[5].id: "rejected"}
    kept_ids = [r.id for r in ranked if r.kept]
    assert len(parse_like_nvidia(tmp_path / "ranked" / "tfrecords" / "tiny-r05.tfrecords")) == len(kept_ids)
    with zipfile.ZipFile(tmp_path / "ranked" / "tiny.zip") as zf:
        assert len(zf.namelist()) == len(kept_ids) + 1


def test_export_refuses_mixed_sizes(tmp_path):
    a = tmp_path / "a.png"
    b = tmp_path / "b.png"
    Image.new("RGB", (32, 32)).save(a)
    Image.new("RGB", (16, 16)).save(b)
    write_manifest(tmp_path / "n.tsv", [Row(id="a", source="a", path=str(a), width=32, height=32),
                                        Row(id="b", source="b", path=str(b), width=16, height=16)])
    with pytest.raises(SystemExit, match="differ in size"):
        run_export(tmp_path, tmp_path / "n.tsv")


def test_integer_levels_are_byte_identical_to_dataset_tools_float_code():
    """lod_images (integer sums) against NVIDIA's float32 arithmetic, on real pictures at
    512 px and on the values where rounding could differ (all-255, 0/255 ties, 127/128)."""
    rng = np.random.default_rng(0)
    images = []
    for name in SOURCES[:3]:
        with Image.open(TESTDATA / name) as im:
            images.append(np.asarray(im.convert("RGB").resize((512, 512))).transpose(2, 0, 1))
    images += [np.full((3, 256, 256), 255, np.uint8),
               (rng.integers(0, 2, (3, 256, 256)) * 255).astype(np.uint8),
               rng.integers(127, 129, (3, 256, 256), dtype=np.uint8),
               rng.integers(0, 256, (3, 1024, 1024), dtype=np.uint8)]
    for img in images:
        fast, slow = list(export.lod_images(img)), list(export.lod_images_float(img))
        assert len(fast) == len(slow) == int(np.log2(img.shape[1])) - 1
        for a, b in zip(fast, slow):
            assert a.dtype == b.dtype == np.uint8 and a.tobytes() == b.tobytes()


def test_parallel_export_is_byte_identical_and_zip_holds_the_normalized_pngs(tmp_path):
    """--threads 2 (worker processes, as a user's CLI run) writes the same bytes as one
    process; with PNG normalize output the ZIP members are the normalized files' bytes."""
    import subprocess
    import sys
    norm = normalized_dataset(tmp_path)
    one = run_export(tmp_path, norm, folder="one")
    two = tmp_path / "two"
    subprocess.run([sys.executable, "-m", "pipeline.export", "--name", "tiny", "--folder", str(two),
                    "--config", json.dumps({"zip": True}), "--threads", "2", str(norm)],
                   check=True, cwd=export.__file__.rsplit("/pipeline/", 1)[0])
    for rel in ["tiny.zip", "manifest.tsv"] + [f"tfrecords/tiny-r{n:02d}.tfrecords" for n in (2, 3, 4, 5)]:
        assert (one / rel).read_bytes() == (two / rel).read_bytes(), rel
    rows = sorted(read_manifest(norm), key=lambda r: r.id)
    with zipfile.ZipFile(two / "tiny.zip") as zf:
        for i, r in enumerate(rows):
            assert zf.read(export.zip_name(i)) == open(r.path, "rb").read()


def test_streamed_dataset_manifest_is_byte_identical_to_the_row_path(tmp_path):
    """The workflow's export gather (manifest only, two passes over the lines, no rows held)
    writes exactly what building rows and ``listed_rows`` writes: on real normalize output,
    on a shard of odd rows (quoted and non-UTF-8 names, empty details, a keep row with a
    reason, details that already hold ``index``, a blank line, a last line without its
    newline) and minus dedup's drops."""
    norm = normalized_dataset(tmp_path)
    odd = tmp_path / "odd" / "manifest.tsv"
    write_manifest(odd, [
        Row(id="zz-plain", source="a.png", path="/x/a.png", width=32, height=32, details={"k": [1, 2]}),
        Row(id="aa-empty", source="b.png", path="/x/b.png", width=32, height=32),
        Row(id="id03", source="dup.png", path="/x/dup.png", width=32, height=32, details={"k": 1}),
        Row(id="mm-drop", source="c.png", path="/x/c.png", action="drop", reason="too_small"),
        Row(id="kk-index", source="d.png", path="/x/d.png", width=32, height=32,
            details={"index": 7, "z": "\u00e9"}),
    ])
    odd.write_bytes(odd.read_bytes() + b"\n" + b"bb-raw\tr\xe9\xff.png\t\t/x/r.png\t32\t32\tkeep\t\t{}\n")
    quoted = tmp_path / "quoted" / "manifest.tsv"  # a name with a quote and a newline: read as rows
    write_manifest(quoted, [Row(id="cc-q", source='we"ird\nname.png', path="/x/q.png", width=32,
                                height=32, details={"a": 1}),
                            Row(id="cc-r", source="r.png", path="/x/r.png", width=32, height=32,
                                reason="kept_with_a_reason", details={"a": 2})])
    tail = tmp_path / "tail" / "manifest.tsv"  # its last line without a newline
    write_manifest(tail, [Row(id="tt-dup", source="u.png", path="/x/u.png", width=32, height=32),
                          Row(id="tt-last", source="t.png", path="/x/t.png", width=32, height=32,
                              details={"t": 1})])
    tail.write_bytes(tail.read_bytes().rstrip(b"\n"))
    manifests = [norm, odd, quoted, tail]
    dropped = {"id03", "id05", "tt-dup"}
    rows = export.dataset_rows(iter_manifests(manifests), dropped)
    expected = tmp_path / "expected.tsv"
    write_manifest(expected, export.listed_rows(rows, export.record_positions(len(rows))))
    got = tmp_path / "got.tsv"
    assert export.write_dataset_manifest(manifests, dropped, got) == len(rows) == 12
    assert got.read_bytes() == expected.read_bytes()
    assert [r.details["index"] for r in read_manifest(got)] == list(range(len(rows)))

    # the CLI takes that path when only the manifest is asked for (the workflow's export rule)
    dedup = tmp_path / "dedup.tsv"
    write_manifest(dedup, [Row(id=i, source="s", action="drop", reason="near_duplicate") for i in dropped])
    export.main(["--name", "tiny", "--folder", str(tmp_path / "cli"), "--config",
                 json.dumps({"zip": False, "tfrecords": False}), "--dedup", str(dedup),
                 *map(str, manifests)])
    assert (tmp_path / "cli" / "manifest.tsv").read_bytes() == expected.read_bytes()
    assert not (tmp_path / "cli" / "tfrecords").exists()

    # nothing left: nothing written, the same stop as the row path
    with pytest.raises(SystemExit, match="no images left"):
        export.main(["--name", "tiny", "--folder", str(tmp_path / "none"), "--config",
                     json.dumps({"zip": False, "tfrecords": False}), str(dedup)])
    assert not (tmp_path / "none" / "manifest.tsv").exists()


def test_files_from_the_streamed_manifest_match_a_one_step_export(tmp_path):
    """The workflow's three steps (manifest-only gather, then --tfrecords-of and --zip-of,
    which hold only each row's path and size) write the bytes of a one-step export."""
    norm = normalized_dataset(tmp_path)
    one = run_export(tmp_path, norm, folder="one")
    export.main(["--name", "tiny", "--folder", str(tmp_path / "three"), "--config",
                 json.dumps({"zip": False, "tfrecords": False}), str(norm)])
    manifest = tmp_path / "three" / "manifest.tsv"
    for flag in ("--tfrecords-of", "--zip-of"):
        export.main(["--name", "tiny", "--folder", str(tmp_path / "three"), flag, str(manifest)])
    for rel in ["manifest.tsv", "tiny.zip"] + [f"tfrecords/tiny-r{n:02d}.tfrecords" for n in (2, 3, 4, 5)]:
        assert (one / rel).read_bytes() == (tmp_path / "three" / rel).read_bytes(), rel
