"""Step 2: convert a fixed-size SCRFD ONNX model to TFLite (float32, float16, dynamic-range, int8).

Conversion goes through onnx2tf (NCHW -> NHWC). Int8 is full-integer quantization calibrated
on real WIDER FACE photos, preprocessed exactly as at inference (letterbox, RGB,
(x - 127.5) / 128). After every export the .tflite is run beside ONNX Runtime on real face
photos and the largest error per output is printed; float32 must agree within 1e-3.
Every .tflite gets a sidecar <file>.tflite.json with what inference needs to know.

Int8 is more than "onnx2tf with a representative dataset" (docs/int8.md has the measurements):
  1. equalize: every Conv -> ReLU -> depthwise Conv pair has its channels rescaled (exact in
     float) so that each channel of the activation between them spans the full int8 range;
  2. round: weights are rounded to the int8 grid TFLite will use by minimising the layer's
     output error on calibration activations (GPTQ), and the bias absorbs the mean error. The
     first depthwise 3x3 filters cancel brightness (weights up to 10, sum 0.05): plain rounding
     breaks that cancellation and lets brightness leak into every later feature;
  3. quantize: onnx2tf's saved_model goes through TFLiteConverter ourselves (per-channel int8
     weights, int8 activations); the sigmoid runs in float on the int8 logits, so scores keep
     more than the 1/256 steps an int8 probability has. Input int8 (or float with --float-io),
     outputs float32.

    python export_tflite.py --onnx models/det_500m_480x640.onnx            # float32
    python export_tflite.py --onnx models/det_500m_480x640.onnx --int8 --calib data/WIDER_val/images
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from detector import (METADATA_FORMAT, INPUT_MEAN, INPUT_STD, KINDS, STRIDES, LiteRTRunner,
                      OnnxRunner, UserError, atomic_write, cli, find_images, identify_outputs,
                      letterbox, metadata_path, preprocess, read_image, sha256_of)

# ----------------------------------------------------------------------------- config
DEFAULT_ONNX = Path("models/det_500m_480x640.onnx")
DEFAULT_CALIB = Path("data/WIDER_val/images")
DEFAULT_CALIB_COUNT = 200
DEFAULT_CHECK_IMAGES = [Path("data/friends.jpg")]
FLOAT32_TOLERANCE = 1e-3
ONNX2TF_SUFFIX = {"float32": "float32", "float16": "float16", "dynamic": "dynamic_range_quant"}
# onnx2tf validates its conversion on this file and downloads it when it is missing;
# we always write our own (real WIDER photos), so nothing goes to the network.
ONNX2TF_TEST_DATA = "calibration_image_sample_data_20x128x128x3_float32.npy"
# int8 recipe (see the module docstring)
STATS_IMAGES = 16  # calibration images whose activations drive the weight rounding
EQUALIZE_MAX_SCALE = 16.0  # largest factor a channel is stretched by
GPTQ_DAMPING = 0.01  # of the mean diagonal: keeps the rounding solve well conditioned
CANDIDATE_SCORE = 0.02  # parity is also reported on anchors ONNX scores this high (AP counts them)


# ----------------------------------------------------------------------------- calibration
def calibration_images(folder: Path, count: int) -> list[Path]:
    """`count` images spread evenly over the sorted folder (every WIDER event represented)."""
    if not folder.is_dir():
        raise UserError(f"calibration folder not found: {folder} (give --calib a folder of "
                        "photos, for example WIDER_val/images)")
    images = find_images([folder])
    if not images:
        raise UserError(f"no images in calibration folder {folder}")
    picks = np.linspace(0, len(images) - 1, min(count, len(images))).round().astype(int)
    return [images[i] for i in dict.fromkeys(picks)]


def calibration_tensor(paths: list[Path], input_hw: tuple[int, int], channels: int = 3
                       ) -> np.ndarray:
    """N x H x W x C float32, preprocessed by the same function inference uses.

    A 4-channel input (RGB plus a channel the stem ignores) gets zeros in the fourth.
    """
    batch = []
    for path in paths:
        try:
            batch.append(preprocess(read_image(path), input_hw, "NHWC")[0][0])
        except UserError as err:
            print(f"warning: skipping calibration image: {err}", file=sys.stderr)
    if not batch:
        raise UserError("none of the calibration images could be read")
    tensor = np.stack(batch)
    if channels > 3:
        tensor = np.concatenate([tensor, np.zeros((*tensor.shape[:3], channels - 3), np.float32)],
                                axis=3)
    return tensor


def onnx2tf_test_data(paths: list[Path]) -> np.ndarray:
    """20 RGB photos in [0, 1] at 128x128, the format onnx2tf's own checks expect."""
    picks = [paths[i % len(paths)] for i in range(20)]
    return np.stack([cv2.cvtColor(letterbox(read_image(p), (128, 128))[0], cv2.COLOR_BGR2RGB)
                     for p in picks]).astype(np.float32) / 255.0


