"""Exact greedy non-maximum suppression compiled by numba, about ten times faster than the
numpy version it replaced on thousands of crowded candidates (a crowd photo at score 0.02,
tiles), and beside it the plain greedy loop it must equal (the tests compare the two).

Greedy NMS visits boxes best first and keeps one unless an already kept box overlaps it with
IoU > t. The compiled NMS of ONNX Runtime, LiteRT and OpenCV compare each candidate with every
kept box (torchvision's CPU kernel each kept box with every later one); on crowd_selfie.jpg at
score 0.02, 3,010 of 5,241 candidates are kept, and those loops cost more than the numpy
version did (tests/bench_nms.py times them). Here each kept box looks only at the few boxes
that could overlap it, found through grids, and computes the IoU exactly as the reference
does, so the kept indices are identical. The kernel (nms_kernel.py) is compiled once by
numba and cached in scrfdkit/__pycache__; a process loads it (about half a second) on its
first large set only: below COMPILED_FROM candidates, as at the photo default score, every
pair's IoU at once (the reference's own arithmetic) is as fast, so photos and videos never
wait for numba.
"""
from __future__ import annotations

import numpy as np

COMPILED_FROM = 256  # candidates; below, all pairs at once take about a millisecond


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices of the boxes greedy NMS keeps, highest score first; equal to `greedy_nms`.

    Ties are broken by position (stable sort), so equal scores never make boxes vanish,
    unlike cv2.dnn.NMSBoxes, which drops scores not strictly above its threshold.
    Boxes are x1 y1 x2 y2; float32 and float64 boxes are compared in their own precision
    (as numpy does in `greedy_nms`), any other type as float64.
    """
    boxes, scores = np.asarray(boxes), np.asarray(scores)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or scores.shape != boxes.shape[:1]:
        raise ValueError(f"nms needs (N, 4) boxes and (N,) scores, got {boxes.shape} "
                         f"and {scores.shape}")
    if not 0 <= iou_threshold <= 1:
        raise ValueError(f"iou_threshold must be between 0 and 1, got {iou_threshold}")
    if boxes.dtype not in (np.float32, np.float64):
        boxes = boxes.astype(np.float64)
    if len(boxes) < COMPILED_FROM:
        return _all_pairs_nms(boxes, scores, iou_threshold)
    boxes = np.ascontiguousarray(boxes)  # one compiled version per float type
    order = np.argsort(-scores, kind="stable").astype(np.int64, copy=False)
    from .nms_kernel import greedy  # numba loads on the first call only
    return greedy(boxes, order, boxes.dtype.type(iou_threshold))


def _all_pairs_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """greedy_nms over a matrix of every pair's IoU, computed as box_iou computes it."""
    overlaps = box_iou(boxes[:, None, :], boxes) > iou_threshold
    suppressed = np.zeros(len(boxes), bool)
    kept: list[int] = []
    for i in np.argsort(-scores, kind="stable"):
        if not suppressed[i]:
            kept.append(int(i))
            suppressed |= overlaps[i]
    return np.array(kept, dtype=np.int64)


# ----------------------------------------------------------------------------- reference
def box_iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of an x1 y1 x2 y2 box (or boxes, broadcast) with each of `others` (0 where the
    union is empty)."""
    x1 = np.maximum(box[..., 0], others[:, 0])
    y1 = np.maximum(box[..., 1], others[:, 1])
    x2 = np.minimum(box[..., 2], others[:, 2])
    y2 = np.minimum(box[..., 3], others[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)

    def area(b: np.ndarray) -> np.ndarray:
        return np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)

    union = area(box) + area(others) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def greedy_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Textbook greedy NMS, one box at a time: the slow definition `nms` must equal exactly."""
    kept: list[int] = []
    for i in np.argsort(-scores, kind="stable"):
        if not kept or not (box_iou(boxes[i], boxes[kept]) > iou_threshold).any():
            kept.append(int(i))
    return np.array(kept, dtype=np.int64)
