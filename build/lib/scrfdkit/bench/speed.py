"""speed_test.py's timing run: rows (a model on a backend with a thread count) timed side by
side, summarized, compared in pairs, their memory measured in fresh processes, and written
as the README's tables and the speed/accuracy plot."""
from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..ap_results import find_results
from ..detector import SCRFD
from ..files import read_image, sha256_of
from ..metadata import family_of, precision_from_name, read_metadata_or_none
from ..runners import Runner
from ..tables import dash, markdown_table, pyplot, save_figure
from ..timing import Profile, interleaved_rounds, latency_summary, paired_ratio, time_calls
from .backends import BACKEND_LABELS, GPU_BACKENDS
from .memory_probe import RSS_RUNS, command_memory, fresh_process_memory
from .model_grid import DEFAULT_MODELS, relative_path

WARMUP = 5  # untimed calls of every runner before the rounds
E2E_PER_ROUND = 2  # end-to-end runs on the photo per row and round
MB = 1e6
KEY_ROW = ("det_500m", "640x640")  # the model and size the key measurements are read from
MEASUREMENTS_HEADING = ("Key measurements (det_500m 640x640, 1 thread; a ratio below 1.0x means "
                        "LiteRT is the faster, pre+post is the work around the model, peak RSS is "
                        "what the command needs)")


@dataclass
class Config:
    """One row: a model on a backend with a thread count, and everything measured for it."""

    model: Path
    backend: str
    threads: int
    hw: tuple[int, int] | None
    runner: Runner | None = None
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


# ----------------------------------------------------------------------------- timing
def end_to_end(runner: Runner, image_path: Path, score: float, iou: float, profile: Profile
               ) -> dict[str, int]:
    """One photo through the whole pipeline (SCRFD.detect over this runner), every stage timed
    into `profile` (its `last`): read, preprocess, inference, decode, nms, total."""
    detector = SCRFD(runner.model_path, score_threshold=score, nms_threshold=iou, runner=runner)
    with profile("total"):
        with profile("read"):
            image = read_image(image_path)
        dets = detector.detect(image)
    for stage in ("preprocess", "inference", "decode", "nms"):
        profile.last[stage] = detector.profile.last[stage]
        profile.totals[stage] += detector.profile.last[stage]
        profile.counts[stage] += 1
    return {"candidates": detector.candidates, "kept": len(dets)}


def time_group(configs: list[Config], image: Path | None, repeat: int, iters: int,
               score: float, iou: float) -> None:
    """Round-robin: every round gives each runner one block of calls, then end-to-end runs."""
    for config in configs:
        for _ in range(WARMUP):
            config.runner.run(config.tensor)

    def block(config: Config) -> None:
        config.runner.run(config.tensor)  # untimed: lets the previous runner's threads go idle
        wall, cpu = time_calls(lambda: config.runner.run(config.tensor), iters)
        config.wall.append(wall)
        config.cpu.append(cpu)
        profile = Profile()
        for _ in range(E2E_PER_ROUND if image else 0):
            config.counts = end_to_end(config.runner, image, score, iou, profile)
            for stage, seconds in profile.last.items():
                config.stages.setdefault(stage, []).append(seconds)

    def report(round_index: int) -> None:
        print(f"  round {round_index + 1}/{repeat} (median ms): " + ", ".join(
            f"{c.model.stem} {c.backend} {c.threads}t {1e3 * np.median(c.wall[-1]):.1f}"
            for c in configs), flush=True)

    interleaved_rounds(configs, repeat, block, report)


