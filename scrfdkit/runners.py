"""ONNX Runtime and LiteRT behind one interface: input size, layout, precision, backend, run().

Callers never reach into a session or an interpreter: what they need (the op list, the
providers in use) is a method here. Session and interpreter creation live here alone.
"""
from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator, Sequence, TypeVar

import cv2
import numpy as np

from .decode import (INPUT_MEAN, INPUT_STD, KIND_CHANNELS, STRIDES, OutputSpec, RawOutputs,
                     group_outputs, identify_outputs)
from .defaults import DEFAULT_INPUT_HW, DEFAULT_THREADS
from .errors import UserError
from .metadata import check_unaltered, metadata_path, read_metadata
from .tflite_check import check_tflite

CPU_PROVIDERS = ("CPUExecutionProvider",)
T = TypeVar("T")


def _check_model_file(path: Path, suffix: str) -> None:
    if not path.is_file():
        raise UserError(f"model not found: {path}")
    if path.suffix.lower() != suffix:
        raise UserError(f"{path}: expected a {suffix} file")


def onnx_session(path: str | os.PathLike, threads: int | None = DEFAULT_THREADS,
                 providers: Sequence[str] | None = None, log_level: int = 3):
    """An ONNX Runtime session: `threads` intra-op threads (None: ORT's choice), quiet logs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = log_level  # dynamic-shape exports warn on every size but 640
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), options, providers=list(providers or CPU_PROVIDERS))
    except Exception as err:  # onnxruntime raises its own exception types
        raise UserError(f"cannot load {path} as ONNX: {str(err).splitlines()[0]}") from None


def tflite_interpreter(path: str | os.PathLike, threads: int | None = None,
                       delegates: Sequence | None = None, xnnpack: bool = True):
    """A LiteRT interpreter (not yet allocated); xnnpack=False: builtin kernels only.

    The file's structure is checked first: LiteRT crashes the process on a damaged one.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    check_tflite(path)
    resolver = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    try:
        return Interpreter(model_path=str(path), num_threads=threads or None,
                           experimental_delegates=delegates,
                           experimental_op_resolver_type=resolver)
    except (ValueError, RuntimeError) as err:
        raise UserError(f"cannot load {path} as TFLite: {str(err).splitlines()[0]}") from None


def tflite_ops(interpreter) -> list[dict]:
    """An allocated interpreter's execution plan: one dict per node (index, op_name, inputs,
    outputs), delegated parts as DELEGATE nodes. LiteRT offers this only under a private name."""
    return interpreter._get_ops_details()


class OnnxRunner:
    """ONNX Runtime on CPU (or CUDA/TensorRT when asked), at a chosen size for dynamic models."""

    backend = "onnxruntime"
    layout = "NCHW"

    def __init__(self, model_path: str | os.PathLike, input_hw: tuple[int, int] | None = None,
                 threads: int | None = DEFAULT_THREADS, providers: Sequence[str] | None = None):
        path = Path(model_path)
        _check_model_file(path, ".onnx")
        self.model_path = path
        self.threads, self._providers = threads, providers
        self.session = onnx_session(path, threads, providers)
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4 or inputs[0].shape[1] not in (3, "3"):
            raise UserError(f"not an SCRFD model: {path} needs one 1x3xHxW image input")
        self.input_name = inputs[0].name
        self.input_type = inputs[0].type
        fixed = [d if isinstance(d, int) else None for d in inputs[0].shape[2:]]
        self.dynamic_input = not all(fixed)
        if not self.dynamic_input:
            if input_hw and tuple(input_hw) != tuple(fixed):
                raise UserError(f"{path.name} has a fixed {fixed[0]}x{fixed[1]} input; re-export "
                                f"it with export_modified_onnx.py --hw {input_hw[0]},{input_hw[1]}")
            input_hw = (int(fixed[0]), int(fixed[1]))
        self.input_hw: tuple[int, int] = tuple(input_hw or DEFAULT_INPUT_HW)  # type: ignore
        try:
            probe = self.session.run(None, {self.input_name: np.zeros((1, 3, *self.input_hw),
                                                                       np.float32)})
        except Exception as err:
            raise UserError(f"{path.name} does not run at {self.input_hw[0]}x{self.input_hw[1]}: "
                            f"{str(err).splitlines()[0]}") from None
        self.specs, self.anchors = identify_outputs([o.shape for o in probe], self.input_hw)
        self.has_landmarks = any(s.kind == "kps" for s in self.specs)

    @property
    def precision(self) -> str:
        return "float16" if "float16" in self.input_type else "float32"

    def providers(self) -> list[str]:
        """The execution providers the session really uses (CPU when a GPU one failed)."""
        return self.session.get_providers()

    def clone(self, threads: int | None = None) -> "OnnxRunner":
        """Another session of the same model and size (`threads` intra-op threads, default
        this one's), for a thread of its own (RunnerPool)."""
        return OnnxRunner(self.model_path, self.input_hw, threads or self.threads,
                          self._providers)

    def run(self, tensor: np.ndarray) -> RawOutputs:
        outputs = self.session.run(None, {self.input_name: tensor})
        return group_outputs(zip(self.specs, outputs))


