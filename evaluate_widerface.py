"""Evaluate an SCRFD face detector on WIDER FACE val: official AP, rough-detection protocols,
error analysis, and a metrics grid over models and input sizes.

    python evaluate_widerface.py --model ../shared/models/det_500m.onnx --wider ../shared/widerface
    python evaluate_widerface.py --model m.tflite --protocol rough --analyze --out results/m
    python evaluate_widerface.py --analyze --out results/m            # analyse a finished run
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
import csv
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from detector import (IMAGE_SUFFIXES, SCRFD, UserError, atomic_write, cli, parse_hw, read_image,
                      sha256_of)

# ----------------------------------------------------------------------------- configuration
REPO = Path(__file__).resolve().parent
DEFAULT_WIDER = REPO / "data"  # same layout as ../shared/widerface
DEFAULT_OUT = REPO / "results" / "widerface"
IMAGES_DIR = "WIDER_val/images"  # <event>/<image>.jpg
GT_MATS = {"all": "ground_truth/wider_face_val.mat", "easy": "ground_truth/wider_easy_val.mat",
           "medium": "ground_truth/wider_medium_val.mat", "hard": "ground_truth/wider_hard_val.mat"}
GT_TXT = "wider_face_split/wider_face_val_bbx_gt.txt"  # same boxes, with attributes
DEFAULT_SIZE = (640, 640)  # SCRFD paper "VGA" protocol: letterbox into 640x640,
SCORE_THRESHOLD = 0.02  # keep every detection above 0.02,
NMS_THRESHOLD = 0.45  # and suppress at IoU 0.45
SUBSETS = ("easy", "medium", "hard")
OFFICIAL_IOU = 0.5
THRESHOLDS = 1000  # score thresholds of the public code's precision-recall curve
PROTOCOLS = ("official", "rough", "rough-iou", "rough-center")
ROUGH_IOU = 0.3  # rough-iou: a prediction finds a face at IoU >= 0.3
ROUGH_MIN_HEIGHTS = (16, 32, 64)  # faces shorter than this (pixels, original image) are ignored
DEPLOY_THRESHOLD = 0.5  # the score an application would use; precision/recall/analysis there
FPPI_POINTS = (0.1, 1.0)  # report recall at these false positives per image
POOR_IOU = 0.1  # a false positive with IoU 0.1-0.5 to some face is poorly localised
SIZE_BINS = (0, 8, 16, 32, 64, 128, 256)  # face height bins in pixels (last one open-ended)
ATTRIBUTES = {  # column order of wider_face_val_bbx_gt.txt after x y w h; values from readme.txt
    "blur": ("clear", "normal", "heavy"), "expression": ("typical", "exaggerate"),
    "illumination": ("normal", "extreme"), "invalid": ("valid", "invalid"),
    "occlusion": ("none", "partial", "heavy"), "pose": ("typical", "atypical")}
ATTRIBUTE_MIN_HEIGHT = 32  # miss rates per attribute also for faces this tall: blur, occlusion
# and the rest come with smallness, which this separates out
GALLERY_SIZE = 24  # crops in each gallery of worst misses / false positives
TILE = 160  # gallery crop side in pixels


# ----------------------------------------------------------------------------- ground truth
@dataclass
class GroundTruth:
    """Official WIDER FACE val faces, keyed 'event/image' (no extension), in the official order."""

    root: Path
    boxes: dict[str, np.ndarray]  # (M, 4) float64 x y w h
    keep: dict[str, dict[str, np.ndarray]]  # subset -> (M,) bool: faces that count; others ignored
    invalid: dict[str, np.ndarray]  # (M,) bool: annotators marked the face invalid
    attributes: dict[str, np.ndarray] = field(default_factory=dict)  # (M, 6), see load_attributes


def _load_mat(root: Path, name: str) -> dict:
    from scipy.io import loadmat

    path = root / GT_MATS[name]
    if not path.is_file():
        raise UserError(f"ground truth not found: expected {path} (the official WIDER FACE files "
                        f"{', '.join(Path(p).name for p in GT_MATS.values())} in "
                        f"{path.parent}); point --wider at a folder laid out like "
                        "../shared/widerface")
    try:
        return loadmat(str(path))
    except Exception as err:  # scipy raises several types for damaged files
        raise UserError(f"cannot read {path}: {err}") from None


def load_ground_truth(root: Path) -> GroundTruth:
    """Read the four official .mat files: boxes, and per subset the 1-based indices that count."""
    full = _load_mat(root, "all")
    subsets = {name: _load_mat(root, name)["gt_list"].ravel() for name in SUBSETS}
    gt = GroundTruth(root, {}, {}, {})
    try:
        for e, event_cell in enumerate(full["event_list"].ravel()):
            event = str(np.ravel(event_cell)[0])
            files = full["file_list"].ravel()[e].ravel()
            boxes = full["face_bbx_list"].ravel()[e].ravel()
            invalid = full["invalid_label_list"].ravel()[e].ravel()
            for j, file_cell in enumerate(files):
                key = f"{event}/{np.ravel(file_cell)[0]}"
                gt.boxes[key] = np.asarray(boxes[j], np.float64).reshape(-1, 4)
                gt.invalid[key] = np.asarray(invalid[j]).ravel().astype(bool)
                count = len(gt.boxes[key])
                gt.keep[key] = {}
                for name, lists in subsets.items():
                    mask = np.zeros(count, bool)
                    mask[np.asarray(lists[e].ravel()[j], np.int64).ravel() - 1] = True
                    gt.keep[key][name] = mask
    except (KeyError, IndexError, ValueError) as err:
        raise UserError(f"{root / 'ground_truth'} does not hold the official WIDER FACE val "
                        f"ground truth ({type(err).__name__}: {err})") from None
    return gt


def load_attributes(gt: GroundTruth) -> None:
    """Per-face attributes (blur ... pose, see ATTRIBUTES) from wider_face_val_bbx_gt.txt."""
    path = gt.root / GT_TXT
    if not path.is_file():
        raise UserError(f"face attributes not found: expected {path} (from wider_face_split.zip)")
    lines = path.read_text().split("\n")
    i = 0
    try:
        while i < len(lines) and lines[i].strip():
            key = lines[i].strip().rsplit(".", 1)[0]
            count = int(lines[i + 1])
            rows = [line.split()[:10] for line in lines[i + 2: i + 2 + max(count, 1)]]
            table = np.array(rows, np.int64).reshape(-1, 10)[:count]
            order = [4, 5, 6, 7, 8, 9]  # blur expression illumination invalid occlusion pose
            gt.attributes[key] = table[:, order]
            if key in gt.boxes and len(table) != len(gt.boxes[key]):
                raise ValueError(f"{count} faces for {key}, the .mat has {len(gt.boxes[key])}")
            i += 2 + max(count, 1)
    except (ValueError, IndexError) as err:
        raise UserError(f"{path}:{i + 1}: cannot parse ({err})") from None
    missing = [key for key in gt.boxes if key not in gt.attributes]
    if missing:
        raise UserError(f"{path} lacks {len(missing)} val images (first: {missing[0]})")


def image_key(text: str) -> str | None:
    """'0--Parade/0_Parade_x.jpg' (or a longer path) -> '0--Parade/0_Parade_x'."""
    parts = text.strip().replace("\\", "/").split("/")
    if len(parts) < 2 or not parts[-1] or not parts[-2]:
        return None
    name = parts[-1]
    if Path(name).suffix.lower() in IMAGE_SUFFIXES:
        name = name[: -len(Path(name).suffix)]
    return f"{parts[-2]}/{name}"


def select_images(gt: GroundTruth, images_list: Path | None, need_files: bool,
                  predictions: Path | None = None) -> tuple[list[str], dict[str, Path]]:
    """The images to evaluate (a list file, else those present), in the official order."""
    images_dir = gt.root / IMAGES_DIR
    paths: dict[str, Path] = {}
    if images_list:
        if not images_list.is_file():
            raise UserError(f"images list not found: {images_list}")
        for number, line in enumerate(images_list.read_text().splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            key = image_key(line)
            if key is None:
                raise UserError(f"{images_list}:{number}: expected <event>/<image>.jpg, got {line!r}")
            suffix = Path(line.strip()).suffix
            paths[key] = images_dir / f"{key}{suffix if suffix.lower() in IMAGE_SUFFIXES else '.jpg'}"
    elif images_dir.is_dir():
        for path in sorted(images_dir.glob("*/*")):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                paths[f"{path.parent.name}/{path.stem}"] = path
    elif predictions is not None:  # scoring files only: the images evaluated are those predicted
        paths = {f"{p.parent.name}/{p.stem}": images_dir / p.parent.name / f"{p.stem}.jpg"
                 for p in sorted(predictions.glob("*/*.txt"))}
    if not paths:
        where = images_list or images_dir
        raise UserError(f"no images to evaluate: expected WIDER FACE val images in {where} "
                        "(as <event>/<image>.jpg)")
    unknown = [key for key in paths if key not in gt.boxes]
    if unknown:
        raise UserError(f"{len(unknown)} images are not in the WIDER FACE val ground truth "
                        f"(first: {unknown[0]})")
    if need_files:
        absent = [str(p) for p in paths.values() if not p.is_file()]
        if absent:
            raise UserError(f"{len(absent)} listed images do not exist (first: {absent[0]})")
    keys = [key for key in gt.boxes if key in paths]
    return keys, paths


# ----------------------------------------------------------------------------- prediction files
def prediction_path(pred_dir: Path, key: str) -> Path:
    return pred_dir / f"{key}.txt"


def write_prediction(path: Path, key: str, boxes_xyxy: np.ndarray, scores: np.ndarray) -> None:
    """Official format: image name, count, then 'x y w h score' lines, highest score first."""
    order = np.argsort(-scores, kind="stable")
    lines = [key.split("/")[-1], str(len(order))]
    for (x1, y1, x2, y2), score in zip(boxes_xyxy[order], scores[order]):
        lines.append(f"{x1:.2f} {y1:.2f} {x2 - x1:.2f} {y2 - y1:.2f} {score:.6f}")
    with atomic_write(path) as handle:
        handle.write("\n".join(lines) + "\n")


def read_prediction(path: Path) -> np.ndarray:
    """One prediction file -> (N, 5) float64 x y w h score, in file order as the public code reads."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read prediction file {path}: {err}") from None
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) < 2:
        raise UserError(f"{path}:{len(lines) + 1}: expected the image name on line 1 and the "
                        "number of faces on line 2")
    named = image_key(f"x/{lines[0].strip()}")
    if named is None or named.split("/")[-1] != path.stem:
        raise UserError(f"{path}:1: names image {lines[0].strip()!r}, expected {path.stem}")
    try:
        count = int(lines[1])
        if count < 0:
            raise ValueError
    except ValueError:
        raise UserError(f"{path}:2: expected the number of faces, got {lines[1]!r}") from None
    rows = lines[2:]
    if len(rows) != count:
        raise UserError(f"{path}:2: says {count} faces but {len(rows)} box lines follow")
    fields = [row.split() for row in rows]
    try:
        boxes = np.array(fields, np.float64).reshape(count, 5)
        if not np.isfinite(boxes).all():
            raise ValueError
        return boxes
    except ValueError:
        for number, (row, values) in enumerate(zip(rows, fields), 3):
            try:
                if len(values) != 5 or not np.isfinite([float(v) for v in values]).all():
                    raise ValueError
            except ValueError:
                raise UserError(f"{path}:{number}: expected 'x y w h score', got {row!r}") from None
        raise


