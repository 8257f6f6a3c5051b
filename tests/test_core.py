"""Unit tests of detector.py's model-free parts: preprocessing, output naming, decode, NMS, I/O.

No model is needed here: every case is built from synthetic arrays, so these run in seconds.
"""
from __future__ import annotations

import numpy as np
import pytest

import cv2
import detector
from detector import UserError


# ----------------------------------------------------------------------------- NMS
def iou_one_to_many(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    x1 = np.maximum(box[0], others[:, 0])
    y1 = np.maximum(box[1], others[:, 1])
    x2 = np.minimum(box[2], others[:, 2])
    y2 = np.minimum(box[3], others[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    def area(b: np.ndarray) -> np.ndarray:
        return np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)
    union = area(box) + area(others) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms_reference(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Textbook greedy NMS: best score first (ties by position), drop what overlaps a kept box."""
    kept: list[int] = []
    for i in np.argsort(-scores, kind="stable"):
        if not kept or not (iou_one_to_many(boxes[i], boxes[kept]) > threshold).any():
            kept.append(int(i))
    return np.array(kept, dtype=np.int64)


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


@pytest.mark.parametrize("seed", range(40))
def test_nms_matches_reference_on_random_cases(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 400))
    threshold = float(rng.choice([0.0, 0.1, 0.3, 0.4, 0.45, 0.5, 0.7, 0.9, 1.0]))
    boxes, scores = random_boxes(rng, n, clusters=int(rng.integers(1, 12)))
    np.testing.assert_array_equal(detector.nms(boxes, scores, threshold),
                                  nms_reference(boxes, scores, threshold))


def test_nms_matches_reference_on_a_crowded_case():
    """Thousands of candidates, as at a low score threshold on a crowd photo."""
    boxes, scores = random_boxes(np.random.default_rng(1234), 3000, clusters=40, extent=3000)
    np.testing.assert_array_equal(detector.nms(boxes, scores, 0.4),
                                  nms_reference(boxes, scores, 0.4))


def test_nms_equal_scores_keep_every_non_overlapping_box():
    xs, ys = np.meshgrid(np.arange(10) * 30.0, np.arange(10) * 30.0)
    xs, ys = xs.ravel(), ys.ravel()
    boxes = np.stack([xs, ys, xs + 20, ys + 20], 1).astype(np.float32)
    scores = np.full(len(boxes), 0.5, np.float32)
    np.testing.assert_array_equal(detector.nms(boxes, scores, 0.4), np.arange(100))


def test_nms_equal_scores_touching_boxes_all_kept():
    """Boxes that share an edge have zero intersection: none may suppress another."""
    boxes = np.array([[0, 0, 10, 10], [10, 0, 20, 10], [0, 10, 10, 20], [10, 10, 20, 20]],
                     np.float32)
    np.testing.assert_array_equal(detector.nms(boxes, np.ones(4, np.float32), 0.0), [0, 1, 2, 3])


def test_nms_equal_scores_duplicates_keep_the_first():
    boxes = np.array([[0, 0, 10, 10], [50, 50, 60, 60], [0, 0, 10, 10], [50, 50, 60, 60]],
                     np.float32)
    keep = detector.nms(boxes, np.full(4, 0.8, np.float32), 0.4)
    np.testing.assert_array_equal(keep, [0, 1])


def test_nms_orders_by_score_and_handles_tiny_inputs():
    assert detector.nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.4).tolist() == []
    assert detector.nms(np.array([[0, 0, 1, 1]], np.float32), np.array([0.3], np.float32),
                        0.4).tolist() == [0]
    boxes = np.array([[0, 0, 10, 10], [100, 0, 110, 10], [1, 1, 11, 11]], np.float32)
    scores = np.array([0.6, 0.9, 0.7], np.float32)
    assert detector.nms(boxes, scores, 0.4).tolist() == [1, 2]


# ----------------------------------------------------------------------------- preprocessing
def test_letterbox_keeps_aspect_ratio_top_left_with_zero_padding():
    image = np.full((50, 100, 3), 200, np.uint8)
    canvas, scale = detector.letterbox(image, (64, 96))
    assert canvas.shape == (64, 96, 3) and canvas.dtype == np.uint8
    assert scale == pytest.approx(0.96)
    assert (canvas[:48] == 200).all() and (canvas[48:] == 0).all()


def test_letterbox_upscales_an_image_smaller_than_one_stride():
    canvas, scale = detector.letterbox(np.full((3, 5, 3), 90, np.uint8), (64, 96))
    assert scale == pytest.approx(min(64 / 3, 96 / 5))
    assert (canvas[: int(3 * scale), : int(5 * scale)] == 90).all()


def test_normalize_is_rgb_scaled_and_layouts_agree():
    canvas = np.zeros((32, 64, 3), np.uint8)
    canvas[..., 2] = 255  # red in BGR
    nchw = detector.normalize(canvas, "NCHW")
    nhwc = detector.normalize(canvas, "NHWC")
    assert nchw.shape == (1, 3, 32, 64) and nhwc.shape == (1, 32, 64, 3)
    assert nchw.dtype == np.float32
    np.testing.assert_allclose(nchw[0, 0], (255 - 127.5) / 128)  # R first
    np.testing.assert_allclose(nchw[0, 2], -127.5 / 128)
    np.testing.assert_array_equal(nchw[0].transpose(1, 2, 0), nhwc[0])


def test_preprocess_returns_the_scale_back_to_original_pixels():
    tensor, scale = detector.preprocess(np.zeros((400, 600, 3), np.uint8), (128, 160))
    assert tensor.shape == (1, 3, 128, 160)
    assert scale == pytest.approx(min(128 / 400, 160 / 600))


@pytest.mark.parametrize("make", [
    lambda: np.full((20, 30), 77, np.uint8),                                 # grayscale
    lambda: np.full((20, 30, 1), 77, np.uint8),                              # grayscale, 3-D
    lambda: np.dstack([np.full((20, 30, 3), 77, np.uint8), np.zeros((20, 30), np.uint8)]),  # BGRA
    lambda: np.full((20, 30, 3), 77 * 257, np.uint16),                       # 16-bit
    lambda: np.full((20, 30, 3), 77 / 255, np.float32),                      # float 0..1
])
def test_to_bgr8_brings_every_format_to_uint8_bgr(make):
    out = detector.to_bgr8(make())
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    assert abs(int(out[0, 0, 0]) - 77) <= 1


def test_read_image_handles_16bit_png_and_rejects_corrupt_files(tmp_path):
    png16 = tmp_path / "deep.png"
    cv2.imwrite(str(png16), np.full((8, 9, 3), 40000, np.uint16))
    image = detector.read_image(png16)
    assert image.shape == (8, 9, 3) and image.dtype == np.uint8 and image[0, 0, 0] == 40000 >> 8
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    with pytest.raises(UserError, match="corrupt"):
        detector.read_image(corrupt)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(UserError):
        detector.read_image(empty)


# ----------------------------------------------------------------------------- outputs and decode
INPUT_HW = (64, 96)  # cells: 8x12 at stride 8, 4x6 at 16, 2x3 at 32


def raw_shapes(anchors: int = 2, batch_dim: bool = False) -> list[tuple[int, ...]]:
    shapes = []
    for channels in (1, 4, 10):
        for stride in detector.STRIDES:
            rows = (INPUT_HW[0] // stride) * (INPUT_HW[1] // stride) * anchors
            shapes.append((1, rows, channels) if batch_dim else (rows, channels))
    return shapes


@pytest.mark.parametrize("batch_dim", [False, True])
def test_identify_outputs_names_shuffled_outputs_by_shape(batch_dim):
    shapes = raw_shapes(batch_dim=batch_dim)
    order = np.random.default_rng(0).permutation(len(shapes))
    specs, anchors = detector.identify_outputs([shapes[i] for i in order], INPUT_HW)
    expected = [detector.OutputSpec(kind, stride) for kind in ("score", "bbox", "kps")
                for stride in detector.STRIDES]
    assert anchors == 2
    assert specs == [expected[i] for i in order]


@pytest.mark.parametrize("shapes", [
    raw_shapes()[:-1],                              # a stride missing
    raw_shapes() + [(10, 5)],                       # unknown channel count
    [(r + 2, c) for r, c in raw_shapes()],          # rows that do not fit the input size
])
def test_identify_outputs_rejects_what_is_not_scrfd(shapes):
    with pytest.raises(UserError):
        detector.identify_outputs(shapes, INPUT_HW)


def test_anchor_centers_are_row_major_and_repeated_per_anchor():
    centers = detector.anchor_centers(64, 96, 16, 2)
    assert centers.shape == (4 * 6 * 2, 2)
    np.testing.assert_array_equal(centers[:4], [[0, 0], [0, 0], [16, 0], [16, 0]])
    np.testing.assert_array_equal(centers[12], [0, 16])  # second row starts after 6 cells x 2


def empty_raw(anchors: int = 2) -> dict:
    raw = {}
    for stride in detector.STRIDES:
        rows = (INPUT_HW[0] // stride) * (INPUT_HW[1] // stride) * anchors
        raw[stride] = {"score": np.zeros(rows, np.float32), "bbox": np.zeros((rows, 4), np.float32),
                       "kps": np.zeros((rows, 10), np.float32)}
    return raw


def test_decode_turns_distances_into_boxes_and_landmarks():
    raw = empty_raw()
    row, col = 2, 3  # stride 16 cell -> centre (48, 32)
    index = (row * 6 + col) * 2 + 1  # second anchor of that cell
    raw[16]["score"][index] = 0.9
    raw[16]["bbox"][index] = [1, 2, 3, 4]
    raw[16]["kps"][index] = np.arange(10) / 10
    boxes, scores, landmarks = detector.decode(raw, INPUT_HW, 2, 0.5)
    np.testing.assert_allclose(boxes, [[48 - 16, 32 - 32, 48 + 48, 32 + 64]])
    np.testing.assert_allclose(scores, [0.9])
    expected = np.arange(10).reshape(5, 2) / 10 * 16 + [48, 32]
    np.testing.assert_allclose(landmarks[0], expected, rtol=1e-6)


def test_decode_without_keypoints_and_with_nothing_above_threshold():
    raw = empty_raw()
    for level in raw.values():
        del level["kps"]
    boxes, scores, landmarks = detector.decode(raw, INPUT_HW, 2, 0.5)
    assert boxes.shape == (0, 4) and scores.shape == (0,) and landmarks is None


def test_postprocess_undoes_the_letterbox_scale_and_limits_faces():
    raw = empty_raw()
    for i, index in enumerate((0, 40, 90)):  # three separate stride-8 anchors
        raw[8]["score"][index] = 0.6 + i / 10
        raw[8]["bbox"][index] = [1, 1, 1, 1]
    dets = detector.postprocess(raw, INPUT_HW, 2, scale=0.5, score_threshold=0.5,
                                nms_threshold=0.4)
    assert len(dets) == 3
    np.testing.assert_allclose(dets.scores, [0.8, 0.7, 0.6], rtol=1e-6)
    np.testing.assert_allclose(dets.boxes[:, 2] - dets.boxes[:, 0], 32.0)  # 16 px / 0.5
    limited = detector.postprocess(raw, INPUT_HW, 2, 0.5, 0.5, 0.4, max_faces=2)
    assert len(limited) == 2 and limited.scores[0] == pytest.approx(0.8)
    faces = limited.to_list()
    assert set(faces[0]) == {"box", "score", "landmarks"} and len(faces[0]["landmarks"]) == 5


# ----------------------------------------------------------------------------- files and options
def test_find_images_expands_folders_globs_and_rejects_missing_paths(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("a.jpg", "b.PNG", "notes.txt", "sub/c.jpeg"):
        (tmp_path / name).write_bytes(b"x")
    found = detector.find_images([tmp_path])
    assert [p.name for p in found] == ["a.jpg", "b.PNG", "c.jpeg"]
    assert [p.name for p in detector.find_images([str(tmp_path / "*.jpg")])] == ["a.jpg"]
    assert detector.find_images([tmp_path / "a.jpg", tmp_path]) == found  # no duplicates
    with pytest.raises(UserError, match="no such file"):
        detector.find_images([tmp_path / "missing.jpg"])
    with pytest.raises(UserError, match="no files match"):
        detector.find_images([str(tmp_path / "*.gif")])


@pytest.mark.parametrize("text, expected", [("480,640", (480, 640)), ("128x160", (128, 160))])
def test_parse_hw_accepts_multiples_of_32(text, expected):
    assert detector.parse_hw(text) == expected


@pytest.mark.parametrize("text", ["480", "480,650", "0,640", "a,b"])
def test_parse_hw_rejects_bad_sizes(text):
    with pytest.raises(UserError):
        detector.parse_hw(text)
