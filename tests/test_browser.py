"""The review loop for real: the workflow on a tiny config, its report in headless Chromium,
two reject ticks, the downloaded rejects.txt fed back, and what a rejects edit reschedules;
then every interaction of the page on a report of real images (keyboard, viewer, filters,
threshold, drop galleries, problems) and the review server's save and refusals.

Chromium is Debian's (`apt-get install chromium chromium-driver`; .ci/run installs it).
The browser tests skip, saying so, only where it is absent; the dry-run tests always run.
"""
from __future__ import annotations

import json
import os
import shutil
import threading
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import copy_testdata, run_snakemake, scheduled_jobs
from test_report import HOSTILE as TREE_HOSTILE
from test_report import build_results, items_of, make_report, page_data
from pipeline.export import read_rejects
from pipeline.manifest import kept, read_manifest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
HAVE_CHROMIUM = os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)
needs_chromium = pytest.mark.skipif(
    not HAVE_CHROMIUM, reason=f"headless browser test needs {CHROMIUM} and {CHROMEDRIVER} "
                              "(Debian: apt-get install chromium chromium-driver)")

HOSTILE = "broken/<img src=x onerror=alert(1)>.png"
# 8 different pictures (crop: none keeps each whole), one hostile name, one broken file
RAW = ["anime_miku_CC_BY-NC.jpg", "anime_miku_noisy.jpg", "anime_miku_small.png", "noface_city.jpg",
       "photo_dogs.jpg", "photo_Tom_Cruise_avp_2014_4.jpg", "photo_2008_002470.jpg", HOSTILE,
       "broken/zero_bytes.jpg"]
R = Path("results/tiny")
# a rejects edit: the curated set, training on it (one round_kimg continuation), the
# ranking, the re-export, the page's ticks and the ranking verdicts
RANKED_STAGE = {"curated": 1, "finetune": 1, "rank": 1, "ranked_export": 1, "report": 1,
                "report_ranking": 1, "rounds": 1, "ranked_dataset": 1}
# a ranking-only edit (bottom fraction, scores): the check page before training stays
RANKING_STAGE = {"ranked_export": 1, "report_ranking": 1, "rounds": 1, "ranked_dataset": 1}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A workdir where `snakemake ranked_dataset` has run to the end on the tiny config."""
    workdir = tmp_path_factory.mktemp("loop")
    copy_testdata(workdir / "raw", RAW)
    run_snakemake(workdir, "ranked_dataset")
    assert scheduled_jobs(workdir, "ranked_dataset") == {}
    return workdir


def start_chromium(tmp_path: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,900", f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(flag)
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                           "download.prompt_for_download": False,
                                           "safebrowsing.enabled": False})
    driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    return driver, downloads


@pytest.fixture
def browser(tmp_path):
    driver, downloads = start_chromium(tmp_path)
    try:
        yield driver, downloads
    finally:
        driver.quit()


def open_page(driver, url: str) -> None:
    """Load the page and wait for its script to have built everything."""
    from selenium.webdriver.support.ui import WebDriverWait
    driver.get(url)
    WebDriverWait(driver, 20).until(lambda d: d.execute_script(
        "return !!(window.faceprepReview && window.faceprepReview.ready)"), "review.js ran")


def show_grid(driver) -> None:
    driver.execute_script("document.getElementById('grid').scrollIntoView();")
    driver.execute_script("return new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")


def review_in_browser(driver, downloads: Path, page: Path, n_ticks: int) -> tuple[list[str], Path]:
    """Open the page from disk, tick the first ``n_ticks`` unticked images, download.

    Returns (the ticked ids, the downloaded file)."""
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    open_page(driver, page.resolve().as_uri())
    show_grid(driver)
    # the hostile file name is text, not markup: no alert, no injected <img src=x>
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text
    assert not driver.find_elements(By.CSS_SELECTOR, "img[src='x']")
    assert "<img src=x onerror=alert(1)>.png" in driver.find_element(By.TAG_NAME, "body").text
    images = driver.find_elements(By.CSS_SELECTOR, "#grid .card img, img.wide")
    loaded = "return arguments[0].complete && arguments[0].naturalWidth > 0"
    WebDriverWait(driver, 10).until(lambda d: all(d.execute_script(loaded, im) for im in images),
                                    "thumbnails and samples load from disk")
    assert len(images) == 1 + 8  # the newest sample grid, every dataset image
    assert driver.find_elements(By.CSS_SELECTOR, "canvas.hist[data-signal='score']")
    count_before = int(driver.find_element(By.ID, "reject-count").text)
    boxes = [b for b in driver.find_elements(By.CSS_SELECTOR, "#grid input.reject") if not b.is_selected()]
    ticked = []
    for box in boxes:
        if len(ticked) == n_ticks:
            break
        if box.get_attribute("data-id") not in ticked:
            box.click()
            ticked.append(box.get_attribute("data-id"))
    assert driver.find_element(By.ID, "reject-count").text == str(count_before + n_ticks)
    driver.find_element(By.ID, "download").click()
    target = downloads / "rejects.txt"
    deadline = time.monotonic() + 20
    while not target.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert target.exists(), f"no download in {list(downloads.iterdir())}"
    return ticked, target


def dataset_counts(workdir: Path, folder: str, with_zip: bool = True) -> tuple[int, int | None, int]:
    """(manifest keeps, ZIP images, TFRecords records at the top level). ranked_dataset
    builds the curated set's TFRecords (training reads them) and only the ranked ZIP."""
    import tensorflow as tf
    base = workdir / R / folder
    keeps = len(list(kept(read_manifest(base / "manifest.tsv"))))
    pngs = None
    if with_zip:
        with zipfile.ZipFile(base / "tiny.zip") as zf:
            pngs = sum(n.endswith(".png") for n in zf.namelist())
    records = sum(1 for _ in tf.data.TFRecordDataset(str(base / "tfrecords" / "tiny-r05.tfrecords")))
    return keeps, pngs, records