class LiteRTRunner:
    """A .tflite through LiteRT (XNNPACK on CPU), reading the export's metadata when present.

    `delegates` are extra LiteRT delegates (a GPU one, say); xnnpack=False turns LiteRT's
    default XNNPACK delegate off (builtin kernels only), to see what XNNPACK is worth.
    `delegated_partitions` counts the parts of the graph some delegate took.
    """

    backend = "litert"

    def __init__(self, model_path: str | os.PathLike, input_hw: tuple[int, int] | None = None,
                 threads: int | None = DEFAULT_THREADS, delegates: Sequence | None = None,
                 xnnpack: bool = True):
        path = Path(model_path)
        _check_model_file(path, ".tflite")
        self.model_path = path
        self.threads, self._delegates, self._xnnpack = threads, delegates, xnnpack
        self.interpreter = tflite_interpreter(path, threads, delegates, xnnpack)  # checks structure
        self.metadata = read_metadata(path)
        check_unaltered(path, self.metadata)  # the sidecar's sha256: weights altered since export
        details = self.interpreter.get_input_details()
        shape = [int(d) for d in details[0]["shape_signature"]] if len(details) == 1 else []
        if len(shape) != 4 or not (shape[1] == 3 or shape[3] in (3, 4)):
            raise UserError(f"not an SCRFD model: {path} needs one image input")
        self.layout = "NCHW" if shape[1] == 3 else "NHWC"
        # A 4-channel NHWC input is RGB plus a channel the stem ignores (zero weights): XNNPACK's
        # first convolution runs much faster on 4 channels than on 3; we fill it in place.
        self._rgba = self.layout == "NHWC" and shape[3] == 4
        spatial = shape[2:] if self.layout == "NCHW" else shape[1:3]
        self.dynamic_input = min(spatial) <= 0
        if self.dynamic_input:  # size it before allocating
            input_hw = tuple(input_hw or DEFAULT_INPUT_HW)
            new_shape = [1, 3, *input_hw] if self.layout == "NCHW" else [1, *input_hw, shape[3]]
            self.interpreter.resize_tensor_input(details[0]["index"], new_shape)
        else:
            if input_hw and tuple(input_hw) != tuple(spatial):
                raise UserError(f"{path.name} was exported for {spatial[0]}x{spatial[1]}, not "
                                f"{input_hw[0]}x{input_hw[1]}; export another size")
            input_hw = tuple(spatial)
        self.input_hw: tuple[int, int] = tuple(int(v) for v in input_hw)  # type: ignore
        try:
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as err:
            raise UserError(f"cannot prepare {path} at {self.input_hw[0]}x{self.input_hw[1]}: "
                            f"{str(err).splitlines()[0]}") from None
        self.delegated_partitions = self.op_names().count("DELEGATE")
        self.input = self.interpreter.get_input_details()[0]
        self.input_dtype = np.dtype(self.input["dtype"])
        outputs = self.interpreter.get_output_details()
        if self.metadata:
            self.specs, self.anchors = metadata_specs(self.metadata, outputs, self.input_hw, path)
        else:
            self.specs, self.anchors = identify_outputs([o["shape"] for o in outputs],
                                                        self.input_hw)
        self.has_landmarks = any(s.kind == "kps" for s in self.specs)
        self._outputs = [(spec, o["index"], *o["quantization"], o["dtype"])
                         for spec, o in zip(self.specs, outputs)]
        in_scale, in_zero = self.input["quantization"]
        self._quantize = None
        if self.input_dtype in (np.int8, np.uint8):
            depth = cv2.CV_8S if self.input_dtype == np.int8 else cv2.CV_8U
            self._quantize = (1.0 / in_scale, float(in_zero), depth)

    @property
    def precision(self) -> str:
        """float32 / float16 / dynamic / int8: the export's word, else read from the tensor types."""
        if self.metadata and self.metadata.get("precision"):
            return self.metadata["precision"]
        if self.input_dtype.kind in "iu":
            return "int8"
        types = {np.dtype(t["dtype"]).name for t in self.interpreter.get_tensor_details()}
        return "float16" if "float16" in types else ("dynamic" if "int8" in types else "float32")

    def clone(self, threads: int | None = None) -> "LiteRTRunner | None":
        """Another interpreter of the same model and size (`threads` threads, default this
        one's), for a thread of its own (RunnerPool): an interpreter runs one call at a time.
        None with extra delegates, which one interpreter owns."""
        if self._delegates:
            return None
        return LiteRTRunner(self.model_path, self.input_hw, threads or self.threads,
                            xnnpack=self._xnnpack)

    def op_names(self) -> list[str]:
        """The interpreter's execution plan, one op name per node (DELEGATE for delegated parts)."""
        return [op["op_name"] for op in tflite_ops(self.interpreter)]

    def quantized(self, tensor: np.ndarray) -> np.ndarray:
        """A float model input as this model's int8/uint8 input (unchanged for a float model)."""
        if not self._quantize:
            return tensor
        # round(x / scale + zero), saturated: one OpenCV pass, not five numpy ones
        inv_scale, zero, depth = self._quantize
        flat = np.ascontiguousarray(tensor, np.float32).reshape(
            -1, tensor.shape[-2] * tensor.shape[-1])
        return cv2.addWeighted(flat, inv_scale, flat, 0.0, zero, dtype=depth).reshape(
            tensor.shape)

    def pixel_table(self) -> np.ndarray | None:
        """For a quantized input, the input value of each 8-bit pixel value, made by the
        normalisation and quantized() themselves: a photo passed once through it (cv2.LUT)
        gives run(..., quantized=True) the very bytes run() would make. None: float input."""
        if not self._quantize:
            return None
        values = (np.arange(256, dtype=np.float32) - INPUT_MEAN) * np.float32(1.0 / INPUT_STD)
        return self.quantized(values.reshape(1, 256)).reshape(256)

    def run(self, tensor: np.ndarray, quantized: bool = False) -> RawOutputs:
        """Raw outputs of one normalised input (quantized=True: already in the input's
        dtype, as pixel_table() makes it)."""
        if not quantized:
            tensor = self.quantized(tensor)
        if self._rgba:
            self._write_rgba(tensor)
        else:
            self.interpreter.set_tensor(self.input["index"], tensor)
        self.interpreter.invoke()
        pairs = []
        for spec, index, scale, zero, dtype in self._outputs:
            array = self.interpreter.get_tensor(index)
            if dtype != np.float32:
                array = (array.astype(np.float32) - zero) * scale if scale else array.astype(
                    np.float32)
            pairs.append((spec, array))
        return group_outputs(pairs)

    def _write_rgba(self, tensor: np.ndarray) -> None:
        """RGB (1, H, W, 3) into the 4-channel input buffer, in place, in one OpenCV pass."""
        buffer = self.interpreter.tensor(self.input["index"])()  # a view: drop it before invoke
        source, target = tensor.reshape(tensor.shape[-3:]), buffer[0]
        if source.dtype != np.float32:  # int8/uint8: same bytes, OpenCV only knows uint8
            source, target = source.view(np.uint8), target.view(np.uint8)
        written = cv2.cvtColor(source, cv2.COLOR_RGB2RGBA, dst=target)
        if written.ctypes.data != target.ctypes.data:  # OpenCV chose its own array after all
            target[..., :3] = source
        del buffer, target, written


