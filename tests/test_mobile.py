"""The .tflite kinds for apps (export_tflite.py --kind decoded | object-detector, --int8
--integer-io), judged from outside: the decoded export against the Python pipeline on the raw
export, MediaPipe's own ObjectDetector against scrfd.py, the TFLite Support metadata as
MediaPipe's reader sees it, the integer ends of the full-integer files, and every script
reading the new kinds (landmark-free ones refusing --crops)."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, SAMPLES, TEST_HW, run_main, run_script

PHOTOS = ("friends.jpg", "two_people.jpg", "group_t1.jpg")
HW_FLAG = f"{TEST_HW[0]}x{TEST_HW[1]}"
MEDIAPIPE_TOOL = REPO / "tests" / "tools" / "mediapipe_faces.py"
sys.path.insert(0, str(MEDIAPIPE_TOOL.parent))
from mediapipe_faces import iou  # noqa: E402  (the tool's own IoU, shared with its check)


def _export_kind(fixed_onnx: Path, cache_dir: Path, name: str, *options: str) -> Path:
    out = cache_dir / f"scrfd500m_{HW_FLAG}_{name}.tflite"
    if not out.exists():
        run_script("export_tflite.py", "--onnx", fixed_onnx, "--out", out, *options,
                   "--check-images", SAMPLES / "friends.jpg")
    return out


@pytest.fixture(scope="module")
def decoded(fixed_onnx, cache_dir) -> Path:
    return _export_kind(fixed_onnx, cache_dir, "float32_decoded", "--kind", "decoded",
                        "--max-faces", "200")


@pytest.fixture(scope="module")
def object_detector(fixed_onnx, cache_dir) -> Path:
    return _export_kind(fixed_onnx, cache_dir, "float32_object_detector",
                        "--kind", "object-detector")


@pytest.fixture(scope="module")
def decoded_int8_io(fixed_onnx, cache_dir, wider_dir) -> Path:
    return _export_kind(fixed_onnx, cache_dir, "int8_decoded_integer_io", "--kind", "decoded",
                        "--int8", "--integer-io", "--calib", wider_dir / "WIDER_val" / "images",
                        "--calib-count", "24")


@pytest.fixture(scope="module")
def raw_int8_io(fixed_onnx, cache_dir, wider_dir) -> Path:
    return _export_kind(fixed_onnx, cache_dir, "int8_integer_io", "--int8", "--integer-io",
                        "--calib", wider_dir / "WIDER_val" / "images", "--calib-count", "24")


def io_types(path: Path) -> tuple[list[str], dict[str, str]]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    return ([np.dtype(d["dtype"]).name for d in interpreter.get_input_details()],
            {d["name"]: np.dtype(d["dtype"]).name for d in interpreter.get_output_details()})


def test_decoded_equals_the_python_pipeline_on_the_raw_export(decoded, tflite_float32):
    """Same faces, best first, boxes and landmarks within 1e-3 px, at the graph's own
    thresholds (score 0.02, IoU 0.4): decode and NMS in the graph are the pipeline's."""
    import cv2

    from scrfdkit.detector import SCRFD

    reference = SCRFD(tflite_float32, score_threshold=0.02, nms_threshold=0.4, max_faces=200)
    graph = SCRFD(decoded, score_threshold=0.02, nms_threshold=0.4)
    assert graph.has_landmarks and graph.runner.kind == "decoded"
    for name in PHOTOS:
        image = cv2.imread(str(SAMPLES / name))
        expected, actual = reference.detect(image), graph.detect(image)
        assert len(expected) > 10 and len(actual) == len(expected), name
        scale = reference.prepare(image)[1]  # compare in input pixels, as the graph works
        assert np.abs(actual.boxes - expected.boxes).max() * scale <= 1e-3, name
        assert np.abs(actual.landmarks - expected.landmarks).max() * scale <= 1e-3, name
        assert np.abs(actual.scores - expected.scores).max() <= 1e-5, name


