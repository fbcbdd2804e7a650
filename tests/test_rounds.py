"""Cleaning rounds' drops (pipeline/rounds.py): the bottom fraction, rank.drop_below's score
threshold, their union and which of the two each drop is recorded under, the refusal of a
threshold that would leave nothing, rounds.tsv's words for each. The whole loop through
snakemake is in tests/test_training_runs.py."""
from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO

from pipeline.manifest import Row, write_manifest
from pipeline.rank import Score, format_scores
from pipeline.rounds import BELOW, BOTTOM, REJECTED, dropped_by, format_table, next_round_rows

SCORES = {"a": -3.0, "b": -1.0, "c": 0.5, "d": 1.0, "e": 2.0, "f": 4.0}


def round_set() -> list[Row]:
    """A round's set: six kept images and one the rejects file dropped before."""
    return [Row(id=i, source=f"{i}.png") for i in SCORES] + [Row(id="r", source="r.png").drop(REJECTED)]


def verdicts(rows: list[Row]) -> dict[str, str]:
    return {r.id: r.reason for r in rows if not r.kept}


def test_unset_threshold_drops_exactly_the_bottom_fraction():
    rows = next_round_rows(round_set(), SCORES, 0.34, 1)
    assert verdicts(rows) == {"a": BOTTOM, "b": BOTTOM, "r": REJECTED}  # floor(0.34 x 6) = 2
    assert rows == next_round_rows(round_set(), SCORES, 0.34, 1, None)
    assert [r.details for r in rows if r.reason == BOTTOM] == [{"round": 1, "score": -3.0}, {"round": 1, "score": -1.0}]


def test_threshold_and_fraction_drop_their_union_each_under_its_own_reason():
    # the threshold reaches further than the fraction: everything below it is the threshold's
    rows = next_round_rows(round_set(), SCORES, 1 / 6, 2, threshold=1.0)
    assert verdicts(rows) == {"a": BELOW, "b": BELOW, "c": BELOW, "r": REJECTED}
    assert [r.details for r in rows if r.id == "c"] == [{"round": 2, "score": 0.5, "threshold": 1.0}]
    # the fraction reaches further: what is above the threshold is the fraction's alone
    rows = next_round_rows(round_set(), SCORES, 0.5, 1, threshold=-2.0)
    assert verdicts(rows) == {"a": BELOW, "b": BOTTOM, "c": BOTTOM, "r": REJECTED}
    # no fraction: the threshold alone; a score equal to it stays
    assert verdicts(next_round_rows(round_set(), SCORES, 0.0, 1, threshold=1.0)) == \
        {"a": BELOW, "b": BELOW, "c": BELOW, "r": REJECTED}
    # an image rank did not score is never below the threshold
    partial = {k: v for k, v in SCORES.items() if k != "a"}
    assert "a" not in verdicts(next_round_rows(round_set(), partial, 0.0, 1, threshold=0.0))


def test_rounds_table_says_which_round_and_why():
    curated = round_set()
    after1 = next_round_rows(curated, SCORES, 1 / 6, 1, threshold=-2.0)    # a: in both, the threshold's
    after2 = next_round_rows(after1, SCORES, 1 / 5, 2, threshold=0.0)      # b: in both, the threshold's
    dropped = dropped_by([curated, after1, after2])
    assert dropped == {"r": "rejected", "a": "round 1 below_threshold", "b": "round 2 below_threshold"}
    after2 = next_round_rows(after1, SCORES, 0.4, 2, threshold=0.0)        # b below it, c the fraction's alone
    assert dropped_by([curated, after1, after2])["c"] == "round 2"
    table = format_table(sorted(SCORES), dropped_by([curated, after1, after2]), [SCORES, SCORES])
    assert table.splitlines()[:4] == ["id\tdropped\tscore:round-1\tscore:round-2",
                                      "a\tround 1 below_threshold\t-3.000000\t-3.000000",
                                      "b\tround 2 below_threshold\t-1.000000\t-1.000000",
                                      "c\tround 2\t0.500000\t0.500000"]


def test_a_threshold_that_would_drop_everything_stops_with_one_line(tmp_path):
    """Through the CLI the rules run: the job ends with one `faceprep:` line naming the
    setting, the round and its score range, and writes nothing."""
    previous = tmp_path / "curated" / "manifest.tsv"
    write_manifest(previous, round_set())
    scores = tmp_path / "scores.tsv"
    scores.write_text(format_scores([Score(i, s, 0.0, f"{i}.png", None, "") for i, s in sorted(SCORES.items(), key=lambda x: x[1])]))
    out = tmp_path / "rounds" / "round-2"
    cmd = [sys.executable, "-m", "pipeline.rounds", "next", "--previous", str(previous), "--scores", str(scores),
           "--round", "1", "--drop-bottom-fraction", "0.1", "--folder", str(out), "--name", "t"]
    proc = subprocess.run(cmd + ["--drop-below", "4.5"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("faceprep: rank.drop_below 4.5 would drop all 6 images round 1 trained on "
                           "(its network scored them -3 to 4, median 1;"), last
    assert "to at most 4 or to null" in last and not out.exists()
    # at the best image's score the best image stays: accepted (nothing written here: no images)
    assert verdicts(next_round_rows(round_set(), SCORES, 0.1, 1, threshold=4.0)) == \
        {"a": BELOW, "b": BELOW, "c": BELOW, "d": BELOW, "e": BELOW, "r": REJECTED}
    # the fraction alone is not the threshold's to refuse
    assert len(verdicts(next_round_rows(round_set(), SCORES, 1.0, 1))) == 7


@pytest.mark.parametrize("threshold", [None, -1.5])
def test_the_page_data_names_the_threshold_only_when_set(tmp_path, threshold):
    """rounds.js: the threshold is there when set, absent (the data as before) when not."""
    import json
    dataset = [Row(id=i, source=f"{i}.png") for i in SCORES]
    write_manifest(tmp_path / "dataset.tsv", dataset)
    after = next_round_rows(dataset, SCORES, 0.0, 1, threshold)
    write_manifest(tmp_path / "ranked.tsv", after)
    (tmp_path / "scores.tsv").write_text(format_scores([Score(i, s, 0.0, "", None, "") for i, s in SCORES.items()]))
    cmd = [sys.executable, "-m", "pipeline.rounds", "table", "--dataset", str(tmp_path / "dataset.tsv"),
           "--sets", str(tmp_path / "dataset.tsv"), str(tmp_path / "ranked.tsv"), "--scores", str(tmp_path / "scores.tsv"),
           "--networks", str(tmp_path / "none.npz"), "--output", str(tmp_path / "rounds.tsv"), "--page", str(tmp_path / "rounds.js")]
    if threshold is not None:
        cmd += ["--drop-below", str(threshold)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    page = (tmp_path / "rounds.js").read_text()
    data = json.loads(json.loads(page[page.index("JSON.parse(") + len("JSON.parse("):page.rindex(")")]))
    if threshold is None:
        assert "drop_below" not in data and data["dropped"] == {}
    else:
        assert data["drop_below"] == -1.5 and data["dropped"] == {"a": "round 1 below_threshold"}
        assert data["rounds"][0]["dropped"] == ["a"]
