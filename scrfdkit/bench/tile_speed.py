"""speed_test.py --tile: what tiled detection costs per photo, against the single pass and
the ways of spending N cores on a photo's passes (scrfdkit/tiles.py, detector.SCRFD).

Each model gets one SCRFD detector per mode (tile_modes()) whose runners are timed call by
call, and every round runs detect() on every photo once per detector, models, modes and
peers (--peer: another detector's whole pipeline) interleaved round by round, so a shared
machine's noise lands on all of them alike. Per detector: the median over the rounds of the
ms per photo and of the process's CPU ms per photo, the model passes per photo and the
runtime ms per pass. Ratios (to the model's single pass, to each peer) are medians of the
per-round ratios.
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
from ..runners import open_runner
from ..tiles import TILE_GATE_SCORE, plan_tiles
from ..timing import interleaved_rounds, paired_ratio

DEFAULT_PHOTOS = 8  # WIDER val photos spread over the folder


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
    """One detector (a model in one mode, or a peer): per round, seconds per photo, model
    seconds (summed over its runners) and passes."""

    model: Path
    mode: str
    detector: object
    runner: TimedRunner | None  # None: a peer, timed whole
    per_photo: list[float] = field(default_factory=list)  # one value per round
    model_per_photo: list[float] = field(default_factory=list)
    passes_per_photo: list[float] = field(default_factory=list)
    cpu_per_photo: list[float] = field(default_factory=list)  # the process's CPU seconds


def tile_modes(threads: int, gates: list[float]) -> dict[str, dict]:
    """The ways of spending `threads` cores on a photo: SCRFD options per mode. The single
    pass uses intra-op threads; tiles can run in turn on one runner of `threads` threads,
    across `threads` one-thread runners (the whole pass on one of them too), or both: the
    whole pass on `threads` threads, then the tiles across the one-thread runners
    (parallel_tiles=True); gated, in turn is what SCRFD(threads=N, tile=True) does."""
    modes = {"single pass": {"threads": threads, "tile": False}}
    if threads > 1:
        modes.update({
            "tiled, in turn": {"threads": threads, "workers": 1, "tile": True, "tile_gate": None},
            "tiled, across runners": {"threads": 1, "workers": threads, "tile": True,
                                      "tile_gate": None, "parallel_tiles": True},
            "tiled, both": {"threads": threads, "workers": threads, "tile": True,
                            "tile_gate": None, "parallel_tiles": True}})
    else:
        modes["tiled"] = {"threads": 1, "tile": True, "tile_gate": None}
    for gate in gates:
        modes[f"tiled, {'in turn, ' if threads > 1 else ''}gated at {gate:g} (the default)"] = {
            "threads": threads, "tile": True, "tile_gate": gate}
        if threads > 1:
            modes[f"tiled, both, gated at {gate:g}"] = {
                "threads": threads, "workers": threads, "tile": True, "tile_gate": gate,
                "parallel_tiles": True}
    return modes


def time_tiles(models: list[Path], images: list[np.ndarray], threads: int, repeat: int,
               face: int = TILE_FACE, gates: list[float] = (TILE_GATE_SCORE,),
               peers: dict[str, object] | None = None) -> list[TileTiming]:
    """Every model in every mode of tile_modes() (and each peer, whole) on every photo,
    `repeat` interleaved rounds."""
    timings = []
    for model in models:
        for mode, options in tile_modes(threads, list(gates)).items():
            runner = TimedRunner(open_runner(model, None, options["threads"]))
            detector = SCRFD(model, runner=runner, tile_face=face, **options)
            timings.append(TileTiming(model, mode, detector, runner))
    for name, peer in (peers or {}).items():
        timings.append(TileTiming(Path(name), "single pass", peer, None))
    for timing in timings:  # warm-up: XNNPACK packs its weights on the first calls
        for image in images[:3]:
            timing.detector.detect(image)

    def block(timing: TileTiming) -> None:
        runner, passes = timing.runner, 0
        if runner is not None:
            runner.seconds, runner.calls = 0.0, 0
        cpu, start = time.process_time(), time.perf_counter()
        for image in images:
            timing.detector.detect(image)
            passes += getattr(timing.detector, "passes", 1)
        timing.per_photo.append((time.perf_counter() - start) / len(images))
        timing.cpu_per_photo.append((time.process_time() - cpu) / len(images))
        timing.model_per_photo.append(runner.seconds / len(images) if runner else 0.0)
        timing.passes_per_photo.append(passes / len(images))

    interleaved_rounds(timings, repeat, block,
                       lambda i: print(f"  round {i + 1}/{repeat}: " + ", ".join(
                           f"{t.model.stem} {t.mode} {1e3 * t.per_photo[-1]:.1f} ms"
                           for t in timings), flush=True))
    return timings


def tile_rows(timings: list[TileTiming], images: list[np.ndarray], face: int) -> list[dict]:
    """One row per detector, with the ratio to the model's single pass and to each peer."""
    rows = []
    peers = [t for t in timings if t.runner is None]
    for timing in timings:
        hw = tuple(timing.detector.input_hw)
        plans = [plan_tiles(image.shape[:2], hw, face) for image in images]
        per_photo = float(np.median(timing.per_photo)) * 1e3
        model = float(np.median(timing.model_per_photo)) * 1e3
        passes = float(np.median(timing.passes_per_photo))
        tiled = timing.mode.startswith("tiled")
        precision = timing.detector.runner.precision if timing.runner else getattr(
            timing.detector, "precision", "float32")
        row = {"model": str(timing.model), "precision": precision,
               "input": f"{hw[0]}x{hw[1]}", "mode": timing.mode, "ms_per_photo": per_photo,
               "cpu_ms_per_photo": float(np.median(timing.cpu_per_photo)) * 1e3,
               "passes_per_photo": passes, "model_ms_per_pass": model / passes if model else None,
               "tile_pixels_per_photo_pixel": float(np.mean([p.tile_ratio for p in plans]))
               if tiled else 0.0,
               "round_ms_min": 1e3 * min(timing.per_photo),
               "round_ms_max": 1e3 * max(timing.per_photo)}
        single = next((t for t in timings if t.model == timing.model and t.runner is not None
                       and t.mode == "single pass"), None)
        if tiled and single is not None:
            row["ratio_to_single"] = paired_ratio([[v] for v in timing.per_photo],
                                                  [[v] for v in single.per_photo])
        for peer in peers:
            if peer is not timing:
                row[f"ratio_to_{peer.model.name}"] = paired_ratio(
                    [[v] for v in timing.per_photo], [[v] for v in peer.per_photo])
        rows.append(row)
    return rows


