"""Evaluate an SCRFD face detector on WIDER FACE val: official AP, rough-detection protocols,
error analysis, and a metrics grid over models and input sizes.

    python evaluate_widerface.py --model ../shared/models/det_500m.onnx --wider ../shared/widerface
    python evaluate_widerface.py --model m.tflite --protocol rough --analyze --out results/m
    python evaluate_widerface.py --analyze --out results/m            # analyse a finished run
    python evaluate_widerface.py --protocol rough --analyze --operating-score 0.3 \
        --predictions results/m/predictions --out results/m_at_0.3     # what --blur would miss
    python evaluate_widerface.py --predictions preds/ --out results/p  # score existing files
    python evaluate_widerface.py --grid --model a.onnx --model b.onnx --size 640,640 --size 128,160
    python evaluate_widerface.py --grid --model a.tflite --model b.tflite --ray   # on a Ray cluster
    python evaluate_widerface.py --model m.tflite --tile     # + tiles at the photo's resolution
    python evaluate_widerface.py --model m.tflite --closeup  # recall on faces filling the frame

Inference follows the SCRFD paper's "VGA" protocol (letterbox into 640x640, score threshold
0.02, NMS IoU 0.45) and writes one prediction file per image in the official format, so the
public WIDER FACE evaluation code can read them too. The official AP reproduces that code
exactly (its matching rules included), with one deliberate change: ground truth is restricted
to the images evaluated, so faces of images that are absent are not counted as misses.

--grid --ray (pip install -r requirements-scale.txt) makes each (model, size) evaluation a Ray
task of --threads CPUs; the tables are those of a run here. The models, --wider, --out and the
working folder must be at the same path on every node.
"""
from __future__ import annotations

import argparse
import os
from functools import partial
from pathlib import Path

from scrfdkit.bench.model_stats import model_flops
from scrfdkit.cli import (DEFAULT_WIDER, PEERS_DIR, RESULTS_DIR, ArgumentParser,
                          add_device_argument, add_tile_argument, cli, display, fraction,
                          parse_hw, positive_int)
from scrfdkit.devices import device_providers
from scrfdkit.compare.peers import PEERS, PEERS_DIR_ENV, make_detector
from scrfdkit.compare.peers import model_path as peer_model_path
from scrfdkit.defaults import (DEFAULT_INPUT_HW, EVAL_NMS_THRESHOLD, EVAL_SCORE_THRESHOLD,
                               SCORE_THRESHOLD, TILE_FACE)
from scrfdkit.errors import UserError
from scrfdkit.files import check_output_folder
from scrfdkit.metadata import family_of
from scrfdkit.runners import fixed_input_hw
from scrfdkit.wider.closeup import CLOSEUP_BUCKETS, closeup_protocol
from scrfdkit.tables import markdown_table, print_markdown, write_csv, write_markdown
from scrfdkit.wider.dataset import IMAGES_DIR, SUBSETS, add_wider_arguments, images_list_option
from scrfdkit.wider.evaluation import (TASK_LOG, EvaluationSettings, evaluate, evaluate_all,
                                       grid_evaluations, run_name)
from scrfdkit.wider.metrics import PROTOCOLS, ROUGH_IOU, add_float32_change, percent

DEFAULT_OUT = RESULTS_DIR / "widerface"


