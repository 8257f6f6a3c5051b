"""The full search on keyframes only (scrfdkit/keyframes.py): when keyframes happen, that a
small face between them is still found (where the whole pass alone misses it), that a new one
is found by the next keyframe at the latest, that without tiles nothing changes, and on a
real clip that the anonymised video leaks no more than with the full search on every frame.

Faces are real (WIDER FACE val, pasted onto grey frames at a known box, as test_tiles.py does);
det_500m.onnx runs at 128x160, so a 192x640 frame already needs 12 tiles and the whole pass
sees it at a quarter of its size: a 28-pixel face there is 7 pixels, which SCRFD misses.
"""
from __future__ import annotations

import json
import sys

import av
import numpy as np
import pytest

from conftest import MODELS, REPO, SAMPLES, run_script
from scrfdkit import SCRFD
from scrfdkit.tiles import plan_tiles
from scrfdkit.keyframes import KeyframeSearch
from scrfdkit.videos import VIDEO_TILE_GATE
from test_tiles import GRAY, SMALL_HW, iou, paste_face, wider_faces  # noqa: F401 (a fixture)

sys.path.insert(0, str(REPO / "tests" / "tools"))
from leaks import measure, read_regions  # noqa: E402

pytestmark = pytest.mark.inference
FRAME_HW = (192, 640)  # 12 tiles of 128x160; the whole pass fills 48 of its 128 rows
FACE = 28  # px: found in tiles and patches, 7 px (missed) in the whole pass


@pytest.fixture(scope="module")
def detector(det500m_onnx):
    return SCRFD(det500m_onnx, SMALL_HW, score_threshold=0.3, threads=1, tile=True,
                 tile_gate=VIDEO_TILE_GATE)  # as the video job makes it


def moving_face(source, frames: int, start: int = 0, step: float = 3.0, scene: int = GRAY):
    """Frames of a grey picture with a face moving right by `step` px a frame from frame
    `start` on (none before), and the face's box in each (None where absent)."""
    images, boxes = [], []
    for index in range(frames):
        canvas = np.full((*FRAME_HW, 3), scene, np.uint8)
        box = None
        if index >= start:
            box = paste_face(canvas, source, FACE, (200 + step * index, 96))
        images.append(canvas)
        boxes.append(box)
    return images, boxes


def found(dets, box) -> bool:
    return box is not None and len(dets) > 0 and iou(dets.boxes, box).max() >= 0.5


def test_the_plan_tiles_these_frames(detector):
    assert len(plan_tiles(FRAME_HW, SMALL_HW, detector.tile_face)) == 12


def test_keyframes_are_the_first_frame_every_k_and_each_shot_change(detector, wider_faces):
    """k = 5 over 24 frames with a cut to another scene at frame 12: keyframes at 0, 5, 10,
    then 12 (the cut) and 5 and 10 frames after it."""
    first, _ = moving_face(wider_faces[0], 12)
    second, _ = moving_face(wider_faces[1], 12, scene=30)
    search = KeyframeSearch(detector, interval=5)
    prepared = [search.prepare(image) for image in first + second]
    assert [i for i, p in enumerate(prepared) if p.cut] == [12]
    assert [i for i, p in enumerate(prepared) if p.keyframe] == [0, 5, 10, 12, 17, 22]


def test_a_small_face_between_keyframes_is_found_where_the_whole_pass_misses_it(detector,
                                                                               wider_faces):
    """The face is found on every frame, as the full search finds it; between keyframes the
    whole pass alone never does, and the search runs one pass (the patch rides in the whole
    pass's unused letterbox rows) or two (a separate mosaic, with more context)."""
    images, boxes = moving_face(wider_faces[0], 8)
    for context, passes in ((0.4, 1), (1.0, 2)):
        search = KeyframeSearch(detector, interval=8, context=context)
        for index, (image, box) in enumerate(zip(images, boxes)):
            frame = search.prepare(image)
            dets = search.detect(frame)
            assert found(dets, box), (context, index, dets.boxes, box)
            assert found(detector.detect(image), box)  # the full search agrees
            if index:
                assert not frame.keyframe and search.passes == passes, (context, index)
                assert not found(detector.detect(image, tile=False), box), index
        assert search.keyframes == 1


def test_landmarks_from_a_patch_are_in_frame_pixels_inside_the_face(detector, wider_faces):
    images, boxes = moving_face(wider_faces[2], 3)
    search = KeyframeSearch(detector, interval=8)
    for image in images:
        dets = search.detect(search.prepare(image))
    x1, y1, x2, y2 = boxes[-1]
    best = int(np.argmax(iou(dets.boxes, boxes[-1])))
    points = dets.landmarks[best]
    assert ((points[:, 0] > x1) & (points[:, 0] < x2) & (points[:, 1] > y1)
            & (points[:, 1] < y2)).all(), (points, boxes[-1])


