"""The README's first command on a stranger's machine: a fresh clone, no ../shared, the model
downloaded (here from a mirror on 127.0.0.1, named by SCRFD_MODEL_URL), `make demo`, at the
small test size (HW=128,160: the same steps as the default 480,640, a quicker conversion)."""
from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest
from conftest import REPO

pytest.importorskip("onnx2tf", reason="make demo converts the model: needs the full environment")


@pytest.fixture()
def mirror(det500m_onnx, tmp_path):
    """buffalo_sc.zip (holding the real det_500m.onnx) served over HTTP from 127.0.0.1."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    with zipfile.ZipFile(folder / "buffalo_sc.zip", "w") as archive:
        archive.write(det500m_onnx, "det_500m.onnx")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_make_demo_in_a_fresh_clone_without_shared(mirror, tmp_path):
    if shutil.which("make") is None or not (REPO / ".git").exists():
        pytest.skip("needs make and a git checkout")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    empty = tmp_path / "empty_shared"
    empty.mkdir()
    venv = Path(sys.prefix)  # this environment: the clone's set-up step is already done
    env = {**os.environ, "SCRFD_MODEL_URL": mirror, "SCRFD_SHARED": str(empty),
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(["make", "demo", "HW=128,160", f"SHARED={empty}", f"VENV={venv}",
                           "-o", f"{venv}/.installed"], cwd=clone, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "sha256" in proc.stdout + proc.stderr  # the download was checked
    [record] = [json.loads(line) for line in (clone / "results" / "faces.jsonl").open()]
    assert len(record["faces"]) == 6
    assert (clone / "results" / "friends.jpg").stat().st_size > 10_000
    assert (clone / "models" / "scrfd500m_128x160_float32.tflite").is_file()