def read_predictions(pred_dir: Path, keys: list[str]) -> tuple[dict[str, np.ndarray], list[str]]:
    """Prediction files of the evaluated images; images without a file have no detections."""
    preds, missing = {}, []
    for key in keys:
        path = prediction_path(pred_dir, key)
        if path.is_file():
            preds[key] = read_prediction(path)
        else:
            missing.append(key)
            preds[key] = np.zeros((0, 5))
    return preds, missing


# ----------------------------------------------------------------------------- inference
def fixed_input_hw(model_path: Path) -> tuple[int, int] | None:
    """The input size a model was exported for, or None when it takes any size."""
    if not model_path.is_file():
        raise UserError(f"model not found: {model_path}")
    if model_path.suffix.lower() == ".onnx":
        import onnx

        try:
            dims = onnx.load(str(model_path), load_external_data=False).graph.input[0].type
        except Exception as err:
            raise UserError(f"cannot load {model_path} as ONNX: {err}") from None
        hw = [d.dim_value if d.HasField("dim_value") else 0 for d in dims.tensor_type.shape.dim][2:]
    elif model_path.suffix.lower() == ".tflite":
        from ai_edge_litert.interpreter import Interpreter

        try:
            shape = list(Interpreter(model_path=str(model_path)).get_input_details()[0]
                         ["shape_signature"])
        except (ValueError, RuntimeError, IndexError) as err:
            raise UserError(f"cannot load {model_path} as TFLite: {err}") from None
        hw = shape[2:] if len(shape) == 4 and shape[1] == 3 else shape[1:3]
    else:
        raise UserError(f"{model_path}: unsupported model type (expected .onnx or .tflite)")
    return (int(hw[0]), int(hw[1])) if len(hw) == 2 and min(hw) > 0 else None


