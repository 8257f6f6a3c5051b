"""One stopwatch for every stage, and the statistics speed claims rest on (medians, not means)."""
from __future__ import annotations

import contextlib
import gc
import importlib.metadata
import os
import platform
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterator, Sequence, TypeVar

import numpy as np

T = TypeVar("T")


class Profile:
    """Seconds per named stage: `with profile("inference"): ...`.

    `last` holds the latest duration of each stage, `totals` and `counts` their sums, so a
    script can print both a per-call split and a mean per item from the same clock. Safe to
    share between threads: `last` is each thread's own (its latest call's), the sums are of
    every thread's.
    """

    def __init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self.totals: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    @property
    def last(self) -> dict[str, float]:
        """This thread's latest duration of each stage."""
        try:
            return self._local.last
        except AttributeError:
            self._local.last = {}
            return self._local.last

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add({stage: time.perf_counter() - start})

    def add(self, other: dict[str, float]) -> None:
        """Fold in durations measured elsewhere, as one call each (a tiled detection's sums)."""
        last = self.last
        with self._lock:
            for stage, seconds in other.items():
                last[stage] = seconds
                self.totals[stage] += seconds
                self.counts[stage] += 1


# ----------------------------------------------------------------------------- interleaved timing
def interleaved_rounds(members: Sequence[T], repeat: int, run_block: Callable[[T], None],
                       after_round: Callable[[int], None] | None = None) -> None:
    """Round-robin: every round runs each member's block once, in alternating order.

    A shared machine's noise (another job, a frequency step) then lands on every member
    alike, so ratios taken within a round hold even when absolute times drift. The garbage
    collector is off inside the rounds (a collection would land on one member only) and runs
    between them.
    """
    gc.disable()
    try:
        for round_index in range(repeat):
            for member in (members if round_index % 2 == 0 else members[::-1]):
                run_block(member)
            gc.collect()
            if after_round:
                after_round(round_index)
    finally:
        gc.enable()


def time_calls(call: Callable[[], object], iters: int) -> tuple[list[float], list[float]]:
    """`iters` calls: wall seconds of each, and the calling thread's CPU seconds of each."""
    wall, cpu = [], []
    for _ in range(iters):
        c0, t0 = time.thread_time(), time.perf_counter()
        call()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
    return wall, cpu


def latency_summary(rounds: Sequence[Sequence[float]]) -> dict[str, float]:
    """Milliseconds from per-round samples (seconds): median, p90, p99, mean, min, max, the
    spread of the per-round medians (the noise), and throughput = 1 / mean."""
    ms = np.concatenate([np.asarray(r, np.float64) for r in rounds]) * 1e3
    medians = np.array([np.median(r) for r in rounds]) * 1e3
    return {"samples": len(ms), "rounds": len(medians),
            "median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()),
            "min_ms": float(ms.min()), "max_ms": float(ms.max()),
            "round_median_min_ms": float(medians.min()), "round_median_max_ms": float(medians.max()),
            "throughput_fps": float(1e3 / ms.mean())}


def paired_ratio(rounds_a: Sequence[Sequence[float]], rounds_b: Sequence[Sequence[float]]
                 ) -> dict[str, float]:
    """a / b from the per-round medians of two members timed side by side: the median of the
    per-round ratios and their min–max."""
    ratios = np.array([np.median(a) / np.median(b) for a, b in zip(rounds_a, rounds_b)])
    return {"value": float(np.median(ratios)), "round_min": float(ratios.min()),
            "round_max": float(ratios.max())}


# ----------------------------------------------------------------------------- environment
def version_of(package: str) -> str | None:
    """Installed version without importing the package (keeps this process small)."""
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


def cpu_features() -> str:
    """The vector extensions that decide int8 against float32 speed: "AVX-512 VNNI" (int8 dot
    products; XNNPACK's int8 kernels beat float32), "AVX2, no VNNI" (they do not), etc."""
    try:
        flags = set(next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                         if line.startswith(("flags", "Features"))).split(":", 1)[1].split())
    except (OSError, StopIteration):
        return "unknown vector extensions"
    if "avx512_vnni" in flags:
        return "AVX-512 VNNI"
    if "avx_vnni" in flags:
        return "AVX2 + AVX-VNNI"
    if "asimddp" in flags:
        return "ARM dot product"
    if "avx512f" in flags:
        return "AVX-512, no VNNI"
    return "AVX2, no VNNI" if "avx2" in flags else "no AVX2"


def cpu_label() -> str:
    """The CPU as every speed table names it: model and int8 support."""
    return f"{cpu_name()} ({cpu_features()})"


def environment() -> dict:
    """What a timing means nothing without: CPU, cores, load, library versions."""
    import psutil

    versions = {name: version_of(pkg) for name, pkg in (
        ("numpy", "numpy"), ("opencv", "opencv-python"), ("onnxruntime", "onnxruntime"),
        ("onnxruntime-gpu", "onnxruntime-gpu"), ("ai-edge-litert", "ai-edge-litert"),
        ("onnx", "onnx"))}
    return {"cpu": cpu_name(), "cpu_features": cpu_features(), "logical_cores": os.cpu_count(),
            "physical_cores": psutil.cpu_count(logical=False),
            "load_average": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
            "platform": platform.platform(), "python": platform.python_version(),
            "versions": {k: v for k, v in versions.items() if v}}
