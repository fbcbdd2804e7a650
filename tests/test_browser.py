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
    from gan.runs import network_provenance
    from util.fingerprint import dataset_fingerprint
    monkeypatch.chdir(finished_run)  # manifest paths are relative to the workdir
    assert (network_provenance(R / "finetune" / "network-final.npz")["dataset"]
            == dataset_fingerprint(R / "export" / "manifest.tsv")["sha256"])
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
    # the panel sits in the "Scores & samples" tab (hidden until opened): its text content
    panel = driver.find_element(By.ID, "rounds-network").get_attribute("textContent")
    assert f"run {run['id']}, round 1 of 1" in panel
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
    # crop.min_face as the tree's no-face file records it: its near misses on the page
    tree.update(make_report(tree, tree["rejects"], net, cfg={"thumb": 24, "thresholds": {"min_face": 250}}))
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
    """A number on the page, on its tab or not (a hidden tab's text reads '' in Selenium)."""
    return int(js(driver, "return document.getElementById(arguments[0]).textContent", element_id))


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
    chrome.find_element(By.CSS_SELECTOR, "#tabs a[data-tab='drops']").click()
    assert not chrome.find_element(By.ID, "grid").is_displayed()  # the drops are behind their tab
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
    chrome.find_element("css selector", "#tabs a[data-tab='ranking']").click()
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
    chrome.find_element("css selector", "#tabs a[data-tab='review']").click()
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


# ---------------------------------------------------------------- decision first, every score explained

def visible_ids(driver) -> list[str]:
    return js(driver, "return Array.from(document.querySelectorAll('#grid .card'))"
                      ".sort((a, b) => a.dataset.pos - b.dataset.pos).map(c => c.dataset.id)")


@needs_chromium
def test_page_opens_on_the_grid_and_every_funnel_number_filters_it(tree, chrome):
    open_page(chrome, tree["url"])
    # the worst-ranked image is on the first screen (1280x900), the galleries behind a tab
    first = chrome.find_element("css selector", "#grid .card")
    assert first.get_attribute("data-id") == tree["scores"][0].id
    assert js(chrome, "return arguments[0].getBoundingClientRect().bottom", first) < 900
    assert not chrome.find_element("id", "drops").is_displayed()
    # counts say what they count
    funnel = {th.text: k for k, th in enumerate(chrome.find_elements("css selector", "#funnel tr:first-child th"))}
    crop_col = [row.find_elements("css selector", "td, th")[funnel["crop"]].text
                for row in chrome.find_elements("css selector", "#funnel tr")]
    assert crop_col[1] == "9 files" and crop_col[2].startswith("9 faces") and "from 8 files" in crop_col[2]
    assert crop_col[3].startswith("1 file")
    # every number is a link that filters the grid
    link = lambda value: chrome.find_element("css selector", f"#funnel a[data-filter='{value}']")  # noqa: E731
    link("crop: no_face").click()
    assert count(chrome, "shown-count") == 1 and visible_ids(chrome) == [tree["items"][
        next(i for i, it in tree["items"].items() if it["why"] == "crop: no_face")]["id"]]
    assert chrome.find_element("id", "shown-units").text == "0 faces, 1 file"
    link("dropped:ingest").click()
    assert count(chrome, "shown-count") == 3 and chrome.find_element("id", "shown-units").text == "0 faces, 3 files"
    link("kept:export").click()
    assert count(chrome, "shown-count") == len(tree["dataset"])
    link("reached:clean").click()  # the 9 faces clean received: dataset + their later drops
    assert count(chrome, "shown-count") == 9
    link("kept:ingest").click()  # what passed ingest: 9 files, as faces they gave and files without one
    assert count(chrome, "shown-count") == len(tree["items"]) - 3
    # the drops tab: galleries and coverage per folder, by link and by tab
    chrome.find_element("css selector", "#tabs a[data-tab='drops']").click()
    assert chrome.find_element("id", "folder-table").is_displayed()
    assert js(chrome, "return location.hash") == "#drops"