def model_precision(detector: SCRFD) -> str:
    """float32 / float16 / int8 / dynamic-range, from the export metadata or the tensor types."""
    runner = getattr(detector, "runner", None)
    if runner is None:  # a peer detector (peers.py) with its own runtime
        return getattr(detector, "precision", "float32")
    if hasattr(runner, "session"):
        return "float16" if "float16" in runner.session.get_inputs()[0].type else "float32"
    if runner.precision != "unknown":
        return runner.precision
    types = {np.dtype(t["dtype"]).name for t in runner.interpreter.get_tensor_details()}
    if np.dtype(runner.input["dtype"]).kind in "iu":
        return "int8"
    return "float16" if "float16" in types else ("dynamic-range" if "int8" in types else "float32")


def open_detector(model: Path | str, size: tuple[int, int] | None, threads: int,
                  score_threshold: float, nms_threshold: float):
    """An SCRFD model file, or (a str) a peer detector from peers.py at its evaluation settings."""
    if isinstance(model, Path):
        return SCRFD(model, size, score_threshold, nms_threshold, max_faces=0, threads=threads)
    import peers  # optional module: only comparisons need it

    return peers.make_detector(model, evaluation=True, threads=threads)


def predict(model: Path | str, size: tuple[int, int] | None, keys: list[str],
            paths: dict[str, Path], out: Path, threads: int, score_threshold: float,
            nms_threshold: float) -> dict:
    """Write a prediction file per image, reusing those a run with the same settings left."""
    from tqdm import tqdm

    detector = open_detector(model, size, threads, score_threshold, nms_threshold)
    model_file = Path(model) if isinstance(model, Path) else Path(detector.model_path)
    score_threshold, nms_threshold = detector.score_threshold, detector.nms_threshold
    input_hw = list(detector.input_hw) if detector.input_hw else None
    name = model_file.name if isinstance(model, Path) else model
    pred_dir = out / "predictions"
    settings = {"detector": name, "model_sha256": sha256_of(model_file), "input_size": input_hw,
                "score_threshold": score_threshold, "nms_threshold": nms_threshold}
    settings_path = out / "predictions.json"  # beside predictions/: the public code lists that
    if not settings_path.is_file() and any(pred_dir.glob("*/*.txt")):
        raise UserError(f"{pred_dir} holds prediction files this script did not make; choose "
                        "another --out, or score them with --predictions")
    old = json.loads(settings_path.read_text()) if settings_path.is_file() else {}
    if {k: old.get(k) for k in settings} != settings and pred_dir.is_dir():
        changed = [k for k in settings if old.get(k) != settings[k]]
        print(f"{pred_dir} was made with other settings ({', '.join(changed)}): predicting again")
        shutil.rmtree(pred_dir)
    for leftover in pred_dir.glob("*/.*.part"):  # from a run killed mid-write
        leftover.unlink()
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(settings_path) as handle:
        json.dump({**settings, "model": str(model_file.resolve())}, handle, indent=2)

    todo = [key for key in keys if not prediction_path(pred_dir, key).is_file()]
    skipped: list[str] = []
    start = time.perf_counter()
    for key in tqdm(todo, desc=f"detect {name}", unit="img", dynamic_ncols=True,
                    mininterval=1.0, disable=not todo):
        try:
            image = read_image(paths[key])
        except UserError as err:
            tqdm.write(f"warning: skipped: {err}", file=sys.stderr)
            skipped.append(key)
            continue
        dets = detector.detect(image)
        write_prediction(prediction_path(pred_dir, key), key, dets.boxes, dets.scores)
    seconds = time.perf_counter() - start
    done = len(todo) - len(skipped)
    rate = done / seconds if done and seconds > 0 else None
    print(f"detected {done} images in {seconds:.1f} s"
          + (f" ({rate:.1f} images/s)" if rate else "")
          + f"; reused {len(keys) - len(todo)} prediction files from an earlier run"
          + (f"; skipped {len(skipped)} unreadable images" if skipped else ""))
    wanted = set(keys)
    stale = sum(1 for p in pred_dir.glob("*/*.txt") if f"{p.parent.name}/{p.stem}" not in wanted)
    if stale:
        print(f"note: {pred_dir} also holds {stale} files of images outside this evaluation; "
              "tools that read the whole folder will count them")
    backend = getattr(getattr(detector, "runner", detector), "backend", "unknown")
    return {"model": {"name": name, "path": str(model_file.resolve()),
                      "sha256": settings["model_sha256"], "backend": backend,
                      "precision": model_precision(detector)},
            "input_size": input_hw, "skipped_images": skipped,
            "score_threshold": score_threshold, "nms_threshold": nms_threshold,
            "timing": {"predicted": done, "reused": len(keys) - len(todo),
                       "seconds": round(seconds, 2), "images_per_second": rate and round(rate, 2)}}


# ----------------------------------------------------------------------------- official AP
def iou_plus1(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(N, M) IoU of x y w h boxes as the public code computes it: x2 = x + w, areas (w+1)(h+1)."""
    px1, py1 = pred[:, 0:1], pred[:, 1:2]
    px2, py2 = px1 + pred[:, 2:3], py1 + pred[:, 3:4]
    gx1, gy1 = gt[:, 0], gt[:, 1]
    gx2, gy2 = gx1 + gt[:, 2], gy1 + gt[:, 3]
    iw = np.minimum(px2, gx2) - np.maximum(px1, gx1) + 1
    ih = np.minimum(py2, gy2) - np.maximum(py1, gy1) + 1
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    union = (px2 - px1 + 1) * (py2 - py1 + 1) + (gx2 - gx1 + 1) * (gy2 - gy1 + 1) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=inter > 0)


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the interpolated (monotone) precision-recall curve, VOC style."""
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    step = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[step + 1] - mrec[step]) * mpre[step + 1]))


@dataclass
class Curve:
    """A precision-recall curve and its AP (None when the subset has no faces)."""

    ap: float | None
    precision: np.ndarray
    recall: np.ndarray
    faces: int


