"""SCRFD's model input and raw outputs: letterbox and normalise in, identify and decode out.

SCRFD (InsightFace) is an anchor-free detector with three stride levels (8, 16, 32) and
two anchor centres per feature-map cell. For each level it outputs a face score, four
box distances (left, top, right, bottom) and optionally five landmark offsets, all in
units of the stride.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Iterable, Sequence

import cv2
import numpy as np

from .detections import Detections
from .errors import UserError
from .nms import nms

STRIDES = (8, 16, 32)
INPUT_MEAN = 127.5  # SCRFD normalisation: (pixel - 127.5) / 128, RGB
INPUT_STD = 128.0
KIND_CHANNELS = {"score": 1, "bbox": 4, "kps": 10}
CHANNELS_TO_KIND = {c: k for k, c in KIND_CHANNELS.items()}
KINDS = tuple(KIND_CHANNELS)

RawOutputs = dict  # {stride: {"score": (N,), "bbox": (N, 4), "kps": (N, 10) or absent}}


def letterbox(image: np.ndarray, input_hw: tuple[int, int]) -> tuple[np.ndarray, float]:
    """Resize keeping the aspect ratio into the top-left of a zero canvas (as InsightFace does).

    Returns the BGR uint8 canvas and the scale from original to input pixels.
    """
    height, width = input_hw
    img_h, img_w = image.shape[:2]
    scale = min(height / img_h, width / img_w)
    new_h = min(height, max(1, int(img_h * scale)))  # truncation and bilinear, as InsightFace
    new_w = min(width, max(1, int(img_w * scale)))
    canvas = np.zeros((height, width, 3), np.uint8)
    canvas[:new_h, :new_w] = cv2.resize(image, (new_w, new_h))
    return canvas, scale


def normalize(canvas_bgr: np.ndarray, layout: str) -> np.ndarray:
    """BGR uint8 canvas -> float32 (x - 127.5) / 128 in RGB, batch of one, NCHW or NHWC."""
    rgb = cv2.cvtColor(canvas_bgr, cv2.COLOR_BGR2RGB)
    tensor = (rgb.transpose(2, 0, 1) if layout == "NCHW" else rgb).astype(np.float32)
    tensor -= INPUT_MEAN
    tensor *= 1.0 / INPUT_STD
    return tensor[None]


def preprocess(image: np.ndarray, input_hw: tuple[int, int], layout: str = "NCHW"
               ) -> tuple[np.ndarray, float]:
    """The one preprocessing used everywhere (inference, calibration, parity checks)."""
    canvas, scale = letterbox(image, input_hw)
    return normalize(canvas, layout), scale
@dataclass(frozen=True)
class OutputSpec:
    """What one raw model output is: its kind (score/bbox/kps) and stride."""

    kind: str
    stride: int


def identify_outputs(shapes: Sequence[Sequence[int]], input_hw: tuple[int, int]
                     ) -> tuple[list[OutputSpec], int]:
    """Name SCRFD outputs from their shapes alone (output names differ between exports).

    Each output is (N, C) or (1, N, C) with C = 1 (score), 4 (box) or 10 (landmarks) and
    N = cells(stride) * anchors. Returns one OutputSpec per output and the anchors per cell.
    """
    height, width = input_hw
    groups: dict[str, list[tuple[int, int]]] = {}
    for position, shape in enumerate(shapes):
        shape = [int(d) for d in shape]
        channels = shape[-1] if shape else 0
        rows = int(np.prod(shape[:-1])) if len(shape) >= 2 else 0
        if channels not in CHANNELS_TO_KIND or len(shape) < 2 or any(d != 1 for d in shape[:-2]):
            raise UserError(f"not an SCRFD model: output {position} has shape {shape}, expected "
                            "(N, 1|4|10) per stride")
        groups.setdefault(CHANNELS_TO_KIND[channels], []).append((rows, position))
    if set(groups) not in ({"score", "bbox"}, {"score", "bbox", "kps"}):
        raise UserError(f"not an SCRFD model: found outputs {sorted(groups)}, expected score and "
                        "bbox (and optionally kps) for strides 8, 16, 32")
    specs: list[OutputSpec | None] = [None] * len(shapes)
    anchors = None
    for kind, members in groups.items():
        if len(members) != len(STRIDES):
            raise UserError(f"not an SCRFD model: {len(members)} {kind} outputs, expected "
                            f"{len(STRIDES)} (strides {STRIDES})")
        for stride, (rows, position) in zip(STRIDES, sorted(members, reverse=True)):
            cells = (height // stride) * (width // stride)
            if rows % cells or (anchors is not None and rows // cells != anchors):
                raise UserError(f"{kind} output at stride {stride} has {rows} rows; the input "
                                f"{height}x{width} gives {cells} cells, so the model does not "
                                "match this input size or is not SCRFD")
            anchors = rows // cells
            specs[position] = OutputSpec(kind, stride)
    return specs, int(anchors)  # type: ignore[return-value]


@functools.lru_cache(maxsize=64)
def anchor_centers(height: int, width: int, stride: int, anchors: int) -> np.ndarray:
    """(x, y) of every anchor, row-major, each repeated `anchors` times; cached per input size."""
    ys, xs = np.mgrid[: height // stride, : width // stride]
    centers = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float32) * stride
    centers = np.repeat(centers, anchors, axis=0)
    centers.setflags(write=False)
    return centers


def group_outputs(pairs: Iterable[tuple[OutputSpec, np.ndarray]]) -> RawOutputs:
    """[(OutputSpec, array)] -> {stride: {kind: (N, C) array}} with scores flattened to (N,)."""
    raw: RawOutputs = {stride: {} for stride in STRIDES}
    for spec, array in pairs:
        array = array.reshape(-1, KIND_CHANNELS[spec.kind])
        raw[spec.stride][spec.kind] = array[:, 0] if spec.kind == "score" else array
    return raw


def distance2bbox(centers: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """Anchor centres (N, 2) and left/top/right/bottom distances (N, 4) -> x1 y1 x2 y2 (N, 4)."""
    return np.hstack([centers - distances[:, :2], centers + distances[:, 2:]])


def distance2kps(centers: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Anchor centres (N, 2) and five (dx, dy) offsets (N, 10) -> landmarks (N, 5, 2)."""
    return offsets.reshape(-1, 5, 2) + centers[:, None, :]


