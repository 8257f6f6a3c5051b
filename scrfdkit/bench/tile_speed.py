"""speed_test.py --tile: what tiled detection costs per photo, against the single pass.

Each model gets one SCRFD detector whose runner is timed call by call, and every round runs
detect() on every photo once single-pass and once tiled, models and modes interleaved round
by round, so a shared machine's noise lands on all of them alike. Per model and mode: the
median over the rounds of the ms per photo, the model passes per photo, the ms per model
pass, and the time outside the model calls (preprocessing, cutting the tiles, decoding,
NMS, Python): the tile work's own overhead shows there, per pass. The tiled / single-pass
ratio is the median of the per-round ratios.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..defaults import TILE_FACE
from ..detector import SCRFD
from ..tables import markdown_table
from ..tiles import plan_tiles
from ..timing import interleaved_rounds, paired_ratio

DEFAULT_PHOTOS = 8  # WIDER val photos spread over the folder
MODES = {"single pass": False, "tiled": True}


class TimedRunner:
    """A runner whose run() calls are timed (seconds summed into `seconds`, counted in
    `calls`), its clones (a detector's pool) adding to the same sums; everything else is the
    wrapped runner's."""

    def __init__(self, runner, sums: "TimedRunner | None" = None) -> None:
        self._runner = runner
        self._sums = sums or self
        self._lock = threading.Lock() if sums is None else sums._lock
        self.seconds = 0.0
        self.calls = 0

    def __getattr__(self, name: str):
        return getattr(self._runner, name)

    def clone(self, threads: int | None = None) -> "TimedRunner | None":
        runner = self._runner.clone(threads)
        return runner and TimedRunner(runner, self._sums)

    def run(self, tensor: np.ndarray, **options):
        start = time.perf_counter()
        try:
            return self._runner.run(tensor, **options)
        finally:
            with self._lock:
                self._sums.seconds += time.perf_counter() - start
                self._sums.calls += 1


@dataclass
class TileTiming:
    """One model in one mode: per round, seconds per photo, model seconds and passes."""

    model: Path
    mode: str
    detector: SCRFD
    runner: TimedRunner
    per_photo: list[float] = field(default_factory=list)  # one value per round
    model_per_photo: list[float] = field(default_factory=list)
    passes_per_photo: list[float] = field(default_factory=list)


def time_tiles(models: list[Path], images: list[np.ndarray], threads: int, repeat: int,
               face: int = TILE_FACE) -> list[TileTiming]:
    """Every model single-pass and tiled on every photo, `repeat` interleaved rounds."""
    timings = []
    for model in models:
        for mode, tile in MODES.items():
            detector = SCRFD(model, threads=threads, tile=tile, tile_face=face)
            detector.runner = runner = TimedRunner(detector.runner)
            timings.append(TileTiming(model, mode, detector, runner))
    for timing in timings:  # warm-up: XNNPACK packs its weights on the first calls
        for image in images[:2]:
            timing.detector.detect(image)

    def block(timing: TileTiming) -> None:
        timing.runner.seconds, timing.runner.calls = 0.0, 0
        start = time.perf_counter()
        for image in images:
            timing.detector.detect(image)
        timing.per_photo.append((time.perf_counter() - start) / len(images))
        timing.model_per_photo.append(timing.runner.seconds / len(images))
        timing.passes_per_photo.append(timing.runner.calls / len(images))

    interleaved_rounds(timings, repeat, block,
                       lambda i: print(f"  round {i + 1}/{repeat}: " + ", ".join(
                           f"{t.model.stem} {t.mode} {1e3 * t.per_photo[-1]:.1f} ms"
                           for t in timings), flush=True))
    return timings


def tile_rows(timings: list[TileTiming], images: list[np.ndarray], face: int) -> list[dict]:
    """One row per model and mode, with the tiled / single-pass ratio on the tiled rows."""
    rows = []
    for timing in timings:
        hw = timing.detector.input_hw
        plans = [plan_tiles(image.shape[:2], hw, face) for image in images]
        per_photo = float(np.median(timing.per_photo)) * 1e3
        model = float(np.median(timing.model_per_photo)) * 1e3
        passes = float(np.median(timing.passes_per_photo))
        row = {"model": str(timing.model), "precision": timing.detector.runner.precision,
               "input": f"{hw[0]}x{hw[1]}", "mode": timing.mode, "ms_per_photo": per_photo,
               "passes_per_photo": passes, "ms_per_pass": model / passes,
               "outside_model_ms_per_photo": per_photo - model,
               "tile_pixels_per_photo_pixel": float(np.mean([p.tile_ratio for p in plans]))
               if timing.mode == "tiled" else 0.0,
               "round_ms_min": 1e3 * min(timing.per_photo),
               "round_ms_max": 1e3 * max(timing.per_photo)}
        if timing.mode == "tiled":
            single = next(t for t in timings if t.model == timing.model and t.mode != "tiled")
            row["ratio_to_single"] = paired_ratio([[v] for v in timing.per_photo],
                                                  [[v] for v in single.per_photo])
        rows.append(row)
    return rows


def tile_table(rows: list[dict], env: dict, photos: list[Path], threads: int, repeat: int,
               face: int) -> list[str]:
    """The markdown table and how it was measured."""
    body = [[Path(r["model"]).name, r["precision"], r["mode"], f"{r['ms_per_photo']:.1f}",
             f"{r['round_ms_min']:.1f}–{r['round_ms_max']:.1f}", f"{r['passes_per_photo']:.2f}",
             f"{r['ms_per_pass']:.2f}", f"{r['outside_model_ms_per_photo']:.2f}",
             f"{r['tile_pixels_per_photo_pixel']:.2f}" if r["mode"] == "tiled" else "-",
             f"{r['ratio_to_single']['value']:.2f}x" if "ratio_to_single" in r else "-"]
            for r in rows]
    header = ["Model", "Precision", "Mode", "ms / photo", "Round medians ms", "Passes / photo",
              "Model ms / pass", "Outside the model ms / photo", "Tile px / photo px",
              "Tiled / single"]
    return markdown_table(header, body, left=3, text=[4]) + [
        "", f"Measured {time.strftime('%Y-%m-%d')} on {env['cpu']} ({env['cpu_features']}; "
            f"{env['logical_cores']} logical cores; load average {env['load_average']} at the "
            f"start), {threads} "
            f"thread(s): detect() on {len(photos)} photo(s) ({', '.join(p.name for p in photos[:2])}"
            f"{', ...' if len(photos) > 2 else ''}) at the photo score 0.5, {repeat} rounds, "
            "every model and mode interleaved; ms / photo is the median over the rounds of a "
            "round's mean. Tiled: the letterbox pass plus tiles of the input size at the "
            f"photo's resolution (faces up to {face} px whole in a tile) and, when a face may "
            "fill half the input, a close-up pass. Outside the model: detect() time not spent "
            "in the runtime's calls (preprocessing, cutting and normalising tiles, decoding, "
            "NMS, Python). Tile px / photo px: pixels the tiles cover over pixels in the "
            "photo (overlap and padding make it exceed 1). Tiled / single: median of the "
            "per-round ratios."]
