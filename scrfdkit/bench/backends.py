"""Which runtime runs a model in a speed measurement: LiteRT and ONNX Runtime on CPU, and the
GPU backends only where they really start (a CPU number must never pass for a GPU one)."""
from __future__ import annotations

import ctypes
import os
import subprocess
from pathlib import Path

import numpy as np

from ..decode import preprocess
from ..devices import device_providers
from ..errors import UserError
from ..files import read_image
from ..runners import LiteRTRunner, OnnxRunner, Runner, open_runner

CPU_BACKENDS = ("litert", "onnxruntime")
GPU_BACKENDS = ("onnxruntime-cuda", "onnxruntime-tensorrt", "litert-gpu")
ALL_BACKENDS = CPU_BACKENDS + ("litert-builtin",) + GPU_BACKENDS  # litert-builtin: XNNPACK off
BACKEND_FORMAT = {"litert": ".tflite", "litert-builtin": ".tflite", "litert-gpu": ".tflite",
                  "onnxruntime": ".onnx", "onnxruntime-cuda": ".onnx", "onnxruntime-tensorrt": ".onnx"}
BACKEND_LABELS = {"litert": "LiteRT", "onnxruntime": "ONNX Runtime",
                  "litert-builtin": "LiteRT, no XNNPACK"}
ORT_PROVIDERS = {"onnxruntime-cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
                 "onnxruntime-tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                          "CPUExecutionProvider"]}
LITERT_GPU_ENV = "SCRFD_LITERT_GPU_DELEGATE"  # path of a LiteRT/TFLite GPU delegate .so
LITERT_GPU_LIBS = ("libtensorflowlite_gpu_delegate.so", "libLiteRtGpuAccelerator.so")
INSTALL_HINT = {"litert": "pip install ai-edge-litert==2.1.0",
                "onnxruntime": "pip install onnxruntime==1.23.0 (onnxruntime-gpu for CUDA)",
                "onnx": "pip install onnx==1.19.1"}


class BackendUnavailable(UserError):
    """A backend that is not installed or has no device here; its rows are skipped."""


def gpu_status() -> dict[str, str | None]:
    """For each GPU backend: None when usable, else why not."""
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
            status[backend] = None  # a session still has to prove it runs there (open_backend)
    status["litert-gpu"] = None if litert_gpu_library() else (
        f"no LiteRT GPU delegate library (the pip package has none; set {LITERT_GPU_ENV})")
    return status


def litert_gpu_library() -> str | None:
    """The first GPU delegate library that loads, or None."""
    try:
        from ai_edge_litert.interpreter import load_delegate
    except ImportError:
        return None
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


def open_backend(model: str | os.PathLike, backend: str, threads: int,
                 hw: tuple[int, int] | None) -> Runner:
    """A runner for one backend; BackendUnavailable when it cannot run here."""
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
        return open_runner(model, hw, threads)  # raw, decoded or object-detector export
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise BackendUnavailable(f"ONNX Runtime is not installed ({INSTALL_HINT['onnxruntime']})") from None
    if backend in ORT_PROVIDERS:
        reason = gpu_status()[backend]
        if reason:
            raise BackendUnavailable(reason)
        runner = OnnxRunner(model, hw, threads, providers=ORT_PROVIDERS[backend])
        used = runner.providers()
        if used[0] != ORT_PROVIDERS[backend][0]:  # ORT falls back to CPU silently
            raise BackendUnavailable(f"{ORT_PROVIDERS[backend][0]} did not start (session uses "
                                     f"{', '.join(used)}): no usable GPU")
        return runner
    return OnnxRunner(model, hw, threads)


def input_tensor(runner: Runner, image: str | os.PathLike | None) -> np.ndarray:
    """The real photo preprocessed for this runner, or zeros when there is no photo."""
    if image:
        return preprocess(read_image(image), runner.input_hw, runner.layout)[0]
    shape = (1, 3, *runner.input_hw) if runner.layout == "NCHW" else (1, *runner.input_hw, 3)
    return np.zeros(shape, np.float32)


def choose_backends(text: str) -> tuple[list[str], dict, str | None]:
    """The backends to run, and the GPU situation, printed so no CPU number passes for a GPU one."""
    gpus, gpu_name = gpu_status(), nvidia_gpu()
    usable = [b for b, why in gpus.items() if why is None]
    if text == "auto":
        backends = list(CPU_BACKENDS) + usable
    else:
        backends = [b.strip() for b in text.split(",") if b.strip()]
        unknown = [b for b in backends if b not in ALL_BACKENDS]
        if unknown or not backends:
            raise UserError(f"unknown backend {(unknown or [text])[0]!r}; choose from {', '.join(ALL_BACKENDS)}")
    print(f"GPU: {gpu_name or 'no NVIDIA GPU found (nvidia-smi)'}; " + "; ".join(
        f"{b}: {'available' if why is None else 'not available, ' + why}" for b, why in gpus.items()))
    if not usable:
        print("GPU: none usable here, so there are no GPU rows: every number below is CPU")
    return backends, gpus, gpu_name


def device_backends(device: str, backends: str) -> str:
    """--backends, or for --device cuda or tensorrt its ONNX Runtime backend alone (checked:
    a one-line error when this onnxruntime lacks the provider)."""
    if device == "cpu":
        return backends
    if backends != "auto":
        raise UserError("give either --device or --backends (a comma list may name "
                        "onnxruntime-cuda and onnxruntime-tensorrt)")
    if f"onnxruntime-{device}" not in GPU_BACKENDS:
        raise UserError(f"--device {device}: speed_test.py times cuda and tensorrt (its "
                        "onnxruntime-cuda and onnxruntime-tensorrt backends)")
    device_providers(device)
    return f"onnxruntime-{device}"
