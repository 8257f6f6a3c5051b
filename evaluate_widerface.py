"""Evaluate an SCRFD face detector on WIDER FACE val: official AP, rough-detection protocols,
error analysis, and a metrics grid over models and input sizes.

    python evaluate_widerface.py --model ../shared/models/det_500m.onnx --wider ../shared/widerface
    python evaluate_widerface.py --model m.tflite --protocol rough --analyze --out results/m
    python evaluate_widerface.py --analyze --out results/m            # analyse a finished run
    python evaluate_widerface.py --protocol rough --analyze --operating-score 0.3 \
        --predictions results/m/predictions --out results/m_at_0.3     # what --blur would miss
    python evaluate_widerface.py --predictions preds/ --out results/p  # score existing files
    python evaluate_widerface.py --grid --model a.onnx --model b.onnx --size 640,640 --size 128,160

Inference follows the SCRFD paper's "VGA" protocol (letterbox into 640x640, score threshold
0.02, NMS IoU 0.45) and writes one prediction file per image in the official format, so the
public WIDER FACE evaluation code can read them too. The official AP reproduces that code
exactly (its matching rules included), with one deliberate change: ground truth is restricted
to the images evaluated, so faces of images that are absent are not counted as misses.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from scrfdkit import SCRFD
from scrfdkit.cli import (DEFAULT_INPUT_HW, EVAL_NMS_THRESHOLD, EVAL_SCORE_THRESHOLD, RESULTS_DIR,
                          SCORE_THRESHOLD, UserError, cli, parse_hw)
from scrfdkit.error_analysis import analyze
from scrfdkit.files import sha256_of
from scrfdkit.model_files import family_of, fixed_input_hw
from scrfdkit.model_stats import model_flops
from scrfdkit.peers import PEERS, make_detector, model_path as peer_model_path
from scrfdkit.tables import markdown_table, print_markdown, write_csv, write_markdown
from scrfdkit.timing import Profile
from scrfdkit.wider_metrics import (OFFICIAL_IOU, PROTOCOLS, ROUGH_IOU, THRESHOLDS,
                                    add_float32_change, describe_run, official_curves,
                                    official_table, operating_score_warning, percent, plot_pr,
                                    ranking_warning, report_lines, rough_metrics, rough_protocols,
                                    rough_settings, rough_table)
from scrfdkit.widerface import (DEFAULT_WIDER, IMAGES_DIR, PREDICTIONS_DIR, SUBSETS,
                                load_ground_truth, predict_images, prediction_path,
                                prepare_prediction_folder, read_predictions, read_results,
                                select_images, stale_predictions, write_images_list,
                                write_results)

DEFAULT_OUT = RESULTS_DIR / "widerface"


def predict(model: Path | str, size: tuple[int, int] | None, keys: list[str],
            paths: dict[str, Path], out: Path, args: argparse.Namespace) -> dict:
    """Write a prediction file per image, reusing those a run with the same settings left.

    An SCRFD model file (a Path) runs at the given thresholds; a peer detector (a name) at
    its own evaluation settings. Images that cannot be read are skipped and listed.
    """
    if isinstance(model, Path):
        detector = SCRFD(model, size, args.score_threshold, args.nms_threshold, max_faces=0,
                         threads=args.threads)
        model_file, name = model, model.name
    else:
        detector = make_detector(model, evaluation=True, threads=args.threads)
        model_file, name = Path(detector.model_path), model
    input_hw = list(detector.input_hw) if detector.input_hw else None
    settings = {"detector": name, "model_sha256": sha256_of(model_file), "input_size": input_hw,
                "score_threshold": detector.score_threshold,
                "nms_threshold": detector.nms_threshold}
    pred_dir = out / PREDICTIONS_DIR
    changed = prepare_prediction_folder(out, settings, model_file)
    if changed:
        print(f"{pred_dir} was made with other settings ({', '.join(changed)}): predicting again")

    todo = [key for key in keys if not prediction_path(pred_dir, key).is_file()]
    skipped, profile = predict_images(detector, todo, paths, pred_dir, name)
    seconds = profile.totals["image"]
    done = len(todo) - len(skipped)
    rate = done / seconds if done and seconds > 0 else None
    print(f"detected {done} images in {seconds:.1f} s"
          + (f" ({rate:.1f} images/s)" if rate else "")
          + f"; reused {len(keys) - len(todo)} prediction files from an earlier run"
          + (f"; skipped {len(skipped)} unreadable images" if skipped else ""))
    if stale := stale_predictions(pred_dir, keys):
        print(f"note: {pred_dir} also holds {stale} files of images outside this evaluation; "
              "tools that read the whole folder will count them")
    runner = getattr(detector, "runner", None)  # peers other than SCRFD have their own runtime
    precision = runner.precision if runner is not None else getattr(detector, "precision",
                                                                     "float32")
    return {"model": {"name": name, "path": str(model_file.resolve()),
                      "sha256": settings["model_sha256"],
                      "backend": getattr(runner or detector, "backend", "unknown"),
                      "precision": precision},
            "input_size": input_hw, "skipped_images": skipped,
            "score_threshold": settings["score_threshold"],
            "nms_threshold": settings["nms_threshold"],
            "timing": {"predicted": done, "reused": len(keys) - len(todo),
                       "seconds": round(seconds, 2), "images_per_second": rate and round(rate, 2)}}


def evaluate(args: argparse.Namespace, model: Path | str | None, size: tuple[int, int] | None,
             out: Path) -> dict:
    """Predict (or take existing predictions), score them, write results.json and report.md."""
    previous = read_results(out) if model is None and args.predictions is None else {}
    settings = previous.get("settings", {})
    wider = args.wider or Path(settings.get("wider", DEFAULT_WIDER))
    images_list = args.images_list or (out / "images.txt" if previous else None)
    protocol = args.protocol or previous.get("protocol", "official")
    gt = load_ground_truth(wider)
    pred_dir = args.predictions or Path(settings.get("predictions", out / PREDICTIONS_DIR))
    keys, paths = select_images(gt, images_list, need_files=model is not None,
                                predictions=pred_dir if model is None else None, exclude=out)
    print(f"{len(keys):,} images to evaluate from {images_list or wider / IMAGES_DIR}")

    run = {"model": previous.get("model"), "input_size": settings.get("input_size"),
           "skipped_images": previous.get("skipped_images", []), "timing": previous.get("timing")}
    if model is not None:
        run = predict(model, size, keys, paths, out, args)
        keys = [k for k in keys if k not in set(run["skipped_images"])]
        if not keys:
            raise UserError("no image could be read")
    profile = Profile()
    with profile("evaluation"):
        preds, missing = read_predictions(pred_dir, keys)
        if missing:
            print(f"warning: {len(missing)} images have no prediction file in {pred_dir} (first: "
                  f"{missing[0]}); their faces count as misses", file=sys.stderr)
        if warning := ranking_warning(preds, keys):
            print(f"warning: {warning}", file=sys.stderr)
        curves = official_curves(preds, gt, keys)
        results = {subset: curves[subset].ap for subset in SUBSETS}
        results.update({"images": len(keys), "protocol": protocol,
                        "faces": {s: curves[s].faces for s in SUBSETS}, "model": run["model"]})
        if protocol != "official":
            results["rough"] = {name: rough_metrics(preds, gt, keys, name, args.operating_score)
                                for name in rough_protocols(protocol)}
        results["settings"] = {
            "input_size": run["input_size"],
            "score_threshold": run.get("score_threshold", settings.get("score_threshold")),
            "nms_threshold": run.get("nms_threshold", settings.get("nms_threshold")),
            "iou_threshold": OFFICIAL_IOU, "thresholds": THRESHOLDS,
            "rough": rough_settings(args.operating_score),
            "wider": str(wider.resolve()), "images_list": str(images_list) if images_list else None,
            "predictions": str(pred_dir.resolve())}
        results.update({"skipped_images": run["skipped_images"], "missing_predictions": missing,
                        "timing": run["timing"]})
        if (protocol != "official" or args.analyze) and (warning := operating_score_warning(
                args.operating_score, results["settings"]["score_threshold"])):
            print(f"warning: {warning}", file=sys.stderr)
        out.mkdir(parents=True, exist_ok=True)
        plot_pr(curves, f"WIDER FACE val ({len(keys):,} images)", out / "pr_curves.png")
        analysis_md: list[str] = []
        if args.analyze:
            results["analysis"], analysis_md = analyze(preds, gt, keys, paths, out,
                                                       args.operating_score)
    results["timing"] = {**(results["timing"] or {}),
                         "evaluation_seconds": round(profile.totals["evaluation"], 2)}
    if out / "images.txt" != images_list:
        write_images_list(out / "images.txt", keys, paths)
    write_results(out, results)
    report = write_markdown(out / "report.md", report_lines(results, analysis_md))

    print(f"\nWIDER FACE val, {describe_run(results)}: {len(keys):,} images, official protocol")
    print_markdown(official_table(results))
    if "rough" in results:
        print("\nrough-detection protocols")
        print_markdown(rough_table(results["rough"], args.operating_score))
    if args.analyze:
        fps = results["analysis"]["false_positives"]
        print(f"\nerror analysis at score >= {args.operating_score:g}: recall "
              f"{percent(results['analysis']['recall'])}%, false positives "
              + ", ".join(f"{k} {v:,}" for k, v in fps.items()))
    print(f"\nwrote {out / 'results.json'}, {report} (plots beside it); predictions in {pred_dir}")
    return results


def run_grid(args: argparse.Namespace, out: Path) -> None:
    """Every --model at every --size (fixed-size exports at their own size): one table."""
    rows = []
    for model in args.model:
        fixed = fixed_input_hw(model)
        sizes = [fixed] if fixed else (args.size or [DEFAULT_INPUT_HW])
        if fixed and args.size and fixed not in args.size:
            print(f"note: {model.name} is fixed at {fixed[0]}x{fixed[1]}; evaluated at that size")
        for size in sizes:
            print(f"\n=== {model.name} at {size[0]}x{size[1]}")
            results = evaluate(args, model, size, out / f"{model.stem}_{size[0]}x{size[1]}")
            rows.append({"Model": model.stem, "Input shape": f"{size[0]}x{size[1]}",
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
        f"{args.nms_threshold:g}. FLOPs: 2 x multiply-adds of the convolutions."
        + (" vs float32: AP change against the float32 row of the same model and input size "
           "(Easy / Medium / Hard, points)." if "vs float32" in head else "")])
    write_csv(out / "metrics.csv", rows)
    print()
    print_markdown(table)
    print(f"\nwrote {out / 'metrics.md'} and {out / 'metrics.csv'}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Evaluate SCRFD face detectors on WIDER FACE val (official AP, rough-detection "
                    "protocols, error analysis, metrics grid).")
    parser.add_argument("--model", type=Path, action="append", default=[],
                        help=".onnx or .tflite detector (repeat with --grid)")
    parser.add_argument("--detector", default=None, metavar="NAME",
                        help="evaluate another face detector from scrfdkit/peers.py instead of "
                             f"--model ({', '.join(PEERS)}), at its authors' input size and its "
                             "own low evaluation threshold")
    parser.add_argument("--size", type=parse_hw, action="append", default=[],
                        help="input H,W, multiples of 32 (default 640,640; .tflite exports run at "
                             "their own size; repeat with --grid)")
    parser.add_argument("--wider", type=Path, default=None,
                        help=f"WIDER FACE root with {IMAGES_DIR}/, ground_truth/ and "
                             f"wider_face_split/ (default {DEFAULT_WIDER})")
    parser.add_argument("--images-list", type=Path, default=None,
                        help="evaluate only these images (<event>/<image>.jpg per line, like "
                             "dev_images.txt); default: every image present under --wider")
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
    parser.add_argument("--operating-score", type=float, default=SCORE_THRESHOLD, metavar="S",
                        help="score an application keeps detections at, 0..1: precision and "
                             "recall of the rough protocols and the --analyze misses and false "
                             "positives are taken there (default %(default)s, scrfd.py's photo "
                             "threshold; its --blur threshold shows what anonymising misses)")
    parser.add_argument("--grid", action="store_true",
                        help="evaluate every --model at every --size and write OUT/metrics.md "
                             "and metrics.csv")
    parser.add_argument("--score-threshold", type=float, default=EVAL_SCORE_THRESHOLD,
                        help="keep detections scoring at least this, 0..1 (default %(default)s, "
                             "the SCRFD paper's VGA protocol)")
    parser.add_argument("--nms-threshold", type=float, default=EVAL_NMS_THRESHOLD,
                        help="NMS IoU threshold, 0..1 (default %(default)s)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="inference threads (default: all %(default)s cores)")
    return parser.parse_args(argv)


def check_options(args: argparse.Namespace) -> None:
    """Every option, before any work: one clear error instead of a failure halfway through."""
    for name in ("score_threshold", "nms_threshold", "operating_score"):
        value = getattr(args, name)
        if not 0.0 <= value <= 1.0:  # also false for nan
            raise UserError(f"--{name.replace('_', '-')} must be between 0 and 1, got {value}")
    if args.threads < 1:
        raise UserError(f"--threads must be at least 1, got {args.threads}")
    for model in args.model:
        if not model.is_file():
            raise UserError(f"model not found: {model}")
    if args.predictions is not None and not args.predictions.is_dir():
        raise UserError(f"predictions folder not found: {args.predictions}")
    if args.images_list is not None and not args.images_list.is_file():
        raise UserError(f"images list not found: {args.images_list}")
    if args.grid:
        if not args.model:
            raise UserError("--grid needs at least one --model")
        if args.detector or args.predictions:
            raise UserError("--grid evaluates --model files; it takes no --detector or "
                            "--predictions")
    elif args.detector:
        if args.model or args.predictions:
            raise UserError("give either --detector or --model / --predictions / --grid")
        peer_model_path(args.detector)  # unknown name, missing package or model: UserError
    else:
        if len(args.model) > 1 or len(args.size) > 1:
            raise UserError("several --model or --size values need --grid")
        if args.model and args.predictions:
            raise UserError("give either --model or --predictions, not both")
        if not args.model and args.predictions is None and not (args.analyze and args.out):
            raise UserError("give --model (or --predictions), or --analyze --out a finished run")
    if args.size and not args.model:
        raise UserError("--size applies to --model files only")


def check_out(out: Path, args: argparse.Namespace) -> None:
    """OUT must be a folder we can create or write, and not an input."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder")
    existing = next(p for p in (out.absolute(), *out.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"cannot create --out {out}: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot write to --out {out}: {existing} is not writable")
    if args.predictions is not None and out.resolve() == args.predictions.resolve():
        raise UserError("--out must not be the --predictions folder; results go beside it")
    if out.resolve() == ((args.wider or DEFAULT_WIDER) / IMAGES_DIR).resolve():
        raise UserError(f"--out {out} is the WIDER FACE images folder; choose another folder")


def main() -> None:
    args = parse_args()
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
        out = args.out or DEFAULT_OUT / (f"{model.stem}_{size[0]}x{size[1]}" if model
                                         else args.predictions.resolve().name)
    check_out(out, args)
    if args.grid:
        run_grid(args, out)
    else:
        evaluate(args, model or args.detector, size, out)


if __name__ == "__main__":
    cli(main)
