"""Model statistics read from the graph: parameters, multiply-adds and FLOPs, op histogram,
weight bytes, a liveness estimate of the activations, and which ops XNNPACK takes.

Counted at the input size the model runs at (SCRFD's cost grows with the pixels), for ONNX
and TFLite alike, without TensorFlow:

    from .model_stats import model_flops
    model_flops(Path("models/det_500m.onnx"), (480, 640))  # 2 x multiply-adds of the convolutions
"""
from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..defaults import DEFAULT_INPUT_HW
from ..errors import UserError
from ..metadata import family_of
from ..runners import onnx_session, tflite_interpreter, tflite_ops
from .backends import INSTALL_HINT

ORIGINAL_FLOPS = {("det_500m", (480, 640)): 1.113e9, ("det_500m", (256, 320)): 296.758e6,
                  ("det_500m", (128, 160)): 74.189e6}  # the original project's README
MB = 1e6

# Which inputs of which ops hold parameters (ONNX and TFLite op names side by side).
PARAM_SLOTS = {"Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (1, 2), "MatMul": (0, 1),
               "BatchNormalization": (1, 2, 3, 4), "PRelu": (1,), "QLinearConv": (3, 8),
               "QLinearMatMul": (3,), "ConvInteger": (1,), "MatMulInteger": (1,),
               "Add": (0, 1), "Mul": (0, 1), "Sub": (0, 1), "Div": (1,),
               "CONV_2D": (1, 2), "DEPTHWISE_CONV_2D": (1, 2), "FULLY_CONNECTED": (1, 2),
               "TRANSPOSE_CONV": (1, 3), "BATCH_MATMUL": (0, 1), "PRELU": (1,),
               "ADD": (0, 1), "MUL": (0, 1), "SUB": (0, 1), "DIV": (1,)}
# Ops that only move or reshape data: not counted among the element-wise outputs.
LAYOUT_OPS = ("Reshape", "RESHAPE", "Shape", "Gather", "Unsqueeze", "Concat", "Slice", "Squeeze",
              "Flatten")


class ModelStatsError(UserError):
    """A model that cannot be read or counted; reported on one line, other models go on."""


def _first_line(err: Exception, limit: int = 100) -> str:
    return (str(err).splitlines() or [type(err).__name__])[0][:limit]


# ----------------------------------------------------------------------------- graphs
@dataclass
class Graph:
    """A model as tensors plus ops in execution order: enough to count and to walk."""

    path: Path
    format: str  # "onnx" or "tflite"
    input_shape: tuple[int, ...]
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str]
    constants: set[str]  # stored in the file (initializers, flatbuffer buffers)
    ops: list[tuple[str, list[str], list[str]]]  # (type, inputs, outputs)
    inputs: list[str]
    outputs: list[str]

    def nbytes(self, name: str) -> int:
        return int(np.prod(self.shapes.get(name, ()), dtype=np.int64)) * np.dtype(self.dtypes[name]).itemsize