def official_curves(preds: dict[str, np.ndarray], gt: GroundTruth, keys: list[str]
                    ) -> dict[str, Curve]:
    """The public WIDER FACE evaluation, vectorised, over the images in `keys` only.

    Its rules, kept on purpose: scores are min-max normalised over all predictions (with the
    minimum capped at 1 and the maximum floored at 0); each prediction, in file order, goes to
    the face it overlaps most; at IoU >= 0.5 it is dropped if that face is ignored, otherwise
    it recalls the face (a second one on the same face is a false positive, not a fallback to
    another face); images without faces or without predictions add only their face count; at
    each of 1000 thresholds an image counts its predictions up to the last one scoring at
    least the threshold; precision is faces recalled / predictions counted.
    """
    scores = [preds[k][:, 4] for k in keys if len(preds[k])]
    low = min(1.0, min((s.min() for s in scores), default=1.0))
    high = max(0.0, max((s.max() for s in scores), default=0.0))
    span = (high - low) or 1.0  # (the public code divides by zero here)
    reach, proposals, recalls = [], {s: [] for s in SUBSETS}, {s: [] for s in SUBSETS}
    faces = dict.fromkeys(SUBSETS, 0)
    for key in keys:
        boxes, pred = gt.boxes[key], preds[key]
        for subset in SUBSETS:
            faces[subset] += int(gt.keep[key][subset].sum())
        if not len(boxes) or not len(pred):
            continue
        overlaps = iou_plus1(pred[:, :4], boxes)
        best = overlaps.argmax(axis=1)
        hit = overlaps[np.arange(len(best)), best] >= OFFICIAL_IOU
        normalised = (pred[:, 4] - low) / span
        # an image's count at threshold t runs up to its last prediction scoring >= t, so a
        # prediction is counted at t exactly when the best score from it onwards is >= t
        reach.append(np.maximum.accumulate(normalised[::-1])[::-1])
        for subset in SUBSETS:
            counts = gt.keep[key][subset][best]
            proposals[subset].append(~(hit & ~counts))
            found = np.flatnonzero(hit & counts)
            first = found[np.unique(best[found], return_index=True)[1]]
            gain = np.zeros(len(pred))
            gain[first] = 1.0
            recalls[subset].append(gain)
    reach_all = np.concatenate(reach) if reach else np.zeros(0)
    order = np.argsort(-reach_all, kind="stable")
    thresholds = 1 - np.arange(1, THRESHOLDS + 1) / THRESHOLDS
    counted = len(reach_all) - np.searchsorted(reach_all[order][::-1], thresholds, side="left")
    curves = {}
    for subset in SUBSETS:
        def cumulative(parts: list[np.ndarray]) -> np.ndarray:
            totals = np.concatenate([[0.0], np.cumsum(np.concatenate(parts)[order])]) if parts \
                else np.zeros(1)
            return totals[counted]
        n_props, n_found = cumulative(proposals[subset]), cumulative(recalls[subset])
        precision = np.divide(n_found, n_props, out=np.zeros(THRESHOLDS), where=n_props > 0)
        if faces[subset] == 0:
            curves[subset] = Curve(None, precision, np.zeros(THRESHOLDS), 0)
            continue
        recall = n_found / faces[subset]
        curves[subset] = Curve(voc_ap(recall, precision), precision, recall, faces[subset])
    return curves


# ----------------------------------------------------------------------------- rough protocols
def plain_iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(N, M) ordinary IoU of x y w h boxes (x2 = x + w, no +1)."""
    px1, py1, px2, py2 = pred[:, 0:1], pred[:, 1:2], pred[:, 0:1] + pred[:, 2:3], \
        pred[:, 1:2] + pred[:, 3:4]
    gx1, gy1, gx2, gy2 = gt[:, 0], gt[:, 1], gt[:, 0] + gt[:, 2], gt[:, 1] + gt[:, 3]
    inter = (np.clip(np.minimum(px2, gx2) - np.maximum(px1, gx1), 0, None)
             * np.clip(np.minimum(py2, gy2) - np.maximum(py1, gy1), 0, None))
    union = (np.clip(px2 - px1, 0, None) * np.clip(py2 - py1, 0, None)
             + np.clip(gx2 - gx1, 0, None) * np.clip(gy2 - gy1, 0, None) - inter)
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def center_hits(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(N, M): the prediction's centre lies inside the face box."""
    cx, cy = pred[:, 0:1] + pred[:, 2:3] / 2, pred[:, 1:2] + pred[:, 3:4] / 2
    return ((cx >= gt[:, 0]) & (cx <= gt[:, 0] + gt[:, 2])
            & (cy >= gt[:, 1]) & (cy <= gt[:, 1] + gt[:, 3]))


@dataclass
class Matcher:
    """Greedy one-to-one matching in score order for one image, reusable for several face sets.

    Each prediction, best score first, takes the best-overlapping face it `allowed` to hit that
    counts and is still free (a true positive); failing that, it is dropped if it hits an
    ignored face, and is a false positive otherwise.
    """

    order: list[int]  # predictions that hit some face, best score first
    faces: list[int]  # their faces, best IoU first: order[k]'s are faces[bounds[k]:bounds[k+1]]
    bounds: list[int]
    n_faces: int

    @classmethod
    def build(cls, scores: np.ndarray, iou: np.ndarray, allowed: np.ndarray) -> "Matcher":
        rows = np.flatnonzero(allowed.any(axis=1))
        rows = rows[np.argsort(-scores[rows], kind="stable")]
        rank, faces = np.nonzero(allowed[rows])
        by_iou = np.lexsort((-iou[rows[rank], faces], rank))
        bounds = np.searchsorted(rank[by_iou], np.arange(len(rows) + 1))
        return cls(rows.tolist(), faces[by_iou].tolist(), bounds.tolist(), iou.shape[1])

    def run(self, counts: np.ndarray, n_preds: int) -> tuple[np.ndarray, np.ndarray]:
        """status per prediction (1 true, 0 false positive, -1 dropped) and face per prediction."""
        status = np.zeros(n_preds, np.int8)
        matched = np.full(n_preds, -1, np.int64)
        counts_list, taken = counts.tolist(), [False] * self.n_faces
        for k, row in enumerate(self.order):
            ignored = False
            for face in self.faces[self.bounds[k]: self.bounds[k + 1]]:
                if not counts_list[face]:
                    ignored = True
                elif not taken[face]:
                    taken[face] = True
                    status[row], matched[row] = 1, face
                    break
            else:
                status[row] = -1 if ignored else 0
        return status, matched


def detection_summary(scores: np.ndarray, status: np.ndarray, positives: int, images: int
                      ) -> dict:
    """AP, recall at fixed false positives per image, precision/recall at the deployment score."""
    kept = status >= 0
    scores, true = scores[kept], status[kept] == 1
    order = np.argsort(-scores, kind="stable")
    scores, true = scores[order], true[order]
    tp, fp = np.cumsum(true), np.cumsum(~true)
    last = np.flatnonzero(np.append(scores[1:] != scores[:-1], len(scores) > 0))  # ties: at end
    tp, fp = tp[last].astype(float), fp[last].astype(float)
    result = {"faces": positives, "predictions": int(len(scores))}
    if positives == 0:
        return {**result, "ap": None}
    recall, precision = tp / positives, tp / np.maximum(tp + fp, 1)
    result["ap"] = voc_ap(recall, precision)
    for fppi in FPPI_POINTS:
        within = fp <= fppi * images
        result[f"recall_at_{fppi:g}_fppi"] = float(recall[within].max()) if within.any() else 0.0
    deployed = scores >= DEPLOY_THRESHOLD
    n_tp, n_fp = int(true[deployed].sum()), int((~true[deployed]).sum())
    result.update({f"precision_at_{DEPLOY_THRESHOLD:g}": n_tp / (n_tp + n_fp) if n_tp + n_fp else None,
                   f"recall_at_{DEPLOY_THRESHOLD:g}": n_tp / positives,
                   f"false_positives_at_{DEPLOY_THRESHOLD:g}": n_fp})
    return result


