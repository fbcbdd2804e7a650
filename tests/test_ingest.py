import json
import os

from conftest import TESTDATA, copy_testdata, testdata_rows

from pipeline import ingest
from pipeline.manifest import read_manifest

CFG = {"extensions": ["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"],
       "max_pixels": 20_000_000, "metadata": None, "tags_include": [], "tags_exclude": [],
       "ratings": []}

# What every broken file in ../shared/testdata must give (MANIFEST.tsv notes)
EXPECTED_DROPS = {
    "broken/zero_bytes.jpg": "empty_file",
    "broken/text_named.jpg": "not_an_image",
    "broken/truncated.jpg": "truncated",
    "broken/huge_6000x4000.png": "decompression_bomb",  # 24 Mpx > the 20 Mpx limit set here
}


def run_ingest(tmp_path, raw, cfg=CFG, decisions=""):
    entries = ingest.list_raw_dir(raw)
    ingest.write_shard_listings(entries, tmp_path / "listing", ["0"])
    out = tmp_path / "ingest" / "manifest.tsv"
    ingest.main(["shard", "--listing", str(tmp_path / "listing" / "0.tsv"), "--raw-dir", str(raw),
                 "--metadata-decisions", decisions, "--output", str(out), "--config", json.dumps(cfg)])
    return {r.source: r for r in read_manifest(out)}


def test_every_testdata_file_is_kept_or_dropped_with_its_reason(tmp_path):
    rows = run_ingest(tmp_path, TESTDATA)
    listed = {r["file"] for r in testdata_rows()}
    assert listed <= set(rows)
    for name in listed:
        row = rows[name]
        if name in EXPECTED_DROPS:
            assert (row.action, row.reason) == ("drop", EXPECTED_DROPS[name]), name
        else:
            assert row.kept, (name, row.reason, row.details)
            assert row.width > 0 and row.height > 0
    # non-image files beside the images are dropped with a reason, not ignored
    assert rows["MANIFEST.tsv"].reason == "unsupported_extension"
    assert rows["dlib_testing_boxes.xml"].reason == "unsupported_extension"
    # hostile names survive the TSV round trip
    assert rows["broken/<img src=x onerror=alert(1)>.png"].kept
    assert rows["broken/unicode name ü 顔 $(touch x).jpg"].kept


def test_worker_processes_write_the_same_manifest(tmp_path):
    """--threads N checks files in N processes (libjpeg's warnings are caught per process):
    the manifest is byte-identical to one process's, broken files included."""
    raw = tmp_path / "raw"
    for copy in ("a", "b", "c"):  # > 64 files, so the pool is used
        copy_testdata(raw / copy)
    entries = ingest.list_raw_dir(raw)
    assert len(entries) > 64
    ingest.write_shard_listings(entries, tmp_path / "listing", ["0"])
    outputs = []
    for threads in ("1", "2"):
        out = tmp_path / threads / "manifest.tsv"
        ingest.main(["shard", "--listing", str(tmp_path / "listing" / "0.tsv"), "--raw-dir", str(raw),
                     "--metadata-decisions", "", "--output", str(out), "--config", json.dumps(CFG),
                     "--threads", threads])
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]
    rows = {r.source: r for r in read_manifest(tmp_path / "2" / "manifest.tsv")}
    assert all(rows[f"{c}/{name}"].reason == reason for c in "abc" for name, reason in EXPECTED_DROPS.items())


def test_ids_and_shards_are_stable_and_spread():
    assert ingest.source_id("a/b.jpg") == ingest.source_id("a/b.jpg")
    assert ingest.source_id("a/b.jpg") != ingest.source_id("a/c.jpg")
    counts = [0] * 8
    for i in range(4000):
        counts[ingest.shard_of(f"img_{i}.png", 8)] += 1
    assert min(counts) > 400  # ~500 each: a hash, not a modulo of the name


def test_listing_rewritten_only_for_changed_shards(tmp_path):
    raw = tmp_path / "raw"
    copy_testdata(raw, {"anime_miku_noisy.jpg", "photo_dogs.jpg", "noface_city.jpg"})
    shards = ["0", "1", "2", "3"]
    first = ingest.write_shard_listings(ingest.list_raw_dir(raw), tmp_path / "l", shards)
    assert first == shards  # all new
    mtimes = {s: os.stat(tmp_path / "l" / f"{s}.tsv").st_mtime_ns for s in shards}
    assert ingest.write_shard_listings(ingest.list_raw_dir(raw), tmp_path / "l", shards) == []
    (raw / "new.jpg").write_bytes((TESTDATA / "anime_miku_small_noisy.jpg").read_bytes())
    changed = ingest.write_shard_listings(ingest.list_raw_dir(raw), tmp_path / "l", shards)
    assert changed == [shards[ingest.shard_of("new.jpg", 4)]]
    for s in set(shards) - set(changed):
        assert os.stat(tmp_path / "l" / f"{s}.tsv").st_mtime_ns == mtimes[s]


