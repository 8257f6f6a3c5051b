"""export_modified_onnx.py and export_tflite.py on the real SCRFD exports in ../shared/models."""
from __future__ import annotations

import functools
import hashlib
import http.server
import json
import threading
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest

from conftest import MODELS, SAMPLES, TEST_HW, run_script
from detector import KINDS, STRIDES, LiteRTRunner, OnnxRunner, metadata_path

ALL_MODELS = sorted(p.name for p in MODELS.glob("*.onnx")) if MODELS.exists() else []
CANONICAL = [f"{k}_{s}" for k in KINDS for s in STRIDES]


def assert_clean_failure(proc, *phrases: str) -> None:
    """Bad input: exit code 2, one error line (last on stderr, after any progress bar), no traceback."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and proc.stderr.rstrip().endswith(errors[0]), proc.stderr
    for phrase in phrases:
        assert phrase in errors[0], errors[0]


@pytest.mark.parametrize("name", ALL_MODELS)
def test_modified_onnx_every_export(name, tmp_path):
    """Dynamic or fixed input, numeric or named outputs, 6 or 9 outputs: all come out canonical."""
    out = tmp_path / "fixed.onnx"
    proc = run_script("export_modified_onnx.py", "--model", MODELS / name, "--hw", "256,320",
                      "--out", out, "--check-image", SAMPLES / "friends.jpg")
    assert f"wrote {out}" in proc.stdout
    model = onnx.load(str(out))
    names = [o.name for o in model.graph.output]
    assert names == CANONICAL[: len(names)] and len(names) in (6, 9)
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 256, 320]
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 13
    runner = OnnxRunner(out, threads=1)
    raw = runner(np.zeros((1, 3, 256, 320), np.float32))
    assert raw[8]["score"].shape == (2 * 32 * 40,) and raw[32]["bbox"].shape == (2 * 8 * 10, 4)
    if "bnkps" not in name:  # dynamic sources are checked against themselves at this size
        assert "parity with" in proc.stdout


def test_tflite_float32_matches_onnx(tflite_float32, fixed_onnx):
    import export_tflite

    worst = export_tflite.parity(fixed_onnx, tflite_float32,
                                 [SAMPLES / "friends.jpg", SAMPLES / "group_t1.jpg"])
    assert max(worst[k] for k in KINDS) <= 1e-3, worst
    for kind in KINDS:  # the mean over the anchors that can become detections, beside the max
        assert 0 < worst[f"{kind}_candidates_mean"] <= worst[f"{kind}_candidates"] <= worst[kind]
    meta = json.loads(metadata_path(tflite_float32).read_text())
    assert meta["precision"] == "float32" and meta["family"] == "scrfd500m"
    assert (meta["input"]["height"], meta["input"]["width"]) == TEST_HW
    assert meta["keypoints"] and meta["anchors_per_location"] == 2
    assert sorted((o["kind"], o["stride"]) for o in meta["outputs"]) == sorted(
        (k, s) for k in KINDS for s in STRIDES)
    assert meta["source"]["sha256"] == hashlib.sha256(fixed_onnx.read_bytes()).hexdigest()


def test_tflite_int8_is_integer_and_runs(tflite_int8, tflite_float32):
    runner = LiteRTRunner(tflite_int8, threads=1)
    assert runner.input["dtype"] == np.int8 and runner.precision == "int8"
    assert tflite_int8.stat().st_size < 0.4 * tflite_float32.stat().st_size
    raw = runner(np.zeros((1, *TEST_HW, 3), np.float32))
    assert set(raw[16]) == {"score", "bbox", "kps"}
    assert np.all((raw[8]["score"] >= 0) & (raw[8]["score"] <= 1))


@pytest.mark.parametrize("name", ["scrfd_500m.onnx", "scrfd_500m_bnkps.onnx"])
def test_tflite_other_exports(name, tmp_path):
    """No-keypoint and fixed-shape sources convert too, and pass the float32 parity gate."""
    fixed = tmp_path / "fixed.onnx"
    run_script("export_modified_onnx.py", "--model", MODELS / name, "--hw", "128,160",
               "--out", fixed, "--check-image", SAMPLES / "friends.jpg")
    proc = run_script("export_tflite.py", "--onnx", fixed, "--check-images", SAMPLES / "friends.jpg",
                      cwd=tmp_path)
    expected = {"scrfd_500m.onnx": "scrfd500m_nokps", "scrfd_500m_bnkps.onnx": "scrfd500m_bnkps"}
    out = Path("models") / f"{expected[name]}_128x160_float32.tflite"
    assert f"wrote {out}" in proc.stdout and "| score (probability) |" in proc.stdout
    runner = LiteRTRunner(tmp_path / out)
    assert runner.has_landmarks == ("bnkps" in name)


# ----------------------------------------------------------------------------- bad input
def test_missing_model(tmp_path):
    proc = run_script("export_modified_onnx.py", "--model", tmp_path / "nope.onnx", check=False)
    assert_clean_failure(proc, "not found")


def test_not_onnx(tmp_path):
    fake = tmp_path / "fake.onnx"
    fake.write_text("this is not a protobuf")
    out = tmp_path / "out.onnx"
    proc = run_script("export_modified_onnx.py", "--model", fake, "--out", out, check=False)
    assert_clean_failure(proc, "not a valid ONNX")
    assert not out.exists()


def test_not_scrfd(tmp_path):
    yunet = MODELS / "peers" / "face_detection_yunet_2026may.onnx"
    if not yunet.exists():
        pytest.skip("no peer model")
    out = tmp_path / "out.onnx"
    proc = run_script("export_modified_onnx.py", "--model", yunet, "--hw", "128,160", "--out", out,
                      check=False)
    assert_clean_failure(proc, "not an SCRFD model")
    assert not out.exists() and not list(tmp_path.glob(".*"))


def test_size_not_multiple_of_32(det500m_onnx):
    proc = run_script("export_modified_onnx.py", "--model", det500m_onnx, "--hw", "500,500",
                      check=False)
    assert_clean_failure(proc, "480", "512")


def test_tflite_needs_fixed_input(det500m_onnx):
    proc = run_script("export_tflite.py", "--onnx", det500m_onnx, check=False)
    assert_clean_failure(proc, "dynamic input", "export_modified_onnx.py")


@pytest.mark.parametrize("calib", ["missing", "empty"])
def test_int8_without_calibration_images(fixed_onnx, tmp_path, calib):
    folder = tmp_path / "calib"
    if calib == "empty":
        folder.mkdir()
        (folder / "notes.txt").write_text("no images here")
    out = tmp_path / "model.tflite"
    proc = run_script("export_tflite.py", "--onnx", fixed_onnx, "--int8", "--calib", folder,
                      "--out", out, check=False)
    assert_clean_failure(proc, "calibration")
    assert not out.exists() and not metadata_path(out).exists()


# ----------------------------------------------------------------------------- download
class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture()
def release_server(tmp_path):
    """A local HTTP server on 127.0.0.1 standing in for the InsightFace release page."""
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_download_checks_and_writes(release_server, det500m_onnx, tmp_path):
    root, url = release_server
    with zipfile.ZipFile(root / "buffalo_sc.zip", "w") as archive:
        archive.write(det500m_onnx, "buffalo_sc/det_500m.onnx")
        archive.writestr("buffalo_sc/w600k_mbf.onnx", b"recognition model, not needed")
    models = tmp_path / "models"
    proc = run_script("export_modified_onnx.py", "--download", "buffalo_sc", "--models-dir", models,
                      "--mirror", url)
    assert (models / "det_500m.onnx").read_bytes() == det500m_onnx.read_bytes()
    assert "sha256 ok" in proc.stdout
    assert sorted(p.name for p in models.iterdir()) == ["det_500m.onnx"]


@pytest.mark.parametrize("problem", ["wrong file", "corrupt zip", "not served"])
def test_broken_download_leaves_nothing(release_server, tmp_path, problem):
    root, url = release_server
    if problem == "wrong file":
        with zipfile.ZipFile(root / "buffalo_sc.zip", "w") as archive:
            archive.writestr("buffalo_sc/det_500m.onnx", b"tampered")
    elif problem == "corrupt zip":
        (root / "buffalo_sc.zip").write_bytes(b"PK\x03\x04 truncated")
    models = tmp_path / "models"
    proc = run_script("export_modified_onnx.py", "--download", "buffalo_sc", "--models-dir", models,
                      "--mirror", url, check=False)
    assert_clean_failure(proc, "yourself", "det_500m.onnx")
    assert "into" in proc.stderr and str(models) in proc.stderr
    assert not models.exists() or not any(models.iterdir())