def rough_metrics(preds: dict[str, np.ndarray], gt: GroundTruth, keys: list[str], rule: str
                  ) -> dict[str, dict]:
    """One rough protocol ('rough-iou' or 'rough-center') at every minimum face height."""
    scores, statuses = [], {h: [] for h in ROUGH_MIN_HEIGHTS}
    positives = dict.fromkeys(ROUGH_MIN_HEIGHTS, 0)
    for key in keys:
        boxes, pred = gt.boxes[key], preds[key]
        counting = {h: (boxes[:, 3] >= h) & ~gt.invalid[key] for h in ROUGH_MIN_HEIGHTS}
        for h in ROUGH_MIN_HEIGHTS:
            positives[h] += int(counting[h].sum())
        if not len(pred):
            continue
        iou = plain_iou(pred[:, :4], boxes)
        allowed = iou >= ROUGH_IOU if rule == "rough-iou" else center_hits(pred[:, :4], boxes)
        matcher = Matcher.build(pred[:, 4], iou, allowed)
        scores.append(pred[:, 4])
        for h in ROUGH_MIN_HEIGHTS:
            statuses[h].append(matcher.run(counting[h], len(pred))[0])
    all_scores = np.concatenate(scores) if scores else np.zeros(0)
    return {f"{h}px": detection_summary(
        all_scores, np.concatenate(statuses[h]) if statuses[h] else np.zeros(0, np.int8),
        positives[h], len(keys)) for h in ROUGH_MIN_HEIGHTS}


# ----------------------------------------------------------------------------- error analysis
def size_bin_labels() -> list[str]:
    edges = list(SIZE_BINS)
    return [f"{a}-{b}" for a, b in zip(edges, edges[1:])] + [f">={edges[-1]}"]


def analyze(preds: dict[str, np.ndarray], gt: GroundTruth, keys: list[str],
            paths: dict[str, Path], out: Path) -> tuple[dict, list[str]]:
    """Misses by size and attribute, false positives by kind, plots and galleries.

    Every annotated face counts (none ignored); predictions are matched greedily in score order
    at IoU >= 0.5, and misses / false positives are those at the deployment score.
    """
    load_attributes(gt)
    heights, attrs, face_score, face_ref = [], [], [], []
    fp_kind, fp_score, fp_ref = [], [], []
    for key in keys:
        boxes, pred = gt.boxes[key], preds[key]
        heights.append(boxes[:, 3])
        attrs.append(gt.attributes[key])
        best_score = np.full(len(boxes), -np.inf)
        face_ref += [(key, i) for i in range(len(boxes))]
        if len(pred):
            iou = plain_iou(pred[:, :4], boxes) if len(boxes) else np.zeros((len(pred), 0))
            status, matched = Matcher.build(pred[:, 4], iou, iou >= OFFICIAL_IOU).run(
                np.ones(len(boxes), bool), len(pred))
            best_score[matched[status == 1]] = pred[status == 1, 4]
            top = iou.max(axis=1) if len(boxes) else np.zeros(len(pred))
            false = np.flatnonzero((status == 0) & (pred[:, 4] >= DEPLOY_THRESHOLD))
            fp_kind += np.where(top[false] >= OFFICIAL_IOU, 0,
                                np.where(top[false] >= POOR_IOU, 1, 2)).tolist()
            fp_score += pred[false, 4].tolist()
            fp_ref += [(key, int(i)) for i in false]
        face_score.append(best_score)
    heights, attrs, face_score = np.concatenate(heights), np.concatenate(attrs), \
        np.concatenate(face_score)
    found = face_score >= DEPLOY_THRESHOLD
    found_any = face_score > -np.inf
    bins = np.digitize(heights, SIZE_BINS[1:])
    labels = size_bin_labels()
    by_size = [{"height": labels[b], "faces": int((bins == b).sum()),
                "missed": int(((bins == b) & ~found).sum()),
                "recall": float(found[bins == b].mean()) if (bins == b).any() else None,
                "recall_any_score": float(found_any[bins == b].mean()) if (bins == b).any()
                else None} for b in range(len(labels))]
    tall = heights >= ATTRIBUTE_MIN_HEIGHT
    by_attr = []
    for column, (name, values) in enumerate(ATTRIBUTES.items()):
        for value, label in enumerate(values):
            group = attrs[:, column] == value
            by_attr.append({"attribute": name, "value": label, "faces": int(group.sum()),
                            "missed": int((group & ~found).sum()),
                            "miss_rate": float((~found[group]).mean()) if group.any() else None,
                            "tall_faces": int((group & tall).sum()),
                            "tall_miss_rate": float((~found[group & tall]).mean())
                            if (group & tall).any() else None})
    kinds = ("duplicate", "poor localisation", "background")
    fp_kind = np.array(fp_kind, np.int64)
    false_positives = {kind: int((fp_kind == i).sum()) for i, kind in enumerate(kinds)}
    summary = {"threshold": DEPLOY_THRESHOLD, "iou": OFFICIAL_IOU, "faces": int(len(heights)),
               "recall": float(found.mean()) if len(found) else None,
               "false_positives": false_positives, "misses_by_size": by_size,
               "misses_by_attribute": by_attr}

    plot_recall_by_size(by_size, out / "recall_by_size.png")
    plot_miss_rates(by_attr, out / "miss_rate_by_attribute.png")
    missed = np.flatnonzero(~found)
    worst_misses = missed[np.argsort(-heights[missed], kind="stable")][:GALLERY_SIZE]
    worst_fps = np.argsort(-np.array(fp_score), kind="stable")[:GALLERY_SIZE]
    galleries = {
        "gallery_misses.jpg": [(face_ref[i][0], gt.boxes[face_ref[i][0]][face_ref[i][1]],
                                f"h={heights[i]:.0f} " + " ".join(
                                    f"{n[:3]}={attrs[i, c]}" for c, n in enumerate(ATTRIBUTES)
                                    if attrs[i, c] and n != "invalid"))
                               for i in worst_misses],
        "gallery_false_positives.jpg": [(fp_ref[i][0], preds[fp_ref[i][0]][fp_ref[i][1], :4],
                                         f"{kinds[fp_kind[i]][:10]} {fp_score[i]:.2f}")
                                        for i in worst_fps]}
    made = []
    for name, items in galleries.items():
        if items and write_gallery(items, preds, gt, paths, out / name):
            made.append(name)

    md = [f"## Error analysis (score >= {DEPLOY_THRESHOLD:g}, IoU >= {OFFICIAL_IOU:g})", "",
          f"All {len(heights):,} annotated faces of the {len(keys):,} images count (none ignored); "
          f"predictions are matched one-to-one in score order. Recall at score >= "
          f"{DEPLOY_THRESHOLD:g}: {100 * summary['recall']:.1f}%; with every prediction "
          f"(score >= {SCORE_THRESHOLD:g}): {100 * found_any.mean():.1f}%.", "",
          "### Misses by face height (pixels in the original image)", "",
          "| height | faces | missed | recall | recall, any score |", "| --- | ---: | ---: | ---: | ---: |"]
    md += [f"| {r['height']} | {r['faces']:,} | {r['missed']:,} | {_pct(r['recall'])} | "
           f"{_pct(r['recall_any_score'])} |" for r in by_size]
    md += ["", "![recall by face size](recall_by_size.png)", "",
           "### Misses by WIDER attribute", "",
           f"| attribute | value | faces | miss rate | faces >= {ATTRIBUTE_MIN_HEIGHT} px | "
           f"miss rate >= {ATTRIBUTE_MIN_HEIGHT} px |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    md += [f"| {r['attribute']} | {r['value']} | {r['faces']:,} | {_pct(r['miss_rate'])} | "
           f"{r['tall_faces']:,} | {_pct(r['tall_miss_rate'])} |" for r in by_attr]
    total_fp = sum(false_positives.values())
    md += ["", "![miss rate by attribute](miss_rate_by_attribute.png)", "",
           "### False positives", "",
           f"{total_fp:,} false positives at score >= {DEPLOY_THRESHOLD:g} "
           f"({total_fp / len(keys):.2f} per image).", "",
           "| kind | count | share |", "| --- | ---: | ---: |"]
    md += [f"| {kind} (" + {"duplicate": f"IoU >= {OFFICIAL_IOU:g} with a face already found",
                           "poor localisation": f"IoU {POOR_IOU:g}-{OFFICIAL_IOU:g} with a face",
                           "background": f"IoU < {POOR_IOU:g} with every face"}[kind]
           + f") | {n:,} | {_pct(n / total_fp if total_fp else None)} |"
           for kind, n in false_positives.items()]
    if "gallery_misses.jpg" in made:
        md += ["", "### Worst misses (largest faces missed; red: the face, green: other faces, "
               "yellow: predictions)", "", "![worst misses](gallery_misses.jpg)"]
    if "gallery_false_positives.jpg" in made:
        md += ["", "### Worst false positives (highest scores; red: the prediction, green: faces)",
               "", "![worst false positives](gallery_false_positives.jpg)"]
    return summary, md


