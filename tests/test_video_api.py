"""The video API from Python: the README's example after `pip install .`, from another folder,
and the API's frames and files against the script's own outputs for the same options."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import av
import numpy as np
import pytest

from conftest import REPO, run_script
from test_video import SIZE, write_clip

pytestmark = pytest.mark.inference


def readme_video_example() -> str:
    """The README's "From Python" block that uses the video API."""
    section = (REPO / "README.md").read_text().split("## From Python", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    return next(block for block in blocks if "video_faces" in block)


def installed_python(tmp_path: Path) -> Path:
    """A fresh virtual environment with the package installed by `pip install .` (from a copy
    of the source, so no build files land in the repository). Its dependencies come from this
    environment through a .pth file: the test needs no network."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], capture_output=True, text=True, check=True).stdout
    Path(site.strip(), "outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    source = tmp_path / "source"
    shutil.copytree(REPO / "scrfdkit", source / "scrfdkit",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                    "--no-build-isolation", str(source)], check=True, capture_output=True)
    return python


def test_the_readme_video_example_runs_after_pip_install(det500m_onnx, samples_dir, tmp_path):
    python = installed_python(tmp_path)
    work = tmp_path / "elsewhere"  # not the repository: the installed package is what runs
    (work / "models").mkdir(parents=True)
    (work / "models" / "det_500m.onnx").symlink_to(det500m_onnx)
    write_clip(work / "clip.mp4", samples_dir / "friends.jpg", 6, audio_seconds=0.6)
    (work / "example.py").write_text(readme_video_example())
    where = subprocess.run([python, "-c", "import scrfdkit; print(scrfdkit.__file__)"],
                           cwd=work, capture_output=True, text=True, check=True).stdout
    assert str(tmp_path / "venv") in where  # the installed copy, not the source tree
    proc = subprocess.run([python, "example.py"], cwd=work, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    frames = [line.split() for line in lines[:6]]
    assert [int(f[0]) for f in frames] == list(range(6))
    assert all(int(f[-1]) >= 4 for f in frames)  # friends.jpg's faces in every frame
    assert "(240, 320, 3)" in lines[0]
    counts = [float(v) for v in lines[6].split()]
    assert counts[0] == 6 and counts[1] >= 24 and counts[2] >= counts[1]  # frames, faces, blurred
    out = work / "anonymised" / "clip_fdlm.mp4"
    with av.open(str(out)) as container:
        assert [s.type for s in container.streams] == ["video", "audio"]  # the sound kept
        assert sum(1 for _ in container.decode(video=0)) == 6
    assert len((work / "anonymised" / "clip_fdlm.jsonl").read_text().splitlines()) == 6


def test_the_api_gives_what_the_script_writes(det500m_onnx, samples_dir, tmp_path):
    from scrfdkit import SCRFD, anonymise_video, video_faces

    clip = write_clip(tmp_path / "clip.mp4", samples_dir / "friends.jpg", 8, audio_seconds=0.8)
    out = tmp_path / "script.mp4"
    run_script("video_inference_fdlm.py", "--model", det500m_onnx, "--size", SIZE, "--video",
               clip, "--out", out, "--blur", "--no-tile")
    lines = [json.loads(line) for line in out.with_name(out.name + ".jsonl").read_text()
             .splitlines()]
    size = tuple(int(v) for v in SIZE.split(","))
    frames = list(video_faces(clip, det500m_onnx, size=size, blur="gaussian", tile=False))
    assert [f.index for f in frames] == [r["frame"] for r in lines]
    assert [round(f.time, 4) for f in frames] == [r["time"] for r in lines]
    assert [f.faces.to_list() for f in frames] == [r["faces"] for r in lines]
    # one call, with a SCRFD made by the caller: the same frames and JSON lines as the script
    detector = SCRFD(det500m_onnx, size, score_threshold=0.2)  # tracked from 0.2, as --blur
    summary = anonymise_video(clip, tmp_path / "api.mp4", detector)
    assert (summary.frames, summary.faces) == (8, sum(len(r["faces"]) for r in lines))
    assert summary.blurred == sum(len(r["blurred"]) for r in lines)
    assert summary.passes == 8 and summary.seconds > 0 and summary.video == tmp_path / "api.mp4"
    api_lines = [json.loads(line) for line in (tmp_path / "api.mp4.jsonl").read_text()
                 .splitlines()]
    assert api_lines == lines
    with av.open(str(out)) as a, av.open(str(tmp_path / "api.mp4")) as b:
        for script_frame, api_frame in zip(a.decode(video=0), b.decode(video=0), strict=True):
            difference = script_frame.to_ndarray().astype(int) - api_frame.to_ndarray()
            assert np.abs(difference).mean() < 0.5  # equal, up to x264's threads
