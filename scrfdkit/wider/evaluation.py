"""One WIDER FACE evaluation, start to finish: predict (or take existing prediction files),
score them, write results.json, report.md and the plots; and many of them, one after the
other or as Ray tasks (evaluate_widerface.py --grid, compare_detectors.py --evaluate).

    settings = EvaluationSettings(wider=Path("../shared/widerface"), protocol="rough", threads=1)
    results = evaluate(settings, Path("models/det_500m.onnx"), (640, 640), Path("results/m"))
    results = evaluate(settings, "yunet", None, Path("results/yunet"))   # a peer, by name

Everything here takes plain values (no argparse Namespace), so a Ray worker can run it.
Ray itself is imported only by evaluate_on_ray().
"""
from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

from ..ap_results import read_results, write_results
from ..locks import folder_lock
from ..defaults import EVAL_NMS_THRESHOLD, EVAL_SCORE_THRESHOLD, SCORE_THRESHOLD, TILE_FACE
from ..detector import SCRFD
from ..devices import DEVICE_PROVIDERS, check_started
from ..errors import UserError
from ..files import sha256_of
from ..runners import fixed_input_hw
from ..tables import print_markdown, write_markdown
from ..timing import Profile
from .dataset import (IMAGES_DIR, PREDICTIONS_DIR, SUBSETS, load_ground_truth, predict_images,
                      prediction_path, prepare_prediction_folder, read_predictions, select_images,
                      stale_predictions, write_images_list)
from .error_analysis import analyze
from .metrics import (OFFICIAL_IOU, THRESHOLDS, describe_run, official_curves, official_table,
                      operating_score_warning, percent, plot_pr, ranking_warning, report_lines,
                      rough_metrics, rough_protocols, rough_settings, rough_table)

TASK_LOG = "evaluate.log"  # what a Ray task printed, beside its results.json


@dataclass(frozen=True)
class EvaluationSettings:
    """What every evaluation of a run shares; None means "as the finished run in OUT had it"
    (wider, images_list, protocol) or "the default" (peers_dir)."""

    wider: Path | None = None
    images_list: Path | None = None
    protocol: str | None = None  # official, rough, rough-iou, rough-center
    predictions: Path | None = None  # score these files instead of running a model
    analyze: bool = False  # error analysis into report.md
    operating_score: float = SCORE_THRESHOLD
    score_threshold: float = EVAL_SCORE_THRESHOLD  # SCRFD model files; peers have their own
    nms_threshold: float = EVAL_NMS_THRESHOLD
    threads: int = 1
    peers_dir: Path | None = None
    open_peer: Callable | None = None  # makes a peer detector by name (compare.peers.make_detector)
    tile_face: int | None = None  # SCRFD model files: None one pass, else tiles (SCRFD tile_face)
    device: str = "cpu"  # SCRFD ONNX files: where ONNX Runtime runs them (devices.py)


@dataclass(frozen=True)
class Evaluation:
    """One evaluation of a grid or comparison: a model file at a size, or a peer by name."""

    model: Path | str
    size: tuple[int, int] | None
    out: Path

    @property
    def title(self) -> str:
        if isinstance(self.model, Path) and self.size:
            return f"{self.model.name} at {self.size[0]}x{self.size[1]}"
        return str(self.model)


def run_name(model: Path, size: tuple[int, int], tile_face: int | None = None) -> str:
    """<model>_<H>x<W>, and _tiled for a tiled run (its predictions differ: a folder of its own)."""
    return f"{model.stem}_{size[0]}x{size[1]}" + ("_tiled" if tile_face else "")


def grid_evaluations(models: list[Path], sizes: list[tuple[int, int]],
                     default_size: tuple[int, int], root: Path, tile_face: int | None = None
                     ) -> list[Evaluation]:
    """Every model at every size (fixed-size exports at their own), into ROOT/<model>_<H>x<W>
    (<model>_<H>x<W>_tiled when tiled)."""
    evaluations = []
    for model in models:
        fixed = fixed_input_hw(model)
        if fixed and sizes and fixed not in sizes:
            print(f"note: {model.name} is fixed at {fixed[0]}x{fixed[1]}; evaluated at that size")
        for size in [fixed] if fixed else (sizes or [default_size]):
            evaluations.append(Evaluation(model, size, root / run_name(model, size, tile_face)))
    return evaluations