def write_gallery(items: list, preds: dict[str, np.ndarray], gt: GroundTruth,
                  paths: dict[str, Path], path: Path, columns: int = 6) -> bool:
    """Crops around each box (red), with faces (green) and predictions (yellow) drawn."""
    tiles = []
    for key, box, caption in items:
        if key not in paths or not paths[key].is_file():
            continue
        try:
            image = read_image(paths[key])
        except UserError:
            continue
        x, y, w, h = (float(v) for v in box)
        side = max(w, h, 16.0) * 2.5
        x0, y0 = x + w / 2 - side / 2, y + h / 2 - side / 2
        scale = TILE / side
        matrix = np.float32([[scale, 0, -x0 * scale], [0, scale, -y0 * scale]])
        tile = cv2.warpAffine(image, matrix, (TILE, TILE), flags=cv2.INTER_LINEAR)

        def draw(b, color, thickness=1):
            p1 = (int(round((b[0] - x0) * scale)), int(round((b[1] - y0) * scale)))
            p2 = (int(round((b[0] + b[2] - x0) * scale)), int(round((b[1] + b[3] - y0) * scale)))
            cv2.rectangle(tile, p1, p2, color, thickness)
        pred = preds[key]
        for b in pred[pred[:, 4] >= DEPLOY_THRESHOLD, :4]:
            draw(b, (0, 220, 255))
        for b in gt.boxes[key]:
            draw(b, (0, 200, 0))
        draw(box, (0, 0, 255), 2)
        cv2.rectangle(tile, (0, TILE - 14), (TILE, TILE), (0, 0, 0), -1)
        cv2.putText(tile, caption[:30], (2, TILE - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.33,
                    (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(tile)
    if not tiles:
        return False
    tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % columns)
    rows = [np.hstack(tiles[i: i + columns]) for i in range(0, len(tiles), columns)]
    with atomic_write(path, "wb") as handle:
        handle.write(cv2.imencode(".jpg", np.vstack(rows), [cv2.IMWRITE_JPEG_QUALITY, 90])[1])
    return True


# ----------------------------------------------------------------------------- plots
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)


def plot_pr(curves: dict[str, Curve], title: str, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for subset, curve in curves.items():
        if curve.ap is not None:
            ax.plot(curve.recall, curve.precision, label=f"{subset}: AP {100 * curve.ap:.2f}")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.01), title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    _save(fig, path)


def plot_recall_by_size(rows: list[dict], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    labels = [r["height"] for r in rows]
    for key, label in (("recall", f"score >= {DEPLOY_THRESHOLD:g}"),
                       ("recall_any_score", f"any score (>= {SCORE_THRESHOLD:g})")):
        ax.plot(labels, [np.nan if r[key] is None else r[key] for r in rows], marker="o", label=label)
    for i, r in enumerate(rows):
        ax.annotate(f"{r['faces']:,}", (i, 0.02), ha="center", fontsize=7, color="gray")
    ax.set(xlabel="face height (px, gray: number of faces)", ylabel="recall", ylim=(0, 1.02),
           title="Recall against face size")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


def plot_miss_rates(rows: list[dict], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 4.5))
    labels = [f"{r['attribute']}: {r['value']}" for r in rows]
    x = np.arange(len(rows))
    for offset, key, label in ((-0.2, "miss_rate", "all faces"),
                               (0.2, "tall_miss_rate", f"faces >= {ATTRIBUTE_MIN_HEIGHT} px")):
        ax.bar(x + offset, [np.nan if r[key] is None else r[key] for r in rows], 0.4, label=label)
    ax.set_xticks(x, labels, fontsize=8, rotation=40, ha="right")
    ax.set(ylabel=f"miss rate at score >= {DEPLOY_THRESHOLD:g}", ylim=(0, 1.15),
           title="Miss rate per WIDER attribute")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", ncol=2)
    _save(fig, path)


# ----------------------------------------------------------------------------- FLOPs
def conv_flops(model_path: Path, input_hw: tuple[int, int]) -> int:
    """FLOPs (2 x multiply-adds) at this input size, from speed_test.py's graph analyzer."""
    import speed_test

    return speed_test.analyze(speed_test.load_graph(model_path, input_hw))["flops"]


# ----------------------------------------------------------------------------- reporting
def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def official_table(results: dict) -> list[str]:
    rows = [f"| {s.capitalize()} | {results['faces'][s]:,} | {_pct(results[s])} |" for s in SUBSETS]
    return ["| subset | faces | AP |", "| --- | ---: | ---: |", *rows]


def rough_table(rough: dict) -> list[str]:
    head = (f"| protocol | min height | faces | AP | recall @ {FPPI_POINTS[0]:g} FP/img | "
            f"recall @ {FPPI_POINTS[1]:g} FP/img | precision @ {DEPLOY_THRESHOLD:g} | "
            f"recall @ {DEPLOY_THRESHOLD:g} |")
    lines = [head, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, by_height in rough.items():
        for height, m in by_height.items():
            lines.append(f"| {name} | {height} | {m['faces']:,} | {_pct(m['ap'])} | "
                         + " | ".join(_pct(m.get(k)) for k in (
                             f"recall_at_{FPPI_POINTS[0]:g}_fppi", f"recall_at_{FPPI_POINTS[1]:g}_fppi",
                             f"precision_at_{DEPLOY_THRESHOLD:g}", f"recall_at_{DEPLOY_THRESHOLD:g}"))
                         + " |")
    return lines


def print_markdown(lines: list[str]) -> None:
    """Markdown tables, aligned for the terminal."""
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines if "---" not in line]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                        enumerate(zip(r, widths))))


