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
