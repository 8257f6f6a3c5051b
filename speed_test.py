"""How big and how fast are the SCRFD models: latency, end-to-end time, memory; model statistics.

Timing: every backend x model x thread count is loaded at once and run round-robin (A, B, A,
B, ...), so the noise of a shared machine hits all of them alike; ratios are taken within one
run. Model-only latency (median, p90, p99, spread of the per-round medians), end-to-end time
on a real photo (read, preprocess, inference, decode, NMS), throughput, and the peak RSS of a
fresh process that loads and runs the model. CPU, cores and library versions go with every row.

Model statistics (--analyze, ONNX and TFLite): parameters, multiply-adds and FLOPs (= 2 x
MACs) counted from the graph at the input size, op histogram, file size and weight bytes by
dtype, a runtime-memory estimate (peak live activations) beside the RSS a fresh process really
grows by, and for TFLite which ops XNNPACK takes and which fall back to builtin kernels.

    python speed_test.py                                   # det_500m 640x640, float32+int8, both backends, 1 and 2 threads
    python speed_test.py --analyze models/det_500m_480x640.onnx
    python speed_test.py --grid --markdown docs/speed.md --replace  # the README table: every exported model in models/
    python speed_test.py --models models/scrfd500m_640x640_float32.tflite --threads 1 --repeat 3 --json r.json
    python speed_test.py --backends onnxruntime,onnxruntime-cuda --threads 1   # on a machine with an NVIDIA GPU
    python speed_test.py --profile-ops models/scrfd500m_640x640_float32.tflite models/scrfd500m_640x640_int8.tflite
    python speed_test.py --tile --threads 1 --markdown docs/tiles.md --replace  # ms per photo, one pass vs tiled

Whole detectors against other face detectors: compare_detectors.py.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from scrfdkit.ap_results import result_files
from scrfdkit.bench import speed
from scrfdkit.bench.backends import (ALL_BACKENDS, BACKEND_FORMAT, GPU_BACKENDS, choose_backends,
                                     device_backends, input_tensor, open_backend)
from scrfdkit.bench.memory_probe import fresh_process_memory
from scrfdkit.bench.model_grid import GRID_SIZES, default_models, expand_models, grid_models
from scrfdkit.bench.model_stats import (ModelStatsError, load_graph, model_statistics,
                                        print_statistics, statistics_summary, xnnpack_coverage)
from scrfdkit.bench.op_profile import profile_ops
from scrfdkit.bench.speed import Config
from scrfdkit.bench.thread_speed import shared_table, time_shared
from scrfdkit.bench.tile_speed import DEFAULT_PHOTOS, tile_rows, tile_table, time_tiles
from scrfdkit.cli import (DATA_DIR, DEFAULT_WIDER, MODELS_DIR, REPO, RESULTS_DIR, ArgumentParser,
                          add_device_argument, cli, fraction, parse_hw, positive_int)
from scrfdkit.defaults import EVAL_NMS_THRESHOLD, EVAL_SCORE_THRESHOLD, TILE_FACE
from scrfdkit.errors import UserError
from scrfdkit.tiles import TILE_GATE_SCORE
from scrfdkit.files import (atomic_write, check_output_file, check_outputs, photos_to_time,
                            read_image)
from scrfdkit.metadata import MODEL_SUFFIXES, metadata_path
from scrfdkit.tables import write_csv, write_markdown
from scrfdkit.timing import environment

IMAGE_CANDIDATES = (DATA_DIR / "samples" / "crowd_selfie.jpg", DATA_DIR / "friends.jpg")
DEFAULT_THREADS = "1,2"
DEFAULT_REPEAT = 10  # rounds; every runner gets one block of --iters calls per round
DEFAULT_ITERS = 10
DEFAULT_JSON = RESULTS_DIR / "speed_test.json"
DEFAULT_EVAL = "results/**/results.json"
DEFAULT_PLOT = RESULTS_DIR / "speed_accuracy.png"
TILE_MODELS = ("scrfd500m_480x640_float32.tflite", "scrfd500m_480x640_int8.tflite")  # --tile's


KEPT = ("a table holds one run's measurements, so it is never merged with another's (rows "
        "timed under another load do not compare) nor replaced without --replace")


def thread_list(text: str) -> list[int]:
    """An argparse type: '1,2' -> [1, 2], every count positive."""
    try:
        threads = [int(t) for t in text.split(",")]
    except ValueError:
        threads = []
    if not threads or min(threads) < 1:
        raise argparse.ArgumentTypeError(f"expected a comma list of positive integers, got {text!r}")
    return threads


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(__doc__)
    parser.add_argument("--analyze", nargs="+", metavar="MODEL", default=None,
                        help="only print these models' statistics (parameters, FLOPs, ops, memory, "
                             "XNNPACK coverage) and exit")
    parser.add_argument("--profile-ops", nargs="+", metavar="MODEL", default=None,
                        help="only time every op of these .tflite files run alone, summed by op "
                             "kind (with two models, their ratio: e.g. int8 against float32), "
                             "at the first --threads value, and exit")
    parser.add_argument("--tile", nargs="?", type=positive_int, const=TILE_FACE, default=None,
                        metavar="PX",
                        help="only time whole-photo detect() single-pass against tiled (faces up "
                             f"to PX, default {TILE_FACE}, whole in a tile) on {DEFAULT_PHOTOS} "
                             "WIDER val photos or --image, per --models (default: det_500m "
                             "480x640 float32 and int8 .tflite from --models-dir) and the first "
                             "--threads value, and exit")
    parser.add_argument("--peer", action="append", default=None, metavar="NAME",
                        help="with --tile: also time this peer detector's whole pipeline in the "
                             "same rounds (e.g. insightface: det_500m 640x640 on ONNX Runtime, "
                             "from requirements-peers.txt), with every row's ratio to it")
    parser.add_argument("--gate", type=fraction, nargs="+", default=[TILE_GATE_SCORE],
                        metavar="S", help="with --tile: the whole-pass scores to time gated "
                                          f"tiles at (default {TILE_GATE_SCORE}, SCRFD's)")
    parser.add_argument("--shared-threads", type=thread_list, default=None, metavar="K,...",
                        help="only time one detector called by K threads at once (e.g. 1,4), "
                             "its runners a lock (1) or a pool of 2, single pass (with --tile: "
                             "tiled), on the --tile photos and models, and exit")
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
    add_device_argument(parser)
    parser.add_argument("--threads", type=thread_list, default=thread_list(DEFAULT_THREADS),
                        help=f"comma list of CPU thread counts (default {DEFAULT_THREADS})")
    parser.add_argument("--repeat", type=positive_int, default=DEFAULT_REPEAT,
                        help=f"rounds; each round times every row once more (default {DEFAULT_REPEAT})")
    parser.add_argument("--iters", type=positive_int, default=DEFAULT_ITERS,
                        help=f"timed model calls per row per round (default {DEFAULT_ITERS})")
    parser.add_argument("--image", type=Path, default=None,
                        help="photo for the end-to-end timing and the memory runs (default "
                             "data/samples/crowd_selfie.jpg (make data), else data/friends.jpg)")
    parser.add_argument("--score", type=fraction, default=EVAL_SCORE_THRESHOLD,
                        help=f"end-to-end score threshold (default {EVAL_SCORE_THRESHOLD}, as "
                             "evaluation: the crowded, worst case for post-processing)")
    parser.add_argument("--nms", type=fraction, default=EVAL_NMS_THRESHOLD,
                        help=f"end-to-end NMS IoU (default {EVAL_NMS_THRESHOLD}, as evaluation)")
    parser.add_argument("--no-rss", action="store_true",
                        help="skip the fresh-process peak-RSS measurement of every row")
    parser.add_argument("--rss-command", default="auto",
                        help="a command whose peak RSS and TensorFlow imports are checked (default: "
                             "scrfd.py on the photo with the det_500m int8 640x640 model; 'none' to skip)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON,
                        help="write every row with its environment here (default results/speed_test.json)")
    parser.add_argument("--csv", type=Path, default=None, help="also write the rows as CSV")
    parser.add_argument("--markdown", type=Path, default=None,
                        help="write the markdown tables (the README's; with --profile-ops, the op "
                             "table) to this file")
    parser.add_argument("--eval-results", default=DEFAULT_EVAL,
                        help="evaluate_widerface.py results.json files (glob or folder) for the "
                             f"speed-accuracy plot (default {DEFAULT_EVAL})")
    parser.add_argument("--replace", action="store_true",
                        help=f"let --json, --csv and --markdown replace files that exist: {KEPT}")
    parser.add_argument("--plot", type=Path, default=DEFAULT_PLOT,
                        help="speed-accuracy plot, written when evaluation results match timed "
                             "models (default results/speed_accuracy.png)")
    return parser.parse_args(argv)


def check_inputs(args: argparse.Namespace) -> Path | None:
    """Every option checked before any work: the photo decodes, the outputs can be written,
    and none of them is an input (a model, its sidecar, the photo, an evaluation result) or
    another output of the run."""
    image = args.image or next((p for p in IMAGE_CANDIDATES if p.exists()), None)
    if args.image is not None:
        if not args.image.is_file():
            raise UserError(f"image not found: {args.image}")
        read_image(args.image)  # a text file or a damaged photo fails here, on one line
    models = [Path(m) for m in (expand_models(args.models) if args.models else [])
              + (args.analyze or []) + (args.profile_ops or [])]
    if not args.models:  # the default and --grid models come from --models-dir
        models += [p for p in args.models_dir.glob("*") if p.suffix.lower() in MODEL_SUFFIXES]
    inputs = [*models, *map(metadata_path, models), *result_files(args.eval_results),
              *([image] if image else [])]
    tables_only = args.analyze or args.profile_ops or args.shared_threads  # no --json there
    outputs = {"--json": None if tables_only else args.json, "--csv": args.csv,
               "--markdown": args.markdown, "--plot": args.plot}
    for option, path in outputs.items():
        if path is not None:
            check_output_file(path, option)
    check_outputs(outputs, inputs)
    for option, path in outputs.items():  # after the checks that name an input or a clash
        if option != "--plot" and path is not None and path.exists() and not args.replace:
            raise UserError(f"{option} {path} exists: {KEPT}; give {option} a new file, or "
                            "--replace to replace it")
    return image


def run_statistics(paths: list[Path], hws: list[tuple[int, int]] | None, image: Path | None) -> int:
    """--analyze: every model at every size; a model that fails is reported and the others run."""
    failures: list[str] = []
    for path in paths:
        for hw in hws or [None]:
            try:
                graph = load_graph(path, hw)
                info = model_statistics(graph)
                xnn = xnnpack_coverage(path, hw) if graph.format == "tflite" else None
            except ModelStatsError as err:
                print(f"\n== {path}\ncannot analyse: {err}")
                failures.append(str(err))
                continue
            backend = "litert" if graph.format == "tflite" else "onnxruntime"
            memory = fresh_process_memory(path, backend, 1, hw if graph.format == "onnx" else None, image)
            print_statistics(info, memory, xnn)
    if len(failures) == len(paths) * len(hws or [None]):
        raise UserError(f"no model could be analysed: {failures[-1]}")
    return 0


def run_op_profile(args: argparse.Namespace) -> int:
    """--profile-ops: the op-kind table of one or two .tflite files."""
    paths = [Path(p) for p in args.profile_ops]
    for path in paths:
        if not path.is_file() or path.suffix.lower() != ".tflite":
            raise UserError(f"--profile-ops takes .tflite files: {path} is not one")
    lines = profile_ops(paths, args.threads[0], args.repeat, args.iters)
    print("\n".join(lines))
    if args.markdown:
        print(f"wrote {write_markdown(args.markdown, lines)}")
    return 0


def run_tile_timing(args: argparse.Namespace) -> int:
    """--tile: ms per photo single-pass against tiled, interleaved (scrfdkit/bench/tile_speed.py)."""
    models = expand_models(args.models) if args.models else [
        args.models_dir / name for name in TILE_MODELS if (args.models_dir / name).exists()]
    if not models:
        raise UserError(f"no {' or '.join(TILE_MODELS)} in {args.models_dir}: give --models")
    photos = photos_to_time(args.image, DEFAULT_WIDER / "WIDER_val" / "images", DEFAULT_PHOTOS)
    images = [image for _, image in photos]
    env = environment()
    threads = args.threads[0]
    print(f"CPU: {env['cpu']} ({env['cpu_features']}), {env['logical_cores']} logical cores, "
          f"load average {env['load_average']}; timing {len(models)} model(s) single-pass and tiled on "
          f"{len(photos)} photo(s), {threads} thread(s), {args.repeat} interleaved rounds")
    peers = {}
    for name in args.peer or []:
        from scrfdkit.compare.peers import PEERS_DIR_ENV, make_detector  # --peer only
        peers[name] = make_detector(name, threads=threads,
                                    peers_folder=os.environ.get(PEERS_DIR_ENV) or args.models_dir / "peers")
    timings = time_tiles(models, images, threads, args.repeat, args.tile, args.gate, peers)
    rows = tile_rows(timings, images, args.tile)
    lines = tile_table(rows, env, [path for path, _ in photos], threads, args.repeat, args.tile)
    print("\n" + "\n".join(lines))
    if args.json:
        with atomic_write(args.json) as handle:
            json.dump({"environment": env, "rows": rows, "photos": [str(p) for p, _ in photos]},
                      handle, indent=1)
        print(f"wrote {args.json}")
    if args.markdown:
        print(f"wrote {write_markdown(args.markdown, lines)}")
    return 0


def run_shared_timing(args: argparse.Namespace) -> int:
    """--shared-threads: one detector's photos per second with K threads calling it."""
    models = expand_models(args.models) if args.models else [
        args.models_dir / name for name in TILE_MODELS if (args.models_dir / name).exists()]
    photos = photos_to_time(args.image, DEFAULT_WIDER / "WIDER_val" / "images", 4)
    env, threads, tile = environment(), args.threads[0], bool(args.tile)
    timings = time_shared(models, [image for _, image in photos], threads, args.shared_threads,
                          [1, 2], args.repeat, tile)
    lines = shared_table(timings, env, threads, args.repeat, tile)
    print("\n" + "\n".join(lines))
    if args.markdown:
        print(f"wrote {write_markdown(args.markdown, lines)}")
    return 0


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
    """Count every model and open a runner per backend x thread count; report what cannot run."""
    configs: list[Config] = []
    statistics: dict[str, dict] = {}
    for model in models:
        runs_on = [b for b in backends if BACKEND_FORMAT[b] == model.suffix.lower()]
        if not runs_on:
            print(f"skipped {model}: no selected backend runs {model.suffix or 'extension-less'} files")
            continue
        for hw in (args.hw if args.hw and not args.grid else [None]):
            try:
                graph = load_graph(model, hw)
                statistics[f"{model}@{hw}"] = {**model_statistics(graph), **(
                    {"xnnpack": xnnpack_coverage(model, hw)} if graph.format == "tflite" else {})}
            except ModelStatsError as err:
                print(f"cannot analyse {model}: {err}")
            except Exception as err:  # a counting bug must never cost the timing
                print(f"cannot analyse {model}: {type(err).__name__}: {err}")
            for backend in runs_on:
                for threads in (args.threads[:1] if backend in GPU_BACKENDS else args.threads):
                    config = Config(model, backend, threads, hw)
                    try:
                        config.runner = open_backend(model, backend, threads, hw)
                        config.tensor = input_tensor(config.runner, image)
                        config.input_hw = tuple(config.runner.input_hw)
                        config.precision = config.runner.precision
                    except UserError as err:
                        config.error = str(err)
                        print(f"skipped {config.label}: {err}")
                    configs.append(config)
    return configs, statistics


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.backends = device_backends(args.device, args.backends)
    image = check_inputs(args)
    if args.analyze:
        return run_statistics([Path(p) for p in args.analyze], args.hw, image)
    if args.profile_ops:
        return run_op_profile(args)
    if args.shared_threads:
        return run_shared_timing(args)
    if args.tile:
        return run_tile_timing(args)

    env = environment()
    print(f"CPU: {env['cpu']} ({env['cpu_features']}), {env['logical_cores']} logical / {env['physical_cores']} physical "
          f"cores, load average {env['load_average']}; " +
          ", ".join(f"{k} {v}" for k, v in env["versions"].items()))
    backends, gpus, gpu_name = choose_backends(args.backends)
    configs, statistics = prepare(choose_models(args), backends, args, image)
    live = [c for c in configs if c.runner is not None]
    if not live:
        reasons = [c.error for c in configs if c.error]
        raise UserError("nothing could be timed" + (f": {reasons[-1]}" if reasons else
                                                     " (see the messages above)"))
    speed.time_configs(live, image, args.repeat, args.iters, args.score, args.nms)

    rows = [speed.make_row(c, statistics.get(f"{c.model}@{c.hw}", {}), env, gpu_name, args.score,
                           args.nms, image) for c in configs]
    if not args.no_rss:
        speed.measure_rss(rows, configs, image)
    command = speed.check_command(args.rss_command, args.models_dir, image, REPO / "scrfd.py")
    print("\nmodel statistics (at the timed input size):")
    for info in statistics.values():
        print(f"  {statistics_summary(info)}")
    ratios = speed.ratio_rows(configs)
    tables = speed.speed_tables(rows, ratios, env, args.repeat, args.iters, image, args.score,
                                args.nms, usable_gpu=any(why is None for why in gpus.values()))
    print("\n" + "\n".join(tables))
    measurements = speed.key_measurements(rows, ratios, command, image, args.score)
    print(f"\n{speed.MEASUREMENTS_HEADING}:")
    for line in measurements or ["(no row of det_500m at 640x640 float32 in this run)"]:
        print(f"  {line}")

    points = speed.eval_points(args.eval_results, rows)
    if points:
        print(f"\nwrote the speed-accuracy plot {speed.plot_speed_accuracy(points, args.plot)} "
              f"({len(points)} points)")
    else:
        print(f"\nno evaluate_widerface.py results for the timed models in {args.eval_results}: no "
              "speed-accuracy plot (evaluate first: evaluate_widerface.py --model M --out results/eval/NAME)")
    if args.json:
        write_json(args, env, gpu_name, gpus, rows, ratios, measurements, statistics, command, points)
    if args.csv:
        write_csv(args.csv, speed.csv_rows(rows))
        print(f"wrote {args.csv}")
    if args.markdown:
        write_markdown(args.markdown, tables + ["", f"{speed.MEASUREMENTS_HEADING}:", ""]
                       + [f"- {m}" for m in measurements])
        print(f"wrote {args.markdown}")
    return 0


def write_json(args: argparse.Namespace, env: dict, gpu_name: str | None, gpus: dict, rows: list[dict],
               ratios: list[dict], measurements: list[str], statistics: dict, command: dict | None,
               points: list[dict]) -> None:
    output = {"environment": env, "gpu": {"name": gpu_name, "backends": gpus},
              "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "rows": rows, "ratios": ratios, "measurements": measurements,
              "model_statistics": statistics, "command": command, "plot_points": points}
    with atomic_write(args.json) as handle:
        json.dump(output, handle, indent=1, default=str)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    cli(main)