# ----------------------------------------------------------------------------- int8: weights
def _attributes(node) -> dict:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _intermediates(model, names: list[str], images: np.ndarray):
    """Run the ONNX model on NHWC `images`, yielding {tensor name: array} with `names` exposed."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    exposed = {o.name for o in probe.graph.output}
    for name in dict.fromkeys(names):
        if name not in exposed:
            probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]
    for image in images:
        yield dict(zip(outputs, session.run(None, {session.get_inputs()[0].name:
                                                   image.transpose(2, 0, 1)[None]})))


class _Weights:
    """Read and write ONNX initializers as float64 arrays."""

    def __init__(self, model):
        self.model = model
        self.tensors = {t.name: t for t in model.graph.initializer}

    def __getitem__(self, name: str) -> np.ndarray:
        from onnx import numpy_helper

        return numpy_helper.to_array(self.tensors[name]).astype(np.float64)

    def __setitem__(self, name: str, value: np.ndarray) -> None:
        from onnx import numpy_helper

        array = numpy_helper.from_array(np.asarray(value, np.float32), name)
        if name in self.tensors:
            self.tensors[name].CopyFrom(array)
        else:
            self.model.graph.initializer.append(array)
            self.tensors[name] = self.model.graph.initializer[-1]


def equalize_channels(model, images: np.ndarray) -> int:
    """Conv A -> ReLU -> depthwise Conv B: stretch channel c between them by s_c (in place).

    int8 activations share one scale per tensor, set by the widest channel; a channel whose
    values stay 5x smaller gets 5x coarser steps relative to itself, and the depthwise
    filters after it (high-pass, weights up to 10) amplify that noise. Multiplying A's output
    channel c by s_c = widest / width_c and dividing B's weights by s_c changes nothing in
    float (ReLU commutes with positive scaling; B is per channel) and leaves the per-channel
    int8 weights of A and B as exact as before. Returns the number of pairs equalized.
    """
    graph = model.graph
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    producer = {out: node for node in graph.node for out in node.output}
    graph_outputs = {o.name for o in graph.output}
    weights = _Weights(model)
    pairs = []
    for conv_b in graph.node:
        relu = producer.get(conv_b.input[0]) if conv_b.op_type == "Conv" else None
        conv_a = producer.get(relu.input[0]) if relu is not None and relu.op_type == "Relu" else None
        if conv_a is None or conv_a.op_type != "Conv":
            continue
        if (len(consumers[conv_a.output[0]]) != 1 or len(consumers[relu.output[0]]) != 1
                or {conv_a.output[0], relu.output[0]} & graph_outputs):
            continue
        channels = weights[conv_b.input[1]].shape
        if _attributes(conv_b).get("group", 1) == channels[0] and channels[1] == 1:
            pairs.append((conv_a, relu, conv_b))
    if not pairs:
        return 0
    widths = {}
    for values in _intermediates(model, [relu.output[0] for _, relu, _ in pairs], images):
        for _, relu, _ in pairs:
            peak = values[relu.output[0]].max(axis=(0, 2, 3))
            widths[relu.output[0]] = np.maximum(widths.get(relu.output[0], peak), peak)
    for conv_a, relu, conv_b in pairs:
        width = widths[relu.output[0]].astype(np.float64)
        scale = np.ones_like(width)
        alive = width > 0
        scale[alive] = np.clip(width.max() / width[alive], 1.0, EQUALIZE_MAX_SCALE)
        weights[conv_a.input[1]] = weights[conv_a.input[1]] * scale[:, None, None, None]
        if len(conv_a.input) > 2 and conv_a.input[2]:
            weights[conv_a.input[2]] = weights[conv_a.input[2]] * scale
        weights[conv_b.input[1]] = weights[conv_b.input[1]] / scale[:, None, None, None]
    return len(pairs)


def _patches(x: np.ndarray, kernel, strides, pads, dilations) -> np.ndarray:
    """(C, H, W) activation -> (C, kh*kw, positions) zero-padded patches, as the conv sees them."""
    kh, kw = kernel
    channels, height, width = x.shape
    padded = np.pad(x, ((0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    out_h = (height + pads[0] + pads[2] - dilations[0] * (kh - 1) - 1) // strides[0] + 1
    out_w = (width + pads[1] + pads[3] - dilations[1] * (kw - 1) - 1) // strides[1] + 1
    out = np.empty((channels, kh * kw, out_h * out_w), np.float32)
    for i in range(kh):
        for j in range(kw):
            top, left = i * dilations[0], j * dilations[1]
            window = padded[:, top: top + strides[0] * (out_h - 1) + 1: strides[0],
                            left: left + strides[1] * (out_w - 1) + 1: strides[1]]
            out[:, i * kw + j] = window.reshape(channels, -1)
    return out


def _gptq(rows: np.ndarray, hessian: np.ndarray, scale: np.ndarray, pinned: np.ndarray
          ) -> np.ndarray:
    """Integer weights q (|q| <= 127) for groups of rows sharing a Hessian (GPTQ, Frantar 2022).

    rows (G, R, K), hessian (G, K, K) = E[x x^T] of the inputs (not centred, so the mean
    matters), scale (G, R). Columns are rounded one at a time and the rounding error is
    pushed onto the columns not yet rounded, weighted by the inverse Hessian. Where `pinned`
    (G, R), a row's largest weight stays at +-127 so TFLite derives exactly this scale again.
    """
    groups, _, size = rows.shape
    hessian = hessian.copy()
    for g in range(groups):
        diagonal = np.diagonal(hessian[g]).copy()
        dead = diagonal <= 0
        hessian[g][dead, dead] = 1.0
        hessian[g] += GPTQ_DAMPING * max(diagonal.mean(), 1e-12) * np.eye(size)
    upper = np.swapaxes(np.linalg.cholesky(np.linalg.inv(hessian)), 1, 2)
    work = rows.astype(np.float64).copy()
    q = np.zeros_like(work)
    peak = np.where(pinned, np.abs(rows).argmax(axis=2), -1)
    for k in range(size):
        column = np.clip(np.round(work[:, :, k] / scale), -127, 127)
        column = np.where(peak == k, np.sign(rows[:, :, k]) * 127, column)
        q[:, :, k] = column
        error = (work[:, :, k] - column * scale) / upper[:, k, k][:, None]
        work[:, :, k:] -= error[:, :, None] * upper[:, None, k, k:]
    return q


def round_weights(model, images: np.ndarray, per_channel: bool) -> int:
    """Round every Conv's weights to the int8 grid TFLite will use, minimising output error.

    TFLite's int8 weights are round(w / s) with s = max|w| / 127 per output channel (or per
    tensor). Rounding each weight to its nearest step is fine for most layers but not for
    filters whose weights nearly cancel: SCRFD-500M's first depthwise 3x3 filters have
    weights up to 10.5 summing to 0.05, and nearest rounding moves that sum by 0.1, so
    brightness leaks through them and on into every box and landmark. Here each layer's weights are
    rounded (GPTQ) against the second moments of its real inputs, the mean error
    (dW . E[x]) goes into the bias, and the result is stored on the grid so TFLite's own
    rounding reproduces it exactly. Returns the number of convolutions rounded.
    """
    weights = _Weights(model)
    convs = []
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        shape = weights[node.input[1]].shape
        group = _attributes(node).get("group", 1)
        if group == 1 or (group == shape[0] and shape[1] == 1):
            convs.append(node)

    def view(node) -> tuple:  # what the conv sees of its input: convs sharing it share moments
        attrs = _attributes(node)
        return (node.input[0], tuple(attrs["kernel_shape"]), tuple(attrs.get("strides", [1, 1])),
                tuple(attrs.get("pads", [0, 0, 0, 0])), tuple(attrs.get("dilations", [1, 1])),
                attrs.get("group", 1) != 1)

    moments: dict[tuple, list] = {view(node): [0.0, 0.0, 0] for node in convs}
    for values in _intermediates(model, [n.input[0] for n in convs], images):
        for key, total in moments.items():
            name, kernel, strides, pads, dilations, depthwise = key
            patches = _patches(values[name][0], kernel, strides, pads, dilations)
            if not depthwise:  # one (C*kh*kw)^2 matrix shared by all filters
                patches = patches.reshape(1, -1, patches.shape[-1])
            # depthwise: one kh*kw matrix per channel
            total[0] = total[0] + np.matmul(patches, patches.transpose(0, 2, 1)).astype(np.float64)
            total[1] = total[1] + patches.sum(axis=2, dtype=np.float64)
            total[2] += patches.shape[-1]
    for node in convs:
        second, first, count = moments[view(node)]
        w = weights[node.input[1]]
        depthwise = _attributes(node).get("group", 1) != 1
        rows = w.reshape(w.shape[0], 1, -1) if depthwise else w.reshape(1, w.shape[0], -1)
        if per_channel:
            peak = np.abs(rows).max(axis=2)
            pinned = np.ones(peak.shape, bool)
        else:  # one scale for the tensor: only its largest weight is pinned
            peak = np.full(rows.shape[:2], np.abs(w).max())
            pinned = np.abs(rows).max(axis=2) == peak
            pinned &= np.cumsum(pinned.reshape(-1)).reshape(pinned.shape) == 1
        scale = np.where(peak > 0, peak / 127.0, 1.0)
        q = _gptq(rows, second / count, scale, pinned) * scale[:, :, None]
        error_mean = np.einsum("grk,gk->gr", rows - q, first / count).reshape(-1)
        weights[node.input[1]] = q.reshape(w.shape)
        if len(node.input) > 2 and node.input[2]:
            weights[node.input[2]] = weights[node.input[2]] + error_mean
        else:
            bias = f"{node.name}_int8_bias"
            weights[bias] = error_mean
            node.input.append(bias)
    return len(convs)


def prepare_int8_onnx(onnx_path: Path, calib: np.ndarray, per_channel: bool, out: Path) -> dict:
    """The ONNX model with equalized channels and int8-rounded weights, written to `out`."""
    import onnx

    model = onnx.load(str(onnx_path))
    equalized = equalize_channels(model, calib)  # the widths TFLite will calibrate, exactly
    picks = np.linspace(0, len(calib) - 1, min(STATS_IMAGES, len(calib))).round().astype(int)
    images = calib[np.unique(picks)]
    rounded = round_weights(model, images, per_channel)
    onnx.save(model, str(out))
    return {"equalized_pairs": equalized, "rounded_convs": rounded, "stats_images": len(images)}


# ----------------------------------------------------------------------------- conversion
@contextlib.contextmanager
def captured_output(log_path: Path):
    """Send the converter's (very chatty) stdout/stderr, C++ logs included, to a file."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "w") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


