"""CPU time per image for each stage beside the floor (one thread, PIL decode+resize+encode).

    python bench/bench_perimage.py [--reps 3] [--resolution 512] [--min-face 48]

In one process, one thread (OpenCV and the thread pools set to 1), on the decodable
top-level images of ../shared/testdata, ``--reps`` times over. CPU time (user + sys of the
process, ``time.process_time``), not wall time: the machine is shared. Start-up costs
(imports, TensorFlow, the cascade) are not in the per-image figures; they are printed apart.
  floor       Image.open + convert RGB + resize to R x R Lanczos + PNG encode (compress 1)
  decode      pipeline.imaging.load_rgb alone: what ingest's check and crop each pay
  ingest      pipeline.ingest.ingest_file (decode check, metadata)
  crop        pipeline.crop.crop_image (animeface, --min-face), per source image: the
              defaults, without the rotated passes, and with the seed's decisions (one
              upright pass); beside it the seed's own cascade call (decode + one pyramid)
              and with stored results: the first run (detect/check + store), then a
              crop.margin edit from the stored detections, ingest from stored checks
  clean       pipeline.clean.clean_row, per face
  normalize   pipeline.normalize.normalize_row (PNG), per face; and the same with the old
              validation (re-decode of the written file) for comparison
  export      per face: decode + levels + TFRecord Examples + the ZIP member; new (integer
              levels, PNG bytes into the ZIP) and old (float levels, decode + re-encode)
Per-source figures (floor, ingest, crop) are per raw image; prep per raw image = crop +
faces per image x (clean + normalize).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
from pathlib import Path

from common import REPO, TESTDATA, machine

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("FACEPREP_ANIMEFACE_CASCADE", str(TESTDATA.parent / "models" / "lbpcascade_animeface.xml"))


def cpu_per(fn, items, reps):
    t0 = time.process_time()
    out = None
    for _ in range(reps):
        out = [fn(x) for x in items]
    return (time.process_time() - t0) / (reps * max(1, len(items))) * 1000, out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--min-face", type=int, default=48)
    a = ap.parse_args(argv)

    import cv2
    import yaml
    from PIL import Image
    cv2.setNumThreads(1)

    from pipeline import crop, export, ingest, normalize
    from pipeline.clean import clean_row
    from pipeline.manifest import ShardDir, kept

    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    res = a.resolution
    files = sorted(p for p in TESTDATA.iterdir() if p.suffix.lower() in (".jpg", ".png")
                   and p.is_file())
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {machine()}; "
          f"load average {os.getloadavg()[0]:.1f}; {len(files)} images x {a.reps} reps; "
          f"CPU ms per image, one thread")

    def floor(p):
        buf = io.BytesIO()
        with Image.open(p) as im:
            im.convert("RGB").resize((res, res), Image.Resampling.LANCZOS, reducing_gap=3.0) \
                .save(buf, format="PNG", compress_level=1)
        return len(buf.getvalue())
    floor_ms, _ = cpu_per(floor, files, a.reps)

    # the decode ingest's check and crop each pay (decode once would save one of them)
    from pipeline.imaging import load_rgb
    decode_ms, _ = cpu_per(lambda p: load_rgb(p)[0].size, files, a.reps)

    work = Path(tempfile.mkdtemp(prefix="perimage-"))
    icfg = {**cfg["ingest"]}
    ingest_ms, ingested = cpu_per(lambda p: ingest.ingest_file(p.name, str(TESTDATA), icfg, None),
                                  files, a.reps)
    ingested = list(kept(ingested))

    ccfg = {**cfg["crop"], "method": "animeface", "min_face": a.min_face}
    t0 = time.process_time()
    detector = crop.make_detector(ccfg, cfg["models"])
    detector_s = time.process_time() - t0
    with ShardDir(work / "crop") as out:
        crop_ms, cropped = cpu_per(lambda r: crop.crop_image(r, ccfg, detector, out), ingested, a.reps)
    # what each detection pass costs: the defaults run up to 4 (upright, +-15 degrees, and
    # the small-face pass on pictures without a face); the seed runs the upright one
    crop_variants = {}
    for label, changes in (("no rotated passes", {"rotate_pass": False}),
                           ("seed decisions (upright pass only, box as found)",
                            {"rotate_pass": False, "small_faces": False, "margin": 0.0,
                             "border": "clamp"})):
        vcfg = {**ccfg, **changes}
        vdetector = crop.make_detector(vcfg, cfg["models"])
        with ShardDir(work / "crop-variant") as out:
            crop_variants[label], _ = cpu_per(lambda r: crop.crop_image(r, vcfg, vdetector, out),
                                              ingested, a.reps)
    # detect once: the defaults with a store (first pass: detect + store each image), then
    # a framing edit (crop.margin) cut from the stored detections; ingest likewise
    stored = {}
    store_dir = work / "stores"
    store = crop.DetectionStore(store_dir / "detections", ccfg, cfg["models"])
    with ShardDir(work / "crop-store") as out:
        stored["crop, detect + store (first run)"], _ = cpu_per(
            lambda r: crop.crop_image(r, ccfg, detector, out, store), ingested, 1)
    recut = {**ccfg, "margin": 0.4}
    store = crop.DetectionStore(store_dir / "detections", recut, cfg["models"])
    with ShardDir(work / "crop-recut") as out:
        stored["crop, margin edit from stored detections"], _ = cpu_per(
            lambda r: crop.crop_image(r, recut, detector, out, store), ingested, a.reps)
    assert store.detected == 0, "the re-cut ran the detector"
    checks = ingest.check_store(store_dir / "ingest", icfg)
    stored["ingest, check + store (first run)"], _ = cpu_per(
        lambda p: ingest.ingest_file(p.name, str(TESTDATA), icfg, None, store=checks), files, 1)
    stored["ingest, from stored checks"], _ = cpu_per(
        lambda p: ingest.ingest_file(p.name, str(TESTDATA), icfg, None, store=checks), files, a.reps)
    cascade = cv2.CascadeClassifier(str(crop.resolve_cascade_path(cfg["models"])))

    def seed_cascade(p):  # the seed's crop.py call: decode, equalize, one pyramid
        image = cv2.imread(str(p))
        gray = cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
        return cascade.detectMultiScale(gray, scaleFactor=ccfg["scale_factor"],
                                        minNeighbors=ccfg["min_neighbors"],
                                        minSize=(a.min_face, a.min_face))
    cascade_ms, _ = cpu_per(seed_cascade, files, a.reps)
    faces_in = [r for rs in cropped for r in rs if r.kept]
    clean_cfg = cfg["clean"]
    clean_ms, cleaned = cpu_per(lambda r: clean_row(r, clean_cfg), faces_in, a.reps)
    faces = list(kept(cleaned))

    ncfg = {**cfg["normalize"], "resolution": res, "format": "png"}

    def old_normalize(r, out):  # the previous recipe: encode to the file, decode it again
        im, _ = normalize.load_rgb(r.path, tuple(ncfg["background"]))
        square, _ = normalize.fit_square(im, res, ncfg["fit"], ncfg["background"])
        tmp, final = out.path(f"old-{r.id}.png")
        normalize.encode(square, tmp, "png", ncfg["quality"])
        assert normalize.validation_error(tmp, res, "png") == ""
        return r.keep(path=final)

    with ShardDir(work / "normalize") as out:
        norm_ms, normed = cpu_per(lambda r: normalize.normalize_row(r, out, ncfg), faces, a.reps)
        norm_old_ms, _ = cpu_per(lambda r: old_normalize(r, out), faces, a.reps)
    normed = list(kept(normed))

    t0 = time.process_time()
    import tensorflow as tf
    tf_import_s = time.process_time() - t0

    def example(shape, data):
        return tf.train.Example(features=tf.train.Features(feature={
            "shape": tf.train.Feature(int64_list=tf.train.Int64List(value=shape)),
            "data": tf.train.Feature(bytes_list=tf.train.BytesList(value=[data]))})) \
            .SerializeToString(deterministic=True)

    def export_new(r):
        n = sum(len(example(s, d)) for s, d in export._level_bytes((r.path, res)))
        return n + len(export._zip_member(r.path))

    def export_old(r):
        img = export.load_chw(r.path)
        n = sum(len(example(q.shape, q.tobytes())) for q in export.lod_images_float(img))
        buf = io.BytesIO()
        with Image.open(r.path) as im:
            im.convert("RGB").save(buf, format="PNG", compress_level=0, optimize=False)
        return n + len(buf.getvalue())
    export_ms, _ = cpu_per(export_new, normed, a.reps)
    export_old_ms, _ = cpu_per(export_old, normed, a.reps)

    per_src = len(faces) / max(1, len(ingested))
    prep = crop_ms + per_src * (clean_ms + norm_ms)
    result = {
        "floor_ms": floor_ms, "decode_load_rgb_ms": decode_ms, "ingest_ms": ingest_ms, "crop_ms_per_source": crop_ms,
        "faces_per_source": per_src, "clean_ms_per_face": clean_ms,
        "normalize_ms_per_face": norm_ms, "normalize_old_ms_per_face": norm_old_ms,
        "export_ms_per_face": export_ms, "export_old_ms_per_face": export_old_ms,
        "prep_ms_per_source": prep, "prep_over_floor": prep / floor_ms,
        "seed_cascade_ms_per_source": cascade_ms,
        "crop_ms_per_source_by_config": crop_variants,
        "stored_results_ms_per_source": stored,
        "prep_over_floor_by_config": {k: (v + per_src * (clean_ms + norm_ms)) / floor_ms
                                      for k, v in crop_variants.items()},
        "startup_s": {"cascade": detector_s, "tensorflow_import": tf_import_s},
    }
    print(json.dumps({k: (round(v, 2) if isinstance(v, float) else
                          {kk: round(vv, 2) for kk, vv in v.items()} if isinstance(v, dict) else v)
                      for k, v in result.items()}, indent=1))
    import shutil
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