def tile_table(rows: list[dict], env: dict, photos: list[Path], threads: int, repeat: int,
               face: int) -> list[str]:
    """The markdown table and how it was measured."""
    peers = sorted({k[len("ratio_to_"):] for r in rows for k in r
                    if k.startswith("ratio_to_") and k != "ratio_to_single"})
    body = [[Path(r["model"]).name, r["precision"], r["mode"], f"{r['ms_per_photo']:.1f}",
             f"{r['round_ms_min']:.1f}–{r['round_ms_max']:.1f}", f"{r['cpu_ms_per_photo']:.1f}",
             f"{r['passes_per_photo']:.2f}",
             f"{r['model_ms_per_pass']:.2f}" if r["model_ms_per_pass"] else "-",
             f"{r['tile_pixels_per_photo_pixel']:.2f}" if r["tile_pixels_per_photo_pixel"] else "-",
             f"{r['ratio_to_single']['value']:.2f}x" if "ratio_to_single" in r else "-"]
            + [f"{r[f'ratio_to_{peer}']['value']:.2f}x" if f"ratio_to_{peer}" in r else "-"
               for peer in peers]
            for r in rows]
    header = ["Model", "Precision", "Mode", "ms / photo", "Round medians ms", "CPU ms / photo",
              "Passes / photo",
              "Model ms / pass", "Tile px / photo px", "Tiled / single"] + [
              f"/ {peer}" for peer in peers]
    return markdown_table(header, body, left=3, text=[4]) + [
        "", f"Measured {time.strftime('%Y-%m-%d')} on {env['cpu']} ({env['cpu_features']}; "
            f"{env['logical_cores']} logical cores; load average {env['load_average']} at the "
            f"start), {threads} "
            f"thread(s): detect() on {len(photos)} photo(s) ({', '.join(p.name for p in photos[:2])}"
            f"{', ...' if len(photos) > 2 else ''}) at the photo score 0.5, {repeat} rounds, "
            "every detector interleaved; ms / photo is the median over the rounds of a "
            "round's mean. Tiled: the letterbox pass plus tiles of the input size at the "
            f"photo's resolution (faces up to {face} px whole in a tile) and, when a face may "
            "fill half the input, a close-up pass. In turn: every pass on one runner of N "
            "intra-op threads; across runners: every pass on N one-thread runners (LiteRT "
            "interpreters or ONNX Runtime sessions), a photo's tiles at once; both: the whole "
            "pass on N threads, then the tiles across N one-thread runners; gated: only the "
            "tiles holding a whole-pass candidate at that score run (halved for photos "
            "shrunk over 2x), the default in turn. CPU ms / "
            "photo: the process's CPU time (every thread), which the other jobs on a shared "
            "machine move less than the wall time. Model ms / pass: "
            "runtime time summed over the runners per pass. Tile px / photo px: pixels the "
            "tiles cover over pixels in the photo. Ratios: median of the per-round ratios of "
            "ms / photo" + (f"; {', '.join(peers)}: the peer's own whole pipeline, in the same "
                            "rounds" if peers else "") + "."]