# ---------------------------------------------------------------- dry runs (no browser)

def test_rejects_edit_reschedules_training_on_the_curated_set(finished_run):
    rejects = finished_run / "characters" / "tiny.rejects.txt"
    rejects.parent.mkdir(exist_ok=True)
    first = read_manifest(finished_run / R / "export" / "manifest.tsv")[0].id
    rejects.write_text(f"# test\n{first}\n", encoding="utf-8")
    try:
        assert scheduled_jobs(finished_run, "ranked_dataset") == RANKED_STAGE
    finally:
        rejects.unlink()
    assert scheduled_jobs(finished_run, "ranked_dataset") == {}


def test_rank_config_edits_reschedule_what_they_should(finished_run):
    # the bottom fraction is ranked_export's business (one round), not rank's; the rejects
    # path decides the curated set training reads (and the check page preticks from it)
    assert scheduled_jobs(finished_run, "ranked_dataset",
                          {"rank": {"shuffles": 2, "drop_bottom_fraction": 0.25}}) == RANKING_STAGE
    assert scheduled_jobs(finished_run, "ranked_dataset",
                          {"rank": {"shuffles": 2, "rejects": "elsewhere.txt"}}) == RANKED_STAGE
    # scoring keys rerun rank (the network and dataset stay)
    assert scheduled_jobs(finished_run, "ranked_dataset", {"rank": {"shuffles": 3}}) == \
        {"rank": 1, **RANKING_STAGE}
    # the page's own settings rerun only the page
    assert scheduled_jobs(finished_run, "ranked_dataset", {"report": {"thumb": 24}}) == \
        {"report": 1, "report_ranking": 1, "ranked_dataset": 1}


def test_dataset_target_writes_the_check_page_without_training(tmp_path):
    copy_testdata(tmp_path / "raw", RAW)
    jobs = scheduled_jobs(tmp_path, "dataset")
    assert jobs["report"] == 1 and "finetune" not in jobs and "rank" not in jobs
    assert "report_ranking" not in jobs


