"""The int8 recipe: calibration photos, channel equalization, GPTQ weight rounding, and our own
TFLiteConverter pass that keeps the sigmoid in float. docs/int8.md has the measurements.

  1. equalize: every Conv -> ReLU -> depthwise Conv pair has its channels rescaled (exact in
     float) so that each channel of the activation between them spans the full int8 range;
  2. round: weights are rounded to the int8 grid TFLite will use by minimising the layer's
     output error on calibration activations (GPTQ), and the bias absorbs the mean error. The
     first depthwise 3x3 filters cancel brightness (weights up to 10, sum 0.05): plain rounding
     breaks that cancellation and lets brightness leak into every later feature;
  3. quantize: onnx2tf's saved_model goes through TFLiteConverter ourselves (per-channel int8
     weights, int8 activations); the sigmoid runs in float on the int8 logits, so scores keep
     more than the 1/256 steps an int8 probability has.

onnx and TensorFlow are imported inside the functions that need them.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import numpy as np

from ..decode import preprocess
from ..errors import UserError
from ..files import find_images, read_image
from .onnx_edit import converter_step, model_session

STATS_IMAGES = 16  # calibration images whose activations drive the weight rounding
EQUALIZE_MAX_SCALE = 16.0  # largest factor a channel is stretched by
GPTQ_DAMPING = 0.01  # of the mean diagonal: keeps the rounding solve well conditioned


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


def calibration_tensor(paths: list[Path], input_hw: tuple[int, int]) -> np.ndarray:
    """N x H x W x 3 float32, preprocessed by the same function inference uses."""
    batch = []
    for path in paths:
        try:
            batch.append(preprocess(read_image(path), input_hw, "NHWC")[0][0])
        except UserError as err:
            print(f"warning: skipping calibration image: {err}", file=sys.stderr)
    if not batch:
        raise UserError("none of the calibration images could be read")
    return np.stack(batch)


# ----------------------------------------------------------------------------- ONNX access
def node_attributes(node) -> dict:
    """An ONNX node's attributes as plain Python values."""
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def intermediate_outputs(model, names: list[str], images: np.ndarray
                         ) -> Iterator[dict[str, np.ndarray]]:
    """Run the ONNX model on NHWC `images`, yielding {tensor name: array} with `names` exposed."""
    import onnx

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    exposed = {o.name for o in probe.graph.output}
    for name in dict.fromkeys(names):
        if name not in exposed:
            probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = model_session(probe)
    outputs = [o.name for o in session.get_outputs()]
    for image in images:
        yield dict(zip(outputs, session.run(None, {session.get_inputs()[0].name:
                                                   image.transpose(2, 0, 1)[None]})))


class OnnxWeights:
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


# ----------------------------------------------------------------------------- 1. equalize
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
    weights = OnnxWeights(model)
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
        if node_attributes(conv_b).get("group", 1) == channels[0] and channels[1] == 1:
            pairs.append((conv_a, relu, conv_b))
    if not pairs:
        return 0
    widths = {}
    for values in intermediate_outputs(model, [relu.output[0] for _, relu, _ in pairs], images):
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


# ----------------------------------------------------------------------------- 2. round
def conv_patches(x: np.ndarray, kernel, strides, pads, dilations) -> np.ndarray:
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


def gptq(rows: np.ndarray, hessian: np.ndarray, scale: np.ndarray, pinned: np.ndarray
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
    weights = OnnxWeights(model)
    convs = []
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        shape = weights[node.input[1]].shape
        group = node_attributes(node).get("group", 1)
        if group == 1 or (group == shape[0] and shape[1] == 1):
            convs.append(node)

    def view(node) -> tuple:  # what the conv sees of its input: convs sharing it share moments
        attrs = node_attributes(node)
        return (node.input[0], tuple(attrs["kernel_shape"]), tuple(attrs.get("strides", [1, 1])),
                tuple(attrs.get("pads", [0, 0, 0, 0])), tuple(attrs.get("dilations", [1, 1])),
                attrs.get("group", 1) != 1)

    moments: dict[tuple, list] = {view(node): [0.0, 0.0, 0] for node in convs}
    for values in intermediate_outputs(model, [n.input[0] for n in convs], images):
        for key, total in moments.items():
            name, kernel, strides, pads, dilations, depthwise = key
            patches = conv_patches(values[name][0], kernel, strides, pads, dilations)
            if not depthwise:  # one (C*kh*kw)^2 matrix shared by all filters
                patches = patches.reshape(1, -1, patches.shape[-1])
            # depthwise: one kh*kw matrix per channel
            total[0] = total[0] + np.matmul(patches, patches.transpose(0, 2, 1)).astype(np.float64)
            total[1] = total[1] + patches.sum(axis=2, dtype=np.float64)
            total[2] += patches.shape[-1]
    for node in convs:
        second, first, count = moments[view(node)]
        w = weights[node.input[1]]
        depthwise = node_attributes(node).get("group", 1) != 1
        rows = w.reshape(w.shape[0], 1, -1) if depthwise else w.reshape(1, w.shape[0], -1)
        if per_channel:
            peak = np.abs(rows).max(axis=2)
            pinned = np.ones(peak.shape, bool)
        else:  # one scale for the tensor: only its largest weight is pinned
            peak = np.full(rows.shape[:2], np.abs(w).max())
            pinned = np.abs(rows).max(axis=2) == peak
            pinned &= np.cumsum(pinned.reshape(-1)).reshape(pinned.shape) == 1
        scale = np.where(peak > 0, peak / 127.0, 1.0)
        q = gptq(rows, second / count, scale, pinned) * scale[:, :, None]
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
    """The ONNX model with equalized channels and int8-rounded weights, written to `out`.

    Returns the recipe's numbers for the sidecar's "calibration" entry.
    """
    import onnx

    model = onnx.load(str(onnx_path))
    equalized = equalize_channels(model, calib)  # the widths TFLite will calibrate, exactly
    picks = np.linspace(0, len(calib) - 1, min(STATS_IMAGES, len(calib))).round().astype(int)
    images = calib[np.unique(picks)]
    rounded = round_weights(model, images, per_channel)
    onnx.save(model, str(out))
    return {"equalized_pairs": equalized, "rounded_convs": rounded, "stats_images": len(images)}


# ----------------------------------------------------------------------------- 3. quantize
def float_tail(calibrated: bytes) -> list[str]:
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
                  log_path: Path, integer_io: bool = False) -> bytes:
    """Full-integer int8 TFLite from onnx2tf's saved_model, calibrated on `calib`.

    TFLiteConverter calibrates (min/max of every activation over the calibration images),
    then the MLIR quantizer makes weights int8 (symmetric, per channel by default: the QS8
    path XNNPACK runs) and activations int8. The sigmoid and what follows it stay float:
    an int8 probability moves in steps of 1/256, which ties the low-scoring detections AP
    ranks; the int8 logits before it are finer there. Outputs are float32, the input int8
    (the runner quantizes it) unless `float_input`. integer_io: everything int8, the sigmoid
    and the outputs too (int8 in, int8 out: what NPUs and microcontrollers take).
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
        model = tflite_convert.mlir_quantize(
            calibrated, disable_per_channel=not per_channel,
            denylisted_nodes=[] if integer_io else float_tail(calibrated))
        return tflite_util.modify_model_io_type(
            model, tf.float32 if float_input else tf.int8, tf.int8 if integer_io else tf.float32)