@contextlib.contextmanager
def converter_step(what: str, log_path: Path):
    """Quiet the converter, and turn any failure into one UserError line with its cause."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        with captured_output(log_path):
            yield
    except BaseException as err:
        if isinstance(err, KeyboardInterrupt):
            raise
        log = re.sub(r"\x1b\[[0-9;]*m", "", log_path.read_text(errors="replace")).splitlines()
        causes = [line.strip() for line in log if re.match(r"\s*\w*(Error|Exception):", line)]
        detail = (causes or [f"{type(err).__name__}: {err}"])[-1][:200]
        raise UserError(f"{what} failed: {detail}") from None


def run_onnx2tf(onnx_path: Path, precision: str, workdir: Path, test_data: np.ndarray) -> Path:
    """Run onnx2tf in `workdir`: the saved_model (workdir/out) and the .tflite of `precision`
    (float32 for int8, which quantize_int8 makes from the saved_model)."""
    np.save(workdir / ONNX2TF_TEST_DATA, test_data)
    options = dict(input_onnx_file_path=str(onnx_path.resolve()),
                   output_folder_path=str(workdir / "out"), non_verbose=True)
    if precision == "int8":  # we quantize its saved_model: give it a serving signature
        options["output_signaturedefs"] = True
    if precision == "dynamic":
        options["output_dynamic_range_quantized_tflite"] = True
    cwd = os.getcwd()
    try:
        os.chdir(workdir)
        with converter_step(f"onnx2tf on {onnx_path}", workdir / "onnx2tf.log"):
            import onnx2tf
            onnx2tf.convert(**options)
    finally:
        os.chdir(cwd)
    produced = workdir / "out" / f"{onnx_path.stem}_{ONNX2TF_SUFFIX.get(precision, 'float32')}.tflite"
    if not produced.exists():
        raise UserError(f"onnx2tf did not write {produced.name}; see the log above")
    return produced


def _float_tail(calibrated: bytes) -> list[str]:
    """Names of the ops from each LOGISTIC (sigmoid) to its model output: they stay float."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(calibrated))
    graph = model.subgraphs[0]
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]
    consumers: dict[int, list] = {}
    for op in graph.operators:
        for tensor in op.inputs:
            consumers.setdefault(int(tensor), []).append(op)
    names = []
    for op in graph.operators:
        if codes[op.opcodeIndex] != schema.BuiltinOperator.LOGISTIC:
            continue
        chain = [op]
        while len(consumers.get(int(chain[-1].outputs[0]), [])) == 1:  # reshapes to the output
            chain.append(consumers[int(chain[-1].outputs[0])][0])
        if int(chain[-1].outputs[0]) in set(map(int, graph.outputs)):
            names += [graph.tensors[o.outputs[0]].name.decode() for o in chain]
    return names


