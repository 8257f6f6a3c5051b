"""SCRFD against other face detectors: every detector's whole detect() timed side by side,
beside its WIDER FACE AP, with the Pareto front of speed and Hard AP.

The peers (scrfdkit/compare/peers.py: BlazeFace, YuNet, Haar, the seed and third-party TFLite
conversions, InsightFace's own SCRFD) and this project's SCRFD exports each run at the input
size and thresholds their authors recommend, interleaved round by round on the same photos.
APs come from evaluate_widerface.py's results.json files (matched by model sha256 or detector
name); writes compare.md, compare.csv and compare.png.

    python compare_detectors.py                                # every peer and every TFLite export in models/
    python compare_detectors.py --detectors yunet blazeface_full --models models/scrfd500m_640x640_float32.tflite
    python compare_detectors.py --list --image data/friends.jpg   # which peers run here; faces and ms per image
    python compare_detectors.py --settings                     # the peers' input sizes and thresholds (README table)
    python compare_detectors.py --detectors yunet --evaluate --ray  # missing APs evaluated on a Ray cluster
    python compare_detectors.py --detectors insightface --models models/scrfd500m_480x640_*.tflite --tile

--evaluate first evaluates on WIDER FACE the detectors that have no results.json yet, as
`make compare` does with evaluate_widerface.py (peers into OUT/<name>, SCRFD exports into
OUT/scrfd/<model>_<H>x<W>); --ray makes each of those evaluations a Ray task. The timing
always runs here, after them.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np

from scrfdkit.bench.memory_probe import DETECT_RSS_RUNS, detector_memory
from scrfdkit.bench.model_grid import GRID_SIZES, expand_models, grid_models
from scrfdkit.bench.speed import csv_rows
from scrfdkit.cli import (DATA_DIR, DEFAULT_WIDER, MODELS_DIR, PEERS_DIR, RESULTS_DIR, ArgumentParser,
                          cli, display, parse_hw, positive_int)
from scrfdkit.compare.comparison import (ROUGH_KEY, comparison_table, eval_index, mark_pareto,
                                         plot_comparison, result_key)
from scrfdkit.compare.peers import (PEERS, PEERS_DIR_ENV, TILED, available_peers,
                                    make_detector, open_detector, peers_dir)
from scrfdkit.defaults import DEFAULT_INPUT_HW, TILE_FACE
from scrfdkit.errors import UserError
from scrfdkit.files import check_output_folder, photos_to_time
from scrfdkit.tables import markdown_table, write_csv, write_markdown
from scrfdkit.timing import environment, interleaved_rounds, latency_summary, time_calls
from scrfdkit.wider.dataset import add_wider_arguments, images_list_option
from scrfdkit.wider.evaluation import Evaluation, EvaluationSettings, evaluate_all, grid_evaluations

DEFAULT_OUT = RESULTS_DIR / "compare"  # compare.md, compare.csv, compare.png
DEFAULT_EVAL = "results/**/results.json"  # evaluate_widerface.py runs to take the APs from
DEFAULT_REPEAT = 10  # interleaved rounds of the comparison
LIST_REPEAT = 5  # timed runs per image with --list
COMPARE_PHOTOS = 8  # WIDER val photos (spread over the folder) the detectors are timed on
WIDER_PHOTOS = DEFAULT_WIDER / "WIDER_val" / "images"
FALLBACK_PHOTOS = (DATA_DIR / "samples" / "crowd_selfie.jpg", DATA_DIR / "friends.jpg")
MB = 1e6


@dataclass
class Entry:
    """One detector in the comparison: a peer (by name) or an SCRFD model file."""

    kind: str  # "peer", "scrfd" or "scrfd-tiled" (peers.TILED)
    name_or_path: str  # peer name or model path
    detector: object = None
    seconds: list[float] = field(default_factory=list)

    @property
    def label(self) -> str:
        if self.kind == "peer":
            return self.name_or_path
        return Path(self.name_or_path).stem + (" tiled" if self.kind == TILED else "")

    def files(self) -> list[Path]:
        """What the detector loads from disk (its size is the model size)."""
        if self.kind != "peer":
            return [Path(self.name_or_path)]
        return [Path(self.detector.model_path)] if getattr(self.detector, "model_path", None) else []


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(__doc__)
    parser.add_argument("--detectors", nargs="+", default=["all"], metavar="NAME",
                        help=f"peers to compare: all (default) or names from {', '.join(PEERS)}")
    parser.add_argument("--models", nargs="+", default=None, metavar="MODEL",
                        help="SCRFD model files or globs to compare (default: every TFLite export "
                             "of the README tables found in --models-dir)")
    parser.add_argument("--models-dir", type=Path, default=MODELS_DIR,
                        help="where the default SCRFD exports live (default models/)")
    parser.add_argument("--hw", type=parse_hw, nargs="+", default=None, metavar="H,W",
                        help="only the default exports of these sizes (default all four)")
    parser.add_argument("--image", type=Path, default=None,
                        help=f"photo or folder to time on (default {COMPARE_PHOTOS} WIDER val photos "
                             "spread over the folder, the images the APs come from)")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="CPU threads of every detector (default 1)")
    parser.add_argument("--repeat", type=positive_int, default=None,
                        help=f"interleaved rounds (default {DEFAULT_REPEAT}); with --list, timed "
                             f"runs per image (default {LIST_REPEAT})")
    parser.add_argument("--eval-results", default=DEFAULT_EVAL,
                        help=f"evaluate_widerface.py results.json files (glob or folder) to take "
                             f"the APs from (default {DEFAULT_EVAL})")
    parser.add_argument("--no-rss", action="store_true",
                        help="skip the fresh-process peak-RSS measurement of every detector")
    parser.add_argument("--peers-dir", type=Path,
                        default=os.environ.get(PEERS_DIR_ENV) or display(PEERS_DIR),
                        help=f"peer models folder (default ${PEERS_DIR_ENV} or {display(PEERS_DIR)})")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="where compare.md, compare.csv and compare.png go (default results/compare)")
    parser.add_argument("--evaluate", action="store_true",
                        help="first evaluate on WIDER FACE val (official and rough protocols, "
                             "--threads threads) every compared detector --eval-results has no "
                             "result for, into OUT/<name> (SCRFD exports OUT/scrfd/<model>_<H>x<W>)")
    parser.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                        help="run the --evaluate evaluations (implied) as tasks on a Ray cluster "
                             "(no ADDRESS: RAY_ADDRESS, a local `ray start` cluster, else a new "
                             "one; 'local' always a new one here); the timing still runs here, "
                             "the detectors interleaved round by round, once the evaluations are "
                             "done: latencies taken on different machines could not be compared")
    parser.add_argument("--tile", action="store_true",
                        help="also run every SCRFD model tiled (rows '<model> tiled': the "
                             "letterbox pass plus tiles at the photo's resolution, scrfd.py "
                             "--tile), timed in the same rounds; its AP from a tiled "
                             "evaluate_widerface.py --tile run")
    add_wider_arguments(parser, default=DEFAULT_WIDER, verb="--evaluate")
    parser.add_argument("--list", action="store_true",
                        help="only list the peers and whether they run here (with --image: faces "
                             "found and median ms per image) and exit")
    parser.add_argument("--settings", action="store_true",
                        help="only print every peer's input size and thresholds as a markdown "
                             "table (the README's) and exit")
    return parser.parse_args(argv)


def open_entries(names: list[str], models: list[Path], threads: int, peers_dir: Path | None,
                 tile: bool = False) -> list[Entry]:
    entries = [Entry("peer", n) for n in names] + [Entry("scrfd", str(m)) for m in models] + [
        Entry(TILED, str(m)) for m in models if tile]
    live = []
    for entry in entries:
        try:
            entry.detector = open_detector(entry.kind, entry.name_or_path, threads, peers_dir)
            live.append(entry)
        except UserError as err:
            print(f"skipped {entry.label}: {err}")
    if not live:
        raise UserError("no detector could be loaded (see the messages above)")
    return live


def time_entries(live: list[Entry], images: list[np.ndarray], repeat: int) -> None:
    """Every detector's detect() on every photo, detectors interleaved round by round."""
    for entry in live:
        for image in images[:2]:
            entry.detector.detect(image)  # warm-up

    def block(entry: Entry) -> None:
        for image in images:
            entry.seconds += time_calls(lambda: entry.detector.detect(image), 1)[0]

    interleaved_rounds(live, repeat, block,
                       lambda i: print(f"  round {i + 1}/{repeat} done", flush=True))