def run_grid(args: argparse.Namespace, settings: EvaluationSettings, out: Path) -> None:
    """Every --model at every --size (fixed-size exports at their own size): one table."""
    evaluations = grid_evaluations(args.model, args.size, DEFAULT_INPUT_HW, out, args.tile)
    rows = []
    for evaluation, results in zip(evaluations, evaluate_all(evaluations, settings, map_tasks=ray_task_mapper(args.ray))):
        model, size = evaluation.model, evaluation.size
        passes = (results["timing"] or {}).get("passes_per_image")
        rows.append({"Model": model.stem, "Input shape": f"{size[0]}x{size[1]}",
                     **({"Passes / photo": f"{passes:.2f}" if passes else "-"} if args.tile
                        else {}),
                     "Precision": results["model"]["precision"],
                     "FLOPs": f"{model_flops(model, size) / 1e9:.2f} G",
                     "Size MB": f"{model.stat().st_size / 1e6:.2f}",
                     **{s.capitalize(): percent(results[s]) for s in SUBSETS},
                     "Images": results["images"], "_family": family_of(model)})
    add_float32_change(rows)
    images = sorted({row["Images"] for row in rows})
    head = [k for k in rows[0] if k != "Images" and not k.startswith("_")]
    table = markdown_table(head, [[row[k] for k in head] for row in rows], left=3)
    for row in rows:
        del row["_family"]
    source = args.images_list or (args.wider or DEFAULT_WIDER) / IMAGES_DIR
    write_markdown(out / "metrics.md", table + [
        "", f"WIDER FACE val, {' / '.join(f'{n:,}' for n in images)} of 3,226 images "
        f"({source}); official protocol (IoU 0.5, VOC AP in %), ground truth restricted to "
        f"the images evaluated; inference: letterbox, score >= {args.score_threshold:g}, NMS "
        f"{args.nms_threshold:g}"
        + (f", plus tiles of the input size at the photo's own resolution (faces up to "
           f"{args.tile} px whole in a tile; passes / photo: model runs per photo, the "
           "letterbox pass included)" if args.tile else "")
        + ". FLOPs: 2 x multiply-adds of the convolutions" + (" of one pass." if args.tile else ".")
        + (" vs float32: AP change against the float32 row of the same model and input size "
           "(Easy / Medium / Hard, points)." if "vs float32" in head else "")])
    write_csv(out / "metrics.csv", rows)
    print()
    print_markdown(table)
    print(f"\nwrote {out / 'metrics.md'} and {out / 'metrics.csv'}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(__doc__)
    parser.add_argument("--model", type=Path, action="append", default=[],
                        help=".onnx or .tflite detector (repeat with --grid)")
    parser.add_argument("--detector", default=None, metavar="NAME",
                        help="evaluate another face detector from scrfdkit/compare/peers.py instead of "
                             f"--model ({', '.join(PEERS)}), at its authors' input size and its "
                             "own low evaluation threshold")
    parser.add_argument("--size", type=parse_hw, action="append", default=[],
                        help="input H,W, multiples of 32 (default 640,640; .tflite exports run at "
                             "their own size; repeat with --grid)")
    add_wider_arguments(parser, default=None)
    parser.add_argument("--peers-dir", type=Path, default=os.environ.get(PEERS_DIR_ENV) or PEERS_DIR,
                        help=f"with --detector: the peer models' folder (default ${PEERS_DIR_ENV} or "
                             f"{display(PEERS_DIR)})")
    parser.add_argument("--protocol", choices=PROTOCOLS, default=None,
                        help="official only (default), or also rough detection: rough-iou "
                             f"(IoU >= {ROUGH_IOU:g}), rough-center (centre inside the face), "
                             "rough (both); AP of the official protocol is always reported")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"output folder (default {DEFAULT_OUT}/<model>_<H>x<W>, or "
                             f"{DEFAULT_OUT}/grid with --grid)")
    parser.add_argument("--predictions", type=Path, default=None,
                        help="score existing prediction files (<event>/<image>.txt) instead of "
                             "running a model")
    parser.add_argument("--analyze", action="store_true",
                        help="error analysis into OUT/report.md; without --model or "
                             "--predictions, analyses the finished run in --out")
    parser.add_argument("--operating-score", type=fraction, default=SCORE_THRESHOLD, metavar="S",
                        help="score an application keeps detections at, 0..1: precision and "
                             "recall of the rough protocols and the --analyze misses and false "
                             "positives are taken there (default %(default)s, scrfd.py's photo "
                             "threshold; its --blur threshold shows what anonymising misses)")
    add_tile_argument(parser)
    parser.add_argument("--closeup", action="store_true",
                        help="only the close-up rough protocol: crops of the WIDER val photos "
                             "around one clear face filling "
                             + ", ".join(f"{lo:.0%}-{hi:.0%}" for lo, hi in CLOSEUP_BUCKETS
                                         ).replace("%", "%%")  # argparse %-formats help texts
                             + " of the frame height; recall of --model single-pass and tiled "
                             "at --operating-score, into OUT/closeup.md and closeup.json")
    parser.add_argument("--grid", action="store_true",
                        help="evaluate every --model at every --size and write OUT/metrics.md "
                             "and metrics.csv")
    parser.add_argument("--score-threshold", type=fraction, default=EVAL_SCORE_THRESHOLD,
                        help="keep detections scoring at least this, 0..1 (default %(default)s, "
                             "the SCRFD paper's VGA protocol)")
    parser.add_argument("--nms-threshold", type=fraction, default=EVAL_NMS_THRESHOLD,
                        help="NMS IoU threshold, 0..1 (default %(default)s)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help=f"inference threads (default: all {os.cpu_count() or 1} cores; "
                             "with --ray, 1 per evaluation)")
    add_device_argument(parser)
    parser.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                        help="with --grid: each evaluation a task on a Ray cluster, its output "
                             f"in OUT/<model>_<H>x<W>/{TASK_LOG}; no ADDRESS joins or starts one "
                             "as Ray does (RAY_ADDRESS, then a local `ray start` cluster, else "
                             "a new one); 'auto', host:port or ray://host:10001 name one, "
                             "'local' always starts a new one here")
    return parser.parse_args(argv)