def decode(raw: RawOutputs, input_hw: tuple[int, int], anchors: int, score_threshold: float
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Raw outputs -> candidate boxes, scores, landmarks in model-input pixels (before NMS)."""
    boxes, scores, points = [], [], []
    with_kps = all("kps" in level for level in raw.values())
    for stride, level in raw.items():
        keep = np.flatnonzero(level["score"] >= score_threshold)
        centers = anchor_centers(*input_hw, stride, anchors)[keep]
        boxes.append(distance2bbox(centers, level["bbox"][keep] * stride))
        scores.append(level["score"][keep])
        if with_kps:
            points.append(distance2kps(centers, level["kps"][keep] * stride))
    landmarks = np.concatenate(points).astype(np.float32) if with_kps else None
    return (np.concatenate(boxes).astype(np.float32), np.concatenate(scores).astype(np.float32),
            landmarks)


def postprocess(raw: RawOutputs, input_hw: tuple[int, int], anchors: int, scale: float,
                score_threshold: float, nms_threshold: float, max_faces: int = 0) -> Detections:
    """decode -> NMS -> undo the letterbox: the one post-processing every backend uses."""
    boxes, scores, landmarks = decode(raw, input_hw, anchors, score_threshold)
    return suppress(boxes, scores, landmarks, scale, nms_threshold, max_faces)


def suppress(boxes: np.ndarray, scores: np.ndarray, landmarks: np.ndarray | None, scale: float,
             nms_threshold: float, max_faces: int = 0) -> Detections:
    """NMS over decoded candidates, best first, then back to image pixels."""
    keep = nms(boxes, scores, nms_threshold)
    if max_faces > 0:
        keep = keep[:max_faces]
    return Detections(boxes[keep], scores[keep],
                      None if landmarks is None else landmarks[keep]).scaled(scale)
