"""Memory as a user sees it: the peak RSS of a fresh process that loads a model (or a whole
detector, or any command) and runs it. Measured in a child process, never in this one,
whose own imports and earlier models would count too."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding scrfdkit: the child's sys.path
RSS_RUNS = 10  # inferences in the fresh process whose peak RSS we measure
DETECT_RSS_RUNS = 3  # detect() calls per photo in the fresh process of a detector probe
QUIET_TF = {"TF_CPP_MIN_LOG_LEVEL": "3"}

# The child of fresh_process_memory: RSS after each stage of loading and running one model.
MODEL_CHILD = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
import psutil
rss = lambda: psutil.Process().memory_info().rss
start = rss()
import numpy as np
from scrfdkit.bench.backends import input_tensor, open_backend
model, backend, threads, hw, runs, image = sys.argv[2:8]
backend_module = "onnxruntime" if backend.startswith("onnxruntime") else "ai_edge_litert.interpreter"
__import__(backend_module)
imported = rss()
t0 = time.perf_counter()
runner = open_backend(model, backend, int(threads), tuple(map(int, hw.split(','))) if hw else None)
load_s = time.perf_counter() - t0
loaded = rss()
tensor = input_tensor(runner, image or None)
ready = rss()
t0 = time.perf_counter()
runner.run(tensor)
first_s = time.perf_counter() - t0
for _ in range(int(runs) - 1):
    runner.run(tensor)
print(json.dumps({"rss_start": start, "rss_imported": imported, "rss_loaded": loaded,
                  "rss_input_ready": ready, "rss_ran": rss(), "load_s": load_s, "first_run_s": first_s,
                  "tensorflow_imported": "tensorflow" in sys.modules}))
"""

# The child of detector_memory: a whole detector (peer or SCRFD file) through detect().
DETECTOR_CHILD = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from importlib import import_module
from scrfdkit.files import read_image
factory, kind, name_or_path, threads, runs, peers_folder = sys.argv[2:8]
module, function = factory.split(':')
open_detector = getattr(import_module(module), function)
images = [read_image(p) for p in sys.argv[8:]]
detector = open_detector(kind, name_or_path, int(threads), peers_folder or None)
for _ in range(int(runs)):
    for image in images:
        detector.detect(image)
print(json.dumps({"tensorflow_imported": "tensorflow" in sys.modules}))
"""

# Forks the command and reports its peak RSS from wait4 (see run_measured).
LAUNCHER = r"""
import os, sys
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[1], sys.argv[1:])
    except OSError as err:
        sys.stderr.write(f"cannot run {sys.argv[1]}: {err}\n")
    os._exit(127)
_, status, usage = os.wait4(pid, 0)
sys.stderr.write(f"\nmemory_probe ru_maxrss {usage.ru_maxrss}\n")
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_measured(command: list[str], env: dict | None = None, timeout: float = 900
                 ) -> tuple[int, str, str, int | None]:
    """Run a command; return (exit code, stdout, stderr, peak RSS bytes of that command).

    Linux starts a child's peak-RSS count at fork, so a direct child of this big process
    would report at least our own size. A small launcher process forks the command instead
    and reports wait4's ru_maxrss (KiB on Linux, bytes on macOS). No fork (Windows): no peak.
    """
    launcher = [sys.executable, "-c", LAUNCHER] if hasattr(os, "fork") else []
    try:
        proc = subprocess.run(launcher + command, capture_output=True, text=True, env=env,
                              cwd=PACKAGE_ROOT, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, "", f"timed out after {timeout:.0f} s", None
    match = re.search(r"\nmemory_probe ru_maxrss (\d+)\n$", proc.stderr)
    peak = int(match.group(1)) * (1 if sys.platform == "darwin" else 1024) if match else None
    stderr = proc.stderr[: match.start()] if match else proc.stderr
    return proc.returncode, proc.stdout, stderr, peak


def last_error_line(stderr: str) -> str:
    return ([line for line in stderr.strip().splitlines() if line.strip()][-1:] or ["no output"])[0]


def fresh_process_memory(model: Path, backend: str, threads: int, hw: tuple[int, int] | None,
                         image: Path | None, runs: int = RSS_RUNS) -> dict:
    """Load and run the model in a new Python process: RSS at each stage and the peak.

    The result also says how many runs it measured ("runs"), or holds an "error".
    """
    command = [sys.executable, "-c", MODEL_CHILD, str(PACKAGE_ROOT), str(model), backend, str(threads),
               f"{hw[0]},{hw[1]}" if hw else "", str(runs), str(image or "")]
    code, out, err, peak = run_measured(command, env={**os.environ, **QUIET_TF})
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if code != 0 or not lines:
        return {"error": f"fresh process failed ({last_error_line(err)[:160]})"}
    return {**json.loads(lines[-1]), "peak_rss": peak, "runs": runs}


def detector_memory(factory: str, kind: str, name_or_path: str, threads: int, photos: list[Path],
                    runs: int = DETECT_RSS_RUNS, peers_folder: Path | None = None
                    ) -> tuple[int | None, str | None]:
    """Peak RSS of a fresh process that makes a detector with `factory` ("module:function",
    called as function(kind, name_or_path, threads, peers_folder)) and runs detect() `runs`
    times on each photo: (bytes, None), or (None, why it failed)."""
    command = [sys.executable, "-c", DETECTOR_CHILD, str(PACKAGE_ROOT), factory, kind,
               name_or_path, str(threads), str(runs), str(peers_folder or ""), *map(str, photos)]
    code, _, err, peak = run_measured(command, env={**os.environ, **QUIET_TF})
    if code != 0:
        return None, last_error_line(err)[:160]
    return peak, None


def command_memory(command: str) -> dict:
    """Peak RSS of any command, and whether any Python in it imported TensorFlow.

    PYTHONPROFILEIMPORTTIME makes every Python started by the command list its imports on
    stderr, so TensorFlow shows up however it got imported.
    """
    args = shlex.split(command)
    if args and args[0] in ("python", "python3"):
        args[0] = sys.executable
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1", **QUIET_TF}
    started = time.perf_counter()
    code, out, err, peak = run_measured(args, env=env)
    imported = sorted({m.group(1) for m in re.finditer(r"import time:.*\|\s*(\S+)\s*$", err, re.M)})
    tensorflow = any(name == "tensorflow" or name.startswith("tensorflow.") for name in imported)
    errors = [line for line in err.splitlines() if line and not line.startswith("import time:")]
    return {"command": command, "exit_code": code, "peak_rss": peak, "seconds": time.perf_counter() - started,
            "tensorflow_imported": tensorflow, "modules_imported": len(imported),
            "stderr_tail": errors[-3:]}
