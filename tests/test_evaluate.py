"""Tests for evaluate_widerface.py and its library (scrfdkit.wider.dataset, wider_metrics,
error_analysis).

The official AP is checked three ways: hand-made cases whose AP is worked out below by hand,
an independent loop-based re-implementation of the public WIDER FACE evaluation
(wondervictor/WiderFace-Evaluation, evaluation.py) run on real prediction files, and the
command line end to end on a few real WIDER FACE images. Damaged input (an image whose
header claims 60000x60000 pixels, scores that cannot rank, bad options) must end in a
warning or one `error:` line, never a traceback.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import run_main, run_script, run_script_without
from scipy.io import loadmat, savemat

from scrfdkit.bench import model_stats
from scrfdkit.errors import UserError
from scrfdkit.wider import dataset as widerface
from scrfdkit.wider import evaluation
from scrfdkit.wider import metrics as wider_metrics

# Tests marked inference depend on the inference packages' versions (scipy's .mat reading,
# numpy, OpenCV, ONNX Runtime, LiteRT, matplotlib); CI runs them again in that environment.

SCRIPT = "evaluate_widerface.py"
SUBSETS = ("easy", "medium", "hard")


# ----------------------------------------------------------------------------- reference
# The public evaluation, re-written independently with its structure and its rules kept:
# get_gt_boxes / read_pred_file / get_preds / norm_score / bbox_overlaps / image_eval /
# img_pr_info / dataset_pr_info / voc_ap. The only change: images without a prediction file
# are skipped (their faces do not count), which is how we restrict ground truth.
def ref_get_gt_boxes(gt_dir: Path):
    mats = {name: loadmat(str(gt_dir / f"wider_{name}_val.mat")) for name in
            ("face", "easy", "medium", "hard")}
    full = mats["face"]
    return (full["face_bbx_list"], full["event_list"], full["file_list"],
            [mats[s]["gt_list"] for s in SUBSETS])


def ref_read_pred_file(path: Path):
    lines = path.read_text().split("\n")
    name = lines[0].rstrip("\r")
    rows = [line for line in lines[2:] if line]
    boxes = np.array([[float(v) for v in row.split(" ")] for row in rows], dtype=float)
    return name.split("/")[-1], boxes


def ref_get_preds(pred_dir: Path) -> dict:
    preds = {}
    for event in os.listdir(pred_dir):
        preds[event] = {}
        for file in os.listdir(pred_dir / event):
            name, boxes = ref_read_pred_file(pred_dir / event / file)
            preds[event][name.rstrip(".jpg")] = boxes
    return preds


def ref_norm_score(preds: dict) -> None:
    high, low = 0, 1
    for images in preds.values():
        for boxes in images.values():
            if len(boxes):
                high, low = max(np.max(boxes[:, -1]), high), min(np.min(boxes[:, -1]), low)
    for images in preds.values():
        for boxes in images.values():
            if len(boxes):
                boxes[:, -1] = (boxes[:, -1] - low) / (high - low)


def ref_bbox_overlaps(boxes: np.ndarray, query: np.ndarray) -> np.ndarray:
    b, q = boxes.tolist(), query.tolist()
    out = np.zeros((len(b), len(q)))
    for k, (qx1, qy1, qx2, qy2) in enumerate(q):
        q_area = (qx2 - qx1 + 1) * (qy2 - qy1 + 1)
        for n, (x1, y1, x2, y2) in enumerate(b):
            iw = min(x2, qx2) - max(x1, qx1) + 1
            if iw > 0:
                ih = min(y2, qy2) - max(y1, qy1) + 1
                if ih > 0:
                    union = float((x2 - x1 + 1) * (y2 - y1 + 1) + q_area - iw * ih)
                    out[n, k] = iw * ih / union
    return out


def ref_image_eval(pred, gt, ignore, iou_thresh):
    pred, gt = pred.copy(), gt.copy()
    pred_recall = np.zeros(len(pred))
    recall_list = np.zeros(len(gt))
    proposal_list = np.ones(len(pred))
    pred[:, 2] += pred[:, 0]
    pred[:, 3] += pred[:, 1]
    gt[:, 2] += gt[:, 0]
    gt[:, 3] += gt[:, 1]
    overlaps = ref_bbox_overlaps(pred[:, :4], gt)
    for h in range(len(pred)):
        best, best_index = overlaps[h].max(), overlaps[h].argmax()
        if best >= iou_thresh:
            if ignore[best_index] == 0:
                recall_list[best_index] = -1
                proposal_list[h] = -1
            elif recall_list[best_index] == 0:
                recall_list[best_index] = 1
        pred_recall[h] = len(np.where(recall_list == 1)[0])
    return pred_recall, proposal_list


def ref_img_pr_info(thresh_num, pred, proposal_list, pred_recall):
    info = np.zeros((thresh_num, 2))
    for t in range(thresh_num):
        above = np.where(pred[:, 4] >= 1 - (t + 1) / thresh_num)[0]
        if len(above):
            last = above[-1]
            info[t, 0] = len(np.where(proposal_list[: last + 1] == 1)[0])
            info[t, 1] = pred_recall[last]
    return info


def ref_dataset_pr_info(thresh_num, pr_curve, count_face):
    out = np.zeros((thresh_num, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        for i in range(thresh_num):
            out[i, 0] = pr_curve[i, 1] / pr_curve[i, 0]
            out[i, 1] = pr_curve[i, 1] / count_face
    return out


def ref_voc_ap(rec, prec):
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def ref_evaluation(pred_dir: Path, gt_dir: Path, iou_thresh: float = 0.5) -> list[float]:
    preds = ref_get_preds(pred_dir)
    ref_norm_score(preds)
    facebox_list, event_list, file_list, setting_gts = ref_get_gt_boxes(gt_dir)
    thresh_num, aps = 1000, []
    for gt_list in setting_gts:
        count_face, pr_curve = 0, np.zeros((thresh_num, 2))
        for i in range(len(event_list)):
            event_preds = preds.get(str(event_list[i][0][0]), {})
            img_list, sub_gt_list, gt_bbx_list = file_list[i][0], gt_list[i][0], facebox_list[i][0]
            for j in range(len(img_list)):
                name = str(img_list[j][0][0])
                if name not in event_preds:  # the restriction: not evaluated, not counted
                    continue
                pred_info = event_preds[name]
                gt_boxes = gt_bbx_list[j][0].astype(float)
                keep_index = sub_gt_list[j][0]
                count_face += len(keep_index)
                if len(gt_boxes) == 0 or len(pred_info) == 0:
                    continue
                ignore = np.zeros(len(gt_boxes))
                if len(keep_index):
                    ignore[keep_index - 1] = 1
                pred_recall, proposal_list = ref_image_eval(pred_info, gt_boxes, ignore, iou_thresh)
                pr_curve += ref_img_pr_info(thresh_num, pred_info, proposal_list, pred_recall)
        pr_curve = ref_dataset_pr_info(thresh_num, pr_curve, count_face)
        aps.append(ref_voc_ap(pr_curve[:, 1], pr_curve[:, 0]))
    return aps


# ----------------------------------------------------------------------------- hand-made data
def cell(items: list) -> np.ndarray:
    """A MATLAB cell column, as loadmat returns it."""
    out = np.empty((len(items), 1), dtype=object)
    for i, item in enumerate(items):
        out[i, 0] = item
    return out


def make_wider(root: Path, images: dict[str, dict]) -> Path:
    """A WIDER-style root with the four official .mat files and the attribute list.

    images: 'event/name' -> {'boxes': [[x, y, w, h], ...], 'easy'/'medium'/'hard': 1-based
    indices of the faces that count, optional 'invalid': [0/1 per face]}.
    """
    events: dict[str, list[str]] = {}
    for key in images:
        event, name = key.split("/")
        events.setdefault(event, []).append(name)
    order = list(events)

    def per_image(make):
        return cell([cell([make(f"{e}/{n}") for n in events[e]]) for e in order])

    common = {
        "event_list": cell([np.array([e]) for e in order]),
        "file_list": cell([cell([np.array([n]) for n in events[e]]) for e in order]),
        "face_bbx_list": per_image(lambda k: np.array(images[k]["boxes"], np.int32).reshape(-1, 4)),
        "invalid_label_list": per_image(lambda k: np.array(
            images[k].get("invalid", [0] * len(images[k]["boxes"])), np.int32).reshape(-1, 1)),
    }
    (root / "ground_truth").mkdir(parents=True)
    savemat(str(root / "ground_truth" / "wider_face_val.mat"), common)
    for subset in SUBSETS:
        gt_list = per_image(lambda k: np.array(images[k][subset], np.int32).reshape(-1, 1))
        savemat(str(root / "ground_truth" / f"wider_{subset}_val.mat"),
                {**common, "gt_list": gt_list})
    lines = []
    for key, image in images.items():
        lines += [f"{key}.jpg", str(len(image["boxes"]))]
        invalid = image.get("invalid", [0] * len(image["boxes"]))
        lines += [f"{x} {y} {w} {h} 0 0 0 {bad} 0 0 " for (x, y, w, h), bad in
                  zip(image["boxes"], invalid)]
    (root / "wider_face_split").mkdir()
    (root / "wider_face_split" / "wider_face_val_bbx_gt.txt").write_text("\n".join(lines) + "\n")
    return root


def write_preds(pred_dir: Path, key: str, rows: list[tuple]) -> Path:
    path = pred_dir / f"{key}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    body = "".join(" ".join(str(v) for v in row) + "\n" for row in rows)
    path.write_text(f"{key.split('/')[1]}\n{len(rows)}\n{body}")
    return path


# Image a: faces A, B, C. Easy counts A; medium A and B; hard A, B and C (C is ignored in
# easy and medium, B in easy). Image b: face D, counted everywhere, nothing predicted.
# Image c: faces E, F, counted everywhere, but absent: it must not count at all.
HAND = {
    "0--Parade/0_Parade_a": {"boxes": [[10, 10, 40, 40], [100, 10, 40, 40], [200, 10, 40, 40]],
                             "easy": [1], "medium": [1, 2], "hard": [1, 2, 3]},
    "0--Parade/0_Parade_b": {"boxes": [[50, 50, 60, 60]], "easy": [1], "medium": [1],
                             "hard": [1]},
    "1--Handshaking/1_Handshaking_c": {"boxes": [[5, 5, 30, 30], [60, 5, 30, 30]],
                                       "easy": [1, 2], "medium": [1, 2], "hard": [1, 2]},
}
# Scores 0.95 .. 0.50 normalise to 1, 0.689, 0.489, 0.311, 0: no two share a threshold step.
HAND_PREDS = [
    (10, 10, 40, 40, 0.95),  # p1: face A
    (12, 12, 40, 40, 0.81),  # p2: A again (a duplicate: a false positive)
    (200, 10, 40, 40, 0.72),  # p3: face C (ignored in easy/medium: neither true nor false)
    (300, 300, 30, 30, 0.64),  # p4: background
    (100, 10, 40, 40, 0.50),  # p5: face B, lowest score (normalised 0: counted at threshold 0 only)
]
# By hand, (precision, recall) after p1 | p2 | p3 | p4 | p5, AP = sum of recall steps times the
# best precision from there on:
#   easy   (A, D):       (1, 1/2) (1/2, 1/2) (1/2, 1/2) (1/3, 1/2) (1/3, 1/2)   -> 1/2
#   medium (A, B, D):    (1, 1/3) (1/2, 1/3) (1/2, 1/3) (1/3, 1/3) (1/2, 2/3)   -> 1/3 + 1/3 * 1/2
#   hard   (A, B, C, D): (1, 1/4) (1/2, 1/4) (2/3, 2/4) (1/2, 2/4) (3/5, 3/4)
#                        -> 1/4 + 1/4 * 2/3 + 1/4 * 3/5
HAND_AP = {"easy": 0.5, "medium": 0.5, "hard": 0.25 + 0.25 * 2 / 3 + 0.25 * 3 / 5}


@pytest.fixture()
def hand_case(tmp_path) -> tuple[Path, Path, Path]:
    root = make_wider(tmp_path / "wider", HAND)
    preds = tmp_path / "preds"
    write_preds(preds, "0--Parade/0_Parade_a", HAND_PREDS)
    write_preds(preds, "0--Parade/0_Parade_b", [])
    listing = tmp_path / "images.txt"
    listing.write_text("0--Parade/0_Parade_a.jpg\n0--Parade/0_Parade_b.jpg\n")
    return root, preds, listing


@pytest.mark.inference
def test_library_evaluation_and_a_failed_one_in_a_batch(hand_case, tmp_path, capsys):
    """evaluation.evaluate() is the script's work with plain settings; evaluate_all() stops at
    a failure, or with keep_going notes it and goes on."""
    root, preds, listing = hand_case
    settings = evaluation.EvaluationSettings(wider=root, images_list=listing, predictions=preds)
    results = evaluation.evaluate(settings, None, None, tmp_path / "scored")
    assert {s: results[s] for s in SUBSETS} == pytest.approx(HAND_AP)
    assert json.loads((tmp_path / "scored" / "results.json").read_text())["hard"] == results["hard"]

    broken = evaluation.Evaluation(tmp_path / "absent.onnx", (128, 128), tmp_path / "b")
    settings = evaluation.EvaluationSettings(wider=root, images_list=listing)
    with pytest.raises(UserError, match="listed images do not exist"):
        evaluation.evaluate_all([broken], settings)
    assert evaluation.evaluate_all([broken], settings, keep_going=True) == [None]
    assert "note: absent.onnx at 128x128 could not be evaluated: " in capsys.readouterr().out


def test_without_ray_a_ray_run_is_a_one_line_error(det500m_onnx, tmp_path):
    """--ray where Ray is not installed (here: hidden from the import system)."""
    out = tmp_path / "grid"
    proc = run_script_without("ray", SCRIPT, "--grid", "--model", det500m_onnx, "--ray",
                              "--out", out)
    assert proc.returncode == 2, proc.stderr
    assert re.fullmatch(r"error: --ray needs (ray|pyarrow): python -m pip install -r "
                        r"requirements-scale.txt\n", proc.stderr), proc.stderr
    assert not out.exists()


@pytest.mark.inference
def test_hand_made_case_matches_hand_computed_ap(hand_case, tmp_path):
    root, preds, listing = hand_case
    out = tmp_path / "out"
    proc = run_script(SCRIPT, "--predictions", preds, "--wider", root, "--images-list", listing,
                      "--out", out)
    results = json.loads((out / "results.json").read_text())
    for subset in SUBSETS:
        assert results[subset] == pytest.approx(HAND_AP[subset], abs=1e-9), subset
    assert results["images"] == 2
    assert results["faces"] == {"easy": 2, "medium": 3, "hard": 4}  # image c not counted
    assert "56.67" in proc.stdout and str(out / "results.json") in proc.stdout
    # the independent reference agrees on the same files
    assert ref_evaluation(preds, root / "ground_truth") == pytest.approx(
        [HAND_AP[s] for s in SUBSETS], abs=1e-9)


def test_absent_image_does_not_count_but_an_empty_prediction_does(hand_case, tmp_path):
    root, preds, _ = hand_case
    # without a list and without images on disk, the images evaluated are those predicted
    out = tmp_path / "out"
    run_script(SCRIPT, "--predictions", preds, "--wider", root, "--out", out)
    assert json.loads((out / "results.json").read_text())["hard"] == pytest.approx(HAND_AP["hard"])
    # image c evaluated with no detections: its two faces are misses, hard = (1 + 2/3 + 3/5) / 6
    write_preds(preds, "1--Handshaking/1_Handshaking_c", [])
    run_script(SCRIPT, "--predictions", preds, "--wider", root, "--out", out)
    results = json.loads((out / "results.json").read_text())
    assert results["hard"] == pytest.approx((1 + 2 / 3 + 3 / 5) / 6, abs=1e-9)
    assert results["faces"]["hard"] == 6
    assert ref_evaluation(preds, root / "ground_truth")[2] == pytest.approx(results["hard"])


@pytest.mark.inference
def test_official_curves_follow_public_rules_in_memory(hand_case):
    root, preds, _ = hand_case
    gt = widerface.load_ground_truth(root)
    keys = ["0--Parade/0_Parade_a", "0--Parade/0_Parade_b"]
    predictions = {k: widerface.read_prediction(preds / f"{k}.txt") for k in keys}
    curves = wider_metrics.official_curves(predictions, gt, keys)
    assert {s: curves[s].ap for s in SUBSETS} == pytest.approx(HAND_AP, abs=1e-9)
    hard = curves["hard"]
    # at the strictest threshold only p1 counts; at threshold 0 all five do
    assert (hard.precision[0], hard.recall[0]) == pytest.approx((1.0, 0.25))
    assert (hard.precision[-1], hard.recall[-1]) == pytest.approx((0.6, 0.75))
    # file order matters as in the public code: an image counts up to its last prediction
    # above the threshold, so with p5 moved first, p5 counts wherever p1 does
    shuffled = {**predictions, keys[0]: predictions[keys[0]][[4, 0, 1, 2, 3]]}
    curves = wider_metrics.official_curves(shuffled, gt, keys)
    assert (curves["hard"].precision[0], curves["hard"].recall[0]) == pytest.approx((1.0, 0.5))


@pytest.mark.inference
def test_rough_protocols_by_hand():
    gt = widerface.GroundTruth(Path("."), {"e/a": np.array([[0, 0, 40, 40], [100, 0, 20, 20],
                                                      [200, 0, 10, 10]], float)},
                        {}, {"e/a": np.zeros(3, bool)})
    preds = {"e/a": np.array([
        [0, 0, 40, 16, 0.9],  # IoU 0.4 with A (40 px): found at IoU 0.3, not at 0.5
        [200, 0, 10, 10, 0.8],  # C is 10 px tall: ignored at every minimum height
        [300, 300, 20, 20, 0.7],  # background
        [100, 0, 20, 20, 0.6]])}  # B, 20 px tall: counts at >= 16 px only
    metrics = wider_metrics.rough_metrics(preds, gt, ["e/a"], "rough-iou")
    m16, m32, m64 = metrics["16px"], metrics["32px"], metrics["64px"]
    # >= 16 px: A and B count. TP, FP, TP: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1
    assert m16["faces"] == 2 and m16["ap"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert m16["recall_at_0.1_fppi"] == 0.5 and m16["recall_at_1_fppi"] == 1.0
    assert m16["precision_at_0.5"] == pytest.approx(2 / 3) and m16["recall_at_0.5"] == 1.0
    # >= 32 px: only A; B is ignored, so the prediction on it is neither true nor false
    assert m32["faces"] == 1 and m32["ap"] == pytest.approx(1.0)
    assert m32["precision_at_0.5"] == pytest.approx(0.5) and m32["false_positives_at_0.5"] == 1
    assert m64["faces"] == 0 and m64["ap"] is None
    # at operating score 0.65 only A and the background are kept: B becomes a miss; AP and the
    # FPPI points do not depend on the operating score
    strict = wider_metrics.rough_metrics(preds, gt, ["e/a"], "rough-iou", 0.65)["16px"]
    assert strict["precision_at_0.65"] == 0.5 and strict["recall_at_0.65"] == 0.5
    assert strict["false_positives_at_0.65"] == 1 and "recall_at_0.5" not in strict
    assert strict["ap"] == m16["ap"] and strict["recall_at_1_fppi"] == m16["recall_at_1_fppi"]
    nothing = wider_metrics.rough_metrics(preds, gt, ["e/a"], "rough-iou", 0.95)["16px"]
    assert nothing["precision_at_0.95"] is None and nothing["recall_at_0.95"] == 0.0
    # invalid faces are ignored too
    gt.invalid["e/a"][0] = True
    assert wider_metrics.rough_metrics(preds, gt, ["e/a"], "rough-iou")["32px"]["faces"] == 0


def test_operating_score_below_the_predictions_threshold_is_warned():
    assert "below the predictions' score threshold 0.02" in \
        wider_metrics.operating_score_warning(0.01, 0.02)
    assert wider_metrics.operating_score_warning(0.02, 0.02) is None
    assert wider_metrics.operating_score_warning(0.3, None) is None  # files of unknown origin


@pytest.mark.inference
def test_center_hit_rule():
    gt = widerface.GroundTruth(Path("."), {"e/a": np.array([[0, 0, 40, 40]], float)}, {},
                        {"e/a": np.zeros(1, bool)})
    loose = {"e/a": np.array([[-20, -20, 80, 80, 0.9]])}  # centre inside the face, IoU 0.25
    assert wider_metrics.rough_metrics(loose, gt, ["e/a"], "rough-iou")["32px"]["ap"] == 0.0
    assert wider_metrics.rough_metrics(loose, gt, ["e/a"], "rough-center")["32px"]["ap"] == 1.0
    off = {"e/a": np.array([[30, 30, 40, 40, 0.9]])}  # centre (50, 50) outside the face
    assert wider_metrics.rough_metrics(off, gt, ["e/a"], "rough-center")["32px"]["ap"] == 0.0


@pytest.mark.inference
def test_matcher_takes_the_free_face_not_only_the_best_one():
    iou = np.array([[0.9, 0.6], [0.8, 0.55]])  # both predictions overlap both faces
    status, matched = wider_metrics.Matcher.build(np.array([0.9, 0.8]), iou, iou >= 0.5).run(
        np.array([True, True]), 2)
    assert status.tolist() == [1, 1] and matched.tolist() == [0, 1]
    status, _ = wider_metrics.Matcher.build(np.array([0.9, 0.8]), iou, iou >= 0.5).run(
        np.array([True, False]), 2)  # face 1 ignored: the second prediction is dropped
    assert status.tolist() == [1, -1]


# ----------------------------------------------------------------------------- bad input
def test_bad_prediction_line_names_file_and_line(hand_case, tmp_path):
    root, preds, listing = hand_case
    bad = write_preds(preds, "0--Parade/0_Parade_a", [(1, 2, 3, "x", 0.5), (1, 2, 3, 4, 0.4)])
    proc = run_script(SCRIPT, "--predictions", preds, "--wider", root, "--images-list", listing,
                      "--out", tmp_path / "o", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{bad}:3:" in proc.stderr and "x y w h score" in proc.stderr
    bad.write_text("0_Parade_a\n3\n1 2 3 4 0.5\n")
    proc = run_script(SCRIPT, "--predictions", preds, "--wider", root, "--images-list", listing,
                      "--out", tmp_path / "o", check=False)
    assert proc.returncode == 2 and f"{bad}:2:" in proc.stderr and "says 3 faces" in proc.stderr


def test_missing_ground_truth_and_unknown_images(hand_case, tmp_path):
    root, preds, listing = hand_case
    proc = run_script(SCRIPT, "--predictions", preds, "--wider", tmp_path / "nowhere",
                      "--out", tmp_path / "o", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert str(tmp_path / "nowhere" / "ground_truth" / "wider_face_val.mat") in proc.stderr
    listing.write_text("0--Parade/0_Parade_zz.jpg\n")
    proc = run_script(SCRIPT, "--predictions", preds, "--wider", root, "--images-list", listing,
                      "--out", tmp_path / "o", check=False)
    assert proc.returncode == 2 and "not in the WIDER FACE val ground truth" in proc.stderr
    proc = run_script(SCRIPT, check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: give --model")


def huge_header_jpeg(source: Path, side: int = 60000) -> bytes:
    """A real JPEG whose frame header claims side x side pixels: OpenCV refuses to decode it
    (cv2.error, over its pixel limit) instead of returning None."""
    data = bytearray(source.read_bytes())
    at = 2  # after SOI: walk the segments up to the frame header (SOF0-SOF2)
    while data[at] == 0xFF and data[at + 1] not in (0xC0, 0xC1, 0xC2):
        at += 2 + int.from_bytes(data[at + 2: at + 4], "big")
    assert data[at] == 0xFF, f"no JPEG frame header in {source}"
    data[at + 5: at + 9] = side.to_bytes(2, "big") * 2  # height, width
    return bytes(data)


@pytest.fixture()
def damaged_wider(wider_dir, tmp_path) -> dict:
    """A WIDER root (the real ground truth) with two real images, a file that is no image at all,
    and a real JPEG whose header claims 60000x60000 pixels."""
    root = tmp_path / "wider"
    root.mkdir()
    for folder in ("ground_truth", "wider_face_split"):
        (root / folder).symlink_to(wider_dir / folder)
    listed = (wider_dir / "dev_images.txt").read_text().split()
    good = [name for name in listed if name.startswith("13--Interview/")][:2]
    not_image, huge = [name for name in listed if name.startswith("0--Parade/")][:2]
    images = root / "WIDER_val/images"
    for name in good:
        (images / name).parent.mkdir(parents=True, exist_ok=True)
        (images / name).symlink_to(wider_dir / "WIDER_val/images" / name)
    (images / not_image).parent.mkdir(parents=True)
    (images / not_image).write_bytes(b"not a jpeg")
    (images / huge).write_bytes(huge_header_jpeg(wider_dir / "WIDER_val/images" / huge))
    return {"root": root, "bad": {widerface.image_key(not_image), widerface.image_key(huge)}}


@pytest.mark.inference
def test_damaged_images_are_skipped_and_outputs_nested_in_images_not_read(damaged_wider,
                                                                          det500m_onnx):
    root = damaged_wider["root"]
    out = root / "WIDER_val/images/results"  # plots and galleries land inside the images folder
    args = ("--model", det500m_onnx, "--size", "128,160", "--wider", root, "--out", out,
            "--analyze")
    proc = run_script(SCRIPT, *args)
    assert "Traceback" not in proc.stderr
    skipped = [line for line in proc.stderr.splitlines() if line.startswith("warning: skipped:")]
    assert len(skipped) == 2  # one line each, OpenCV's multi-line message included
    for key in damaged_wider["bad"]:
        assert sum(key.split("/")[1] in line for line in skipped) == 1
    results = json.loads((out / "results.json").read_text())
    assert results["images"] == 2 and set(results["skipped_images"]) == damaged_wider["bad"]
    assert "skipped 2 unreadable images" in proc.stdout
    assert (out / "pr_curves.png").is_file() and (out / "recall_by_size.png").is_file()
    # a second run finds the plots inside the images folder and must not take them for photos
    again = run_script(SCRIPT, *args)
    assert "reused 2 prediction files" in again.stdout
    assert json.loads((out / "results.json").read_text())["images"] == 2
    assert all(line.startswith("13--Interview/") for line in
               (out / "images.txt").read_text().splitlines())


def test_scores_that_cannot_rank_are_warned(hand_case, tmp_path):
    root, preds, listing = hand_case
    write_preds(preds, "0--Parade/0_Parade_a", [(*row[:4], 0.5) for row in HAND_PREDS])
    proc = run_script(SCRIPT, "--predictions", preds, "--wider", root, "--images-list", listing,
                      "--out", tmp_path / "o")
    assert "warning: all 5 prediction scores are 0.5" in proc.stderr
    assert json.loads((tmp_path / "o" / "results.json").read_text())["images"] == 2
    varied = {"a": np.array([[0, 0, 9, 9, 0.9], [5, 5, 9, 9, 0.4]])}
    assert wider_metrics.ranking_warning(varied, ["a"]) is None
    assert wider_metrics.ranking_warning({"a": np.zeros((0, 5))}, ["a"]) is None


SCORED = ("--predictions", "{preds}")  # a valid run, to which each case adds one bad option


@pytest.mark.parametrize("bad, message", [
    ((*SCORED, "--score-threshold", "1.5"), "argument --score-threshold: must be between 0 and 1"),
    ((*SCORED, "--nms-threshold", "-0.1"), "argument --nms-threshold: must be between 0 and 1"),
    ((*SCORED, "--score-threshold", "nan"), "argument --score-threshold: must be between 0 and 1"),
    ((*SCORED, "--score-threshold", "high"), "expected a number between 0 and 1"),
    ((*SCORED, "--operating-score", "1.5"), "argument --operating-score: must be between 0 and 1"),
    ((*SCORED, "--operating-score", "-0.1"), "argument --operating-score: must be between 0 and 1"),
    ((*SCORED, "--threads", "0"), "argument --threads: must be 1 or more"),
    ((*SCORED, "--size", "100,100"), "not a multiple of 32"),
    ((*SCORED, "--size", "640,640"), "--size applies to --model files only"),
    ((*SCORED, "--out", "{listing}"), "is a file; give a folder"),
    ((*SCORED, "--out", "{listing}/sub"), "is a file, not a folder"),
    ((*SCORED, "--out", "{preds}"), "must not be the --predictions folder"),
    ((*SCORED, "--images-list", "{preds}/none.txt"), "images list not found"),
    ((*SCORED, "--model", "{listing}"), "either --model or --predictions"),
    ((*SCORED, "--grid", "--model", "{listing}"), "--grid evaluates --model files"),
    (("--grid",), "--grid needs at least one --model"),
    (("--detector", "no_such_detector"), "unknown detector"),
    (("--model", "{preds}/missing.onnx"), "model not found"),
    (("--predictions", "{preds}/none"), "predictions folder not found"),
    ((*SCORED, "--ray"), "--ray runs the evaluations of a --grid"),
])
def test_bad_options_fail_before_any_work(hand_case, tmp_path, bad, message):
    """In-process through main(argv); test_missing_ground_truth_and_unknown_images runs the
    script as a process."""
    root, preds, listing = hand_case
    out = tmp_path / "o"
    bad = [arg.format(listing=listing, preds=preds) for arg in bad]
    proc = run_main(SCRIPT, "--wider", root, "--out", out, *bad)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0], proc.stderr
    assert not out.exists()  # refused before anything was written


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def small_run(wider_dir, det500m_onnx, tmp_path_factory) -> dict:
    """det_500m at 320x320 on 20 real images spread over the events."""
    tmp = tmp_path_factory.mktemp("eval")
    names = (wider_dir / "dev_images.txt").read_text().split()[::65][:20]
    listing = tmp / "images.txt"
    listing.write_text("\n".join(names) + "\n")
    out = tmp / "out"
    args = ("--model", det500m_onnx, "--size", "320,320", "--wider", wider_dir,
            "--images-list", listing, "--out", out)
    proc = run_script(SCRIPT, *args)
    return {"out": out, "args": args, "names": names, "proc": proc, "listing": listing}


@pytest.mark.inference
def test_end_to_end_writes_official_predictions_and_results(small_run):
    out, proc = small_run["out"], small_run["proc"]
    results = json.loads((out / "results.json").read_text())
    assert results["images"] == 20 and results["protocol"] == "official"
    assert all(0.0 < results[s] <= 1.0 for s in SUBSETS)
    assert results["easy"] > results["hard"]
    assert results["settings"]["input_size"] == [320, 320]
    assert results["settings"]["score_threshold"] == 0.02
    assert results["settings"]["nms_threshold"] == 0.45
    for subset in ("Easy", "Medium", "Hard"):
        assert f"{subset} " in proc.stdout and f"{100 * results[subset.lower()]:.2f}" in proc.stdout
    assert str(out / "results.json") in proc.stdout
    for name in small_run["names"]:
        lines = (out / "predictions" / name).with_suffix(".txt").read_text().splitlines()
        assert lines[0] == Path(name).stem and int(lines[1]) == len(lines) - 2
        scores = [float(line.split(" ")[4]) for line in lines[2:]]
        assert all(len(line.split(" ")) == 5 for line in lines[2:])
        assert scores == sorted(scores, reverse=True) and min(scores, default=1) >= 0.02
    assert (out / "report.md").is_file() and cv2.imread(str(out / "pr_curves.png")) is not None


@pytest.mark.inference
def test_golden_run_matches_reference_public_evaluation(small_run, wider_dir, tmp_path):
    results = json.loads((small_run["out"] / "results.json").read_text())
    ref = ref_evaluation(small_run["out"] / "predictions", wider_dir / "ground_truth")
    assert [results[s] for s in SUBSETS] == pytest.approx(ref, abs=1e-9)
    # the same on files that are not sorted by score and carry jittered boxes and scores
    rng = np.random.default_rng(0)
    scrambled = tmp_path / "preds"
    for path in sorted((small_run["out"] / "predictions").glob("*/*.txt")):
        lines = path.read_text().splitlines()
        rows = np.array([line.split() for line in lines[2:]], float).reshape(-1, 5)
        rows[:, :4] += rng.normal(0, 2, rows[:, :4].shape)
        rows[:, 4] = np.clip(rows[:, 4] + rng.normal(0, 0.05, len(rows)), 0.001, 1)
        rows = rows[rng.permutation(len(rows))]
        write_preds(scrambled, f"{path.parent.name}/{path.stem}",
                    [tuple(f"{v:.3f}" for v in row) for row in rows])
    out = tmp_path / "out"
    run_script(SCRIPT, "--predictions", scrambled, "--wider", wider_dir,
               "--images-list", small_run["listing"], "--out", out)
    results = json.loads((out / "results.json").read_text())
    ref = ref_evaluation(scrambled, wider_dir / "ground_truth")
    assert [results[s] for s in SUBSETS] == pytest.approx(ref, abs=1e-9)


def test_rerun_reuses_predictions_and_resumes(small_run):
    out, args = small_run["out"], small_run["args"]
    files = sorted((out / "predictions").glob("*/*.txt"))
    before = {p: p.stat().st_mtime_ns for p in files}
    first = json.loads((out / "results.json").read_text())
    for p in files[:3]:  # as if the first run had been interrupted
        p.unlink()
    proc = run_script(SCRIPT, *args)
    assert "detected 3 images" in proc.stdout and "reused 17 prediction files" in proc.stdout
    assert all(p.stat().st_mtime_ns == before[p] for p in files[3:])
    again = json.loads((out / "results.json").read_text())
    assert [again[s] for s in SUBSETS] == pytest.approx([first[s] for s in SUBSETS])


def test_changed_settings_predict_again(small_run, tmp_path):
    out, listing = tmp_path / "out", tmp_path / "five.txt"
    listing.write_text("\n".join(small_run["names"][:5]) + "\n")
    args = list(small_run["args"])
    args[args.index("--out") + 1], args[args.index("--images-list") + 1] = out, listing
    run_script(SCRIPT, *args)
    proc = run_script(SCRIPT, *args, "--score-threshold", "0.3")
    assert "other settings (score_threshold)" in proc.stdout
    assert "detected 5 images" in proc.stdout
    scores = [float(line.split()[4]) for p in (out / "predictions").glob("*/*.txt")
              for line in p.read_text().splitlines()[2:]]
    assert scores and min(scores) >= 0.3


@pytest.mark.inference
def test_rough_protocol_and_analysis_of_a_finished_run(small_run, wider_dir):
    out = small_run["out"]
    proc = run_script(SCRIPT, "--analyze", "--protocol", "rough", "--out", out)
    results = json.loads((out / "results.json").read_text())
    assert results["images"] == 20 and results["protocol"] == "rough"
    for rule in ("rough-iou", "rough-center"):
        for height in ("16px", "32px", "64px"):
            m = results["rough"][rule][height]
            assert 0 <= m["recall_at_0.1_fppi"] <= m["recall_at_1_fppi"] <= 1
            assert 0 < m["ap"] <= 1
    # taller faces are easier: AP rises with the minimum height
    assert results["rough"]["rough-iou"]["16px"]["ap"] < results["rough"]["rough-iou"]["64px"]["ap"]
    analysis = results["analysis"]
    gt = widerface.load_ground_truth(wider_dir)
    faces = sum(len(gt.boxes[widerface.image_key(n)]) for n in small_run["names"])
    assert analysis["faces"] == faces == sum(r["faces"] for r in analysis["misses_by_size"])
    blur = [r for r in analysis["misses_by_attribute"] if r["attribute"] == "blur"]
    assert sum(r["faces"] for r in blur) == faces
    assert blur[0]["miss_rate"] < blur[2]["miss_rate"]  # heavy blur is missed more than clear
    report = (out / "report.md").read_text()
    for heading in ("## Official protocol", "## Rough-detection protocols", "## Error analysis",
                    "### Misses by face height", "### Misses by WIDER attribute",
                    "### False positives", "### Worst misses"):
        assert heading in report
    for image in ("pr_curves.png", "recall_by_size.png", "miss_rate_by_attribute.png",
                  "gallery_misses.jpg"):
        assert f"({image})" in report and cv2.imread(str(out / image)) is not None
    assert "rough-center" in proc.stdout and "error analysis" in proc.stdout


def test_operating_score_moves_rough_figures_and_analysis(small_run, wider_dir, tmp_path):
    """The rough protocols' precision and recall and the error analysis are taken at
    --operating-score: a lower score finds at least as many faces, and every label says which
    score. Re-analysing a finished run takes the score from the option, not from the run."""
    out = tmp_path / "out"
    low = run_script(SCRIPT, "--predictions", small_run["out"] / "predictions", "--wider",
                     wider_dir, "--images-list", small_run["listing"], "--protocol", "rough",
                     "--analyze", "--operating-score", "0.3", "--out", out)
    at_low = json.loads((out / "results.json").read_text())
    low_report = (out / "report.md").read_text()
    default = run_script(SCRIPT, "--analyze", "--out", out)  # the finished run, default score
    at_default = json.loads((out / "results.json").read_text())
    default_report = (out / "report.md").read_text()

    assert at_low["settings"]["rough"]["deploy_threshold"] == at_low["analysis"]["threshold"] == 0.3
    assert at_default["settings"]["rough"]["deploy_threshold"] == 0.5
    assert at_default["analysis"]["threshold"] == 0.5 and at_default["protocol"] == "rough"
    for rule in ("rough-iou", "rough-center"):
        for height in ("16px", "32px", "64px"):
            a, b = at_low["rough"][rule][height], at_default["rough"][rule][height]
            assert a["recall_at_0.3"] >= b["recall_at_0.5"]
            assert a["false_positives_at_0.3"] >= b["false_positives_at_0.5"]
            assert a["ap"] == b["ap"] and "recall_at_0.5" not in a
    assert at_low["analysis"]["recall"] > at_default["analysis"]["recall"]
    for a, b in zip(at_low["analysis"]["misses_by_size"], at_default["analysis"]["misses_by_size"]):
        assert a["missed"] <= b["missed"] and a["faces"] == b["faces"]
    assert sum(at_low["analysis"]["false_positives"].values()) >= \
        sum(at_default["analysis"]["false_positives"].values())
    assert [at_low[s] for s in SUBSETS] == [at_default[s] for s in SUBSETS]  # AP: every score
    for text, score in ((low.stdout + low_report, "0.3"), (default.stdout + default_report, "0.5")):
        for label in (f"| precision @ {score} | recall @ {score} |",
                      f"## Error analysis (score >= {score}, IoU >= 0.5)",
                      f"false positives at score >= {score} (",
                      f"error analysis at score >= {score}: recall"):
            assert label in text, label
    assert "@ 0.3" not in default_report and "score >= 0.3" not in default_report


# ----------------------------------------------------------------------------- FLOPs and grid
@pytest.mark.inference
def test_model_flops_counts_multiply_adds_twice(tmp_path, det500m_onnx):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.zeros((8, 3, 3, 3), np.float32), "w")
    depthwise = numpy_helper.from_array(np.zeros((8, 1, 3, 3), np.float32), "d")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]),
         helper.make_node("Conv", ["y", "d"], ["z"], group=8, strides=[2, 2], pads=[1, 1, 1, 1])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "h", "w"])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], [weight, depthwise])
    path = tmp_path / "two_convs.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8),
              str(path))
    # 8x32x32 outputs of 3x3x3, then 8x16x16 depthwise outputs of 3x3
    assert model_stats.model_flops(path, (32, 32)) == 2 * (8 * 32 * 32 * 27 + 8 * 16 * 16 * 9)
    big = model_stats.model_flops(det500m_onnx, (640, 640))
    small = model_stats.model_flops(det500m_onnx, (128, 160))
    assert 0.5e9 < big < 3e9
    assert small / big == pytest.approx(128 * 160 / 640 ** 2, rel=0.05)


def test_grid_writes_markdown_and_csv(small_run, wider_dir, det500m_onnx, tmp_path):
    listing = tmp_path / "five.txt"
    listing.write_text("\n".join(small_run["names"][:5]) + "\n")
    out = tmp_path / "grid"
    proc = run_script(SCRIPT, "--grid", "--model", det500m_onnx, "--size", "128,160",
                      "--size", "96,128", "--wider", wider_dir,
                      "--images-list", listing, "--out", out)
    table = (out / "metrics.md").read_text()
    assert "| Model | Input shape | Precision | FLOPs | Size MB | Easy | Medium | Hard |" in table
    assert "| det_500m | 128x160 | float32 |" in table and "| det_500m | 96x128 | float32 |" in table
    assert "5 of 3,226 images" in table
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["Input shape"] for r in rows] == ["128x160", "96x128"]
    for row in rows:
        results = json.loads((out / f"det_500m_{row['Input shape']}" / "results.json").read_text())
        assert row["Hard"] == f"{100 * results['hard']:.2f}" and row["Images"] == "5"
    assert float(rows[0]["FLOPs"].split()[0]) > float(rows[1]["FLOPs"].split()[0])
    assert str(out / "metrics.md") in proc.stdout


@pytest.mark.inference
def test_tflite_export_scores_like_onnx(small_run, tflite_float32, wider_dir, det500m_onnx,
                                       tmp_path):
    """The script on the float32 export, beside the library's evaluation of the ONNX model at
    the same size: same APs (a broken export fails here, it is no reason to skip)."""
    h, w = 128, 160
    run_script(SCRIPT, "--model", tflite_float32, "--wider", wider_dir, "--images-list",
               small_run["listing"], "--out", tmp_path / "t")
    lite = json.loads((tmp_path / "t" / "results.json").read_text())
    settings = evaluation.EvaluationSettings(wider=wider_dir, images_list=small_run["listing"])
    with contextlib.redirect_stdout(io.StringIO()):
        onnx_ = evaluation.evaluate(settings, det500m_onnx, (h, w), tmp_path / "o")
    assert lite["settings"]["input_size"] == [h, w] and lite["model"]["backend"] == "litert"
    assert lite["images"] == onnx_["images"] == 20
    for subset in SUBSETS:
        assert lite[subset] == pytest.approx(onnx_[subset], abs=0.01)
    assert model_stats.model_flops(tflite_float32, (h, w)) == pytest.approx(
        model_stats.model_flops(det500m_onnx, (h, w)), rel=0.01)


@pytest.mark.inference
def test_peer_detector_is_evaluated_the_same_way(wider_dir, tmp_path):
    """--detector NAME runs a peers.py detector through the same prediction files and AP."""
    pytest.importorskip("cv2").FaceDetectorYN  # yunet ships with OpenCV
    images = tmp_path / "images.txt"
    images.write_text("".join((wider_dir / "dev_images.txt").read_text().splitlines(True)[:5]))
    out = tmp_path / "yunet"
    proc = run_script("evaluate_widerface.py", "--detector", "yunet", "--wider", wider_dir,
                      "--images-list", images, "--out", out, check=False)
    if proc.returncode == 2 and "yunet" in proc.stderr:
        pytest.skip(proc.stderr.strip())
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["images"] == 5 and results["model"]["name"] == "yunet"
    assert 0.0 < results["hard"] <= results["easy"] <= 1.0
    assert len(list((out / "predictions").glob("*/*.txt"))) == 5


def test_grid_reports_the_change_against_float32():
    rows = [{"_family": "det_500m", "Input shape": "640x640", "Precision": p, "Easy": e,
             "Medium": m, "Hard": h} for p, e, m, h in (("float32", "91.23", "88.09", "68.94"),
                                                         ("int8", "91.10", "87.93", "68.61"),
                                                         ("float16", "n/a", "n/a", "n/a"))]
    rows.append({"_family": "det_2.5g", "Input shape": "640x640", "Precision": "int8",
                 "Easy": "93.71", "Medium": "91.44", "Hard": "76.10"})
    wider_metrics.add_float32_change(rows)
    assert [r["vs float32"] for r in rows] == ["-", "-0.13 / -0.16 / -0.33", "-", "-"]
    alone = [dict(rows[3])]
    del alone[0]["vs float32"]
    wider_metrics.add_float32_change(alone)  # nothing to compare with: no column at all
    assert "vs float32" not in alone[0]
