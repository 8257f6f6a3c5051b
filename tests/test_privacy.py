"""Anonymisation judged by its outcome: detectors look for faces in what --blur wrote.

A blur passes when neither the model that found the faces nor a stronger one (det_2.5g at the
photo's full resolution) finds a face where one was hidden, at the photo default score 0.5.
The test's own check uses only the JSON boxes the run reported and two detectors it builds
itself; `scrfd.py --blur --verify`, the same check as a feature, must agree with it. A blur
weakened in place (sigma 0.02, no margin) must fail: sharpness alone does not show it (at sigma
0.02 the faces of friends.jpg keep under 1% of their sharpness, and all six are found again).
"""
from __future__ import annotations

import functools
import json
import math
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import run_main, run_script

from scrfdkit import SCRFD, read_image
from scrfdkit import faces, photos

pytestmark = pytest.mark.inference  # models on real photos: ONNX Runtime and OpenCV versions

BLUR_SIZE = (480, 640)  # the demo model's input, here with the dynamic det_500m ONNX
PHOTO_SCORE = 0.5  # the photo default: a face an ordinary run of scrfd.py reports
PHOTOS = ("friends.jpg", "multiface.jpg", "fans_crowd.jpg")
# fans_crowd.jpg has a face cut by the top edge at about (991, -19, 1042, 39) that det_500m at
# 480x640 misses at every score over 0.4 and det_2.5g at full resolution finds (0.55): the one
# face a correct blur leaves, never hidden, and too weak a find for --verify to count (< 0.7).
MISSED_FACE = ("fans_crowd.jpg", (991, -19, 1042, 39))


def covers(face: np.ndarray, found: np.ndarray) -> bool:
    """`found` sits on the reported `face`: its centre inside the box, or IoU >= 0.3."""
    cx, cy = (found[0] + found[2]) / 2, (found[1] + found[3]) / 2
    if face[0] <= cx <= face[2] and face[1] <= cy <= face[3]:
        return True
    inter = (max(0.0, min(face[2], found[2]) - max(face[0], found[0]))
             * max(0.0, min(face[3], found[3]) - max(face[1], found[1])))
    area = lambda b: (b[2] - b[0]) * (b[3] - b[1])  # noqa: E731
    return inter / (area(face) + area(found) - inter) >= 0.3


def full_resolution_detector(model: Path, shape: tuple[int, ...]) -> SCRFD:
    """det_2.5g at the photo's own size, sides rounded up to 32 (built here, not by privacy.py)."""
    hw = (math.ceil(shape[0] / 32) * 32, math.ceil(shape[1] / 32) * 32)
    return SCRFD(model, hw, score_threshold=PHOTO_SCORE, threads=2)


@pytest.fixture(scope="module")
def det25g_onnx(models_dir) -> Path:
    path = models_dir / "det_2.5g.onnx"
    if not path.exists():
        pytest.skip(f"no {path}")
    return path


@pytest.fixture(scope="module")
def blurred(det500m_onnx, det25g_onnx, samples_dir, tmp_path_factory) -> dict:
    """scrfd.py --blur --verify on three sample photos in one pass each (--no-tile), where
    det_500m misses one face that verification must then report."""
    folder = tmp_path_factory.mktemp("privacy")
    (folder / "in").mkdir()
    for name in PHOTOS:
        (folder / "in" / name).symlink_to(samples_dir / name)
    out = folder / "out"
    proc = run_script("scrfd.py", "--model", det500m_onnx, "--size", "%d,%d" % BLUR_SIZE,
                      "--image", folder / "in", "--out", out, "--blur", "--verify",
                      "--verify-model", det25g_onnx, "--threads", "2", "--no-tile", check=False)
    records = {Path(r["path"]).name: r for r in
               map(json.loads, (out / "faces.jsonl").read_text().splitlines())}
    return {"proc": proc, "out": out, "records": records}


