"""Shared test fixtures: real models and images from ../shared, exports made once and kept
while nothing they depend on changes.

Paths come from environment variables so the suite runs anywhere the data is:
SCRFD_SHARED (default ../shared beside the repository) holds models/, samples/, widerface/.
"""
from __future__ import annotations

import ast
import contextlib
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("SCRFD_SHARED", REPO.parent / "shared")).resolve()
MODELS = Path(os.environ.get("SCRFD_MODELS", SHARED / "models"))
SAMPLES = Path(os.environ.get("SCRFD_SAMPLES", SHARED / "samples"))
WIDER = Path(os.environ.get("SCRFD_WIDER", SHARED / "widerface"))
# The scripts look for the peers' model files in the repository's models/peers; the tests (and
# the scripts they start) use SHARED's, as they use its models, unless told otherwise.
os.environ.setdefault("SCRFD_PEERS_DIR", str(MODELS / "peers"))
TEST_HW = (128, 160)  # small, non-square: keeps conversions fast on two cores
# Exports are kept in CACHE/<key>/, the key a sha256 of everything that shapes them (see
# export_key): a changed exporter, source model or converter version makes new ones.
CACHE = Path(os.environ.get("SCRFD_TEST_CACHE", REPO / ".cache" / "tests"))
EXPORT_SCRIPTS = ("export_modified_onnx.py", "export_tflite.py")
# What an export's bytes depend on besides our code and the model; opencv reads the calibration
# photos, onnxruntime and ai-edge-litert run the calibration passes and the parity check.
EXPORT_PACKAGES = ("numpy", "opencv-python", "onnx", "onnxsim", "onnxruntime", "onnx2tf",
                   "tensorflow", "tf-keras", "onnx-graphsurgeon", "sng4onnx", "ai-edge-litert",
                   "mediapipe")  # mediapipe: the metadata writer of the post-processed kinds
KEPT_EXPORT_SETS = 3  # older key folders beyond this many are removed


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
                            "without TensorFlow: CI runs these again in an environment made by "
                            "`pip install .` alone (make test-inference)")
    config.addinivalue_line("markers", "readme: runs the README's steps in a fresh clone (slow; "
                            "make test-readme)")


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


def exporter_sources() -> list[Path]:
    """The export scripts and every scrfdkit module they import, at any depth (with the
    packages' __init__ files, which run on import), read from the source with ast."""
    todo, seen = [REPO / name for name in EXPORT_SCRIPTS], set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        package = path.relative_to(REPO).parent.parts
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = list(package[: len(package) - node.level + 1]) if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                names = [module] + [f"{module}.{alias.name}" for alias in node.names]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if parts[0] != "scrfdkit":
                    continue
                for depth in range(1, len(parts) + 1):  # every package on the way runs too
                    target = REPO.joinpath(*parts[:depth])
                    todo += [f for f in (target.with_suffix(".py"), target / "__init__.py")
                             if f.is_file()]
    return sorted(seen)


def sha256_text(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()


def export_key(source_model: Path) -> dict:
    """What the test exports depend on: the source model's bytes, the exporter code, the
    converter packages' versions (and Python's). `key` hashes them all."""
    code = sha256_text(*(f"{p.relative_to(REPO)}\n".encode() + p.read_bytes()
                         for p in exporter_sources()))
    versions = {name: _version(name) for name in EXPORT_PACKAGES}
    versions["python"] = platform.python_version()
    parts = {"model": sha256_text(source_model.read_bytes()), "code": code, "versions": versions,
             "input_hw": list(TEST_HW)}
    return {**parts, "key": sha256_text(json.dumps(parts, sort_keys=True).encode())}


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def can_convert() -> bool:
    """True where the exporters run (the full environment, with onnx2tf and TensorFlow)."""
    return all(importlib.util.find_spec(name) for name in ("onnx2tf", "tensorflow", "onnxsim"))


def export_folder(root: Path, key: dict, converting: bool) -> Path:
    """CACHE/<key>: made here when this environment can convert. An environment that cannot
    (make test-inference: no TensorFlow) takes the newest folder made from the same model and
    the same exporter code, whatever the converter versions were there."""
    if converting:
        folder = root / key["key"][:16]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "key.json").write_text(json.dumps(key, indent=1, sort_keys=True))
        os.utime(folder)  # the newest in use: kept, and what make test-inference takes
        older = sorted((p for p in root.iterdir() if p.is_dir() and p != folder),
                       key=lambda p: p.stat().st_mtime, reverse=True)
        for stale in older[KEPT_EXPORT_SETS:]:
            shutil.rmtree(stale, ignore_errors=True)
        for loose in root.glob("*.*"):  # exports cached by file name alone, before the key
            if loose.is_file():
                loose.unlink()
        return folder
    matching = []
    for manifest in root.glob("*/key.json"):
        made = json.loads(manifest.read_text())
        if (made.get("model"), made.get("code")) == (key["model"], key["code"]):
            matching.append(manifest.parent)
    if not matching:
        raise RuntimeError(f"no test exports made by this exporter code in {root}; this "
                           "environment cannot convert (no onnx2tf/TensorFlow): run `make test` "
                           "first")
    return max(matching, key=lambda p: p.stat().st_mtime)


@pytest.fixture(scope="session")
def cache_dir(det500m_onnx) -> Path:
    """This run's export folder, keyed by export_key (a stale export can never be reused)."""
    return export_folder(CACHE, export_key(det500m_onnx), can_convert())


@pytest.fixture(scope="session")
def fixed_onnx(det500m_onnx, cache_dir) -> Path:
    """det_500m fixed to TEST_HW by export_modified_onnx.py (made once per export key)."""
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


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """One local Ray cluster (two CPUs, no dashboard) for a test module's --ray runs, which join
    it by its address instead of each starting their own. This process starts it and stops it
    (ray.shutdown) when the module is done; a cluster already running here is left alone."""
    import logging

    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False,
             logging_level=logging.ERROR, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()