def entry_row(entry: Entry, threads: int, results: dict[str, dict]) -> dict:
    """One table row: what the detector is, its latency and size, its APs when evaluated."""
    det, files = entry.detector, entry.files()
    hw = getattr(det, "input_hw", None)
    latency = latency_summary([entry.seconds])
    row = {"detector": entry.label, "kind": entry.kind,
           "input": (f"{hw[0]}x{hw[1]}" + (" + tiles" if entry.kind == TILED else "")) if hw
           else "image size",
           "precision": det.runner.precision if entry.kind != "peer" else PEERS[entry.name_or_path].description,
           "score_threshold": det.score_threshold, "nms_threshold": det.nms_threshold,
           "threads": threads, "median_ms": latency["median_ms"], "p90_ms": latency["p90_ms"],
           "size_mb": sum(f.stat().st_size for f in files if f.is_file()) / MB if files else None}
    result = results.get(result_key(entry.kind, entry.name_or_path))
    if result:
        row.update({s: 100 * float(result[s]) for s in ("easy", "medium", "hard")})
        rough = (result.get("rough") or {}).get(ROUGH_KEY[0], {}).get(ROUGH_KEY[1])
        row["rough_ap"] = 100 * rough["ap"] if rough else None
        row["eval"] = result["file"]
    return row