def test_metadata_filter_by_tags_and_rating(tmp_path):
    raw = tmp_path / "raw"
    copy_testdata(raw, {"anime_miku_noisy.jpg", "anime_miku_small.png", "anime_tone.png",
                        "noface_city.jpg"})
    # Danbooru dumps name files by id or md5; both tag styles appear in the wild
    posts = [
        {"id": 1, "md5": "anime_miku_noisy", "rating": "s", "tag_string": "hatsune_miku solo"},
        {"id": "anime_miku_small", "rating": "e", "tag_string": "hatsune_miku solo"},
        {"id": 3, "md5": "anime_tone", "rating": "g", "tags": [{"name": "hatsune_miku"},
                                                             {"name": "monochrome"}]},
    ]
    jsonl = tmp_path / "posts.jsonl"
    jsonl.write_text("\n".join(json.dumps(p) for p in posts) + "\nnot json\n")
    cfg = {**CFG, "tags_include": ["hatsune_miku"], "tags_exclude": ["monochrome"],
           "ratings": ["general", "s"]}
    decisions = tmp_path / "decisions.tsv"
    ingest.main(["metadata", "--metadata", str(jsonl), "--output", str(decisions),
                 "--config", json.dumps(cfg)])
    rows = run_ingest(tmp_path, raw, cfg, str(decisions))
    assert rows["anime_miku_noisy.jpg"].kept
    assert rows["anime_miku_small.png"].reason == "rating"
    assert rows["anime_tone.png"].reason == "tag_excluded"
    assert rows["anime_tone.png"].details["excluded_tags"] == ["monochrome"]
    assert rows["noface_city.jpg"].reason == "no_metadata"


def test_listing_fast_paths_write_what_json_dumps_wrote(tmp_path):
    """format_listing quotes plain names itself and shard_of hashes bytes (1M files a parse,
    issue 17 item 4): the same text and shards as json.dumps and the hex source id."""
    from pipeline.ingest import format_listing, list_raw_dir, shard_of, source_id
    names = ["a.png", 'q"uote.png', "back\\slash.png", "tab\there.png", "new\nline.png",
             "sep\u2028.png", "del\x7f.png", "caf\u00e9/\U0001f600.png", "bad\udcff.png", "ctl\x01.png"]
    entries = [(n, k, 10**18 + k, "" if k % 3 else "hidden_folder") for k, n in enumerate(names)]
    old = "".join(f"{json.dumps(e[0], ensure_ascii=False)}\t{e[1]}\t{e[2]}"
                  + (f"\t{e[3]}" if len(e) > 3 and e[3] else "") + "\n" for e in entries)
    assert format_listing(entries) == old
    assert format_listing([e[:3] for e in entries]) == "".join(
        f"{json.dumps(e[0], ensure_ascii=False)}\t{e[1]}\t{e[2]}\n" for e in entries)
    for n in names:
        assert all(shard_of(n, k) == int(source_id(n), 16) % k for k in (1, 7, 64))
    # listing through an open folder (stat by name) gives the sizes and times os.stat gives
    (tmp_path / "sub").mkdir()
    for i, n in enumerate(["x.png", "sub/y.png"]):
        (tmp_path / n).write_bytes(b"\0" * i)
    listed = list_raw_dir(tmp_path)
    assert listed == [(n, os.stat(tmp_path / n).st_size, os.stat(tmp_path / n).st_mtime_ns, "")
                      for n in ["sub/y.png", "x.png"]]


def test_stored_decode_checks_give_the_same_manifest_and_are_used(tmp_path):
    """Every testdata file (the broken ones too) checked once into the store: a second
    ingest with the store writes the same manifest bytes as one without it, and takes each
    check from the store (a record changed by hand shows up in the row: it was not decoded
    again). Other settings (max_pixels) are another store: checked afresh."""
    from pipeline.imaging import file_digest
    entries = ingest.list_raw_dir(TESTDATA)
    ingest.write_shard_listings(entries, tmp_path / "listing", ["0"])
    store_dir = tmp_path / "checks"

    def ingest_to(name, cfg=CFG, checks=str(store_dir)):
        out = tmp_path / name / "manifest.tsv"
        ingest.main(["shard", "--listing", str(tmp_path / "listing" / "0.tsv"), "--raw-dir",
                     str(TESTDATA), "--output", str(out), "--config", json.dumps(cfg),
                     "--checks", checks, "--threads", "2"])
        return out

    plain = ingest_to("plain", checks="").read_bytes()
    assert ingest_to("first").read_bytes() == plain
    assert ingest_to("again").read_bytes() == plain
    (settings_dir,) = store_dir.iterdir()
    assert len(list(settings_dir.glob("*/*.json"))) >= len(EXPECTED_DROPS) + 10

    # the truncated file's stored check, edited: the next ingest reports the edit
    digest = file_digest((TESTDATA / "broken/truncated.jpg").read_bytes())
    record_path = settings_dir / digest[:2] / f"{digest}.json"
    record = json.loads(record_path.read_text())
    assert record["reason"] == "truncated"
    record_path.write_text(json.dumps({**record, "reason": "corrupt_data"}))
    rows = {r.source: r for r in read_manifest(ingest_to("edited"))}
    assert rows["broken/truncated.jpg"].reason == "corrupt_data"
    # another max_pixels: its own store, the real check again
    rows = {r.source: r for r in read_manifest(ingest_to("other", {**CFG, "max_pixels": 30_000_000}))}
    assert rows["broken/truncated.jpg"].reason == "truncated"
    assert rows["broken/huge_6000x4000.png"].kept