def onnx_graph(path: Path, hw: tuple[int, int] | None) -> Graph:
    """Parse an ONNX model; shapes by ONNX shape inference, else by one ONNX Runtime run."""
    try:
        import onnx
        from onnx import numpy_helper, shape_inference
    except ImportError:
        raise ModelStatsError(f"counting ONNX needs the onnx package ({INSTALL_HINT['onnx']})") from None
    try:
        model = onnx.load(str(path))
    except Exception as err:  # protobuf DecodeError and friends
        raise ModelStatsError(f"cannot read {path} as ONNX ({_first_line(err)})") from None
    graph = model.graph
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, str] = {}
    for tensor in graph.initializer:
        shapes[tensor.name] = tuple(tensor.dims)
        dtypes[tensor.name] = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).name
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            value = numpy_helper.to_array(node.attribute[0].t)
            shapes[node.output[0]], dtypes[node.output[0]] = value.shape, value.dtype.name
    constants = set(shapes)
    inputs = [i for i in graph.input if i.name not in constants]
    if len(inputs) != 1 or len(inputs[0].type.tensor_type.shape.dim) != 4:
        raise ModelStatsError(f"{path.name}: expected one 1x3xHxW image input")
    dims = inputs[0].type.tensor_type.shape.dim
    fixed = (dims[2].dim_value, dims[3].dim_value)
    if all(fixed) and hw and tuple(hw) != fixed:
        raise ModelStatsError(f"{path.name} has a fixed {fixed[0]}x{fixed[1]} input, not {hw[0]}x{hw[1]}")
    height, width = fixed if all(fixed) else (hw or DEFAULT_INPUT_HW)
    for dim, value in zip(dims, (1, 3, height, width)):
        dim.ClearField("dim_param")
        dim.dim_value = value
    for output in graph.output:  # dynamic exports declare 640x640 outputs; let inference decide
        for dim in output.type.tensor_type.shape.dim:
            dim.Clear()
    del graph.value_info[:]
    try:
        inferred = shape_inference.infer_shapes(model, data_prop=True).graph
        for info in list(inferred.value_info) + list(inferred.output) + list(inferred.input):
            kind = info.type.tensor_type
            if kind.elem_type and kind.shape.dim and all(d.dim_value > 0 for d in kind.shape.dim):
                shapes.setdefault(info.name, tuple(d.dim_value for d in kind.shape.dim))
                dtypes.setdefault(info.name, onnx.helper.tensor_dtype_to_np_dtype(kind.elem_type).name)
    except Exception:  # inference is best effort; the probe below fills the gaps
        pass
    ops = [(n.op_type, [i for i in n.input if i], list(n.output)) for n in graph.node
           if n.op_type != "Constant"]
    missing = [name for _, _, outs in ops for name in outs if name not in shapes]
    if missing:  # e.g. SCRFD's Resize with sizes computed from Shape: run it once, look
        exposed = {o.name for o in graph.output}
        graph.output.extend(onnx.ValueInfoProto(name=n) for n in missing if n not in exposed)
        values = _probe_onnx(model.SerializeToString(), missing, inputs[0].name, (height, width), path)
        for name, value in zip(missing, values):
            shapes[name], dtypes[name] = tuple(value.shape), value.dtype.name
    shapes[inputs[0].name], dtypes[inputs[0].name] = (1, 3, height, width), "float32"
    return Graph(path, "onnx", (1, 3, height, width), shapes, dtypes, constants, ops,
                 [inputs[0].name], [o.name for o in model.graph.output if o.name not in missing])


