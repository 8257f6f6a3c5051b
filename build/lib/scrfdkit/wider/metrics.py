"""WIDER FACE metrics: the official AP (the public evaluation code's rules, vectorised) and the
rough-detection protocols (plain IoU or centre hits, small faces ignored, FPPI, precision and
recall at an operating score), with their tables and plot, and the AP change of a metrics grid
against float32.

The official AP reproduces the public code exactly with one deliberate change: ground truth
is restricted to the images evaluated, so faces of images that are absent are not misses.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..defaults import SCORE_THRESHOLD
from ..tables import markdown_table, pyplot, save_figure
from .dataset import SUBSETS, GroundTruth

OFFICIAL_IOU = 0.5
THRESHOLDS = 1000  # score thresholds of the public code's precision-recall curve
PROTOCOLS = ("official", "rough", "rough-iou", "rough-center")
ROUGH_IOU = 0.3  # rough-iou: a prediction finds a face at IoU >= 0.3
ROUGH_MIN_HEIGHTS = (16, 32, 64)  # faces shorter than this (pixels, original image) are ignored
FPPI_POINTS = (0.1, 1.0)  # report recall at these false positives per image


def percent(value: float | None) -> str:
    """A fraction as the tables print it: 0.6894 -> '68.94', None -> 'n/a'."""
    return "n/a" if value is None else f"{100 * value:.2f}"


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


def ranking_warning(preds: dict[str, np.ndarray], keys: list[str]) -> str | None:
    """Why the scores cannot rank the predictions (all equal), or None when they can.

    AP sweeps a threshold over the scores; with a single score value every threshold keeps
    all predictions or none, so the curve collapses to one point and AP measures little.
    """
    scores = [preds[k][:, 4] for k in keys if len(preds[k])]
    if not scores:
        return None
    values = np.concatenate(scores)
    if len(values) < 2 or values.min() != values.max():
        return None
    return (f"all {len(values):,} prediction scores are {values[0]:g}: they cannot rank the "
            "predictions, so the precision-recall curve is a single point and AP says little "
            "about the detector")


def operating_score_warning(operating_score: float, score_threshold: float | None) -> str | None:
    """Why figures at the operating score are not what they claim (the predictions were cut
    at a higher score, so nothing in between is there to count), or None."""
    if score_threshold is None or operating_score >= score_threshold:
        return None
    return (f"--operating-score {operating_score:g} is below the predictions' score threshold "
            f"{score_threshold:g}: detections in between were never kept, so precision, recall "
            f"and misses are those at {score_threshold:g}")


def plot_pr(curves: dict[str, Curve], title: str, path: Path) -> None:
    """Precision against recall, one line per subset that has faces."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for subset, curve in curves.items():
        if curve.ap is not None:
            ax.plot(curve.recall, curve.precision, label=f"{subset}: AP {100 * curve.ap:.2f}")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.01), title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    save_figure(fig, path)


def official_table(results: dict) -> list[str]:
    """Faces and AP per subset, from a results.json."""
    return markdown_table(["subset", "faces", "AP"],
                          [[s.capitalize(), f"{results['faces'][s]:,}", percent(results[s])]
                           for s in SUBSETS])


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


def detection_summary(scores: np.ndarray, status: np.ndarray, positives: int, images: int,
                      operating_score: float) -> dict:
    """AP, recall at fixed false positives per image, and precision, recall and false positives
    at the operating score (the threshold an application would keep detections at)."""
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
    at_score = scores >= operating_score
    n_tp, n_fp = int(true[at_score].sum()), int((~true[at_score]).sum())
    result.update({f"precision_at_{operating_score:g}": n_tp / (n_tp + n_fp) if n_tp + n_fp else None,
                   f"recall_at_{operating_score:g}": n_tp / positives,
                   f"false_positives_at_{operating_score:g}": n_fp})
    return result