def test_no_detector_finds_a_face_where_one_was_hidden(blurred, det500m_onnx, det25g_onnx,
                                                       samples_dir):
    same = SCRFD(det500m_onnx, BLUR_SIZE, score_threshold=PHOTO_SCORE, threads=2)
    left_unhidden = []
    for name in PHOTOS:
        original, output = read_image(samples_dir / name), read_image(blurred["out"] / name)
        hidden = np.array([f["box"] for f in blurred["records"][name]["faces"]], np.float32)
        assert len(hidden) >= 6, name
        for detector in (same, full_resolution_detector(det25g_onnx, original.shape)):
            before, after = detector.detect(original), detector.detect(output)
            seen = sum(any(covers(face, b) for b in before.boxes) for face in hidden)
            assert seen >= 0.8 * len(hidden), (name, detector.input_hw)  # it sees them unblurred
            leaked = [b.round().tolist() for b in after.boxes
                      if any(covers(face, b) for face in hidden)]
            assert leaked == [], (name, detector.input_hw, leaked)
            left_unhidden += [(name, b) for b in after.boxes]  # never hidden: not on any face
    # the only face found in the outputs is the one the blurring model missed
    assert [name for name, _ in left_unhidden] == [MISSED_FACE[0]]
    np.testing.assert_allclose(left_unhidden[0][1], MISSED_FACE[1], atol=3)


def test_verify_counts_a_weak_find_where_nothing_was_blurred_and_passes(blurred):
    """The face cut by the edge of fans_crowd.jpg (det_2.5g: 0.55) is evidence too weak for a
    face left where nothing was blurred: counted in the summary, not an alarm."""
    proc = blurred["proc"]
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert ("verify: 3 blurred image(s) checked by det_500m.onnx at 480x640 and det_2.5g.onnx "
            "at full resolution at score >= 0.5 under a blur, >= 0.7 elsewhere: 0 face(s) "
            "still detectable; 1 weaker find(s) elsewhere, not counted"
            ) in proc.stdout, proc.stdout
    assert "warning: " not in proc.stderr and "error: " not in proc.stderr
    assert sorted(p.name for p in blurred["out"].iterdir()) == sorted([*PHOTOS, "faces.jsonl"])


def test_verify_reports_faces_the_run_left_unblurred_and_exits_1(det500m_onnx, det25g_onnx,
                                                                samples_dir, tmp_path):
    """--max-faces 2 blurs two of the six faces of friends.jpg: the four others are clear
    faces never hidden, each reported."""
    proc = run_main("scrfd.py", "--model", det500m_onnx, "--size", "%d,%d" % BLUR_SIZE,
                    "--image", samples_dir / "friends.jpg", "--out", tmp_path, "--blur",
                    "--max-faces", "2", "--verify", "--verify-model", det25g_onnx,
                    "--threads", "2")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    [warning] = [line for line in proc.stderr.splitlines() if line.startswith("warning: ")]
    assert "friends.jpg: 4 face(s) still detectable (4 never hidden)" in warning, warning
    assert "det_500m.onnx at 480x640 and det_2.5g.onnx at full resolution" in warning
    assert proc.stderr.rstrip().splitlines()[-1].startswith("error: faces still detectable in "
                                                            "1 of 1 blurred image(s)")


@pytest.mark.parametrize("mode", ["gaussian", "pixelate"])
def test_verify_passes_a_photo_whose_faces_are_all_hidden(mode, det500m_onnx, det25g_onnx,
                                                         samples_dir, tmp_path):
    proc = run_main("scrfd.py", "--model", det500m_onnx, "--size", "%d,%d" % BLUR_SIZE,
                    "--image", samples_dir / "friends.jpg", "--out", tmp_path, "--blur", mode,
                    "--verify", "--verify-model", det25g_onnx, "--threads", "2")
    assert proc.returncode == 0, proc.stderr
    assert "1 blurred image(s) checked" in proc.stdout
    assert "0 face(s) still detectable" in proc.stdout and "warning" not in proc.stderr


@pytest.mark.parametrize("weaken, under_blur", [("sigma 0.02", 6), ("margin 0", 1)])  # at least
def test_a_weakened_blur_fails_verification(weaken, under_blur, det500m_onnx, det25g_onnx,
                                            samples_dir, tmp_path, monkeypatch):
    """The same run with the blur weakened in the library: the faces come back."""
    if weaken == "sigma 0.02":
        monkeypatch.setattr(faces, "BLUR_SIGMA", 0.02)
    else:
        monkeypatch.setattr(photos, "anonymize", functools.partial(faces.anonymize, margin=0.0))
    shutil.copy(samples_dir / "friends.jpg", tmp_path / "friends.jpg")
    proc = run_main("scrfd.py", "--model", det500m_onnx, "--size", "%d,%d" % BLUR_SIZE,
                    "--image", tmp_path / "friends.jpg", "--out", tmp_path / "out", "--blur",
                    "--verify", "--verify-model", det25g_onnx, "--threads", "2")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    [warning] = [line for line in proc.stderr.splitlines() if line.startswith("warning: ")]
    found = re.search(r"friends\.jpg: \d+ face\(s\) still detectable \((\d+) under the blur\)",
                      warning)
    assert found and int(found.group(1)) >= under_blur, warning  # and none never hidden


