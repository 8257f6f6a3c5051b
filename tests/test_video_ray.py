"""video_inference_fdlm.py --ray: one video per Ray task, judged against a local run of the same
videos: the same JSON lines byte for byte, the same frames when the written videos are decoded
(PyAV, frame by frame), and the same handling of a damaged video (counted, skipped, exit 0).

The runs join the module's one local cluster (conftest's ray_cluster, two CPUs).
"""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from conftest import SAMPLES, run_main, run_script

pytest.importorskip("ray", reason="Ray is not installed: python -m pip install -r "
                    "requirements-scale.txt")
pytestmark = pytest.mark.inference
VIDEOS = ("hamilton_360p.mp4", "fatboygang.mp4", "walking_1080p.mp4")


def frames_of(video: Path) -> list[np.ndarray]:
    with av.open(str(video)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def test_ray_run_writes_what_a_local_run_writes(ray_cluster, fixed_onnx, tmp_path):
    damaged = tmp_path / "in" / "damaged.mp4"
    damaged.parent.mkdir()
    damaged.write_bytes((SAMPLES / VIDEOS[0]).read_bytes()[:5000])  # cut before its index
    videos = [SAMPLES / name for name in VIDEOS] + [damaged]
    common = ["--video", *videos, "--model", fixed_onnx, "--max-frames", "12", "--blur",
              "--threads", "1"]
    local = run_script("video_inference_fdlm.py", *common, "--out", tmp_path / "local")
    on_ray = run_script("video_inference_fdlm.py", *common, "--out", tmp_path / "ray", "--ray",
                        ray_cluster)
    for run in (local, on_ray):
        assert "videos: 4: 3 done, 1 skipped" in run.stdout, run.stdout + run.stderr
        assert "damaged.mp4" in run.stderr
    assert "ray: cluster at" in on_ray.stdout
    for name in VIDEOS:
        stem = Path(name).stem
        ours, theirs = tmp_path / "ray" / f"{stem}_fdlm", tmp_path / "local" / f"{stem}_fdlm"
        lines = ours.with_suffix(".jsonl").read_text()
        assert lines == theirs.with_suffix(".jsonl").read_text()
        assert len(lines.splitlines()) == 12
        mine, local_frames = frames_of(ours.with_suffix(".mp4")), frames_of(theirs.with_suffix(".mp4"))
        assert len(mine) == len(local_frames) == 12
        assert all(np.array_equal(a, b) for a, b in zip(mine, local_frames)), name
    assert sorted(p.name for p in (tmp_path / "ray").iterdir()) == sorted(
        p.name for p in (tmp_path / "local").iterdir())  # no staged leftovers either


def test_ray_takes_no_camera(fixed_onnx, tmp_path):
    refused = run_main("video_inference_fdlm.py", "--webcam", "0", "--ray", "--model", fixed_onnx,
                       "--out", tmp_path)
    assert refused.returncode == 2 and "--ray runs video files and streams, not a camera" in \
        refused.stderr


def test_a_stopped_ray_run_leaves_whole_pairs_and_no_temporary_files(ray_cluster, fixed_onnx,
                                                                      tmp_path):
    """Ctrl-C while tasks run: exit 130; each video has both outputs holding the same frames
    (finished, or stopped with its frames in hand) or neither; nothing staged is left."""
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO

    out = tmp_path / "out"
    out.mkdir()
    run = subprocess.Popen([sys.executable, str(REPO / "video_inference_fdlm.py"), "--video",
                            *[str(SAMPLES / name) for name in VIDEOS], "--model", str(fixed_onnx),
                            "--threads", "1", "--out", str(out), "--ray", ray_cluster],
                           cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not run.stdout.readline().startswith("ray: cluster at"):
        assert run.poll() is None, run.stderr.read()
    time.sleep(8)  # the tasks are at work, their outputs staged
    run.send_signal(signal.SIGINT)
    stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == 130, stderr
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    for name in VIDEOS:
        video, lines = out / f"{Path(name).stem}_fdlm.mp4", out / f"{Path(name).stem}_fdlm.jsonl"
        assert video.exists() == lines.exists()
        if video.exists():
            assert len(frames_of(video)) == len(lines.read_text().splitlines()) > 0
