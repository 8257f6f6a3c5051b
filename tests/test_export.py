"""export_modified_onnx.py and export_tflite.py on the real SCRFD exports in ../shared/models."""
from __future__ import annotations

import functools
import hashlib
import http.server
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import MODELS, REPO, SAMPLES, TEST_HW, run_main, run_script

from scrfdkit.decode import KINDS, STRIDES
from scrfdkit.export.parity import parity
from scrfdkit.metadata import metadata_path, read_metadata
from scrfdkit.runners import LiteRTRunner, OnnxRunner

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
    raw = runner.run(np.zeros((1, 3, 256, 320), np.float32))
    assert raw[8]["score"].shape == (2 * 32 * 40,) and raw[32]["bbox"].shape == (2 * 8 * 10, 4)
    if "bnkps" not in name:  # dynamic sources are checked against themselves at this size
        assert "parity with" in proc.stdout


def test_tflite_float32_matches_onnx(tflite_float32, fixed_onnx):
    worst = parity(fixed_onnx, tflite_float32, [SAMPLES / "friends.jpg", SAMPLES / "group_t1.jpg"])
    assert max(worst[k] for k in KINDS) <= 1e-3, worst
    for kind in KINDS:  # the mean over the anchors that can become detections, beside the max
        assert 0 < worst[f"{kind}_candidates_mean"] <= worst[f"{kind}_candidates"] <= worst[kind]
    meta = read_metadata(tflite_float32)
    assert meta["precision"] == "float32" and meta["family"] == "scrfd500m"
    assert (meta["input"]["height"], meta["input"]["width"]) == TEST_HW
    assert meta["keypoints"] and meta["anchors_per_location"] == 2
    assert sorted((o["kind"], o["stride"]) for o in meta["outputs"]) == sorted(
        (k, s) for k in KINDS for s in STRIDES)
    assert meta["source"]["sha256"] == hashlib.sha256(fixed_onnx.read_bytes()).hexdigest()
    assert meta["tflite_sha256"] == hashlib.sha256(tflite_float32.read_bytes()).hexdigest()


def test_tflite_int8_is_integer_and_runs(tflite_int8, tflite_float32):
    runner = LiteRTRunner(tflite_int8, threads=1)
    assert runner.input_dtype == np.int8 and runner.precision == "int8"
    assert tflite_int8.stat().st_size < 0.4 * tflite_float32.stat().st_size
    raw = runner.run(np.zeros((1, *TEST_HW, 3), np.float32))
    assert set(raw[16]) == {"score", "bbox", "kps"}
    assert np.all((raw[8]["score"] >= 0) & (raw[8]["score"] <= 1))


OTHER_EXPORTS = {"scrfd_500m.onnx": "scrfd500m_nokps", "scrfd_500m_bnkps.onnx": "scrfd500m_bnkps"}


@pytest.fixture(scope="module")
def other_exports(cache_dir) -> dict[str, tuple[Path, str]]:
    """Both exports, converted side by side (a conversion keeps about one core busy) into the
    test export folder, where they are kept while nothing that made them changes (conftest's
    export key): name -> (the .tflite, export_tflite.py's stdout)."""
    running, done = {}, {}
    for name in OTHER_EXPORTS:
        if not (MODELS / name).exists():
            continue
        folder = cache_dir / f"other_{Path(name).stem}"
        out = folder / f"{OTHER_EXPORTS[name]}_128x160_float32.tflite"
        if (folder / "export_tflite.log").is_file():  # made by this code from this model
            done[name] = out, (folder / "export_tflite.log").read_text()
            continue
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        fixed = folder / "fixed.onnx"
        run_script("export_modified_onnx.py", "--model", MODELS / name, "--hw", "128,160",
                   "--out", fixed, "--check-image", SAMPLES / "friends.jpg")
        running[name] = out, subprocess.Popen(
            [sys.executable, str(REPO / "export_tflite.py"), "--onnx", str(fixed), "--out",
             str(out), "--check-images", str(SAMPLES / "friends.jpg")], cwd=folder, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "3"})
    for name, (out, proc) in running.items():
        stdout, stderr = proc.communicate(timeout=900)
        assert proc.returncode == 0, f"{name}: " + stdout[-3000:] + stderr[-3000:]
        (out.parent / "export_tflite.log").write_text(stdout)  # last: the export is complete
        done[name] = out, stdout
    return done


