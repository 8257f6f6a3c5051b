"""scrfd.py --ray: on a local Ray cluster, the same files and JSON lines as a single-process run.

The scripts run as subprocesses and join one two-CPU cluster the module starts (conftest's
ray_cluster, so a cluster already running on the machine is left alone); the actor itself is
also driven in-process, without Ray, for paths, file:// URIs and unreadable photos.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, run_main, run_script

pytest.importorskip("ray", reason="Ray is not installed: python -m pip install -r "
                                  "requirements-scale.txt")
from scrfdkit.errors import UserError  # noqa: E402
from scrfdkit.photos import PhotoOutputs  # noqa: E402
from scrfdkit.scale import ray_jobs as distributed  # noqa: E402  (needs Ray)

pytestmark = pytest.mark.inference
SIZE = "320,320"
RAY_TIMEOUT = 300  # seconds for a --ray run, Ray's start-up included, on a busy two-core machine


def leftovers(*folders: Path) -> list[str]:
    """Temporary files (hidden, .part) that a finished or stopped run must not leave."""
    return [p.name for folder in folders if folder.exists() for p in folder.rglob(".*")]


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def wider_photos(wider_dir: Path, folder: Path, count: int) -> Path:
    """The first `count` photos of dev_images.txt, linked into `folder`, and one corrupt file."""
    folder.mkdir()
    names = sorted((wider_dir / "dev_images.txt").read_text().split())[:count]
    for name in names:
        (folder / Path(name).name).symlink_to(wider_dir / "WIDER_val" / "images" / name)
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    return folder


def test_ray_run_writes_what_a_single_process_run_writes(ray_cluster, det500m_onnx, wider_dir,
                                                         tmp_path):
    photos = wider_photos(wider_dir, tmp_path / "photos", 8)
    listed = tmp_path / "photos.txt"  # the inputs as an @LIST file, a blank line included
    listed.write_text("\n".join(sorted(map(str, photos.iterdir()))[:4]) + "\n\n"
                      + "\n".join(sorted(map(str, photos.iterdir()))[4:]) + "\n")
    single, ray_run = tmp_path / "single", tmp_path / "ray"
    single.mkdir(), ray_run.mkdir()
    common = ("--model", det500m_onnx, "--size", SIZE, "--threads", "1", "--out", "out",
              "--crops", "crops")
    run_script("scrfd.py", *common, "--image", photos, cwd=single)
    proc = run_script("scrfd.py", *common, "--image", f"@{listed}", "--ray", ray_cluster,
                      "--ray-actors", "2", cwd=ray_run, timeout=RAY_TIMEOUT)

    assert "2 actor(s) x 1 thread(s)" in proc.stdout
    assert "9 image(s): 8 annotated, 1 unreadable (skipped)" in proc.stdout
    assert "images/s overall" in proc.stdout
    assert "corrupt.jpg" in proc.stderr and "Traceback" not in proc.stderr
    expected = (single / "out" / "faces.jsonl").read_text()
    assert (ray_run / "out" / "faces.jsonl").read_text() == expected  # same faces, same order
    lines = [json.loads(line) for line in expected.splitlines()]
    assert sum(len(line.get("faces", [])) for line in lines) > 10
    assert lines[-1]["path"].endswith("corrupt.jpg") and "error" in lines[-1]
    for folder in ("out", "crops"):
        assert files(ray_run / folder) == files(single / folder)  # byte for byte
    assert len(files(ray_run / "out")) == 9  # eight annotated photos and faces.jsonl
    assert leftovers(ray_run / "out", ray_run / "crops") == []


def test_a_stopped_ray_run_leaves_the_earlier_results_whole(ray_cluster, det500m_onnx, wider_dir,
                                                            tmp_path):
    photos = wider_photos(wider_dir, tmp_path / "photos", 40)
    out = tmp_path / "out"
    run_script("scrfd.py", "--model", det500m_onnx, "--size", "640,640", "--image", photos,
               "--out", out)
    before = files(out)
    proc = subprocess.Popen([sys.executable, str(REPO / "scrfd.py"), "--model", str(det500m_onnx),
                             "--size", "640,640", "--threads", "1", "--image", str(photos),
                             "--out", str(out), "--ray", ray_cluster, "--ray-actors", "2"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + RAY_TIMEOUT
    while time.monotonic() < deadline and proc.poll() is None and not leftovers(out):
        time.sleep(0.05)  # until the actors have staged their first outputs
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "Traceback" not in stderr, stderr
    assert "nothing written" in stderr
    assert files(out) == before and leftovers(out) == []


def test_the_actor_reads_paths_and_uris_and_reports_bad_photos(det500m_onnx, wider_dir, tmp_path,
                                                               monkeypatch):
    """PhotoWorker without Ray: the per-photo job, staged under the run's tag, never in place."""
    photo = sorted(wider_photos(wider_dir, tmp_path / "photos", 1).glob("*_*.jpg"))[0]
    monkeypatch.chdir(tmp_path)
    settings = PhotoOutputs(Path("out"))
    worker = distributed.PhotoWorker(str(tmp_path), {"model_path": det500m_onnx,
                                                     "input_hw": (320, 320), "threads": 1},
                                     settings, "scrfd-test")
    sources = [str(photo), photo.as_uri(), str(tmp_path / "photos" / "corrupt.jpg"),
               (tmp_path / "missing.jpg").as_uri()]
    outputs = ["out/local.jpg", "out/uri.jpg", "out/corrupt.jpg", "out/missing.jpg"]
    columns = worker({"index": np.arange(4), "source": np.array(sources, dtype=object),
                      "output": np.array(outputs, dtype=object)})

    lines = [json.loads(line) for line in columns["line"]]
    assert [line["path"] for line in lines] == sources
    assert lines[0]["faces"] and lines[1]["faces"] == lines[0]["faces"]  # pyarrow.fs: same bytes
    assert "corrupt" in lines[2]["error"] and str(tmp_path / "missing.jpg") in lines[3]["error"]
    assert [bool(error) for error in columns["error"]] == [False, False, True, True]
    assert list(columns["faces"][:2]) == [len(lines[0]["faces"])] * 2
    staged = [pair for row in columns["staged"] for pair in json.loads(row)]
    assert sorted(final for final, _ in staged) == ["out/local.jpg", "out/uri.jpg"]
    assert not (tmp_path / "out" / "local.jpg").exists()  # nothing in place before the driver
    assert all(Path(temporary).name.startswith(".scrfd-test.") for _, temporary in staged)

    driver = distributed.SharedStaging("scrfd-test")
    driver.adopt_all(staged[:1])
    driver.commit()
    assert (tmp_path / "out" / "local.jpg").read_bytes()[:2] == b"\xff\xd8"
    driver.sweep([tmp_path / "out"])  # the other file stands for a batch that never came back
    assert leftovers(tmp_path / "out") == [] and not (tmp_path / "out" / "uri.jpg").exists()


def test_sources_come_from_paths_folders_and_uri_globs(tmp_path):
    for name in ("a/x.jpg", "a/sub/y.png", "a/notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    root = (tmp_path / "a").as_uri()
    found = distributed.find_sources([str(tmp_path / "a"), f"{root}/**/*.png", f"{root}/*.jpg",
                                      root, f"{root}/sub/y.png"], exclude=[])
    assert found == [str(tmp_path / "a/sub/y.png"), str(tmp_path / "a/x.jpg"),
                     f"{root}/sub/y.png", f"{root}/x.jpg"]
    assert distributed.local_name("s3://bucket/photos/x.jpg") == Path("bucket/photos/x.jpg")
    for pattern, message in ((f"{root}/*.gif", "no files match"),
                             (f"{root}/nothing/", "no such file or folder")):
        with pytest.raises(UserError, match=message):
            distributed.find_sources([pattern], exclude=[])


def test_ray_options_are_checked_before_any_work(det500m_onnx, tmp_path):
    for args, message in ((("--ray-actors", "2"), "--ray-actors needs --ray"),
                          (("--image", "s3://bucket/photos/"), "URIs are read by --ray runs")):
        proc = run_main("scrfd.py", "--model", det500m_onnx, "--out", tmp_path, *args)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