def time_configs(configs: list[Config], image: Path | None, repeat: int, iters: int,
                 score: float, iou: float) -> None:
    """Time what is compared side by side: one group per model family and input size."""
    groups: dict[tuple, list[Config]] = {}
    for config in configs:
        groups.setdefault((family_of(config.model), config.input_hw), []).append(config)
    print(f"\ntiming {len(configs)} rows in {len(groups)} group(s), interleaved: {repeat} rounds x "
          f"{iters} calls; end-to-end on {image or '(no photo)'} at score {score:g}, NMS {iou:g}")
    for (family, hw), members in groups.items():
        print(f"{family} {hw[0]}x{hw[1]}:")
        time_group(members, image, repeat, iters, score, iou)
        for config in members:  # free the runners before the next group
            config.runner = config.tensor = None


# ----------------------------------------------------------------------------- rows
def summarize(config: Config) -> dict:
    """Latency statistics (ms), CPU time for one thread, end-to-end stage medians."""
    row = latency_summary(config.wall)
    if config.single_threaded:
        row["cpu_median_ms"] = float(np.median(np.concatenate(config.cpu)) * 1e3)
    if config.stages:
        stage = {k: float(np.median(v) * 1e3) for k, v in config.stages.items()}
        row.update({f"e2e_{k}_ms": v for k, v in stage.items()})
        row["e2e_fps"] = float(1e3 / np.mean(np.asarray(config.stages["total"]) * 1e3))
        row["prepost_ratio"] = (stage["preprocess"] + stage["decode"] + stage["nms"]) / stage["inference"]
        row.update({f"e2e_{k}": v for k, v in config.counts.items()})
    return row


def make_row(config: Config, info: dict, env: dict, gpu_name: str | None, score: float,
             iou: float, image: Path | None) -> dict:
    """Everything about one row: what it is, its model statistics, the environment, the times."""
    hw = config.input_hw or config.hw
    xnn = info.get("xnnpack") or {}
    row = {"model": str(config.model), "family": family_of(config.model),
           "input": f"{hw[0]}x{hw[1]}" if hw else "?", "precision": config.precision,
           "backend": config.backend, "threads": config.threads,
           "backend_label": BACKEND_LABELS.get(config.backend, f"{config.backend} (GPU: {gpu_name})"),
           "device": "GPU" if config.backend in GPU_BACKENDS else "CPU",
           "file_mb": config.model.stat().st_size / MB if config.model.is_file() else None,
           "params": info.get("params"), "macs": info.get("macs"), "flops": info.get("flops"),
           "peak_activation_bytes": info.get("peak_activation_bytes"),
           "xnnpack_delegated": xnn.get("delegated"), "xnnpack_ops": xnn.get("ops"),
           "score_threshold": score, "nms_threshold": iou,
           "image": str(image) if image else None, **{f"env_{k}": v for k, v in env.items()}}
    row.update({"error": config.error} if config.error else summarize(config))
    return row


def ratio_rows(configs: list[Config]) -> list[dict]:
    """LiteRT / ONNX Runtime at float32, and int8 (float16...) / float32 on LiteRT, per size and threads."""
    timed = {(family_of(c.model), c.input_hw, c.precision, c.backend, c.threads): c
             for c in configs if c.wall}
    out = []
    for (family, hw, precision, backend, threads), config in timed.items():
        if backend == "litert" and precision == "float32":
            name, other = "LiteRT float32 / ONNX Runtime float32", timed.get(
                (family, hw, "float32", "onnxruntime", threads))
        elif backend == "litert":
            name, other = f"LiteRT {precision} / LiteRT float32", timed.get(
                (family, hw, "float32", "litert", threads))
        else:
            continue
        if other is None:
            continue
        row = {"family": family, "input": f"{hw[0]}x{hw[1]}", "threads": threads, "ratio": name,
               **paired_ratio(config.wall, other.wall)}
        if config.single_threaded and other.single_threaded:
            row["cpu"] = paired_ratio(config.cpu, other.cpu)
        out.append(row)
    return out


def csv_rows(rows: list[dict]) -> list[dict]:
    """Rows with every column of every row (blank where a row has none), nested values as JSON."""
    fields = list(dict.fromkeys(k for row in rows for k in row))
    return [{k: json.dumps(row[k]) if isinstance(row.get(k), (dict, list)) else row.get(k, "")
             for k in fields} for row in rows]