def test_decoded_outputs_and_support_metadata(decoded, object_detector):
    _, outputs = io_types(decoded)
    assert outputs == {"boxes": "float32", "scores": "float32", "landmarks": "float32",
                       "count": "int32"}
    inputs, outputs = io_types(object_detector)
    assert inputs == ["uint8"] and list(outputs) == ["boxes", "classes", "scores", "count"]
    pytest.importorskip("mediapipe", reason="mediapipe is not installed: pip install --no-deps "
                                            "-r requirements-mobile.txt")
    from mediapipe.tasks.python.metadata.metadata import MetadataDisplayer

    for path in (decoded, object_detector):
        shown = json.loads(MetadataDisplayer.with_model_file(str(path)).get_metadata_json())
        assert "non-commercial" in shown["license"] and shown["version"] == "1"
        described = [t["name"] for t in shown["subgraph_metadata"][0]["output_tensor_metadata"]]
        norm = shown["subgraph_metadata"][0]["input_tensor_metadata"][0]["process_units"]
        if path == decoded:
            assert described == ["boxes", "scores", "landmarks", "count"]
            assert norm[0]["options"]["mean"] == [127.5] and norm[0]["options"]["std"] == [128.0]
    labels = MetadataDisplayer.with_model_file(str(object_detector)).get_associated_file_buffer(
        "labels.txt")
    assert labels.decode().split() == ["face"]
    # the project's own metadata beside it, and inside it
    sidecar = json.loads(Path(f"{object_detector}.json").read_text())
    assert sidecar["kind"] == "object-detector" and sidecar["postprocess"]["max_faces"] == 500


def mediapipe_python() -> str | None:
    """SCRFD_MEDIAPIPE_PYTHON when set (mediapipe 1.2.x wants numpy 2 and protobuf 5+, so it
    lives in an environment of its own: make mediapipe-check), else this interpreter when it
    has mediapipe (0.10.21 from requirements-mobile.txt)."""
    import os

    if os.environ.get("SCRFD_MEDIAPIPE_PYTHON"):
        return os.environ["SCRFD_MEDIAPIPE_PYTHON"]
    return sys.executable if importlib.util.find_spec("mediapipe") else None