def _probe_onnx(content: bytes, names: list[str], input_name: str, hw: tuple[int, int],
                path: Path) -> list[np.ndarray]:
    """Run a model (with its inner tensors exposed as outputs) once on zeros: those tensors."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ModelStatsError(f"shapes of {path.name} need one ONNX Runtime run "
                              f"({INSTALL_HINT['onnxruntime']})") from None
    with tempfile.TemporaryDirectory(prefix="scrfd_model_stats_") as folder:
        probe = Path(folder) / path.name
        probe.write_bytes(content)
        try:
            session = onnx_session(probe, threads=None)
            return session.run(names, {input_name: np.zeros((1, 3, *hw), np.float32)})
        except Exception as err:  # UserError from the session, ORT's own errors from the run
            raise ModelStatsError(f"cannot run {path.name} at {hw[0]}x{hw[1]} to get its shapes "
                                  f"({_first_line(err)})") from None


def tflite_graph(path: Path, hw: tuple[int, int] | None) -> Graph:
    """Parse a .tflite flatbuffer; shapes from an interpreter without delegates (sized to hw)."""
    try:
        from ai_edge_litert.tools import flatbuffer_utils
    except ImportError:
        raise ModelStatsError(f"counting TFLite needs LiteRT ({INSTALL_HINT['litert']})") from None
    try:  # the interpreter first: its structure check names a damaged file, a parser would not
        interpreter = tflite_interpreter(path, xnnpack=False)
    except UserError as err:
        raise ModelStatsError(str(err)) from None
    try:
        model = flatbuffer_utils.read_model(str(path))
    except Exception as err:
        raise ModelStatsError(f"cannot read {path} as TFLite ({_first_line(err)})") from None
    sized_interpreter(interpreter, hw)
    detail = interpreter.get_input_details()[0]
    if min(detail["shape_signature"]) < 0:  # shapes computed in the graph settle on the first run
        try:
            interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
            interpreter.invoke()
        except (RuntimeError, ValueError) as err:
            raise ModelStatsError(f"{path.name} does not run at {detail['shape'].tolist()} "
                                  f"({_first_line(err, 120)})") from None
    subgraph = model.subgraphs[0]
    details = {t["index"]: t for t in interpreter.get_tensor_details()}
    shapes, dtypes, constants = {}, {}, set()
    for index, tensor in enumerate(subgraph.tensors):
        name = str(index)
        shapes[name] = tuple(int(d) for d in (details[index]["shape"] if index in details
                                             else tensor.shape if tensor.shape is not None else ()))
        dtypes[name] = np.dtype(details[index]["dtype"]).name if index in details else \
            flatbuffer_utils.type_to_name(tensor.type).lower()
        data = model.buffers[tensor.buffer].data if tensor.buffer < len(model.buffers) else None
        if (data is not None and len(data)) or (tensor.buffer and model.buffers[tensor.buffer].size):
            constants.add(name)
    ops = [(flatbuffer_utils.opcode_to_name(model, op.opcodeIndex),
            [str(i) for i in (op.inputs if op.inputs is not None else []) if i >= 0],
            [str(i) for i in (op.outputs if op.outputs is not None else []) if i >= 0])
           for op in subgraph.operators]
    inputs = [str(i) for i in subgraph.inputs]
    return Graph(path, "tflite", shapes[inputs[0]], shapes, dtypes, constants, ops, inputs,
                 [str(i) for i in subgraph.outputs])


def sized_interpreter(interpreter, hw: tuple[int, int] | None):
    """Resize a dynamic image input to hw (default 640x640) and allocate; ModelStatsError if not."""
    detail = interpreter.get_input_details()[0]
    signature = [int(d) for d in detail["shape_signature"]]
    if len(signature) == 4 and min(signature[1:]) <= 0:
        height, width = hw or DEFAULT_INPUT_HW
        nchw = signature[1] == 3
        interpreter.resize_tensor_input(detail["index"], [1, 3, height, width] if nchw else
                                        [1, height, width, 3])
    elif hw and len(signature) == 4:
        spatial = signature[2:] if signature[1] == 3 else signature[1:3]
        if tuple(spatial) != tuple(hw):
            raise ModelStatsError(f"model has a fixed {spatial[0]}x{spatial[1]} input, not {hw[0]}x{hw[1]}")
    try:
        interpreter.allocate_tensors()
    except (RuntimeError, ValueError) as err:
        raise ModelStatsError(f"cannot allocate the model ({_first_line(err)})") from None
    return interpreter


def load_graph(path: Path, hw: tuple[int, int] | None) -> Graph:
    """The graph of an .onnx or .tflite file at input size hw (None: its own, or 640x640)."""
    if not path.is_file():
        raise ModelStatsError(f"model not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return onnx_graph(path, hw)
    if suffix == ".tflite":
        return tflite_graph(path, hw)
    raise ModelStatsError(f"{path}: unsupported model type (expected .onnx or .tflite)")


# ----------------------------------------------------------------------------- counting
def op_macs(graph: Graph, op_type: str, inputs: list[str], outputs: list[str]) -> int:
    """Multiply-adds of one op (convolutions and matrix products; everything else is 0)."""
    size = lambda name: int(np.prod(graph.shapes[name], dtype=np.int64))  # noqa: E731
    weight = lambda k: graph.shapes[inputs[k]]  # noqa: E731
    if op_type in ("Conv", "ConvInteger"):  # W: (Cout, Cin/group, kh, kw)
        return size(outputs[0]) * int(np.prod(weight(1)[1:]))
    if op_type == "QLinearConv":
        return size(outputs[0]) * int(np.prod(weight(3)[1:]))
    if op_type == "ConvTranspose":  # W: (Cin, Cout/group, kh, kw): every input spreads to a kernel
        return size(inputs[0]) * int(np.prod(weight(1)[1:]))
    if op_type in ("Gemm", "MatMul", "MatMulInteger", "BATCH_MATMUL"):
        return size(outputs[0]) * int(graph.shapes[inputs[0]][-1])
    if op_type == "CONV_2D":  # W: (Cout, kh, kw, Cin)
        return size(outputs[0]) * int(np.prod(weight(1)[1:]))
    if op_type == "DEPTHWISE_CONV_2D":  # W: (1, kh, kw, C * multiplier)
        return size(outputs[0]) * int(np.prod(weight(1)[1:3]))
    if op_type == "FULLY_CONNECTED":  # W: (out, in)
        return size(outputs[0]) * int(weight(1)[-1])
    if op_type == "TRANSPOSE_CONV":  # W: (Cout, kh, kw, Cin), input 2 is the data
        return size(inputs[2]) * int(np.prod(weight(1)[:3]))
    return 0


def model_statistics(graph: Graph) -> dict:
    """Parameters, MACs/FLOPs, op histogram, weight bytes and a liveness estimate of activations."""
    # Tensors computed from constants alone (float16 weights -> DEQUANTIZE) count as weights.
    source = {name: {name} for name in graph.constants}
    executed = []
    for op_type, inputs, outputs in graph.ops:
        if inputs and all(i in source for i in inputs):
            for out in outputs:
                source[out] = set().union(*(source[i] for i in inputs))
        else:
            executed.append((op_type, inputs, outputs))
    params: set[str] = set()
    for op_type, inputs, _ in graph.ops:
        for slot in PARAM_SLOTS.get(op_type, ()):
            if slot < len(inputs) and inputs[slot] in source:
                params |= source[inputs[slot]]
    macs_by_op: Counter = Counter()
    elementwise = conv_outputs = 0
    for op_type, inputs, outputs in executed:
        macs = op_macs(graph, op_type, inputs, outputs)
        macs_by_op[op_type] += macs
        if macs:
            conv_outputs += int(np.prod(graph.shapes[outputs[0]], dtype=np.int64))
        if not macs and op_type not in LAYOUT_OPS:
            elementwise += sum(int(np.prod(graph.shapes[o], dtype=np.int64)) for o in outputs)
    weight_bytes: Counter = Counter()
    for name in graph.constants:
        weight_bytes[graph.dtypes[name]] += graph.nbytes(name)
    peak, peak_at = liveness_peak(graph, executed, set(source))
    macs = sum(macs_by_op.values())
    shape = graph.input_shape
    nchw = shape[1] in (3, 4) and shape[-1] not in (3, 4)
    return {"model": str(graph.path), "format": graph.format, "input_shape": list(shape),
            "input_hw": list(shape[2:] if nchw else shape[1:3]), "file_bytes": graph.path.stat().st_size,
            "params": int(sum(int(np.prod(graph.shapes[p], dtype=np.int64)) for p in params)),
            "macs": int(macs), "flops": int(2 * macs),
            "macs_by_op": {k: int(v) for k, v in macs_by_op.items() if v},
            "conv_outputs": int(conv_outputs),
            "elementwise_outputs": int(elementwise),
            "ops": len(executed), "op_histogram": dict(Counter(t for t, _, _ in executed).most_common()),
            "weight_bytes": dict(weight_bytes.most_common()),
            "peak_activation_bytes": int(peak), "peak_at": peak_at}


def model_flops(model_path: Path, input_hw: tuple[int, int]) -> int:
    """FLOPs = 2 x multiply-adds of the convolutions at this input size (ModelStatsError if the
    model cannot be read)."""
    return model_statistics(load_graph(Path(model_path), input_hw))["flops"]


def liveness_peak(graph: Graph, ops: list, constant_like: set[str]) -> tuple[int, str]:
    """Largest sum of activation bytes alive at once, walking ops in execution order.

    A tensor lives from the op that writes it to the last op that reads it (graph inputs from
    the start, outputs to the end). No in-place reuse and no kernel scratch: an estimate of
    the arena a planner needs, not of the whole process.
    """
    first: dict[str, int] = {name: 0 for name in graph.inputs}
    last: dict[str, int] = {}
    for step, (_, inputs, outputs) in enumerate(ops):
        for name in outputs:
            first.setdefault(name, step)
        for name in inputs:
            last[name] = step
    for name in graph.outputs:
        last[name] = len(ops) - 1
    events = np.zeros(len(ops) + 1, np.int64)
    for name, start in first.items():
        if name in constant_like or name not in graph.shapes:
            continue
        events[start] += graph.nbytes(name)
        events[max(last.get(name, start), start) + 1] -= graph.nbytes(name)
    live = np.cumsum(events[:-1])
    step = int(np.argmax(live)) if len(live) else 0
    where = f"op {step} ({ops[step][0]})" if ops else "no ops"
    return (int(live.max()) if len(live) else 0), where


def xnnpack_coverage(path: Path, hw: tuple[int, int] | None) -> dict:
    """Which ops LiteRT's default XNNPACK delegate takes, found from the delegated partitions.

    After delegation the interpreter lists the original ops followed by one DELEGATE node per
    partition. Walking back from a partition's outputs to its inputs visits exactly the ops it
    swallowed; every other op runs on LiteRT's builtin (reference/optimized) kernels.
    """
    try:
        interpreter = sized_interpreter(tflite_interpreter(path, threads=1), hw)
    except UserError as err:
        raise ModelStatsError(str(err)) from None
    details = tflite_ops(interpreter)
    originals = [d for d in details if d["op_name"] != "DELEGATE"]
    delegates = [d for d in details if d["op_name"] == "DELEGATE"]
    producer = {int(t): d["index"] for d in originals for t in d["outputs"]}
    by_index = {d["index"]: d for d in originals}
    taken: set[int] = set()
    for node in delegates:
        stop = {int(t) for t in node["inputs"]}
        todo = [int(t) for t in node["outputs"]]
        while todo:
            tensor = todo.pop()
            index = producer.get(tensor)
            if tensor in stop or index is None or index in taken:
                continue
            taken.add(index)
            todo += [int(t) for t in by_index[index]["inputs"]]
    tensor_types = {t["index"]: np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details()}
    per_type: dict[str, list[int]] = {}
    fallback: Counter = Counter()
    for op in originals:
        counts = per_type.setdefault(op["op_name"], [0, 0])
        counts[1] += 1
        if op["index"] in taken:
            counts[0] += 1
        else:
            dtype = tensor_types.get(int(op["outputs"][0]), "?") if len(op["outputs"]) else "?"
            fallback[f"{op['op_name']} ({dtype})"] += 1
    return {"ops": len(originals), "delegated": len(taken), "partitions": len(delegates),
            "per_type": per_type, "fallback": dict(fallback)}


# ----------------------------------------------------------------------------- printing
def fmt_count(value: float) -> str:
    """1.113 G, 296.758 M, 74.189 K: counts as people read them."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= scale:
            return f"{value / scale:.3f} {unit}"
    return f"{value:.0f}"


