"""How far a .tflite strays from the ONNX model it was converted from, per output and stride.

The errors are in raw output units (probabilities for scores, stride units for boxes and
landmarks), over real photos, beside the subset that matters for AP: the anchors ONNX scores
at least CANDIDATE_SCORE, which can become detections.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..decode import KINDS, STRIDES, preprocess
from ..files import read_image
from ..runners import LiteRTRunner, OnnxRunner
from ..tables import markdown_table

CANDIDATE_SCORE = 0.02  # parity is also reported on anchors ONNX scores this high (AP counts them)
FLOAT32_TOLERANCE = 1e-3  # a float32 conversion must agree with ONNX this closely


def parity(onnx_path: Path, tflite_path: Path, images: list[Path]) -> dict[str, float]:
    """Largest |ONNX - TFLite| per output kind over the check images, in raw output units.

    Keys: kind ("bbox"), kind per stride ("bbox_8"), and kind over the anchors ONNX scores
    at least CANDIDATE_SCORE ("bbox_candidates"): the ones that can become detections, with
    their mean error too ("bbox_candidates_mean").
    """
    reference = OnnxRunner(onnx_path, threads=None)
    candidate = LiteRTRunner(tflite_path, threads=None)
    worst: dict[str, float] = {}
    totals: dict[str, list[float]] = {}

    def note(key: str, error: np.ndarray) -> None:
        if error.size:
            worst[key] = max(worst.get(key, 0.0), float(error.max()))
            total = totals.setdefault(key, [0.0, 0])
            total[0] += float(error.sum())
            total[1] += error.size

    for path in images:
        image = read_image(path)
        expected = reference.run(preprocess(image, reference.input_hw, "NCHW")[0])
        actual = candidate.run(preprocess(image, candidate.input_hw, candidate.layout)[0])
        for stride in STRIDES:
            keep = expected[stride]["score"] >= CANDIDATE_SCORE
            for kind, values in expected[stride].items():
                error = np.abs(values - actual[stride][kind])
                note(kind, error)
                note(f"{kind}_{stride}", error)
                note(f"{kind}_candidates", error[keep])
    for kind in KINDS:  # the typical error where it matters, beside the worst single anchor
        if f"{kind}_candidates" in totals:
            total, count = totals[f"{kind}_candidates"]
            worst[f"{kind}_candidates_mean"] = total / count
    return worst


def worst_error(worst: dict[str, float]) -> float:
    """The largest error over every output kind (what the float32 gate compares)."""
    return max(worst[kind] for kind in KINDS if kind in worst)


def parity_table(worst: dict[str, float], count: int) -> list[str]:
    """The parity result as a title line and a markdown table, one row per output kind."""
    header = ["output", "stride 8", "stride 16", "stride 32", "all", "candidates",
              "candidates, mean"]
    rows = []
    for kind in KINDS:
        if kind in worst:
            units = "probability" if kind == "score" else "stride units"
            rows.append([f"{kind} ({units})", *(f"{worst[f'{kind}_{s}']:.2e}" for s in STRIDES),
                         f"{worst[kind]:.2e}", f"{worst.get(f'{kind}_candidates', 0.0):.2e}",
                         f"{worst.get(f'{kind}_candidates_mean', 0.0):.2e}"])
    title = (f"parity against ONNX Runtime on {count} photo(s): max abs error per output "
             f"(candidates: anchors ONNX scores >= {CANDIDATE_SCORE:g})")
    return [title, *markdown_table(header, rows, left=len(header))]


def faces_parity(onnx_path: Path, tflite_path: Path, images: list[Path], score_threshold: float,
                 nms_threshold: float | None, max_faces: int) -> dict[str, float]:
    """A post-processed export (decoded, object-detector) beside the Python pipeline on ONNX
    (decode.postprocess with the graph's own thresholds): faces found by each, and over the
    faces both find (paired by rank, best first) the largest box, landmark (input pixels)
    and score differences."""
    from ..decode import postprocess
    from ..detector import SCRFD

    reference = OnnxRunner(onnx_path, threads=None)
    candidate = SCRFD(tflite_path, score_threshold=score_threshold,
                      nms_threshold=1.0 if nms_threshold is None else nms_threshold,
                      threads=None)
    result = {"faces_onnx": 0, "faces_tflite": 0, "box_px": 0.0, "landmark_px": 0.0,
              "score": 0.0}
    for path in images:
        image = read_image(path)
        tensor, scale = preprocess(image, reference.input_hw, "NCHW")
        expected = postprocess(reference.run(tensor), reference.input_hw, reference.anchors, 1.0,
                               score_threshold, 1.0 if nms_threshold is None else nms_threshold,
                               max_faces)
        actual = candidate.detect_prepared(preprocess(image, candidate.input_hw, "NHWC"))
        actual = actual.scaled(1.0 / scale)  # back to input pixels, as `expected` is
        result["faces_onnx"] += len(expected)
        result["faces_tflite"] += len(actual)
        both = min(len(expected), len(actual))
        if both:
            result["box_px"] = max(result["box_px"], float(
                np.abs(expected.boxes[:both] - actual.boxes[:both]).max()))
            result["score"] = max(result["score"], float(
                np.abs(expected.scores[:both] - actual.scores[:both]).max()))
            if expected.landmarks is not None and actual.landmarks is not None:
                result["landmark_px"] = max(result["landmark_px"], float(
                    np.abs(expected.landmarks[:both] - actual.landmarks[:both]).max()))
    return result


def faces_parity_line(result: dict[str, float], count: int) -> str:
    return (f"against the Python pipeline on ONNX, {count} photo(s): {result['faces_tflite']} "
            f"faces (ONNX {result['faces_onnx']}); largest difference over the faces both find, "
            f"best first: box {result['box_px']:.2e} px, landmarks {result['landmark_px']:.2e} "
            f"px, score {result['score']:.2e}")
