"""Times greedy NMS implementations on real detector candidates and prints a markdown table.

    python tests/bench_nms.py [--repeats 101] [--shared ../shared] [--only WORD ...]

Sets: det_500m's candidates at score 0.02 (the WIDER evaluation's threshold) on crowd photos,
the whole-photo pass plus overlapping 640x640 tiles at scale 1 of the 5334x2767 crowd (what
tiling hands to NMS), and random crowded boxes with tied scores. Every implementation runs in
this one process, interleaved round by round; a cell is the median over the rounds. "identical"
means the same kept indices, in the same order, as scrfdkit.nms.greedy_nms on every set.

The library ops are made as exact as they can be: scores are replaced by their rank (no ties
left to their heaps, no score threshold to drop them), inverted boxes are flattened (they read
corners as min/max), and LiteRT's `iou >= t` gets the next float above t.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from test_nms import EVAL_NMS, EVAL_SCORE, detector_candidates, random_boxes, tiled_candidates

from scrfdkit.detector import SCRFD
from scrfdkit.files import read_image
from scrfdkit.nms import greedy_nms, nms
from scrfdkit.timing import cpu_name, version_of

REPLACED_COMMIT = "b1c077c"  # the last commit with the numpy (banded grid pairs) nms
BUDGET_S = 4.0  # per implementation and set: slow ones get fewer rounds (at least 3)


# ----------------------------------------------------------------------------- contenders
def ranked(scores: np.ndarray) -> np.ndarray:
    """n, n-1, ..., 1 in greedy order: distinct float32 scores whatever a heap does with ties."""
    order = np.argsort(-scores, kind="stable")
    rank = np.empty(len(scores), np.float32)
    rank[order] = np.arange(len(scores), 0, -1, dtype=np.float32)
    return rank


def flattened(boxes: np.ndarray) -> np.ndarray:
    """Inverted boxes made zero-width/height, as greedy_nms reads them (not min/max corners)."""
    boxes = np.ascontiguousarray(boxes, np.float32)
    return np.concatenate([boxes[:, :2], np.maximum(boxes[:, 2:], boxes[:, :2])], axis=1)


def onnxruntime_op():
    """ONNX NonMaxSuppression, one class, all boxes: iou > t, as greedy_nms."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("NonMaxSuppression", ["boxes", "scores", "max_out", "iou"], ["kept"])],
        "nms", [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, "n", 4]),
                helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 1, "n"]),
                helper.make_tensor_value_info("max_out", TensorProto.INT64, [1]),
                helper.make_tensor_value_info("iou", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("kept", TensorProto.INT64, ["k", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], ir_version=7)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])

    def run(boxes, scores, t):
        feeds = {"boxes": flattened(boxes)[None], "scores": ranked(scores)[None, None],
                 "max_out": np.array([len(scores)], np.int64), "iou": np.array([t], np.float32)}
        return session.run(None, feeds)[0][:, 2]
    return run


def litert_op():
    """LiteRT's NON_MAX_SUPPRESSION_V4 builtin (built once with TensorFlow): iou >= t."""
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="boxes"),
                                  tf.TensorSpec([None], tf.float32, name="scores"),
                                  tf.TensorSpec([], tf.float32, name="iou")])
    def v4(boxes, scores, iou):
        return tf.raw_ops.NonMaxSuppressionV4(
            boxes=boxes, scores=scores, max_output_size=tf.shape(scores)[0], iou_threshold=iou,
            score_threshold=tf.constant(0.0), pad_to_max_output_size=True)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([v4.get_concrete_function()], v4)
    interpreter = Interpreter(model_content=converter.convert(), num_threads=1)
    assert "NON_MAX_SUPPRESSION_V4" in {op["op_name"] for op in interpreter._get_ops_details()}
    inputs = {d["name"]: d["index"] for d in interpreter.get_input_details()}
    count_out, kept_out = sorted(interpreter.get_output_details(), key=lambda d: len(d["shape"]))

    def run(boxes, scores, t):
        interpreter.resize_tensor_input(inputs["boxes"], [len(scores), 4])
        interpreter.resize_tensor_input(inputs["scores"], [len(scores)])
        interpreter.allocate_tensors()
        interpreter.set_tensor(inputs["boxes"], flattened(boxes))
        interpreter.set_tensor(inputs["scores"], ranked(scores))
        interpreter.set_tensor(inputs["iou"], np.nextafter(np.float32(t), np.float32(2)))
        interpreter.invoke()
        count = int(interpreter.get_tensor(count_out["index"]))
        return interpreter.get_tensor(kept_out["index"])[:count]
    return run