def test_a_new_small_face_is_found_by_the_next_keyframe_and_then_kept(detector, wider_faces):
    """A face too small for the whole pass appearing at frame 2, k = 6: nothing sees it before
    the keyframe at frame 6 (the bound: k - 1 frames after it appears), the patches keep it
    on every frame after."""
    images, boxes = moving_face(wider_faces[1], 12, start=2)
    search = KeyframeSearch(detector, interval=6)
    hits = [found(search.detect(search.prepare(image)), box) for image, box in zip(images, boxes)]
    assert hits == [False] * 6 + [True] * 6, hits


def test_without_tiles_or_with_interval_1_the_search_is_the_detector_itself(det500m_onnx,
                                                                           wider_faces):
    """--no-tile (and --keyframe-interval 1) give the detector's own detections on every frame,
    to the bit."""
    images, _ = moving_face(wider_faces[0], 4)
    for tile, interval in ((False, 10), (True, 1)):
        detector = SCRFD(det500m_onnx, SMALL_HW, score_threshold=0.3, threads=1, tile=tile)
        search = KeyframeSearch(detector, interval)
        for image in images:
            frame = search.prepare(image)
            got, expected = search.detect(frame), detector.detect(image)
            assert frame.keyframe
            assert got.boxes.tobytes() == expected.boxes.tobytes()
            assert got.scores.tobytes() == expected.scores.tobytes()
            assert got.landmarks.tobytes() == expected.landmarks.tobytes()


# ----------------------------------------------------------------------------- a real clip
CLIP_FRAMES = 30


def blur_run(det500m_onnx, tmp_path, *extra: str) -> tuple[list[dict], str]:
    video = SAMPLES / "hamilton_360p.mp4"
    out = tmp_path / f"run{len(list(tmp_path.iterdir()))}.mp4"
    result = run_script("video_inference_fdlm.py", "--video", video, "--model", det500m_onnx,
                        "--size", ",".join(map(str, SMALL_HW)), "--blur", "--threads", "1",
                        "--max-frames", str(CLIP_FRAMES), "--out", out, *extra)
    return read_regions(out.with_name(out.name + ".jsonl")), result.stdout


def references(frames: int) -> tuple[list[np.ndarray], int, int]:
    """det_2.5g at the frames' own size (leaks.py's reference faces), on the first frames."""
    detector, faces = None, []
    with av.open(str(SAMPLES / "hamilton_360p.mp4")) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index == frames:
                break
            image = frame.to_ndarray(format="bgr24")
            height, width = image.shape[:2]
            padded = (-(-height // 32) * 32, -(-width // 32) * 32)
            detector = detector or SCRFD(MODELS / "det_2.5g.onnx", padded,
                                         score_threshold=0.5)
            canvas = np.zeros((*padded, 3), np.uint8)
            canvas[:height, :width] = image
            dets = detector.detect(canvas)
            faces.append(np.hstack([dets.boxes, dets.scores[:, None]]))
    return faces, width, height


def passes_per_frame(stdout: str) -> float:
    line = next(line for line in stdout.splitlines() if line.startswith("summary:"))
    return float(line.split(" model passes per frame")[0].rsplit(" ", 1)[1])


def test_a_real_clip_leaks_no_more_with_keyframes_for_fewer_passes(det500m_onnx, tmp_path):
    """hamilton_360p's first 30 frames at 128x160 (tiles on every frame): with a keyframe every
    10 frames the faces det_2.5g finds are hidden as well as with the full search on every
    frame, for under half the model passes; --no-tile is the same whatever K."""
    full, full_out = blur_run(det500m_onnx, tmp_path, "--keyframe-interval", "1")
    keyed, keyed_out = blur_run(det500m_onnx, tmp_path, "--keyframe-interval", "10")
    faces, width, height = references(CLIP_FRAMES)
    full_report = measure(faces, full, width, height)
    keyed_report = measure(faces, keyed, width, height)
    assert full_report.face_frames >= 30
    assert keyed_report.leaked <= full_report.leaked, (keyed_report, full_report)
    assert keyed_report.blurred_percent <= 1.1 * full_report.blurred_percent
    assert passes_per_frame(keyed_out) < 0.5 * passes_per_frame(full_out)
    one, _ = blur_run(det500m_onnx, tmp_path, "--no-tile", "--keyframe-interval", "1")
    other, _ = blur_run(det500m_onnx, tmp_path, "--no-tile", "--keyframe-interval", "3")
    assert json.dumps(one) == json.dumps(other)
