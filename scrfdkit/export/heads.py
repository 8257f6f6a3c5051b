"""Post-processing inside the graph (export_tflite.py --kind decoded | object-detector).

onnx2tf converts the raw SCRFD model; its saved_model is wrapped here in a TensorFlow function
that adds what apps would otherwise re-implement: the input normalisation (object-detector),
the anchor grid (strides 8, 16, 32, two centres per cell), distance-to-box and
distance-to-landmark decoding, and NMS with TFLite's NON_MAX_SUPPRESSION_V5 op, padded to a
fixed number of faces. The decode is the same float32 arithmetic as decode.py (distance x
stride, centre -/+ distance), so a float32 export equals the Python pipeline.

decoded: boxes (1, K, 4) x1 y1 x2 y2 and landmarks (1, K, 5, 2) x y in input pixels, scores
(1, K), count (1,) int32; rows past count are zero. object-detector: the four outputs of
TFLite_Detection_PostProcess that MediaPipe's ObjectDetector and the Task Library read: boxes
(1, K, 4) [ymin, xmin, ymax, xmax] as fractions of the input, classes (1, K) (0: face), scores
(1, K), count (1,), all float32, with a uint8 RGB input normalised inside the graph.

TensorFlow is imported inside the functions.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..decode import INPUT_MEAN, INPUT_STD, STRIDES, anchor_centers, identify_outputs
from ..errors import UserError
from .onnx_edit import converter_step

DECODED_OUTPUTS = ("boxes", "scores", "landmarks", "count")
DETECTOR_OUTPUTS = ("boxes", "classes", "scores", "count")


@dataclass(frozen=True)
class Head:
    """What the graph does after the network."""

    kind: str  # "decoded" or "object-detector"
    input_hw: tuple[int, int]
    max_faces: int  # K: the outputs' fixed number of rows
    score_threshold: float  # candidates below this never reach NMS
    nms_threshold: float | None  # IoU; None: no NMS (decoded only): every anchor, K = anchors


def output_names(head: Head, keypoints: bool) -> tuple[str, ...]:
    if head.kind == "object-detector":
        return DETECTOR_OUTPUTS
    return DECODED_OUTPUTS if keypoints else tuple(n for n in DECODED_OUTPUTS if n != "landmarks")


def head_function(saved_model: Path, head: Head, input_type: str):
    """(tf.function, the loaded saved_model it calls, keypoints): the network plus the head.

    input_type "normalised": SCRFD's (x - 127.5) / 128 float input, as the raw export takes
    it; "uint8": RGB pixels, normalised in the graph; "pixels": the same as float32 0..255,
    which the int8 quantizer turns into a uint8 input.
    """
    import tensorflow as tf

    loaded = tf.saved_model.load(str(saved_model))
    network = loaded.signatures["serving_default"]
    input_key = next(iter(network.structured_input_signature[1]))
    names = sorted(network.structured_outputs)
    specs, anchors = identify_outputs([network.structured_outputs[n].shape for n in names],
                                      head.input_hw)
    by_kind = {(s.kind, s.stride): n for s, n in zip(specs, names)}
    keypoints = any(s.kind == "kps" for s in specs)
    height, width = head.input_hw
    total = sum(len(anchor_centers(height, width, s, anchors)) for s in STRIDES)
    rows = total if head.nms_threshold is None else head.max_faces
    # NON_MAX_SUPPRESSION_V5 keeps scores > threshold; decode.py keeps scores >= threshold
    score_floor = float(np.nextafter(np.float32(head.score_threshold), np.float32(-1)))
    dtype = tf.uint8 if input_type == "uint8" else tf.float32

    @tf.function(input_signature=[tf.TensorSpec([1, height, width, 3], dtype, name="image")])
    def serve(image):
        x = tf.cast(image, tf.float32)
        if input_type != "normalised":
            x = (x - INPUT_MEAN) * (1.0 / INPUT_STD)
        raw = network(**{input_key: x})

        # Each stride is decoded on its own, then concatenated: the int8 calibrator gives a
        # concat's inputs the concat's range, which would put the stride-8 distances on the
        # steps of the stride-32 ones. Same float32 arithmetic as decode.py.
        scores = tf.concat([tf.reshape(raw[by_kind["score", s]], [-1]) for s in STRIDES], 0)
        boxes, points = [], []
        for stride in STRIDES:
            grid = anchor_centers(height, width, stride, anchors)
            distances = tf.reshape(raw[by_kind["bbox", stride]], [-1, 4]) * float(stride)
            boxes.append(tf.concat([grid - distances[:, :2], grid + distances[:, 2:]], axis=1))
            if keypoints:
                offsets = tf.reshape(raw[by_kind["kps", stride]], [-1, 10]) * float(stride)
                points.append(tf.reshape(offsets, [-1, 5, 2]) + grid[:, None, :])
        boxes = tf.concat(boxes, axis=0)
        points = tf.concat(points, axis=0) if keypoints else None
        if head.nms_threshold is None:
            count = tf.constant([total], tf.int32)
        else:
            keep, kept_scores, valid = tf.raw_ops.NonMaxSuppressionV5(
                boxes=boxes, scores=scores, max_output_size=rows,
                iou_threshold=head.nms_threshold, score_threshold=score_floor,
                soft_nms_sigma=0.0, pad_to_max_output_size=True)
            filled = tf.cast(tf.range(rows) < valid, tf.float32)
            boxes = tf.gather(boxes, keep) * filled[:, None]
            scores = kept_scores * filled
            if keypoints:
                points = tf.gather(points, keep) * filled[:, None, None]
            count = tf.reshape(valid, [1])
        if head.kind == "object-detector":
            scale = tf.constant([height, width, height, width], tf.float32)
            corners = tf.stack([boxes[:, 1], boxes[:, 0], boxes[:, 3], boxes[:, 2]], axis=1)
            return (tf.reshape(corners / scale, [1, rows, 4]), tf.zeros([1, rows], tf.float32),
                    tf.reshape(scores, [1, rows]), tf.cast(count, tf.float32))
        outputs = [tf.reshape(boxes, [1, rows, 4]), tf.reshape(scores, [1, rows])]
        if keypoints:
            outputs.append(tf.reshape(points, [1, rows, 5, 2]))
        return (*outputs, count)

    return serve, loaded, keypoints


def float_head_ops(calibrated: bytes, raw_shapes: list[list[int]], integer_outputs: bool
                   ) -> list[str]:
    """Names of the ops that stay float in an int8 post-processed export: the sigmoids and
    everything after the network's raw outputs (decode, NMS, gathers). Boxes in int8 pixels
    would move in steps of several pixels; the network before them is int8. integer_outputs:
    the ops that make the outputs (reshapes) are left to the quantizer, so they are int8."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(calibrated))
    graph = model.subgraphs[0]
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]
    raw = {tuple(s) for s in raw_shapes}
    # the landmark outputs' reshape to (N, 5, 2) merges with the network's own to (N, 10)
    raw |= {(*s[:-1], 5, 2) for s in raw if s[-1] == 10}
    seeds = {int(i) for i, t in enumerate(graph.tensors)
             if t.shape is not None and tuple(int(d) for d in t.shape) in raw}
    float_ops, tainted = [], set(seeds)
    for op in graph.operators:  # operators are stored in execution order
        if codes[op.opcodeIndex] == schema.BuiltinOperator.LOGISTIC or \
                any(int(i) in tainted for i in op.inputs):
            float_ops.append(op)
            tainted |= {int(o) for o in op.outputs}
    outputs = {int(i) for i in graph.outputs}
    if integer_outputs:
        float_ops = [op for op in float_ops if int(op.outputs[0]) not in outputs or
                     graph.tensors[op.outputs[0]].type == schema.TensorType.INT32]
    return [graph.tensors[op.outputs[0]].name.decode() for op in float_ops]