def quantize_int8(saved_model: Path, calib: np.ndarray, float_input: bool, per_channel: bool,
                  log_path: Path) -> bytes:
    """Full-integer int8 TFLite from onnx2tf's saved_model, calibrated on `calib`.

    TFLiteConverter calibrates (min/max of every activation over the calibration images),
    then the MLIR quantizer makes weights int8 (symmetric, per channel by default: the QS8
    path XNNPACK runs) and activations int8. The sigmoid and what follows it stay float:
    an int8 probability moves in steps of 1/256, which ties the low-scoring detections AP
    ranks; the int8 logits before it are finer there. Outputs are float32, the input int8
    (the runner quantizes it) unless `float_input`.
    """
    with converter_step("int8 quantization", log_path):
        import tensorflow as tf
        from tensorflow.lite.python import convert as tflite_convert
        from tensorflow.lite.python import util as tflite_util

        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.representative_dataset = lambda: ([image[None]] for image in calib)
        converter._experimental_calibrate_only = True  # ranges now, quantization below
        calibrated = converter.convert()
        model = tflite_convert.mlir_quantize(calibrated, disable_per_channel=not per_channel,
                                             denylisted_nodes=_float_tail(calibrated))
        return tflite_util.modify_model_io_type(
            model, tf.float32 if float_input else tf.int8, tf.float32)


