"""How big and how fast are the SCRFD models: graph analysis, latency, end-to-end time, memory.

Analysis (ONNX and TFLite): parameters, multiply-adds and FLOPs (= 2 x MACs) counted from the
graph at the input size, op histogram, file size and weight bytes by dtype, a runtime-memory
estimate (peak live activations from a liveness walk) beside the RSS a fresh process really
grows by, and for TFLite which ops XNNPACK takes and which fall back to builtin kernels.

Timing: every backend x model x thread count is loaded at once and run round-robin (A, B, A,
B, ...), so the noise of a shared machine hits all of them alike; ratios are taken within one
run. Model-only latency (median, p90, p99, spread of the per-round medians), end-to-end time
on a real photo (read, preprocess, inference, decode, NMS), throughput, and the peak RSS of a
fresh process that loads and runs the model. CPU, cores and library versions go with every row.

    python speed_test.py                                   # det_500m 640x640, float32+int8, both backends, 1 and 2 threads
    python speed_test.py --analyze models/det_500m_480x640.onnx
    python speed_test.py --grid --markdown docs/speed.md   # the README table: every exported model in models/
    python speed_test.py --models models/scrfd500m_640x640_float32.tflite --threads 1 --repeat 3 --json r.json
    python speed_test.py --backends onnxruntime,onnxruntime-cuda --threads 1   # on a machine with an NVIDIA GPU
"""
from __future__ import annotations

import argparse
import csv
import gc
import glob
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from detector import (UserError, atomic_write, cli, decode, load_metadata, nms,
                      parse_hw, preprocess, read_image)

# ----------------------------------------------------------------------------- config
REPO = Path(__file__).resolve().parent
MODELS_DIR = REPO / "models"
SHARED = Path(os.environ.get("SCRFD_SHARED", REPO.parent / "shared"))
IMAGE_CANDIDATES = (REPO / "data" / "crowd_selfie.jpg", SHARED / "samples" / "crowd_selfie.jpg")
DEFAULT_MODELS = ("det_500m_640x640.onnx", "scrfd500m_640x640_float32.tflite",
                  "scrfd500m_640x640_int8.tflite")  # in --models-dir
GRID_FAMILIES = ("500m", "2.5g")  # det_500m / det_2.5g -> scrfd500m / scrfd2.5g exports
GRID_SIZES = ((640, 640), (480, 640), (256, 320), (128, 160))  # the original project's sizes
GRID_PRECISIONS = ("float32", "float16", "int8")
CPU_BACKENDS = ("litert", "onnxruntime")
GPU_BACKENDS = ("onnxruntime-cuda", "onnxruntime-tensorrt", "litert-gpu")
ALL_BACKENDS = CPU_BACKENDS + ("litert-builtin",) + GPU_BACKENDS
BACKEND_FORMAT = {"litert": ".tflite", "litert-builtin": ".tflite", "litert-gpu": ".tflite",
                  "onnxruntime": ".onnx", "onnxruntime-cuda": ".onnx", "onnxruntime-tensorrt": ".onnx"}