def predict(model: Path | str, size: tuple[int, int] | None, keys: list[str],
            paths: dict[str, Path], out: Path, settings: EvaluationSettings) -> dict:
    """Write a prediction file per image, reusing those a run with the same settings left.

    An SCRFD model file (a Path) runs at the given thresholds; a peer detector (a name) at
    its own evaluation settings. Images that cannot be read are skipped and listed.
    """
    if isinstance(model, Path):
        detector = SCRFD(model, size, settings.score_threshold, settings.nms_threshold,
                         max_faces=0, threads=settings.threads,
                         tile=settings.tile_face is not None,
                         tile_face=settings.tile_face or TILE_FACE,
                         runner_options={"providers": DEVICE_PROVIDERS[settings.device]}
                         if settings.device != "cpu" else None)
        check_started(detector.runner, settings.device)
        model_file, name = model, model.name
    else:
        if settings.open_peer is None:
            raise UserError(f"{model}: other face detectors need EvaluationSettings.open_peer")
        detector = settings.open_peer(model, evaluation=True, threads=settings.threads,
                                      peers_folder=settings.peers_dir)
        model_file, name = Path(detector.model_path), model
    input_hw = list(detector.input_hw) if detector.input_hw else None
    run_settings = {"detector": name, "model_sha256": sha256_of(model_file),
                    "input_size": input_hw, "score_threshold": detector.score_threshold,
                    "nms_threshold": detector.nms_threshold,
                    "tile_face": settings.tile_face if isinstance(model, Path) else None}
    if settings.device != "cpu":  # GPU kernels round differently: their own predictions
        run_settings["device"] = settings.device
    pred_dir = out / PREDICTIONS_DIR
    changed = prepare_prediction_folder(out, run_settings, model_file)
    if changed:
        print(f"{pred_dir} was made with other settings ({', '.join(changed)}): predicting again")

    todo = [key for key in keys if not prediction_path(pred_dir, key).is_file()]
    skipped, profile = predict_images(detector, todo, paths, pred_dir, name)
    seconds = profile.totals["image"]
    done = len(todo) - len(skipped)
    rate = done / seconds if done and seconds > 0 else None
    passes = getattr(detector, "total_passes", 0) / done if done else None
    tiled = run_settings["tile_face"] is not None
    print(f"detected {done} images in {seconds:.1f} s"
          + (f" ({rate:.1f} images/s)" if rate else "")
          + (f", {passes:.2f} model passes per image" if tiled and passes else "")
          + f"; reused {len(keys) - len(todo)} prediction files from an earlier run"
          + (f"; skipped {len(skipped)} unreadable images" if skipped else ""))
    if stale := stale_predictions(pred_dir, keys):
        print(f"note: {pred_dir} also holds {stale} files of images outside this evaluation; "
              "tools that read the whole folder will count them")
    runner = getattr(detector, "runner", None)  # peers other than SCRFD have their own runtime
    precision = runner.precision if runner is not None else getattr(detector, "precision",
                                                                     "float32")
    return {"model": {"name": name, "path": str(model_file.resolve()),
                      "sha256": run_settings["model_sha256"],
                      "backend": getattr(runner or detector, "backend", "unknown"),
                      "precision": precision},
            "input_size": input_hw, "skipped_images": skipped,
            "score_threshold": run_settings["score_threshold"],
            "nms_threshold": run_settings["nms_threshold"], "tile_face": run_settings["tile_face"],
            "timing": {"predicted": done, "reused": len(keys) - len(todo),
                       "seconds": round(seconds, 2), "images_per_second": rate and round(rate, 2),
                       **({"passes_per_image": round(passes, 3)} if tiled and passes else {})}}


def evaluate(settings: EvaluationSettings, model: Path | str | None,
             size: tuple[int, int] | None, out: Path) -> dict:
    """Predict (or take existing predictions), score them, write results.json and report.md.

    model None: score settings.predictions, or with neither, the finished run in OUT again.
    One evaluation at a time in OUT: a second one at once is refused (a lock on the folder).
    """
    with folder_lock(out, busy=f"--out {out} is in use by another evaluation running now; "
                               "wait for it to end, or give another --out",
                     create=model is not None or settings.predictions is not None):
        return evaluate_here(settings, model, size, out)