def describe(results: dict) -> str:
    model = results.get("model")
    what = f"{Path(model['path']).name} ({model['precision']}, {model['backend']})" if model \
        else f"predictions in {results['settings']['predictions']}"
    size = results["settings"].get("input_size")
    return what + (f" at {size[0]}x{size[1]}" if size else "")


def write_report(results: dict, rough_md: list[str], analysis_md: list[str], out: Path) -> Path:
    s = results["settings"]
    md = [f"# WIDER FACE val: {describe(results)}", "",
          f"{results['images']:,} images of WIDER FACE val "
          + (f"(listed in {s['images_list']})" if s["images_list"] else f"(present in {s['wider']})")
          + "; ground truth restricted to them."
          + (f" Inference: letterbox into {s['input_size'][0]}x{s['input_size'][1]}, score >= "
             f"{s['score_threshold']:g}, NMS IoU {s['nms_threshold']:g}." if s.get("input_size") else ""),
          "", "## Official protocol", "",
          "Public WIDER FACE evaluation: IoU >= 0.5, scores min-max normalised over all "
          "predictions, 1000 thresholds, VOC-style AP (in %).", "", *official_table(results), "",
          "![precision-recall curves](pr_curves.png)", ""]
    if rough_md:
        md += ["## Rough-detection protocols", "",
               f"Faces shorter than the minimum height, or marked invalid, are ignored. AP in %; "
               f"recall at 0.1 and 1 false positive per image; precision and recall at score >= "
               f"{DEPLOY_THRESHOLD:g}.", "", *rough_md, ""]
    md += analysis_md
    path = out / "report.md"
    with atomic_write(path) as handle:
        handle.write("\n".join(md).rstrip() + "\n")
    return path


# ----------------------------------------------------------------------------- one evaluation
def evaluate(args: argparse.Namespace, model: Path | str | None, size: tuple[int, int] | None,
             out: Path) -> dict:
    """Predict (or take existing predictions), score them, write results.json and report.md."""
    previous = {}
    if model is None and args.predictions is None:  # analyse / rescore a finished folder
        if not (out / "results.json").is_file():
            raise UserError(f"{out / 'results.json'} not found: give --model or --predictions, "
                            "or --out a folder an earlier run wrote")
        previous = json.loads((out / "results.json").read_text())
    settings = previous.get("settings", {})
    wider = args.wider or Path(settings.get("wider", DEFAULT_WIDER))
    images_list = args.images_list or (out / "images.txt" if previous else None)
    protocol = args.protocol or previous.get("protocol", "official")
    gt = load_ground_truth(wider)
    pred_dir = args.predictions or Path(settings.get("predictions", out / "predictions"))
    keys, paths = select_images(gt, images_list, need_files=model is not None,
                                predictions=pred_dir if model is None else None)
    print(f"{len(keys):,} images to evaluate from {images_list or wider / IMAGES_DIR}")

    run = {"model": previous.get("model"), "input_size": settings.get("input_size"),
           "skipped_images": previous.get("skipped_images", []), "timing": previous.get("timing")}
    if model is not None:
        run = predict(model, size, keys, paths, out, args.threads, args.score_threshold,
                      args.nms_threshold)
        keys = [k for k in keys if k not in set(run["skipped_images"])]
        if not keys:
            raise UserError("no image could be read")
    start = time.perf_counter()
    preds, missing = read_predictions(pred_dir, keys)
    if missing:
        print(f"warning: {len(missing)} images have no prediction file in {pred_dir} (first: "
              f"{missing[0]}); their faces count as misses", file=sys.stderr)
    curves = official_curves(preds, gt, keys)
    results = {subset: curves[subset].ap for subset in SUBSETS}
    results.update({"images": len(keys), "protocol": protocol,
                    "faces": {s: curves[s].faces for s in SUBSETS}, "model": run["model"]})
    rough_names = {"rough": ["rough-iou", "rough-center"]}.get(protocol, [protocol])
    if protocol != "official":
        results["rough"] = {name: rough_metrics(preds, gt, keys, name) for name in rough_names}
    results["settings"] = {
        "input_size": run["input_size"],
        "score_threshold": run.get("score_threshold", settings.get("score_threshold")),
        "nms_threshold": run.get("nms_threshold", settings.get("nms_threshold")),
        "iou_threshold": OFFICIAL_IOU, "thresholds": THRESHOLDS,
        "rough": {"iou": ROUGH_IOU, "min_heights": list(ROUGH_MIN_HEIGHTS),
                  "deploy_threshold": DEPLOY_THRESHOLD, "fppi": list(FPPI_POINTS)},
        "wider": str(wider.resolve()), "images_list": str(images_list) if images_list else None,
        "predictions": str(pred_dir.resolve())}
    results.update({"skipped_images": run["skipped_images"], "missing_predictions": missing,
                    "timing": run["timing"]})

    out.mkdir(parents=True, exist_ok=True)
    plot_pr(curves, f"WIDER FACE val ({len(keys):,} images)", out / "pr_curves.png")
    rough_md = rough_table(results["rough"]) if "rough" in results else []
    analysis_md: list[str] = []
    if args.analyze:
        results["analysis"], analysis_md = analyze(preds, gt, keys, paths, out)
    results["timing"] = {**(results["timing"] or {}),
                         "evaluation_seconds": round(time.perf_counter() - start, 2)}
    if out / "images.txt" != images_list:
        with atomic_write(out / "images.txt") as handle:
            handle.write("".join(f"{k}{paths[k].suffix}\n" for k in keys))
    with atomic_write(out / "results.json") as handle:
        json.dump(results, handle, indent=2)
    report = write_report(results, rough_md, analysis_md, out)

    print(f"\nWIDER FACE val, {describe(results)}: {len(keys):,} images, official protocol")
    print_markdown(official_table(results))
    if rough_md:
        print("\nrough-detection protocols")
        print_markdown(rough_md)
    if args.analyze:
        fps = results["analysis"]["false_positives"]
        print(f"\nerror analysis at score >= {DEPLOY_THRESHOLD:g}: recall "
              f"{_pct(results['analysis']['recall'])}%, false positives "
              + ", ".join(f"{k} {v:,}" for k, v in fps.items()))
    print(f"\nwrote {out / 'results.json'}, {report} (plots beside it); predictions in {pred_dir}")
    return results