ORT_PROVIDERS = {"onnxruntime-cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
                 "onnxruntime-tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                          "CPUExecutionProvider"]}
LITERT_GPU_ENV = "SCRFD_LITERT_GPU_DELEGATE"  # path of a LiteRT/TFLite GPU delegate .so
LITERT_GPU_LIBS = ("libtensorflowlite_gpu_delegate.so", "libLiteRtGpuAccelerator.so")
INSTALL_HINT = {"litert": "pip install ai-edge-litert==2.1.0",
                "onnxruntime": "pip install onnxruntime==1.23.0 (onnxruntime-gpu for CUDA)",
                "onnx": "pip install onnx==1.19.1"}
DEFAULT_THREADS = "1,2"
DEFAULT_REPEAT = 10  # rounds; every runner gets one block of --iters calls per round
DEFAULT_ITERS = 10
WARMUP = 5
E2E_PER_ROUND = 2
SCORE_THRESHOLD = 0.02  # what WIDER FACE evaluation uses: the crowded, worst case for post-processing
NMS_THRESHOLD = 0.45
RSS_RUNS = 10  # inferences in the fresh process whose peak RSS we measure
TARGET_LITERT_VS_ORT = 1.0  # LiteRT float32 / ONNX Runtime, det_500m 640x640, 1 thread
TARGET_PREPOST = 0.15  # (preprocess + decode + NMS) / inference on the crowded photo
TARGET_RSS_MB = 200.0  # scrfd.py with det_500m int8 at 640x640
DEFAULT_JSON = REPO / "results" / "speed_test.json"
DEFAULT_EVAL = "results/**/results.json"
DEFAULT_PLOT = REPO / "results" / "speed_accuracy.png"
# --detector: every detector through its own detect() at its recommended settings
COMPARE_OUT = REPO / "results" / "compare"  # compare.md, compare.csv, compare.png
COMPARE_EVAL = "results/**/results.json"  # evaluate_widerface.py runs to take the APs from
COMPARE_PHOTOS = 8  # WIDER val photos (spread over the folder) the detectors are timed on
COMPARE_RSS_RUNS = 3  # detect() calls in the fresh process whose peak RSS we measure
ROUGH_KEY = ("rough-iou", "32px")  # the rough-protocol AP the comparison table shows
ZOOM = ((50.0, 135.0), (66.5, 78.0))  # chart's right panel: latency ms, Hard AP (the 640-class corner)
MB = 1e6
ORIGINAL_FLOPS = {("det_500m", (480, 640)): 1.113e9, ("det_500m", (256, 320)): 296.758e6,
                  ("det_500m", (128, 160)): 74.189e6}  # the original project's README

# Which inputs of which ops hold parameters (ONNX and TFLite op names side by side).
PARAM_SLOTS = {"Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (1, 2), "MatMul": (0, 1),
               "BatchNormalization": (1, 2, 3, 4), "PRelu": (1,), "QLinearConv": (3, 8),
               "QLinearMatMul": (3,), "ConvInteger": (1,), "MatMulInteger": (1,),
               "Add": (0, 1), "Mul": (0, 1), "Sub": (0, 1), "Div": (1,),
               "CONV_2D": (1, 2), "DEPTHWISE_CONV_2D": (1, 2), "FULLY_CONNECTED": (1, 2),
               "TRANSPOSE_CONV": (1, 3), "BATCH_MATMUL": (0, 1), "PRELU": (1,),
               "ADD": (0, 1), "MUL": (0, 1), "SUB": (0, 1), "DIV": (1,)}


# ----------------------------------------------------------------------------- environment
def version_of(package: str) -> str | None:
    """Installed version without importing the package (keeps this process small)."""
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    """What a timing means nothing without: CPU, cores, load, library versions."""
    import psutil

    versions = {name: version_of(pkg) for name, pkg in (
        ("numpy", "numpy"), ("opencv", "opencv-python"), ("onnxruntime", "onnxruntime"),
        ("onnxruntime-gpu", "onnxruntime-gpu"), ("ai-edge-litert", "ai-edge-litert"),
        ("onnx", "onnx"))}
    return {"cpu": cpu_name(), "logical_cores": os.cpu_count(),
            "physical_cores": psutil.cpu_count(logical=False),
            "load_average": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
            "platform": platform.platform(), "python": platform.python_version(),
            "versions": {k: v for k, v in versions.items() if v}}


def gpu_status() -> dict[str, str | None]:
    """For each GPU backend: None when usable, else why not (never time a CPU under a GPU name)."""
    status: dict[str, str | None] = {}
    try:
        import onnxruntime as ort
        available = ort.get_available_providers()
    except ImportError:
        available = None
    for backend, providers in ORT_PROVIDERS.items():
        if available is None:
            status[backend] = "onnxruntime is not installed"
        elif providers[0] not in available:
            status[backend] = (f"{providers[0]} not in onnxruntime's providers "
                               f"({', '.join(available)}); install onnxruntime-gpu")
        else:
            status[backend] = None  # a session still has to prove it runs there (see open_runner_for)
    status["litert-gpu"] = None if litert_gpu_library() else (
        f"no LiteRT GPU delegate library (the pip package has none; set {LITERT_GPU_ENV})")
    return status


def litert_gpu_library() -> str | None:
    """The first GPU delegate library that loads, or None."""
    try:
        from ai_edge_litert.interpreter import load_delegate
    except ImportError:
        return None
    import ctypes

    for name in ([os.environ[LITERT_GPU_ENV]] if os.environ.get(LITERT_GPU_ENV) else []) + list(LITERT_GPU_LIBS):
        try:
            ctypes.CDLL(name)  # cheap existence check: a failed load_delegate leaves noisy objects
            load_delegate(name)
            return name
        except (ValueError, OSError, RuntimeError):
            continue
    return None


def nvidia_gpu() -> str | None:
    """Name of the first NVIDIA GPU, from nvidia-smi, or None."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


# ----------------------------------------------------------------------------- graphs
class AnalysisError(Exception):
    """A model this script cannot read or count; reported on one line, other models go on."""


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
        raise AnalysisError(f"analysing ONNX needs the onnx package ({INSTALL_HINT['onnx']})") from None
    try:
        model = onnx.load(str(path))
    except Exception as err:  # protobuf DecodeError and friends
        raise AnalysisError(f"cannot read {path} as ONNX ({str(err).splitlines()[0][:100]})") from None
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
        raise AnalysisError(f"{path.name}: expected one 1x3xHxW image input")
    dims = inputs[0].type.tensor_type.shape.dim
    fixed = (dims[2].dim_value, dims[3].dim_value)
    if all(fixed) and hw and tuple(hw) != fixed:
        raise AnalysisError(f"{path.name} has a fixed {fixed[0]}x{fixed[1]} input, not {hw[0]}x{hw[1]}")
    height, width = fixed if all(fixed) else (hw or (640, 640))
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
        try:
            import onnxruntime as ort
        except ImportError:
            raise AnalysisError(f"shapes of {path.name} need one ONNX Runtime run "
                                f"({INSTALL_HINT['onnxruntime']})") from None
        exposed = {o.name for o in graph.output}
        graph.output.extend(onnx.ValueInfoProto(name=n) for n in missing if n not in exposed)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            session = ort.InferenceSession(model.SerializeToString(), options,
                                           providers=["CPUExecutionProvider"])
            values = session.run(missing, {inputs[0].name: np.zeros((1, 3, height, width), np.float32)})
        except Exception as err:
            raise AnalysisError(f"cannot run {path.name} at {height}x{width} to get its shapes "
                                f"({str(err).splitlines()[0][:100]})") from None
        for name, value in zip(missing, values):
            shapes[name], dtypes[name] = tuple(value.shape), value.dtype.name
    shapes[inputs[0].name], dtypes[inputs[0].name] = (1, 3, height, width), "float32"
    return Graph(path, "onnx", (1, 3, height, width), shapes, dtypes, constants, ops,
                 [inputs[0].name], [o.name for o in model.graph.output if o.name not in missing])


def tflite_graph(path: Path, hw: tuple[int, int] | None) -> Graph:
    """Parse a .tflite flatbuffer; shapes from an interpreter without delegates (sized to hw)."""
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
        from ai_edge_litert.tools import flatbuffer_utils
    except ImportError:
        raise AnalysisError(f"analysing TFLite needs LiteRT ({INSTALL_HINT['litert']})") from None
    try:
        model = flatbuffer_utils.read_model(str(path))
        interpreter = Interpreter(model_path=str(path), experimental_op_resolver_type=
                                  OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    except Exception as err:
        raise AnalysisError(f"cannot read {path} as TFLite ({str(err).splitlines()[0][:100]})") from None
    sized_interpreter(interpreter, hw)
    detail = interpreter.get_input_details()[0]
    if min(detail["shape_signature"]) < 0:  # shapes computed in the graph settle on the first run
        try:
            interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
            interpreter.invoke()
        except (RuntimeError, ValueError) as err:
            raise AnalysisError(f"{path.name} does not run at {detail['shape'].tolist()} "
                                f"({str(err).splitlines()[0][:120]})") from None
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
    """Resize a dynamic image input to hw (default 640x640) and allocate; AnalysisError if not."""
    detail = interpreter.get_input_details()[0]
    signature = [int(d) for d in detail["shape_signature"]]
    if len(signature) == 4 and min(signature[1:]) <= 0:
        height, width = hw or (640, 640)
        nchw = signature[1] == 3
        interpreter.resize_tensor_input(detail["index"], [1, 3, height, width] if nchw else
                                        [1, height, width, 3])
    elif hw and len(signature) == 4:
        spatial = signature[2:] if signature[1] == 3 else signature[1:3]
        if tuple(spatial) != tuple(hw):
            raise AnalysisError(f"model has a fixed {spatial[0]}x{spatial[1]} input, not {hw[0]}x{hw[1]}")
    try:
        interpreter.allocate_tensors()
    except (RuntimeError, ValueError) as err:
        raise AnalysisError(f"cannot allocate the model ({str(err).splitlines()[0][:100]})") from None
    return interpreter


def load_graph(path: Path, hw: tuple[int, int] | None) -> Graph:
    if not path.is_file():
        raise AnalysisError(f"model not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return onnx_graph(path, hw)
    if suffix == ".tflite":
        return tflite_graph(path, hw)
    raise AnalysisError(f"{path}: unsupported model type (expected .onnx or .tflite)")


# ----------------------------------------------------------------------------- counting
def op_macs(graph: Graph, op_type: str, inputs: list[str], outputs: list[str]) -> int:
    """Multiply-adds of one op (convolutions and matrix products; everything else is 0)."""
    size = lambda name: int(np.prod(graph.shapes[name], dtype=np.int64))
    weight = lambda k: graph.shapes[inputs[k]]
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


def analyze(graph: Graph) -> dict:
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
        if not macs and op_type not in ("Reshape", "RESHAPE", "Shape", "Gather", "Unsqueeze",
                                        "Concat", "Slice", "Squeeze", "Flatten"):
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
    from ai_edge_litert.interpreter import Interpreter

    interpreter = sized_interpreter(Interpreter(model_path=str(path), num_threads=1), hw)
    details = interpreter._get_ops_details()
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


def op_kind(name: str, weight_shape: tuple) -> str:
    """Op name, with convolutions told apart by kernel (a 3-channel 3x3 conv is the stem)."""
    if name != "CONV_2D" or len(weight_shape) != 4:
        return name
    kernel = "x".join(map(str, weight_shape[1:3]))
    return f"CONV_2D {kernel}" + (" stem" if weight_shape[3] <= 4 and kernel != "1x1" else "")


def single_op_models(path: Path) -> list[tuple[str, bytes]]:
    """Every op of a .tflite as a model of its own, constants kept: (kind, model bytes).

    Timing each alone shows where an export spends its time, op kind by op kind, without a
    profiler build of LiteRT. Unused weight buffers are dropped, so each model stays small.
    """
    try:
        from ai_edge_litert.tools import flatbuffer_utils
        model = flatbuffer_utils.read_model(str(path))
    except ImportError:
        raise AnalysisError(f"profiling TFLite needs LiteRT ({INSTALL_HINT['litert']})") from None
    except Exception as err:
        raise AnalysisError(f"cannot read {path} as TFLite ({str(err).splitlines()[0][:100]})") from None
    graph = model.subgraphs[0]
    operators, data = graph.operators, [b.data for b in model.buffers]
    out = []
    try:
        for op in operators:
            tensors = [int(t) for t in op.inputs if t >= 0]
            constant = {t for t in tensors if data[graph.tensors[t].buffer] is not None
                        and len(data[graph.tensors[t].buffer])}
            used = {graph.tensors[t].buffer for t in constant}
            for index, buffer in enumerate(model.buffers):
                buffer.data = data[index] if index in used else None
            graph.operators = [op]
            graph.inputs = np.array([t for t in tensors if t not in constant], np.int32)
            graph.outputs = np.array([int(t) for t in op.outputs], np.int32)
            weights = tuple(graph.tensors[tensors[1]].shape) if len(tensors) > 1 else ()
            out.append((op_kind(flatbuffer_utils.opcode_to_name(model, op.opcodeIndex), weights),
                        bytes(flatbuffer_utils.convert_object_to_bytearray(model))))
    finally:
        graph.operators = operators
        for buffer, original in zip(model.buffers, data):
            buffer.data = original
    return out


def profile_ops(paths: list[Path], threads: int, repeat: int, iters: int) -> list[str]:
    """--profile-ops: median ms of every op run alone (XNNPACK as in a normal run), summed by
    op kind, the models interleaved round by round; a markdown table."""
    from ai_edge_litert.interpreter import Interpreter

    models = {}
    for path in paths:
        interpreters = []
        for kind, content in single_op_models(path):
            interpreter = Interpreter(model_content=content, num_threads=threads)
            interpreter.allocate_tensors()
            for detail in interpreter.get_input_details():
                interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
            for _ in range(WARMUP):
                interpreter.invoke()
            interpreters.append((kind, interpreter))
        models[path] = interpreters
    samples = {path: [[] for _ in ops] for path, ops in models.items()}
    for round_index in range(repeat):
        for path in (paths if round_index % 2 == 0 else paths[::-1]):
            for index, (_, interpreter) in enumerate(models[path]):
                for _ in range(iters):
                    start = time.perf_counter()
                    interpreter.invoke()
                    samples[path][index].append(time.perf_counter() - start)
    totals: dict[str, dict[Path, list[float]]] = {}
    for path, ops in models.items():
        for (kind, _), times in zip(ops, samples[path]):
            entry = totals.setdefault(kind, {}).setdefault(path, [0, 0.0])
            entry[0] += 1
            entry[1] += float(np.median(times)) * 1e3
    names = [p.stem for p in paths]
    ratio = len(paths) == 2
    lines = ["| Op | " + " | ".join(f"{n} (count, ms)" for n in names) + (" | ratio |" if ratio else " |"),
             "| --- |" + " ---: |" * (len(paths) + ratio)]
    order = sorted(totals, key=lambda k: -max(v[1] for v in totals[k].values()))
    totals["all ops, one by one"] = {path: [sum(totals[k].get(path, [0, 0.0])[i] for k in order)
                                            for i in (0, 1)] for path in paths}
    for kind in order + ["all ops, one by one"]:
        cells = [tuple(totals[kind].get(path, [0, 0.0])) for path in paths]
        row = " | ".join(f"{c} x, {ms:.2f}" for c, ms in cells)
        if ratio:
            row += f" | {cells[1][1] / cells[0][1]:.2f}" if cells[0][1] > 0 and cells[1][0] else " | -"
        lines.append(f"| {kind} | {row} |")
    lines += ["", f"Each op alone in its own model (LiteRT {version_of('ai-edge-litert')}, XNNPACK, "
              f"{threads} thread(s)), median of {repeat} rounds x {iters} calls, models interleaved; "
              "the sum is more than a whole-model run (no fusion across ops, a call overhead per op)."]
    return lines


# ----------------------------------------------------------------------------- measured memory
CHILD_CODE = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
import psutil
rss = lambda: psutil.Process().memory_info().rss
start = rss()
import numpy as np
import speed_test
model, backend, threads, hw, runs, image = sys.argv[2:8]
backend_module = "onnxruntime" if backend.startswith("onnxruntime") else "ai_edge_litert.interpreter"
__import__(backend_module)
imported = rss()
t0 = time.perf_counter()
runner = speed_test.open_runner_for(model, backend, int(threads), speed_test.hw_or_none(hw))
load_s = time.perf_counter() - t0
loaded = rss()
tensor = speed_test.input_tensor(runner, image or None)
ready = rss()
t0 = time.perf_counter()
runner(tensor)
first_s = time.perf_counter() - t0
for _ in range(int(runs) - 1):
    runner(tensor)
print(json.dumps({"rss_start": start, "rss_imported": imported, "rss_loaded": loaded,
                  "rss_input_ready": ready, "rss_ran": rss(), "load_s": load_s, "first_run_s": first_s,
                  "tensorflow_imported": "tensorflow" in sys.modules}))
"""


LAUNCHER = r"""
import os, sys
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[1], sys.argv[1:])
    except OSError as err:
        sys.stderr.write(f"cannot run {sys.argv[1]}: {err}\n")
    os._exit(127)
_, status, usage = os.wait4(pid, 0)
sys.stderr.write(f"\nspeed_test ru_maxrss {usage.ru_maxrss}\n")
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_measured(command: list[str], env: dict | None = None, timeout: float = 900
                 ) -> tuple[int, str, str, int | None]:
    """Run a command; return (exit code, stdout, stderr, peak RSS bytes of that command).

    Linux starts a child's peak-RSS count at fork, so a direct child of this big process
    would report at least our own size. A small launcher process forks the command instead
    and reports wait4's ru_maxrss (KiB on Linux, bytes on macOS). No fork (Windows): no peak.
    """
    launcher = [sys.executable, "-c", LAUNCHER] if hasattr(os, "fork") else []
    try:
        proc = subprocess.run(launcher + command, capture_output=True, text=True, env=env,
                              cwd=REPO, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, "", f"timed out after {timeout:.0f} s", None
    match = re.search(r"\nspeed_test ru_maxrss (\d+)\n$", proc.stderr)
    peak = int(match.group(1)) * (1 if sys.platform == "darwin" else 1024) if match else None
    stderr = proc.stderr[: match.start()] if match else proc.stderr
    return proc.returncode, proc.stdout, stderr, peak


def fresh_process_memory(model: Path, backend: str, threads: int, hw: tuple[int, int] | None,
                         image: Path | None, runs: int = RSS_RUNS) -> dict:
    """Load and run the model in a new Python process: RSS at each stage and the peak."""
    command = [sys.executable, "-c", CHILD_CODE, str(REPO), str(model), backend, str(threads),
               f"{hw[0]},{hw[1]}" if hw else "", str(runs), str(image or "")]
    code, out, err, peak = run_measured(command, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if code != 0 or not lines:
        tail = [line for line in err.strip().splitlines() if line.strip()][-1:] or ["no output"]
        return {"error": f"fresh process failed ({tail[0][:160]})"}
    return {**json.loads(lines[-1]), "peak_rss": peak}


def command_memory(command: str) -> dict:
    """Peak RSS of any command, and whether any Python in it imported TensorFlow.

    PYTHONPROFILEIMPORTTIME makes every Python started by the command list its imports on
    stderr, so TensorFlow shows up however it got imported.
    """
    args = shlex.split(command)
    if args and args[0] in ("python", "python3"):
        args[0] = sys.executable
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    started = time.perf_counter()
    code, out, err, peak = run_measured(args, env=env)
    imported = sorted({m.group(1) for m in re.finditer(r"import time:.*\|\s*(\S+)\s*$", err, re.M)})
    tensorflow = any(name == "tensorflow" or name.startswith("tensorflow.") for name in imported)
    errors = [line for line in err.splitlines() if line and not line.startswith("import time:")]
    return {"command": command, "exit_code": code, "peak_rss": peak, "seconds": time.perf_counter() - started,
            "tensorflow_imported": tensorflow, "modules_imported": len(imported),
            "stderr_tail": errors[-3:]}


# ----------------------------------------------------------------------------- runners
class BackendUnavailable(Exception):
    """A backend that is not installed or has no device here; its rows are skipped."""


def hw_or_none(text: str) -> tuple[int, int] | None:
    return parse_hw(text) if text else None


def open_runner_for(model: str | Path, backend: str, threads: int, hw: tuple[int, int] | None):
    """A detector runner for one backend; BackendUnavailable when it cannot run here."""
    from detector import LiteRTRunner, OnnxRunner

    model = Path(model)
    if backend.startswith("litert"):
        try:
            from ai_edge_litert.interpreter import load_delegate
        except ImportError:
            raise BackendUnavailable(f"LiteRT is not installed ({INSTALL_HINT['litert']})") from None
        if backend == "litert-builtin":  # XNNPACK off: what its delegation is worth
            return LiteRTRunner(model, hw, threads, xnnpack=False)
        if backend == "litert-gpu":
            library = litert_gpu_library()
            if not library:
                raise BackendUnavailable(gpu_status()["litert-gpu"])
            runner = LiteRTRunner(model, hw, threads, delegates=[load_delegate(library)], xnnpack=False)
            if not runner.delegated_partitions:
                raise BackendUnavailable("the LiteRT GPU delegate loaded but took no op of this model")
            return runner
        return LiteRTRunner(model, hw, threads)
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise BackendUnavailable(f"ONNX Runtime is not installed ({INSTALL_HINT['onnxruntime']})") from None
    if backend in ORT_PROVIDERS:
        reason = gpu_status()[backend]
        if reason:
            raise BackendUnavailable(reason)
        runner = OnnxRunner(model, hw, threads, providers=ORT_PROVIDERS[backend])
        used = runner.session.get_providers()
        if used[0] != ORT_PROVIDERS[backend][0]:  # ORT falls back to CPU silently
            raise BackendUnavailable(f"{ORT_PROVIDERS[backend][0]} did not start (session uses "
                                     f"{', '.join(used)}): no usable GPU")
        return runner
    return OnnxRunner(model, hw, threads)


def input_tensor(runner, image: str | Path | None) -> np.ndarray:
    """The real photo preprocessed for this runner, or zeros when there is no photo."""
    if image:
        return preprocess(read_image(image), runner.input_hw, runner.layout)[0]
    shape = (1, 3, *runner.input_hw) if runner.layout == "NCHW" else (1, *runner.input_hw, 3)
    return np.zeros(shape, np.float32)


def metadata_or_none(path: Path) -> dict | None:
    """export_tflite.py's sidecar metadata of a .tflite, or None (absent or unreadable)."""
    try:
        return load_metadata(path) if path.suffix.lower() == ".tflite" else None
    except UserError:
        return None


def precision_of(path: Path, runner=None) -> str:
    """float32 / float16 / int8 / dynamic, from the export's metadata, the name, or the input."""
    meta = metadata_or_none(path)
    if meta and meta.get("precision"):
        return meta["precision"]
    match = re.search(r"(float32|float16|fp16|int8|dynamic|integer_quant)", path.stem)
    if match:
        return {"fp16": "float16", "integer_quant": "int8"}.get(match.group(1), match.group(1))
    if getattr(runner, "backend", "") == "litert" and runner.input["dtype"] in (np.int8, np.uint8):
        return "int8"
    return "float32"


def family_of(path: Path) -> str:
    """Model family as in the original's tables: det_500m, det_2.5g (ONNX and TFLite alike)."""
    stem = (metadata_or_none(path) or {}).get("family") or path.stem
    stem = re.sub(r"_\d+x\d+.*$", "", stem)  # drop _HxW and what follows (precision)
    stem = re.sub(r"_(float32|float16|int8|dynamic)$", "", stem)
    return "det_" + re.sub(r"^(det_|scrfd_?)", "", stem)


# ----------------------------------------------------------------------------- timing
@dataclass
class Config:
    """One row: a model on a backend with a thread count, and everything measured for it."""

    model: Path
    backend: str
    threads: int
    hw: tuple[int, int] | None
    runner: object = None
    tensor: np.ndarray | None = None
    input_hw: tuple[int, int] | None = None
    precision: str = "?"
    wall: list[list[float]] = field(default_factory=list)  # per round, seconds per call
    cpu: list[list[float]] = field(default_factory=list)  # the calling thread's CPU seconds
    stages: dict[str, list[float]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    error: str | None = None

    @property
    def label(self) -> str:
        return f"{self.model.name} [{self.backend}, {self.threads} thread{'s' * (self.threads > 1)}]"

    @property
    def single_threaded(self) -> bool:
        """One CPU thread does all the work, so its CPU time is the model's cost, free of contention."""
        return self.threads == 1 and self.backend not in GPU_BACKENDS


def end_to_end(runner, image_path: Path, score: float, iou: float) -> dict[str, float]:
    """One photo through the whole pipeline, every stage timed (as detector.SCRFD does it)."""
    clock = time.perf_counter
    t0 = clock()
    image = read_image(image_path)
    t1 = clock()
    tensor, scale = preprocess(image, runner.input_hw, runner.layout)
    t2 = clock()
    raw = runner(tensor)
    t3 = clock()
    boxes, scores, landmarks = decode(raw, runner.input_hw, runner.anchors, score)
    t4 = clock()
    keep = nms(boxes, scores, iou)
    boxes = boxes[keep] / scale
    if landmarks is not None:
        landmarks = landmarks[keep] / scale
    t5 = clock()
    return {"read": t1 - t0, "preprocess": t2 - t1, "inference": t3 - t2, "decode": t4 - t3,
            "nms": t5 - t4, "total": t5 - t0, "candidates": len(scores), "kept": len(keep)}


def time_block(config: Config, iters: int) -> None:
    """`iters` timed calls: wall clock, and for one thread the thread's CPU time too."""
    wall, cpu = [], []
    for _ in range(iters):
        c0, t0 = time.thread_time(), time.perf_counter()
        config.runner(config.tensor)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
    config.wall.append(wall)
    config.cpu.append(cpu)


def time_group(configs: list[Config], image: Path | None, repeat: int, iters: int,
               score: float, iou: float) -> None:
    """Round-robin: every round gives each runner one block of calls, in alternating order."""
    for config in configs:
        for _ in range(WARMUP):
            config.runner(config.tensor)
    gc.disable()  # a collection inside one block would land on one backend only
    try:
        for round_index in range(repeat):
            for config in (configs if round_index % 2 == 0 else configs[::-1]):
                config.runner(config.tensor)  # untimed: lets the previous runner's threads go idle
                time_block(config, iters)
                for _ in range(E2E_PER_ROUND if image else 0):
                    result = end_to_end(config.runner, image, score, iou)
                    config.counts = {k: int(result.pop(k)) for k in ("candidates", "kept")}
                    for key, value in result.items():
                        config.stages.setdefault(key, []).append(value)
            gc.collect()
            print(f"  round {round_index + 1}/{repeat} (median ms): " + ", ".join(
                f"{c.model.stem} {c.backend} {c.threads}t {1e3 * np.median(c.wall[-1]):.1f}"
                for c in configs), flush=True)
    finally:
        gc.enable()


def summarize(config: Config) -> dict:
    """Milliseconds: median, p90, p99, mean, min, max, spread of the round medians; stage medians."""
    ms = np.concatenate(config.wall) * 1e3
    rounds = np.array([np.median(r) for r in config.wall]) * 1e3
    row = {"samples": len(ms), "rounds": len(rounds),
           "median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)),
           "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()),
           "min_ms": float(ms.min()), "max_ms": float(ms.max()),
           "round_median_min_ms": float(rounds.min()), "round_median_max_ms": float(rounds.max()),
           "throughput_fps": float(1e3 / ms.mean())}
    if config.single_threaded:
        row["cpu_median_ms"] = float(np.median(np.concatenate(config.cpu)) * 1e3)
    if config.stages:
        stage = {k: float(np.median(v) * 1e3) for k, v in config.stages.items()}
        row.update({f"e2e_{k}_ms": v for k, v in stage.items()})
        row["e2e_fps"] = float(1e3 / np.mean(np.asarray(config.stages["total"]) * 1e3))
        row["prepost_ratio"] = (stage["preprocess"] + stage["decode"] + stage["nms"]) / stage["inference"]
        row.update({f"e2e_{k}": v for k, v in config.counts.items()})
    return row


def paired_ratio(a: Config, b: Config, clock: str = "wall") -> dict:
    """a / b from the per-round medians of two rows timed side by side: median and min–max."""
    rounds_a, rounds_b = getattr(a, clock), getattr(b, clock)
    ratios = np.array([np.median(x) / np.median(y) for x, y in zip(rounds_a, rounds_b)])
    return {"value": float(np.median(ratios)), "round_min": float(ratios.min()),
            "round_max": float(ratios.max())}


def ratio_rows(configs: list[Config]) -> list[dict]:
    """LiteRT / ONNX Runtime at float32, and int8 (float16...) / float32 on LiteRT, per size and threads."""
    timed = {(family_of(c.model), c.input_hw, c.precision, c.backend, c.threads): c
             for c in configs if c.wall}
    out = []
    for (family, hw, precision, backend, threads), config in timed.items():
        pairs = []
        if backend == "litert" and precision == "float32":
            pairs.append(("LiteRT float32 / ONNX Runtime float32",
                          timed.get((family, hw, "float32", "onnxruntime", threads))))
        elif backend == "litert":
            pairs.append((f"LiteRT {precision} / LiteRT float32",
                          timed.get((family, hw, "float32", "litert", threads))))
        for name, other in pairs:
            if other is None:
                continue
            row = {"family": family, "input": f"{hw[0]}x{hw[1]}", "threads": threads, "ratio": name,
                   **paired_ratio(config, other)}
            if config.single_threaded and other.single_threaded:
                row["cpu"] = paired_ratio(config, other, "cpu")
            out.append(row)
    return out


# ----------------------------------------------------------------------------- model lists
def shown(path: Path) -> Path:
    """A path as short as it is clear: relative to here unless that climbs more than one level."""
    relative = Path(os.path.relpath(path))
    return path if relative.parts[:2] == ("..", "..") else relative


def export_command(path: Path) -> str:
    """The command that makes a models/ file: det_F_HxW.onnx or scrfdF_HxW_PRECISION.tflite."""
    match = re.fullmatch(r"(?:det_|scrfd)([\w.]+?)_(\d+)x(\d+)(?:_(\w+))?\.(onnx|tflite)", path.name)
    if not match:
        return "see README (export_modified_onnx.py, then export_tflite.py)"
    family, height, width, precision, suffix = match.groups()
    onnx = path.with_name(f"det_{family}_{height}x{width}.onnx")
    if suffix == "onnx":
        source = shown(SHARED / "models" / f"det_{family}.onnx")
        if not source.exists():
            source = Path("models") / f"det_{family}.onnx"  # export_modified_onnx.py --download
        return f"python export_modified_onnx.py --model {source} --hw {height},{width} --out {path}"
    flag = {"float16": " --fp16", "int8": f" --int8 --calib {shown(SHARED / 'widerface/WIDER_val/images')}",
            "dynamic": " --dynamic"}.get(precision or "", "")
    return f"python export_tflite.py --onnx {onnx}{flag} --out {path}"


def grid_models(models_dir: Path, sizes: list[tuple[int, int]]) -> tuple[list[Path], list[str]]:
    """Every README-table model that exists, and the commands that would make the missing ones."""
    wanted = [shown(models_dir / name) for family in GRID_FAMILIES for height, width in sizes
              for name in [f"det_{family}_{height}x{width}.onnx"] +
              [f"scrfd{family}_{height}x{width}_{p}.tflite" for p in GRID_PRECISIONS]]
    optional = [shown(models_dir / f"det_{family}_{height}x{width}_{p}.onnx")  # no exporter yet
                for family in GRID_FAMILIES for height, width in sizes for p in ("float16", "int8")]
    return ([p for p in wanted + optional if p.exists()],
            [f"{p}: {export_command(p)}" for p in wanted if not p.exists()])


def expand_models(patterns: list[str]) -> list[Path]:
    paths: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if any(ch in pattern for ch in "*?[") else [pattern]
        paths += [Path(m) for m in matches] or [Path(pattern)]
    return list(dict.fromkeys(paths))


def default_models(models_dir: Path) -> list[Path]:
    """det_500m at 640x640: ONNX, TFLite float32 and int8; the export commands of missing ones."""
    paths = [shown(models_dir / name) for name in DEFAULT_MODELS]
    missing = [p for p in paths if not p.exists()]
    for path in missing:
        print(f"note: {path} is missing; make it with `{export_command(path)}`", file=sys.stderr)
    if len(missing) == len(paths):
        raise UserError("none of the default models exist (see the commands above), or pass --models")
    return [p for p in paths if p.exists()]


# ----------------------------------------------------------------------------- printing
def fmt_count(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= scale:
            return f"{value / scale:.3f} {unit}"
    return f"{value:.0f}"


def print_analysis(info: dict, memory: dict | None = None, xnnpack: dict | None = None) -> None:
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
              f"(+{load / MB:.1f} MB to load, +{runs / MB:.1f} MB over {RSS_RUNS} runs; imports and "
              f"the input photo not counted); peak RSS {peak}")
        print(f"estimate vs measured: weights {weights / MB:.1f} MB + peak activations "
              f"{info['peak_activation_bytes'] / MB:.1f} MB = {estimate / MB:.1f} MB, "
              f"{estimate / growth:.0%} of the growth; the rest is the runtime's own: packed weight "
              "copies, arena rounding and scratch, thread pool, code pages")
    elif memory:
        print(f"measured            {memory['error']}")


def markdown_tables(rows: list[dict], ratios: list[dict], env: dict, args: argparse.Namespace,
                    image: Path | None, usable_gpu: bool) -> list[str]:
    """The README's tables: one row per model x backend x threads, then the ratios, then how."""
    lines = ["| Model | Input | Precision | Backend | Threads | Median ms | p90 ms | p99 ms | "
             "Round medians ms | CPU ms | FPS | End-to-end ms | Pre+post / inference | Peak RSS MB | "
             "Size MB | GFLOPs |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: "
             "| ---: | ---: | ---: |"]
    dash = lambda value, fmt: "-" if value is None else format(value, fmt)
    for r in rows:
        if "median_ms" not in r:
            continue
        lines.append(
            f"| {r['family']} | {r['input']} | {r['precision']} | {r['backend_label']} | {r['threads']} "
            f"| {r['median_ms']:.1f} | {r['p90_ms']:.1f} | {r['p99_ms']:.1f} | "
            f"{r['round_median_min_ms']:.1f}–{r['round_median_max_ms']:.1f} | "
            f"{dash(r.get('cpu_median_ms'), '.1f')} | {r['throughput_fps']:.1f} | "
            f"{dash(r.get('e2e_total_ms'), '.1f')} | "
            f"{dash(r.get('prepost_ratio') and 100 * r['prepost_ratio'], '.0f')}{'%' * ('prepost_ratio' in r)} | "
            f"{dash(r.get('peak_rss_mb'), '.0f')} | {dash(r['file_mb'], '.2f')} | "
            f"{dash(r['flops'] and r['flops'] / 1e9, '.3f')} |")
    if ratios:
        lines += ["", "| Model | Input | Threads | Ratio | Median of per-round ratios | Per-round min–max "
                      "| CPU-time ratio |", "| --- | --- | ---: | --- | ---: | --- | ---: |"]
        lines += [f"| {r['family']} | {r['input']} | {r['threads']} | {r['ratio']} | {r['value']:.2f}x | "
                  f"{r['round_min']:.2f}–{r['round_max']:.2f}x | "
                  f"{dash(r.get('cpu') and r['cpu']['value'], '.2f')}{'x' * bool(r.get('cpu'))} |"
                  for r in ratios]
    lines += ["", f"Measured {time.strftime('%Y-%m-%d')} on {env['cpu']} ({env['logical_cores']} "
              f"logical cores; load average {env['load_average']} at the start), "
              + ", ".join(f"{k} {v}" for k, v in env["versions"].items()) + ". "
              f"Model latency: median, p90, p99 of {args.repeat} rounds x {args.iters} calls, every row "
              "of a model and size interleaved round-robin; 'Round medians' is the min–max of the "
              "per-round medians, i.e. the noise; 'CPU ms' is the calling thread's CPU time (1 thread "
              "only), which contention hardly moves. FPS = 1 / mean latency, one stream. End-to-end: "
              f"read + preprocess + inference + decode + NMS of {image.name if image else '-'} at score "
              f"{args.score:g}, NMS IoU {args.nms:g}; pre+post / inference = (preprocess + decode + NMS) "
              f"/ inference. Peak RSS: a fresh process loading the model and running it {RSS_RUNS} times. "
              "GFLOPs = 2 x multiply-adds of the convolutions. "
              + ("" if usable_gpu else "No GPU on this machine: every row is CPU.")]
    return lines


# ----------------------------------------------------------------------------- --detector
CHILD_DETECT = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import speed_test
from detector import read_image
kind, target, threads, runs = sys.argv[2:6]
images = [read_image(p) for p in sys.argv[6:]]
detector = speed_test.open_detector(kind, target, int(threads))
for _ in range(int(runs)):
    for image in images:
        detector.detect(image)
print(json.dumps({"tensorflow_imported": "tensorflow" in sys.modules}))
"""


@dataclass
class Entry:
    """One detector in the comparison: a peer (by name) or an SCRFD model file."""

    kind: str  # "peer" or "scrfd"
    target: str  # peer name or model path
    detector: object = None
    seconds: list[float] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.target if self.kind == "peer" else Path(self.target).stem


def open_detector(kind: str, target: str, threads: int):
    """A ready detector at its recommended operating point (peers: their authors'; SCRFD:
    InsightFace's 0.5 / 0.4)."""
    if kind == "peer":
        import peers  # optional module: only comparisons need it

        return peers.make_detector(target, threads=threads)
    from detector import SCRFD

    return SCRFD(target, threads=threads)


def comparison_photos(image: Path | None) -> list[Path]:
    """--image (a file or folder), else COMPARE_PHOTOS WIDER val photos spread over the folder
    (the images the APs come from), else the default photo."""
    from detector import find_images

    if image is not None:
        return find_images([image])
    wider = SHARED / "widerface" / "WIDER_val" / "images"
    photos = find_images([wider]) if wider.is_dir() else []
    if photos:
        picks = np.linspace(0, len(photos) - 1, min(COMPARE_PHOTOS, len(photos))).round().astype(int)
        return [photos[i] for i in dict.fromkeys(picks)]
    return [p for p in IMAGE_CANDIDATES if p.exists()][:1]


def entry_files(entry: Entry) -> list[Path]:
    """What the detector loads from disk (its size is the model size)."""
    if entry.kind == "scrfd":
        return [Path(entry.target)]
    return [Path(entry.detector.model_path)] if getattr(entry.detector, "model_path", None) else []


def eval_index(pattern: str) -> dict[str, dict]:
    """evaluate_widerface.py results by what they evaluated: model sha256 and detector name."""
    index: dict[str, dict] = {}
    for result in read_eval_results(pattern):
        model = result.get("model") or {}
        for key in (model.get("sha256"), model.get("name")):
            old = index.get(key)  # prefer a run that also scored the rough protocols
            if key and (old is None or (not old.get("rough") and result.get("rough"))):
                index[key] = result
    return index


def compare_detectors(names: list[str], models: list[Path], args: argparse.Namespace,
                      env: dict) -> int:
    """--detector: time every detector's detect() side by side, join the APs, table + chart."""
    from detector import read_image, sha256_of

    import peers

    if "all" in names:
        names = list(peers.PEERS)
    unknown = [n for n in names if n not in peers.PEERS]
    if unknown:
        raise UserError(f"unknown detector {unknown[0]!r}; choose from all, {', '.join(peers.PEERS)}")
    threads = args.threads[0]
    photos = comparison_photos(args.image)
    if not photos:
        raise UserError("no photo to time the detectors on: give --image")
    images = [read_image(p) for p in photos]
    entries = [Entry("peer", n) for n in names] + [Entry("scrfd", str(m)) for m in models]
    live = []
    for entry in entries:
        try:
            entry.detector = open_detector(entry.kind, entry.target, threads)
            live.append(entry)
        except UserError as err:
            print(f"skipped {entry.label}: {err}")
    if not live:
        raise UserError("no detector could be loaded (see the messages above)")
    print(f"\ntiming {len(live)} detectors' detect() on {len(photos)} photo(s), {threads} thread(s), "
          f"{args.repeat} rounds, interleaved")
    for entry in live:
        for image in images[:2]:
            entry.detector.detect(image)  # warm-up
    gc.disable()
    try:
        for round_index in range(args.repeat):
            for entry in (live if round_index % 2 == 0 else live[::-1]):
                for image in images:
                    start = time.perf_counter()
                    entry.detector.detect(image)
                    entry.seconds.append(time.perf_counter() - start)
            gc.collect()
            print(f"  round {round_index + 1}/{args.repeat} done", flush=True)
    finally:
        gc.enable()

    results = eval_index(args.eval_results)
    rows = []
    for entry in live:
        det = entry.detector
        files = entry_files(entry)
        hw = getattr(det, "input_hw", None)
        row = {"detector": entry.label, "kind": entry.kind,
               "input": f"{hw[0]}x{hw[1]}" if hw else "image size",
               "precision": precision_of(Path(entry.target)) if entry.kind == "scrfd" else
               peers.PEERS[entry.target].description,
               "score_threshold": det.score_threshold, "nms_threshold": det.nms_threshold,
               "threads": threads, "median_ms": float(np.median(entry.seconds) * 1e3),
               "p90_ms": float(np.percentile(entry.seconds, 90) * 1e3),
               "size_mb": sum(f.stat().st_size for f in files if f.is_file()) / MB if files else None}
        result = results.get(sha256_of(files[0]) if entry.kind == "scrfd" and files else entry.target)
        if result:
            row.update({s: 100 * float(result[s]) for s in ("easy", "medium", "hard")})
            rough = (result.get("rough") or {}).get(ROUGH_KEY[0], {}).get(ROUGH_KEY[1])
            row["rough_ap"] = 100 * rough["ap"] if rough else None
            row["eval"] = result["file"]
        if not args.no_rss:
            command = [sys.executable, "-c", CHILD_DETECT, str(REPO), entry.kind, entry.target,
                       str(threads), str(COMPARE_RSS_RUNS), *map(str, photos[:2])]
            code, out, err, peak = run_measured(command, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
            row["peak_rss_mb"] = peak / MB if code == 0 and peak else None
            if code != 0:
                print(f"note: {entry.label}: fresh-process RSS run failed: "
                      f"{(err.strip().splitlines() or ['?'])[-1][:160]}")
        rows.append(row)
    mark_pareto(rows)
    lines = comparison_table(rows, env, photos, threads, args)
    print("\n" + "\n".join(lines))
    out = args.compare_out
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "compare.md") as handle:
        handle.write("\n".join(lines) + "\n")
    with atomic_write(out / "compare.csv") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)
    print(f"\nwrote {out / 'compare.md'} and {out / 'compare.csv'}")
    plotted = [r for r in rows if r.get("hard") is not None]
    if plotted:
        print(f"wrote the speed-accuracy chart {plot_comparison(plotted, out / 'compare.png')}")
    missing = [r["detector"] for r in rows if r.get("hard") is None]
    if missing:
        print(f"no evaluation results in {args.eval_results} for: {', '.join(missing)} (evaluate "
              "them with evaluate_widerface.py --detector NAME / --model M --protocol rough)")
    return 0


def mark_pareto(rows: list[dict]) -> None:
    """pareto = True where no other detector is both faster and better on Hard AP."""
    ranked = sorted((r for r in rows if r.get("hard") is not None), key=lambda r: (r["median_ms"], -r["hard"]))
    best = -1.0
    for row in ranked:
        row["pareto"] = row["hard"] > best
        best = max(best, row["hard"])
        if not row["pareto"]:
            row["beaten_by"] = next(r["detector"] for r in ranked
                                    if r["median_ms"] <= row["median_ms"] and r["hard"] >= row["hard"]
                                    and r is not row)


def comparison_table(rows: list[dict], env: dict, photos: list[Path], threads: int,
                     args: argparse.Namespace) -> list[str]:
    dash = lambda value, fmt: "-" if value is None else format(value, fmt)  # noqa: E731
    lines = ["| Detector | Input | Easy | Medium | Hard | Rough AP | Median ms | Size MB | "
             "Peak RSS MB | Pareto |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in sorted(rows, key=lambda r: r["median_ms"]):
        pareto = "yes" if r.get("pareto") else (f"no ({r['beaten_by']})" if r.get("beaten_by") else "-")
        lines.append(f"| {r['detector']} | {r['input']} | {dash(r.get('easy'), '.2f')} | "
                     f"{dash(r.get('medium'), '.2f')} | {dash(r.get('hard'), '.2f')} | "
                     f"{dash(r.get('rough_ap'), '.2f')} | {r['median_ms']:.1f} | "
                     f"{dash(r['size_mb'], '.2f')} | {dash(r.get('peak_rss_mb'), '.0f')} | {pareto} |")
    lines += ["", f"Measured {time.strftime('%Y-%m-%d')} on {env['cpu']} ({env['logical_cores']} "
              f"logical cores), {threads} thread(s). AP: WIDER FACE val, the images evaluate_widerface.py "
              "ran on (official protocol, %); Rough AP: IoU >= 0.3 with faces >= 32 px tall "
              "(--protocol rough). Median ms: one detect() call (preprocessing, inference, "
              f"decoding, NMS) on {len(photos)} photo(s) ({', '.join(p.name for p in photos[:3])}"
              f"{', ...' if len(photos) > 3 else ''}), {args.repeat} interleaved rounds, each "
              "detector at its recommended input size and thresholds. Peak RSS: a fresh process "
              f"that loads the detector and runs it {COMPARE_RSS_RUNS} times on 2 photos. Pareto: "
              "no other detector is both faster and better on Hard AP (else the one that beats it)."]
    return lines


def plot_comparison(rows: list[dict], out: Path) -> Path:
    """Hard AP against latency, whole range on the left, the crowded 640-pixel-class corner
    (ZOOM) on the right; SCRFD exports by precision (marker) and model (colour), other
    detectors as red squares, the Pareto front as a step line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    markers = {"float32": "o", "float16": "^", "int8": "D"}
    families = sorted({r["detector"].split("_")[0] for r in rows if r["kind"] == "scrfd"})
    colours = {family: f"C{i}" for i, family in enumerate(families)}
    front = sorted((r for r in rows if r.get("pareto")), key=lambda r: r["median_ms"])
    (x0, x1), (y0, y1) = ZOOM
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), gridspec_kw={"width_ratios": [1, 1.15]})
    for ax, zoomed in zip(axes, (False, True)):
        shown_rows = [r for r in rows if not zoomed or (x0 <= r["median_ms"] <= x1 and y0 <= r["hard"] <= y1)]
        for index, row in enumerate(sorted(shown_rows, key=lambda r: (r["hard"], r["median_ms"]))):
            scrfd = row["kind"] == "scrfd"
            ax.scatter(row["median_ms"], row["hard"], zorder=3, s=34,
                       marker=markers.get(row["precision"], "o") if scrfd else "s",
                       color=colours[row["detector"].split("_")[0]] if scrfd else "tab:red")
            inside = x0 <= row["median_ms"] <= x1 and y0 <= row["hard"] <= y1
            if zoomed or not scrfd and not inside or row.get("pareto") and not inside:
                label = (row["detector"].replace("scrfd", "").replace("_float", " f")
                         .replace("_int8", " int8").replace("_", " ") if scrfd else row["detector"])
                ax.annotate(label, (row["median_ms"], row["hard"]), fontsize=7,
                            xytext=(5, -3 if index % 2 else 3), textcoords="offset points")
        ax.step([r["median_ms"] for r in front], [r["hard"] for r in front], where="post",
                color="tab:green", alpha=0.6, zorder=2, label="Pareto front")
        ax.set_xscale("log")
        ax.grid(alpha=0.3, which="both")
        ax.set_xlabel("detect() latency, median ms, 1 thread (log scale)")
    axes[0].set_ylabel("WIDER FACE val Hard AP, %")
    axes[0].add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ls="--", color="grey"))
    axes[1].set_xlim(x0, x1)
    axes[1].set_ylim(y0, y1)
    axes[0].set_title("all detectors")
    axes[1].set_title("zoom: the dashed box")
    for family, colour in colours.items():
        axes[0].scatter([], [], color=colour, marker="o", label=f"{family}: o float32, ^ float16, D int8")
    axes[0].scatter([], [], color="tab:red", marker="s", label="other detectors")
    axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle("Face detectors on this CPU: speed against WIDER FACE Hard AP")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out

# ----------------------------------------------------------------------------- plot
def read_eval_results(pattern: str) -> list[dict]:
    """Every readable evaluate_widerface.py results.json under a folder or matching a glob,
    each with its path under "file"."""
    path = Path(pattern)
    files = sorted(path.rglob("results.json")) if path.is_dir() else \
        sorted(Path(p) for p in glob.glob(pattern, recursive=True))
    results = []
    for file in files:
        try:
            result = json.loads(file.read_text())
        except (OSError, ValueError):
            print(f"note: {file} is not readable JSON; skipped", file=sys.stderr)
            continue
        if isinstance(result, dict):
            results.append({**result, "file": str(file)})
    return results


def eval_points(pattern: str, rows: list[dict]) -> list[dict]:
    """Hard AP from evaluate_widerface.py results.json files, matched to timed rows: by the
    model file's sha256, or for an ONNX model evaluated at some size, by model, size and
    precision. One point per timed row (one thread, or a GPU)."""
    from detector import sha256_of

    timed = [r for r in rows if "median_ms" in r and (r["threads"] == 1 or r["device"] == "GPU")]
    digests = {r["model"]: sha256_of(r["model"]) for r in timed if Path(r["model"]).is_file()}
    points, seen = [], set()
    for result in read_eval_results(pattern):
        file = result["file"]
        try:
            model = Path(result["model"]["path"])
            input_size = result["settings"]["input_size"]
            hard = float(result["hard"])
        except (ValueError, KeyError, TypeError):
            print(f"note: {file} has no model path, input size or Hard AP; skipped", file=sys.stderr)
            continue
        if input_size is None:  # a peer detector at image size: not one of these models
            continue
        size = "x".join(map(str, input_size))
        precision = result["model"].get("precision") or precision_of(model)
        key = (family_of(model), size, precision)
        for row in timed:
            same_file = result["model"].get("sha256") == digests.get(row["model"])
            same_onnx = (model.suffix.lower() == Path(row["model"]).suffix.lower() == ".onnx"
                         and (row["family"], row["input"], row["precision"]) == key)
            marker = (row["model"], row["backend"], row["threads"])
            if (same_file or same_onnx) and marker not in seen:
                seen.add(marker)
                points.append({**row, "hard_ap": hard, "eval": str(file)})
    return points


def plot_speed_accuracy(points: list[dict], out: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for point in points:
        marker = "o" if point["backend"].startswith("litert") else "s"
        ax.scatter(point["median_ms"], 100 * point["hard_ap"], marker=marker)
        ax.annotate(f"{point['family']} {point['input']} {point['precision']}\n{point['backend']} "
                    f"{point['threads']}t", (point["median_ms"], 100 * point["hard_ap"]),
                    fontsize=7, xytext=(4, 2), textcoords="offset points")
    ax.set_xlabel("model latency, median ms (this machine)")
    ax.set_ylabel("WIDER FACE val Hard AP, %")
    ax.set_title("SCRFD speed vs accuracy (o LiteRT, s ONNX Runtime)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


# ----------------------------------------------------------------------------- main
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--analyze", nargs="+", metavar="MODEL", default=None,
                        help="only analyse these models (params, FLOPs, ops, memory, XNNPACK) and exit")
    parser.add_argument("--profile-ops", nargs="+", metavar="MODEL", default=None,
                        help="only time every op of these .tflite files run alone, summed by op "
                             "kind (with two models, their ratio: e.g. int8 against float32), "
                             "at the first --threads value, and exit")
    parser.add_argument("--models", nargs="+", default=None, metavar="MODEL",
                        help="models to time, files or globs (default: det_500m at 640x640 from "
                             "--models-dir: ONNX, TFLite float32 and int8)")
    parser.add_argument("--grid", action="store_true",
                        help="time every README-table model found in --models-dir (det_500m and "
                             "det_2.5g at 640x640, 480x640, 256x320, 128x160; float32, float16, "
                             "int8) and list the export commands of the missing ones")
    parser.add_argument("--models-dir", type=Path, default=MODELS_DIR,
                        help="where the default and --grid models live (default models/)")
    parser.add_argument("--hw", type=parse_hw, nargs="+", default=None, metavar="H,W",
                        help="input sizes for dynamic ONNX models (default 640,640); with --grid, "
                             "the sizes to include; fixed-size models always run at their own size")
    parser.add_argument("--backends", default="auto",
                        help=f"comma list from {', '.join(ALL_BACKENDS)} (default auto: "
                             "litert,onnxruntime plus every GPU backend that works here)")
    parser.add_argument("--threads", default=DEFAULT_THREADS,
                        help=f"comma list of CPU thread counts (default {DEFAULT_THREADS})")
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT,
                        help=f"rounds; each round times every row once more (default {DEFAULT_REPEAT})")
    parser.add_argument("--iters", type=int, default=DEFAULT_ITERS,
                        help=f"timed model calls per row per round (default {DEFAULT_ITERS})")
    parser.add_argument("--image", type=Path, default=None,
                        help="photo for the end-to-end timing (default crowd_selfie.jpg from data/ "
                             "or $SCRFD_SHARED/samples)")
    parser.add_argument("--score", type=float, default=SCORE_THRESHOLD,
                        help=f"end-to-end score threshold (default {SCORE_THRESHOLD}, as evaluation)")
    parser.add_argument("--nms", type=float, default=NMS_THRESHOLD,
                        help=f"end-to-end NMS IoU (default {NMS_THRESHOLD}, as evaluation)")
    parser.add_argument("--no-rss", action="store_true",
                        help="skip the fresh-process peak-RSS measurement of every row")
    parser.add_argument("--rss-command", default="auto",
                        help="a command whose peak RSS and TensorFlow imports are checked (default: "
                             "scrfd.py on the photo with the det_500m int8 640x640 model; 'none' to skip)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON,
                        help="write every row with its environment here (default results/speed_test.json)")
    parser.add_argument("--csv", type=Path, default=None, help="also write the rows as CSV")
    parser.add_argument("--markdown", type=Path, default=None,
                        help="write the markdown tables (the README's) to this file")
    parser.add_argument("--eval-results", default=DEFAULT_EVAL,
                        help="evaluate_widerface.py results.json files (glob or folder) for the "
                             f"speed-accuracy plot (default {DEFAULT_EVAL})")
    parser.add_argument("--plot", type=Path, default=DEFAULT_PLOT,
                        help="speed-accuracy plot, written when evaluation results match timed "
                             "models (default results/speed_accuracy.png)")
    parser.add_argument("--detector", nargs="+", default=None, metavar="NAME",
                        help="compare whole detectors instead: these peers from peers.py (all, "
                             "blazeface_short, blazeface_full, yunet, haar, seed_tflite, "
                             "thirdparty_tflite, insightface) and the SCRFD exports of --models (default "
                             "every TFLite export --grid finds), each detect() timed at its recommended "
                             "settings on --image (default 8 WIDER val photos) at the first --threads "
                             "value, joined with the APs of --eval-results; writes --compare-out")
    parser.add_argument("--compare-out", type=Path, default=COMPARE_OUT,
                        help="where --detector writes compare.md, compare.csv and compare.png "
                             "(default results/compare)")
    args = parser.parse_args()
    if args.repeat < 1 or args.iters < 1:
        parser.error("--repeat and --iters must be at least 1")
    try:
        args.threads = [int(t) for t in args.threads.split(",")]
        if min(args.threads) < 1:
            raise ValueError
    except ValueError:
        parser.error(f"--threads must be a comma list of positive integers, got {args.threads!r}")
    return args


def run_analysis(paths: list[Path], hws: list[tuple[int, int]] | None, image: Path | None) -> int:
    """--analyze: every model at every size; failures are reported and the others still run."""
    failures = 0
    for path in paths:
        for hw in hws or [None]:
            try:
                graph = load_graph(path, hw)
                info = analyze(graph)
                xnn = xnnpack_coverage(path, hw) if graph.format == "tflite" else None
            except AnalysisError as err:
                print(f"\n== {path}\ncannot analyse: {err}")
                failures += 1
                continue
            backend = "litert" if graph.format == "tflite" else "onnxruntime"
            memory = fresh_process_memory(path, backend, 1, hw if graph.format == "onnx" else None, image)
            print_analysis(info, memory, xnn)
    return 1 if failures == len(paths) * len(hws or [None]) else 0


def choose_backends(text: str) -> tuple[list[str], dict, str | None]:
    """The backends to run, and the GPU situation, printed so no CPU number passes for a GPU one."""
    gpus, gpu_name = gpu_status(), nvidia_gpu()
    usable = [b for b, why in gpus.items() if why is None]
    if text == "auto":
        backends = list(CPU_BACKENDS) + usable
    else:
        backends = [b.strip() for b in text.split(",") if b.strip()]
        unknown = [b for b in backends if b not in ALL_BACKENDS]
        if unknown:
            raise UserError(f"unknown backend {unknown[0]!r}; choose from {', '.join(ALL_BACKENDS)}")
    print(f"GPU: {gpu_name or 'no NVIDIA GPU found (nvidia-smi)'}; " + "; ".join(
        f"{b}: {'available' if why is None else 'not available, ' + why}" for b, why in gpus.items()))
    if not usable:
        print("GPU: none usable here, so there are no GPU rows: every number below is CPU")
    return backends, gpus, gpu_name


def choose_models(args: argparse.Namespace) -> list[Path]:
    if args.grid:
        models, missing = grid_models(args.models_dir, args.hw or list(GRID_SIZES))
        for line in missing:
            print(f"not exported: {line}")
        if not models:
            raise UserError(f"no README-table model in {args.models_dir}; export them with the "
                            "commands above")
        return models
    return expand_models(args.models) if args.models else default_models(args.models_dir)


def prepare(models: list[Path], backends: list[str], args: argparse.Namespace, image: Path | None
            ) -> tuple[list[Config], dict[str, dict]]:
    """Analyse every model and open a runner per backend x thread count; report what cannot run."""
    configs: list[Config] = []
    analyses: dict[str, dict] = {}
    for model in models:
        runs_on = [b for b in backends if BACKEND_FORMAT[b] == model.suffix.lower()]
        if not runs_on:
            print(f"skipped {model}: no selected backend runs {model.suffix or 'extension-less'} files")
            continue
        for hw in (args.hw if args.hw and not args.grid else [None]):
            try:
                graph = load_graph(model, hw)
                analyses[f"{model}@{hw}"] = {**analyze(graph), **(
                    {"xnnpack": xnnpack_coverage(model, hw)} if graph.format == "tflite" else {})}
            except AnalysisError as err:
                print(f"cannot analyse {model}: {err}")
            except Exception as err:  # an analysis bug must never cost the timing
                print(f"cannot analyse {model}: {type(err).__name__}: {err}")
            for backend in runs_on:
                for threads in (args.threads[:1] if backend in GPU_BACKENDS else args.threads):
                    config = Config(model, backend, threads, hw)
                    try:
                        config.runner = open_runner_for(model, backend, threads, hw)
                        config.tensor = input_tensor(config.runner, image)
                        config.input_hw = tuple(config.runner.input_hw)
                        config.precision = precision_of(model, config.runner)
                    except (BackendUnavailable, UserError) as err:
                        config.error = str(err)
                        print(f"skipped {config.label}: {err}")
                    configs.append(config)
    return configs, analyses


def make_row(config: Config, info: dict, env: dict, gpu_name: str | None,
             args: argparse.Namespace, image: Path | None) -> dict:
    hw = config.input_hw or config.hw
    xnn = info.get("xnnpack") or {}
    labels = {"litert": "LiteRT", "onnxruntime": "ONNX Runtime", "litert-builtin": "LiteRT, no XNNPACK"}
    row = {"model": str(config.model), "family": family_of(config.model),
           "input": f"{hw[0]}x{hw[1]}" if hw else "?", "precision": config.precision,
           "backend": config.backend, "threads": config.threads,
           "backend_label": labels.get(config.backend, f"{config.backend} (GPU: {gpu_name})"),
           "device": "GPU" if config.backend in GPU_BACKENDS else "CPU",
           "file_mb": config.model.stat().st_size / MB if config.model.is_file() else None,
           "params": info.get("params"), "macs": info.get("macs"), "flops": info.get("flops"),
           "peak_activation_bytes": info.get("peak_activation_bytes"),
           "xnnpack_delegated": xnn.get("delegated"), "xnnpack_ops": xnn.get("ops"),
           "score_threshold": args.score, "nms_threshold": args.nms,
           "image": str(image) if image else None, **{f"env_{k}": v for k, v in env.items()}}
    row.update({"error": config.error} if config.error else summarize(config))
    return row


def measure_rss(rows: list[dict], configs: list[Config], image: Path | None) -> None:
    print(f"\npeak RSS of a fresh process that loads each model and runs it {RSS_RUNS} times:")
    for row, config in zip(rows, configs):
        if "median_ms" not in row:
            continue
        memory = fresh_process_memory(config.model, config.backend, config.threads, config.hw, image)
        row["peak_rss_mb"] = memory["peak_rss"] / MB if memory.get("peak_rss") else None
        row["tensorflow_imported"] = memory.get("tensorflow_imported")
        row["rss_growth_mb"] = ((memory["rss_loaded"] - memory["rss_imported"] + memory["rss_ran"]
                                 - memory["rss_input_ready"]) / MB if "rss_ran" in memory else None)
        print(f"  {config.label}: " + (f"{row['peak_rss_mb']:.0f} MB (model and runs: "
                                      f"+{row['rss_growth_mb']:.1f} MB over the imports)"
                                      if row["peak_rss_mb"] else memory.get("error", "n/a")))


def check_command(text: str, models_dir: Path, image: Path | None) -> dict | None:
    """Peak RSS and TensorFlow imports of a command (by default scrfd.py with the int8 model)."""
    if text == "none":
        return None
    if text == "auto":
        int8 = shown(models_dir / DEFAULT_MODELS[2])
        if not ((REPO / "scrfd.py").exists() and int8.exists() and image):
            print(f"note: no scrfd.py memory check ({int8}, scrfd.py or the photo is missing)")
            return None
        text = (f"python {shown(REPO / 'scrfd.py')} --model {int8} --image {shown(image)} "
                f"--out {Path(tempfile.gettempdir()) / 'speed_test_scrfd'}")
    result = command_memory(text)
    peak = result["peak_rss"]
    print(f"\n`{text}`: exit {result['exit_code']}, peak RSS "
          f"{f'{peak / MB:.0f} MB' if peak else 'n/a'}, TensorFlow imported: "
          f"{'YES' if result['tensorflow_imported'] else 'no'}"
          + (f"; stderr: {result['stderr_tail'][-1]}" if result["exit_code"] and result["stderr_tail"] else ""))
    return result


def print_targets(rows: list[dict], ratios: list[dict], command: dict | None, image: Path | None,
                  args: argparse.Namespace) -> list[str]:
    """The issue's targets, each with the number this run measured."""
    verdict = lambda ok: "met" if ok else "NOT met"
    lines = []
    for r in ratios:
        if (r["family"], r["input"], r["threads"]) == ("det_500m", "640x640", 1) and \
                r["ratio"].startswith("LiteRT float32 / ONNX"):
            cpu = r.get("cpu")
            lines.append(f"LiteRT float32 / ONNX Runtime latency, det_500m 640x640, 1 thread: "
                         f"{r['value']:.2f}x (per round {r['round_min']:.2f}–{r['round_max']:.2f}x"
                         + (f"; CPU time {cpu['value']:.2f}x" if cpu else "") + f"), target <= "
                         f"{TARGET_LITERT_VS_ORT:.1f}x: {verdict(r['value'] <= TARGET_LITERT_VS_ORT)}")
    for r in rows:
        if r.get("prepost_ratio") is not None and (r["family"], r["input"], r["precision"], r["threads"],
                                                   r["device"]) == ("det_500m", "640x640", "float32", 1, "CPU"):
            lines.append(
                f"pre+post / inference, {r['backend_label']} float32 1 thread on {image.name} "
                f"({r['e2e_candidates']:,} candidates at score {args.score:g}, {r['e2e_kept']:,} kept): "
                f"{100 * r['prepost_ratio']:.1f}% = (preprocess {r['e2e_preprocess_ms']:.1f} + decode "
                f"{r['e2e_decode_ms']:.1f} + NMS {r['e2e_nms_ms']:.1f} ms) / inference "
                f"{r['e2e_inference_ms']:.1f} ms (reading the JPEG, {r['e2e_read_ms']:.1f} ms, not "
                f"counted), target <= {100 * TARGET_PREPOST:.0f}%: {verdict(r['prepost_ratio'] <= TARGET_PREPOST)}")
    if command and command["peak_rss"]:
        peak = command["peak_rss"] / MB
        lines.append(f"scrfd.py peak RSS ({command['command']}): {peak:.0f} MB, target <= "
                     f"{TARGET_RSS_MB:.0f} MB: {verdict(peak <= TARGET_RSS_MB and command['exit_code'] == 0)}"
                     f"; TensorFlow imported: "
                     f"{'YES, target NOT met' if command['tensorflow_imported'] else 'no, met'}")
    print("\ntargets (from this run):")
    for line in lines or ["(no row of det_500m at 640x640 float32 to check them on)"]:
        print(f"  {line}")
    return lines


def main() -> int:
    args = parse_args()
    if args.image and not (args.image.is_file() or (args.detector and args.image.is_dir())):
        raise UserError(f"image not found: {args.image}")
    image = args.image or next((p for p in IMAGE_CANDIDATES if p.exists()), None)
    if args.analyze:
        return run_analysis([Path(p) for p in args.analyze], args.hw, image)
    if args.profile_ops:
        paths = [Path(p) for p in args.profile_ops]
        for path in paths:
            if not path.is_file() or path.suffix.lower() != ".tflite":
                raise UserError(f"--profile-ops takes .tflite files: {path} is not one")
        try:
            lines = profile_ops(paths, args.threads[0], args.repeat, args.iters)
        except AnalysisError as err:
            raise UserError(str(err)) from None
        print("\n".join(lines))
        if args.markdown:
            with atomic_write(args.markdown) as handle:
                handle.write("\n".join(lines) + "\n")
            print(f"wrote {args.markdown}")
        return 0

    env = environment()
    if args.detector:
        models = expand_models(args.models) if args.models else [
            m for m in grid_models(args.models_dir, args.hw or list(GRID_SIZES))[0]
            if m.suffix == ".tflite"]
        return compare_detectors(args.detector, models, args, env)
    print(f"CPU: {env['cpu']}, {env['logical_cores']} logical / {env['physical_cores']} physical "
          f"cores, load average {env['load_average']}; " +
          ", ".join(f"{k} {v}" for k, v in env["versions"].items()))
    backends, gpus, gpu_name = choose_backends(args.backends)
    configs, analyses = prepare(choose_models(args), backends, args, image)
    live = [c for c in configs if c.runner is not None]
    if not live:
        raise UserError("nothing could be timed (see the messages above)")

    groups: dict[tuple, list[Config]] = {}  # what is compared runs side by side
    for config in live:
        groups.setdefault((family_of(config.model), config.input_hw), []).append(config)
    print(f"\ntiming {len(live)} rows in {len(groups)} group(s), interleaved: {args.repeat} rounds x "
          f"{args.iters} calls; end-to-end on {image or '(no photo)'} at score {args.score:g}, "
          f"NMS {args.nms:g}")
    for (family, hw), members in groups.items():
        print(f"{family} {hw[0]}x{hw[1]}:")
        time_group(members, image, args.repeat, args.iters, args.score, args.nms)
        for config in members:  # free the runners before the next group
            config.runner = config.tensor = None

    rows = [make_row(c, analyses.get(f"{c.model}@{c.hw}", {}), env, gpu_name, args, image)
            for c in configs]
    if not args.no_rss:
        measure_rss(rows, configs, image)
    command = check_command(args.rss_command, args.models_dir, image)

    print("\nanalysis (at the timed input size):")
    for info in analyses.values():
        xnn = info.get("xnnpack")
        print(f"  {info['model']}: {info['params']:,} params, {fmt_count(info['macs'])} MACs = "
              f"{fmt_count(info['flops'])}FLOPs, peak activations {info['peak_activation_bytes'] / MB:.1f} MB"
              + (f", XNNPACK takes {xnn['delegated']}/{xnn['ops']} ops"
                 + (" (builtin kernels: " + ", ".join(f"{k} x{v}" for k, v in xnn["fallback"].items())
                    + ")" if xnn["fallback"] else "") if xnn else ""))
    ratios = ratio_rows(configs)
    tables = markdown_tables(rows, ratios, env, args, image, usable_gpu=any(
        why is None for why in gpus.values()))
    print("\n" + "\n".join(tables))
    targets = print_targets(rows, ratios, command, image, args)

    points = eval_points(args.eval_results, rows)
    if points:
        print(f"\nwrote the speed-accuracy plot {plot_speed_accuracy(points, args.plot)} "
              f"({len(points)} points)")
    else:
        print(f"\nno evaluate_widerface.py results for the timed models in {args.eval_results}: no "
              "speed-accuracy plot (evaluate first: evaluate_widerface.py --model M --out results/eval/NAME)")

    if args.json:
        output = {"environment": env, "gpu": {"name": gpu_name, "backends": gpus},
                  "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                  "rows": rows, "ratios": ratios, "targets": targets, "analysis": analyses,
                  "command": command, "plot_points": points}
        with atomic_write(args.json) as handle:
            json.dump(output, handle, indent=1, default=str)
        print(f"wrote {args.json}")
    if args.csv:
        fields = list(dict.fromkeys(k for row in rows for k in row))
        with atomic_write(args.csv) as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows({k: json.dumps(v) if isinstance(v, (dict, list)) else v
                              for k, v in row.items()} for row in rows)
        print(f"wrote {args.csv}")
    if args.markdown:
        with atomic_write(args.markdown) as handle:
            handle.write("\n".join(tables + ["", "Targets:", ""] + [f"- {t}" for t in targets]) + "\n")
        print(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    cli(main)
