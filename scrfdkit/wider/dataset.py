"""WIDER FACE files: the val ground truth (.mat boxes and the bbx_gt.txt attributes), which
images to evaluate, prediction files in the official <event>/<image>.txt format, and the
evaluation's results.json (writer and readers, one home for its form).

evaluate_widerface.py writes one results.json per evaluated model; compare_detectors.py and
speed_test.py read them back to put accuracy beside speed.
"""
from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..errors import UserError
from ..files import IMAGE_SUFFIXES, atomic_write, read_image
from ..timing import Profile

IMAGES_DIR = "WIDER_val/images"  # <event>/<image>.jpg
GT_MATS = {"all": "ground_truth/wider_face_val.mat", "easy": "ground_truth/wider_easy_val.mat",
           "medium": "ground_truth/wider_medium_val.mat", "hard": "ground_truth/wider_hard_val.mat"}
GT_TXT = "wider_face_split/wider_face_val_bbx_gt.txt"  # same boxes, with attributes
SUBSETS = ("easy", "medium", "hard")
ATTRIBUTES = {  # column order of wider_face_val_bbx_gt.txt after x y w h; values from readme.txt
    "blur": ("clear", "normal", "heavy"), "expression": ("typical", "exaggerate"),
    "illumination": ("normal", "extreme"), "invalid": ("valid", "invalid"),
    "occlusion": ("none", "partial", "heavy"), "pose": ("typical", "atypical")}
PREDICTIONS_DIR = "predictions"  # OUT/predictions/<event>/<image>.txt
PREDICTION_SETTINGS = "predictions.json"  # beside predictions/: the public code lists that folder


# ----------------------------------------------------------------------------- ground truth
@dataclass
class GroundTruth:
    """Official WIDER FACE val faces, keyed 'event/image' (no extension), in the official order."""

    root: Path
    boxes: dict[str, np.ndarray]  # (M, 4) float64 x y w h
    keep: dict[str, dict[str, np.ndarray]]  # subset -> (M,) bool: faces that count; others ignored
    invalid: dict[str, np.ndarray]  # (M,) bool: annotators marked the face invalid
    attributes: dict[str, np.ndarray] = field(default_factory=dict)  # (M, 6), see load_attributes


def load_mat(root: Path, name: str) -> dict:
    """One of the four official .mat files (a key of GT_MATS); UserError when absent or damaged."""
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
    full = load_mat(root, "all")
    subsets = {name: load_mat(root, name)["gt_list"].ravel() for name in SUBSETS}
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


# ----------------------------------------------------------------------------- images
def image_key(text: str) -> str | None:
    """'0--Parade/0_Parade_x.jpg' (or a longer path) -> '0--Parade/0_Parade_x'."""
    parts = text.strip().replace("\\", "/").split("/")
    if len(parts) < 2 or not parts[-1] or not parts[-2]:
        return None
    name = parts[-1]
    if Path(name).suffix.lower() in IMAGE_SUFFIXES:
        name = name[: -len(Path(name).suffix)]
    return f"{parts[-2]}/{name}"