@needs_chromium
def test_every_score_explained_sorted_and_filtered_by_any_signal(tree, chrome):
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select
    open_page(chrome, tree["url"])
    rk, scores = tree["ranking"], tree["scores"]
    n = len(scores)
    # the percentile of each signal and the signal that pulled the image down, in words
    # knn here falls with the rank: the first has the largest distance (high is bad), the worst
    assert rk["worseThan"]["knn"][0] == 100 and rk["worseThan"]["knn"][-1] == 0
    decided = [rk["decided"][k] for k in range(n)]
    assert set(decided) <= {-1, 0, 1}
    cards = chrome.find_elements("css selector", "#grid .card")
    for c in cards:
        k = [s.id for s in scores].index(c.get_attribute("data-id"))
        text = c.find_element("css selector", ".decided").get_attribute("title")
        d = decided[k]
        assert text == ("low: " + rk["signalInfo"][sorted(rk["signals"])[d]]["lowMeans"] if d >= 0
                        else "no signal stands out")
    cards[0].find_element("css selector", ".pic").click()
    info = chrome.find_element("id", "v-info").text
    assert f"knn 0.0000 (worse than 100% of the dataset)" in info and "high is bad" in info
    press(chrome, Keys.ESCAPE)
    # ± only where it means something: the scores here differ between shuffles
    assert rk["stdMeaningful"] and "\u00b1" in cards[0].text
    # sort by a signal, worst first (knn: the largest distance first)
    Select(chrome.find_element("id", "sort")).select_by_value("signal:knn")
    knn = dict(zip(rk["ids"], rk["signals"]["knn"]))
    assert visible_ids(chrome) == sorted(knn, key=lambda i: -knn[i])
    Select(chrome.find_element("id", "sort")).select_by_value("score")
    assert visible_ids(chrome) == rk["ids"]
    # filter on a signal's value, and on which signal decided
    Select(chrome.find_element("id", "filter-signal")).select_by_value("signal:knn")
    chrome.find_element("id", "score-max").send_keys("-1.5")
    assert count(chrome, "shown-count") == sum(v <= -1.5 for v in knn.values())
    js(chrome, "const e = document.getElementById('score-max'); e.value = ''; e.dispatchEvent(new Event('input'))")
    Select(chrome.find_element("id", "filter-signal")).select_by_value("score")
    Select(chrome.find_element("id", "decided")).select_by_value("-1")
    assert count(chrome, "shown-count") == decided.count(-1)
    Select(chrome.find_element("id", "decided")).select_by_value("")
    assert count(chrome, "shown-count") == n


@needs_chromium
def test_shift_click_range_reject_all_shown_undo_opaque_viewer_full_captions(tree, chrome):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select
    open_page(chrome, tree["url"])
    show_grid(chrome)
    preset = count(chrome, "reject-count")
    ids = visible_ids(chrome)
    box = lambda k: chrome.find_element("css selector", f"#grid .card[data-pos='{k}'] input.reject")  # noqa: E731
    box(0).click()
    ActionChains(chrome).key_down(Keys.SHIFT).click(box(3)).key_up(Keys.SHIFT).perform()
    ticked = set(js(chrome, "return window.faceprepReview.rejects()"))
    assert set(ids[:4]) <= ticked and count(chrome, "reject-count") == preset + 4
    # undo: the range in one step, then the first tick
    chrome.find_element("id", "undo").click()
    assert count(chrome, "reject-count") == preset + 1
    js(chrome, "document.getElementById('grid').focus()")
    press(chrome, "u")
    assert count(chrome, "reject-count") == preset and chrome.find_element("id", "undo").get_attribute("disabled")
    # reject all shown: only what the filter shows
    Select(chrome.find_element("id", "folder")).select_by_value("broken")
    chrome.find_element("id", "select-all").click()
    broken = {i for i, it in tree["items"].items() if it["why"] == "" and it["source"].startswith("broken/")}
    assert broken <= set(js(chrome, "return window.faceprepReview.rejects()"))
    chrome.find_element("id", "undo").click()
    Select(chrome.find_element("id", "folder")).select_by_value("")
    assert count(chrome, "reject-count") == preset
    # captions: one line on the card, the full text on hover (title) and in the viewer
    src = chrome.find_element("css selector", "#grid .card .src")
    full = src.get_attribute("title")
    assert full == tree["items"][src.find_element("xpath", "./ancestor::figure").get_attribute("data-id")]["source"]
    for line in chrome.find_elements("css selector", "#grid .card figcaption > div"):
        assert line.get_attribute("title") == js(chrome, "return arguments[0].textContent", line)
    # the viewer is opaque: nothing of the grid shows through
    chrome.find_element("css selector", "#grid .card .pic").click()
    bg = js(chrome, "return getComputedStyle(document.getElementById('viewer')).backgroundColor")
    assert bg.startswith("rgb(") and "rgba" not in bg, bg
    assert full in chrome.find_element("id", "v-info").text
    press(chrome, Keys.ESCAPE)