# ----------------------------------------------------------------------------- metadata
def family_name(onnx_path: Path, keypoints: bool) -> str:
    """'scrfd500m' from det_500m, 'scrfd2.5g_bnkps' from scrfd_2.5g_bnkps, ... (original naming)."""
    import onnx

    props = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    stem = Path(props.get("scrfd_source", onnx_path.name)).stem
    parts = stem.split("_")
    if parts[-1].count("x") == 1 and parts[-1].replace("x", "").isdigit():
        parts = parts[:-1]  # drop a _HxW suffix
    if parts[0] in ("det", "scrfd"):
        parts = parts[1:]
    name = "scrfd" + "_".join(parts)
    return name if keypoints else name + "_nokps"


def build_metadata(tflite_path: Path, onnx_path: Path, precision: str, input_hw,
                   calib_paths: list[Path], quant_type: str, recipe: dict | None = None) -> dict:
    import onnx2tf
    import tensorflow as tf

    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(tflite_path))
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    outputs = interpreter.get_output_details()
    specs, anchors = identify_outputs([o["shape"] for o in outputs], input_hw)
    order = sorted(range(len(outputs)), key=lambda i: (KINDS.index(specs[i].kind),
                                                        STRIDES.index(specs[i].stride)))
    return {
        "format": METADATA_FORMAT,
        "family": family_name(onnx_path, any(s.kind == "kps" for s in specs)),
        "precision": precision,
        "input": {"name": inp["name"], "height": input_hw[0], "width": input_hw[1],
                  "layout": "NHWC", "dtype": np.dtype(inp["dtype"]).name,
                  "quantization": list(map(float, inp["quantization"])),
                  "channel_order": "RGB", "mean": INPUT_MEAN, "std": INPUT_STD,
                  "letterbox": "top-left, zero padding, keep aspect ratio"},
        "strides": list(STRIDES),
        "anchors_per_location": anchors,
        "keypoints": any(s.kind == "kps" for s in specs),
        "outputs": [{"name": outputs[i]["name"], "kind": specs[i].kind, "stride": specs[i].stride,
                     "shape": [int(d) for d in outputs[i]["shape"]],
                     "dtype": np.dtype(outputs[i]["dtype"]).name,
                     "quantization": list(map(float, outputs[i]["quantization"])),
                     "units": "probability" if specs[i].kind == "score" else "stride units"}
                    for i in order],
        "source": {"onnx": onnx_path.name, "sha256": sha256_of(onnx_path)},
        "calibration": ({"images": len(calib_paths), "quant_type": quant_type, **(recipe or {})}
                        if calib_paths else None),
        "converter": {"onnx2tf": onnx2tf.__version__, "tensorflow": tf.__version__},
    }