def convert_head(saved_model: Path, head: Head, calib: np.ndarray | None, per_channel: bool,
                 integer_io: bool, log_path: Path) -> bytes:
    """The post-processed .tflite: float32, or with `calib` the network in int8 (the head in
    float). Object-detector: uint8 input (pixels); decoded: SCRFD's normalised input, float32,
    or int8 with integer_io (outputs then int8 too, except count)."""
    pixels = head.kind == "object-detector"
    with converter_step(f"the {head.kind} head", log_path):
        import tensorflow as tf
        from tensorflow.lite.python import convert as tflite_convert
        from tensorflow.lite.python import util as tflite_util

        serve, loaded, keypoints = head_function(
            saved_model, head, ("uint8" if calib is None else "pixels") if pixels else "normalised")
        converter = tf.lite.TFLiteConverter.from_concrete_functions(
            [serve.get_concrete_function()], loaded)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if calib is None:
            model = converter.convert()
        else:
            data = (calib * INPUT_STD + INPUT_MEAN).round() if pixels else calib
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: ([image[None].astype(np.float32)]
                                                        for image in data)
            converter._experimental_calibrate_only = True
            calibrated = converter.convert()
            network = loaded.signatures["serving_default"].structured_outputs
            shapes = [[int(d) for d in v.shape] for v in network.values()]
            denied = float_head_ops(calibrated, shapes, integer_io)
            model = tflite_convert.mlir_quantize(calibrated, disable_per_channel=not per_channel,
                                                 denylisted_nodes=denied)
            in_type = tf.uint8 if pixels else tf.int8
            out_type = tf.int8 if integer_io else tf.float32
            model = tflite_util.modify_model_io_type(model, in_type, out_type)
    return name_outputs(bytes(model), head, keypoints)