def print_statistics(info: dict, memory: dict | None = None, xnnpack: dict | None = None) -> None:
    """One model's statistics, with the measured memory of a fresh process beside the estimate."""
    shape = "x".join(map(str, info["input_shape"]))
    print(f"\n== {info['model']} ({info['format'].upper()}, input {shape})")
    weights = ", ".join(f"{k} {v / MB:.3f} MB" for k, v in info["weight_bytes"].items())
    print(f"file size           {info['file_bytes'] / MB:.3f} MB")
    print(f"parameters          {info['params']:,}")
    print(f"stored constants    {weights}")
    by_op = ", ".join(f"{k} {fmt_count(v)}" for k, v in info["macs_by_op"].items())
    print(f"multiply-adds       {fmt_count(info['macs'])}  ({by_op})")
    print(f"FLOPs = 2 x MACs    {fmt_count(info['flops'])}   (+ one add per conv output for the bias: "
          f"{fmt_count(info['flops'] + info['conv_outputs'])})")
    original = ORIGINAL_FLOPS.get((family_of(Path(info["model"])), tuple(info["input_hw"])))
    if original:
        print(f"original README     {fmt_count(original)}: 2 x MACs is {100 * (info['flops'] / original - 1):+.2f}%, "
              f"2 x MACs + bias adds {100 * ((info['flops'] + info['conv_outputs']) / original - 1):+.2f}%"
              " (it counted a bit more than the multiply-adds; both scale exactly with the pixels)")
    print(f"element-wise ops    {fmt_count(info['elementwise_outputs'])} outputs (Add, Relu, Sigmoid, "
          "Resize, Pad...: not in FLOPs)")
    print(f"ops                 {info['ops']}: " + ", ".join(f"{k} {v}" for k, v in info["op_histogram"].items()))
    print(f"peak activations    {info['peak_activation_bytes'] / MB:.2f} MB live at once "
          f"(at {info['peak_at']}; liveness walk, no in-place reuse, no scratch)")
    if xnnpack:
        fallback = ", ".join(f"{k} x{v}" for k, v in xnnpack["fallback"].items()) or "none"
        dequantize = xnnpack["per_type"].get("DEQUANTIZE", [0])[0]
        print(f"XNNPACK             takes {xnnpack['delegated']} of {xnnpack['ops']} ops"
              + (f" ({dequantize} of them DEQUANTIZE of stored weights)" if dequantize else "")
              + f" in {xnnpack['partitions']} partition(s); on builtin kernels: {fallback}")
    if memory and "error" not in memory:
        weights = sum(info["weight_bytes"].values())
        estimate = weights + info["peak_activation_bytes"]
        load = memory["rss_loaded"] - memory["rss_imported"]
        runs = memory["rss_ran"] - memory["rss_input_ready"]
        growth = load + runs
        peak = f"{memory['peak_rss'] / MB:.0f} MB" if memory.get("peak_rss") else "n/a"
        print(f"measured            fresh process, 1 thread: the model grows RSS by {growth / MB:.1f} MB "
              f"(+{load / MB:.1f} MB to load, +{runs / MB:.1f} MB over {memory['runs']} runs; imports and "
              f"the input photo not counted); peak RSS {peak}")
        print(f"estimate vs measured: weights {weights / MB:.1f} MB + peak activations "
              f"{info['peak_activation_bytes'] / MB:.1f} MB = {estimate / MB:.1f} MB, "
              f"{estimate / growth:.0%} of the growth; the rest is the runtime's own: packed weight "
              "copies, arena rounding and scratch, thread pool, code pages")
    elif memory:
        print(f"measured            {memory['error']}")


def statistics_summary(info: dict) -> str:
    """One line per model for the timing run: parameters, MACs, FLOPs, activations, XNNPACK."""
    xnn = info.get("xnnpack")
    return (f"{info['model']}: {info['params']:,} params, {fmt_count(info['macs'])} MACs = "
            f"{fmt_count(info['flops'])}FLOPs, peak activations {info['peak_activation_bytes'] / MB:.1f} MB"
            + (f", XNNPACK takes {xnn['delegated']}/{xnn['ops']} ops"
               + (" (builtin kernels: " + ", ".join(f"{k} x{v}" for k, v in xnn["fallback"].items())
                  + ")" if xnn["fallback"] else "") if xnn else ""))