def list_peers(args: argparse.Namespace) -> int:
    """--list: every peer, usable here or why not; with --image, faces and median ms per image."""
    photos = photos_to_time(args.image, WIDER_PHOTOS, COMPARE_PHOTOS) if args.image else []
    images = [(path.name, image) for path, image in photos]
    for name, reason in available_peers(args.peers_dir):
        spec = PEERS[name]
        size = "x".join(map(str, spec.input_hw)) if spec.input_hw else "image"
        try:
            if reason:
                raise UserError(reason)
            det = open_detector("peer", name, args.threads, args.peers_dir)
        except UserError as err:
            print(f"{name:18} skipped: {str(err).removeprefix(name + ': ')}")
            continue
        results = []
        for image_name, image in images:
            faces = len(det.detect(image))  # also the warm-up
            seconds = time_calls(lambda: det.detect(image), args.repeat or LIST_REPEAT)[0]
            results.append(f"{image_name}: {faces} faces {1000 * float(np.median(seconds)):.1f} ms")
        print(f"{name:18} {size:8} score {spec.score_threshold:g}  " + "  ".join(results))
    return 0


def settings_table() -> list[str]:
    """--settings: every peer's input size and thresholds, and where they come from."""
    nms_text = lambda v: "own grouping" if v is None else f"{v:g}"  # noqa: E731
    rows = [[name, spec.description, "x".join(map(str, spec.input_hw)) if spec.input_hw else "image size",
             f"{spec.score_threshold:g}", nms_text(spec.nms_threshold),
             f"{spec.eval_score_threshold:g} / {nms_text(spec.eval_nms_threshold)}", spec.source]
            for name, spec in PEERS.items()]
    return markdown_table(["Detector", "What", "Input", "Score", "NMS IoU", "Evaluation score / NMS",
                           "Source"], rows, left=3, text=[5, 6])