def evaluate_here(settings: EvaluationSettings, model: Path | str | None,
                  size: tuple[int, int] | None, out: Path) -> dict:
    previous = read_results(out) if model is None and settings.predictions is None else {}
    earlier = previous.get("settings", {})
    wider = settings.wider or (Path(earlier["wider"]) if "wider" in earlier else None)
    if wider is None:
        raise UserError("give --wider: the folder holding WIDER_val/ and ground_truth/")
    images_list = settings.images_list or (out / "images.txt" if previous else None)
    protocol = settings.protocol or previous.get("protocol", "official")
    operating_score = settings.operating_score
    gt = load_ground_truth(wider)
    pred_dir = settings.predictions or Path(earlier.get("predictions", out / PREDICTIONS_DIR))
    keys, paths = select_images(gt, images_list, need_files=model is not None,
                                predictions=pred_dir if model is None else None, exclude=out)
    print(f"{len(keys):,} images to evaluate from {images_list or wider / IMAGES_DIR}")

    run = {"model": previous.get("model"), "input_size": earlier.get("input_size"),
           "skipped_images": previous.get("skipped_images", []), "timing": previous.get("timing")}
    if model is not None:
        run = predict(model, size, keys, paths, out, settings)
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
            results["rough"] = {name: rough_metrics(preds, gt, keys, name, operating_score)
                                for name in rough_protocols(protocol)}
        results["settings"] = {
            "input_size": run["input_size"],
            "score_threshold": run.get("score_threshold", earlier.get("score_threshold")),
            "nms_threshold": run.get("nms_threshold", earlier.get("nms_threshold")),
            **({"tile_face": tile} if (tile := run.get("tile_face", earlier.get("tile_face")))
               else {}),
            "iou_threshold": OFFICIAL_IOU, "thresholds": THRESHOLDS,
            "rough": rough_settings(operating_score),
            "wider": str(wider.resolve()), "images_list": str(images_list) if images_list else None,
            "predictions": str(pred_dir.resolve())}
        results.update({"skipped_images": run["skipped_images"], "missing_predictions": missing,
                        "timing": run["timing"]})
        if (protocol != "official" or settings.analyze) and (warning := operating_score_warning(
                operating_score, results["settings"]["score_threshold"])):
            print(f"warning: {warning}", file=sys.stderr)
        out.mkdir(parents=True, exist_ok=True)
        plot_pr(curves, f"WIDER FACE val ({len(keys):,} images)", out / "pr_curves.png")
        analysis_md: list[str] = []
        if settings.analyze:
            results["analysis"], analysis_md = analyze(preds, gt, keys, paths, out,
                                                       operating_score)
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
        print_markdown(rough_table(results["rough"], operating_score))
    if settings.analyze:
        fps = results["analysis"]["false_positives"]
        print(f"\nerror analysis at score >= {operating_score:g}: recall "
              f"{percent(results['analysis']['recall'])}%, false positives "
              + ", ".join(f"{k} {v:,}" for k, v in fps.items()))
    print(f"\nwrote {out / 'results.json'}, {report} (plots beside it); predictions in {pred_dir}")
    return results


def evaluate_all(evaluations: list[Evaluation], settings: EvaluationSettings,
                 keep_going: bool = False, map_tasks: Callable | None = None) -> list[dict | None]:
    """Results of every evaluation, in the order given: one after the other here, or each as a
    task of `map_tasks` (scrfdkit.scale.ray_jobs.map_tasks bound to a cluster address), its
    output in OUT/evaluate.log.

    A failure stops the run with its error, or with keep_going is noted and gives None.
    """
    if map_tasks is not None:
        return map_tasks(partial(evaluate_logged, settings, workdir=os.getcwd()), evaluations,
                         cpus=settings.threads, titles=[e.title for e in evaluations],
                         logs=[e.out / TASK_LOG for e in evaluations], summary=summary_line,
                         keep_going=keep_going)
    results: list[dict | None] = []
    for evaluation in evaluations:
        print(f"\n=== {evaluation.title}")
        try:
            results.append(evaluate(settings, evaluation.model, evaluation.size, evaluation.out))
        except UserError as err:
            if not keep_going:
                raise
            print(f"note: {evaluation.title} could not be evaluated: {err}")
            results.append(None)
    return results


def summary_line(results: dict) -> str:
    """APs and skipped images of one finished evaluation, for a line of progress."""
    skipped = len(results["skipped_images"])
    return ("  ".join(f"{s.capitalize()} {percent(results[s])}" for s in SUBSETS)
            + (f"; {skipped} unreadable image(s) skipped" if skipped else ""))


def evaluate_logged(settings: EvaluationSettings, evaluation: Evaluation, workdir: str) -> dict:
    """evaluate() as a task on a cluster node: in the driver's working folder (relative paths mean there what
    they mean to the driver), its output into OUT/evaluate.log instead of the driver's screen."""
    previous = os.getcwd()
    try:
        os.chdir(workdir)
    except OSError:
        raise UserError(f"the working folder {workdir} is not on this Ray node; run from a "
                        "folder every node shares") from None
    try:
        evaluation.out.mkdir(parents=True, exist_ok=True)
        with open(evaluation.out / TASK_LOG, "w") as log, contextlib.redirect_stdout(log), \
                contextlib.redirect_stderr(log):
            return evaluate(settings, evaluation.model, evaluation.size, evaluation.out)
    finally:
        os.chdir(previous)