def opencv_op():
    """cv2.dnn.NMSBoxes: float64 rectangles, overlap = 1 - (float)(1 - I/U), keeps <= t."""
    import cv2

    def run(boxes, scores, t):
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
        xywh = xywh.astype(np.float64)
        return np.asarray(cv2.dnn.NMSBoxes(xywh, ranked(scores), 0.0, t), np.int64).reshape(-1)
    return run


def numba_every_kept_box():
    """The greedy loop compiled by numba, each candidate against every kept box (no grid)."""
    import numba

    @numba.njit(cache=False, nogil=True)
    def loop(boxes, threshold):
        zero = threshold - threshold
        kept = np.empty(len(boxes), np.int64)
        count = 0
        for j in range(len(boxes)):
            aj = max(boxes[j, 2] - boxes[j, 0], zero) * max(boxes[j, 3] - boxes[j, 1], zero)
            keep = True
            for m in range(count):
                i = kept[m]
                w = max(min(boxes[j, 2], boxes[i, 2]) - max(boxes[j, 0], boxes[i, 0]), zero)
                h = max(min(boxes[j, 3], boxes[i, 3]) - max(boxes[j, 1], boxes[i, 1]), zero)
                ai = max(boxes[i, 2] - boxes[i, 0], zero) * max(boxes[i, 3] - boxes[i, 1], zero)
                union = aj + ai - w * h
                if union > zero and w * h / union > threshold:
                    keep = False
                    break
            if keep:
                kept[count] = j
                count += 1
        return kept[:count]

    def run(boxes, scores, t):
        order = np.argsort(-scores, kind="stable")
        return order[loop(np.ascontiguousarray(boxes[order]), boxes.dtype.type(t))]
    return run