@pytest.mark.parametrize("name", list(OTHER_EXPORTS))
def test_tflite_other_exports(name, other_exports):
    """No-keypoint and fixed-shape sources convert too, and pass the float32 parity gate."""
    if name not in other_exports:
        pytest.skip(f"no {MODELS / name}")
    out, stdout = other_exports[name]
    assert f"wrote {out.name} " in stdout and "| score (probability) |" in stdout  # cwd: its folder
    assert read_metadata(out)["family"] == OTHER_EXPORTS[name]  # what names the default file
    runner = LiteRTRunner(out)
    assert runner.has_landmarks == ("bnkps" in name)


# ----------------------------------------------------------------------------- bad input
def test_missing_model(tmp_path):
    proc = run_script("export_modified_onnx.py", "--model", tmp_path / "nope.onnx", check=False)
    assert_clean_failure(proc, "not found")


def test_not_onnx(tmp_path):
    fake = tmp_path / "fake.onnx"
    fake.write_text("this is not a protobuf")
    out = tmp_path / "out.onnx"
    proc = run_main("export_modified_onnx.py", "--model", fake, "--out", out)
    assert_clean_failure(proc, "not a valid ONNX")
    assert not out.exists()


def test_not_scrfd(tmp_path):
    yunet = MODELS / "peers" / "face_detection_yunet_2026may.onnx"
    if not yunet.exists():
        pytest.skip("no peer model")
    out = tmp_path / "out.onnx"
    proc = run_main("export_modified_onnx.py", "--model", yunet, "--hw", "128,160", "--out", out)
    assert_clean_failure(proc, "not an SCRFD model")
    assert not out.exists() and not list(tmp_path.glob(".*"))


def test_size_not_multiple_of_32(det500m_onnx):
    proc = run_main("export_modified_onnx.py", "--model", det500m_onnx, "--hw", "500,500")
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
    proc = run_main("export_tflite.py", "--onnx", fixed_onnx, "--int8", "--calib", folder,
                    "--out", out)
    assert_clean_failure(proc, "calibration")
    assert not out.exists() and not metadata_path(out).exists()


def test_tflite_refuses_to_overwrite_its_input(fixed_onnx, tmp_path):
    """--out equal to --onnx (it used to convert, then write the .tflite over the ONNX)."""
    onnx_copy = tmp_path / "v.onnx"
    shutil.copyfile(fixed_onnx, onnx_copy)
    started = time.perf_counter()
    proc = run_main("export_tflite.py", "--onnx", onnx_copy, "--out", onnx_copy)
    assert_clean_failure(proc, "is the input")
    assert time.perf_counter() - started < 20 and "converted" not in proc.stdout
    assert onnx_copy.read_bytes() == fixed_onnx.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.onnx"]


def test_modified_onnx_refuses_to_overwrite_its_input(fixed_onnx, tmp_path):
    onnx_copy = tmp_path / "v.onnx"
    shutil.copyfile(fixed_onnx, onnx_copy)
    proc = run_main("export_modified_onnx.py", "--model", onnx_copy, "--hw", "128,160",
                    "--out", "v.onnx", cwd=tmp_path)  # same file, other spelling
    assert_clean_failure(proc, "is the input")
    assert onnx_copy.read_bytes() == fixed_onnx.read_bytes()


@pytest.mark.parametrize("where", ["folder", "under a file", "wrong suffix", "read-only"])
def test_tflite_output_path_checked_before_converting(fixed_onnx, tmp_path, where):
    """A bad --out is one error line within seconds, not after the conversion."""
    if where == "read-only" and not Path("/proc/self").is_dir():
        pytest.skip("needs Linux /proc, where nobody (root included) can create files")
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    out = {"folder": tmp_path, "under a file": tmp_path / "notes.txt" / "model.tflite",
           "wrong suffix": tmp_path / "model.onnx", "read-only": Path("/proc/model.tflite")}[where]
    phrase = {"folder": "is a folder", "under a file": "is a file, not a folder",
              "wrong suffix": "must end in .tflite", "read-only": "cannot write in /proc"}[where]
    started = time.perf_counter()
    proc = run_main("export_tflite.py", "--onnx", fixed_onnx, "--out", out)
    assert_clean_failure(proc, phrase)
    assert time.perf_counter() - started < 20 and "converted" not in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("opset", ["0", "-3", "99"])
