"""speed_test.py --shared-threads: photos per second from one SCRFD detector called by K
threads at once (a web server's), its runners a pool of `workers` (1: a lock) or more.

Every member (threads x workers) detects the same photos, each thread taking its share,
members interleaved round by round; throughput is photos over the wall time of the round.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..detector import SCRFD
from ..tables import markdown_table
from ..timing import interleaved_rounds, paired_ratio

CALLS_PER_THREAD = 8


@dataclass
class SharedTiming:
    model: Path
    callers: int  # threads calling detect() at once
    workers: int  # runners of the detector's pool
    detector: SCRFD
    seconds: list[float] = field(default_factory=list)  # wall seconds per photo, per round

    @property
    def label(self) -> str:
        pool = "a lock (1 runner)" if self.workers == 1 else f"a pool of {self.workers} runners"
        return f"{self.callers} thread(s), {pool}"


def time_shared(models: list[Path], images: list[np.ndarray], threads: int, callers: list[int],
                workers: list[int], repeat: int, tile: bool) -> list[SharedTiming]:
    timings = [SharedTiming(model, k, w, SCRFD(model, threads=threads, workers=w, tile=tile))
               for model in models for k in callers for w in workers if w <= max(k, 1)]

    def block(timing: SharedTiming) -> None:
        calls = [images[i % len(images)] for i in range(CALLS_PER_THREAD * timing.callers)]
        shares = [calls[i::timing.callers] for i in range(timing.callers)]
        start = threading.Barrier(timing.callers + 1)

        def work(share: list[np.ndarray]) -> None:
            start.wait()
            for image in share:
                timing.detector.detect(image)

        pool = [threading.Thread(target=work, args=(share,)) for share in shares]
        for thread in pool:
            thread.start()
        start.wait()
        began = time.perf_counter()
        for thread in pool:
            thread.join()
        timing.seconds.append((time.perf_counter() - began) / len(calls))

    for timing in timings:  # warm-up, with every runner of the pool made
        block(timing)
        timing.seconds.clear()
    interleaved_rounds(timings, repeat, block)
    return timings


def shared_table(timings: list[SharedTiming], env: dict, threads: int, repeat: int,
                 tile: bool) -> list[str]:
    body = []
    for timing in timings:
        base = next(t for t in timings if t.model == timing.model and t.callers == 1)
        ratio = paired_ratio([[v] for v in base.seconds], [[v] for v in timing.seconds])
        body.append([timing.model.name, timing.label, f"{1 / np.median(timing.seconds):.1f}",
                     f"{1e3 * np.median(timing.seconds):.1f}", f"{ratio['value']:.2f}x",
                     f"{len(timing.detector._pool.runners)}"])
    return markdown_table(["Model", "Callers", "Photos / s", "ms / photo", "Throughput / 1 thread",
                           "Runners made"], body, left=2) + [
        "", f"Measured {time.strftime('%Y-%m-%d')} on {env['cpu']} ({env['cpu_features']}; "
            f"{env['logical_cores']} logical cores; load average {env['load_average']}): one "
            f"detector ({threads} intra-op thread(s) per runner, "
            f"{'tiled' if tile else 'single pass'}) called by that many threads at once, "
            f"{CALLS_PER_THREAD} photos per thread per round, {repeat} interleaved rounds; "
            "medians over the rounds; the ratio is the median of the per-round ratios."]