def test_review_server_refuses_unmatched_lines_keeps_every_save_and_logs_nothing(tree, tmp_path, capfd):
    from pipeline.review import serve
    rejects = tmp_path / "r.txt"
    first_id = tree["scores"][0].id
    rejects.write_text(f"{first_id}\n", encoding="utf-8")
    server, url, _ = serve(tree["R"].parent, tree["R"].name, str(rejects), keep=2)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = url.rsplit("/report/", 1)[0]
        post = lambda body, q="": urllib.request.urlopen(urllib.request.Request(  # noqa: E731
            f"{base}/rejects{q}", data=body.encode(), method="POST"), timeout=10)
        # a line that matches no image is refused and listed; the file stays as it was
        with pytest.raises(urllib.error.HTTPError) as e:
            post(f"{first_id}\nabc\n")
        body = json.loads(e.value.read())
        assert e.value.code == 409 and body["unmatched"] == ["abc"] and "abc" in body["error"]
        assert rejects.read_text(encoding="utf-8") == f"{first_id}\n"
        # confirmed, it is saved; every save keeps the one before, timestamped (the last 2)
        assert json.loads(post(f"{first_id}\nabc\n", "?confirm=1").read())["count"] == 2
        second = tree["scores"][1].id
        post(f"{second}  # a/source.png\n")
        assert read_rejects(rejects) == {second}
        history = sorted((tmp_path / "r.txt.history").glob("*.txt"))
        assert [p.read_text(encoding="utf-8") for p in history] == [f"{first_id}\n", f"{first_id}\nabc\n"]
        post(f"{first_id}\n")
        assert len(list((tmp_path / "r.txt.history").glob("*.txt"))) == 2  # --keep 2
        # no 404 for figures.js before `generate` ran
        assert not (tree["R"] / "report" / "figures.js").exists()
        assert urllib.request.urlopen(f"{base}/report/figures.js", timeout=10).read() == b"window.FACEPREP_FIGURES = [];\n"
        urllib.request.urlopen(f"{base}/report/index.html", timeout=10).read()
    finally:
        server.shutdown()
        server.server_close()
    err = capfd.readouterr().err
    assert "GET" not in err and "POST" not in err  # access log off by default


