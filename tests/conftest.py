"""Shared test fixtures: real models and images from ../shared, exports made once per run.

Paths come from environment variables so the suite runs anywhere the data is:
SCRFD_SHARED (default ../shared beside the repository) holds models/, samples/, widerface/.
"""
from __future__ import annotations

import os
import ast
import contextlib
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import subprocess
import platform
import shutil
import signal
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("SCRFD_SHARED", REPO.parent / "shared")).resolve()
MODELS = Path(os.environ.get("SCRFD_MODELS", SHARED / "models"))
SAMPLES = Path(os.environ.get("SCRFD_SAMPLES", SHARED / "samples"))
WIDER = Path(os.environ.get("SCRFD_WIDER", SHARED / "widerface"))
TEST_HW = (128, 160)  # small, non-square: keeps conversions fast on two cores
# Exports are cached per run (tests reuse them); SCRFD_TEST_CACHE keeps them across runs.
CACHE = Path(os.environ.get("SCRFD_TEST_CACHE", REPO / ".cache" / "tests"))


def run_script_without(module: str, script: str, *args: str) -> subprocess.CompletedProcess:
    """Run a script as if `module` were not installed (hidden from the import system)."""
    code = (f"import runpy, sys; sys.modules[{module!r}] = None; "
            f"sys.argv = [{script!r}, *{list(map(str, args))!r}]; "
            f"runpy.run_path({script!r}, run_name='__main__')")
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "inference: depends on the versions of the inference "
                            "packages (numpy, OpenCV, ONNX Runtime, LiteRT, scipy, Ray) and runs "
                            "without TensorFlow: CI runs these again in an environment made from "
                            "requirements-inference.txt alone (make test-inference)")


_SCRIPTS: dict[str, object] = {}


def load_script(script: str):
    """A top-level script imported as a module (once), to call its main(argv) in-process."""
    if script not in _SCRIPTS:
        spec = importlib.util.spec_from_file_location(f"script_{Path(script).stem}",
                                                      REPO / script)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        _SCRIPTS[script] = module
    return _SCRIPTS[script]


def run_main(script: str, *args, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """A script's main(argv) in this process, under the same cli() contract as `python script`:
    exit code, stdout and stderr, as run_script returns them. For the many option checks,
    which need no process of their own (each script keeps one run as a process)."""
    from scrfdkit.cli import cli

    module, argv = load_script(script), [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    sigterm, here = signal.getsignal(signal.SIGTERM), Path.cwd()
    code: int | str | None = 0
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            cli(lambda: module.main(argv))
    except SystemExit as done:
        code = done.code
    finally:
        os.chdir(here)
        signal.signal(signal.SIGTERM, sigterm)  # cli() installs its own
    return subprocess.CompletedProcess([script, *argv], code if isinstance(code, int) else 1,
                                       out.getvalue(), err.getvalue())


def run_script(script: str, *args: str, check: bool = True, timeout: float = 900,
               cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run one of the top-level scripts as a user would; return its completed process."""
    proc = subprocess.run([sys.executable, str(REPO / script), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "3"})
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} {' '.join(map(str, args))} exited {proc.returncode}\n"
                             f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(autouse=True)
def shared_data_present(request) -> None:
    """A test that reads ../shared through MODELS, SAMPLES or WIDER is skipped, as the fixtures'
    tests are, when that data is not there (a fresh clone elsewhere runs the rest)."""
    names = set(getattr(request.function, "__code__", None).co_names
                if hasattr(request.function, "__code__") else ())
    for name, path in (("MODELS", MODELS), ("SAMPLES", SAMPLES), ("WIDER", WIDER)):
        if name in names:
            _need(path)


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"test data not found: {path} (set SCRFD_SHARED)")
    return path


@pytest.fixture(scope="session")
def models_dir() -> Path:
    return _need(MODELS)


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    return _need(SAMPLES)


@pytest.fixture(scope="session")
def wider_dir() -> Path:
    return _need(WIDER)


@pytest.fixture(scope="session")
def det500m_onnx(models_dir) -> Path:
    return _need(models_dir / "det_500m.onnx")


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    return CACHE


@pytest.fixture(scope="session")
def fixed_onnx(det500m_onnx, cache_dir) -> Path:
    """det_500m fixed to TEST_HW by export_modified_onnx.py (made once per run)."""
    out = cache_dir / f"det_500m_{TEST_HW[0]}x{TEST_HW[1]}.onnx"
    if not out.exists():
        run_script("export_modified_onnx.py", "--model", det500m_onnx,
                   "--hw", f"{TEST_HW[0]},{TEST_HW[1]}", "--out", out)
    return out


def _export(fixed_onnx: Path, cache_dir: Path, precision: str, wider: Path | None) -> Path:
    out = cache_dir / f"scrfd500m_{TEST_HW[0]}x{TEST_HW[1]}_{precision}.tflite"
    if not out.exists():
        args = ["--onnx", fixed_onnx, "--out", out]
        if precision != "float32":
            args.append(f"--{precision}")
        if precision in ("int8", "dynamic"):
            args += ["--calib", wider / "WIDER_val" / "images", "--calib-count", "24"]
        run_script("export_tflite.py", *args, "--check-images", SAMPLES / "friends.jpg")
    return out


@pytest.fixture(scope="session")
def tflite_float32(fixed_onnx, cache_dir) -> Path:
    return _export(fixed_onnx, cache_dir, "float32", None)


@pytest.fixture(scope="session")
def tflite_int8(fixed_onnx, cache_dir, wider_dir) -> Path:
    return _export(fixed_onnx, cache_dir, "int8", wider_dir)
