"""Unit tests of scrfdkit's model-free parts: preprocessing, output naming, decode, NMS, I/O.

No model is needed here: every case is built from synthetic arrays, so these run in seconds.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from scrfdkit import decode, files, nms
from scrfdkit.cli import parse_hw
from scrfdkit.errors import UserError
from scrfdkit.nms import greedy_nms

pytestmark = pytest.mark.inference  # runs without TensorFlow (CI: make test-inference)


# ----------------------------------------------------------------------------- NMS
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
    np.testing.assert_array_equal(nms.nms(boxes, scores, threshold),
                                  greedy_nms(boxes, scores, threshold))


def test_nms_matches_reference_on_a_crowded_case():
    """Thousands of candidates, as at a low score threshold on a crowd photo."""
    boxes, scores = random_boxes(np.random.default_rng(1234), 3000, clusters=40, extent=3000)
    np.testing.assert_array_equal(nms.nms(boxes, scores, 0.4),
                                  greedy_nms(boxes, scores, 0.4))


def test_nms_equal_scores_keep_every_non_overlapping_box():
    xs, ys = np.meshgrid(np.arange(10) * 30.0, np.arange(10) * 30.0)
    xs, ys = xs.ravel(), ys.ravel()
    boxes = np.stack([xs, ys, xs + 20, ys + 20], 1).astype(np.float32)
    scores = np.full(len(boxes), 0.5, np.float32)
    np.testing.assert_array_equal(nms.nms(boxes, scores, 0.4), np.arange(100))


def test_nms_equal_scores_touching_boxes_all_kept():
    """Boxes that share an edge have zero intersection: none may suppress another."""
    boxes = np.array([[0, 0, 10, 10], [10, 0, 20, 10], [0, 10, 10, 20], [10, 10, 20, 20]],
                     np.float32)
    np.testing.assert_array_equal(nms.nms(boxes, np.ones(4, np.float32), 0.0), [0, 1, 2, 3])


def test_nms_equal_scores_duplicates_keep_the_first():
    boxes = np.array([[0, 0, 10, 10], [50, 50, 60, 60], [0, 0, 10, 10], [50, 50, 60, 60]],
                     np.float32)
    keep = nms.nms(boxes, np.full(4, 0.8, np.float32), 0.4)
    np.testing.assert_array_equal(keep, [0, 1])


def test_nms_orders_by_score_and_handles_tiny_inputs():
    assert nms.nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.4).tolist() == []
    assert nms.nms(np.array([[0, 0, 1, 1]], np.float32), np.array([0.3], np.float32),
                        0.4).tolist() == [0]
    boxes = np.array([[0, 0, 10, 10], [100, 0, 110, 10], [1, 1, 11, 11]], np.float32)
    scores = np.array([0.6, 0.9, 0.7], np.float32)
    assert nms.nms(boxes, scores, 0.4).tolist() == [1, 2]


# ----------------------------------------------------------------------------- preprocessing
def test_letterbox_keeps_aspect_ratio_top_left_with_zero_padding():
    image = np.full((50, 100, 3), 200, np.uint8)
    canvas, scale = decode.letterbox(image, (64, 96))
    assert canvas.shape == (64, 96, 3) and canvas.dtype == np.uint8
    assert scale == pytest.approx(0.96)
    assert (canvas[:48] == 200).all() and (canvas[48:] == 0).all()


def test_letterbox_upscales_an_image_smaller_than_one_stride():
    canvas, scale = decode.letterbox(np.full((3, 5, 3), 90, np.uint8), (64, 96))
    assert scale == pytest.approx(min(64 / 3, 96 / 5))
    assert (canvas[: int(3 * scale), : int(5 * scale)] == 90).all()


def test_normalize_is_rgb_scaled_and_layouts_agree():
    canvas = np.zeros((32, 64, 3), np.uint8)
    canvas[..., 2] = 255  # red in BGR
    nchw = decode.normalize(canvas, "NCHW")
    nhwc = decode.normalize(canvas, "NHWC")
    assert nchw.shape == (1, 3, 32, 64) and nhwc.shape == (1, 32, 64, 3)
    assert nchw.dtype == np.float32
    np.testing.assert_allclose(nchw[0, 0], (255 - 127.5) / 128)  # R first
    np.testing.assert_allclose(nchw[0, 2], -127.5 / 128)
    np.testing.assert_array_equal(nchw[0].transpose(1, 2, 0), nhwc[0])


def test_preprocess_returns_the_scale_back_to_original_pixels():
    tensor, scale = decode.preprocess(np.zeros((400, 600, 3), np.uint8), (128, 160))
    assert tensor.shape == (1, 3, 128, 160)
    assert scale == pytest.approx(min(128 / 400, 160 / 600))


@pytest.mark.parametrize("make", [
    lambda: np.full((20, 30), 77, np.uint8),                                 # grayscale
    lambda: np.full((20, 30, 1), 77, np.uint8),                              # grayscale, 3-D
    lambda: np.dstack([np.full((20, 30, 3), 77, np.uint8), np.zeros((20, 30), np.uint8)]),  # BGRA
    lambda: np.full((20, 30, 3), 77 * 257, np.uint16),                       # 16-bit
    lambda: np.full((20, 30, 3), 77 / 255, np.float32),                      # float 0..1
    lambda: np.full((20, 30), 77.0, np.float32),                             # float 0..255
    lambda: np.full((20, 30, 3), 77, np.int32),                              # int, 8-bit range
])
def test_to_bgr8_brings_every_format_to_uint8_bgr(make):
    out = files.to_bgr8(make())
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    assert abs(int(out[0, 0, 0]) - 77) <= 1


def test_read_image_handles_16bit_png_and_rejects_corrupt_files(tmp_path):
    png16 = tmp_path / "deep.png"
    cv2.imwrite(str(png16), np.full((8, 9, 3), 40000, np.uint16))
    image = files.read_image(png16)
    assert image.shape == (8, 9, 3) and image.dtype == np.uint8 and image[0, 0, 0] == 40000 >> 8
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    with pytest.raises(UserError, match="corrupt"):
        files.read_image(corrupt)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(UserError):
        files.read_image(empty)


def real_photo() -> np.ndarray:
    """A small photo-like image (gradients and a disc) for format round trips."""
    ys, xs = np.mgrid[:48, :64]
    image = np.dstack([xs * 4, ys * 5, (xs + ys) * 2]).astype(np.uint8)
    cv2.circle(image, (32, 24), 12, (200, 180, 160), -1)
    return image


def write_with_pillow(path, image_bgr: np.ndarray, mode: str) -> None:
    from PIL import Image

    Image.fromarray(image_bgr[:, :, ::-1]).convert(mode).save(path)


@pytest.mark.parametrize("mode,suffix", [("P", ".png"), ("CMYK", ".jpg"), ("LA", ".png"),
                                         ("RGBA", ".png"), ("L", ".tif")])
def test_unusual_sample_formats_keep_their_brightness(tmp_path, mode, suffix):
    pytest.importorskip("PIL")
    image = real_photo()
    path = tmp_path / f"photo_{mode}{suffix}"
    write_with_pillow(path, image, mode)
    out = files.read_image(path)
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).mean()
    assert out.shape == (48, 64, 3) and out.dtype == np.uint8
    assert abs(cv2.cvtColor(out, cv2.COLOR_BGR2GRAY).mean() - gray) < 12  # not a black frame


def test_float_tiff_in_0_to_1_is_scaled_and_32_bit_ints_are_refused(tmp_path):
    image = real_photo()
    float_tiff = tmp_path / "float.tiff"
    cv2.imwrite(str(float_tiff), image.astype(np.float32) / 255)
    assert np.abs(files.read_image(float_tiff).astype(int) - image).mean() < 2  # same brightness
    int_tiff = tmp_path / "int32.tiff"
    cv2.imwrite(str(int_tiff), image.astype(np.int32) * 1000)
    with pytest.raises(UserError, match="int32 samples are not supported"):
        files.read_image(int_tiff)


def test_gif_is_read_or_named_unsupported_never_called_corrupt(tmp_path):
    pytest.importorskip("PIL")
    gif = tmp_path / "anim.gif"
    write_with_pillow(gif, real_photo(), "P")
    if cv2.imdecode(np.fromfile(str(gif), np.uint8), cv2.IMREAD_COLOR) is not None:
        assert files.read_image(gif).shape == (48, 64, 3)  # OpenCV 5 decodes GIF
    else:
        with pytest.raises(UserError, match="GIF file, not a supported image format"):
            files.read_image(gif)


def test_heic_is_named_unsupported_not_corrupt(tmp_path):
    heic = tmp_path / "photo.heic"  # the ISO box header of an iPhone photo, then data
    heic.write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(200))
    with pytest.raises(UserError, match="HEIC file, not a supported image format"):
        files.read_image(heic)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_an_image_header_claiming_60000x60000_pixels_is_a_user_error(tmp_path, suffix):
    path = tmp_path / f"huge{suffix}"
    path.write_bytes(huge_header(cv2.imencode(suffix, real_photo())[1].tobytes(), suffix))
    with pytest.raises(UserError, match="more pixels than OpenCV accepts"):
        files.read_image(path)


def huge_header(data: bytes, suffix: str) -> bytes:
    """The same image whose header claims 60000x60000 pixels."""
    import struct
    import zlib

    data = bytearray(data)
    if suffix == ".png":
        data[16:24] = struct.pack(">II", 60000, 60000)
        data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    else:
        start = data.find(b"\xff\xc0")
        data[start + 5:start + 9] = struct.pack(">HH", 60000, 60000)
    return bytes(data)


# ----------------------------------------------------------------------------- outputs and decode
INPUT_HW = (64, 96)  # cells: 8x12 at stride 8, 4x6 at 16, 2x3 at 32


def raw_shapes(anchors: int = 2, batch_dim: bool = False) -> list[tuple[int, ...]]:
    shapes = []
    for channels in (1, 4, 10):
        for stride in decode.STRIDES:
            rows = (INPUT_HW[0] // stride) * (INPUT_HW[1] // stride) * anchors
            shapes.append((1, rows, channels) if batch_dim else (rows, channels))
    return shapes


@pytest.mark.parametrize("batch_dim", [False, True])
def test_identify_outputs_names_shuffled_outputs_by_shape(batch_dim):
    shapes = raw_shapes(batch_dim=batch_dim)
    order = np.random.default_rng(0).permutation(len(shapes))
    specs, anchors = decode.identify_outputs([shapes[i] for i in order], INPUT_HW)
    expected = [decode.OutputSpec(kind, stride) for kind in ("score", "bbox", "kps")
                for stride in decode.STRIDES]
    assert anchors == 2
    assert specs == [expected[i] for i in order]


@pytest.mark.parametrize("shapes", [
    raw_shapes()[:-1],                              # a stride missing
    raw_shapes() + [(10, 5)],                       # unknown channel count
    [(r + 2, c) for r, c in raw_shapes()],          # rows that do not fit the input size
])
def test_identify_outputs_rejects_what_is_not_scrfd(shapes):
    with pytest.raises(UserError):
        decode.identify_outputs(shapes, INPUT_HW)


def test_anchor_centers_are_row_major_and_repeated_per_anchor():
    centers = decode.anchor_centers(64, 96, 16, 2)
    assert centers.shape == (4 * 6 * 2, 2)
    np.testing.assert_array_equal(centers[:4], [[0, 0], [0, 0], [16, 0], [16, 0]])
    np.testing.assert_array_equal(centers[12], [0, 16])  # second row starts after 6 cells x 2


def empty_raw(anchors: int = 2) -> dict:
    raw = {}
    for stride in decode.STRIDES:
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
    boxes, scores, landmarks = decode.decode(raw, INPUT_HW, 2, 0.5)
    np.testing.assert_allclose(boxes, [[48 - 16, 32 - 32, 48 + 48, 32 + 64]])
    np.testing.assert_allclose(scores, [0.9])
    expected = np.arange(10).reshape(5, 2) / 10 * 16 + [48, 32]
    np.testing.assert_allclose(landmarks[0], expected, rtol=1e-6)


def test_decode_without_keypoints_and_with_nothing_above_threshold():
    raw = empty_raw()
    for level in raw.values():
        del level["kps"]
    boxes, scores, landmarks = decode.decode(raw, INPUT_HW, 2, 0.5)
    assert boxes.shape == (0, 4) and scores.shape == (0,) and landmarks is None


def test_postprocess_undoes_the_letterbox_scale_and_limits_faces():
    raw = empty_raw()
    for i, index in enumerate((0, 40, 90)):  # three separate stride-8 anchors
        raw[8]["score"][index] = 0.6 + i / 10
        raw[8]["bbox"][index] = [1, 1, 1, 1]
    dets = decode.postprocess(raw, INPUT_HW, 2, scale=0.5, score_threshold=0.5,
                                nms_threshold=0.4)
    assert len(dets) == 3
    np.testing.assert_allclose(dets.scores, [0.8, 0.7, 0.6], rtol=1e-6)
    np.testing.assert_allclose(dets.boxes[:, 2] - dets.boxes[:, 0], 32.0)  # 16 px / 0.5
    limited = decode.postprocess(raw, INPUT_HW, 2, 0.5, 0.5, 0.4, max_faces=2)
    assert len(limited) == 2 and limited.scores[0] == pytest.approx(0.8)
    faces = limited.to_list()
    assert set(faces[0]) == {"box", "score", "landmarks"} and len(faces[0]["landmarks"]) == 5


# ----------------------------------------------------------------------------- files and options
def test_find_images_expands_folders_globs_and_rejects_missing_paths(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("a.jpg", "b.PNG", "notes.txt", "sub/c.jpeg"):
        (tmp_path / name).write_bytes(b"x")
    found = files.find_images([tmp_path])
    assert [p.name for p in found] == ["a.jpg", "b.PNG", "c.jpeg"]
    assert [p.name for p in files.find_images([str(tmp_path / "*.jpg")])] == ["a.jpg"]
    assert files.find_images([tmp_path / "a.jpg", tmp_path]) == found  # no duplicates
    with pytest.raises(UserError, match="no such file"):
        files.find_images([tmp_path / "missing.jpg"])
    with pytest.raises(UserError, match="no files match"):
        files.find_images([str(tmp_path / "*.gif")])


@pytest.mark.parametrize("text, expected", [("480,640", (480, 640)), ("128x160", (128, 160))])
def test_parse_hw_accepts_multiples_of_32(text, expected):
    assert parse_hw(text) == expected


@pytest.mark.parametrize("text", ["480", "480,650", "0,640", "a,b"])
def test_parse_hw_rejects_bad_sizes(text):
    with pytest.raises(UserError):
        parse_hw(text)


def test_find_images_never_reads_back_the_output_folder(tmp_path):
    cv2.imwrite(str(tmp_path / "a.jpg"), np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "out").mkdir()
    cv2.imwrite(str(tmp_path / "out" / "a.jpg"), np.zeros((4, 4, 3), np.uint8))
    assert files.find_images([tmp_path], exclude=[tmp_path / "out"]) == [tmp_path / "a.jpg"]
    assert len(files.find_images([tmp_path])) == 2


# ----------------------------------------------------------------------------- Detections
def test_detections_check_shapes_and_index_into_detections():
    from scrfdkit.detections import Detections

    dets = Detections(np.arange(8).reshape(2, 4), [0.9, 0.8], np.zeros((2, 5, 2)))
    assert dets.boxes.dtype == np.float32 and len(dets[1]) == 1 and len(dets[[True, False]]) == 1
    assert dets[0].to_list()[0]["score"] == pytest.approx(0.9)
    assert dets.scaled(0.5).boxes[1].tolist() == [8, 10, 12, 14]
    with pytest.raises(ValueError, match="2 boxes but 3 scores"):
        Detections(np.zeros((2, 4)), np.zeros(3))
    with pytest.raises(ValueError, match="landmarks must be"):
        Detections(np.zeros((2, 4)), np.zeros(2), np.zeros((2, 4, 2)))


# ----------------------------------------------------------------------------- faces
def test_similarity_transform_recovers_a_known_rotation_scale_and_shift():
    from scrfdkit.faces import ARCFACE_TEMPLATE, similarity_transform

    angle, scale, shift = 0.3, 2.5, np.array([40.0, -7.0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = ARCFACE_TEMPLATE @ (scale * rotation).T + shift
    matrix = similarity_transform(moved, ARCFACE_TEMPLATE)
    back = moved @ matrix[:, :2].T + matrix[:, 2]
    np.testing.assert_allclose(back, ARCFACE_TEMPLATE, atol=1e-9)


@pytest.mark.parametrize("mode", ["gaussian", "pixelate"])
def test_anonymize_changes_only_the_grown_face_boxes(mode):
    from scrfdkit.detections import Detections
    from scrfdkit.faces import anonymize, grown_boxes

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
    dets = Detections([[40, 30, 80, 90]], [0.9])
    out = anonymize(image, dets, mode)
    x1, y1, x2, y2 = grown_boxes(dets, image.shape)[0]
    assert (x1, y1, x2, y2) == (30, 15, 90, 105)
    changed = np.argwhere((out != image).any(axis=2))
    assert changed[:, 0].min() >= y1 and changed[:, 0].max() < y2
    assert changed[:, 1].min() >= x1 and changed[:, 1].max() < x2
    assert out[y1:y2, x1:x2].std() < image[y1:y2, x1:x2].std() / 2  # really blurred


# ----------------------------------------------------------------------------- pipeline and outputs
def test_read_ahead_keeps_order_and_raises_the_producers_error_in_place():
    from scrfdkit.pipeline import read_ahead

    assert list(read_ahead(iter(range(50)), depth=3)) == list(range(50))

    def failing():
        yield 1
        raise OSError("disk gone")

    seen = []
    with pytest.raises(OSError, match="disk gone"):
        for item in read_ahead(failing()):
            seen.append(item)
    assert seen == [1]


def test_write_behind_runs_in_order_and_reports_the_first_error():
    from scrfdkit.pipeline import WriteBehind

    done = []
    with WriteBehind(depth=2) as writer:
        for i in range(20):
            writer.submit(done.append, i)
    assert done == list(range(20))
    with pytest.raises(ZeroDivisionError):
        with WriteBehind() as writer:
            writer.submit(lambda: 1 / 0)


def test_staged_outputs_replace_all_files_together_or_none(tmp_path):
    old = {name: tmp_path / name for name in ("a.jpg", "faces.jsonl")}
    for path in old.values():
        path.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with files.StagedOutputs() as staged:
            staged.write_bytes(old["a.jpg"], b"new")
            raise KeyboardInterrupt
    assert [p.read_text() for p in old.values()] == ["old", "old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jpg", "faces.jsonl"]  # no .part
    with files.StagedOutputs() as staged:
        for path in old.values():
            staged.write_bytes(path, b"new")
        staged.commit()
    assert [p.read_text() for p in old.values()] == ["new", "new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jpg", "faces.jsonl"]


def test_output_checks_refuse_files_folders_and_inputs(tmp_path):
    photo = tmp_path / "p.jpg"
    photo.write_bytes(b"x")
    with pytest.raises(UserError, match="would overwrite the input"):
        files.check_output_file(photo, "--json", inputs=[photo])
    with pytest.raises(UserError, match="is a folder"):
        files.check_output_file(tmp_path, "--json")
    with pytest.raises(UserError, match="is a file; give a folder"):
        files.check_output_folder(photo, "--out")
    with pytest.raises(UserError, match="is a file, not a folder"):
        files.check_output_folder(photo / "sub", "--out")
    with pytest.raises(UserError, match="not writable"):
        files.check_output_folder(Path("/proc/x"), "--out")


@pytest.mark.parametrize("parse,text,message", [
    ("fraction", "1.5", "between 0 and 1"), ("fraction", "-1", "between 0 and 1"),
    ("fraction", "x", "expected a number"), ("positive_int", "0", "1 or more"),
    ("count", "-2", "0 or more")])
def test_option_types_reject_out_of_range_values(parse, text, message):
    import argparse

    from scrfdkit import cli

    with pytest.raises(argparse.ArgumentTypeError, match=message):
        getattr(cli, parse)(text)