def test_scores_and_report_of_the_real_run(finished_run, monkeypatch):
    from pipeline.rank import read_scores
    dataset = list(kept(read_manifest(finished_run / R / "export" / "manifest.tsv")))
    scores = read_scores(finished_run / R / "rank" / "scores.tsv")
    assert sorted(s.id for s in scores) == sorted(r.id for r in dataset) and len(dataset) == 8
    assert [s.score for s in scores] == sorted(s.score for s in scores)
    assert HOSTILE in {s.source for s in scores}
    page = (finished_run / R / "report" / "index.html").read_text(encoding="utf-8")
    assert "<img src=x" not in page
    data = (finished_run / R / "report" / "check.js").read_text(encoding="utf-8")
    assert "\\\\u003cimg src=x onerror=alert(1)\\\\u003e.png" in data and "<" not in data
    assert (finished_run / R / "provenance.tsv").exists()
    # the network records the fingerprint of this very dataset: no "training is older" warning
    ranking = page_data(finished_run / R / "report" / "ranking.js")
    assert ranking["problems"] == [] and set(ranking["ids"]) == {r.id for r in dataset}
    from pipeline.report import recorded_fingerprint, run_fingerprint
    monkeypatch.chdir(finished_run)  # manifest paths are relative to the workdir
    assert recorded_fingerprint(R / "finetune" / "network-final.npz") == run_fingerprint(R / "export" / "manifest.tsv")
    log = (finished_run / R / "logs" / "rank" / "all.log").read_text(encoding="utf-8")
    assert "images/s" in log and "on CPU" in log


# ---------------------------------------------------------------- the browser loop

@needs_chromium
def test_two_ticks_in_the_browser_drop_exactly_those_two_images(finished_run, browser):
    driver, downloads = browser
    before = dataset_counts(finished_run, "ranked")
    assert before == (8, 8, 8)
    ticked, downloaded = review_in_browser(driver, downloads, finished_run / R / "report" / "index.html", 2)
    assert len(set(ticked)) == 2 and read_rejects(downloaded) == set(ticked)

    # the file goes where the pipeline looks, as downloaded
    rejects = finished_run / "characters" / "tiny.rejects.txt"
    rejects.parent.mkdir(exist_ok=True)
    shutil.copyfile(downloaded, rejects)
    assert scheduled_jobs(finished_run, "ranked_dataset") == RANKED_STAGE
    run_snakemake(finished_run, "ranked_dataset")

    ranked = read_manifest(finished_run / R / "ranked" / "manifest.tsv")
    assert {r.id for r in ranked if not r.kept} == set(ticked)
    assert all(r.reason == "rejected" for r in ranked if not r.kept)
    assert dataset_counts(finished_run, "ranked") == (6, 6, 6)
    assert not (finished_run / R / "export" / "tiny.zip").exists()   # the `dataset` target's
    assert len(list(kept(read_manifest(finished_run / R / "export" / "manifest.tsv")))) == 8  # untouched
    # training read the curated set: the dataset minus the two
    assert dataset_counts(finished_run, "curated", with_zip=False) == (6, None, 6)

    # the rebuilt page preticks the two; downloading again without changes gives the same file
    downloaded.unlink()
    _, again = review_in_browser(driver, downloads, finished_run / R / "report" / "index.html", 0)
    assert read_rejects(again) == set(ticked)
    # the cleaning-rounds panel names the network's run and round; it trained without the two
    from selenium.webdriver.common.by import By
    from gan.checkpoint import read_meta
    run = read_meta(finished_run / R / "finetune" / "network-final.npz")["extra"]["run"]
    assert f"run {run['id']}, round 1 of 1" in driver.find_element(By.ID, "rounds-network").text
    assert not driver.find_elements(By.ID, "rounds-stale")



def test_reject_problems_reach_the_page_and_the_console(finished_run):
    """After the two ticks: a line that matches nothing is shown on the page and printed by
    the snakemake run itself, not only written to a log."""
    rejects = finished_run / "characters" / "tiny.rejects.txt"
    rejects.parent.mkdir(exist_ok=True)
    with open(rejects, "a", encoding="utf-8") as f:
        f.write("no-such-image-anywhere\n")
    proc = run_snakemake(finished_run, "ranked_dataset")
    console = proc.stdout + proc.stderr
    assert "WARNING report:" in console and "no-such-image-anywhere" in console
    data = (finished_run / R / "report" / "check.js").read_text(encoding="utf-8")
    assert "match no image" in data and "no-such-image-anywhere" in data
    html = (finished_run / R / "report" / "index.html").read_text(encoding="utf-8")
    assert "no-such-image-anywhere" in html  # in the problems list, even without JavaScript

