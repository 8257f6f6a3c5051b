"""Tiled multi-scale detection (scrfdkit/tiles.py): the tile plan's guarantees, faces placed
across tile borders found once and whole, a tiny face found only with tiles, the close-up
pass, and the options of the scripts.

Real faces come from WIDER FACE val (clear faces, cut out with their ground-truth boxes, so
the expected box is the annotation's, not the detector's); the model is det_500m.onnx run
by ONNX Runtime at 128x160, so a 384x480 photo already needs a dozen tiles and every test
stays well under a second of inference.
"""
from __future__ import annotations

import math
import re

import cv2
import numpy as np
import pytest

from conftest import WIDER, run_script
from scrfdkit import SCRFD
from scrfdkit.wider.closeup import (CLOSEUP_BUCKETS, CLOSEUP_SEED, closeup_faces, closeup_rows,
                              place_crop, run_closeups)
from scrfdkit.files import read_image
from scrfdkit.decode import STRIDES
from scrfdkit.tiles import (BORDER_MARGIN, CLOSEUP_SHRINK, GATE_FULL_SCALE, WHOLE_PASS_MIN_FACE,
                            decode_tiles,
                            plan_tiles, prepare_tiled, run_tiled, whole_pass_scale)
from scrfdkit.timing import Profile
from scrfdkit.wider.dataset import load_ground_truth, select_images

pytestmark = pytest.mark.inference

SMALL_HW = (128, 160)  # det_500m.onnx is dynamic: tiles this small keep the tests fast
GRAY = 127


# ----------------------------------------------------------------------------- the plan
@pytest.mark.parametrize("image_hw, input_hw, face", [
    ((683, 1024), (480, 640), 64), ((1080, 1920), (480, 640), 64), ((2767, 5334), (480, 640), 64),
    ((500, 600), (480, 640), 64), ((3000, 200), (480, 640), 32), ((384, 480), (128, 160), 30),
    ((512, 640), (128, 160), 200), ((641, 481), (640, 480), 100)])
def test_the_plan_covers_the_photo_and_keeps_every_face_up_to_its_size_whole(image_hw, input_hw,
                                                                              face):
    plan = plan_tiles(image_hw, input_hw, face)
    height, width = image_hw
    scale = whole_pass_scale(image_hw, input_hw)
    # the stated size, raised to what the whole pass needs, capped at half a tile
    cap = min(input_hw) // 2 - 2 * BORDER_MARGIN
    assert plan.face == min(max(face, math.ceil(WHOLE_PASS_MIN_FACE / scale)), cap)
    covered = np.zeros(image_hw, bool)
    for x, y in plan.origins.astype(int):
        covered[y: y + input_hw[0], x: x + input_hw[1]] = True
    assert covered.all()
    for length, tile, starts in ((height, input_hw[0], plan.ys), (width, input_hw[1], plan.xs)):
        assert starts[0] == 0 and list(starts) == sorted(set(starts))
        assert starts[-1] == max(0, length - tile)  # the last tile ends at the photo's edge
        # every window of plan.face pixels lies in one tile, BORDER_MARGIN from its inner edges
        safe = [(s + BORDER_MARGIN * (s > 0), s + tile - BORDER_MARGIN * (s + tile < length))
                for s in starts]
        for start in range(0, max(1, length - plan.face + 1)):
            assert any(lo <= start and start + plan.face <= hi for lo, hi in safe), start
        if len(starts) > 2:  # and one tile fewer could not keep that overlap
            assert (len(starts) - 2) * (tile - plan.overlap) + tile < length


@pytest.mark.parametrize("image_hw", [(480, 640), (300, 640), (480, 100), (1, 1)])
def test_a_photo_no_larger_than_the_input_gets_no_tiles(image_hw):
    plan = plan_tiles(image_hw, (480, 640))
    assert len(plan) == 0 and plan.tile_ratio == 0.0


