"""The close-up rough protocol: does the detector still find a face that fills the frame?

WIDER FACE has few faces larger than a third of the photo, while webcams, selfies and
portraits are mostly that; SCRFD is known to lose confidence there (insightface#1518,
#2877). So we make close-ups from WIDER FACE val: crops around one annotated face, sized so
that it fills 30-50 %, 50-70 % or 70-90 % of the crop's height, and ask whether the
detector finds that face (IoU >= 0.5) at the score an application keeps (0.5 for photos).

The faces are clear ones: in the Easy subset, valid, unoccluded, not heavily blurred, in a
typical pose. Crops
are landscape 4:3 camera frames at least CLOSEUP_MIN_FRAME pixels tall (half the models'
usual 480-pixel input height: a smaller crop would be a blurred thumbnail once upscaled,
not a close-up photo), the face placed at random but whole inside, the crop fully inside
the photo (a face without room for the crop is skipped for that bucket). A fixed seed makes
the crops the same in every run, so models and modes compare on the same frames.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..defaults import EVAL_SCORE_THRESHOLD, NMS_THRESHOLD
from ..errors import UserError
from ..detector import SCRFD
from ..files import atomic_write, read_image
from ..tables import markdown_table, write_markdown
from .dataset import GroundTruth, load_attributes, load_ground_truth, select_images

CLOSEUP_BUCKETS = ((0.3, 0.5), (0.5, 0.7), (0.7, 0.9))  # face height / crop height
CLOSEUP_ASPECT = 4 / 3  # crop width / height: a landscape camera frame
CLOSEUP_MIN_FRAME = 240  # px: the smallest crop height
CLOSEUP_PER_BUCKET = 200  # crops per bucket
CLOSEUP_SEED = 0
CLOSEUP_IOU = 0.5  # the official protocol's match


@dataclass(frozen=True)
class CloseUp:
    """One crop: the photo, the bucket, the crop in photo pixels, the face in crop pixels."""

    key: str
    bucket: int
    crop: tuple[int, int, int, int]  # x0, y0, x1, y1 in the photo
    face: tuple[float, float, float, float]  # x1, y1, x2, y2 in the crop


def closeup_faces(gt: GroundTruth, keys: list[str]) -> list[tuple[str, int]]:
    """(image, face index) of every clear face fit for a close-up, in the official order."""
    if not gt.attributes:
        load_attributes(gt)
    faces = []
    for key in keys:
        blur, occlusion, pose = (gt.attributes[key][:, i] for i in (0, 4, 5))
        fit = (gt.keep[key]["easy"] & ~gt.invalid[key] & (occlusion == 0) & (blur < 2) & (pose == 0)
               & (gt.boxes[key][:, 3] >= CLOSEUP_MIN_FRAME * CLOSEUP_BUCKETS[0][0]))
        faces += [(key, int(i)) for i in np.flatnonzero(fit)]
    return faces


def place_crop(face_xywh: np.ndarray, image_hw: tuple[int, int], fraction: float,
               rng: np.random.Generator) -> tuple[int, int, int, int] | None:
    """A 4:3 crop in which the face fills `fraction` of the height, the face whole and at a
    random place inside it, the crop inside the photo; None when the photo has no room."""
    x, y, w, h = (float(v) for v in face_xywh)
    crop_h = int(round(h / fraction))
    crop_w = int(round(crop_h * CLOSEUP_ASPECT))
    height, width = image_hw
    if crop_h < CLOSEUP_MIN_FRAME or crop_h > height or crop_w > width or w > crop_w:
        return None
    lows = (max(0.0, x + w - crop_w), max(0.0, y + h - crop_h))
    highs = (min(x, width - crop_w), min(y, height - crop_h))
    if lows[0] > highs[0] or lows[1] > highs[1]:
        return None
    x0, y0 = (int(np.floor(rng.uniform(lo, hi))) for lo, hi in zip(lows, highs))
    return x0, y0, x0 + crop_w, y0 + crop_h


def best_score(dets, face: tuple[float, float, float, float]) -> float:
    """The highest score of a detection matching the face at IoU >= 0.5; 0 when none does."""
    if not len(dets):
        return 0.0
    b = dets.boxes
    inter = (np.clip(np.minimum(b[:, 2], face[2]) - np.maximum(b[:, 0], face[0]), 0, None)
             * np.clip(np.minimum(b[:, 3], face[3]) - np.maximum(b[:, 1], face[1]), 0, None))
    union = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) + (face[2] - face[0]) * (face[3] - face[1])
    match = inter >= CLOSEUP_IOU * (union - inter)
    return float(dets.scores[match].max()) if match.any() else 0.0


def run_closeups(detector, modes: dict[str, bool], gt: GroundTruth, keys: list[str],
                 paths: dict[str, Path], per_bucket: int = CLOSEUP_PER_BUCKET,
                 seed: int = CLOSEUP_SEED) -> dict:
    """The detector's best matching score on the same crops in every mode (name: tile or
    not): {"crops": [...], "scores": {mode: [...]}, "passes": {mode: model runs},
    "skipped": [photos that could not be read]}."""
    rng = np.random.default_rng(seed)
    faces = closeup_faces(gt, keys)
    if not faces:
        raise UserError("no face fit for a close-up among the images evaluated")
    crops: list[CloseUp] = []
    scores: dict[str, list[float]] = {mode: [] for mode in modes}
    passes = dict.fromkeys(modes, 0)
    skipped: set[str] = set()
    wanted = [per_bucket] * len(CLOSEUP_BUCKETS)
    for face_index in rng.permutation(len(faces)):
        if not any(wanted):
            break
        key, index = faces[face_index]
        try:
            image = read_image(paths[key])
        except UserError as err:  # a damaged photo costs its faces, not the run
            print(f"warning: skipped: {err}", file=sys.stderr)
            skipped.add(key)
            continue
        for bucket, (low, high) in enumerate(CLOSEUP_BUCKETS):
            box = gt.boxes[key][index]
            crop = place_crop(box, image.shape[:2], rng.uniform(low, high), rng) \
                if wanted[bucket] else None
            if crop is None:
                continue
            wanted[bucket] -= 1
            x0, y0, x1, y1 = crop
            face = (box[0] - x0, box[1] - y0, box[0] + box[2] - x0, box[1] + box[3] - y0)
            crops.append(CloseUp(key, bucket, crop, tuple(float(v) for v in face)))
            frame = np.ascontiguousarray(image[y0:y1, x0:x1])
            for mode, tile in modes.items():
                scores[mode].append(best_score(detector.detect(frame, tile=tile), face))
                passes[mode] += detector.passes
    if not crops:
        raise UserError("no close-up crop could be made from the images evaluated")
    return {"crops": crops, "scores": scores, "passes": passes, "skipped": sorted(skipped)}


def closeup_rows(run: dict, operating_score: float) -> list[dict]:
    """Per bucket: crops, and for each mode the recall at the operating score, the median
    best score, and the model passes per crop."""
    buckets = np.array([crop.bucket for crop in run["crops"]])
    heights = np.array([crop.crop[3] - crop.crop[1] for crop in run["crops"]])
    rows = []
    for bucket, (low, high) in enumerate(CLOSEUP_BUCKETS):
        mine = buckets == bucket
        if not mine.any():
            continue
        row = {"bucket": f"{low:.0%}-{high:.0%}", "crops": int(mine.sum()),
               "median_frame_height": int(np.median(heights[mine]))}
        for mode, scores in run["scores"].items():
            best = np.asarray(scores)[mine]
            row[mode] = {"recall": float((best >= operating_score).mean()),
                         "median_score": float(np.median(best))}
        rows.append(row)
    return rows


def closeup_table(rows: list[dict], modes: list[str]) -> list[str]:
    header = ["Face height / frame", "Crops", "Median frame px"] + [
        f"{mode} {what}" for mode in modes for what in ("recall", "median score")]
    body = [[r["bucket"], r["crops"], r["median_frame_height"]]
            + [f"{r[m][k]:.3f}" for m in modes for k in ("recall", "median_score")] for r in rows]
    return markdown_table(header, body)


def closeup_protocol(model: Path, size: tuple[int, int] | None, wider: Path,
                     images_list: Path | None, out: Path, operating_score: float,
                     tile_face: int, threads: int) -> list[str]:
    """evaluate_widerface.py --closeup: the model single-pass and tiled on the same crops;
    writes OUT/closeup.md and closeup.json and returns the table.

    Detection runs at score 0.02 so the best score of each face is known; greedy NMS keeps
    the same faces above any higher score, so recall at the operating score is the same as
    a run at that score.
    """
    gt = load_ground_truth(wider)
    keys, paths = select_images(gt, images_list, need_files=True, exclude=out)
    detector = SCRFD(model, size, EVAL_SCORE_THRESHOLD, NMS_THRESHOLD, threads=threads,
                     tile_face=tile_face)
    modes = {"single pass": False, "tiled": True}
    started = time.perf_counter()
    run = run_closeups(detector, modes, gt, keys, paths)
    rows = closeup_rows(run, operating_score)
    hw = detector.input_hw
    passes = {mode: count / len(run["crops"]) for mode, count in run["passes"].items()}
    lines = closeup_table(rows, list(modes)) + [
        "", f"{model.name} at {hw[0]}x{hw[1]} ({detector.runner.precision}, "
            f"{detector.runner.backend}); {len(run['crops'])} crops of {len(keys):,} WIDER FACE "
            f"val images ({images_list or wider}): landscape 4:3 crops around one clear face "
            f"(Easy, valid, unoccluded, typical pose) filling that share of the crop's height, "
            f"crops at least {CLOSEUP_MIN_FRAME} px tall, seed {CLOSEUP_SEED}. Recall: the face "
            f"found at IoU >= {CLOSEUP_IOU:g} with score >= {operating_score:g} (NMS "
            f"{NMS_THRESHOLD:g}); median score: of the best matching detection (0 when none). "
            "Model passes per crop: " + ", ".join(f"{m} {p:.2f}" for m, p in passes.items())
            + f" (tiled: faces up to {tile_face} px whole in a tile; crops no larger than the "
            "input get no tiles, and a close-up pass runs when a face may fill half the input)."
            + (f" {len(run['skipped'])} unreadable photo(s) skipped." if run["skipped"] else "")]
    out.mkdir(parents=True, exist_ok=True)
    write_markdown(out / "closeup.md", [f"# Close-up recall: {model.name}", ""] + lines)
    with atomic_write(out / "closeup.json") as handle:
        json.dump({"model": str(model), "input_size": list(hw), "operating_score": operating_score,
                   "tile_face": tile_face, "rows": rows, "passes_per_crop": passes,
                   "skipped_images": run["skipped"],
                   "seconds": round(time.perf_counter() - started, 1),
                   "crops": [{"image": c.key, "bucket": c.bucket, "crop": list(c.crop),
                              "face": list(c.face), **{m: run["scores"][m][i] for m in modes}}
                             for i, c in enumerate(run["crops"])]}, handle, indent=1)
    return lines