# ---------------------------------------------------------------- every interaction, on a report tree

@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A report of real images (test_report's tree): a rejects file with a line that matches
    nothing, and a network older than the dataset."""
    root = tmp_path_factory.mktemp("page")
    tree = build_results(root)
    tree["rejects"] = root / "rejects.txt"
    tree["rejects"].write_text(f"{tree['scores'][-1].id}\nno-such-image\n", encoding="utf-8")
    net = root / "network-final.npz"
    np.savez(net, w=np.zeros(1))
    export = tree["R"] / "export" / "manifest.tsv"
    os.utime(net, ns=(export.stat().st_mtime_ns - 10**9,) * 2)
    tree.update(make_report(tree, tree["rejects"], net))
    tree["items"] = items_of(tree["check"])
    tree["url"] = (tree["R"] / "report" / "index.html").resolve().as_uri()
    return tree


@pytest.fixture(scope="module")
def chrome(tmp_path_factory):
    if not HAVE_CHROMIUM:
        pytest.skip(f"headless browser test needs {CHROMIUM} and {CHROMEDRIVER}")
    driver, downloads = start_chromium(tmp_path_factory.mktemp("chrome"))
    try:
        yield driver
    finally:
        driver.quit()


def js(driver, script, *args):
    return driver.execute_script(script, *args)


def count(driver, element_id) -> int:
    return int(driver.find_element("id", element_id).text)


def cursor_id(driver) -> str:
    return js(driver, "return document.querySelector('#grid .card.cursor').dataset.id")


def press(driver, *keys) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    ActionChains(driver).send_keys(*keys).perform()


@needs_chromium
def test_hostile_names_inert_problems_shown_and_drop_galleries(tree, chrome):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By
    open_page(chrome, tree["url"])
    show_grid(chrome)
    with pytest.raises(NoAlertPresentException):
        chrome.switch_to.alert.text
    assert not chrome.find_elements(By.CSS_SELECTOR, "img[src='x']")
    body = chrome.find_element(By.TAG_NAME, "body").text
    assert TREE_HOSTILE in body  # shown as text in the cards
    # problems where the user looks: the unmatched reject line, the stale training
    problems = [li.text for li in chrome.find_elements(By.CSS_SELECTOR, "#problems li")]
    assert any("no-such-image" in p and "match no image" in p for p in problems), problems
    assert any("older than the dataset" in p for p in problems), problems
    # duplicates: the cluster side by side, the kept image first, the distance on the copy
    cluster = chrome.find_element(By.CSS_SELECTOR, "#drops .cluster")
    cards = cluster.find_elements(By.CSS_SELECTOR, ".card")
    assert [c.get_attribute("data-id") for c in cards] == [tree["check"]["clusters"][0][0],
                                                          tree["check"]["clusters"][0][1][0][0]]
    assert "kept" in cards[0].text and "distance 0" in cards[1].text
    # opened from the cluster, the viewer steps through the cluster
    from selenium.webdriver.common.keys import Keys
    js(chrome, "arguments[0].scrollIntoView()", cards[1])
    cards[1].find_element(By.CSS_SELECTOR, ".pic").click()
    viewer = chrome.find_element(By.ID, "viewer")
    assert viewer.is_displayed() and viewer.get_attribute("data-id") == cards[1].get_attribute("data-id")
    press(chrome, Keys.ARROW_LEFT)
    assert viewer.get_attribute("data-id") == cards[0].get_attribute("data-id")
    press(chrome, Keys.ESCAPE)
    assert not viewer.is_displayed()
    # no face: the source with the two too-small boxes drawn on it
    noface = chrome.find_element(By.CSS_SELECTOR, "#drops section[data-reason='crop: no_face'] .card")
    assert len(noface.find_elements(By.CSS_SELECTOR, "svg rect")) == 2
    # undecodable files listed with their reason
    for reason in ("ingest: empty_file", "ingest: truncated", "ingest: not_an_image", "clean: monochrome"):
        sec = chrome.find_element(By.CSS_SELECTOR, f"#drops section[data-reason='{reason}']")
        assert reason in sec.text
    assert "not decodable" in chrome.find_element(By.CSS_SELECTOR, "#drops section[data-reason='ingest: truncated']").text


@needs_chromium
def test_keyboard_viewer_and_reject_toggle(tree, chrome):
    from selenium.webdriver.common.keys import Keys
    open_page(chrome, tree["url"])
    show_grid(chrome)
    order = [s.id for s in tree["scores"]]
    assert js(chrome, "return Array.from(document.querySelectorAll('#grid .card')).map(c => c.dataset.id)") == order
    preset = count(chrome, "reject-count")
    assert preset == 1  # the best image, from the file; its unmatched line is counted apart
    assert "1 lines that match no image" in chrome.find_element("id", "unmatched-count").text
    js(chrome, "document.getElementById('grid').focus()")
    assert cursor_id(chrome) == order[0]
    press(chrome, Keys.ARROW_RIGHT)
    assert cursor_id(chrome) == order[1]
    press(chrome, "j", "k", "j")
    assert cursor_id(chrome) == order[2]
    press(chrome, "x")
    assert count(chrome, "reject-count") == preset + 1
    assert js(chrome, "return document.querySelector('#grid .card.cursor input.reject').checked") is True
    press(chrome, Keys.ENTER)  # open: full resolution, its source with the crop box
    viewer = chrome.find_element("id", "viewer")
    assert viewer.is_displayed() and viewer.get_attribute("data-id") == order[2]
    from selenium.webdriver.support.ui import WebDriverWait
    WebDriverWait(chrome, 10).until(lambda d: js(d, "const i = document.getElementById('v-full');"
                                                    "return i.complete && i.naturalWidth > 0"))
    assert js(chrome, "return document.getElementById('v-full').naturalWidth") == 32  # the dataset file itself
    item = tree["items"][order[2]]
    rect = js(chrome, "const r = document.querySelector('#v-box rect'); return r && "
                      "[r.getAttribute('x'), r.getAttribute('y'), r.getAttribute('width')].map(Number)")
    g = item["geom"]
    assert rect == [g[0], g[1], g[2] - g[0]]
    assert "REJECTED" in chrome.find_element("id", "v-info").text
    press(chrome, "x")  # un-reject from the viewer
    assert count(chrome, "reject-count") == preset and "kept" in chrome.find_element("id", "v-info").text
    press(chrome, Keys.ARROW_RIGHT)
    assert viewer.get_attribute("data-id") == order[3]
    press(chrome, Keys.ESCAPE)
    assert not viewer.is_displayed()
    # click opens too
    chrome.find_element("css selector", "#grid .card .pic").click()
    assert viewer.is_displayed() and viewer.get_attribute("data-id") == order[0]
    press(chrome, Keys.ESCAPE)


@needs_chromium
def test_filters_and_reject_below_threshold(tree, chrome):
    from selenium.webdriver.support.ui import Select
    open_page(chrome, tree["url"])
    scores = tree["scores"]
    shown = lambda: count(chrome, "shown-count")  # noqa: E731
    assert shown() == len(scores)
    Select(chrome.find_element("id", "folder")).select_by_value("broken")
    assert shown() == 2  # the hostile file's two faces
    Select(chrome.find_element("id", "folder")).select_by_value("")
    Select(chrome.find_element("id", "reason")).select_by_value("dedup: exact_duplicate")
    assert shown() == 1
    Select(chrome.find_element("id", "reason")).select_by_value("all")
    assert shown() == len(tree["items"])
    Select(chrome.find_element("id", "reason")).select_by_value("dataset")
    lo, hi = scores[1].score, scores[-2].score
    chrome.find_element("id", "score-min").send_keys(f"{lo:.6f}")
    chrome.find_element("id", "score-max").send_keys(f"{hi:.6f}")
    assert shown() == sum(round(lo, 6) <= round(s.score, 6) <= round(hi, 6) for s in scores) == len(scores) - 2
    js(chrome, "for (const id of ['score-min', 'score-max']) { const e = document.getElementById(id);"
               " e.value = ''; e.dispatchEvent(new Event('input')); }")
    assert shown() == len(scores)
    # reject everything below t: t typed, and t picked on the histogram
    before = count(chrome, "reject-count")
    t = scores[3].score
    chrome.find_element("id", "threshold").send_keys(f"{t:.6f}")
    assert count(chrome, "below-count") == 3
    chrome.find_element("id", "reject-below").click()
    assert count(chrome, "reject-count") == before + 3  # none of the 3 worst was rejected before
    canvas = chrome.find_element("css selector", "canvas.hist[data-signal='score']")
    from selenium.webdriver.common.action_chains import ActionChains
    ActionChains(chrome).move_to_element_with_offset(canvas, 0, 0).click().perform()  # offsets from its centre
    t_click = float(chrome.find_element("id", "threshold").get_attribute("value"))
    mid = (scores[0].score + scores[-1].score) / 2
    assert abs(t_click - mid) < (scores[-1].score - scores[0].score) * 0.05
    assert count(chrome, "below-count") == sum(s.score < t_click for s in scores)
    # each signal has its histogram and its value beside the score
    assert {c.get_attribute("data-signal") for c in chrome.find_elements("css selector", "canvas.hist")} == \
        {"score", "signal: logit", "signal: knn"}
    show_grid(chrome)
    first = chrome.find_element("css selector", "#grid .card")
    assert "knn" in first.text and "logit" in first.text


@needs_chromium
def test_review_server_saves_in_place_and_refuses_without_token(tree, chrome, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    from pipeline.review import serve
    rejects = tmp_path / "my.rejects.txt"
    rejects.write_text(f"# before\n{tree['scores'][0].id}\n", encoding="utf-8")
    server, url, path = serve(tree["R"].parent, tree["R"].name, str(rejects))
    assert path == rejects.resolve()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = url.rsplit("/report/", 1)[0]
        origin = base.rsplit("/", 1)[0]
        # without the token (or with a wrong one): refused, for the page and for a save
        for bad in (f"{origin}/report/index.html", f"{origin}/wrong-token/report/index.html"):
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(bad, timeout=10)
            assert e.value.code == 403
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(urllib.request.Request(f"{origin}/rejects", data=b"x", method="POST"), timeout=10)
        assert e.value.code == 403
        # nothing outside results/<name>
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{base}/%2e%2e/%2e%2e/rejects.txt", timeout=10)
        assert e.value.code == 404

        open_page(chrome, url)
        # the file on disk is what the page starts from
        WebDriverWait(chrome, 10).until(lambda d: count(d, "reject-count") == 1)
        save = chrome.find_element("id", "save")
        assert save.is_displayed()
        show_grid(chrome)
        boxes = [b for b in chrome.find_elements("css selector", "#grid input.reject") if not b.is_selected()]
        boxes[0].click()
        ticked = boxes[0].get_attribute("data-id")
        save.click()
        WebDriverWait(chrome, 10).until(lambda d: "saved" in d.find_element("id", "save-status").text)
        assert read_rejects(rejects) == {tree["scores"][0].id, ticked}
        assert "# before" in (tmp_path / "my.rejects.txt.bak").read_text(encoding="utf-8")
        assert not list(tmp_path.glob(".*.tmp"))  # the write was atomic: no temp left
        # a page of another origin that knows the token still cannot save
        written = rejects.read_bytes()
        chrome.get("data:text/html,<p>elsewhere</p>")
        status = chrome.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch(arguments[0], {method: 'POST', body: 'evil\\n', mode: 'no-cors'})"
            ".then(r => done(r.type), e => done('error ' + e));", f"{base}/rejects")
        assert status in ("opaque", ) or status.startswith("error")
        time.sleep(0.3)
        assert rejects.read_bytes() == written
        req = urllib.request.Request(f"{base}/rejects", data=b"evil\n", method="POST",
                                     headers={"Origin": "http://evil.example"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code == 403 and rejects.read_bytes() == written
        body = json.loads(urllib.request.urlopen(f"{base}/rejects", timeout=10).read())
        assert set(body["lines"]) == read_rejects(rejects)
    finally:
        server.shutdown()
        server.server_close()
