"""--video with files, folders and globs: one output pair per video, named for it; a damaged
video is counted and skipped; Ctrl-C ends the batch keeping every completed video.

Every check reads the outputs back with PyAV, apart from what the script says.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import pytest

from conftest import REPO, run_main, run_script
from test_video import SIZE, write_clip

pytestmark = pytest.mark.inference


def frames_in(video: Path) -> int:
    with av.open(str(video)) as container:
        return sum(1 for _ in container.decode(video=0))


def json_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture()
def folder_of_five(samples_dir, tmp_path) -> Path:
    """a, b, c, e (5 to 9 frames of friends.jpg) and d.mp4, an .mp4 cut short."""
    folder = tmp_path / "in"
    folder.mkdir()
    for index, name in enumerate("abce"):
        write_clip(folder / f"{name}.mp4", samples_dir / "friends.jpg", 5 + index)
    (folder / "d.mp4").write_bytes((folder / "a.mp4").read_bytes()[:2000])
    (folder / "notes.txt").write_text("not a video")  # not a video name: not taken
    return folder


def test_a_folder_with_a_damaged_video_gives_the_others_and_counts_it(det500m_onnx, tmp_path,
                                                                      folder_of_five):
    out = tmp_path / "out"
    proc = run_script("video_inference_fdlm.py", "--model", det500m_onnx, "--size", SIZE,
                      "--video", folder_of_five, "--out", out, "--blur", "--no-tile")
    assert proc.returncode == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == [f"{n}_fdlm.{ext}" for n in "abce" for ext in ("jsonl", "mp4")]
    for index, name in enumerate("abce"):
        frames = 5 + index
        assert frames_in(out / f"{name}_fdlm.mp4") == frames
        records = json_lines(out / f"{name}_fdlm.jsonl")
        assert [r["frame"] for r in records] == list(range(frames))
        assert all(r["faces"] and r["blurred"] for r in records)  # friends.jpg's faces
    assert "d.mp4" in proc.stderr and "skipped" in proc.stderr
    assert "videos: 5: 4 done, 1 skipped" in proc.stdout
    assert f"{5 + 6 + 7 + 8} frames" in proc.stdout.splitlines()[-1]


def test_globs_and_names_that_clash_keep_one_pair_each(det500m_onnx, samples_dir, tmp_path):
    for path in ("x/clip.mp4", "y/clip.mp4", "y/other.mkv", "y/other.mp4"):
        (tmp_path / path).parent.mkdir(exist_ok=True)
        write_clip(tmp_path / path, samples_dir / "friends.jpg", 3)
    out = tmp_path / "out"
    run_script("video_inference_fdlm.py", "--model", det500m_onnx, "--size", SIZE, "--video",
               tmp_path / "x", tmp_path / "y" / "*.m*", "--out", out)
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.mp4"))
    assert written == ["x/clip_fdlm.mp4", "y/clip_fdlm.mp4", "y/other_mkv_fdlm.mp4",
                       "y/other_mp4_fdlm.mp4"]
    for video in out.rglob("*.mp4"):
        assert frames_in(video) == 3
        assert len(json_lines(video.with_suffix(".jsonl"))) == 3


@pytest.mark.parametrize("extra, message", [
    (("--out", "one.mp4"), "give a folder (for 2 videos)"),
    (("--json", "faces.jsonl"), "--json names one file, and there are 2 videos")])
def test_one_file_options_are_refused_for_several_videos(det500m_onnx, samples_dir, tmp_path,
                                                         extra, message):
    for name in "ab":
        write_clip(tmp_path / f"{name}.mp4", samples_dir / "friends.jpg", 2)
    run = run_main("video_inference_fdlm.py", "--model", det500m_onnx, "--video",
                   tmp_path / "a.mp4", tmp_path / "b.mp4", *extra, cwd=tmp_path)
    assert run.returncode == 2 and message in run.stderr
    assert not list(tmp_path.glob("*_fdlm*")) and not (tmp_path / "one.mp4").exists()


def test_ctrl_c_in_the_third_video_keeps_the_first_two(det500m_onnx, samples_dir, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name, frames in (("a", 4), ("b", 5), ("c", 1500)):
        write_clip(folder / f"{name}.mp4", samples_dir / "friends.jpg", frames,
                   pts_ms=[i * 100 for i in range(frames)])
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "video_inference_fdlm.py"), "--model", str(det500m_onnx),
         "--size", SIZE, "--video", str(folder), "--out", str(out), "--blur", "--no-tile"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in proc.stdout:
        if line.startswith(f"source {folder / 'c.mp4'}"):
            break
    time.sleep(0.5)  # some of c's frames are done (c takes seconds at 200 fps)
    finished_before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "interrupted (Ctrl-C)" in stderr
    for name, frames in (("a", 4), ("b", 5)):  # complete, and untouched after the signal
        for suffix in (".mp4", ".jsonl"):
            path = out / f"{name}_fdlm{suffix}"
            assert finished_before[path.name] == path.stat().st_mtime_ns
        assert frames_in(out / f"{name}_fdlm.mp4") == frames
        assert len(json_lines(out / f"{name}_fdlm.jsonl")) == frames
    partial = out / "c_fdlm.mp4"
    if partial.exists():  # playable, with one JSON line for each of its frames
        done = frames_in(partial)
        assert 0 < done < 1500
        assert len(json_lines(out / "c_fdlm.jsonl")) == done
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary left