# ----------------------------------------------------------------------------- memory
def measure_rss(rows: list[dict], configs: list[Config], image: Path | None) -> None:
    """Peak RSS (and RSS growth) of a fresh process per timed row, added to the rows."""
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


def check_command(text: str, models_dir: Path, image: Path | None, scrfd_script: Path) -> dict | None:
    """Peak RSS and TensorFlow imports of a command ("auto": scrfd_script with the int8 model)."""
    if text == "none":
        return None
    if text == "auto":
        int8 = relative_path(models_dir / DEFAULT_MODELS[2])
        if not (scrfd_script.exists() and int8.exists() and image):
            print(f"note: no scrfd.py memory check ({int8}, scrfd.py or the photo is missing)")
            return None
        text = (f"python {relative_path(scrfd_script)} --model {int8} --image "
                f"{relative_path(image)} --out {Path(tempfile.gettempdir()) / 'speed_test_scrfd'}")
    result = command_memory(text)
    peak = result["peak_rss"]
    print(f"\n`{text}`: exit {result['exit_code']}, peak RSS "
          f"{f'{peak / MB:.0f} MB' if peak else 'n/a'}, TensorFlow imported: "
          f"{'YES' if result['tensorflow_imported'] else 'no'}"
          + (f"; stderr: {result['stderr_tail'][-1]}" if result["exit_code"] and result["stderr_tail"] else ""))
    return result


# ----------------------------------------------------------------------------- reporting
def speed_tables(rows: list[dict], ratios: list[dict], env: dict, repeat: int, iters: int,
                 image: Path | None, score: float, iou: float, usable_gpu: bool) -> list[str]:
    """The README's tables: one row per model x backend x threads, then the ratios, then how."""
    header = ["Model", "Input", "Precision", "Backend", "Threads", "Median ms", "p90 ms", "p99 ms",
              "Round medians ms", "CPU ms", "FPS", "End-to-end ms", "Pre+post / inference",
              "Peak RSS MB", "Size MB", "GFLOPs"]
    table = [[r["family"], r["input"], r["precision"], r["backend_label"], r["threads"],
              f"{r['median_ms']:.1f}", f"{r['p90_ms']:.1f}", f"{r['p99_ms']:.1f}",
              f"{r['round_median_min_ms']:.1f}–{r['round_median_max_ms']:.1f}",
              dash(r.get("cpu_median_ms"), ".1f"), f"{r['throughput_fps']:.1f}",
              dash(r.get("e2e_total_ms"), ".1f"),
              dash(r.get("prepost_ratio") and 100 * r["prepost_ratio"], ".0f") + "%" * ("prepost_ratio" in r),
              dash(r.get("peak_rss_mb"), ".0f"), dash(r["file_mb"], ".2f"),
              dash(r["flops"] and r["flops"] / 1e9, ".3f")] for r in rows if "median_ms" in r]
    lines = markdown_table(header, table, left=4, text=[header.index("Round medians ms")])
    if ratios:
        lines += [""] + markdown_table(
            ["Model", "Input", "Threads", "Ratio", "Median of per-round ratios", "Per-round min–max",
             "CPU-time ratio"],
            [[r["family"], r["input"], r["threads"], r["ratio"], f"{r['value']:.2f}x",
              f"{r['round_min']:.2f}–{r['round_max']:.2f}x",
              dash(r.get("cpu") and r["cpu"]["value"], ".2f") + "x" * bool(r.get("cpu"))]
             for r in ratios], left=2, text=[3, 5])
    lines += ["", f"Measured {time.strftime('%Y-%m-%d')} on {env['cpu']}, {env['cpu_features']} ({env['logical_cores']} "
              f"logical cores; load average {env['load_average']} at the start), "
              + ", ".join(f"{k} {v}" for k, v in env["versions"].items()) + ". "
              f"Model latency: median, p90, p99 of {repeat} rounds x {iters} calls, every row "
              "of a model and size interleaved round-robin; 'Round medians' is the min–max of the "
              "per-round medians, i.e. the noise; 'CPU ms' is the calling thread's CPU time (1 thread "
              "only), which contention hardly moves. FPS = 1 / mean latency, one stream. End-to-end: "
              f"read + preprocess + inference + decode + NMS of {image.name if image else '-'} at score "
              f"{score:g}, NMS IoU {iou:g}; pre+post / inference = (preprocess + decode + NMS) "
              f"/ inference. Peak RSS: a fresh process loading the model and running it {RSS_RUNS} times. "
              "GFLOPs = 2 x multiply-adds of the convolutions. "
              + ("" if usable_gpu else "No GPU on this machine: every row is CPU.")]
    return lines