def check_options(args: argparse.Namespace) -> None:
    """Every option, before any work: one clear error instead of a failure halfway through."""
    for model in args.model:
        if not model.is_file():
            raise UserError(f"model not found: {model}")
    if args.predictions is not None and not args.predictions.is_dir():
        raise UserError(f"predictions folder not found: {args.predictions}")
    args.images_list = images_list_option(args.images_list)  # a pipe: read now, once
    if args.grid:
        if not args.model:
            raise UserError("--grid needs at least one --model")
        if args.detector or args.predictions:
            raise UserError("--grid evaluates --model files; it takes no --detector or "
                            "--predictions")
    elif args.detector:
        if args.model or args.predictions:
            raise UserError("give either --detector or --model / --predictions / --grid")
        peer_model_path(args.detector, args.peers_dir)  # unknown, missing package or model
    else:
        if len(args.model) > 1 or len(args.size) > 1:
            raise UserError("several --model or --size values need --grid")
        if args.model and args.predictions:
            raise UserError("give either --model or --predictions, not both")
        if not args.model and args.predictions is None and not (args.analyze and args.out):
            raise UserError("give --model (or --predictions), or --analyze --out a finished run")
    if args.size and not args.model:
        raise UserError("--size applies to --model files only")
    if args.closeup and (len(args.model) != 1 or args.grid or args.predictions or args.detector
                         or args.analyze or args.protocol):
        raise UserError("--closeup evaluates one --model (single-pass and tiled); it takes no "
                        "--grid, --predictions, --detector, --analyze or --protocol")
    if args.device != "cpu" and (not args.model or args.closeup):
        raise UserError(f"--device {args.device} runs --model files (SCRFD ONNX models), not "
                        "--detector, --predictions or --closeup")
    device_providers(args.device, args.model)
    if args.tile and not args.model:
        raise UserError("--tile applies to --model files (SCRFD), not to --detector or "
                        "--predictions")
    if args.ray is not None:
        if not args.grid:
            raise UserError("--ray runs the evaluations of a --grid; give --grid")
        ray_task_mapper(args.ray)  # Ray installed, or a one-line error now


def ray_task_mapper(address: str | None):
    """scale.ray_jobs.map_tasks bound to the cluster address, or None to run here."""
    if address is None:
        return None
    from scrfdkit.scale import ray_jobs  # Ray only when asked for (UserError when missing)
    return partial(ray_jobs.map_tasks, address)


def check_out(out: Path, args: argparse.Namespace) -> None:
    """OUT must be a folder we can create or write, and not an input."""
    check_output_folder(out, "--out")
    if args.predictions is not None and out.resolve() == args.predictions.resolve():
        raise UserError("--out must not be the --predictions folder; results go beside it")
    if out.resolve() == ((args.wider or DEFAULT_WIDER) / IMAGES_DIR).resolve():
        raise UserError(f"--out {out} is the WIDER FACE images folder; choose another folder")


def resuming(args: argparse.Namespace) -> bool:
    """--analyze --out a finished run: its own WIDER FACE folder and images are taken again."""
    return not args.model and args.predictions is None and not args.detector


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    check_options(args)
    model = args.model[0] if args.model and not args.grid else None
    size = args.size[0] if args.size and not args.grid else None
    if model is not None and size is None:
        size = fixed_input_hw(model) or DEFAULT_INPUT_HW
    if args.grid:
        out = args.out or DEFAULT_OUT / "grid"
    elif args.detector:
        out = args.out or DEFAULT_OUT / args.detector
    else:
        out = args.out or DEFAULT_OUT / (run_name(model, size, args.tile) if model
                                         else args.predictions.resolve().name)
    if args.closeup:
        out = args.out or DEFAULT_OUT / f"{run_name(model, size)}_closeup"
    check_out(out, args)
    settings = EvaluationSettings(
        args.wider or (None if resuming(args) else DEFAULT_WIDER), args.images_list,
        args.protocol, args.predictions, args.analyze,
        args.operating_score, args.score_threshold, args.nms_threshold, open_peer=make_detector,
        peers_dir=args.peers_dir,
        threads=args.threads or (1 if args.ray is not None else os.cpu_count() or 1),
        tile_face=args.tile, device=args.device)
    if args.closeup:
        lines = closeup_protocol(model, size, args.wider or DEFAULT_WIDER, args.images_list, out,
                                 args.operating_score, args.tile or TILE_FACE, settings.threads)
        print()
        print_markdown(lines[:lines.index("")])
        print("\n" + lines[-1] + f"\n\nwrote {out / 'closeup.md'} and {out / 'closeup.json'}")
    elif args.grid:
        run_grid(args, settings, out)
    else:
        evaluate(settings, model or args.detector, size, out)


if __name__ == "__main__":
    cli(main)