def name_outputs(model_bytes: bytes, head: Head, keypoints: bool) -> bytes:
    """Output tensors renamed boxes, scores, ... in the documented order (the converter calls
    them Identity_N); the order is checked against each output's shape."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(model_bytes))
    graph = model.subgraphs[0]
    wanted = output_names(head, keypoints)
    rows = head.max_faces if head.nms_threshold is not None else None
    expected = {"boxes": 3, "scores": 2, "classes": 2, "landmarks": 4, "count": 1}
    found = {}
    for index in graph.outputs:
        tensor = graph.tensors[index]
        found.setdefault(len(tensor.shape), []).append(int(index))
    order = []
    for name in wanted:  # same-rank outputs (scores, classes) keep the converter's order
        candidates = found.get(expected[name], [])
        if not candidates:
            raise UserError(f"the {head.kind} conversion lost its {name} output")
        order.append(candidates.pop(0))
    # The metadata writers (and TFLite_Detection_PostProcess) take the output tensors' indices,
    # ascending, as boxes, classes, scores, count: the four tensors swap places to match.
    moved = dict(zip(order, sorted(order)))
    tensors = list(graph.tensors)
    for old, new in moved.items():
        graph.tensors[new] = tensors[old]

    def remap(indices):
        return None if indices is None else np.array([moved.get(int(i), int(i)) for i in indices],
                                                     np.int32)

    for op in graph.operators:
        op.inputs, op.outputs = remap(op.inputs), remap(op.outputs)
        if op.intermediates is not None and len(op.intermediates):
            op.intermediates = remap(op.intermediates)
    graph.inputs = remap(graph.inputs)
    graph.outputs = np.array(sorted(order), np.int32)
    for signature in model.signatureDefs or []:
        for entry in list(signature.inputs or []) + list(signature.outputs or []):
            entry.tensorIndex = moved.get(int(entry.tensorIndex), int(entry.tensorIndex))
    for name, index in zip(wanted, sorted(order)):
        graph.tensors[index].name = name.encode()
        shape = [int(d) for d in graph.tensors[index].shape]
        if rows and name != "count" and shape[1] != rows:
            raise UserError(f"the {head.kind} conversion gave {name} the shape {shape}")
        for signature in model.signatureDefs or []:
            for entry in signature.outputs or []:
                if int(entry.tensorIndex) == index:
                    entry.name = name.encode()
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def op_types(model_bytes: bytes) -> dict[str, dict[str, int]]:
    """{"int8": {op: count}, "float": {op: count}}: each op by the type of its first output
    (QUANTIZE counts as int8, DEQUANTIZE as float): what runs in float in an export."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(model_bytes))
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    types = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    counts: dict[str, dict[str, int]] = {}
    for graph in model.subgraphs:
        for op in graph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            name = names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM")
            kind = types[graph.tensors[op.outputs[0]].type].lower() if len(op.outputs) else "-"
            kind = "float" if kind.startswith("float") else kind
            bucket = counts.setdefault(kind, {})
            bucket[name] = bucket.get(name, 0) + 1
    return counts