def replaced_numpy_nms():
    """scrfdkit.nms.nms as of REPLACED_COMMIT (numpy: banded grid pairs, fixed-point greedy)."""
    source = subprocess.run(["git", "show", f"{REPLACED_COMMIT}:scrfdkit/nms.py"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout
    module = ModuleType("replaced_nms")
    code = compile(source, f"{REPLACED_COMMIT}:scrfdkit/nms.py", "exec")
    exec(code, module.__dict__)  # noqa: S102  # our own file, from git history
    return module.nms


CONTENDERS = {
    "scrfdkit.nms (numba, grids)": lambda: nms,
    f"numpy banded grid pairs ({REPLACED_COMMIT}, replaced)": replaced_numpy_nms,
    "numba greedy loop, every kept box": numba_every_kept_box,
    "ONNX Runtime NonMaxSuppression op": onnxruntime_op,
    "LiteRT NON_MAX_SUPPRESSION_V4 op": litert_op,
    "cv2.dnn.NMSBoxes": opencv_op,
    "greedy_nms (numpy, one box at a time)": lambda: greedy_nms,
}


# ----------------------------------------------------------------------------- sets and timing
def candidate_sets(shared: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    detector = SCRFD(shared / "models" / "det_500m.onnx", score_threshold=EVAL_SCORE)
    sets = {}
    for name in ("crowd_selfie.jpg", "fans_crowd.jpg", "crowd_5334x2767.jpg"):
        sets[name] = detector_candidates(detector, read_image(shared / "samples" / name))
    big = read_image(shared / "samples" / "crowd_5334x2767.jpg")
    sets["crowd_5334x2767.jpg, tiles"] = tiled_candidates(detector, big, step=512)
    sets["random, tied scores"] = random_boxes(np.random.default_rng(0), 5000, clusters=200,
                                               extent=2000)
    return {f"{name} ({len(s):,})": (b, s) for name, (b, s) in sets.items()}


def cpu_line() -> str:
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    has = {"AVX2": "avx2" in flags, "AVX-512": "avx512f" in flags,
           "VNNI": bool(flags & {"avx512_vnni", "avx_vnni"})}
    load = " / ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (f"CPU: {cpu_name()} ({os.cpu_count()} logical cores; "
            + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in has.items())
            + f"); load average {load}; Python {platform.python_version()}, "
            + ", ".join(f"{p} {version_of(p)}" for p in ("numpy", "numba", "onnxruntime",
                                                        "ai-edge-litert", "opencv-python",
                                                        "opencv-python-headless")
                        if version_of(p)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=101, help="rounds (each runs every "
                        f"implementation once, in turn); slow ones stop after {BUDGET_S:g} s")
    parser.add_argument("--shared", type=Path,
                        default=Path(os.environ.get("SCRFD_SHARED", REPO.parent / "shared")),
                        help="folder with models/det_500m.onnx and samples/ (default ../shared)")
    parser.add_argument("--only", nargs="+", metavar="WORD", help="run only the "
                        "implementations whose name contains one of these words, e.g. numba numpy")
    args = parser.parse_args()

    sets = candidate_sets(args.shared)
    runners, skipped = {}, {}
    for name, make in CONTENDERS.items():
        if args.only and not any(word.lower() in name.lower() for word in args.only):
            continue
        try:
            runners[name] = make()
        except Exception as error:  # noqa: BLE001  # e.g. no TensorFlow here: a row says so
            skipped[name] = f"{type(error).__name__}: {str(error).splitlines()[0][:80]}"
    medians = {name: {} for name in runners}
    identical = {name: True for name in runners}
    for set_name, (boxes, scores) in sets.items():
        reference = greedy_nms(boxes, scores, EVAL_NMS)
        times = {name: [] for name in runners}
        for name, run in runners.items():  # warm-up (compiles) and the identity check
            identical[name] &= np.array_equal(np.asarray(run(boxes, scores, EVAL_NMS), np.int64),
                                              reference)
        for _ in range(args.repeats):
            for name, run in runners.items():
                if len(times[name]) >= 3 and sum(times[name]) > BUDGET_S:
                    continue
                start = time.perf_counter()
                run(boxes, scores, EVAL_NMS)
                times[name].append(time.perf_counter() - start)
        for name in runners:
            medians[name][set_name] = (np.median(times[name]) * 1e3, len(times[name]))
        print(f"timed {set_name}", file=sys.stderr)

    print(cpu_line())
    print(f"IoU threshold {EVAL_NMS}; det_500m (640x640, ONNX Runtime) candidates at score "
          f"{EVAL_SCORE}; median ms over up to {args.repeats} interleaved rounds (fewer in "
          "brackets)\n")
    baseline = next((medians[name] for name in runners if REPLACED_COMMIT in name), None)
    print("| implementation | " + " | ".join(sets) + " | identical | vs replaced numpy |")
    print("| --- | " + " | ".join("---:" for _ in sets) + " | --- | ---: |")
    for name in runners:
        cells = [f"{ms:.2f}" + (f" ({n})" if n < args.repeats else "")
                 for ms, n in medians[name].values()]
        ratios = [baseline[s][0] / medians[name][s][0] for s in sets] if baseline else []
        speedup = f"{np.exp(np.mean(np.log(ratios))):.2f}x" if ratios else "-"
        print(f"| {name} | " + " | ".join(cells)
              + f" | {'yes' if identical[name] else 'no'} | {speedup} |")
    for name, why in skipped.items():
        print(f"| {name} | " + " | ".join("-" for _ in sets) + f" | not run: {why} | - |")
    if baseline:
        print("\nvs replaced numpy: how many times faster than the replaced numpy version "
              "(geometric mean over the sets of the ratio of medians, both from this run).")


if __name__ == "__main__":
    main()
