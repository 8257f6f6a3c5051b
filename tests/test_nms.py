"""scrfdkit.nms.nms against the plain greedy loop (greedy_nms): the same kept indices in the same
order on generated sets built to hit every corner (ties, IoU exactly at the threshold,
degenerate and non-finite boxes, mixed scales) and on the detector's own candidates from
sample photos at the evaluation's score threshold. tests/bench_nms.py times them.
"""
from __future__ import annotations

import numpy as np
import pytest
from conftest import MODELS, SAMPLES

from scrfdkit.decode import decode
from scrfdkit.detector import SCRFD
from scrfdkit.files import read_image
from scrfdkit import nms as scrfdkit_nms
from scrfdkit.nms import box_iou, greedy_nms, nms

pytestmark = pytest.mark.inference  # runs without TensorFlow (CI: make test-inference)

CROWD_PHOTOS = ("crowd_selfie.jpg", "fans_crowd.jpg", "crowd_5334x2767.jpg")
EVAL_SCORE, EVAL_NMS = 0.02, 0.45  # evaluate_widerface.py's thresholds: the most candidates


def assert_same_as_reference(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> None:
    """Both of nms's paths, the compiled kernel and the all-pairs matrix for small sets."""
    for compiled_from in (0, 1 << 30):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("scrfdkit.nms.COMPILED_FROM", compiled_from)
            check_one_path(boxes, scores, threshold)


def check_one_path(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> None:
    if len(boxes) > 6000 and scrfdkit_nms.COMPILED_FROM > len(boxes):
        return  # an all-pairs matrix of this many boxes is not what nms builds
    kept = nms(boxes, scores, threshold)
    assert kept.dtype == np.int64
    np.testing.assert_array_equal(kept, greedy_nms(boxes, scores, threshold),
                                  err_msg=f"{len(boxes)} boxes, IoU threshold {threshold}")


# ----------------------------------------------------------------------------- candidate sets
def random_boxes(rng: np.random.Generator, n: int, clusters: int = 8, extent: float = 1000.0
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Boxes crowded around a few centres (like detector candidates), sizes over 2..400 px,
    scores rounded to two decimals so that many of them tie."""
    centres = rng.uniform(0, extent, (clusters, 2))
    centre = centres[rng.integers(0, clusters, n)] + rng.normal(0, 15, (n, 2))
    size = np.exp(rng.uniform(np.log(2), np.log(400), (n, 1))) * rng.uniform(0.7, 1.3, (n, 2))
    boxes = np.hstack([centre - size / 2, centre + size / 2]).astype(np.float32)
    scores = np.round(rng.uniform(0.3, 1.0, n), 2).astype(np.float32)
    return boxes, scores


def lattice_boxes(rng: np.random.Generator, n: int, grid: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Small integer boxes, so that IoUs such as 1/3, 9/20 or 1/2 land exactly on a threshold,
    duplicates and shared edges are common, and a tenth have zero width or height."""
    corner = rng.integers(0, grid, (n, 2))
    size = rng.integers(1, 6, (n, 2)) * (rng.random((n, 2)) > 0.05)
    boxes = np.hstack([corner, corner + size]).astype(np.float32)
    return boxes, rng.integers(0, 4, n).astype(np.float32)  # four score values: heavy ties


def hostile_boxes(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Detector-like boxes salted with what a broken model can emit: inverted corners,
    NaN and infinite coordinates, zero-area boxes, NaN scores, tiny and huge boxes."""
    boxes, scores = random_boxes(rng, n, clusters=3, extent=300)

    def some(share: float) -> np.ndarray:
        return np.flatnonzero(rng.random(n) < share)

    inverted = some(0.05)
    boxes[inverted] = boxes[inverted][:, [2, 3, 0, 1]]
    for value in (np.nan, np.inf, -np.inf):
        rows = some(0.02)
        boxes[rows, rng.integers(0, 4, len(rows))] = value
    flat = some(0.05)
    boxes[flat, 2] = boxes[flat, 0]
    tiny = some(0.05)
    boxes[tiny, 2:] = boxes[tiny, :2] + rng.uniform(1e-4, 1e-2, (len(tiny), 2))
    huge = some(0.02)
    boxes[huge] += np.array([-5000, -5000, 5000, 5000], np.float32)
    scores[some(0.02)] = np.nan
    return boxes, scores


@pytest.fixture(scope="module")
def photo_candidates() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The det_500m candidates of each crowd photo at score 0.02 (what NMS receives)."""
    detector = SCRFD(MODELS / "det_500m.onnx", score_threshold=EVAL_SCORE)
    return {name: detector_candidates(detector, read_image(SAMPLES / name))
            for name in CROWD_PHOTOS}


def detector_candidates(detector: SCRFD, image: np.ndarray, score: float = EVAL_SCORE
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Boxes and scores that decode hands to NMS, in the model's input pixels (as postprocess)."""
    tensor, _ = detector.prepare(image)
    boxes, scores, _ = decode(detector.runner.run(tensor), detector.input_hw,
                              detector.runner.anchors, score)
    return boxes, scores


def tiled_candidates(detector: SCRFD, image: np.ndarray, step: int, score: float = EVAL_SCORE
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Candidates of the whole-photo pass plus those of input-sized crops at scale 1, every
    `step` pixels, all in photo pixels: the many-times-overlapping sets that tiling produces."""
    height, width = detector.input_hw
    tensor, scale = detector.prepare(image)
    boxes, scores, _ = decode(detector.runner.run(tensor), detector.input_hw,
                              detector.runner.anchors, score)
    all_boxes, all_scores = [boxes / scale], [scores]
    for top in range(0, max(image.shape[0] - height, 0) + 1, step):
        for left in range(0, max(image.shape[1] - width, 0) + 1, step):
            crop = np.ascontiguousarray(image[top:top + height, left:left + width])
            boxes, scores = detector_candidates(detector, crop, score)
            all_boxes.append(boxes + np.array([left, top, left, top], np.float32))
            all_scores.append(scores)
    return np.concatenate(all_boxes).astype(np.float32), np.concatenate(all_scores)


# ----------------------------------------------------------------------------- generated sets
@pytest.mark.parametrize("seed", range(40))
def test_same_as_reference_on_random_crowds(seed):
    rng = np.random.default_rng(seed)
    boxes, scores = random_boxes(rng, int(rng.integers(0, 400)), clusters=int(rng.integers(1, 12)))
    for threshold in (0.0, 0.45, 1.0, float(rng.choice([0.1, 0.3, 0.4, 0.5, 0.7, 0.9]))):
        assert_same_as_reference(boxes, scores, threshold)


@pytest.mark.parametrize("seed", range(20))
def test_same_as_reference_when_ious_sit_exactly_on_the_threshold(seed):
    boxes, scores = lattice_boxes(np.random.default_rng(seed), 300)
    for threshold in (0.0, 1 / 3, 0.4, 0.45, 0.5, 2 / 3, 1.0):
        assert_same_as_reference(boxes, scores, threshold)


def test_lattice_sets_do_put_ious_on_the_thresholds():
    """The lattice case is only a test of `>` versus `>=` if IoUs equal to the threshold occur."""
    boxes, _ = lattice_boxes(np.random.default_rng(0), 300)
    ious = np.concatenate([box_iou(boxes[i], boxes[i + 1:]) for i in range(len(boxes))])
    for threshold in (1 / 3, 0.4, 0.45, 0.5, 2 / 3):
        assert (ious == np.float32(threshold)).sum() > 10, threshold


def test_same_as_reference_when_the_last_bit_of_the_iou_decides():
    """Thresholds set to each pair's own float32 IoU and to the float just below it: an IoU
    computed any other way (sums in another order, fused multiply-adds, float64) flips some."""
    rng = np.random.default_rng(11)
    first, _ = random_boxes(rng, 2000, clusters=20)
    second = first + rng.normal(0, 3, first.shape).astype(np.float32)
    scores = np.array([0.9, 0.8], np.float32)
    for a, b in zip(first, second):
        iou = box_iou(a, b[None])[0]
        for threshold in (iou, np.nextafter(iou, np.float32(-1))):
            if 0 <= threshold <= 1:
                assert_same_as_reference(np.stack([a, b]), scores, float(threshold))


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # greedy_nms on NaN and inf
@pytest.mark.parametrize("seed", range(15))
def test_same_as_reference_on_hostile_boxes(seed):
    boxes, scores = hostile_boxes(np.random.default_rng(seed), 400)
    for threshold in (0.0, 0.45, 1.0):
        assert_same_as_reference(boxes, scores, threshold)


@pytest.mark.parametrize("seed", range(6))
def test_same_as_reference_in_float64(seed):
    """float64 boxes (as some peers produce) are compared in float64, as numpy does."""
    rng = np.random.default_rng(seed)
    boxes, scores = random_boxes(rng, 300)
    boxes = boxes.astype(np.float64) + rng.normal(0, 1e-3, boxes.shape)
    for threshold in (0.0, 0.45, 1.0):
        assert_same_as_reference(boxes, scores.astype(np.float64), threshold)


def test_same_as_reference_across_many_scales():
    """Tiny, face-sized and photo-sized boxes together, as tiles plus a whole-photo pass give."""
    rng = np.random.default_rng(7)
    boxes, scores = random_boxes(rng, 3000, clusters=60, extent=4000)
    scale = np.exp(rng.uniform(np.log(0.01), np.log(20), (3000, 1))).astype(np.float32)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    boxes = np.hstack([centre - (centre - boxes[:, :2]) * scale,
                       centre + (boxes[:, 2:] - centre) * scale])
    for threshold in (0.0, 0.45):
        assert_same_as_reference(boxes, scores, threshold)


def test_same_as_reference_far_from_the_origin():
    """Coordinates near 1e6 (float32 steps of 1/16) keep the grid and the IoUs exact."""
    boxes, scores = random_boxes(np.random.default_rng(3), 500, clusters=4, extent=100)
    assert_same_as_reference(boxes + np.float32(1e6), scores, 0.45)


@pytest.mark.parametrize("dtype, base", [(np.float32, 1e6), (np.float64, 1e9)])
def test_same_as_reference_for_boxes_a_few_float_steps_wide(dtype, base):
    """Far from the origin, boxes 1 to 8 float steps wide: the grid's own arithmetic rounds
    by as much as the boxes overlap, which the rounding margin must cover."""
    step = np.spacing(dtype(base))
    for seed in range(10):
        rng = np.random.default_rng(seed)
        corner = rng.integers(0, 60, (600, 2))
        boxes = (dtype(base) + np.hstack([corner, corner + rng.integers(1, 9, (600, 2))]) * step)
        scores = rng.random(600).astype(np.float32)
        for threshold in (0.0, 0.2, 0.45):
            assert_same_as_reference(boxes.astype(dtype), scores, threshold)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # greedy_nms: inf - inf areas
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_same_as_reference_at_the_ends_of_the_float_range(dtype):
    """Areas that overflow, areas near underflow, and sizes from 1e-20 to 1e20 together."""
    big = np.finfo(dtype).max / 4
    rng = np.random.default_rng(5)
    centre = rng.uniform(-1e3, 1e3, (300, 2))
    half = 10.0 ** rng.uniform(-20, 20, (300, 1)) if dtype == np.float64 else \
        10.0 ** rng.uniform(-6, 6, (300, 1))
    sets = [np.array([[-big, -big, big, big], [0, 0, big / 2, big / 2], [-big, -big, big / 2, big],
                      [1, 1, 2, 2]], dtype),
            np.array([[0, 0, 1e-30, 1e-30], [0, 0, 1e-30, 1.1e-30], [5e-31, 0, 1.5e-30, 1e-30],
                      [0, 0, 1, 1]], dtype),
            np.hstack([centre - half, centre + half]).astype(dtype)]
    for boxes in sets:
        scores = rng.random(len(boxes)).astype(np.float32)
        for threshold in (0.0, 1e-7, 0.45, 1.0):
            assert_same_as_reference(boxes, scores, threshold)


def test_equal_scores_keep_every_non_overlapping_box():
    xs, ys = np.meshgrid(np.arange(10) * 30.0, np.arange(10) * 30.0)
    xs, ys = xs.ravel(), ys.ravel()
    boxes = np.stack([xs, ys, xs + 20, ys + 20], 1).astype(np.float32)
    np.testing.assert_array_equal(nms(boxes, np.full(100, 0.5, np.float32), 0.4), np.arange(100))


def test_equal_scores_touching_boxes_all_kept():
    """Boxes that share an edge have zero intersection: none may suppress another."""
    boxes = np.array([[0, 0, 10, 10], [10, 0, 20, 10], [0, 10, 10, 20], [10, 10, 20, 20]],
                     np.float32)
    np.testing.assert_array_equal(nms(boxes, np.ones(4, np.float32), 0.0), [0, 1, 2, 3])


def test_equal_scores_duplicates_keep_the_first():
    boxes = np.array([[0, 0, 10, 10], [50, 50, 60, 60], [0, 0, 10, 10], [50, 50, 60, 60]],
                     np.float32)
    np.testing.assert_array_equal(nms(boxes, np.full(4, 0.8, np.float32), 0.4), [0, 1])


def test_orders_by_score_and_handles_tiny_inputs():
    assert nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.4).tolist() == []
    one = np.array([[0, 0, 1, 1]], np.float32)
    assert nms(one, np.array([0.3], np.float32), 0.4).tolist() == [0]
    boxes = np.array([[0, 0, 10, 10], [100, 0, 110, 10], [1, 1, 11, 11]], np.float32)
    assert nms(boxes, np.array([0.6, 0.9, 0.7], np.float32), 0.4).tolist() == [1, 2]


def test_iou_exactly_at_the_threshold_is_kept():
    """IoU 9/20 = 0.45: greedy NMS suppresses only above the threshold."""
    boxes = np.array([[0, 0, 4, 5], [0, 0, 3, 3]], np.float32)
    scores = np.array([0.9, 0.8], np.float32)
    assert nms(boxes, scores, 0.45).tolist() == [0, 1]
    assert nms(boxes, scores, 0.4499).tolist() == [0]


@pytest.mark.parametrize("args", [
    (np.zeros((3, 4)), np.zeros(2), 0.5), (np.zeros((3, 5)), np.zeros(3), 0.5),
    (np.zeros((3, 4)), np.zeros(3), -0.1), (np.zeros((3, 4)), np.zeros(3), 1.5),
    (np.zeros((3, 4)), np.zeros(3), float("nan"))])
def test_refuses_bad_shapes_and_thresholds(args):
    with pytest.raises(ValueError):
        nms(*args)


# ----------------------------------------------------------------------------- real candidates
@pytest.mark.parametrize("photo", CROWD_PHOTOS)
def test_same_as_reference_on_detector_candidates(photo_candidates, photo):
    boxes, scores = photo_candidates[photo]
    assert len(scores) > 1000  # crowds at score 0.02: the sets that made NMS slow
    for threshold in (EVAL_NMS, 0.4):
        assert_same_as_reference(boxes, scores, threshold)


def test_same_as_reference_on_overlapping_tiles():
    """Tiles overlap, so the same face reaches NMS several times, at several scales."""
    detector = SCRFD(MODELS / "det_500m.onnx", (320, 320), score_threshold=EVAL_SCORE)
    image = read_image(SAMPLES / "crowd_5334x2767.jpg")[1000:1600, 2000:2900]
    boxes, scores = tiled_candidates(detector, image, step=160)
    assert len(scores) > 2000
    assert_same_as_reference(boxes, scores, EVAL_NMS)


def test_the_detector_keeps_what_the_reference_keeps():
    """SCRFD.detect goes through nms: its faces are the reference's choice of candidates."""
    detector = SCRFD(MODELS / "det_500m.onnx", score_threshold=EVAL_SCORE, nms_threshold=EVAL_NMS)
    image = read_image(SAMPLES / "fans_crowd.jpg")
    boxes, scores = detector_candidates(detector, image)
    faces = detector.detect(image)
    _, scale = detector.prepare(image)
    keep = greedy_nms(boxes, scores, EVAL_NMS)
    np.testing.assert_array_equal(faces.scores, scores[keep])
    np.testing.assert_allclose(faces.boxes, boxes[keep] / scale, rtol=1e-6)