def stretched_faces(model: Path, photo: Path, score: float) -> tuple[np.ndarray, np.ndarray]:
    """The object-detector export run by LiteRT on the photo as MediaPipe's ImageToTensor makes
    its input (the photo's corners onto the input's corners, bilinear, no letterbox), boxes
    mapped back by the same transform: what MediaPipe must return when it reads the file right."""
    import cv2
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(model))
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    outputs = {d["name"]: d["index"] for d in interpreter.get_output_details()}
    height, width = detail["shape"][1:3]
    rgb = cv2.cvtColor(cv2.imread(str(photo)), cv2.COLOR_BGR2RGB)
    h, w = rgb.shape[:2]
    corners = np.float32([[0, h], [0, 0], [w, 0], [w, h]])
    transform = cv2.getPerspectiveTransform(corners, corners * np.float32([width / w, height / h]))
    tensor = cv2.warpPerspective(rgb, transform, (int(width), int(height)),
                                 flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    interpreter.set_tensor(detail["index"], tensor[None])
    interpreter.invoke()
    count = int(interpreter.get_tensor(outputs["count"])[0])
    boxes = interpreter.get_tensor(outputs["boxes"])[0, :count]
    scores = interpreter.get_tensor(outputs["scores"])[0, :count]
    keep = scores >= score
    return boxes[keep][:, [1, 0, 3, 2]] * np.array([w, h, w, h]), scores[keep]


def test_mediapipe_object_detector_reads_the_export_unchanged(object_detector, tflite_float32,
                                                              tmp_path):
    """MediaPipe's own ObjectDetector loads the file as it is (metadata, label, uint8 input) and
    returns the model's faces mapped onto the photo's own pixels: every face the model gives
    on MediaPipe's stretched input, at IoU >= 0.9 (MediaPipe rounds boxes to whole pixels),
    scores within 0.01, labelled `face`; nothing shifted by a letterbox."""
    python = mediapipe_python()
    if python is None:
        pytest.skip("mediapipe is not installed here (pip install --no-deps -r "
                    "requirements-mobile.txt, or point SCRFD_MEDIAPIPE_PYTHON at a Python with it)")
    faces, dump = tmp_path / "faces.jsonl", tmp_path / "mediapipe.jsonl"
    run_script("scrfd.py", "--image", *(SAMPLES / p for p in PHOTOS), "--model", tflite_float32,
               "--score", "0.5", "--out", tmp_path / "out", "--json", faces)
    done = subprocess.run([python, str(MEDIAPIPE_TOOL), str(object_detector), str(faces),
                           "--score", "0.5", "--dump", str(dump)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "['face']" in done.stdout, done.stdout
    seen = 0
    for line in dump.read_text().splitlines():
        record = json.loads(line)
        found = np.array([f["box"] for f in record["faces"]]).reshape(-1, 4)
        scores = np.array([f["score"] for f in record["faces"]])
        boxes, expected = stretched_faces(object_detector, Path(record["path"]), 0.5)
        assert len(found) == len(boxes) > 0, record["path"]
        overlap = iou(boxes, found)
        best = overlap.argmax(axis=1)
        assert overlap.max(axis=1).min() >= 0.9, (record["path"], overlap.max(axis=1))
        assert np.abs(scores[best] - expected).max() <= 0.01, record["path"]
        seen += 1
    assert seen == len(PHOTOS)
    # and judged by scrfd.py alone: on photos padded to the input's shape (the letterbox),
    # scrfd.py's faces. Loose: at 128x160 the faces are 15-30 input pixels, and MediaPipe
    # samples the photo at pixel corners, OpenCV at pixel centres (docs/mobile.md)
    padded = subprocess.run([python, str(MEDIAPIPE_TOOL), str(object_detector), str(faces),
                             "--score", "0.5", "--pad", HW_FLAG], capture_output=True,
                            text=True, timeout=300)
    summary = json.loads(padded.stdout.strip().splitlines()[-1])
    assert summary["faces"] >= 10 and summary["min_iou"] >= 0.75, padded.stdout
    assert summary["same_count"] >= len(PHOTOS) - 1 and summary["max_score_diff"] <= 0.15


def test_landmark_free_kind_in_the_scripts(object_detector, tmp_path):
    """scrfd.py and evaluate-style runs read the object-detector export: faces without
    landmarks, --crops refused in one line, tiles refused."""
    out = run_script("scrfd.py", "--image", SAMPLES / "friends.jpg", "--model", object_detector,
                     "--out", tmp_path / "out", "--json", tmp_path / "faces.jsonl")
    faces = json.loads((tmp_path / "faces.jsonl").read_text().splitlines()[0])["faces"]
    assert faces and all("landmarks" not in f for f in faces), out.stdout
    refused = run_main("scrfd.py", "--image", SAMPLES / "friends.jpg", "--model",
                       object_detector, "--out", tmp_path / "out2", "--crops", tmp_path / "crops")
    assert refused.returncode != 0 and "--crops needs landmarks" in refused.stderr
    assert "Traceback" not in refused.stderr and not (tmp_path / "crops").exists()
    tiled = run_main("scrfd.py", "--image", SAMPLES / "friends.jpg", "--model", object_detector,
                     "--out", tmp_path / "out3", "--tile")
    assert tiled.returncode != 0 and "tiles need a raw export" in tiled.stderr


def test_full_integer_exports_are_integer_at_both_ends(decoded_int8_io, raw_int8_io,
                                                       tflite_int8):
    """int8 in, int8 out (count int32), and the same faces as today's int8 export on a photo."""
    import cv2

    from scrfdkit.detector import SCRFD

    for path in (decoded_int8_io, raw_int8_io):
        inputs, outputs = io_types(path)
        assert inputs == ["int8"], path
        assert {k: v for k, v in outputs.items() if k != "count"} and \
            set(v for k, v in outputs.items() if k != "count") == {"int8"}, (path, outputs)
    image = cv2.imread(str(SAMPLES / "friends.jpg"))
    expected = SCRFD(tflite_int8).detect(image)
    for path in (decoded_int8_io, raw_int8_io):
        found = SCRFD(path).detect(image)
        assert abs(len(found) - len(expected)) <= 1, path
        best = iou(expected.boxes, found.boxes).max(axis=1)
        assert np.median(best) >= 0.8, (path, best)
    meta = json.loads(Path(f"{decoded_int8_io}.json").read_text())
    assert "NON_MAX_SUPPRESSION_V5" in meta["op_types"]["int32"]
    assert meta["op_types"]["int8"]["CONV_2D"] > 30


@pytest.mark.parametrize("options, message", [
    (["--integer-io"], "--integer-io needs --int8"),
    (["--kind", "object-detector", "--int8", "--integer-io"], "object-detector input is uint8"),
    (["--kind", "object-detector", "--no-nms"], "--no-nms is for --kind decoded"),
    (["--kind", "decoded", "--fp16"], "float32 or --int8"),
    (["--kind", "pictures"], "invalid choice"),
])
def test_kind_options_are_checked_first(options, message, tmp_path):
    done = run_main("export_tflite.py", "--onnx", tmp_path / "missing.onnx", *options)
    assert done.returncode != 0 and message in done.stderr, done.stderr