def test_opset_out_of_range(det500m_onnx, tmp_path, opset):
    """An opset the tool cannot write is refused, never reported while writing another."""
    out = tmp_path / "fixed.onnx"
    proc = run_main("export_modified_onnx.py", "--model", det500m_onnx, "--hw", "128,160",
                    "--opset", opset, "--out", out)
    assert_clean_failure(proc, "opset")
    assert not out.exists() and "wrote" not in proc.stdout


def test_opset_reported_is_the_one_written(det500m_onnx, tmp_path):
    """--opset 7 on an opset-11 source: the model stays at 11 and says so."""
    out = tmp_path / "fixed.onnx"
    proc = run_script("export_modified_onnx.py", "--model", det500m_onnx, "--hw", "128,160",
                      "--opset", "7", "--out", out, "--check-image", SAMPLES / "friends.jpg")
    written = max(o.version for o in onnx.load(str(out)).opset_import if o.domain in ("", "ai.onnx"))
    assert written == 11 and f"opset {written}," in proc.stdout


@pytest.mark.parametrize("count", ["0", "-5", "many"])
def test_calib_count_must_be_positive(fixed_onnx, tmp_path, count):
    proc = run_main("export_tflite.py", "--onnx", fixed_onnx, "--int8", "--calib-count", count,
                    "--out", tmp_path / "m.tflite")
    assert_clean_failure(proc, "--calib-count")
    assert not any(tmp_path.iterdir())


def earlier_pair(tflite_float32: Path, tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """models/model.tflite and its sidecar, copied from the test export: what a failed or
    stopped export must leave as it was."""
    models = tmp_path / "models"
    models.mkdir()
    out = models / "model.tflite"
    shutil.copyfile(tflite_float32, out)
    shutil.copyfile(metadata_path(tflite_float32), metadata_path(out))
    return out, {p.name: p.read_bytes() for p in models.iterdir()}


# A converter that writes a well-formed model computing the wrong thing: onnx2tf's float32
# .tflite of the same ONNX model (the test export, to spare a conversion) with its largest
# weight tensor reversed, as a wrong transposition inside the converter would leave it.
WRONG_CONVERTER = """
import os, runpy, sys
from pathlib import Path
from ai_edge_litert import schema_py_generated as schema
import scrfdkit.export.onnx_edit as onnx_edit

def run_onnx2tf(onnx_path, precision, workdir, test_data):
    produced = Path(workdir) / "out" / "converted.tflite"
    produced.parent.mkdir(parents=True)
    data = bytearray(Path(os.environ["CONVERTED"]).read_bytes())
    model = schema.Model.GetRootAs(data, 0)
    buffers = [model.Buffers(i) for i in range(model.BuffersLength())]
    largest = max(buffers, key=lambda b: b.DataLength())
    start, size = largest._tab.Vector(largest._tab.Offset(4)), largest.DataLength() // 4 * 4
    values = [data[i:i + 4] for i in range(start, start + size, 4)]
    data[start:start + size] = b"".join(reversed(values))
    produced.write_bytes(bytes(data))
    return produced

onnx_edit.run_onnx2tf = run_onnx2tf
sys.argv = ["export_tflite.py", *sys.argv[1:]]
runpy.run_path("export_tflite.py", run_name="__main__")
"""


def test_a_conversion_that_fails_the_parity_check_keeps_the_earlier_pair(tflite_float32,
                                                                         fixed_onnx, tmp_path):
    """The float32 gate: the wrong model is measured against ONNX Runtime, refused (exit 1),
    and the earlier .tflite and sidecar stay byte for byte; nothing temporary is left."""
    out, before = earlier_pair(tflite_float32, tmp_path)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    proc = subprocess.run([sys.executable, "-c", WRONG_CONVERTER, "--onnx", str(fixed_onnx),
                           "--out", str(out), "--check-images", str(SAMPLES / "friends.jpg")],
                          cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TMPDIR": str(scratch),
                               "CONVERTED": str(tflite_float32)})
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "wrote" not in proc.stdout
    assert "| score (probability) |" in proc.stdout  # the parity table was printed
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: float32 parity above 0.001; the conversion is wrong, so {out} was left as it was")
    assert {p.name: p.read_bytes() for p in out.parent.iterdir()} == before
    assert not any(scratch.iterdir())