def is_inside(path: Path, folder: Path) -> bool:
    """`path` is `folder` or lies below it (both resolved, so links and '..' do not fool it)."""
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def images_present(images_dir: Path, exclude: Path | None = None) -> dict[str, Path]:
    """Every <event>/<image> under the images folder, leaving out an output folder nested in it
    (its plots and galleries are images too, and must not be evaluated as WIDER photos)."""
    nested = exclude is not None and is_inside(exclude, images_dir) and \
        exclude.resolve() != images_dir.resolve()
    paths = {}
    for event in sorted(p for p in images_dir.iterdir() if p.is_dir()):
        if nested and is_inside(event, exclude):
            continue
        for path in sorted(event.iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                paths[f"{event.name}/{path.stem}"] = path
    return paths


def select_images(gt: GroundTruth, images_list: Path | None, need_files: bool,
                  predictions: Path | None = None, exclude: Path | None = None
                  ) -> tuple[list[str], dict[str, Path]]:
    """The images to evaluate (a list file, else those present), in the official order.

    `exclude`: an output folder whose files are never taken for images.
    """
    images_dir = gt.root / IMAGES_DIR
    if exclude is not None and (exclude.resolve() == images_dir.resolve() or (
            exclude.resolve().parent == images_dir.resolve()
            and any(key.startswith(f"{exclude.name}/") for key in gt.boxes))):
        raise UserError(f"--out {exclude} is the WIDER FACE images folder or one of its events; "
                        "its plots would be read back as photos: choose another folder")
    paths: dict[str, Path] = {}
    if images_list:
        images_list = images_list_option(images_list)
        try:
            listing = images_list.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(f"cannot read images list {images_list}: {err}") from None
        for number, line in enumerate(listing, 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            key = image_key(line)
            if key is None:
                raise UserError(f"{images_list}:{number}: expected <event>/<image>.jpg, got {line!r}")
            suffix = Path(line.strip()).suffix
            paths[key] = images_dir / f"{key}{suffix if suffix.lower() in IMAGE_SUFFIXES else '.jpg'}"
    elif images_dir.is_dir():
        paths = images_present(images_dir, exclude)
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


def images_list_option(path: Path | None) -> Path | None:
    """--images-list, checked before any work: any readable file, pipes (<(...), /dev/stdin)
    included. A pipe can be read only once, so what it gave is kept in a temporary file for
    the rest of the run (every evaluation of a grid reads the list again)."""
    if path is None or path.is_file():
        return path
    if not path.exists():
        raise UserError(f"images list not found: {path}")
    if path.is_dir():
        raise UserError(f"--images-list {path} is a folder; give a file with one "
                        "<event>/<image>.jpg a line")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"cannot read images list {path}: {err.strerror or err}") from None
    fd, copy = tempfile.mkstemp(prefix="images-list-", suffix=".txt")
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    atexit.register(remove_quietly, copy)
    return Path(copy)


def remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def write_images_list(path: Path, keys: list[str], paths: dict[str, Path]) -> None:
    """The images evaluated, one <event>/<image>.jpg a line: --images-list reads it back."""
    with atomic_write(path) as handle:
        handle.write("".join(f"{key}{paths[key].suffix}\n" for key in keys))


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


def predict_images(detector, keys: list[str], paths: dict[str, Path], pred_dir: Path,
                   name: str) -> tuple[list[str], Profile]:
    """Run `detector` (anything with .detect(image) -> Detections) on each image and write its
    prediction file. An image that cannot be read or run is skipped with a one-line warning,
    never stopping the run; returns the keys skipped and the time spent per image ("image")."""
    from tqdm import tqdm

    skipped: list[str] = []
    profile = Profile()
    for key in tqdm(keys, desc=f"detect {name}", unit="img", dynamic_ncols=True,
                    mininterval=1.0, disable=not keys):
        with profile("image"):
            try:
                dets = detector.detect(read_image(paths[key]))
            except (UserError, cv2.error, MemoryError) as err:
                tqdm.write(f"warning: skipped: {image_failure(paths[key], err)}", file=sys.stderr)
                skipped.append(key)
                continue
            write_prediction(prediction_path(pred_dir, key), key, dets.boxes, dets.scores)
    return skipped, profile


def image_failure(path: Path, err: BaseException) -> str:
    """One line for an image that could not be read or run (OpenCV's messages span lines and
    start with its source file; the reason is after 'error: ')."""
    if isinstance(err, UserError):
        return str(err)
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return f"cannot read image {path}: {text.split(' error: ')[-1]}"


def stale_predictions(pred_dir: Path, keys: list[str]) -> int:
    """Prediction files in the folder for images outside this evaluation."""
    wanted = set(keys)
    return sum(1 for p in pred_dir.glob("*/*.txt") if f"{p.parent.name}/{p.stem}" not in wanted)


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


def prepare_prediction_folder(out: Path, settings: dict, model_path: Path) -> list[str]:
    """Make OUT ready for a run with these settings (detector, model checksum, size, thresholds).

    Prediction files an earlier run left with the same settings are kept, to be reused; with
    other settings they are deleted, and the settings that changed are returned. A folder of
    prediction files this script did not make is never touched.
    """
    pred_dir, settings_path = out / PREDICTIONS_DIR, out / PREDICTION_SETTINGS
    if not settings_path.is_file() and any(pred_dir.glob("*/*.txt")):
        raise UserError(f"{pred_dir} holds prediction files this script did not make; choose "
                        "another --out, or score them with --predictions")
    try:
        old = json.loads(settings_path.read_text()) if settings_path.is_file() else {}
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {settings_path}: {err}; delete it and {pred_dir}, or "
                        "choose another --out") from None
    if old.get("detector") not in (None, settings["detector"]):
        raise UserError(f"--out {out} holds the evaluation of {old['detector']}, which this "
                        f"run's of {settings['detector']} would replace: give another --out "
                        "(an evaluation folder belongs to one detector)")
    changed = []
    if {k: old.get(k) for k in settings} != settings and pred_dir.is_dir():
        changed = [k for k in settings if old.get(k) != settings[k]]
        shutil.rmtree(pred_dir)
    for leftover in pred_dir.glob("*/.*.part"):  # from a run killed mid-write
        leftover.unlink()
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(settings_path) as handle:
        json.dump({**settings, "model": str(model_path.resolve())}, handle, indent=2)
    return changed


# ----------------------------------------------------------------------------- results.json
def add_wider_arguments(parser, default: Path | None, verb: str = "evaluate") -> None:
    """--wider and --images-list, shared by evaluate_widerface.py and compare_detectors.py."""
    parser.add_argument("--wider", type=Path, default=default,
                        help=f"WIDER FACE root with {IMAGES_DIR}/, ground_truth/ and "
                             f"wider_face_split/ (default {default or 'data/, where `make data` links it'})")
    parser.add_argument("--images-list", type=Path, default=None,
                        help=f"{verb} only these images (<event>/<image>.jpg per line, like "
                             "dev_images.txt); default: every image present under --wider")