@needs_chromium
def test_page_saves_each_id_with_its_source_and_confirms_unmatched_lines(tree, chrome, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    from pipeline.review import serve
    rejects = tmp_path / "p.txt"
    rejects.write_text("stale-line\n", encoding="utf-8")
    server, url, _ = serve(tree["R"].parent, tree["R"].name, str(rejects))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        open_page(chrome, url)
        WebDriverWait(chrome, 10).until(lambda d: "1 lines that match no image" in d.find_element("id", "unmatched-count").text)
        show_grid(chrome)
        chrome.find_element("css selector", "#grid .card[data-pos='0'] input.reject").click()
        chrome.find_element("id", "save").click()
        WebDriverWait(chrome, 10).until(lambda d: "NOT saved" in d.find_element("id", "save-status").text)
        assert "stale-line" in chrome.find_element("id", "save-status").text
        assert rejects.read_text(encoding="utf-8") == "stale-line\n"
        chrome.find_element("id", "save-anyway").click()
        WebDriverWait(chrome, 10).until(lambda d: d.find_element("id", "save-status").text.startswith("saved"))
        first = tree["scores"][0]
        assert f"{first.id}  # {first.source}\n" in rejects.read_text(encoding="utf-8")
        assert read_rejects(rejects) == {first.id, "stale-line"}
    finally:
        server.shutdown()
        server.server_close()


@needs_chromium
def test_a_tab_is_open_when_its_click_returns(tree, chrome):
    """Clicking a tab shows it within the click: the page does not wait for 'hashchange' (a
    later task), which let a test, or a quick keyboard user, find the old tab still shown.
    Click and read in one script, so no other task can run in between."""
    open_page(chrome, tree["url"])
    for name in ["near", "drops", "ranking", "help", "review", "near"]:
        shown = js(chrome, """const a = document.querySelector(`#tabs a[data-tab='${arguments[0]}']`);
            a.click();
            return [[...document.querySelectorAll('section.tab')].filter(s => !s.hidden).map(s => s.dataset.tab),
                    a.classList.contains('active'), document.querySelectorAll('#near section').length];""", name)
        assert shown[0] == [name] and shown[1], (name, shown)
        if name == "near":
            assert shown[2] > 0  # built on its first opening, within the same click
    from selenium.webdriver.support.ui import WebDriverWait
    chrome.back()  # the hash still records the tabs: back goes to the one before
    WebDriverWait(chrome, 5).until(lambda d: js(d, "return !document.getElementById('tab-review').hidden"))


@needs_chromium
def test_near_misses_tab_shows_each_threshold_with_values(tree, chrome):
    open_page(chrome, tree["url"])
    chrome.find_element("css selector", "#tabs a[data-tab='near']").click()
    sec = chrome.find_element("css selector", "#near section[data-setting='crop.min_face']")
    assert "crop.min_face = 250" in sec.text
    assert "lowering crop.min_face to 60 adds 1 file" in sec.find_element("css selector", ".advice").text
    card = sec.find_element("css selector", ".card.near-dropped")
    assert "dropped, face side px 60" in card.text
    card.find_element("css selector", ".pic").click()  # openable like every card
    assert chrome.find_element("id", "viewer").is_displayed()
    from selenium.webdriver.common.keys import Keys
    press(chrome, Keys.ESCAPE)


@needs_chromium
def test_a_jump_through_the_grid_fills_every_card_once_it_settles(tmp_path_factory, chrome):
    """A scrollbar drag draws light cards (score and source) and fills them when the view
    stops: after a jump, no card stays light and every thumbnail loads."""
    from selenium.webdriver.support.ui import WebDriverWait
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from bench_report import synthetic
    built = synthetic(tmp_path_factory.mktemp("big"), 3000, 300)
    open_page(chrome, (built["report"] / "index.html").resolve().as_uri())
    js(chrome, "window.scrollTo(0, 4000)")
    js(chrome, "return new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
    js(chrome, "window.scrollTo(0, document.body.scrollHeight / 2)")  # a jump
    js(chrome, "return new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
    WebDriverWait(chrome, 5).until(lambda d: js(d, "return document.querySelectorAll('#grid .card').length > 0 && "
                                                   "!document.querySelector('#grid .card[data-light]')"))
    WebDriverWait(chrome, 10).until(lambda d: js(d, "return [...document.querySelectorAll('#grid .card img')]"
                                                    ".every(i => i.complete && i.naturalWidth > 0)"))
    cards = js(chrome, "return [...document.querySelectorAll('#grid .card')].map(c => "
                       "[+c.dataset.pos, c.querySelector('.id').textContent, c.dataset.id])")
    assert all(text == cid for _, text, cid in cards) and min(p for p, _, _ in cards) > 1000


@needs_chromium
def test_every_line_of_the_tallest_grid_cards_fits_inside_them(tmp_path_factory, chrome):
    """The grid's cards have a fixed height: a ranked card dropped as the bottom fraction
    (reject box, score, two lines of why, source, its ranked status, signals, id) shows
    every line inside its border; its id was once pushed out by the status line."""
    tree = build_results(tmp_path_factory.mktemp("fit"), drop_bottom_fraction=0.3)
    make_report(tree, cfg={"thumb": 24, "thresholds": {"min_face": 250}})
    open_page(chrome, (tree["R"] / "report" / "index.html").resolve().as_uri())
    show_grid(chrome)
    cards = js(chrome, """return [...document.querySelectorAll('#grid .card')].map(c => {
        const inner = c.getBoundingClientRect().bottom - parseFloat(getComputedStyle(c).paddingBottom)
                      - parseFloat(getComputedStyle(c).borderBottomWidth);
        const lines = [...c.querySelectorAll('figcaption > div, .reject-label')]
          .filter(d => d.offsetParent !== null && d.textContent);
        return {id: c.dataset.id, lines: lines.map(d => d.className + ': ' + d.textContent),
                over: Math.max(...lines.map(d => d.getBoundingClientRect().bottom - inner))};})""")
    tallest = [c for c in cards if any(line == "reason: ranked: bottom_fraction" for line in c["lines"])]
    assert tallest and all(len(c["lines"]) == 7 for c in tallest), cards
    assert all(c["over"] <= 0 for c in cards), [c for c in cards if c["over"] > 0]
    assert all(f"id: {c['id']}" in c["lines"] for c in cards)


@needs_chromium
def test_near_misses_of_the_bottom_fraction_sit_either_side_of_its_cut(tmp_path_factory, chrome):
    """rank.drop_bottom_fraction's near misses (built by the page from the ranking): its
    value is the fraction the cut dropped, the dropped cards are that cut's best-scored
    (closest first), the kept cards the worst-scored survivors, every kept score above every
    dropped one, and the advice names the fraction one face less."""
    tree = build_results(tmp_path_factory.mktemp("nearcut"), drop_bottom_fraction=0.3)
    make_report(tree, cfg={"thumb": 24, "thresholds": {"min_face": 250}})
    score = {s.id: s.score for s in tree["scores"]}
    ranked = read_manifest(tree["R"] / "ranked" / "manifest.tsv")
    cut = sorted((r.id for r in ranked if not r.kept and "bottom_fraction" in r.reason), key=lambda i: -score[i])
    survivors = sorted((r.id for r in ranked if r.kept), key=lambda i: score[i])
    n = len(score)
    assert cut and survivors

    open_page(chrome, (tree["R"] / "report" / "index.html").resolve().as_uri())
    chrome.find_element("css selector", "#tabs a[data-tab='near']").click()
    sec = chrome.find_element("css selector", "#near section[data-setting='rank.drop_bottom_fraction']")
    assert sec.find_element("css selector", "h3").text == f"rank.drop_bottom_fraction = {round(len(cut) / n, 4):g}"
    assert sec.find_element("css selector", ".advice").text.startswith(
        f"lowering rank.drop_bottom_fraction to {(len(cut) - 1) / n:.4f} adds 1 face")
    cards = js(chrome, """return [...arguments[0].querySelectorAll('.card')].map(c =>
        [c.dataset.id, c.classList.contains('near-kept'), c.querySelector('.label').textContent])""", sec)
    dropped = [cid for cid, kept_, _ in cards if not kept_]
    inside = [cid for cid, kept_, _ in cards if kept_]
    assert dropped == cut[:6] and inside == survivors[:6]
    assert min(score[i] for i in inside) > max(score[i] for i in dropped)
    assert all(label == f"{'kept' if k else 'dropped'}, score {score[cid]:.4f}" for cid, k, label in cards)
