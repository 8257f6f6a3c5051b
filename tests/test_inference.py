"""End-to-end tests of scrfd.py and video_inference_fdlm.py, and of SCRFD on awkward inputs.

The scripts run as subprocesses, as a user runs them. Models run small (ONNX at 320x320, the
128x160 TFLite fixtures) and videos short, so the file takes well under a minute once the
fixtures exist. Every generated input lives in a pytest tmp dir, never in the repository.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import REPO, TEST_HW, run_main, run_script

from scrfdkit import SCRFD, read_image

# Tests marked inference depend on the inference packages' versions (image and video codecs,
# ONNX Runtime, LiteRT); CI runs them again in that environment (make test-inference).

ONNX_SIZE = "320,320"  # dynamic ONNX at a small size: fast, still finds the sample faces
SAMPLE_PHOTOS = ("friends.jpg", "group_t1.jpg", "crowd_selfie.jpg", "crowd_5334x2767.jpg",
                 "oscars_selfie.jpg", "multiface.jpg", "two_people.jpg", "fans_crowd.jpg")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def count_frames(path: Path) -> int:
    """Frames that really decode (the container's announced count can lie after damage)."""
    capture = cv2.VideoCapture(str(path))
    frames = 0
    while capture.read()[0]:
        frames += 1
    capture.release()
    return frames


def frame_size(capture: cv2.VideoCapture) -> tuple[int, int]:
    return (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def leftovers(folder: Path) -> list[str]:
    """Temporary files (.name.xxxx.part and the like) that a finished run must not leave."""
    return [p.name for p in folder.rglob(".*")]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = (max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
             * max(0.0, min(a[3], b[3]) - max(a[1], b[1])))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


# ----------------------------------------------------------------------------- inputs
def link(target: Path, path: Path) -> Path:
    """A symlink instead of a copy: sample data stays where it is."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)
    return path


def write_video(path: Path, photo: Path, frames: int = 40, fps: float = 10.0,
                size: tuple[int, int] = (320, 240)) -> Path:
    """A short mp4v clip (as OpenCV writes it) of a photo sliding sideways: faces in every frame."""
    photo = cv2.resize(read_image(photo), (size[0] + frames * 2, size[1]))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for i in range(frames):
        writer.write(np.ascontiguousarray(photo[:, i * 2: i * 2 + size[0]]))
    writer.release()
    return path


def faststart(data: bytes) -> bytes:
    """Move an .mp4's index (moov) in front of its data, as `ffmpeg -movflags faststart` does.

    OpenCV writes the index last, so cutting its file anywhere loses the index and nothing
    can be read; streamed or downloaded videos have it first, and then a cut keeps the frames
    before it. The chunk offsets inside the index move by the index's own size.
    """
    atoms, i = [], 0
    while i < len(data):
        size, kind = struct.unpack(">I4s", data[i:i + 8])
        atoms.append((kind, data[i:i + size]))
        i += size
    moov = bytearray(dict(atoms)[b"moov"])

    def shift(start: int, end: int) -> None:
        while start < end:
            size, kind = struct.unpack(">I4s", moov[start:start + 8])
            if kind in (b"trak", b"mdia", b"minf", b"stbl"):
                shift(start + 8, start + size)
            elif kind in (b"stco", b"co64"):
                fmt, width = (">I", 4) if kind == b"stco" else (">Q", 8)
                for k in range(struct.unpack(">I", moov[start + 12:start + 16])[0]):
                    at = start + 16 + k * width
                    offset, = struct.unpack(fmt, moov[at:at + width])
                    moov[at:at + width] = struct.pack(fmt, offset + len(moov))
            start += size

    shift(8, len(moov))
    return (dict(atoms)[b"ftyp"] + bytes(moov)
            + b"".join(atom for kind, atom in atoms if kind not in (b"ftyp", b"moov")))


@pytest.fixture(scope="module")
def photo_folder(samples_dir, tmp_path_factory) -> Path:
    """Real photos (linked) plus generated edge cases, one of them corrupt."""
    folder = tmp_path_factory.mktemp("photos")
    for name in ("friends.jpg", "group_t1.jpg", "crowd_5334x2767.jpg"):
        link(samples_dir / name, folder / name)
    friends = read_image(samples_dir / "friends.jpg")
    edge = folder / "edge"
    edge.mkdir()
    cv2.imwrite(str(edge / "tiny.png"), np.full((5, 6, 3), 128, np.uint8))  # < one stride
    cv2.imwrite(str(edge / "portrait.jpg"), np.vstack([friends, friends]))  # 600 wide, 800 high
    cv2.imwrite(str(edge / "gray.png"), cv2.cvtColor(friends, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(edge / "rgba.png"), cv2.cvtColor(friends, cv2.COLOR_BGR2BGRA))
    cv2.imwrite(str(edge / "deep16.png"), friends.astype(np.uint16) * 257)
    cv2.imwrite(str(edge / "blank.png"), np.zeros((300, 400, 3), np.uint8))
    cv2.imwrite(str(edge / "noise.png"),
                np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    (edge / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    return folder


# ----------------------------------------------------------------------------- scrfd.py
EXPECTED_FACES = {"friends.jpg": 6, "group_t1.jpg": 6, "portrait.jpg": 12, "gray.png": 6,
                  "rgba.png": 6, "deep16.png": 6, "blank.png": 0, "noise.png": 0, "tiny.png": 0}


@pytest.mark.inference
def test_photos_folder_with_edge_cases_and_a_corrupt_file(photo_folder, det500m_onnx, tmp_path):
    out = tmp_path / "out"
    proc = run_script("scrfd.py", "--model", det500m_onnx, "--size", ONNX_SIZE,
                      "--image", photo_folder, "--out", out, "--json", out / "faces.jsonl")
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "corrupt.jpg" in warnings[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert "summary: 11 image(s): 10 annotated, 1 unreadable (skipped)" in proc.stdout, proc.stdout
    assert str(out) in proc.stdout  # says where results went

    records = {Path(r["path"]).name: r for r in read_jsonl(out / "faces.jsonl")}
    assert len(records) == 11
    assert "error" in records["corrupt.jpg"] and "faces" not in records["corrupt.jpg"]
    found = {name: len(r["faces"]) for name, r in records.items() if "faces" in r}
    assert {k: found[k] for k in EXPECTED_FACES} == EXPECTED_FACES
    assert found["crowd_5334x2767.jpg"] >= 10
    for name, record in records.items():
        if "faces" not in record:
            continue
        source = next(photo_folder.rglob(name))
        height, width = read_image(source).shape[:2]
        assert record["size"] == {"width": width, "height": height}
        annotated = cv2.imread(str(out / name))
        assert annotated is not None and annotated.shape[:2] == (height, width), name
        for face in record["faces"]:
            x1, y1, x2, y2 = face["box"]
            assert 0 <= (x1 + x2) / 2 <= width and 0 <= (y1 + y2) / 2 <= height
            assert 0.5 <= face["score"] <= 1 and len(face["landmarks"]) == 5
    assert not (out / "corrupt.jpg").exists()
    assert leftovers(out) == []


def test_same_file_names_in_different_folders_keep_their_sub_folders(det500m_onnx, tmp_path):
    for folder in ("a", "b/c"):
        (tmp_path / "in" / folder).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "in" / folder / "x.png"), np.zeros((40, 50, 3), np.uint8))
    run_script("scrfd.py", "--model", det500m_onnx, "--size", "128,160",
               "--image", tmp_path / "in", "--out", tmp_path / "out")
    assert (tmp_path / "out" / "a" / "x.png").is_file()
    assert (tmp_path / "out" / "b" / "c" / "x.png").is_file()
    assert len(read_jsonl(tmp_path / "out" / "faces.jsonl")) == 2


def test_missing_paths_give_one_line_errors(det500m_onnx, samples_dir, tmp_path):
    proc = run_script("scrfd.py", "--model", det500m_onnx, "--image", tmp_path / "nope.jpg",
                      "--out", tmp_path / "out", check=False)
    assert_one_line_error(proc, "nope.jpg")
    proc = run_script("scrfd.py", "--model", tmp_path / "nope.tflite", "--image",
                      samples_dir / "friends.jpg", "--out", tmp_path / "out", check=False)
    assert_one_line_error(proc, "nope.tflite")
    proc = run_script("scrfd.py", "--model", det500m_onnx, "--size", "300,300", check=False)
    assert_one_line_error(proc, "multiple of 32")
    assert not (tmp_path / "out").exists()


@pytest.mark.inference
def test_only_unreadable_images_exit_2(det500m_onnx, tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    proc = run_script("scrfd.py", "--model", det500m_onnx, "--image", tmp_path / "bad.png",
                      "--out", tmp_path / "out", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("error: none of the 1 image(s)")
    assert not (tmp_path / "out" / "faces.jsonl").exists()  # a failed run writes nothing


@pytest.mark.parametrize("case,args,fragment", [
    ("score above 1", ["--score", "1.5"], "--score"),
    ("score below 0", ["--score", "-1"], "--score"),
    ("nms above 1", ["--nms", "2"], "--nms"),
    ("no threads", ["--threads", "0"], "--threads"),
    ("unknown output format", ["--format", "xyz"], "--format xyz"),
    ("out is a file", ["--out", "{photo}"], "is a file"),
    ("out in /proc", ["--out", "/proc/x"], "not writable"),
    ("json is the photo", ["--json", "{photo}"], "would overwrite the input"),
    ("json in a file", ["--json", "{photo}/faces.jsonl"], "is a file, not a folder"),
    ("json is a folder", ["--json", "{folder}"], "is a folder"),
    ("verify without blur", ["--verify"], "add --blur"),
    ("verify model without verify", ["--blur", "--verify-model", "{photo}"], "needs --verify"),
])
def test_bad_options_are_refused_before_any_work(det500m_onnx, samples_dir, tmp_path, case, args,
                                                 fragment):
    """In-process through main(argv); test_missing_paths_give_one_line_errors runs the script."""
    photo = tmp_path / "p.jpg"
    shutil.copy(samples_dir / "friends.jpg", photo)
    before = photo.read_bytes()
    args = [a.format(photo=photo, folder=tmp_path) for a in args]
    defaults = {"--out": tmp_path / "out"}
    extra = [str(v) for k, v in defaults.items() if k not in args for v in (k, v)]
    proc = run_main("scrfd.py", "--model", det500m_onnx, "--image", photo, *extra, *args)
    assert_one_line_error(proc, fragment)
    assert "model" not in proc.stdout  # refused before the model was even loaded
    assert photo.read_bytes() == before
    assert not (tmp_path / "out").exists()


@pytest.mark.inference
def test_a_huge_header_image_is_counted_and_the_batch_goes_on(det500m_onnx, samples_dir, tmp_path):
    from test_core import huge_header

    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(samples_dir / "friends.jpg", folder / "a.jpg")
    png = cv2.imencode(".png", read_image(samples_dir / "friends.jpg"))[1].tobytes()
    (folder / "b.png").write_bytes(huge_header(png, ".png"))
    shutil.copy(samples_dir / "two_people.jpg", folder / "c.jpg")
    proc = run_script("scrfd.py", "--model", det500m_onnx, "--size", ONNX_SIZE, "--image", folder,
                      "--out", tmp_path / "out")
    assert "3 image(s): 2 annotated, 1 unreadable (skipped)" in proc.stdout
    assert "b.png" in proc.stderr and "more pixels" in proc.stderr and "Traceback" not in proc.stderr
    assert len(read_jsonl(tmp_path / "out" / "faces.jsonl")) == 3


def test_output_inside_the_input_folder_is_not_read_back(det500m_onnx, samples_dir, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(samples_dir / "friends.jpg", folder / "friends.jpg")
    for _ in range(2):
        proc = run_script("scrfd.py", "--model", det500m_onnx, "--size", ONNX_SIZE,
                          "--image", folder, "--out", folder / "annotated")
        assert "1 image(s)" in proc.stdout
    assert len(read_jsonl(folder / "annotated" / "faces.jsonl")) == 1


def test_an_interrupted_rerun_leaves_the_earlier_results_whole(det500m_onnx, wider_dir, tmp_path):
    images = wider_dir / "WIDER_val" / "images"
    out = tmp_path / "out"
    first = run_script("scrfd.py", "--model", det500m_onnx, "--size", "256,320", "--image",
                       next(images.iterdir()), "--out", out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert len(before) > 10, first.stdout
    proc = subprocess.Popen([sys.executable, str(REPO / "scrfd.py"), "--model", str(det500m_onnx),
                             "--threads", "1", "--image", str(images), "--out", str(out)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(out.glob(".*.part.*")):
        time.sleep(0.05)
    time.sleep(1.0)
    for signum, code in ((signal.SIGTERM, 143),):
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == code and "Traceback" not in stderr, stderr
        assert "nothing written" in stderr
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before and leftovers(out) == []


def test_aligned_crops_match_insightface_norm_crop(tflite_float32, samples_dir, tmp_path):
    face_align = pytest.importorskip("insightface.utils.face_align")
    from scrfdkit.faces import similarity_transform, template_for

    crops = tmp_path / "crops"
    run_script("scrfd.py", "--model", tflite_float32, "--image", samples_dir / "friends.jpg",
               "--out", tmp_path / "out", "--crops", crops)
    [record] = read_jsonl(tmp_path / "out" / "faces.jsonl")
    assert len(record["faces"]) == 6 == len(list(crops.glob("*.png")))
    image = read_image(samples_dir / "friends.jpg")
    for face in record["faces"]:
        crop = cv2.imread(face["crop"])
        assert crop.shape == (112, 112, 3)
        landmarks = np.array(face["landmarks"], np.float32)
        reference = face_align.norm_crop(image, landmarks)
        assert np.abs(crop.astype(int) - reference).mean() < 1.0  # same pixels, up to rounding
        ours = similarity_transform(landmarks, template_for(112))
        theirs = face_align.estimate_norm(landmarks)
        corners = np.array([[0, 0, 1], [image.shape[1], 0, 1], [0, image.shape[0], 1],
                            [image.shape[1], image.shape[0], 1]], np.float64)
        assert np.abs(corners @ ours.T - corners @ theirs.T).max() < 1.0  # within one pixel


@pytest.mark.inference
def test_blur_hides_faces_and_draws_nothing(tflite_float32, samples_dir, tmp_path):
    """Only the faces change, each box grown by a quarter of its size per side (the README's
    rule, applied here, not by the code under test); whether a face is still found in them is
    test_privacy.py's question."""
    out = tmp_path / "out"
    proc = run_script("scrfd.py", "--model", tflite_float32, "--image", samples_dir / "friends.jpg",
                      "--out", out, "--blur")
    assert "score >= 0.4" in proc.stdout  # the anonymising default
    [record] = read_jsonl(out / "faces.jsonl")
    original, blurred = read_image(samples_dir / "friends.jpg"), cv2.imread(str(out / "friends.jpg"))
    changed = (np.abs(original.astype(int) - blurred).max(axis=2) > 40)
    inside = np.zeros_like(changed)
    assert len(record["faces"]) == 6
    for face in record["faces"]:
        x1, y1, x2, y2 = face["box"]
        grow_x, grow_y = (x2 - x1) / 4, (y2 - y1) / 4
        x1, y1 = max(0, round(x1 - grow_x)), max(0, round(y1 - grow_y))
        x2, y2 = round(x2 + grow_x), round(y2 + grow_y)
        inside[y1:y2, x1:x2] = True
        face, hidden = original[y1:y2, x1:x2], blurred[y1:y2, x1:x2]
        assert cv2.Laplacian(hidden, cv2.CV_32F).var() < cv2.Laplacian(face, cv2.CV_32F).var() / 3
    assert changed[~inside].mean() < 0.002  # outside the faces only JPEG noise: nothing drawn


def run_copy(project: Path, script: str, *args: str) -> subprocess.CompletedProcess:
    """Run a copy of a script in a scratch project folder: its default models/, data/ and
    results/ are then that folder's, not the repository's (which others may fill)."""
    shutil.copy(REPO / script, project / script)  # defaults are relative to scrfdkit's folder
    shutil.copytree(REPO / "scrfdkit", project / "scrfdkit",
                    ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
    wrapper = ("import atexit, runpy, sys\n"
               "atexit.register(lambda: print('tensorflow imported:',\n"
               "                              'tensorflow' in sys.modules))\n"
               f"sys.argv = [{script!r}, *{list(map(str, args))!r}]\n"
               f"runpy.run_path({script!r}, run_name='__main__')\n")
    return subprocess.run([sys.executable, "-c", wrapper], cwd=project, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(project)})


def test_defaults_model_hint_then_quick_start(tflite_float32, samples_dir, tmp_path):
    proc = run_copy(tmp_path, "scrfd.py")
    assert_one_line_error(proc, "models/scrfd500m_480x640_float32.tflite",
                          "export_modified_onnx.py --model models/det_500m.onnx --hw 480,640",
                          "python export_tflite.py --onnx models/det_500m_480x640.onnx",
                          "--download buffalo_sc")
    # the default names, filled with the small test export and the sample photo
    default = tmp_path / "models" / "scrfd500m_480x640_float32.tflite"
    link(tflite_float32, default)
    link(Path(f"{tflite_float32}.json"), Path(f"{default}.json"))
    proc = run_copy(tmp_path, "scrfd.py")
    assert_one_line_error(proc, "data/friends.jpg")
    link(samples_dir / "friends.jpg", tmp_path / "data" / "friends.jpg")
    proc = run_copy(tmp_path, "scrfd.py")
    assert proc.returncode == 0, proc.stderr
    assert "litert" in proc.stdout and "tensorflow imported: False" in proc.stdout
    assert cv2.imread(str(tmp_path / "results" / "friends.jpg")).shape == (400, 600, 3)
    [record] = read_jsonl(tmp_path / "results" / "faces.jsonl")
    assert len(record["faces"]) == 6


@pytest.mark.inference
def test_litert_float32_matches_onnxruntime_on_all_sample_photos(tflite_float32, det500m_onnx,
                                                                 samples_dir):
    """Same faces from both backends: IoU >= 0.99, scores within 1e-3 (at the test size)."""
    threshold = 0.3  # below the default: more (and harder) faces to compare
    onnx = SCRFD(det500m_onnx, TEST_HW, score_threshold=threshold)
    lite = SCRFD(tflite_float32, score_threshold=threshold)
    assert lite.runner.backend == "litert" and lite.input_hw == TEST_HW
    compared = 0
    for name in SAMPLE_PHOTOS:
        image = read_image(samples_dir / name)
        a, b = onnx.detect(image), lite.detect(image)
        unmatched = set(range(len(b)))
        for i in range(len(a)):
            ious = [iou(a.boxes[i], b.boxes[j]) for j in unmatched]
            if not ious or max(ious) < 0.99:
                assert a.scores[i] < threshold + 1e-3, f"{name}: face {i} only from ONNX Runtime"
                continue
            j = sorted(unmatched)[int(np.argmax(ious))]
            unmatched.discard(j)
            assert abs(a.scores[i] - b.scores[j]) <= 1e-3, name
            size = a.boxes[i, 2] - a.boxes[i, 0]
            np.testing.assert_allclose(a.landmarks[i], b.landmarks[j], atol=0.01 * size)
            compared += 1
        assert all(b.scores[j] < threshold + 1e-3 for j in unmatched), f"{name}: LiteRT extra"
    assert compared >= 30


@pytest.mark.inference
def test_int8_tflite_just_works(tflite_int8, samples_dir, tmp_path):
    proc = run_script("scrfd.py", "--model", tflite_int8, "--image", samples_dir / "friends.jpg",
                      "--out", tmp_path)
    [record] = read_jsonl(tmp_path / "faces.jsonl")
    assert 4 <= len(record["faces"]) <= 7, proc.stdout


# ----------------------------------------------------------------------------- video script
@pytest.mark.inference
def test_video_sample_first_frames(tflite_float32, samples_dir, tmp_path):
    proc = run_script("video_inference_fdlm.py", "--model", tflite_float32, "--video",
                      samples_dir / "fatboygang.mp4", "--out", tmp_path, "--max-frames", "30")
    video = tmp_path / "fatboygang_fdlm.mp4"
    capture = cv2.VideoCapture(str(video))
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(30.0)
    assert frame_size(capture) == (640, 360)
    assert count_frames(video) == 30
    records = read_jsonl(tmp_path / "fatboygang_fdlm.jsonl")
    assert [r["frame"] for r in records] == list(range(30))
    for word in ("summary: 30 frames", "decode", "model only", "draw + encode", str(video)):
        assert word in proc.stdout, proc.stdout
    assert "warning" not in proc.stderr
    assert leftovers(tmp_path) == []


@pytest.mark.inference
def test_video_keeps_every_frame_fps_and_size(det500m_onnx, samples_dir, tmp_path):
    source = write_video(tmp_path / "clip.mp4", samples_dir / "friends.jpg", frames=40, fps=12.5)
    out = tmp_path / "out"
    run_script("video_inference_fdlm.py", "--model", det500m_onnx, "--size", "128,160",
               "--video", source, "--out", out)
    video = out / "clip_fdlm.mp4"
    capture = cv2.VideoCapture(str(video))
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(12.5)
    assert frame_size(capture) == (320, 240)
    assert count_frames(video) == count_frames(source) == 40
    records = read_jsonl(out / "clip_fdlm.jsonl")
    assert len(records) == 40 and sum(len(r["faces"]) for r in records) > 40


@pytest.mark.inference
@pytest.mark.parametrize("kind", ["text", "mp4 cut before its index"])
def test_video_that_cannot_be_opened(det500m_onnx, samples_dir, tmp_path, kind):
    if kind == "text":
        bad = tmp_path / "bad.mp4"
        bad.write_text("not a video")
    else:
        good = write_video(tmp_path / "good.mp4", samples_dir / "friends.jpg")
        bad = tmp_path / "cut.mp4"
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    proc = run_script("video_inference_fdlm.py", "--model", det500m_onnx, "--video", bad,
                      "--out", tmp_path / "out", check=False)
    assert_one_line_error(proc, "cannot open video", bad.name)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.inference
def test_missing_video_and_webcam_give_one_line_errors(det500m_onnx, tmp_path):
    proc = run_script("video_inference_fdlm.py", "--model", det500m_onnx, "--video",
                      tmp_path / "none.mp4", "--out", tmp_path, check=False)
    assert_one_line_error(proc, "none.mp4")
    proc = run_script("video_inference_fdlm.py", "--model", det500m_onnx, "--webcam", "57",
                      "--out", tmp_path, check=False)
    assert_one_line_error(proc, "webcam 57")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.inference
@pytest.mark.parametrize("container", ["mp4", "mkv"])
def test_truncated_video_keeps_the_frames_before_the_break(det500m_onnx, samples_dir, tmp_path,
                                                          container):
    whole = write_video(tmp_path / f"whole.{container}", samples_dir / "friends.jpg", frames=40)
    data = whole.read_bytes()
    if container == "mp4":
        data = faststart(data)
    broken = tmp_path / f"broken.{container}"
    broken.write_bytes(data[: len(data) // 2])
    readable = count_frames(broken)
    assert 0 < readable < 40  # the input really breaks mid-way
    out = tmp_path / "out"
    proc = run_script("video_inference_fdlm.py", "--model", det500m_onnx, "--size", "128,160",
                      "--video", broken, "--out", out)
    assert "warning" in proc.stderr and f"ended after {readable} of the 40" in proc.stderr
    assert count_frames(out / "broken_fdlm.mp4") == readable
    assert len(read_jsonl(out / "broken_fdlm.jsonl")) == readable
    assert leftovers(out) == []


@pytest.mark.inference
def test_ctrl_c_still_finalizes_the_video(det500m_onnx, samples_dir, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "video_inference_fdlm.py"), "--model", str(det500m_onnx),
         "--size", "128,160", "--threads", "1", "--video", str(samples_dir / "hamilton_360p.mp4"),
         "--out", str(out)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_staged_video(proc, out, ".hamilton_360p_fdlm.")
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in stderr and "Traceback" not in stderr
    frames = len(read_jsonl(out / "hamilton_360p_fdlm.jsonl"))
    assert 5 <= frames < 275
    assert count_frames(out / "hamilton_360p_fdlm.mp4") == frames
    assert f"summary: {frames} frames" in stdout
    assert leftovers(out) == []


def wait_for_staged_video(proc: subprocess.Popen, out: Path, prefix: str) -> None:
    """Wait until the run has encoded some frames into its (hidden, temporary) video."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        parts = list(out.glob(f"{prefix}*.part.mp4")) if out.exists() else []
        if parts and parts[0].exists() and parts[0].stat().st_size > 30_000:
            return
        time.sleep(0.05)
    assert proc.poll() is None, "finished before it could be interrupted"


@pytest.mark.inference
def test_sigterm_finishes_the_frames_in_hand_and_leaves_a_playable_video(det500m_onnx,
                                                                         samples_dir, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "video_inference_fdlm.py"), "--model", str(det500m_onnx),
         "--size", "128,160", "--threads", "1", "--blur", "--video",
         str(samples_dir / "hamilton_360p.mp4"), "--out", str(out)], cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_staged_video(proc, out, ".hamilton_360p_fdlm.")
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "terminated" in stderr and "Traceback" not in stderr
    frames = len(read_jsonl(out / "hamilton_360p_fdlm.jsonl"))
    assert 1 <= frames < 275 and count_frames(out / "hamilton_360p_fdlm.mp4") == frames
    assert leftovers(out) == []


@pytest.mark.inference
def test_video_blur_into_webm_keeps_every_frame(det500m_onnx, samples_dir, tmp_path):
    source = write_video(tmp_path / "clip.mp4", samples_dir / "friends.jpg", frames=12)
    out = tmp_path / "out" / "clip.webm"
    proc = run_script("video_inference_fdlm.py", "--model", det500m_onnx, "--size", "256,320",
                      "--video", source, "--out", out, "--blur", "--score", "0.3")
    assert "VP9" in proc.stdout and count_frames(out) == 12
    records = read_jsonl(out.with_name(out.name + ".jsonl"))  # clip.webm.jsonl: its own
    assert len(records) == 12 and all(r["faces"] for r in records)
    original, blurred = cv2.VideoCapture(str(source)), cv2.VideoCapture(str(out))
    first, anonymised = original.read()[1], blurred.read()[1]
    x1, y1, x2, y2 = (int(v) for v in records[0]["faces"][0]["box"])
    face, face_out = first[y1:y2, x1:x2], anonymised[y1:y2, x1:x2]
    assert cv2.Laplacian(face_out, cv2.CV_32F).var() < cv2.Laplacian(face, cv2.CV_32F).var() / 3


@pytest.mark.parametrize("case", ["json is the input", "photo as video", "out is the input"])
def test_video_refuses_to_overwrite_its_input(det500m_onnx, samples_dir, tmp_path, case):
    source = write_video(tmp_path / "clip.mp4", samples_dir / "friends.jpg", frames=5)
    before = source.read_bytes()
    args = {"json is the input": ["--video", source, "--json", source],
            "photo as video": ["--video", samples_dir / "friends.jpg"],
            "out is the input": ["--video", source, "--out", source]}[case]
    proc = run_script("video_inference_fdlm.py", "--model", det500m_onnx, *args, check=False)
    assert_one_line_error(proc)
    assert source.read_bytes() == before


def test_help_texts_explain_every_option():
    for script, options in (("scrfd.py", ("--model", "--image", "--out", "--json", "--score",
                                          "--nms", "--max-faces", "--size", "--threads",
                                          "--blur", "--crops", "--crop-size", "--verbose")),
                            ("video_inference_fdlm.py", ("--video", "--webcam", "--out", "--json",
                                                         "--max-frames", "--show", "--size",
                                                         "--blur", "--crops", "--crf",
                                                         "--preset", "--two-pass",
                                                         "--blur-shape", "--blur-grow",
                                                         "--track-score", "--track-hold"))):
        text = run_script(script, "--help").stdout
        for option in options:
            assert option in text
        assert "default" in text
