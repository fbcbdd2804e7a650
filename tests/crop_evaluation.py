"""Detector evaluation for tests and bench only (the crop stage does not use it): face
counts as precision/recall, box matching as in PASCAL VOC, padding bars."""
from __future__ import annotations

import numpy as np
from PIL import Image

from pipeline.crop import iou


def count_metrics(pairs) -> dict:
    """Precision/recall from (faces found, faces expected) per image: an image with 3
    found and 2 expected counts 2 true and 1 false positive. None where undefined
    (nothing found, or nothing to find)."""
    tp = sum(min(found, expected) for found, expected in pairs)
    fp = sum(max(found - expected, 0) for found, expected in pairs)
    fn = sum(max(expected - found, 0) for found, expected in pairs)
    return {"tp": tp, "fp": fp, "fn": fn,
            "precision": tp / (tp + fp) if tp + fp else None,
            "recall": tp / (tp + fn) if tp + fn else None}


def flat_border_strips(im: Image.Image, depth: int = 4, max_std: float = 1.0) -> list[str]:
    """Edges ("left", "top", "right", "bottom") whose outer ``depth`` pixel rows are one
    flat colour (every channel's standard deviation <= ``max_std``): padding bars. Real
    content, even a plain background, carries JPEG or paper noise above that."""
    a = np.asarray(im.convert("RGB"), dtype=np.float32)
    strips = {"left": a[:, :depth], "top": a[:depth], "right": a[:, -depth:], "bottom": a[-depth:]}
    return [edge for edge, strip in strips.items()
            if strip.reshape(-1, 3).std(axis=0).max() <= max_std]


def match_boxes(found, truth, min_iou: float = 0.5) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives): each true box matched at most
    once, best overlaps first, as in PASCAL VOC scoring."""
    pairs = sorted(((iou(f, t), i, j) for i, f in enumerate(found) for j, t in enumerate(truth)),
                   reverse=True)
    used_found, used_truth = set(), set()
    for overlap, i, j in pairs:
        if overlap >= min_iou and i not in used_found and j not in used_truth:
            used_found.add(i)
            used_truth.add(j)
    tp = len(used_found)
    return tp, len(found) - tp, len(truth) - tp