Runner = OnnxRunner | LiteRTRunner


class RunnerPool:
    """Runners of one model for many threads: each runner serves one call at a time.

    A LiteRT interpreter holds its input and output tensors, so two threads in one invoke()
    see each other's data; a pool gives each call a runner of its own. The first runner is
    the one given; more are cloned (runner.clone(clone_threads)) only when a call finds every
    runner busy, up to `size`; then calls wait. size 1 is a lock. Cloned interpreters share
    the model file (memory-mapped) but not XNNPACK's packed weights or activations: +36 MB
    per extra det_500m 480x640 float32 interpreter, +18 MB int8, +28 MB per ONNX Runtime
    session (docs/speed.md), so clones are made only when calls overlap.

    map() runs a function over items on the pool's runners at once: LiteRT's invoke() and
    ONNX Runtime's run() release the GIL, so the runs really are parallel.
    """

    def __init__(self, first, size: int = 1, clone_threads: int | None = None):
        self.first = first
        self.size = max(1, int(size)) if callable(getattr(first, "clone", None)) else 1
        self.clone_threads = clone_threads
        self.runners = [first]  # every runner made, idle or not
        self._idle = [first]
        self._ready = threading.Condition()
        self._executor: ThreadPoolExecutor | None = None

    @contextlib.contextmanager
    def __call__(self) -> Iterator:
        """A runner for this thread alone while the block runs."""
        runner = self._take()
        try:
            yield runner
        finally:
            with self._ready:
                self._idle.append(runner)
                self._ready.notify()

    def _take(self):
        with self._ready:
            while not self._idle and len(self.runners) >= self.size:
                self._ready.wait()
            if self._idle:
                return self._idle.pop()
            self.runners.append(None)  # a place held while the clone is made
        runner = None
        try:
            runner = self.first.clone(self.clone_threads)
        except Exception:  # memory, say: the runners there are will do
            pass
        with self._ready:
            self.runners.remove(None)
            if runner is not None:
                self.runners.append(runner)
                return runner
            self.size = len(self.runners)  # not clonable (or no memory): share those there are
            while not self._idle:
                self._ready.wait()
            return self._idle.pop()

    def run(self, tensor: np.ndarray, **options) -> RawOutputs:
        with self() as runner:
            return runner.run(tensor, **options)

    def map(self, function: Callable[..., T], items: Sequence) -> list[T]:
        """[function(runner, item) for item in items], the items spread over up to `size`
        runners at once; results in the items' order."""
        if self.size == 1 or len(items) < 2:
            with self() as runner:
                return [function(runner, item) for item in items]
        if self._executor is None:
            with self._ready:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(self.size, "scrfd-runner")

        def one(item):
            with self() as runner:
                return function(runner, item)

        return list(self._executor.map(one, items))