def test_interrupted_export_keeps_the_earlier_pair(tflite_float32, fixed_onnx, tmp_path):
    """Stopped inside onnx2tf (SIGTERM; Ctrl-C takes the same path): the earlier .tflite and
    sidecar stay byte for byte, and no temporary file or folder is left beside them or in the
    temporary folder."""
    out, before = earlier_pair(tflite_float32, tmp_path)
    models, scratch = out.parent, tmp_path / "tmp"
    scratch.mkdir()
    proc = subprocess.Popen([sys.executable, str(REPO / "export_tflite.py"), "--onnx", fixed_onnx,
                             "--out", out, "--check-images", SAMPLES / "friends.jpg"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TMPDIR": str(scratch)})
    deadline = time.monotonic() + 120
    while not list(scratch.glob("export_tflite-*/out")) and proc.poll() is None:
        assert time.monotonic() < deadline, "the export never reached onnx2tf"
        time.sleep(0.2)
    time.sleep(2)  # onnx2tf is building the TensorFlow graph
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 143, stdout + stderr
    assert "Traceback" not in stderr and "wrote" not in stdout
    assert {p.name: p.read_bytes() for p in models.iterdir()} == before
    assert not any(scratch.iterdir())


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
    proc = run_main("export_modified_onnx.py", "--download", "buffalo_sc", "--models-dir", models,
                    "--mirror", url)
    assert_clean_failure(proc, "yourself", "det_500m.onnx")
    assert "into" in proc.stderr and str(models) in proc.stderr
    assert not models.exists() or not any(models.iterdir())


def _zip_detector(root: Path, member: Path, name: str = "det_500m.onnx") -> None:
    with zipfile.ZipFile(root / "buffalo_sc.zip", "w") as archive:
        archive.write(member, name)


def test_download_from_model_url_env(release_server, det500m_onnx, tmp_path, monkeypatch):
    """SCRFD_MODEL_URL names the folder holding buffalo_sc.zip; the sha256 is still checked."""
    root, url = release_server
    _zip_detector(root, det500m_onnx)
    monkeypatch.setenv("SCRFD_MODEL_URL", url)
    models = tmp_path / "models"
    proc = run_script("export_modified_onnx.py", "--download", "buffalo_sc", "--models-dir", models)
    assert (models / "det_500m.onnx").read_bytes() == det500m_onnx.read_bytes()
    assert f"wrote {models / 'det_500m.onnx'} (sha256 ok)" in proc.stdout


def test_download_from_model_url_env_checks_sha256(release_server, fixed_onnx, tmp_path,
                                                   monkeypatch):
    """A valid ONNX model that is not the released det_500m is refused and not kept."""
    root, url = release_server
    _zip_detector(root, fixed_onnx)
    monkeypatch.setenv("SCRFD_MODEL_URL", url)
    models = tmp_path / "models"
    proc = run_main("export_modified_onnx.py", "--download", "buffalo_sc", "--models-dir", models)
    assert_clean_failure(proc, "sha256", url)
    assert not models.exists() or not any(models.iterdir())


def test_download_help_names_the_variable():
    assert "SCRFD_MODEL_URL" in run_main("export_modified_onnx.py", "--help").stdout


@pytest.mark.parametrize("url", ["not a url", "gopher://127.0.0.1/"])
def test_download_url_checked_first(url, tmp_path, monkeypatch):
    monkeypatch.setenv("SCRFD_MODEL_URL", url)
    models = tmp_path / "models"
    proc = run_main("export_modified_onnx.py", "--download", "buffalo_sc", "--models-dir", models)
    assert_clean_failure(proc, "SCRFD_MODEL_URL")
    assert not models.exists()