# ----------------------------------------------------------------------------- parity
def parity(onnx_path: Path, tflite_path: Path, images: list[Path]) -> dict[str, float]:
    """Largest |ONNX - TFLite| per output kind over the check images, in raw output units.

    Keys: kind ("bbox"), kind per stride ("bbox_8"), and kind over the anchors ONNX scores
    at least CANDIDATE_SCORE ("bbox_candidates"): the ones that can become detections, with
    their mean error too ("bbox_candidates_mean").
    """
    reference = OnnxRunner(onnx_path, threads=None)
    candidate = LiteRTRunner(tflite_path, threads=None)
    worst = {}
    totals: dict[str, list[float]] = {}

    def note(key: str, error: np.ndarray) -> None:
        if error.size:
            worst[key] = max(worst.get(key, 0.0), float(error.max()))
            total = totals.setdefault(key, [0.0, 0])
            total[0] += float(error.sum())
            total[1] += error.size

    for path in images:
        image = read_image(path)
        expected = reference(preprocess(image, reference.input_hw, "NCHW")[0])
        actual = candidate(preprocess(image, candidate.input_hw, candidate.layout)[0])
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


def print_parity(worst: dict[str, float], count: int) -> None:
    print(f"parity against ONNX Runtime on {count} photo(s): max abs error per output "
          f"(candidates: anchors ONNX scores >= {CANDIDATE_SCORE:g})")
    print("| output | stride 8 | stride 16 | stride 32 | all | candidates | candidates, mean |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for kind in KINDS:
        if kind in worst:
            cells = " | ".join(f"{worst[f'{kind}_{s}']:.2e}" for s in STRIDES)
            units = "probability" if kind == "score" else "stride units"
            print(f"| {kind} ({units}) | {cells} | {worst[kind]:.2e} | "
                  f"{worst.get(f'{kind}_candidates', 0.0):.2e} | "
                  f"{worst.get(f'{kind}_candidates_mean', 0.0):.2e} |")


# ----------------------------------------------------------------------------- main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--onnx", type=Path, default=DEFAULT_ONNX,
                        help=f"fixed-size ONNX from export_modified_onnx.py (default {DEFAULT_ONNX})")
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--int8", "--int", dest="int8", action="store_true",
                      help="full-integer int8 quantization calibrated on --calib (--int is the "
                           "original project's name for it)")
    kind.add_argument("--fp16", action="store_true", help="float16 weights, float32 compute")
    kind.add_argument("--dynamic", action="store_true",
                      help="dynamic-range quantization: int8 weights, float activations")
    parser.add_argument("--calib", type=Path, default=DEFAULT_CALIB,
                        help=f"folder of photos for int8 calibration (default {DEFAULT_CALIB})")
    parser.add_argument("--calib-count", type=int, default=DEFAULT_CALIB_COUNT,
                        help=f"calibration images, spread over the folder (default {DEFAULT_CALIB_COUNT})")
    parser.add_argument("--quant-type", choices=("per-channel", "per-tensor"), default="per-channel",
                        help="int8 weight quantization granularity (default per-channel)")
    parser.add_argument("--float-io", action="store_true",
                        help="int8 model with a float32 input, quantized inside the model "
                             "(default: int8 input; outputs are float32 either way)")
    parser.add_argument("--check-images", nargs="+", type=Path, default=DEFAULT_CHECK_IMAGES,
                        help="face photos for the parity check (files or folders; default "
                             "data/friends.jpg, plus 4 calibration photos when calibrating)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output .tflite (default models/<family>_<H>x<W>_<precision>.tflite)")
    args = parser.parse_args()

    precision = ("int8" if args.int8 else "float16" if args.fp16 else
                 "dynamic" if args.dynamic else "float32")
    source = OnnxRunner(args.onnx, threads=None)  # validates: exists, ONNX, SCRFD, runs
    if any(not isinstance(d, int) for d in source.session.get_inputs()[0].shape):
        raise UserError(f"{args.onnx} has a dynamic input; fix its size first with "
                        f"export_modified_onnx.py --model {args.onnx} --hw H,W")
    height, width = source.input_hw
    out = args.out or Path("models") / f"{family_name(args.onnx, source.has_landmarks)}_{height}x{width}_{precision}.tflite"

    calib_paths: list[Path] = []
    calib = None
    if precision == "int8":
        calib_paths = calibration_images(args.calib, args.calib_count)
        channels = int(source.session.get_inputs()[0].shape[1])
        calib = calibration_tensor(calib_paths, (height, width), channels)
        print(f"calibrating on {len(calib)} images from {args.calib}")
    check_paths = [p for p in args.check_images if p.exists()]
    check_images = find_images(check_paths) if check_paths else []
    if not check_images and calib_paths:
        check_images = calib_paths[:: max(1, len(calib_paths) // 4)][:4]
    elif calib_paths:
        check_images += calib_paths[:: max(1, len(calib_paths) // 4)][:4]
    if not check_images:
        raise UserError("no photo for the parity check: give --check-images")

    started = time.perf_counter()
    recipe = None
    with tempfile.TemporaryDirectory(prefix="export_tflite-") as tmp:
        workdir = Path(tmp)
        test_data = onnx2tf_test_data(calib_paths or check_images)
        if precision == "int8":
            per_channel = args.quant_type == "per-channel"
            prepared = workdir / args.onnx.name
            recipe = prepare_int8_onnx(args.onnx, calib, per_channel, prepared)
            print(f"int8: equalized {recipe['equalized_pairs']} conv pairs, rounded "
                  f"{recipe['rounded_convs']} convs' weights on {recipe['stats_images']} images "
                  f"({time.perf_counter() - started:.0f} s)")
            run_onnx2tf(prepared, precision, workdir, test_data)
            produced = workdir / "int8.tflite"
            produced.write_bytes(quantize_int8(workdir / "out", calib, args.float_io, per_channel,
                                               workdir / "quantize.log"))
            recipe.update(input="float32" if args.float_io else "int8", outputs="float32",
                          float_ops="sigmoid of the score outputs")
        else:
            produced = run_onnx2tf(args.onnx, precision, workdir, test_data)
        out.parent.mkdir(parents=True, exist_ok=True)
        staged = out.with_name(f".{out.name}.part")
        shutil.copyfile(produced, staged)
        meta = build_metadata(staged, args.onnx, precision, (height, width), calib_paths,
                              args.quant_type, recipe)
        os.replace(staged, out)
    with atomic_write(metadata_path(out)) as handle:
        json.dump(meta, handle, indent=1)
    print(f"converted in {time.perf_counter() - started:.0f} s")

    worst = parity(args.onnx, out, check_images)
    print_parity(worst, len(check_images))
    size = out.stat().st_size
    print(f"wrote {out} ({size / 1e6:.2f} MB, {precision}) and {metadata_path(out)}")
    if precision == "float32" and max(worst[k] for k in KINDS if k in worst) > FLOAT32_TOLERANCE:
        print(f"error: float32 parity above {FLOAT32_TOLERANCE:g}; the conversion is wrong",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    cli(main)