# ----------------------------------------------------------------------------- the merge
def raw_outputs(hw: tuple[int, int], boxes: list[tuple[float, float, float, float]],
                score: float = 0.9) -> dict:
    """Raw SCRFD outputs (2 anchors per cell) holding one candidate per x1 y1 x2 y2 box,
    each at the stride-8 anchor nearest its centre; every other anchor scores 0."""
    raw = {}
    for stride in STRIDES:
        count = (hw[0] // stride) * (hw[1] // stride) * 2
        raw[stride] = {"score": np.zeros(count, np.float32), "bbox": np.ones((count, 4), np.float32),
                       "kps": np.zeros((count, 10), np.float32)}
    for x1, y1, x2, y2 in boxes:
        col, row = int((x1 + x2) / 16), int((y1 + y2) / 16)
        index = 2 * (row * (hw[1] // 8) + col)
        cx, cy = col * 8, row * 8
        raw[8]["score"][index] = score
        raw[8]["bbox"][index] = np.array([cx - x1, cy - y1, x2 - cx, y2 - cy]) / 8
    return raw


def test_tile_candidates_at_inner_edges_are_dropped_and_at_the_photo_edges_kept():
    hw = (128, 160)
    boxes = [(0, 48, 24, 80), (64, 0, 96, 24), (136, 48, 160, 80), (64, 104, 96, 128),
             (64, 48, 96, 80)]  # touching the left, top, right, bottom edge; in the middle
    plan = plan_tiles((300, 400), hw)  # 3 x 3 tiles at least
    assert len(plan.ys) >= 3 and len(plan.xs) >= 3
    raws = [raw_outputs(hw, boxes) for _ in range(len(plan))]
    found, scores, _ = decode_tiles(raws, plan, anchors=2, score_threshold=0.5)
    for index, (x, y) in enumerate(plan.origins):
        for box, inner in zip(boxes[:4], plan.inner_edges[index]):
            here = np.all(np.isclose(found, np.array(box) + [x, y, x, y]), axis=1).any()
            assert here != inner, (index, box, inner)  # kept exactly where that edge is the photo's
        assert np.all(np.isclose(found, np.array(boxes[4]) + [x, y, x, y]), axis=1).any()
    assert len(scores) == len(found)


class ScriptedRunner:
    """A runner returning prepared raw outputs: the first call's for the whole-photo pass,
    then `tiles` for every later call (tiles and the close-up pass)."""

    input_hw, layout, anchors = (128, 160), "NHWC", 2

    def __init__(self, whole: dict, tiles: dict) -> None:
        self.outputs, self.calls = [whole], 0
        self.tiles = tiles

    def run(self, tensor: np.ndarray) -> dict:
        self.calls += 1
        return self.outputs[0] if self.calls == 1 else self.tiles


def test_the_whole_pass_answers_for_large_faces_only_when_tiles_see_the_small_ones():
    small = (100, 48, 112, 60)  # 12 px tall in the input: the tiles' to find
    large = (40, 30, 90, 80)  # 50 px, under half the input: no close-up pass
    empty = raw_outputs((128, 160), [])
    for image_hw, tiled in (((512, 640), True), ((100, 150), False)):
        runner = ScriptedRunner(raw_outputs((128, 160), [small, large]), empty)
        prepared = prepare_tiled(np.zeros((*image_hw, 3), np.uint8), runner.input_hw, "NHWC")
        faces, passes = run_tiled(runner, prepared, 0.5, 0.4, 0, Profile())
        heights = (faces.boxes[:, 3] - faces.boxes[:, 1]) * prepared.whole[1]
        assert sorted(np.round(heights)) == ([50] if tiled else [12, 50])
        assert passes == 1 + len(prepared.plan)


def test_a_tall_candidate_at_a_low_score_brings_the_close_up_pass():
    tall = (50, 30, 110, 100)  # 70 of 128 px: over half the input's height
    for score, expected in ((0.2, 2), (0.05, 1)):
        runner = ScriptedRunner(raw_outputs((128, 160), [tall], score),
                                raw_outputs((128, 160), [(30, 10, 110, 90)]))
        prepared = prepare_tiled(np.zeros((128, 160, 3), np.uint8), runner.input_hw, "NHWC")
        faces, passes = run_tiled(runner, prepared, 0.5, 0.4, 0, Profile())
        assert passes == expected == runner.calls
        assert len(faces) == expected - 1  # the close-up pass's face, in photo pixels
    scale = prepared.whole[1] * CLOSEUP_SHRINK
    runner = ScriptedRunner(raw_outputs((128, 160), [tall], 0.2),
                            raw_outputs((128, 160), [(30, 10, 110, 90)]))
    faces, _ = run_tiled(runner, prepared, 0.5, 0.4, 0, Profile())
    assert np.allclose(faces.boxes[0], np.array([30, 10, 110, 90]) / scale)


def tiles_holding(plan, point: tuple[float, float]) -> int:
    """How many of the plan's tiles hold this photo point (counted here, from the origins)."""
    x, y = point
    return sum(ox <= x < ox + plan.tile_hw[1] and oy <= y < oy + plan.tile_hw[0]
               for ox, oy in plan.origins)


def test_the_gate_runs_only_the_tiles_where_the_whole_pass_sees_a_candidate():
    """A whole-pass candidate at 0.3, over a 0.25 gate, opens the tiles holding its centre
    and no others (and, being small, is theirs to find); a small detection at 0.2, under the
    gate but over the photo score 0.15, lies in no tile that ran, so the whole pass answers
    for it: it is kept, not dropped as the tiles' to find."""
    low = (100, 40, 112, 52)  # 12 px in the input, in the right half
    small = (10, 100, 20, 110)  # 10 px, bottom left, far from it
    empty = raw_outputs((128, 160), [])
    whole = raw_outputs((128, 160), [low], 0.3)
    for level in whole.values():  # the second candidate, at its own score
        level["score"] = level["score"].copy()
    extra = raw_outputs((128, 160), [small], 0.2)
    whole[8]["score"] = np.maximum(whole[8]["score"], extra[8]["score"])
    index = np.flatnonzero(extra[8]["score"])[0]
    whole[8]["bbox"][index] = extra[8]["bbox"][index]
    prepared = prepare_tiled(np.zeros((200, 300, 3), np.uint8), (128, 160), "NHWC")
    scale = prepared.whole[1]
    assert scale >= GATE_FULL_SCALE  # the gate as given, not halved
    center = ((low[0] + low[2]) / 2 / scale, (low[1] + low[3]) / 2 / scale)
    opened = tiles_holding(prepared.plan, center)
    assert 1 <= opened < len(prepared.plan)
    runner = ScriptedRunner(whole, empty)
    faces, passes = run_tiled(runner, prepared, 0.15, 0.4, 0, Profile(), gate=0.25)
    assert passes == runner.calls == 1 + opened
    assert len(faces) == 1 and np.isclose(faces.scores[0], 0.2)  # the small one, kept
    assert np.allclose(faces.boxes[0], np.array(small) / scale, atol=1)
    runner = ScriptedRunner(whole, empty)  # a gate above both: no tile, both the whole pass's
    faces, passes = run_tiled(runner, prepared, 0.15, 0.4, 0, Profile(), gate=0.5)
    assert passes == 1 and len(faces) == 2
    runner = ScriptedRunner(whole, empty)  # no gate: every tile, both small ones the tiles'
    faces, passes = run_tiled(runner, prepared, 0.15, 0.4, 0, Profile(), gate=None)
    assert passes == 1 + len(prepared.plan) and len(faces) == 0


# ----------------------------------------------------------------------------- real faces
@pytest.fixture(scope="module")
def wider_faces(wider_dir):
    """Clear, frontal WIDER val faces with nobody else near them: (photo, image, x1 y1 x2 y2),
    one per photo."""
    gt = load_ground_truth(wider_dir)
    keys, paths = select_images(gt, wider_dir / "dev_images.txt", need_files=True)
    chosen = []
    for key, index in closeup_faces(gt, keys):
        x, y, w, h = gt.boxes[key][index]
        others = np.delete(gt.boxes[key], index, axis=0)
        near = ((others[:, 0] < x + 1.5 * w) & (others[:, 0] + others[:, 2] > x - 0.5 * w)
                & (others[:, 1] < y + 1.5 * h) & (others[:, 1] + others[:, 3] > y - 0.5 * h))
        frontal = w >= 0.65 * h  # profiles are narrow, and hard at any size
        if frontal and not near.any() and key not in {c[0] for c in chosen}:
            chosen.append((key, read_image(paths[key]), np.array([x, y, x + w, y + h])))
        if len(chosen) == 4:
            return chosen
    pytest.skip("not enough isolated clear faces in the WIDER FACE folder")


@pytest.fixture(scope="module")
def detector(det500m_onnx):
    """Tiled as SCRFD(tile=True) is: tiles gated by the whole pass (TILE_GATE_SCORE)."""
    return SCRFD(det500m_onnx, SMALL_HW, score_threshold=0.5, threads=1, tile=True)


@pytest.fixture(scope="module")
def every_tile(det500m_onnx):
    """Every tile of the plan, whatever the whole pass saw (tile_gate=None)."""
    return SCRFD(det500m_onnx, SMALL_HW, score_threshold=0.5, threads=1, tile=True,
                 tile_gate=None)


def paste_face(canvas: np.ndarray, source: tuple, height: int, center: tuple[float, float],
               context: float = 0.5) -> np.ndarray:
    """Paste the face (with `context` face sizes of its photo around it) scaled to `height`
    pixels, centred at `center`; return its ground-truth box in the canvas."""
    _, photo, (x1, y1, x2, y2) = source
    w, h = x2 - x1, y2 - y1
    cx1, cy1 = int(max(0, x1 - w * context)), int(max(0, y1 - h * context))
    cx2 = int(min(photo.shape[1], x2 + w * context))
    cy2 = int(min(photo.shape[0], y2 + h * context))
    factor = height / h
    patch = cv2.resize(photo[cy1:cy2, cx1:cx2], None, fx=factor, fy=factor,
                       interpolation=cv2.INTER_AREA)
    face = np.array([x1 - cx1, y1 - cy1, x2 - cx1, y2 - cy1]) * factor
    left = int(round(center[0] - (face[0] + face[2]) / 2))
    top = int(round(center[1] - (face[1] + face[3]) / 2))
    canvas[top: top + patch.shape[0], left: left + patch.shape[1]] = patch
    return face + [left, top, left, top]


def iou(boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
    inter = (np.clip(np.minimum(boxes[:, 2], box[2]) - np.maximum(boxes[:, 0], box[0]), 0, None)
             * np.clip(np.minimum(boxes[:, 3], box[3]) - np.maximum(boxes[:, 1], box[1]), 0, None))
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (areas + (box[2] - box[0]) * (box[3] - box[1]) - inter)


@pytest.mark.parametrize("gated", [False, True], ids=["every tile", "gated"])
def test_faces_across_tile_borders_are_found_once_and_whole(detector, every_tile, wider_faces,
                                                           gated):
    """Faces centred on inner tile edges (a vertical one, a horizontal one, a corner where
    four tiles meet): each is found once, whole, and nothing else is found on it; gated,
    only the tiles around the faces run, and they find the same faces."""
    photo_hw = (384, 480)
    plan = plan_tiles(photo_hw, SMALL_HW)
    assert len(plan.ys) >= 3 and len(plan.xs) >= 3
    tile_h, tile_w = SMALL_HW
    edge_x, edge_y = plan.xs[1] + tile_w, plan.ys[1] + tile_h  # inner edges of tile (1, 1)
    centers = [(edge_x, plan.ys[0] + tile_h / 2 + 8), (plan.xs[0] + tile_w / 2 + 8, edge_y),
               (edge_x, edge_y), (400, 300)]
    canvas = np.full((*photo_hw, 3), GRAY, np.uint8)
    faces = [paste_face(canvas, source, plan.face - 4, center)
             for source, center in zip(wider_faces, centers)]
    for face, (cx, cy) in zip(faces[:3], centers):  # the placement really straddles the edges
        assert face[0] < cx < face[2] or face[1] < cy < face[3]
    used = detector if gated else every_tile
    found = used.detect(canvas)
    if gated:
        assert 1 + 4 <= used.passes < 1 + len(plan)
        assert same_faces(found, every_tile.detect(canvas))
    else:
        assert used.passes == 1 + len(plan)
    for face in faces:
        overlap = iou(found.boxes, face)
        assert (overlap >= 0.5).sum() == 1, (face, found.boxes, found.scores)
    for box in found.boxes:  # every detection is one of the faces, none a half face beside it
        assert max(iou(box[None], face)[0] for face in faces) >= 0.5, box


HALF_FACE_PHOTOS = ("19--Couple/19_Couple_Couple_19_86", "6--Funeral/6_Funeral_Funeral_6_941",
                    "8--Election_Campain/8_Election_Campain_Election_Campaign_8_529")


def test_faces_cut_by_tile_borders_in_real_photos_leave_no_half_faces(det500m_onnx, wider_dir):
    """WIDER photos whose annotated faces cross inner tile edges: no detection lies mostly
    inside an annotated face without matching it while another detection matches it (a half
    face beside the whole one). Without the drop at the tile borders these photos have some."""
    gt = load_ground_truth(wider_dir)
    detector = SCRFD(det500m_onnx, (480, 640), score_threshold=0.5, threads=1, tile=True)
    straddling = 0
    for key in HALF_FACE_PHOTOS:
        image = read_image(wider_dir / "WIDER_val" / "images" / f"{key}.jpg")
        plan = plan_tiles(image.shape[:2], (480, 640))
        x, y, w, h = gt.boxes[key].T
        edges_x = [e for e in (*plan.xs[1:], *(s + 640 for s in plan.xs[:-1]))]
        edges_y = [e for e in (*plan.ys[1:], *(s + 480 for s in plan.ys[:-1]))]
        straddling += sum(((x < e) & (x + w > e)).sum() for e in edges_x) + sum(
            ((y < e) & (y + h > e)).sum() for e in edges_y)
        found = detector.detect(image)
        faces = np.column_stack([x, y, x + w, y + h])
        for box in found.boxes:
            overlaps = iou(faces, box)
            inter = overlaps * ((box[2] - box[0]) * (box[3] - box[1]) + w * h) / (1 + overlaps)
            inside = inter / ((box[2] - box[0]) * (box[3] - box[1])) >= 0.6
            matched = np.array([(iou(found.boxes, face) >= 0.5).any() for face in faces])
            assert overlaps.max() >= 0.5 or not (inside & matched).any(), (key, box)
    assert straddling >= 10  # the photos do test the borders


def same_faces(a, b) -> bool:
    return (np.array_equal(a.boxes, b.boxes) and np.array_equal(a.scores, b.scores)
            and np.array_equal(a.landmarks, b.landmarks))


@pytest.mark.parametrize("photo_hw, center", [((512, 640), (300, 260)), ((512, 150), (75, 300))])
def test_a_tiny_face_in_a_large_photo_needs_the_tiles(every_tile, wider_faces, photo_hw, center):
    """A 28-pixel face in a 512-pixel-tall photo is 7 pixels in the 128x160 letterbox pass
    (the narrow photo gets one column of zero-padded tiles). The whole pass scores such a
    face 0.03-0.11, so only every tile (tile_gate=None) is sure to find it alone on a
    plain background."""
    detector = every_tile
    canvas = np.full((*photo_hw, 3), GRAY, np.uint8)
    face = paste_face(canvas, wider_faces[0], 28, center)
    single = detector.detect(canvas, tile=False)
    tiled = detector.detect(canvas)
    assert not len(single) or iou(single.boxes, face).max() < 0.5
    assert len(tiled) == 1 and iou(tiled.boxes, face)[0] >= 0.5 and tiled.scores[0] >= 0.5
    assert tiled.landmarks is not None  # landmarks in photo pixels, inside the face box
    x1, y1, x2, y2 = face
    assert ((tiled.landmarks[0, :, 0] > x1) & (tiled.landmarks[0, :, 0] < x2)).all()
    assert ((tiled.landmarks[0, :, 1] > y1) & (tiled.landmarks[0, :, 1] < y2)).all()


@pytest.mark.parametrize("source", range(4))
def test_the_gate_keeps_a_small_face_the_whole_pass_scores_below_the_photo_score(
        detector, every_tile, wider_faces, source):
    """A 56-pixel face in a 512x640 photo is 14 pixels in the letterbox pass, which scores it
    0.27-0.47: under the photo's 0.5, over the gate. The gate runs the tiles around it
    (not all), which find it as every tile does: the same faces, exactly."""
    canvas = np.full((512, 640, 3), GRAY, np.uint8)
    face = paste_face(canvas, wider_faces[source], 56, (300, 260))
    plan = plan_tiles(canvas.shape[:2], SMALL_HW)
    single = detector.detect(canvas, tile=False)
    gated = detector.detect(canvas)
    assert not len(single) or iou(single.boxes, face).max() < 0.5
    assert 1 < detector.passes < 1 + len(plan)
    assert len(gated) == 1 and iou(gated.boxes, face)[0] >= 0.5 and gated.scores[0] >= 0.5
    assert same_faces(gated, every_tile.detect(canvas))
    assert every_tile.passes == 1 + len(plan)


def test_a_photo_that_fits_the_input_runs_once_and_exactly_as_the_single_pass(detector,
                                                                              wider_faces):
    canvas = np.full((120, 150, 3), GRAY, np.uint8)
    paste_face(canvas, wider_faces[1], 30, (70, 60))
    single = detector.detect(canvas, tile=False)
    tiled = detector.detect(canvas)
    assert detector.passes == 1 and len(single) == 1
    assert np.array_equal(single.boxes, tiled.boxes) and np.array_equal(single.scores, tiled.scores)
    assert np.array_equal(single.landmarks, tiled.landmarks)


def test_a_face_filling_the_frame_adds_the_close_up_pass(detector, wider_faces):
    canvas = np.full((128, 160, 3), GRAY, np.uint8)
    face = paste_face(canvas, wider_faces[2], 104, (80, 64), context=0.1)
    tiled = detector.detect(canvas)
    assert detector.passes == 2  # no tiles, one close-up pass
    assert iou(tiled.boxes, face).max() >= 0.5
    small = np.full((128, 160, 3), GRAY, np.uint8)
    paste_face(small, wider_faces[2], 30, (80, 64))
    detector.detect(small)
    assert detector.passes == 1


# ----------------------------------------------------------------------------- close-ups
def test_close_up_crops_hold_the_face_at_the_bucket_fraction_inside_the_photo():
    rng = np.random.default_rng(1)
    face = np.array([300.0, 200.0, 180.0, 240.0])  # x y w h
    for low, high in CLOSEUP_BUCKETS:
        for _ in range(20):
            fraction = rng.uniform(low, high)
            crop = place_crop(face, (900, 1200), fraction, rng)
            x0, y0, x1, y1 = crop
            assert 0 <= x0 and 0 <= y0 and x1 <= 1200 and y1 <= 900
            assert x0 <= face[0] and face[0] + face[2] <= x1
            assert y0 <= face[1] and face[1] + face[3] <= y1
            assert abs(face[3] / (y1 - y0) - fraction) < 0.01
            assert abs((x1 - x0) / (y1 - y0) - 4 / 3) < 0.01
    assert place_crop(face, (500, 1200), 0.35, rng) is None  # no room: skipped
    assert place_crop(face / 4, (900, 1200), 0.8, rng) is None  # a thumbnail, not a close-up


# ----------------------------------------------------------------------------- scripts
def test_scrfd_py_tiles_on_request_and_with_blur_by_default(det500m_onnx, tmp_path):
    photo = WIDER / "WIDER_val" / "images" / "0--Parade" / "0_Parade_marchingband_1_353.jpg"
    args = ["--model", det500m_onnx, "--size", "128,160", "--image", photo]
    tiled = run_script("scrfd.py", *args, "--tile", "--out", tmp_path / "t").stdout
    plan = plan_tiles(cv2.imread(str(photo)).shape[:2], SMALL_HW)
    passes = int(re.search(r"(\d+) model pass\(es\)", tiled).group(1))
    assert 1 + 10 < passes <= 2 + len(plan)  # the tiles the crowd's faces open
    assert "1 model pass(es), 1.00 per image" in run_script(
        "scrfd.py", *args, "--blur", "--no-tile", "--out", tmp_path / "n").stdout
    assert "(tiled; --no-tile: one each)" in run_script(
        "scrfd.py", *args, "--blur", "--out", tmp_path / "b").stdout
    both = run_script("scrfd.py", *args, "--tile", "--no-tile", check=False)
    assert both.returncode == 2 and both.stderr.strip() == "error: give either --tile or --no-tile"


def test_an_int8_model_quantizes_the_photo_once_with_the_same_bytes(tflite_int8, wider_faces):
    """Tiles of an int8 model come from the photo quantized once through the runner's
    pixel table: the detections equal those of tiles normalised and quantized one by one."""
    detector = SCRFD(tflite_int8, score_threshold=0.3, threads=1, tile=True)
    photo = wider_faces[0][1]
    once = detector.detect(photo)
    assert detector.prepare(photo).quantized
    detector._pixel_table = None  # every tile normalised, then quantized by run()
    each = detector.detect(photo)
    assert not detector.prepare(photo).quantized and len(once) > 0
    assert np.array_equal(once.boxes, each.boxes) and np.array_equal(once.scores, each.scores)


def test_the_close_up_protocol_goes_on_past_an_unreadable_photo(detector, wider_dir, tmp_path):
    gt = load_ground_truth(wider_dir)
    keys, paths = select_images(gt, wider_dir / "dev_images.txt", need_files=True)
    faces = closeup_faces(gt, keys)
    rng_order = np.random.default_rng(CLOSEUP_SEED).permutation(len(faces))
    broken_key = faces[rng_order[0]][0]  # the first face the protocol will try
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    paths = {**paths, broken_key: tmp_path / "broken.jpg"}
    run = run_closeups(detector, {"single pass": False, "tiled": True}, gt, keys, paths,
                       per_bucket=2)
    assert run["skipped"] == [broken_key]
    assert len(run["crops"]) == 2 * len(CLOSEUP_BUCKETS)
    assert all(crop.key != broken_key for crop in run["crops"])
    for crop in run["crops"]:  # the face inside its frame, at its bucket's share of the height
        x0, y0, x1, y1 = crop.crop
        fx1, fy1, fx2, fy2 = crop.face
        low, high = CLOSEUP_BUCKETS[crop.bucket]
        assert 0 <= fx1 < fx2 <= x1 - x0 and 0 <= fy1 < fy2 <= y1 - y0
        assert low - 0.01 <= (fy2 - fy1) / (y1 - y0) <= high + 0.01
    rows = closeup_rows(run, 0.5)
    assert [r["crops"] for r in rows] == [2, 2, 2]
    assert all(0 <= r[mode]["recall"] <= 1 for r in rows for mode in ("single pass", "tiled"))
