"""Error analysis of a WIDER FACE evaluation: which faces a detector misses (by size and by
WIDER attribute) and what its false positives are (duplicates, poorly placed boxes,
background), with plots, galleries of the worst cases, and a markdown section for report.md.

Every annotated face counts here (none ignored, unlike the official protocol); predictions
are matched one-to-one in score order at IoU >= 0.5, and misses / false positives are those
at the operating score, the threshold an application would keep detections at (scrfd.py's
photo default unless told otherwise; lower for anonymising, where a miss costs more).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..defaults import EVAL_SCORE_THRESHOLD, SCORE_THRESHOLD
from ..errors import UserError
from ..files import atomic_write, read_image
from ..tables import markdown_table, pyplot, save_figure
from .dataset import ATTRIBUTES, GroundTruth, load_attributes
from .metrics import OFFICIAL_IOU, Matcher, percent, plain_iou

POOR_IOU = 0.1  # a false positive with IoU 0.1-0.5 to some face is poorly localised
SIZE_BINS = (0, 8, 16, 32, 64, 128, 256)  # face height bins in pixels (last one open-ended)
ATTRIBUTE_MIN_HEIGHT = 32  # miss rates per attribute also for faces this tall: blur, occlusion
# and the rest come with smallness, which this separates out
FALSE_POSITIVE_KINDS = ("duplicate", "poor localisation", "background")
GALLERY_SIZE = 24  # crops in each gallery of worst misses / false positives
TILE = 160  # gallery crop side in pixels


def size_bin_labels() -> list[str]:
    edges = list(SIZE_BINS)
    return [f"{a}-{b}" for a, b in zip(edges, edges[1:])] + [f">={edges[-1]}"]


@dataclass
class Matches:
    """Every face, and every false positive at the operating score, over all images."""

    heights: np.ndarray  # (F,) face heights in pixels
    attributes: np.ndarray  # (F, 6) WIDER attributes, ATTRIBUTES order
    face_score: np.ndarray  # (F,) score of the prediction that found the face, -inf if none
    face_ref: list[tuple[str, int]]  # (image, face index) per face
    fp_kind: np.ndarray  # (P,) index into FALSE_POSITIVE_KINDS
    fp_score: list[float]
    fp_ref: list[tuple[str, int]]  # (image, prediction index) per false positive


def match_faces(preds: dict[str, np.ndarray], gt: GroundTruth, keys: list[str],
                operating_score: float) -> Matches:
    """Greedy score-order matching at IoU >= 0.5 per image, every face counting; false
    positives are kept from `operating_score` up."""
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
            false = np.flatnonzero((status == 0) & (pred[:, 4] >= operating_score))
            fp_kind += np.where(top[false] >= OFFICIAL_IOU, 0,
                                np.where(top[false] >= POOR_IOU, 1, 2)).tolist()
            fp_score += pred[false, 4].tolist()
            fp_ref += [(key, int(i)) for i in false]
        face_score.append(best_score)
    return Matches(np.concatenate(heights), np.concatenate(attrs), np.concatenate(face_score),
                   face_ref, np.array(fp_kind, np.int64), fp_score, fp_ref)


def summarize(matches: Matches, operating_score: float) -> dict:
    """Recall by face size, miss rate by attribute, false positives by kind (results.json), a
    face counting as found when its prediction scores at least `operating_score`."""
    heights, attrs = matches.heights, matches.attributes
    found = matches.face_score >= operating_score
    found_any = matches.face_score > -np.inf
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
    false_positives = {kind: int((matches.fp_kind == i).sum())
                       for i, kind in enumerate(FALSE_POSITIVE_KINDS)}
    return {"threshold": operating_score, "iou": OFFICIAL_IOU, "faces": int(len(heights)),
            "recall": float(found.mean()) if len(found) else None,
            "false_positives": false_positives, "misses_by_size": by_size,
            "misses_by_attribute": by_attr}


def analyze(preds: dict[str, np.ndarray], gt: GroundTruth, keys: list[str],
            paths: dict[str, Path], out: Path, operating_score: float = SCORE_THRESHOLD
            ) -> tuple[dict, list[str]]:
    """Misses by size and attribute, false positives by kind, plots and galleries into OUT,
    all at `operating_score` (default: scrfd.py's photo threshold).

    Returns the summary for results.json and the markdown section for report.md.
    """
    load_attributes(gt)
    matches = match_faces(preds, gt, keys, operating_score)
    summary = summarize(matches, operating_score)
    plot_recall_by_size(summary["misses_by_size"], operating_score, out / "recall_by_size.png")
    plot_miss_rates(summary["misses_by_attribute"], operating_score,
                    out / "miss_rate_by_attribute.png")
    made = write_galleries(matches, preds, gt, paths, out, operating_score)
    found_any = float((matches.face_score > -np.inf).mean()) if len(matches.face_score) else None
    return summary, report_lines(summary, len(keys), found_any, made)


# ----------------------------------------------------------------------------- galleries
def write_galleries(matches: Matches, preds: dict[str, np.ndarray], gt: GroundTruth,
                    paths: dict[str, Path], out: Path, operating_score: float) -> list[str]:
    """The largest faces missed and the highest-scoring false positives at the operating
    score; the files written."""
    heights, attrs = matches.heights, matches.attributes
    missed = np.flatnonzero(~(matches.face_score >= operating_score))
    worst_misses = missed[np.argsort(-heights[missed], kind="stable")][:GALLERY_SIZE]
    worst_fps = np.argsort(-np.array(matches.fp_score), kind="stable")[:GALLERY_SIZE]
    face_ref, fp_ref = matches.face_ref, matches.fp_ref
    galleries = {
        "gallery_misses.jpg": [(face_ref[i][0], gt.boxes[face_ref[i][0]][face_ref[i][1]],
                                f"h={heights[i]:.0f} " + " ".join(
                                    f"{n[:3]}={attrs[i, c]}" for c, n in enumerate(ATTRIBUTES)
                                    if attrs[i, c] and n != "invalid"))
                               for i in worst_misses],
        "gallery_false_positives.jpg": [
            (fp_ref[i][0], preds[fp_ref[i][0]][fp_ref[i][1], :4],
             f"{FALSE_POSITIVE_KINDS[matches.fp_kind[i]][:10]} {matches.fp_score[i]:.2f}")
            for i in worst_fps]}
    made = []
    for name, items in galleries.items():
        if items and write_gallery(items, preds, gt, paths, out / name, operating_score):
            made.append(name)
    return made


def write_gallery(items: list, preds: dict[str, np.ndarray], gt: GroundTruth,
                  paths: dict[str, Path], path: Path, operating_score: float,
                  columns: int = 6) -> bool:
    """Crops around each box (red), with faces (green) and the predictions kept at the
    operating score (yellow) drawn.

    Images that cannot be read are left out: a gallery is an illustration, not a result.
    """
    tiles = []
    for key, box, caption in items:
        if key not in paths or not paths[key].is_file():
            continue
        try:
            image = read_image(paths[key])
        except (UserError, cv2.error, MemoryError):
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
        for b in pred[pred[:, 4] >= operating_score, :4]:
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
def plot_recall_by_size(rows: list[dict], operating_score: float, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    labels = [r["height"] for r in rows]
    for key, label in (("recall", f"score >= {operating_score:g}"),
                       ("recall_any_score", f"any score (>= {EVAL_SCORE_THRESHOLD:g})")):
        ax.plot(labels, [np.nan if r[key] is None else r[key] for r in rows], marker="o", label=label)
    for i, r in enumerate(rows):
        ax.annotate(f"{r['faces']:,}", (i, 0.02), ha="center", fontsize=7, color="gray")
    ax.set(xlabel="face height (px, gray: number of faces)", ylabel="recall", ylim=(0, 1.02),
           title="Recall against face size")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def plot_miss_rates(rows: list[dict], operating_score: float, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 4.5))
    labels = [f"{r['attribute']}: {r['value']}" for r in rows]
    x = np.arange(len(rows))
    for offset, key, label in ((-0.2, "miss_rate", "all faces"),
                               (0.2, "tall_miss_rate", f"faces >= {ATTRIBUTE_MIN_HEIGHT} px")):
        ax.bar(x + offset, [np.nan if r[key] is None else r[key] for r in rows], 0.4, label=label)
    ax.set_xticks(x, labels, fontsize=8, rotation=40, ha="right")
    ax.set(ylabel=f"miss rate at score >= {operating_score:g}", ylim=(0, 1.15),
           title="Miss rate per WIDER attribute")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", ncol=2)
    save_figure(fig, path)


# ----------------------------------------------------------------------------- markdown
def report_lines(summary: dict, images: int, recall_any_score: float | None,
                 galleries: list[str]) -> list[str]:
    """The error-analysis section of report.md, at the summary's operating score."""
    def one_decimal(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.1f}%"
    by_size, by_attr = summary["misses_by_size"], summary["misses_by_attribute"]
    false_positives, operating_score = summary["false_positives"], summary["threshold"]
    md = [f"## Error analysis (score >= {operating_score:g}, IoU >= {OFFICIAL_IOU:g})", "",
          f"All {summary['faces']:,} annotated faces of the {images:,} images count (none "
          f"ignored); predictions are matched one-to-one in score order. Recall at score >= "
          f"{operating_score:g}: {one_decimal(summary['recall'])}; with every prediction "
          f"(score >= {EVAL_SCORE_THRESHOLD:g}): {one_decimal(recall_any_score)}.", "",
          "### Misses by face height (pixels in the original image)", ""]
    md += markdown_table(["height", "faces", "missed", "recall", "recall, any score"],
                         [[r["height"], f"{r['faces']:,}", f"{r['missed']:,}",
                           percent(r["recall"]), percent(r["recall_any_score"])]
                          for r in by_size])
    md += ["", "![recall by face size](recall_by_size.png)", "",
           "### Misses by WIDER attribute", ""]
    md += markdown_table(["attribute", "value", "faces", "miss rate",
                          f"faces >= {ATTRIBUTE_MIN_HEIGHT} px",
                          f"miss rate >= {ATTRIBUTE_MIN_HEIGHT} px"],
                         [[r["attribute"], r["value"], f"{r['faces']:,}", percent(r["miss_rate"]),
                           f"{r['tall_faces']:,}", percent(r["tall_miss_rate"])]
                          for r in by_attr], left=2)
    total_fp = sum(false_positives.values())
    meaning = {"duplicate": f"IoU >= {OFFICIAL_IOU:g} with a face already found",
               "poor localisation": f"IoU {POOR_IOU:g}-{OFFICIAL_IOU:g} with a face",
               "background": f"IoU < {POOR_IOU:g} with every face"}
    md += ["", "![miss rate by attribute](miss_rate_by_attribute.png)", "",
           "### False positives", "",
           f"{total_fp:,} false positives at score >= {operating_score:g} "
           f"({total_fp / images:.2f} per image).", ""]
    md += markdown_table(["kind", "count", "share"],
                         [[f"{kind} ({meaning[kind]})", f"{n:,}",
                           percent(n / total_fp if total_fp else None)]
                          for kind, n in false_positives.items()])
    if "gallery_misses.jpg" in galleries:
        md += ["", "### Worst misses (largest faces missed; red: the face, green: other faces, "
               "yellow: predictions)", "", "![worst misses](gallery_misses.jpg)"]
    if "gallery_false_positives.jpg" in galleries:
        md += ["", "### Worst false positives (highest scores; red: the prediction, green: faces)",
               "", "![worst false positives](gallery_false_positives.jpg)"]
    return md
