"""clean stage: size floors, monochrome, hashes (per shard) and exact/near dedup (gather),
on the real images of ../shared/testdata and real snakemake runs."""
from __future__ import annotations

import copy
import io
import itertools
import json
import math
import re

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import REPO, TESTDATA, copy_testdata, run_snakemake, scheduled_jobs, testdata_rows
from dedup_reference import dedup, hex_to_words, near_duplicate_clusters
from pipeline.clean import (CROP_TRIMS, NO_STORE, CleanStore, clean_row, clean_shard, jpeg_quality,
                            shard_sources, source_sizes, trim_windows, unique_colors)
from pipeline.hamming import hamming, near_pairs, pairs_between
from pipeline.ingest import ingest_file, shard_of, source_id
from pipeline.manifest import Row, read_manifest, write_manifest

DEFAULTS = yaml.safe_load((REPO / "config.yaml").read_text())
CLEAN = DEFAULTS["clean"]
GRAY = {r["file"] for r in testdata_rows() if r["grayscale"] == "yes"}
NOISY = "anime_miku_noisy.jpg"
# other encodings of anime_miku_noisy.jpg (MANIFEST.tsv): near duplicates of it
NOISY_VARIANTS = ["broken/neardup_of_anime_miku_noisy.jpg", "broken/cmyk.jpg",
                  "broken/exif_orient6.jpg", "broken/palette.gif", "broken/lab_colorspace.tif"]


def clean_cfg(**near):
    cfg = copy.deepcopy(CLEAN)
    cfg["near_duplicates"].update(near)
    return cfg


@pytest.fixture(scope="module")
def ingested() -> list[Row]:
    """Real ingest rows (decode check, file sizes) for every testdata file."""
    return [ingest_file(r["file"], str(TESTDATA), DEFAULTS["ingest"], None) for r in testdata_rows()]


def clean_all(ingested, cfg) -> dict[str, Row]:
    sizes = source_sizes(ingested)
    return {r.source: clean_row(r, cfg, sizes) for r in ingested if r.kept}


@pytest.fixture(scope="module")
def cleaned(ingested) -> dict[str, Row]:
    return clean_all(ingested, CLEAN)


# ---------------------------------------------------------------- per image

def test_grayscale_sepia_and_tone_are_monochrome(cleaned):
    for name in GRAY:  # gray JPEG, sepia JPEG, 16-bit gray PNG, manga screentone
        assert cleaned[name].reason == "monochrome", name
        assert cleaned[name].details["colorful_fraction"] < CLEAN["monochrome"]["min_colorful_fraction"]
    assert cleaned["broken/sepia_of_anime_miku_noisy.jpg"].details["monochrome_by"] == ["chroma"]


def test_colour_images_are_kept(cleaned):
    # the flat single-colour 6000x4000 canvas is dropped
    colour = [n for n in cleaned if n not in GRAY and n != "broken/huge_6000x4000.png"]
    assert len(colour) >= 20
    for name in colour:
        assert cleaned[name].kept, (name, cleaned[name].reason, cleaned[name].details)
    # the flat single-colour canvas: no information at all (checked before monochrome)
    assert cleaned["broken/huge_6000x4000.png"].reason == "low_information"


def test_colour_count_test_is_the_seeds(ingested):
    """`identify %k` < 257: catches clean grays, misses nothing colourful except palettes."""
    by_colors = clean_all([r for r in ingested if r.source in
                           ("broken/gray16.png", "broken/palette.gif", NOISY)],
                          {**CLEAN, "monochrome": {**CLEAN["monochrome"], "method": "colors"}})
    assert by_colors["broken/gray16.png"].reason == "monochrome"
    assert by_colors[NOISY].kept and by_colors[NOISY].details["unique_colors"] > 256
    # the seed's weakness: a colour palette GIF has <= 256 colours; chroma keeps it
    assert by_colors["broken/palette.gif"].details["unique_colors"] <= 256
    assert by_colors["broken/palette.gif"].reason == "monochrome"


