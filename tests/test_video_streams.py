"""Live streams for video_inference_fdlm.py --video URL, against a stream this test serves on
127.0.0.1 (tests/tools/serve_stream.py: a sample video as chunked MPEG-TS over HTTP, each frame
flushed as it is encoded, `sent N` printed after each).

What a user recording a stream needs: a line and a frame for every frame that arrived, an
output that plays however the stream or the run ends, a warning when the stream ends on its
own, and no hang when it stalls (the read timeout bounds it). Every count is read back from
the files with PyAV, and compared with what the server says it sent.
"""
from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import pytest

from conftest import REPO, SAMPLES, run_main, run_script
from scrfdkit.video import STREAM_SCHEMES, stream_stem
from scrfdkit.video_api import output_names

pytestmark = pytest.mark.inference
SERVER = REPO / "tests" / "tools" / "serve_stream.py"
TIMEOUT = "3"  # --timeout: seconds a stalled stream is waited for


class Server:
    """serve_stream.py in a process of its own: its port, and how many frames it has sent."""

    def __init__(self, frames: int, then: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(SERVER), str(SAMPLES / "hamilton_360p.mp4"), str(frames), then],
            stdout=subprocess.PIPE, text=True)
        self.port = int(self.process.stdout.readline().split()[1])
        self.url = f"http://127.0.0.1:{self.port}/live.ts"
        self.sent = 0

    def wait_sent(self, frames: int) -> None:
        while self.sent < frames:
            line = self.process.stdout.readline()
            assert line, "the server ended early"
            self.sent = int(line.split()[1])

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()


@pytest.fixture
def serve():
    servers: list[Server] = []

    def start(frames: int, then: str = "close") -> Server:
        servers.append(Server(frames, then))
        return servers[-1]

    yield start
    for server in servers:
        server.kill()


def record(fixed_onnx: Path, out: Path, url: str, *args: str) -> subprocess.Popen:
    """The script recording `url` into `out`, as a user starts it."""
    return subprocess.Popen([sys.executable, str(REPO / "video_inference_fdlm.py"), "--video", url,
                             "--model", str(fixed_onnx), "--out", str(out), "--timeout", TIMEOUT,
                             *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finished(client: subprocess.Popen, seconds: float = 120) -> tuple[int, str, str]:
    stdout, stderr = client.communicate(timeout=seconds)
    return client.returncode, stdout, stderr


def lines_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "live_fdlm.jsonl").read_text().splitlines()]


def decoded_frames(video: Path) -> int:
    with av.open(str(video)) as container:
        return sum(1 for _ in container.decode(video=0))


def playable_frames(video: Path) -> int:
    """Frames a player shows before a file cut short breaks off."""
    count = 0
    with av.open(str(video)) as container:
        with contextlib.suppress(av.error.FFmpegError):
            for _ in container.decode(video=0):
                count += 1
    return count


def test_a_whole_stream_gives_a_line_and_a_frame_per_frame_sent(fixed_onnx, serve, tmp_path):
    server = serve(150)
    code, stdout, stderr = finished(record(fixed_onnx, tmp_path, server.url))
    assert code == 0, stderr
    lines = lines_of(tmp_path)
    assert [line["frame"] for line in lines] == list(range(150))
    assert sum(len(line["faces"]) for line in lines) > 50  # hamilton's faces were looked for
    assert decoded_frames(tmp_path / "live_fdlm.mp4") == 150
    assert "ended after 150 frames (the connection closed" in stderr


def test_a_server_killed_mid_stream_keeps_every_frame_received(fixed_onnx, serve, tmp_path):
    server = serve(150, "hold")
    client = record(fixed_onnx, tmp_path, server.url)
    server.wait_sent(60)
    server.kill()  # kill -9 after frame 60 (a 61st may be on its way): no clean end of stream
    started = time.perf_counter()
    code, stdout, stderr = finished(client)
    assert code == 0, stderr
    received = len(lines_of(tmp_path))
    assert 60 <= received <= 62
    assert decoded_frames(tmp_path / "live_fdlm.mp4") == received
    assert f"warning: the stream {server.url} ended after {received} frames" in stderr
    assert time.perf_counter() - started < 60


def test_a_stalled_stream_ends_after_the_read_timeout(fixed_onnx, serve, tmp_path):
    server = serve(40, "hold")  # 40 frames, then connected and silent
    started = time.perf_counter()
    code, stdout, stderr = finished(record(fixed_onnx, tmp_path, server.url), 90)
    assert code == 0, stderr
    assert len(lines_of(tmp_path)) == 40 == decoded_frames(tmp_path / "live_fdlm.mp4")
    assert f"(no data for {TIMEOUT} s)" in stderr
    assert time.perf_counter() - started < 60  # bounded by the timeout, not by the server