def key_measurements(rows: list[dict], ratios: list[dict], command: dict | None,
                     image: Path | None, score: float) -> list[str]:
    """The numbers the README quotes, det_500m at 640x640 on one thread, as this run measured them."""
    lines = []
    for r in ratios:
        if (r["family"], r["input"], r["threads"]) == (*KEY_ROW, 1) and \
                r["ratio"].startswith("LiteRT float32 / ONNX"):
            cpu = r.get("cpu")
            lines.append(f"LiteRT float32 / ONNX Runtime latency, det_500m 640x640, 1 thread: "
                         f"{r['value']:.2f}x (per round {r['round_min']:.2f}–{r['round_max']:.2f}x"
                         + (f"; CPU time {cpu['value']:.2f}x" if cpu else "") + ")")
    for r in rows:
        if r.get("prepost_ratio") is not None and (r["family"], r["input"], r["precision"], r["threads"],
                                                   r["device"]) == (*KEY_ROW, "float32", 1, "CPU"):
            lines.append(
                f"pre+post / inference, {r['backend_label']} float32 1 thread on {image.name} "
                f"({r['e2e_candidates']:,} candidates at score {score:g}, {r['e2e_kept']:,} kept): "
                f"{100 * r['prepost_ratio']:.1f}% = (preprocess {r['e2e_preprocess_ms']:.1f} + decode "
                f"{r['e2e_decode_ms']:.1f} + NMS {r['e2e_nms_ms']:.1f} ms) / inference "
                f"{r['e2e_inference_ms']:.1f} ms (reading the JPEG, {r['e2e_read_ms']:.1f} ms, not counted)")
    if command and command["peak_rss"]:
        lines.append(f"peak RSS of `{command['command']}`: {command['peak_rss'] / MB:.0f} MB"
                     + ("" if command["exit_code"] == 0 else f" (exit {command['exit_code']})")
                     + f"; TensorFlow imported: {'yes' if command['tensorflow_imported'] else 'no'}")
    return lines


# ----------------------------------------------------------------------------- speed vs accuracy
def eval_points(pattern: str, rows: list[dict]) -> list[dict]:
    """Hard AP from evaluate_widerface.py results.json files, matched to timed rows: by the
    model file's sha256, or for an ONNX model evaluated at some size, by model, size and
    precision. One point per timed row (one thread, or a GPU)."""
    timed = [r for r in rows if "median_ms" in r and (r["threads"] == 1 or r["device"] == "GPU")]
    digests = {r["model"]: sha256_of(r["model"]) for r in timed if Path(r["model"]).is_file()}
    points, seen = [], set()
    for result in find_results(pattern):
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
        precision = result["model"].get("precision") or model_precision(model)
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


def model_precision(path: Path) -> str:
    """A model file's precision without opening it: its metadata, its name, else float32."""
    meta = read_metadata_or_none(path) or {}
    return meta.get("precision") or precision_from_name(path) or "float32"


def plot_speed_accuracy(points: list[dict], out: Path) -> Path:
    plt = pyplot()
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
    return save_figure(fig, out, dpi=120)