def evaluate_missing(detectors: list[tuple[str, str]], known: dict[str, dict],
                     settings: EvaluationSettings, out: Path, map_tasks) -> list[str]:
    """--evaluate: WIDER FACE results for the (kind, name_or_path) detectors `known` lacks, into
    the folders `make compare` gives them (peers OUT/<name>, SCRFD models
    OUT/scrfd/<model>_<H>x<W>[_tiled]), here or as tasks of map_tasks. Returns those folders;
    an evaluation that fails is noted and left out of the table."""
    evaluations, tiled = [], []
    for kind, name_or_path in detectors:
        if result_key(kind, name_or_path) in known:
            continue
        if kind == "peer":
            evaluations.append(Evaluation(name_or_path, None, out / name_or_path))
        elif kind == TILED:
            tiled += grid_evaluations([Path(name_or_path)], [], DEFAULT_INPUT_HW, out / "scrfd",
                                      TILE_FACE)
        else:
            evaluations += grid_evaluations([Path(name_or_path)], [], DEFAULT_INPUT_HW,
                                            out / "scrfd")
    if evaluations or tiled:
        print(f"\nevaluating {len(evaluations) + len(tiled)} detector(s) on WIDER FACE val"
              + (" as Ray tasks" if map_tasks is not None else ""))
    for batch, batch_settings in ((evaluations, settings),
                                  (tiled, replace(settings, tile_face=TILE_FACE))):
        if batch:
            evaluate_all(batch, batch_settings, keep_going=True, map_tasks=map_tasks)
    return [str(evaluation.out) for evaluation in evaluations + tiled]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.settings:
        print("\n".join(settings_table()))
        return 0
    if args.list:
        return list_peers(args)
    names = list(PEERS) if "all" in args.detectors else args.detectors
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        raise UserError(f"unknown detector {unknown[0]!r}; choose from all, {', '.join(PEERS)}")
    check_output_folder(args.out, "--out")
    args.images_list = images_list_option(args.images_list)  # a pipe: read now, once
    map_tasks = None
    if args.ray is not None:
        from scrfdkit.scale import ray_jobs  # Ray only when asked for (UserError when missing)
        map_tasks = partial(ray_jobs.map_tasks, args.ray)
    models = expand_models(args.models) if args.models else [
        m for m in grid_models(args.models_dir, args.hw or list(GRID_SIZES))[0] if m.suffix == ".tflite"]
    photos = photos_to_time(args.image, WIDER_PHOTOS, COMPARE_PHOTOS, FALLBACK_PHOTOS)
    repeat = args.repeat or DEFAULT_REPEAT
    env = environment()

    live = open_entries(names, models, args.threads, args.peers_dir, args.tile)
    evaluated = []
    if args.evaluate or args.ray is not None:
        settings = EvaluationSettings(args.wider, args.images_list, "rough", threads=args.threads,
                                      peers_dir=peers_dir(args.peers_dir).resolve(),
                                      open_peer=make_detector)
        evaluated = evaluate_missing([(e.kind, e.name_or_path) for e in live],
                                     eval_index(args.eval_results), settings, args.out, map_tasks)
    print(f"\ntiming {len(live)} detectors' detect() on {len(photos)} photo(s), {args.threads} thread(s), "
          f"{repeat} rounds, interleaved")
    time_entries(live, [image for _, image in photos], repeat)
    results = eval_index(args.eval_results, *evaluated)
    rows = []
    for entry in live:
        row = entry_row(entry, args.threads, results)
        if not args.no_rss:
            peak, error = detector_memory("scrfdkit.compare.peers:open_detector", entry.kind, entry.name_or_path, args.threads,
                                          [path for path, _ in photos[:2]], peers_folder=args.peers_dir)
            row["peak_rss_mb"] = peak / MB if peak else None
            if error:
                print(f"note: {entry.label}: fresh-process RSS run failed: {error}")
        rows.append(row)
    mark_pareto(rows)

    lines = comparison_table(rows, env, [path for path, _ in photos], args.threads, repeat,
                             DETECT_RSS_RUNS)
    print("\n" + "\n".join(lines))
    write_markdown(args.out / "compare.md", lines)
    write_csv(args.out / "compare.csv", csv_rows(rows))
    print(f"\nwrote {args.out / 'compare.md'} and {args.out / 'compare.csv'}")
    plotted = [r for r in rows if r.get("hard") is not None]
    if plotted:
        print(f"wrote the speed-accuracy chart {plot_comparison(plotted, args.out / 'compare.png')}")
    missing = [r["detector"] for r in rows if r.get("hard") is None]
    if missing:
        print(f"no evaluation results in {args.eval_results} for: {', '.join(missing)} (evaluate "
              "them with evaluate_widerface.py --detector NAME / --model M --protocol rough, adding "
              "--tile for a tiled row)")
    return 0


if __name__ == "__main__":
    cli(main)