@pytest.mark.parametrize("limit, frames", [(("--max-frames", "30"), 30),
                                           (("--duration", "1"), 60)])  # the server's 60 fps
def test_max_frames_and_duration_bound_a_stream(fixed_onnx, serve, tmp_path, limit, frames):
    server = serve(150, "hold")  # a stream that never ends on its own
    code, stdout, stderr = finished(record(fixed_onnx, tmp_path, server.url, *limit))
    assert code == 0, stderr
    lines = lines_of(tmp_path)
    assert len(lines) == frames == decoded_frames(tmp_path / "live_fdlm.mp4")
    assert lines[-1]["time"] - lines[0]["time"] < 1.0 if limit[0] == "--duration" else True
    assert "warning" not in stderr


def test_ctrl_c_ends_a_recording_with_both_outputs_playable(fixed_onnx, serve, tmp_path):
    server = serve(150, "hold")
    client = record(fixed_onnx, tmp_path, server.url)
    server.wait_sent(60)
    client.send_signal(signal.SIGINT)
    code, stdout, stderr = finished(client)
    assert code == 0, stderr  # a stream's normal end, as a camera's
    lines = lines_of(tmp_path)
    assert 0 < len(lines) < 150 and len(lines) == decoded_frames(tmp_path / "live_fdlm.mp4")
    assert "interrupted (Ctrl-C)" in stderr


def test_a_killed_recording_leaves_a_playable_staged_video(fixed_onnx, serve, tmp_path):
    """kill -9 gives the run no chance to finish: nothing is renamed into place, and the staged
    .mp4 (fragmented, a fragment a second) plays up to its last whole fragment."""
    server = serve(150, "hold")
    client = record(fixed_onnx, tmp_path, server.url, "--timeout", "60")  # no end of its own
    server.wait_sent(150)
    time.sleep(4)  # the frames received are encoded
    client.kill()
    client.wait()
    assert not (tmp_path / "live_fdlm.mp4").exists() and not (tmp_path / "live_fdlm.jsonl").exists()
    staged = [p for p in tmp_path.iterdir() if p.suffix == ".mp4"]
    assert len(staged) == 1 and staged[0].name.startswith(".")
    assert playable_frames(staged[0]) >= 60  # at least the first second's fragment


def test_stream_options_checked_before_any_work(fixed_onnx, tmp_path):
    closed = run_main("video_inference_fdlm.py", "--video", "http://127.0.0.1:9/live.ts",
                      "--model", fixed_onnx, "--out", tmp_path, "--timeout", "2")
    assert closed.returncode == 2 and "cannot open stream http://127.0.0.1:9/live.ts" in closed.stderr
    srt = run_main("video_inference_fdlm.py", "--video", "srt://127.0.0.1:9000", "--model",
                   fixed_onnx, "--out", tmp_path)
    assert srt.returncode == 2 and "srt:// is not among the stream protocols" in srt.stderr
    twice = run_main("video_inference_fdlm.py", "--video", "rtsp://cam/live", "--blur",
                     "--two-pass", "--model", fixed_onnx)
    assert twice.returncode == 2 and "a stream cannot be read twice" in twice.stderr
    assert not any(tmp_path.iterdir())
    for line in (closed.stderr, srt.stderr, twice.stderr):
        assert "Traceback" not in line


def test_stream_names():
    assert stream_stem("rtsp://cam.local:554/live/main") == "main"
    assert stream_stem("http://127.0.0.1:8000/live.ts?token=x") == "live"
    assert stream_stem("udp://@:5000") == "udp_5000"
    assert output_names(["rtsp://a/cam", "rtsp://b/cam", Path("x/cam.mp4")]) == [
        Path("cam_2"), Path("cam_3"), Path("cam")]
    assert "srt" not in STREAM_SCHEMES and {"http", "rtsp", "udp"} <= set(STREAM_SCHEMES)


def test_duration_bounds_a_file_too(fixed_onnx, tmp_path):
    run = run_script("video_inference_fdlm.py", "--video", SAMPLES / "hamilton_360p.mp4",
                     "--model", fixed_onnx, "--out", tmp_path, "--duration", "1")
    lines = (tmp_path / "hamilton_360p_fdlm.jsonl").read_text().splitlines()
    assert len(lines) == 30 == decoded_frames(tmp_path / "hamilton_360p_fdlm.mp4")  # 29.97 fps
    assert json.loads(lines[-1])["time"] - json.loads(lines[0])["time"] < 1.0
    assert "warning" not in run.stderr