def metadata_specs(meta: dict, outputs: list[dict], input_hw: tuple[int, int], path: Path
                   ) -> tuple[list[OutputSpec], int]:
    """Each output's kind and stride as the export's metadata names them, checked against the
    tensors themselves: a sidecar edited, swapped or from another model is a UserError."""
    where = f"metadata {metadata_path(path)}" if metadata_path(path).exists() else \
        f"the metadata embedded in {path}"
    fix = "; re-export the model (or remove the sidecar to use the copy inside the .tflite)"
    described, anchors = meta.get("outputs"), meta.get("anchors_per_location")
    if not isinstance(described, list) or not all(isinstance(o, dict) for o in described):
        raise UserError(f"{where} has no list of outputs{fix}")
    if not isinstance(anchors, int) or anchors < 1:
        raise UserError(f"{where} has no anchors_per_location{fix}")
    by_name = {str(o.get("name")): o for o in described}
    missing = [o["name"] for o in outputs if o["name"] not in by_name]
    if missing:
        raise UserError(f"{where} does not match the model (unknown outputs {missing}){fix}")
    specs = []
    for output in outputs:
        kind, stride = by_name[output["name"]].get("kind"), by_name[output["name"]].get("stride")
        shape = [int(d) for d in output["shape"]]
        cells = (input_hw[0] // stride) * (input_hw[1] // stride) if stride in STRIDES else 0
        known = isinstance(kind, str) and kind in KIND_CHANNELS and cells
        if not known or shape[-1] != KIND_CHANNELS[kind] or \
                int(np.prod(shape[:-1])) != cells * anchors:
            raise UserError(f"{where} says output {output['name']} is the {kind!r} output at "
                            f"stride {stride!r}, but its shape {shape} does not fit that{fix}")
        specs.append(OutputSpec(kind, stride))
    return specs, anchors


def open_runner(model_path: str | os.PathLike, input_hw: tuple[int, int] | None = None,
                threads: int | None = DEFAULT_THREADS, **options) -> Runner:
    """ONNX Runtime for .onnx, LiteRT for .tflite."""
    suffix = Path(model_path).suffix.lower()
    if suffix == ".onnx":
        return OnnxRunner(model_path, input_hw, threads, **options)
    if suffix == ".tflite":
        # decoded / object-detector exports (export_tflite.py --kind): scrfdkit/postprocessed.py
        from .postprocessed import RAW, PostprocessedRunner, export_kind
        if export_kind(model_path) != RAW:
            return PostprocessedRunner(model_path, tflite_interpreter(model_path, threads,
                                                                      options.get("delegates")),
                                       input_hw)
        return LiteRTRunner(model_path, input_hw, threads, **options)
    raise UserError(f"{model_path}: unsupported model type (expected .onnx or .tflite)")


def fixed_input_hw(model_path: Path) -> tuple[int, int] | None:
    """The input size a model file was exported for, or None when it takes any size."""
    if not model_path.is_file():
        raise UserError(f"model not found: {model_path}")
    suffix = model_path.suffix.lower()
    if suffix == ".onnx":
        hw = onnx_session(model_path, threads=1).get_inputs()[0].shape[2:]
        hw = [d if isinstance(d, int) else 0 for d in hw]
    elif suffix == ".tflite":
        shape = list(tflite_interpreter(model_path).get_input_details()[0]["shape_signature"])
        hw = shape[2:] if len(shape) == 4 and shape[1] == 3 else shape[1:3]
    else:
        raise UserError(f"{model_path}: unsupported model type (expected .onnx or .tflite)")
    return (int(hw[0]), int(hw[1])) if len(hw) == 2 and min(hw) > 0 else None