def test_gray_jpeg_with_chroma_noise_is_monochrome(tmp_path):
    """A gray picture saved as a colour JPEG with chroma noise: > 256 colours (the seed's
    test misses it), yet no hue departs from the gray tint."""
    gray = np.asarray(Image.open(TESTDATA / "broken/gray_of_anime_miku_noisy.jpg").convert("RGB"),
                      dtype=np.int16)
    noise = np.random.default_rng(0).integers(-3, 4, size=gray.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(gray + noise, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    path = tmp_path / "noisy_gray.jpg"
    path.write_bytes(buf.getvalue())
    row = clean_row(Row(id="x", source="noisy_gray.jpg", path=str(path)),
                    {**CLEAN, "monochrome": {**CLEAN["monochrome"], "method": "both"}})
    assert unique_colors(Image.open(path).convert("RGB")) > 256
    assert row.reason == "monochrome"
    assert row.details["monochrome_by"] == ["chroma"]


def test_size_floors(ingested):
    small = next(r for r in ingested if r.source == "anime_miku_small.png")  # 228 x 159
    sizes = source_sizes(ingested)
    assert clean_row(small, {**CLEAN, "min_side": 159}, sizes).kept
    too_small = clean_row(small, {**CLEAN, "min_side": 160}, sizes)
    assert too_small.reason == "too_small"
    assert too_small.details["side"] == 159 and too_small.details["min_side"] == 160

    size = (TESTDATA / "anime_miku_small.png").stat().st_size
    # a face row from crop carries no size: it comes from the ingest manifest via parent_id
    face = Row(id=f"{small.id}-f0", source=small.source, parent_id=small.id, path=small.path,
               width=228, height=159)
    dropped = clean_row(face, {**CLEAN, "min_file_bytes": size + 1}, sizes)
    assert dropped.reason == "file_too_small" and dropped.details["file_bytes"] == size
    kept = clean_row(face, {**CLEAN, "min_file_bytes": size}, sizes)
    assert kept.kept and kept.details["file_bytes"] == size


def test_kept_rows_point_at_upstream_pixels_and_carry_hashes(cleaned, ingested):
    by_source = {r.source: r for r in ingested}
    row = cleaned[NOISY]
    assert row.path == by_source[NOISY].path  # no pixels rewritten
    assert len(row.details["phash"]) == 16 and len(row.details["pixel_sha256"]) == 64
    # flips auto (called directly: on, as finetune.mirror's default): the mirror's hash too
    assert len(row.details["phash_mirror"]) == 16
    # and the hashes of the trimmed windows, concatenated (the whole picture left out)
    assert len(row.details["phash_trims"]) == 16 * (len(trim_windows((100, 100), CROP_TRIMS)) - 1) == 16 * 24
    assert "source" not in row.details  # no source measures given
    # the same decoded pixels give the same digest whatever the file
    assert (cleaned["broken/dup_exact_of_anime_miku_noisy.jpg"].details["pixel_sha256"]
            == row.details["pixel_sha256"])
    assert cleaned["broken/alpha.png"].details["pixel_sha256"] == \
        cleaned["anime_miku_small.png"].details["pixel_sha256"]
    assert cleaned["broken/cmyk.jpg"].details["pixel_sha256"] != row.details["pixel_sha256"]


def test_unreadable_image_is_dropped_not_raised():
    row = Row(id="t", source="broken/truncated.jpg", path=str(TESTDATA / "broken/truncated.jpg"))
    out = clean_row(row, CLEAN)
    assert out.reason == "decode_error" and "truncated" in out.details["error"]


# ---------------------------------------------------------------- dedup on real images

def verdicts(rows: list[Row]) -> dict[str, tuple[str, str | None]]:
    source_of = {r.id: r.source for r in rows}
    return {r.source: (r.reason or "keep", source_of.get(r.details.get("duplicate_of")))
            for r in rows}


@pytest.fixture(scope="module")
def shard_cleaned(ingested) -> list[Row]:
    """The testdata through clean's shard step as the rule runs it (source measures too)."""
    return clean_shard(ingested, CLEAN, source_sizes(ingested), 2, shard_sources(ingested, ingested, CLEAN, 2))


def test_source_measures(shard_cleaned):
    by_source = {r.source: r for r in shard_cleaned}
    noisy = by_source[NOISY].details["source"]
    assert (noisy["width"], noisy["height"], noisy["format"]) == (400, 279, "JPEG")
    assert noisy["quality"] == jpeg_quality(Image.open(TESTDATA / NOISY)) and 1 <= noisy["quality"] < 100
    assert by_source["broken/lab_colorspace.tif"].details["source"]["quality"] == 100  # lossless
    assert by_source["broken/palette.gif"].details["source"]["quality"] is None  # unknown
    # quality estimates of JPEGs we save ourselves, at known settings
    buf = io.BytesIO()
    for q in (50, 60, 75, 90, 95):
        buf.seek(0)
        buf.truncate()
        Image.open(TESTDATA / NOISY).save(buf, "JPEG", quality=q)
        assert abs(jpeg_quality(Image.open(buf)) - q) <= 1, q


def test_dedup_testdata(shard_cleaned):
    kept = [r for r in shard_cleaned if r.kept]
    out = dedup(kept, CLEAN)
    assert len(out) == len(kept)
    v = verdicts(out)
    # same pixels: the best source keeps them; the PNG copy of a JPEG is least compressed
    assert v["photo_2008_001009.jpg"] == ("exact_duplicate", "broken/<img src=x onerror=alert(1)>.png")
    assert v["anime_miku_small.png"] == ("exact_duplicate", "broken/alpha.png")
    # every other encoding of the noisy miku (resized, CMYK, palette, LAB, EXIF-rotated,
    # mirrored) is the same source picture: the lossless full-size copy is kept
    best = "broken/lab_colorspace.tif"
    for name in [NOISY, "broken/dup_exact_of_anime_miku_noisy.jpg", *NOISY_VARIANTS,
                 "broken/flip_of_anime_miku_noisy.jpg"]:
        if name != best:
            assert v[name][1] == best and v[name][0] in ("exact_duplicate", "source_duplicate"), name
    assert v["anime_miku_small_noisy.jpg"] == ("source_duplicate", "broken/alpha.png")
    assert v["broken/unicode name ü 顔 $(touch x).jpg"] == \
        ("source_duplicate", "broken/<img src=x onerror=alert(1)>.png")
    rows = {r.source: r for r in out}
    assert rows["broken/flip_of_anime_miku_noisy.jpg"].details["mirrored"] is True  # flips auto
    # no chaining: every drop is within the radius of the very image kept
    radius = CLEAN["near_duplicates"]["radius"]
    assert all(0 <= r.details["distance"] <= radius for r in out if not r.kept)
    assert all(r.details["duplicate_source"] == next(k.parent_id or k.id for k in out
                                                     if k.id == r.details["duplicate_of"])
               for r in out if r.reason == "source_duplicate")
    # everything else is a distinct picture
    assert sum(not r.kept for r in out) == 11
    assert {s for s, (reason, _) in v.items() if reason == "keep"} == {
        "anime_miku_CC_BY-NC.jpg", "noface_city.jpg", "photo_dogs.jpg", "broken/alpha.png", best,
        "broken/<img src=x onerror=alert(1)>.png", *[n for n in v if n.startswith("photo_2")
                                                      and n != "photo_2008_001009.jpg"],
        "photo_Tom_Cruise_avp_2014_4.jpg"}


def test_dedup_without_flips_keeps_the_mirrored_copy(ingested):
    cfg = clean_cfg(flips=False)
    names = [NOISY, "broken/flip_of_anime_miku_noisy.jpg", "anime_miku_CC_BY-NC.jpg"]
    rows = [r for r in ingested if r.source in names]
    cleaned = clean_shard(rows, cfg, source_sizes(rows), 1, shard_sources(rows, rows, cfg))
    assert "phash_mirror" not in cleaned[0].details and "phash_mirror" not in cleaned[0].details["source"]
    assert all(r.kept for r in dedup(cleaned, cfg))


def test_crop_level_flips_match_the_mirrored_copy(ingested):
    """Without source measures (crop level only) the mirrored crop still matches."""
    cleaned = clean_all(ingested, clean_cfg(flips=True))
    assert len(cleaned[NOISY].details["phash_mirror"]) == 16
    out = {r.source: r for r in dedup([r for r in cleaned.values() if r.kept], clean_cfg(flips=True))}
    flip = out["broken/flip_of_anime_miku_noisy.jpg"]
    assert flip.reason == "near_duplicate"
    assert flip.details["mirrored"] is True and flip.details["distance"] <= 4
    assert out["anime_miku_CC_BY-NC.jpg"].kept


@pytest.mark.parametrize("method", ["dhash", "whash"])
def test_other_hashes_find_the_same_re_encodings(ingested, method):
    names = [NOISY, "broken/neardup_of_anime_miku_noisy.jpg", "anime_miku_small.png",
             "anime_miku_small_noisy.jpg", "anime_miku_CC_BY-NC.jpg", "photo_dogs.jpg"]
    cleaned = clean_all([r for r in ingested if r.source in names], clean_cfg(method=method))
    assert method in cleaned[NOISY].details and "phash" not in cleaned[NOISY].details
    v = verdicts(dedup(list(cleaned.values()), clean_cfg(method=method)))
    assert v["broken/neardup_of_anime_miku_noisy.jpg"] == ("near_duplicate", NOISY)
    assert v["anime_miku_small_noisy.jpg"] == ("near_duplicate", "anime_miku_small.png")
    assert {s for s, (reason, _) in v.items() if reason == "keep"} == \
        {NOISY, "anime_miku_small.png", "anime_miku_CC_BY-NC.jpg", "photo_dogs.jpg"}


def test_256_bit_hashes(ingested):
    names = [NOISY, "broken/neardup_of_anime_miku_noisy.jpg", "anime_miku_CC_BY-NC.jpg"]
    cfg = clean_cfg(hash_size=16, radius=16)
    cleaned = clean_all([r for r in ingested if r.source in names], cfg)
    assert len(cleaned[NOISY].details["phash"]) == 64
    v = verdicts(dedup(list(cleaned.values()), cfg))
    assert v["broken/neardup_of_anime_miku_noisy.jpg"] == ("near_duplicate", NOISY)
    assert v["anime_miku_CC_BY-NC.jpg"] == ("keep", None)


# ---------------------------------------------------------------- dedup rules and search

def hashed_row(id_, phash, width=100, height=100, file_bytes=1000, digest=None):
    return Row(id=id_, source=f"{id_}.png", path=f"{id_}.png", width=width, height=height,
               details={"phash": phash, "pixel_sha256": digest or f"sha-{id_}",
                        "file_bytes": file_bytes})


def test_no_chaining_and_the_best_source_is_kept():
    # a-b and b-c within radius 4, a-c at 8: c (most pixels, then the larger file) keeps b;
    # a is not within the radius of c and stays (single linkage would have dropped it)
    a, b, c = "0000000000000000", "000000000000000f", "00000000000000ff"
    rows = [hashed_row("a", a, file_bytes=5000), hashed_row("b", b, 200, 200),
            hashed_row("c", c, 200, 200, file_bytes=2000), hashed_row("d", "ffffffffffffffff")]
    out = {r.id: r for r in dedup(rows, CLEAN)}
    assert out["c"].kept and out["a"].kept and out["d"].kept
    assert out["b"].details == {**rows[1].details, "duplicate_of": "c", "distance": 4}
    # ties on size and file: the smallest id stays, whatever the input order
    twins = [hashed_row("z", a), hashed_row("y", b)]
    for order in (twins, twins[::-1]):
        assert [r.id for r in dedup(order, CLEAN) if r.kept] == ["y"]
    # the source decides before the crop: a bigger crop from a smaller or more compressed
    # source (a rescaled, quality-60 repost whose face came out larger) is dropped
    def from_source(id_, crop_side, width, quality):
        row = hashed_row(id_, a, crop_side, crop_side)
        return row.keep(details={"source": {"width": width, "height": width, "quality": quality}})
    for rows, keeper in (([from_source("orig", 100, 1000, 95), from_source("big", 120, 800, 95)], "orig"),
                         ([from_source("q60", 120, 1000, 60), from_source("q95", 100, 1000, 95)], "q95")):
        assert [r.id for r in dedup(rows, CLEAN) if r.kept] == [keeper]


def test_exact_duplicates_switch():
    rows = [hashed_row("a", "0000000000000000", digest="same"),
            hashed_row("b", "ffffffffffffffff", digest="same")]  # (impossible, but isolates the test)
    assert [r.reason for r in dedup(rows, CLEAN)] == ["", "exact_duplicate"]
    cfg = {**CLEAN, "exact_duplicates": False}
    assert [r.reason for r in dedup(rows, cfg)] == ["", ""]
    cfg = {**CLEAN, "near_duplicates": {**CLEAN["near_duplicates"], "method": "none"}}
    assert [r.reason for r in dedup(rows[:1] + [hashed_row("c", "0000000000000001")], cfg)] == ["", ""]


def random_clustered_hashes(n: int, nbits: int, radius: int, seed: int) -> np.ndarray:
    """n hashes around n/10 centres, each 0..radius+2 random bits away from its centre."""
    rng = np.random.default_rng(seed)
    words = max(1, nbits // 64)
    centres = rng.integers(0, np.iinfo(np.uint64).max, size=(n // 10, words), dtype=np.uint64,
                           endpoint=True)
    out = centres[rng.integers(0, len(centres), n)].copy()
    for row in out:
        for bit in rng.choice(nbits, size=rng.integers(0, radius + 3), replace=False):
            row[bit // 64] ^= np.uint64(1) << np.uint64(63 - bit % 64)
    return out


@pytest.mark.parametrize("nbits,radius", [(64, 0), (64, 4), (64, 9), (256, 0), (256, 16)])
def test_near_pairs_equals_brute_force(nbits, radius):
    words = random_clustered_hashes(1500, nbits, radius, seed=radius)
    i, j, d = near_pairs(words, nbits, radius)
    ii, jj = np.triu_indices(len(words), 1)
    dist = hamming(words[ii], words[jj])
    expected = set(zip(ii[dist <= radius].tolist(), jj[dist <= radius].tolist()))
    assert len(expected) > 100
    assert set(zip(i.tolist(), j.tolist())) == expected
    assert len(i) == len(expected)  # each pair once
    assert (d == hamming(words[i], words[j])).all()


@pytest.mark.parametrize("nbits,radius,design", [(64, 4, None), (64, 1, None), (256, 16, None),
                                                (64, 4, (9, 3)), (64, 4, (7, 2)), (128, 6, (9, 2))])
def test_pairs_between_equals_brute_force(nbits, radius, design, monkeypatch):
    """Both table lookups (direct for short keys, sorted for long ones) and queries in
    chunks find exactly the pairs within the radius; so do tables keyed by a covering
    (``design``: blocks, blocks a key; fewer, longer keys, as a million rows' windows get),
    on one-word and two-word hashes."""
    from pipeline import hamming as hm
    if design:
        blocks, key_blocks = design
        tables = hm.covering(blocks, blocks - radius, key_blocks)
        monkeypatch.setattr(hm, "choose_tables", lambda *args: (blocks, tables))
    words = random_clustered_hashes(1800, nbits, radius, seed=7 if design is None else design[0])
    queries, index = words[:1200], words[1200:]
    qq, ii = (x.ravel() for x in np.meshgrid(np.arange(len(queries)), np.arange(len(index)), indexing="ij"))
    dist = hamming(queries[qq], index[ii])
    expected = set(zip(qq[dist <= radius].tolist(), ii[dist <= radius].tolist()))
    assert len(expected) > 100
    for chunk in (1 << 21, 250):
        q, i, d = pairs_between(queries, index, nbits, radius, chunk=chunk)
        assert set(zip(q.tolist(), i.tolist())) == expected and len(q) == len(expected)
        assert (d == hamming(queries[q], index[i])).all()


@pytest.mark.parametrize("blocks,exact,key_blocks", [(9, 5, 3), (7, 3, 2), (8, 4, 3), (10, 6, 4), (6, 2, 2)])
def test_a_covering_holds_a_key_in_every_set_of_agreeing_blocks(blocks, exact, key_blocks):
    """Every set of ``exact`` blocks (those a pair within the radius agrees on) holds some
    table's key, so the tables miss no pair; fewer tables than the sets themselves."""
    from pipeline.hamming import covering
    keys = covering(blocks, exact, key_blocks)
    assert all(len(key) == key_blocks and len(set(key)) == key_blocks for key in keys)
    assert all(any(set(key) <= set(agree) for key in keys)
               for agree in itertools.combinations(range(blocks), exact))
    if key_blocks < exact:
        assert len(keys) < math.comb(blocks, exact)
    assert covering(9, 5, 3) and len(covering(9, 5, 3)) == 12  # the 1M-row search's tables


def test_many_queries_get_covering_tables():
    """With a million rows' windows (49M queries, 2M whole and mirror hashes) the search
    takes the 12 tables of 3 of 9 blocks, not the 15 of 2 of 6; small searches keep few
    tables of short keys."""
    from pipeline.hamming import choose_tables
    blocks, tables = choose_tables(49_000_000, 2_000_000, 64, 4)
    assert (blocks, len(tables), len(tables[0])) == (9, 12, 3)
    blocks, tables = choose_tables(1000, 1000, 64, 4)
    assert (blocks, len(tables)) == (5, 5)


def test_matched_faces_equals_the_face_by_face_rule():
    """Source-level pairs become face pairs by place: the array matcher gives what a loop
    over every face of both sources gives (mirrors, several faces, unknown sizes, ties)."""
    from pipeline.dedup import FACE_MATCH_OFFSET, FACE_MATCH_SIZE, matched_faces
    rng = np.random.default_rng(3)
    sizes = rng.choice([1, 1, 1, 2, 3, 5], 60)
    starts = np.cumsum(sizes) - sizes
    n = int(sizes.sum())
    x, y = rng.choice([0.1, 0.2, 0.25, 0.3, 0.9], n), rng.choice([0.1, 0.15, 0.5], n)
    size = rng.choice([0.05, 0.07, 0.075, 0.1, 0.2], n)
    known = rng.random(n) > 0.1
    sa, sb = rng.integers(0, 60, 400), rng.integers(0, 60, 400)
    mirrored = rng.random(400) < 0.3
    expected = []
    for p, (s, t) in enumerate(zip(sa, sb)):
        for k in range(starts[t], starts[t] + sizes[t]):
            kx = 1.0 - x[k] if mirrored[p] else x[k]
            best = None
            for j in range(starts[s], starts[s] + sizes[s]):
                if not (known[k] and known[j] and 1 / FACE_MATCH_SIZE <= size[k] / size[j] <= FACE_MATCH_SIZE):
                    continue
                offset = max(abs(kx - x[j]), abs(y[k] - y[j]))
                if offset <= FACE_MATCH_OFFSET and (best is None or offset < best[0]):
                    best = (offset, j)
            if best is not None:
                expected.append((k, best[1], p))
    assert len(expected) > 100
    assert list(zip(*(a.tolist() for a in matched_faces(sa, sb, mirrored, starts, sizes, x, y, size, known)))) == expected


def test_packed_lexsort_is_numpys_lexsort():
    """closest_per_pair's sort: one stable sort of packed keys gives np.lexsort's order
    (ties keep their input order), and keys that cannot be packed go to np.lexsort."""
    from pipeline.hamming import _lexsort
    rng = np.random.default_rng(5)
    n = 5000
    small = (rng.random(n) < 0.3, rng.integers(0, 5, n), rng.integers(0, 40, n), rng.integers(0, 40, n))
    big = (rng.integers(0, 5, n), rng.integers(0, 1 << 40, n), rng.integers(0, 1 << 30, n))
    negative = (rng.integers(-3, 3, n), rng.integers(0, 9, n))
    for keys in (small, big, negative, (np.zeros(0, np.int64),) * 2):
        assert np.array_equal(_lexsort(keys), np.lexsort(keys))


def test_closest_per_pair_sorting_packed_values_equals_sorting_by_order():
    """Without other columns closest_per_pair sorts the packed keys themselves; the links it
    keeps, and their types, are those of the order-and-gather path (an extra column forces
    that), for many links per pair, ties, and keys that cannot be packed."""
    from pipeline.hamming import closest_per_pair
    rng = np.random.default_rng(9)
    n = 20000
    cases = [(rng.integers(0, 60, n), rng.integers(0, 60, n), rng.integers(0, 5, n), rng.random(n) < 0.5),
             (rng.integers(0, 1 << 40, n), rng.integers(0, 1 << 40, n), rng.integers(0, 5, n), rng.random(n) < 0.5),
             (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, bool))]
    for lo, hi, d, mirrored in cases:
        fast = closest_per_pair(lo, hi, d, mirrored)
        general = closest_per_pair(lo, hi, d, mirrored, np.zeros(len(lo)))[:4]
        assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(fast, general))
    assert len(closest_per_pair(*cases[0])[0]) == len(set(zip(cases[0][0].tolist(), cases[0][1].tolist())))


def test_duplicate_pairs_equals_brute_force_however_often_it_merges():
    """Owner pairs at their closest (any window of one against the other's picture or its
    mirror; unmirrored first on ties), the same when the links are merged every few hundred."""
    from pipeline.hamming import HashSet, duplicate_pairs
    nbits, radius, n = 64, 4, 300
    words = random_clustered_hashes(n * 5, nbits, radius, seed=11)
    whole, mirror, trims = words[:n], words[n:2 * n], words[2 * n:]
    owner = np.arange(n)
    owner[::37] = -1  # not in the running
    sets = {"": HashSet(whole, np.arange(1, n + 1), owner), "_mirror": HashSet(mirror, np.arange(1, n + 1), owner),
            "_trims": HashSet(trims, 3 * np.arange(1, n + 1), owner)}
    best = {}
    for x in range(n):
        for q in [whole[x]] + [trims[3 * x + t] for t in range(3)]:
            for index, mirrored in ((whole, False), (mirror, True)):
                dist = hamming(np.broadcast_to(q, index.shape), index)
                for y in np.flatnonzero(dist <= radius).tolist():
                    if x != y and owner[x] >= 0 and owner[y] >= 0:
                        key = (min(x, y), max(x, y))
                        best[key] = min(best.get(key, (99, True)), (int(dist[y]), mirrored))
    expected = [(a, b, d, m) for (a, b), (d, m) in sorted(best.items())]
    assert len(expected) > 100
    for merge_every in (1 << 22, 200):
        got = duplicate_pairs(sets, nbits, radius, True, merge_every=merge_every)
        assert [x.dtype for x in got] == [np.int64, np.int64, np.int64, np.bool_]
        assert list(zip(*(x.tolist() for x in got))) == expected


def test_pairs_between_big_buckets():
    """Many equal hashes (big scrapes' copies) share buckets past the layered verification:
    the rest are expanded in small batches and still found exactly once."""
    rng = np.random.default_rng(3)
    index = random_clustered_hashes(700, 64, 4, seed=5)
    index[:60] = index[0]  # 60 equal entries: buckets of 60+
    index[100:400] = index[100]  # and 300: more than a byte counts
    queries = np.concatenate([index[:5] ^ np.uint64(3), random_clustered_hashes(300, 64, 4, seed=6)])
    queries[rng.integers(5, len(queries), 20)] = index[0]
    queries[rng.integers(5, len(queries), 5)] = index[100] ^ np.uint64(1 << 40)
    qq, ii = (x.ravel() for x in np.meshgrid(np.arange(len(queries)), np.arange(len(index)), indexing="ij"))
    dist = hamming(queries[qq], index[ii])
    expected = set(zip(qq[dist <= 4].tolist(), ii[dist <= 4].tolist()))
    assert len(expected) >= 20 * 60 + 300
    for max_pairs in (7, 4_000_000):
        q, i, d = pairs_between(queries, index, 64, 4, max_pairs=max_pairs)
        assert set(zip(q.tolist(), i.tolist())) == expected and len(q) == len(expected)
        assert (d == hamming(queries[q], index[i])).all()


def test_clusters_match_union_of_brute_force_pairs():
    words = random_clustered_hashes(600, 64, 4, seed=1)
    mirrored = random_clustered_hashes(600, 64, 4, seed=2)
    labels = near_duplicate_clusters(words, 64, 4, mirrored)
    parent = list(range(600))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x
    def all_distances(x, y):  # brute force, every pair
        return np.bitwise_count(x[:, None, 0] ^ y[None, :, 0]).astype(int)
    close = np.minimum.reduce([all_distances(words, words), all_distances(words, mirrored),
                               all_distances(mirrored, words), all_distances(mirrored, mirrored)])
    for a, b in zip(*np.nonzero(close <= 4)):
        parent[find(int(a))] = find(int(b))
    roots = [find(k) for k in range(600)]
    assert len(set(roots)) < 500  # the data does cluster
    for a, b in itertools.combinations(range(600), 2):
        assert (labels[a] == labels[b]) == (roots[a] == roots[b])


def test_hex_to_words_round_trip():
    hexes = ["8000000000000001", "00000000000000ff"]
    words = hex_to_words(hexes, 64)
    assert words.dtype == np.uint64 and words.shape == (2, 1)
    assert [f"{int(w):016x}" for w in words[:, 0]] == hexes
    long = "f" * 16 + "0" * 47 + "1"
    assert hex_to_words([long], 256).tolist() == [[2**64 - 1, 0, 0, 1]]


# ---------------------------------------------------------------- the workflow

TARGET = "results/tiny/clean/dedup.tsv"
RAW = [NOISY, "broken/dup_exact_of_anime_miku_noisy.jpg", "broken/neardup_of_anime_miku_noisy.jpg",
       "broken/flip_of_anime_miku_noisy.jpg", "broken/sepia_of_anime_miku_noisy.jpg",
       "broken/gray_of_anime_miku_noisy.jpg", "anime_miku_small.png", "anime_miku_small_noisy.jpg",
       "photo_2008_001009.jpg"]


def funnel(rows: list[Row]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.reason or "keep"] = counts.get(r.reason or "keep", 0) + 1
    return counts


def test_workflow_funnel_and_local_reruns(workdir):
    copy_testdata(workdir / "raw", RAW)
    run_snakemake(workdir, TARGET)
    shards = [read_manifest(workdir / f"results/tiny/clean/{s}/manifest.tsv") for s in "01"]
    clean_rows = [r for rows in shards for r in rows]
    assert funnel(clean_rows) == {"keep": 7, "monochrome": 2}
    for r in clean_rows:  # crop.method none: the source file itself, never rewritten
        assert r.path == str(workdir / "raw" / r.source)
    assert sorted(p.name for p in (workdir / "results/tiny/clean/0").iterdir()) == ["manifest.hashes",
                                                                                  "manifest.tsv"]
    assert "phash" not in (workdir / "results/tiny/clean/0/manifest.tsv").read_text()  # binary, beside

    rows = read_manifest(workdir / TARGET)
    # flips follow finetune.mirror (on): the mirrored copy is the same source picture, and
    # the best one (same size as the original, JPEG quality 92 against 29): it is kept
    flip = "broken/flip_of_anime_miku_noisy.jpg"
    assert funnel(rows) == {"keep": 3, "source_duplicate": 4}
    v = verdicts(rows)
    for name in (NOISY, RAW[1], "broken/neardup_of_anime_miku_noisy.jpg"):
        assert v[name] == ("source_duplicate", flip), name
    assert v["anime_miku_small_noisy.jpg"] == ("source_duplicate", "anime_miku_small.png")
    assert v[flip] == ("keep", None)
    assert next(r for r in rows if r.source == NOISY).details["mirrored"] is True

    assert scheduled_jobs(workdir, TARGET) == {}
    # a new image reruns only its shard's per-image jobs plus the gather
    new = "photo_2008_002079.jpg"
    copy_testdata(workdir / "raw", [new])
    assert scheduled_jobs(workdir, TARGET) == {"ingest": 1, "crop": 1, "clean": 1, "dedup": 1}
    untouched = workdir / f"results/tiny/clean/{1 - shard_of(new, 2)}/manifest.tsv"
    before = untouched.stat().st_mtime_ns
    run_snakemake(workdir, TARGET)
    assert untouched.stat().st_mtime_ns == before
    rows = read_manifest(workdir / TARGET)
    assert funnel(rows) == {"keep": 4, "source_duplicate": 4}

    # training without mirroring: flips (auto) go off, every shard is re-hashed (params
    # changed) but ingest and crop stay; the mirrored copy is a picture of its own again
    no_mirror = {"finetune": {"mirror": False}}
    assert scheduled_jobs(workdir, TARGET, no_mirror) == {"clean": 2, "dedup": 1}
    run_snakemake(workdir, TARGET, overrides=no_mirror)
    rows = read_manifest(workdir / TARGET)
    assert funnel(rows) == {"keep": 5, "exact_duplicate": 1, "source_duplicate": 2}
    v = verdicts(rows)
    exact_keeper, exact_dup = sorted([NOISY, RAW[1]], key=source_id)
    assert v[flip] == ("keep", None)
    assert v[exact_dup] == ("exact_duplicate", exact_keeper)
    assert v["broken/neardup_of_anime_miku_noisy.jpg"] == ("source_duplicate", exact_keeper)
    # an explicit flips setting wins over finetune.mirror
    assert scheduled_jobs(workdir, TARGET, {**no_mirror, "clean": {"near_duplicates": {"flips": False}}}) == {}


# ---------------------------------------------------------------- quality floors

def test_quality_floors_drop_degraded_faces_with_a_reason(tmp_path):
    """Degraded copies of a real face: blurred, darkened, washed out, flattened. The
    defaults were chosen from the testdata faces (bench/RESULTS.md), which all pass."""
    from PIL import ImageEnhance, ImageFilter
    face = Image.open(TESTDATA / NOISY).convert("RGB").crop((90, 45, 270, 225))
    made = {"sharp": face, "blurry": face.filter(ImageFilter.GaussianBlur(4)),
            "too_dark": ImageEnhance.Brightness(face).enhance(0.12),
            "too_bright": ImageEnhance.Brightness(face).enhance(3.0),
            "low_information": ImageEnhance.Contrast(face).enhance(0.05)}
    rows = []
    for name, im in made.items():
        im.save(tmp_path / f"{name}.png")
        rows.append(Row(id=name, source=f"{name}.png", path=str(tmp_path / f"{name}.png")))
    out = {r.id: r for r in clean_shard(rows, CLEAN)}
    assert out["sharp"].kept
    for name in made:
        if name != "sharp":
            assert out[name].reason == name, (name, out[name].reason, out[name].details)
        assert {"sharpness", "brightness", "contrast"} <= set(out[name].details)
    # a null threshold switches its filter off
    off = {**CLEAN, "quality": {**CLEAN["quality"], "min_sharpness": None}}
    assert clean_row(rows[1], off).kept


def test_quality_defaults_keep_every_testdata_image(cleaned):
    measured = [r for r in cleaned.values() if "sharpness" in r.details]
    assert len(measured) >= 20
    assert [r.source for r in cleaned.values()
            if r.reason in ("blurry", "too_dark", "too_bright", "low_information")] == \
        ["broken/huge_6000x4000.png"]  # the flat canvas, the only picture without content


def test_sharpness_is_scipy_laplace_variance(cleaned):
    """The sharpness measure (OpenCV's Laplacian, no scipy import per process) equals the
    variance of scipy.ndimage.laplace on the same measuring copy, so thresholds chosen
    with either hold."""
    from scipy.ndimage import laplace

    from pipeline.clean import quality_measures
    from pipeline.imaging import load_rgb
    checked = 0
    for row in cleaned.values():
        if "sharpness" not in row.details:
            continue
        im, _ = load_rgb(row.path)
        im.thumbnail((256, 256))
        luma = np.asarray(im.convert("L"), dtype=np.float32)
        assert quality_measures(im)["sharpness"] == round(float(laplace(luma).var()), 2), row.source
        checked += 1
    assert checked >= 20


# ---------------------------------------------------------------- reposts

def test_reposts_are_found_however_they_were_cut(tmp_path):
    """A small version of bench/bench_reposts.py: copies of a photo and an anime picture
    (rescaled + quality 60, cut 6% on two sides, mirrored, watermarked) go to the original
    (a lossless master); the two overlapping halves of the photo are distinct pictures."""
    from PIL import ImageDraw
    rows = []

    def add(name, im, quality=None):
        path = tmp_path / name
        im.save(path, **({"quality": quality} if quality else {}))
        rows.append(ingest_file(name, str(tmp_path), DEFAULTS["ingest"], None))
    for stem in ("photo_2008_002079", "anime_miku_CC_BY-NC"):
        im = Image.open(TESTDATA / f"{stem}.jpg").convert("RGB")
        w, h = im.size
        add(f"{stem}.png", im)
        add(f"{stem}_small_q60.jpg", im.resize((w * 3 // 5, h * 3 // 5), Image.Resampling.LANCZOS), 60)
        add(f"{stem}_shift.jpg", im.crop((round(w * 0.06), 0, w, h - round(h * 0.06))), 90)
        add(f"{stem}_mirror.jpg", im.transpose(Image.Transpose.FLIP_LEFT_RIGHT), 85)
        marked = im.copy()
        ImageDraw.Draw(marked).text((10, h - 30), "@reposter", fill=(255, 255, 255))
        add(f"{stem}_watermark.jpg", marked, 90)
    photo = Image.open(TESTDATA / "photo_2008_002079.jpg").convert("RGB")
    add("left.png", photo.crop((0, 0, 275, photo.height)))
    add("right.png", photo.crop((photo.width - 275, 0, photo.width, photo.height)))
    cfg = clean_cfg(flips=True)
    cleaned = clean_shard(rows, cfg, source_sizes(rows), 2, shard_sources(rows, rows, cfg, 2))
    v = verdicts(dedup(cleaned, cfg))
    for stem in ("photo_2008_002079", "anime_miku_CC_BY-NC"):
        assert v[f"{stem}.png"] == ("keep", None)
        for copy_ in ("small_q60", "shift", "mirror", "watermark"):
            assert v[f"{stem}_{copy_}.jpg"] == ("source_duplicate", f"{stem}.png"), copy_
    assert v["left.png"] == v["right.png"] == ("keep", None)


def test_trims_switch(ingested):
    row = next(r for r in ingested if r.source == NOISY)
    cfg = clean_cfg(trims=False)
    out = clean_shard([row], cfg, source_sizes([row]), 1, shard_sources([row], [row], cfg))[0]
    assert "phash" in out.details and "phash_trims" not in out.details
    assert "phash" in out.details["source"] and "phash_trims" not in out.details["source"]


def test_crop_level_matching_tolerates_redetected_boxes(tmp_path):
    """Faces re-detected in re-encoded, resized, rotated-by-EXIF, mirrored copies get boxes
    a few pixels apart; with source matching off, the trimmed windows still link more of
    them than the whole-crop hash alone (measured 9 vs 7 of 12 dropped)."""
    from pipeline import crop
    names = [NOISY, "anime_miku_small.png", "anime_miku_small_noisy.jpg", "anime_miku_CC_BY-NC.jpg",
             "broken/dup_exact_of_anime_miku_noisy.jpg", "broken/flip_of_anime_miku_noisy.jpg",
             *NOISY_VARIANTS, "broken/alpha.png"]
    rows = [ingest_file(n, str(TESTDATA), DEFAULTS["ingest"], None) for n in names]
    crop_cfg = {**DEFAULTS["crop"], "method": "animeface", "min_face": 48}
    out = tmp_path / "crop"
    with crop.ShardDir(out) as shard:
        faces = crop.crop_shard(rows, crop_cfg, {}, shard, 2)
        shard.write_manifest(faces)
    faces = read_manifest(out / "manifest.tsv")
    dropped = {}
    for trims in (False, True):
        cfg = clean_cfg(trims=trims, sources=False, flips=True)
        cfg["exact_duplicates"] = False
        result = dedup(clean_shard(faces, cfg, source_sizes(rows), 2), cfg)
        assert all(r.details["distance"] <= cfg["near_duplicates"]["radius"] for r in result if not r.kept)
        dropped[trims] = {r.source for r in result if not r.kept}
    assert len(dropped[True]) >= len(dropped[False]) + 2
    assert "broken/neardup_of_anime_miku_noisy.jpg" in dropped[True]


def test_streamed_dedup_gather_writes_what_the_row_path_wrote(shard_cleaned, tmp_path):
    """The dedup CLI (two passes over the manifest lines, columns instead of rows: issue 17
    item 4) writes the bytes the row path writes (every row read and its details parsed,
    as dedup always did): on the real testdata's clean rows split over two shards (one
    with a blank line, one without its last newline: copied in runs of lines), plus a
    shard with a quoted name after a plain line, which is read as rows."""
    from pipeline.dedup import dedup_manifests, main, read_dedup_columns
    from pipeline.manifest import read_manifests
    survives = {r.id: r.kept for r in dedup([r for r in shard_cleaned if r.kept], CLEAN)}
    last = next(r for r in reversed(shard_cleaned[1::2]) if survives.get(r.id))
    paths = []
    for s in range(2):
        paths.append(tmp_path / f"{s}.tsv")
        write_manifest(paths[-1], shard_cleaned[s::2] if s == 0 else
                       [r for r in shard_cleaned[1::2] if r is not last] + [last])
    head, *lines = paths[0].read_bytes().splitlines(keepends=True)
    paths[0].write_bytes(b"".join([head, *lines[:2], b"\n", *lines[2:]]))
    paths[1].write_bytes(paths[1].read_bytes().removesuffix(b"\n"))
    twin = next(r for r in shard_cleaned if r.kept and r.source == NOISY)
    paths.append(tmp_path / "quoted.tsv")
    write_manifest(paths[-1], [twin.keep(id="zz-plain"), twin.keep(id="zz-quoted", source='we"ird\nname.jpg'),
                               twin.drop("too_small", id="zz-dropped")])
    known = [spans is not None for spans in read_dedup_columns(list(map(str, paths)), CLEAN["near_duplicates"]).lines]
    assert known == [True, True, False]
    rows = read_manifests(paths)
    for r in rows:
        r.details  # noqa: B018 (parsed, as the row path always had them)
    expected = tmp_path / "expected.tsv"
    write_manifest(expected, dedup(rows, CLEAN))
    counts = dedup_manifests([str(p) for p in paths], CLEAN, str(tmp_path / "got.tsv"))
    assert (tmp_path / "got.tsv").read_bytes() == expected.read_bytes()
    assert {"exact_duplicate", "source_duplicate", "keep"} <= set(counts)
    assert sum(counts.values()) == sum(r.kept for r in rows)
    assert next(r for r in read_manifest(expected) if r.id == last.id).kept  # copied, newline added
    assert verdicts(read_manifest(expected))["we\"ird\nname.jpg"][0].endswith("_duplicate")
    main(["--output", str(tmp_path / "cli.tsv"), "--config", json.dumps(CLEAN), *map(str, paths)])
    assert (tmp_path / "cli.tsv").read_bytes() == expected.read_bytes()


def without_hashes(details: dict) -> dict:
    out = {k: v for k, v in details.items() if not k.startswith("phash")}
    if "source" in out:
        out["source"] = without_hashes(out["source"])
    return out


def test_hashes_leave_the_details_for_a_binary_file(shard_cleaned, tmp_path):
    """Issue 24 item 4: clean writes each shard's perceptual hashes to a binary file beside
    its manifest (no hex in the details); the gather reads them from there and decides as
    the row path does with the hashes in the details, writing the same rows without them."""
    from pipeline.clean import hashes_path, read_hashes, split_hashes, write_hashes
    from pipeline.dedup import dedup_manifests
    near = CLEAN["near_duplicates"]
    paths = []
    for s in range(2):
        rows, arrays = split_hashes(shard_cleaned[s::2], near)
        paths.append(tmp_path / str(s) / "manifest.tsv")
        paths[-1].parent.mkdir()
        write_hashes(hashes_path(paths[-1]), arrays, near)
        write_manifest(paths[-1], rows)
        text = paths[-1].read_text()
        assert "phash" not in text and "pixel_sha256" in text and "sharpness" in text
        header, back = read_hashes(hashes_path(paths[-1]))
        kept = [r for r in shard_cleaned[s::2] if r.kept]
        assert header["nbits"] == 64 and back == arrays
        words = lambda hexes: [int(h[i:i + 16], 16) for h in hexes for i in range(0, len(h), 16)]  # noqa: E731
        assert np.frombuffer(back["face_trims"], "<u8").tolist() == words(r.details["phash_trims"] for r in kept)
        assert np.frombuffer(back["source"], "<u8").tolist() == \
            words(r.details["source"]["phash"] for r in kept if "source" in r.details)
        assert np.frombuffer(back["face_trims.count"], "<i4").tolist() == [24] * len(kept)
        assert hashes_path(paths[-1]).endswith("/manifest.hashes")
    expected = [Row(r.id, r.source, r.parent_id, r.path, r.width, r.height, r.action, r.reason,
                    without_hashes(r.details)) for r in dedup([r for s in range(2) for r in shard_cleaned[s::2] if r.kept], CLEAN)]
    write_manifest(tmp_path / "expected.tsv", expected)
    counts = dedup_manifests([str(p) for p in paths], CLEAN, str(tmp_path / "got.tsv"))
    assert (tmp_path / "got.tsv").read_bytes() == (tmp_path / "expected.tsv").read_bytes()
    assert {"exact_duplicate", "source_duplicate", "keep"} <= set(counts)
    # a hashes file that does not fit its manifest stops the gather
    write_hashes(hashes_path(paths[0]), split_hashes([r for r in shard_cleaned if r.kept][:1], near)[1], near)
    with pytest.raises(ValueError, match="rerun clean"):
        dedup_manifests([str(p) for p in paths], CLEAN, str(tmp_path / "bad.tsv"))


def test_editing_the_search_reruns_only_the_gather(tmp_path):
    """pipeline/hamming.py and pipeline/dedup.py are inputs of the dedup gather only: an
    edit there reruns dedup, never the per-image clean jobs (a copy of the workflow is
    edited, so the checkout's files stay as they are)."""
    import shutil
    import subprocess
    import sys

    from conftest import write_config
    flow = tmp_path / "flow"
    flow.mkdir()
    for name in ("Snakefile", "config.yaml", "environment.yml"):
        shutil.copy(REPO / name, flow / name)
    packages = [p.parent.name for p in REPO.glob("*/__init__.py") if p.parent.name != "tests"]
    for folder in ("rules", "schemas", "profiles", *packages):
        shutil.copytree(REPO / folder, flow / folder, ignore=shutil.ignore_patterns("__pycache__"))
    work = tmp_path / "work"
    copy_testdata(work / "raw", RAW[:3])
    cfg = write_config(work)

    def snakemake(*args):
        proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(flow / "Snakefile"),
                               "--directory", str(work), "--configfile", str(cfg), "--cores", "2",
                               TARGET, *args], cwd=work, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
        out = proc.stdout + proc.stderr
        return {m.group(1) for m in re.finditer(r"^(\w+)\s+\d+$", out.split("Job stats:", 1)[-1], re.M)
                if "Job stats:" in out} - {"total"}
    snakemake()
    assert snakemake("-n") == set()
    for module, rules in (("hamming", {"dedup"}), ("dedup", {"dedup"}), ("clean", {"clean", "dedup"})):
        with open(flow / "pipeline" / f"{module}.py", "a") as f:
            f.write("\n# edited\n")
        assert snakemake("-n") == rules, module
        snakemake()


def test_a_drop_filter_is_a_function_its_declaration_and_a_schema_key(ingested, monkeypatch):
    """docs/DEVELOPING.md "Adding a drop filter", step by step, with a toy filter (mostly
    red faces): the console summary, the stop line's hint, the page's note and the rule's
    param pick it up from the declaration alone."""
    from pipeline import clean, console, report, survivors
    from pipeline.manifest import Drop

    # 1. the function: measures into details, returns its reason or ""
    def red_filter(im, small, details, cfg):
        rgb = np.asarray(small, dtype=np.int16)
        details["red_fraction"] = round(float(np.mean((rgb[..., 0] > rgb[..., 1] + 40)
                                                      & (rgb[..., 0] > rgb[..., 2] + 40))), 4)
        limit = cfg.get("max_red_fraction")
        if limit is None or details["red_fraction"] <= limit:
            return ""
        details["max_red_fraction"] = limit
        return "too_red"
    monkeypatch.setattr(clean, "FILTERS", [*clean.FILTERS, red_filter])
    # 2. its declaration
    monkeypatch.setitem(clean.DROPS, "too_red", Drop(
        "too_red", "mostly red (clean.max_red_fraction)", ("red_fraction", "max_red_fraction"),
        note=("red_fraction",), hint="raise clean.max_red_fraction (now {max_red_fraction})"))
    # 3. the schema: the key is unknown until declared there, then it is a param of clean
    schema = yaml.safe_load((REPO / "schemas" / "config.schema.yaml").read_text())
    config = copy.deepcopy(DEFAULTS)
    config["clean"]["max_red_fraction"] = 0.0
    assert "max_red_fraction" in console.config_error(config, schema)
    schema["properties"]["clean"]["properties"]["max_red_fraction"] = {"type": ["number", "null"],
                                                                       "default": None}
    assert console.config_error(config, schema) is None
    assert clean.config_keys(config)["max_red_fraction"] == 0.0

    cfg = clean.config_keys(config)
    rows = [clean_row(r, cfg) for r in ingested if r.kept and r.source in (NOISY, "photo_dogs.jpg")]
    assert [r.reason for r in rows] == ["too_red", "too_red"]
    assert all(r.details["red_fraction"] > 0 for r in rows)
    assert console.stage_summary("clean", rows) == "clean: 0 kept, 2 dropped (too_red 2)"
    assert survivors.why_nothing_left({"ingest": ingested, "crop": ingested, "clean": rows}) == (
        "clean kept 0 of 2 faces (too_red 2): raise clean.max_red_fraction (now 0.0)")
    assert report.drop_note(rows[0], "clean") == f"red_fraction {rows[0].details['red_fraction']}"
    # off (null, the schema default): the faces are kept and only measured
    assert all(clean_row(r, {**cfg, "max_red_fraction": None}).kept
               for r in ingested if r.source in (NOISY, "photo_dogs.jpg"))


def manifest_bytes(rows, folder) -> bytes:
    write_manifest(folder / "manifest.tsv", rows)
    return (folder / "manifest.tsv").read_bytes()


def test_stored_measures_give_the_rows_a_fresh_measure_gives(ingested, tmp_path):
    """CleanStore: a shard measured with an empty store, then served from it, writes the
    bytes a shard measured without a store writes; a settings change (a quality floor) or
    changed file content is measured again, never served stale."""
    cfg = clean_cfg(sources=True)
    sizes = source_sizes(ingested)
    rows = [r for r in ingested if r.kept]

    def run(store, cfg=cfg):
        sources = shard_sources(rows, ingested, cfg, 2, store)
        return clean_shard(rows, cfg, sizes, 2, sources, store)
    fresh = manifest_bytes(run(NO_STORE), tmp_path / "fresh")
    store = CleanStore(str(tmp_path / "store"), cfg)
    assert manifest_bytes(run(store), tmp_path / "fill") == fresh
    measured = store.counts["faces", "measured"]  # two files of the same bytes: one measured
    assert len(rows) - 2 <= measured + store.counts["faces", "stored"] <= len(rows) and measured > 10
    store = CleanStore(str(tmp_path / "store"), cfg)
    assert manifest_bytes(run(store), tmp_path / "served") == fresh
    assert store.counts["faces", "measured"] == 0 and store.counts["faces", "stored"] >= measured
    assert store.counts["sources", "stored"] > 0 and store.counts["sources", "measured"] == 0
    # a floor that drops faces: the faces' records are not this setting's
    strict = copy.deepcopy(cfg)
    strict["quality"]["min_sharpness"] = 400.0
    store = CleanStore(str(tmp_path / "store"), strict)
    strict_rows = run(store, strict)
    assert store.counts["faces", "measured"] == measured and any(r.reason == "blurry" for r in strict_rows)
    assert store.counts["sources", "stored"] > 0  # sources depend on near_duplicates only
    assert manifest_bytes(strict_rows, tmp_path / "strict") == manifest_bytes(
        run(NO_STORE, strict), tmp_path / "strict_fresh")
    # other bytes at the same path: measured again
    changed = tmp_path / "changed.png"
    Image.new("RGB", (300, 300), (200, 30, 30)).save(changed)
    store = CleanStore(str(tmp_path / "store"), cfg)
    row = Row(id="x", source="changed.png", path=str(changed), width=300, height=300)
    first = clean_row(row, cfg, store=store)
    Image.new("RGB", (300, 300), (30, 200, 30)).save(changed)
    second = clean_row(row, cfg, store=store)
    assert store.counts["faces", "measured"] == 2 and first.details != second.details


def test_a_margin_edit_serves_clean_from_stored_source_measures(tmp_path):
    """The rule: after a crop.margin edit clean reruns on every shard with new faces but
    the same source pictures: every source's measures come from the store (0 measured),
    and the clean manifests equal a fresh run's with that margin."""
    names = ["anime_miku_noisy.jpg", "anime_miku_CC_BY-NC.jpg", "photo_dogs.jpg", "noface_city.jpg"]
    first_cfg = {"crop": {"method": "animeface", "min_face": 48}}
    edited = {"crop": {"method": "animeface", "min_face": 48, "margin": 0.6}}
    targets = [f"results/tiny/clean/{s}/manifest.tsv" for s in ("0", "1")]
    first, fresh = tmp_path / "first", tmp_path / "fresh"
    for workdir in (first, fresh):
        copy_testdata(workdir / "raw", names)
    run_snakemake(first, *targets, overrides=first_cfg)
    run_snakemake(first, *targets, overrides=edited)
    logs = "".join((first / f"results/tiny/logs/clean/{s}.log").read_text() for s in ("0", "1"))
    counts = re.findall(r"sources (\d+) stored, (\d+) measured", logs)
    assert counts and all(m == "0" for _, m in counts) and sum(int(s) for s, _ in counts) > 0
    run_snakemake(fresh, *targets, overrides=edited)
    for t in targets:
        assert (first / t).read_text().replace(str(first), "W") == (fresh / t).read_text().replace(str(fresh), "W")
        hashes = t.replace(".tsv", ".hashes")  # the perceptual hashes' binary file
        assert (first / hashes).read_bytes() == (fresh / hashes).read_bytes()
    assert any(r.kept for t in targets for r in read_manifest(first / t))


def test_items_that_may_share_a_digest_hold_every_exact_duplicate():
    """dedup's exact duplicates look at the items whose digests' first 8 bytes are shared
    (one sort): the verdicts are those of every digest in a dict, with digests that share
    only their first 8 bytes, and with text digests (all items then)."""
    from pipeline.dedup import _may_share_a_digest
    rng = np.random.default_rng(7)
    digests = [rng.bytes(32) for _ in range(3000)]
    for k in range(0, 3000, 17):  # copies
        digests[k] = digests[rng.integers(3000)]
    for k in range(5, 3000, 31):  # the same first 8 bytes, another digest
        digests[k] = digests[k - 1][:8] + rng.bytes(24)
    priority = rng.permutation(3000)

    def keepers(items):
        best, out = {}, {}
        for k in items.tolist():
            keeper = best.setdefault(digests[k] or k, k)
            if keeper != k:
                out[k] = keeper
        return out
    some = _may_share_a_digest(digests, priority)
    assert 0 < len(some) < 600 and keepers(some) == keepers(priority) and len(keepers(priority)) > 100
    assert np.array_equal(some, priority[np.isin(priority, some)])  # in priority order
    digests[3] = "not hex"
    assert _may_share_a_digest(digests, priority) is priority


def test_keeper_priority_is_best_copy_first_then_id_then_input_order():
    """``DedupColumns.priority``: by the four measures (larger first), then id, then input
    order; only runs equal on every measure are sorted by id. Measures with many ties, NaN
    (ties NaN, after the numbers), -0.0 beside 0.0, and repeated ids."""
    from array import array

    from pipeline.dedup import DedupColumns
    rng = np.random.default_rng(3)
    n = 4000
    cols = DedupColumns("phash", 64)
    cols.ids = [f"{rng.integers(40):02d}-f{rng.integers(2)}" for _ in range(n)]
    values = [rng.integers(0, 3, n).astype(np.float64) for _ in range(4)]
    values[1][rng.random(n) < 0.2] = math.nan
    values[2][values[2] == 0] = np.where(rng.random(int((values[2] == 0).sum())) < 0.5, 0.0, -0.0)
    cols.keys = [array("d", v.tobytes()) for v in values]

    def rank(v):  # larger first, NaN last (as lexsort puts -NaN), -0.0 equal to 0.0
        return (1, 0.0) if math.isnan(v) else (0, -v)
    expected = sorted(range(n), key=lambda i: (*(rank(v[i]) for v in values), cols.ids[i], i))
    got = cols.priority()
    assert got.dtype == np.int64 and got.tolist() == expected
    assert len(set(cols.ids)) < 100  # the ids decided many runs


@pytest.mark.parametrize("kind", ["source ids", "upper case", "a space", "other lengths", "other texts", "none"])
def test_sorted_groups_orders_as_sorting_the_texts(kind):
    """``dedup.sorted_groups``: the order and runs of sorting the strings themselves,
    whether they are source ids (sorted as numbers) or not."""
    from pipeline.dedup import sorted_groups
    rng = np.random.default_rng(11)
    texts = [source_id(f"raw/{k}.jpg") for k in rng.integers(0, 300, 1000)] if kind != "none" else []
    if kind == "upper case":
        texts[5] = texts[5].upper().replace("0", "A")
    elif kind == "a space":
        texts[7] = texts[7][:8] + " " + texts[7][9:]
    elif kind == "other lengths":
        texts[3], texts[4] = texts[3] + "0", texts[4][:-1]
    elif kind == "other texts":
        texts = [f"img-{k}" for k in rng.integers(0, 300, 1000)]
    order, starts = sorted_groups(texts)
    expected = sorted(range(len(texts)), key=texts.__getitem__)
    assert order.tolist() == expected
    assert starts.tolist() == [g for g in range(len(texts))
                               if not g or texts[expected[g]] != texts[expected[g - 1]]]
    assert order.dtype == starts.dtype == np.int64
