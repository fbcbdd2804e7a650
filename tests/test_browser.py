"""The review loop for real: the workflow on a tiny config, its report in headless Chromium,
two reject ticks, the downloaded rejects.txt fed back, and what a rejects edit reschedules.

Chromium is Debian's (`apt-get install chromium chromium-driver`; .ci/run installs it).
The browser tests skip, saying so, only where it is absent; the dry-run tests always run.
"""
from __future__ import annotations

import os
import shutil
import time
import zipfile
from pathlib import Path

import pytest

from conftest import copy_testdata, run_snakemake, scheduled_jobs
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
RANKED_STAGE = {"ranked_export": 1, "report": 1, "ranked_dataset": 1}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A workdir where `snakemake ranked_dataset` has run to the end on the tiny config."""
    workdir = tmp_path_factory.mktemp("loop")
    copy_testdata(workdir / "raw", RAW)
    run_snakemake(workdir, "ranked_dataset")
    assert scheduled_jobs(workdir, "ranked_dataset") == {}
    return workdir


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(flag)
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                           "download.prompt_for_download": False,
                                           "safebrowsing.enabled": False})
    driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    try:
        yield driver, downloads
    finally:
        driver.quit()


def review_in_browser(driver, downloads: Path, page: Path, n_ticks: int) -> tuple[list[str], Path]:
    """Open the page from disk, tick the first ``n_ticks`` unticked images, download.

    Returns (the ticked ids, the downloaded file)."""
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    driver.get(page.resolve().as_uri())
    # the hostile file name is text, not markup: no alert, no injected <img src=x>
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text
    assert not driver.find_elements(By.CSS_SELECTOR, "img[src='x']")
    assert "<img src=x onerror=alert(1)>.png" in driver.find_element(By.TAG_NAME, "body").text
    images = driver.find_elements(By.CSS_SELECTOR, ".card img, img.wide, img[alt='score histogram']")
    loaded = "return arguments[0].complete && arguments[0].naturalWidth > 0"
    WebDriverWait(driver, 10).until(lambda d: all(d.execute_script(loaded, im) for im in images),
                                    "thumbnails, samples and histogram load from disk")
    assert len(images) >= 2 + 8
    count_before = int(driver.find_element(By.ID, "reject-count").text)
    boxes = [b for b in driver.find_elements(By.CSS_SELECTOR, "input.reject") if not b.is_selected()]
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


def dataset_counts(workdir: Path, folder: str) -> tuple[int, int, int]:
    """(manifest keeps, ZIP images, TFRecords records at the top level)."""
    import tensorflow as tf
    base = workdir / R / folder
    keeps = len(list(kept(read_manifest(base / "manifest.tsv"))))
    with zipfile.ZipFile(base / "tiny.zip") as zf:
        pngs = sum(n.endswith(".png") for n in zf.namelist())
    records = sum(1 for _ in tf.data.TFRecordDataset(str(base / "tfrecords" / "tiny-r05.tfrecords")))
    return keeps, pngs, records


# ---------------------------------------------------------------- dry runs (no browser)

def test_rejects_edit_reschedules_only_reexport_and_report(finished_run):
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
    # the bottom fraction and the rejects path are ranked_export's business, not rank's
    assert scheduled_jobs(finished_run, "ranked_dataset",
                          {"rank": {"shuffles": 2, "drop_bottom_fraction": 0.25}}) == RANKED_STAGE
    assert scheduled_jobs(finished_run, "ranked_dataset",
                          {"rank": {"shuffles": 2, "rejects": "elsewhere.txt"}}) == RANKED_STAGE
    # scoring keys rerun rank (the network and dataset stay)
    assert scheduled_jobs(finished_run, "ranked_dataset", {"rank": {"shuffles": 3}}) == \
        {"rank": 1, **RANKED_STAGE}
    # the page's own settings rerun only the page
    assert scheduled_jobs(finished_run, "ranked_dataset", {"report": {"bottom_k": 3}}) == \
        {"report": 1, "ranked_dataset": 1}


def test_scores_and_report_of_the_real_run(finished_run):
    from pipeline.rank import read_scores
    dataset = list(kept(read_manifest(finished_run / R / "export" / "manifest.tsv")))
    scores = read_scores(finished_run / R / "rank" / "scores.tsv")
    assert sorted(s.id for s in scores) == sorted(r.id for r in dataset) and len(dataset) == 8
    assert [s.score for s in scores] == sorted(s.score for s in scores)
    assert HOSTILE in {s.source for s in scores}
    page = (finished_run / R / "report" / "index.html").read_text(encoding="utf-8")
    assert "&lt;img src=x onerror=alert(1)&gt;.png" in page and "<img src=x" not in page
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
    assert dataset_counts(finished_run, "export") == (8, 8, 8)  # the dataset itself is untouched

    # the rebuilt page preticks the two; downloading again without changes gives the same file
    downloaded.unlink()
    _, again = review_in_browser(driver, downloads, finished_run / R / "report" / "index.html", 0)
    assert read_rejects(again) == set(ticked)