# ----------------------------------------------------------------------------- grid
def family_key(model: Path) -> str:
    """det_500m for det_500m.onnx, det_500m_640x640.onnx and every scrfd500m_* export of it."""
    import speed_test

    return speed_test.family_of(model)


def add_float32_drop(rows: list[dict]) -> None:
    """'vs float32' (E / M / H AP points) on every row that has a float32 row of the same
    model and input size beside it in the grid."""
    float32 = {(r["_family"], r["Input shape"]): r for r in rows if r["Precision"] == "float32"}
    if not any(r["Precision"] != "float32" and (r["_family"], r["Input shape"]) in float32
               for r in rows):
        return
    for row in rows:
        base = float32.get((row["_family"], row["Input shape"]))
        if base is None or base is row or "n/a" in (row["Hard"], base["Hard"]):
            row["vs float32"] = "-"
        else:
            row["vs float32"] = " / ".join(f"{float(row[k]) - float(base[k]):+.2f}"
                                           for k in ("Easy", "Medium", "Hard"))


def run_grid(args: argparse.Namespace, out: Path) -> None:
    """Every --model at every --size (fixed-size exports at their own size): one table."""
    rows = []
    for model in args.model:
        fixed = fixed_input_hw(model)
        sizes = [fixed] if fixed else (args.size or [DEFAULT_SIZE])
        if fixed and args.size and fixed not in args.size:
            print(f"note: {model.name} is fixed at {fixed[0]}x{fixed[1]}; evaluated at that size")
        for size in sizes:
            print(f"\n=== {model.name} at {size[0]}x{size[1]}")
            results = evaluate(args, model, size, out / f"{model.stem}_{size[0]}x{size[1]}")
            rows.append({"Model": model.stem, "Input shape": f"{size[0]}x{size[1]}",
                         "Precision": results["model"]["precision"],
                         "FLOPs": f"{conv_flops(model, size) / 1e9:.2f} G",
                         "Size MB": f"{model.stat().st_size / 1e6:.2f}",
                         **{s.capitalize(): _pct(results[s]) for s in SUBSETS},
                         "Images": results["images"], "_family": family_key(model)})
    add_float32_drop(rows)
    images = sorted({row["Images"] for row in rows})
    head = [k for k in rows[0] if k != "Images" and not k.startswith("_")]
    md = ["| " + " | ".join(head) + " |",
          "|" + " --- |" * 3 + " ---: |" * (len(head) - 3)]
    md += ["| " + " | ".join(str(row[k]) for k in head) + " |" for row in rows]
    for row in rows:
        del row["_family"]
    source = str(args.images_list) if args.images_list else str((args.wider or DEFAULT_WIDER)
                                                               / IMAGES_DIR)
    md += ["", f"WIDER FACE val, {' / '.join(f'{n:,}' for n in images)} of 3,226 images "
           f"({source}); official protocol (IoU 0.5, VOC AP in %), ground truth restricted to "
           f"the images evaluated; inference: letterbox, score >= {args.score_threshold:g}, NMS "
           f"{args.nms_threshold:g}. FLOPs: 2 x multiply-adds of the convolutions."
           + (" vs float32: AP change against the float32 row of the same model and input size "
              "(Easy / Medium / Hard, points)." if "vs float32" in head else "")]
    with atomic_write(out / "metrics.md") as handle:
        handle.write("\n".join(md) + "\n")
    with atomic_write(out / "metrics.csv") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print()
    print_markdown(md[:2 + len(rows)])
    print(f"\nwrote {out / 'metrics.md'} and {out / 'metrics.csv'}")


# ----------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Evaluate SCRFD face detectors on WIDER FACE val (official AP, rough-detection "
                    "protocols, error analysis, metrics grid).")
    parser.add_argument("--model", type=Path, action="append", default=[],
                        help=".onnx or .tflite detector (repeat with --grid)")
    parser.add_argument("--detector", default=None, metavar="NAME",
                        help="evaluate another face detector from peers.py instead of --model "
                             "(blazeface_short, blazeface_full, yunet, haar, seed_tflite, "
                             "thirdparty_tflite, insightface), at its authors' input size and "
                             "its own low evaluation threshold")
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
    parser.add_argument("--grid", action="store_true",
                        help="evaluate every --model at every --size and write OUT/metrics.md "
                             "and metrics.csv")
    parser.add_argument("--score-threshold", type=float, default=SCORE_THRESHOLD,
                        help="keep detections scoring at least this (default %(default)s, the "
                             "SCRFD paper's VGA protocol)")
    parser.add_argument("--nms-threshold", type=float, default=NMS_THRESHOLD,
                        help="NMS IoU threshold (default %(default)s)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="inference threads (default: all %(default)s cores)")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    if args.predictions is not None and not args.predictions.is_dir():
        raise UserError(f"predictions folder not found: {args.predictions}")
    for model in args.model:
        if not model.is_file():
            raise UserError(f"model not found: {model}")
    if args.grid:
        if not args.model:
            raise UserError("--grid needs at least one --model")
        run_grid(args, args.out or DEFAULT_OUT / "grid")
        return
    if args.detector:
        if args.model or args.predictions or args.grid:
            raise UserError("give either --detector or --model / --predictions / --grid")
        out = args.out or DEFAULT_OUT / args.detector
        evaluate(args, args.detector, None, out)
        return
    if len(args.model) > 1 or len(args.size) > 1:
        raise UserError("several --model or --size values need --grid")
    if args.model and args.predictions:
        raise UserError("give either --model or --predictions, not both")
    if not args.model and args.predictions is None and not (args.analyze and args.out):
        raise UserError("give --model (or --predictions), or --analyze --out a finished run")
    model = args.model[0] if args.model else None
    size = args.size[0] if args.size else None
    if model is not None and size is None:
        size = fixed_input_hw(model) or DEFAULT_SIZE
    out = args.out
    if out is None:
        out = DEFAULT_OUT / (f"{model.stem}_{size[0]}x{size[1]}" if model
                             else args.predictions.resolve().name)
    evaluate(args, model, size, out)


if __name__ == "__main__":
    cli(main)
