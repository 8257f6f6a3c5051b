"""Where ONNX models run: ONNX Runtime's execution providers by a short device name (--device),
checked before any work and again once a session has opened (ONNX Runtime falls back to the
CPU silently when a provider cannot start)."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import UserError

# each device's provider first, then its fallbacks for the operations it lacks
DEVICE_PROVIDERS = {
    "cpu": ("CPUExecutionProvider",),
    "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
    "rocm": ("ROCMExecutionProvider", "CPUExecutionProvider"),
    "migraphx": ("MIGraphXExecutionProvider", "CPUExecutionProvider"),
    "directml": ("DmlExecutionProvider", "CPUExecutionProvider"),
    "coreml": ("CoreMLExecutionProvider", "CPUExecutionProvider"),
    "openvino": ("OpenVINOExecutionProvider", "CPUExecutionProvider"),
}
DEVICE_PACKAGES = {"cuda": "onnxruntime-gpu", "tensorrt": "onnxruntime-gpu and TensorRT",
                   "rocm": "onnxruntime-rocm", "migraphx": "onnxruntime-migraphx",
                   "directml": "onnxruntime-directml", "openvino": "onnxruntime-openvino",
                   "coreml": "onnxruntime on macOS"}


def device_providers(device: str, models: list | tuple = ()) -> tuple[str, ...] | None:
    """The providers `device` stands for (None: the CPU default), checked before any work:
    UserError when this onnxruntime lacks the provider, or one of `models` is a .tflite."""
    if device not in DEVICE_PROVIDERS:
        raise UserError(f"--device {device}: expected one of {', '.join(DEVICE_PROVIDERS)}")
    if device == "cpu":
        return None
    for path in models:
        if Path(path).suffix.lower() == ".tflite":
            raise UserError(f"--device {device} runs ONNX models; {os.fspath(path)} is a .tflite "
                            "model, which LiteRT runs on the CPU (leave out --device, or give "
                            "the .onnx model)")
    import onnxruntime as ort

    wanted, available = DEVICE_PROVIDERS[device][0], ort.get_available_providers()
    if wanted not in available:
        names = ", ".join(p.removesuffix("ExecutionProvider") for p in available)
        raise UserError(f"--device {device}: onnxruntime {ort.__version__} here has no {wanted} "
                        f"(it has {names}); install {DEVICE_PACKAGES[device]} instead of "
                        "onnxruntime")
    return DEVICE_PROVIDERS[device]


def check_started(runner, device: str) -> None:
    """UserError when an open runner does not run on `device` (no usable GPU, a missing CUDA
    library: ONNX Runtime then runs on the CPU without a word)."""
    if device == "cpu":
        return
    wanted, used = DEVICE_PROVIDERS[device][0], runner.providers()
    if used[0] != wanted:
        raise UserError(f"--device {device}: {wanted} did not start (the session runs on "
                        f"{', '.join(used)}); is there a usable {device} device and its "
                        "libraries?")