def rough_metrics(preds: dict[str, np.ndarray], gt: GroundTruth, keys: list[str], rule: str,
                  operating_score: float = SCORE_THRESHOLD) -> dict[str, dict]:
    """One rough protocol ('rough-iou' or 'rough-center') at every minimum face height, with
    precision and recall at `operating_score` (default: scrfd.py's photo threshold)."""
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
        positives[h], len(keys), operating_score) for h in ROUGH_MIN_HEIGHTS}


def rough_protocols(protocol: str) -> list[str]:
    """The rough rules a --protocol asks for ('rough' is both); none for 'official'."""
    return [] if protocol == "official" else {"rough": ["rough-iou", "rough-center"]}.get(
        protocol, [protocol])


def rough_settings(operating_score: float) -> dict:
    """The rough protocols' parameters, as results.json records them ("deploy_threshold": the
    operating score)."""
    return {"iou": ROUGH_IOU, "min_heights": list(ROUGH_MIN_HEIGHTS),
            "deploy_threshold": operating_score, "fppi": list(FPPI_POINTS)}


def rough_table(rough: dict, operating_score: float) -> list[str]:
    """One row per rule and minimum face height; `rough` was measured at `operating_score`."""
    keys = (f"recall_at_{FPPI_POINTS[0]:g}_fppi", f"recall_at_{FPPI_POINTS[1]:g}_fppi",
            f"precision_at_{operating_score:g}", f"recall_at_{operating_score:g}")
    header = ["protocol", "min height", "faces", "AP", f"recall @ {FPPI_POINTS[0]:g} FP/img",
              f"recall @ {FPPI_POINTS[1]:g} FP/img", f"precision @ {operating_score:g}",
              f"recall @ {operating_score:g}"]
    rows = [[name, height, f"{m['faces']:,}", percent(m["ap"]), *(percent(m.get(k)) for k in keys)]
            for name, by_height in rough.items() for height, m in by_height.items()]
    return markdown_table(header, rows, left=2)


# ----------------------------------------------------------------------------- grid
def add_float32_change(rows: list[dict]) -> None:
    """'vs float32' (E / M / H AP points) on every grid row that has a float32 row of the same
    model family ("_family") and input size beside it; no column when none has."""
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


# ----------------------------------------------------------------------------- report.md
def describe_run(results: dict) -> str:
    """'det_500m.onnx (float32, onnxruntime) at 640x640' from a results.json, for titles."""
    model = results.get("model")
    what = f"{Path(model['path']).name} ({model['precision']}, {model['backend']})" if model \
        else f"predictions in {results['settings']['predictions']}"
    size = results["settings"].get("input_size")
    return what + (f" at {size[0]}x{size[1]}" if size else "")


def report_lines(results: dict, analysis_md: list[str]) -> list[str]:
    """report.md: what was evaluated, the official AP, the rough protocols when run, then the
    error-analysis section (error_analysis.report_lines) when there is one."""
    s = results["settings"]
    md = [f"# WIDER FACE val: {describe_run(results)}", "",
          f"{results['images']:,} images of WIDER FACE val "
          + (f"(listed in {s['images_list']})" if s["images_list"] else f"(present in {s['wider']})")
          + "; ground truth restricted to them."
          + (f" Inference: letterbox into {s['input_size'][0]}x{s['input_size'][1]}, score >= "
             f"{s['score_threshold']:g}, NMS IoU {s['nms_threshold']:g}." if s.get("input_size") else ""),
          "", "## Official protocol", "",
          "Public WIDER FACE evaluation: IoU >= 0.5, scores min-max normalised over all "
          "predictions, 1000 thresholds, VOC-style AP (in %).", "", *official_table(results), "",
          "![precision-recall curves](pr_curves.png)", ""]
    if "rough" in results:
        operating_score = s["rough"]["deploy_threshold"]
        md += ["## Rough-detection protocols", "",
               f"Faces shorter than the minimum height, or marked invalid, are ignored. AP in %; "
               f"recall at 0.1 and 1 false positive per image; precision and recall at score >= "
               f"{operating_score:g}.", "", *rough_table(results["rough"], operating_score), ""]
    md += analysis_md
    while md and not md[-1].strip():
        md.pop()
    return md