def friends_clip(samples_dir: Path, path: Path, frames: int = 4) -> Path:
    """A short H.264 clip of the demo photo, its six faces in every frame."""
    import av

    image = cv2.imread(str(samples_dir / "friends.jpg"))
    image = image[: image.shape[0] // 2 * 2, : image.shape[1] // 2 * 2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = image.shape[1], image.shape[0], "yuv420p"
        for _ in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.mark.parametrize("weaken", [False, True])
def test_video_verify_checks_the_written_frames(weaken, det500m_onnx, det25g_onnx, samples_dir,
                                                tmp_path, monkeypatch):
    """video_inference_fdlm.py --blur --verify: every written frame decoded back and searched;
    with the blur weakened in the library, the six faces come back in every frame and it exits 1."""
    if weaken:
        monkeypatch.setattr(faces, "BLUR_SIGMA", 0.02)
    clip = friends_clip(samples_dir, tmp_path / "clip.mp4")
    proc = run_main("video_inference_fdlm.py", "--model", det500m_onnx, "--size",
                    "%d,%d" % BLUR_SIZE, "--video", clip, "--out", tmp_path / "out.mp4", "--blur",
                    "--verify", "--verify-model", det25g_onnx, "--threads", "2")
    assert "4 blurred frame(s) checked" in proc.stdout, proc.stdout + proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning: ")]
    if not weaken:
        assert proc.returncode == 0 and not warnings, proc.stderr
        assert "0 face(s) still detectable" in proc.stdout
    else:
        assert proc.returncode == 1 and len(warnings) == 4, proc.stderr
        assert all(re.search(r"#frame\d: \d+ face\(s\) still detectable \(\d+ under the blur\)",
                             line) for line in warnings), warnings


def test_the_default_blur_leaves_no_face_in_the_sample_photos(det500m_onnx, det25g_onnx,
                                                               samples_dir, tmp_path):
    """With --blur's default tiles, the face single passes miss is found and hidden too; the
    6-8 px faces of crowd_selfie.jpg that det_2.5g alone finds (0.50-0.56) are no alarm."""
    (tmp_path / "in").mkdir()
    for name in (*PHOTOS, "crowd_selfie.jpg"):
        (tmp_path / "in" / name).symlink_to(samples_dir / name)
    proc = run_main("scrfd.py", "--model", det500m_onnx, "--size", "%d,%d" % BLUR_SIZE,
                    "--image", tmp_path / "in", "--out", tmp_path / "out", "--blur", "--verify",
                    "--verify-model", det25g_onnx, "--threads", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4 blurred image(s) checked" in proc.stdout
    assert "0 face(s) still detectable" in proc.stdout


HAND_FRAMES = (174, 192)  # hamilton_360p.mp4: an open hand, never blurred, that det_2.5g
# scores 0.60 and 0.61 in frames 180 and 186, where --verify cried wolf (issue 27)


def hands_clip(samples_dir: Path, path: Path) -> Path:
    """Frames 174-191 of hamilton_360p.mp4, re-encoded nearly losslessly."""
    import av

    with av.open(str(samples_dir / "hamilton_360p.mp4")) as source, \
            av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30, options={"crf": "8"})
        stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
        for index, frame in enumerate(source.decode(video=0)):
            if index >= HAND_FRAMES[1]:
                break
            if index >= HAND_FRAMES[0]:
                image = frame.to_ndarray(format="bgr24")
                for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_video_verify_raises_no_alarm_for_an_open_hand(det500m_onnx, det25g_onnx, samples_dir,
                                                       tmp_path):
    clip = hands_clip(samples_dir, tmp_path / "hands.mp4")
    proc = run_main("video_inference_fdlm.py", "--model", det500m_onnx, "--size",
                    "%d,%d" % BLUR_SIZE, "--video", clip, "--out", tmp_path / "out.mp4", "--blur",
                    "--verify", "--verify-model", det25g_onnx, "--threads", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "18 blurred frame(s) checked" in proc.stdout and "0 face(s) still detectable" in \
        proc.stdout
    found = re.search(r"; (\d+) weaker find\(s\) elsewhere, not counted", proc.stdout)
    assert found and int(found.group(1)) >= 2, proc.stdout  # the hands were seen, not counted
