"""The review page at scale: a synthetic 100,000-image report opened in headless Chromium.

    python bench/bench_report.py --images 100000 --drops 10000 --out /tmp/fp-report

Builds the page the way pipeline.report does (check_data + render_index + the assets +
ranking data with two signals), with thumbnails that are real JPEGs: 200 distinct
thumbnails made from the test images, hard-linked under every image's name, so every
file the page asks for exists. Then, in headless Chromium from disk:

- page weight: bytes of every file the page loads before the first thumbnail;
- open time: navigation start -> review.js done (grid, drop galleries, histograms built);
- scrolling: the window scrolled from top to bottom of the grid in 300 steps, one step a
  frame; frame times (median, p95, max), DOM cards alive, and a filter change.

Also times the Python side (check_data + writing check.js/ranking.js for N images) and
the thumbnail maker on real test images (ms per thumbnail, 1 process).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import time
from collections import Counter
from pathlib import Path

from common import TESTDATA, machine

from pipeline.manifest import atomic_write_text
from pipeline.rank import Score
from pipeline.report import (FunnelRow, Item, check_data, copy_assets, data_script, explain_scores, make_images,
                             render_index, signal_info, source_preview_name, thumb_name)


def synthetic(out: Path, n_images: int, n_drops: int, seed: int = 1) -> dict:
    rng = random.Random(seed)
    report = out / "report"
    shutil.rmtree(out, ignore_errors=True)
    (report / "thumbs").mkdir(parents=True)
    (report / "sources").mkdir()
    # 200 real thumbnails and 50 source previews from the test images
    pictures = sorted(p for p in TESTDATA.glob("*.jpg"))[:10] + sorted(TESTDATA.glob("*.png"))[:5]
    base = {f"b{k:03d}.jpg": (str(pictures[k % len(pictures)]), 128) for k in range(200)}
    t0 = time.perf_counter()
    made = make_images(report / "thumbs", base, threads=1)
    thumb_ms = (time.perf_counter() - t0) * 1000 / len(base)
    prev = make_images(report / "sources", {f"p{k:02d}.jpg": (str(pictures[k % len(pictures)]), 1024)
                                             for k in range(50)}, threads=1)
    folders = [f"set{k:02d}" for k in range(40)]
    items = []
    for i in range(n_images):
        sid = f"{rng.getrandbits(64):016x}"
        src = f"{rng.choice(folders)}/img_{i:06d}.jpg"
        items.append(Item(f"{sid}-f0", src, "", str(out / "normalize" / f"{i % 64:02d}" / f"{sid}-f0.png"),
                          [rng.randint(0, 500), rng.randint(0, 500), 900, 900], f"/raw/{src}"))
    reasons = ["ingest: truncated", "crop: no_face", "clean: monochrome", "clean: too_small",
               "dedup: near_duplicate", "dedup: exact_duplicate"]
    clusters: dict = {}
    for k in range(n_drops):
        reason = reasons[k % len(reasons)]
        sid = f"{rng.getrandbits(64):016x}"
        it = Item(f"{sid}-f0", f"{rng.choice(folders)}/drop_{k:06d}.jpg", reason,
                  "" if reason.startswith("ingest") else f"/x/{sid}.png",
                  [[10, 10, 60, 60]] if reason == "crop: no_face" else None,
                  f"/raw/drop_{k}.jpg" if reason == "crop: no_face" else "")
        if "duplicate" in reason:
            keep = items[rng.randrange(n_images)].id
            dist = 0 if "exact" in reason else rng.randint(1, 4)
            it.note = f"duplicate of {keep}, distance {dist}"
            clusters.setdefault(keep, []).append([it.id, dist])
        items.append(it)
    # every image's thumbnail: a hard link to one of the 200
    names = list(made)
    t0 = time.perf_counter()
    for it in items:
        if it.image:
            os.link(report / "thumbs" / names[hash(it.id) % len(names)], report / "thumbs" / thumb_name(it.id))
    link_s = time.perf_counter() - t0
    # source previews: names point at the 50 made
    pnames = list(prev)
    previews = {}
    for it in items:
        if it.preview:
            name = source_preview_name(it.source)
            if name not in previews:
                os.link(report / "sources" / pnames[len(previews) % len(pnames)], report / "sources" / name)
                previews[name] = prev[pnames[len(previews) % len(pnames)]]
    thumbs = {thumb_name(it.id): (0, 0) for it in items if it.image}

    t0 = time.perf_counter()
    funnel_rows = [FunnelRow("ingest", n_images + n_drops, n_images + n_drops - n_drops // 6,
                             Counter({"truncated": n_drops // 6}), "files", "files", "files")]
    data = check_data("bench", items, [[k, v] for k, v in sorted(clusters.items())], thumbs, previews, report,
                      [], [], "fp-now", "characters/bench.rejects.txt", funnel_rows)
    atomic_write_text(report / "check.js", data_script("FACEPREP_CHECK", data))
    order = sorted(range(n_images), key=lambda _: rng.random())
    scores = sorted(rng.gauss(0, 1) for _ in range(n_images))
    # the three signals of rank.method combined; percentiles and "pulled down by" as the page gets them
    rows = [Score(items[i].id, s, abs(rng.gauss(0, .1)), items[i].source, None, "",
                  {"logit": s + rng.gauss(0, .3), "knn": rng.random(), "upright": rng.gauss(2, 1)})
            for i, s in zip(order, scores)]
    names = ["knn", "logit", "upright"]
    worse_than, decided = explain_scores(rows, names)
    ranking = {"datasetFingerprint": "fp-now", "ids": [r.id for r in rows],
               "score": [round(r.score, 6) for r in rows], "std": [round(r.std, 6) for r in rows],
               "stdMeaningful": True,
               "signals": {n: [round(r.signals[n], 6) for r in rows] for n in names},
               "signalInfo": {n: signal_info(n) for n in names}, "worseThan": worse_than, "decided": decided,
               "status": {}, "samples": None, "problems": []}
    atomic_write_text(report / "ranking.js", data_script("FACEPREP_RANKING", ranking))
    copy_assets(report)
    atomic_write_text(report / "index.html", render_index("bench", [], [], "characters/bench.rejects.txt"))
    py_s = time.perf_counter() - t0
    return {"report": report, "thumb_ms": thumb_ms, "link_s": link_s, "python_s": py_s}


SCROLL = """
// mode 'wheel': 240 frames of 120 px from the middle of the grid (reading down the list);
// mode 'jump': 240 frames spread over the whole grid (dragging the scrollbar)
const mode = arguments[0], done = arguments[arguments.length - 1];
const grid = document.getElementById('grid');
const top = grid.getBoundingClientRect().top + window.scrollY;
const end = top + grid.offsetHeight - window.innerHeight;
const start = mode === 'wheel' ? (top + end) / 2 : top;
const steps = 240, times = [], cards = [];
const stats = window.faceprepReview.gridStats, before = {renders: stats.renders, ms: stats.ms};
let k = 0, last = performance.now();
function step(now) {
  times.push(now - last); last = now;
  cards.push(grid.children.length);
  if (k > steps) { done({times: times.slice(2), cards: Math.max(...cards), height: grid.offsetHeight,
                         renderMs: (stats.ms - before.ms) / Math.max(1, stats.renders - before.renders)}); return; }
  window.scrollTo(0, mode === 'wheel' ? start + 120 * k : top + (end - top) * k / steps);
  k++;
  requestAnimationFrame(step);
}
window.scrollTo(0, start);
requestAnimationFrame(() => requestAnimationFrame(step));
"""


def browse(report: Path, runs: int, screenshot: str | None = None) -> dict:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,900",
                 f"--user-data-dir={report.parent / 'chrome-profile'}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(options=opts, service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"))
    driver.set_script_timeout(300)
    out = {"open_ms": [], "wall_ms": []}
    try:
        for _ in range(runs):
            driver.get("about:blank")
            t0 = time.perf_counter()
            driver.get(report.joinpath("index.html").resolve().as_uri())
            WebDriverWait(driver, 120).until(lambda d: d.execute_script(
                "return !!(window.faceprepReview && window.faceprepReview.ready)"))
            out["wall_ms"].append((time.perf_counter() - t0) * 1000)
            out["open_ms"].append(driver.execute_script("return window.faceprepReview.readyAt"))
        out["shown"] = driver.execute_script("return window.faceprepReview.shown()")
        if screenshot:  # the first screen, as a user sees it on opening
            driver.execute_script("window.scrollTo(0, 0)")
            driver.execute_async_script("const done = arguments[0]; const imgs = [...document.querySelectorAll('#grid img')];"
                                        "Promise.all(imgs.map(i => i.complete ? 0 : new Promise(r => { i.onload = i.onerror = r; })))"
                                        ".then(() => requestAnimationFrame(() => done()));")
            driver.save_screenshot(screenshot)
        for mode in ("wheel", "jump"):
            scroll = driver.execute_async_script(SCROLL, mode)
            t = sorted(scroll["times"])
            out[mode] = {"fps": round(1000 * len(t) / sum(t), 1), "frame_median_ms": statistics.median(t), "frame_p95_ms": t[int(len(t) * 0.95)],
                         "frame_max_ms": t[-1], "frames_over_50ms": sum(v > 50 for v in t),
                         "frames": len(t), "max_cards_in_dom": scroll["cards"],
                         "render_script_ms_per_frame": round(scroll["renderMs"], 2)}
            out["grid_height_px"] = scroll["height"]
        t0 = time.perf_counter()
        driver.execute_script("const f = document.getElementById('folder'); f.value = 'set07';"
                              "f.dispatchEvent(new Event('change'));")
        out["filter_ms"] = (time.perf_counter() - t0) * 1000
        out["filtered"] = driver.execute_script("return window.faceprepReview.shown()")
    finally:
        driver.quit()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=100_000)
    p.add_argument("--drops", type=int, default=10_000)
    p.add_argument("--out", default="/tmp/fp-report-bench")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--screenshot", help="save the first screen (1280x900) as this PNG")
    a = p.parse_args()
    built = synthetic(Path(a.out), a.images, a.drops)
    report = built["report"]
    weight = {f: (report / f).stat().st_size for f in ("index.html", "review.css", "review.js", "check.js", "ranking.js")}
    res = browse(report, a.runs, a.screenshot)
    load = os.getloadavg()
    print(json.dumps({"machine": machine(), "loadavg": load, "images": a.images, "drops": a.drops,
                      "page_bytes": weight, "page_total_mb": round(sum(weight.values()) / 2**20, 2),
                      **{k: v for k, v in built.items() if k != "report"}, **res}, indent=1, default=str))


if __name__ == "__main__":
    main()
