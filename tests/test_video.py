"""Video in and out through PyAV, face tracking, and privacy by outcome.

Every check reads the output with PyAV (or runs a detector on it) on its own, rather than
trusting what the script says it wrote. Clips are generated small and short (a photo sliding
sideways, a sine tone), so the file runs in well under a minute.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from conftest import MODELS, REPO, run_script
from scrfdkit import SCRFD, read_image
from scrfdkit.tracker import (DETECTED, LOW_SCORE, PREDICTED, PREDICTED_BACK, CutDetector,
                              FaceTracker, iou_matrix, track_video)

pytestmark = pytest.mark.inference
SIZE = "256,320"  # det_500m ONNX input: finds the faces of a 320x240 clip of friends.jpg


# ----------------------------------------------------------------------------- clips
def write_clip(path: Path, photo: Path | None, frames: int = 12, size: tuple[int, int] = (320, 240),
               pts_ms: list[int] | None = None, audio_seconds: float = 0.0,
               pix_fmt: str = "yuv420p", audio_codec: str = "aac", channels: int = 2) -> Path:
    """An H.264 clip of `photo` sliding sideways (a gradient without a photo), timestamps in
    milliseconds as given (the first may be late: a start offset; gaps: a variable rate), and
    optionally a sine tone from time 0 (AAC stereo, or as asked)."""
    width, height = size
    if photo is not None:
        import cv2
        picture = cv2.resize(read_image(photo), (width + frames * 3, height))
    else:
        ramp = np.linspace(0, 255, width + frames * 3, dtype=np.float32)
        picture = np.dstack([np.tile(ramp, (height, 1)), np.tile(ramp[::-1], (height, 1)),
                             np.full((height, width + frames * 3), 90.0)]).astype(np.uint8)
    pts_ms = pts_ms or [i * 100 for i in range(frames)]
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=10)
        video.width, video.height, video.pix_fmt = width, height, pix_fmt
        video.time_base = video.codec_context.time_base = Fraction(1, 1000)
        video.options = {"preset": "ultrafast", "crf": "12"}
        layout = {1: "mono", 2: "stereo"}[channels]
        sound = container.add_stream(audio_codec, rate=44100, layout=layout) \
            if audio_seconds else None
        for i, pts in enumerate(pts_ms):
            frame = av.VideoFrame.from_ndarray(
                np.ascontiguousarray(picture[:, i * 3: i * 3 + width]), format="bgr24")
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if sound is not None:
            samples = np.arange(int(audio_seconds * 44100))
            tone = (np.sin(2 * np.pi * 440 * samples / 44100) * 8000).astype(np.int16)
            for start in range(0, len(tone), 1024):
                chunk = np.repeat(tone[None, start:start + 1024], channels, 0).reshape(1, -1)
                piece = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="s16",
                                                   layout=layout)
                piece.sample_rate, piece.pts = 44100, start
                container.mux(sound.encode(piece))
            container.mux(sound.encode(None))
    return path


def streams(path: Path) -> dict:
    """What PyAV sees in a file: per stream type, codec, packets (bytes, pts in seconds), and
    the video frames' timestamps and pixels."""
    info: dict = {}
    with av.open(str(path)) as container:
        for stream in container.streams:
            info[stream.type] = {"codec": stream.codec_context.name, "packets": [],
                                 "pix_fmt": getattr(stream.codec_context, "pix_fmt", None)}
        for packet in container.demux():
            if packet.size:
                info[packet.stream.type]["packets"].append(
                    (bytes(packet), float(packet.pts * packet.time_base)))
    with av.open(str(path)) as container:
        decoded = list(container.decode(video=0))
        info["video"]["times"] = [float(f.pts * f.time_base) for f in decoded]
        info["video"]["frames"] = [f.to_ndarray(format="bgr24") for f in decoded]
        info["duration"] = container.duration / av.time_base
    return info


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ----------------------------------------------------------------------------- formats
def test_mp4_is_h264_with_the_source_audio_timestamps_and_duration(det500m_onnx, samples_dir,
                                                                   tmp_path):
    # a late start (0.5 s after the audio) and a variable frame rate (one 300 ms gap)
    pts = [500, 600, 700, 1000, 1100, 1200, 1300, 1400, 1500, 1600]
    source = write_clip(tmp_path / "clip.mp4", samples_dir / "friends.jpg", len(pts),
                        pts_ms=pts, audio_seconds=1.8)
    out = tmp_path / "out" / "clip.mp4"
    proc = run_script("video_inference_fdlm.py", "--model", det500m_onnx, "--size", SIZE,
                      "--video", source, "--out", out, "--blur")
    assert "H.264" in proc.stdout and "AAC copied" in proc.stdout
    before, after = streams(source), streams(out)
    assert after["video"]["codec"] == "h264" and after["video"]["pix_fmt"] == "yuv420p"
    assert after["video"]["times"] == pytest.approx(before["video"]["times"], abs=1e-3)
    assert after["audio"]["codec"] == "aac"
    assert after["audio"]["packets"] == before["audio"]["packets"]  # same bytes, same times
    assert abs(after["duration"] - before["duration"]) <= 0.1  # within one frame
    records = read_jsonl(out.with_name(out.name + ".jsonl"))  # <file name>.jsonl: its own
    assert [r["time"] for r in records] == pytest.approx([p / 1000 for p in pts])


@pytest.mark.parametrize("source_audio, suffix, video_codec, audio_codec, copied", [
    ("aac", ".webm", "vp9", "opus", False), ("aac", ".mkv", "h264", "aac", True),
    ("pcm_s16le", ".mp4", "h264", "aac", False)])  # mono PCM from .mkv: a layout without a name
def test_webm_mkv_and_audio_the_container_cannot_hold(det500m_onnx, samples_dir, tmp_path,
                                                       source_audio, suffix, video_codec,
                                                       audio_codec, copied):
    source = write_clip(tmp_path / "source.mkv", samples_dir / "friends.jpg", 8, audio_seconds=1.0,
                        audio_codec=source_audio, channels=2 if source_audio == "aac" else 1)
    out = tmp_path / f"clip{suffix}"
    run_script("video_inference_fdlm.py", "--model", det500m_onnx, "--size", SIZE, "--video",
               source, "--out", out, "--blur")
    before, after = streams(source), streams(out)
    assert (after["video"]["codec"], after["audio"]["codec"]) == (video_codec, audio_codec)
    assert len(after["video"]["frames"]) == 8
    if copied:
        assert [p for p, _ in after["audio"]["packets"]] == \
            [p for p, _ in before["audio"]["packets"]]
    else:  # re-encoded: the same stretch of sound
        assert abs(after["audio"]["packets"][-1][1] - before["audio"]["packets"][-1][1]) < 0.05


def test_source_without_audio_and_odd_size_is_padded_not_cropped(det500m_onnx, tmp_path):
    source = write_clip(tmp_path / "odd.mkv", None, 6, size=(321, 241), pix_fmt="yuv444p")
    out = tmp_path / "odd_out.mp4"
    proc = run_script("video_inference_fdlm.py", "--model", det500m_onnx, "--size", SIZE,
                      "--video", source, "--out", out, "--blur")
    assert "no audio" in proc.stdout and "padded from 321x241" in proc.stdout
    before, after = streams(source), streams(out)
    assert "audio" not in after
    for original, written in zip(before["video"]["frames"], after["video"]["frames"]):
        assert written.shape == (242, 322, 3)
        # every source pixel is there, the last row and column included (up to the codec)
        assert np.abs(written[:241, :321].astype(int) - original).mean() < 3
        assert np.abs(written[:241, 320].astype(int) - original[:, 320]).mean() < 6
        assert np.abs(written[:241, 321].astype(int) - original[:, 320]).mean() < 6  # replicated


@pytest.mark.parametrize("args, message", [
    (["--crf", "60"], "--crf must be between 0 and 51"),
    (["--preset", "turbo"], "--preset must be auto or one of"),
    (["--blur", "--blur-grow", "3"], "--blur-grow must be between 0 and 2"),
    (["--two-pass"], "--two-pass goes with --blur"),
    (["--out", "OUT/clip.avi"], "give a folder or a video file ending in .mkv/.mov/.mp4/.webm")])
def test_bad_video_options_are_refused_before_any_work(det500m_onnx, samples_dir, tmp_path, args,
                                                       message):
    args = [str(a).replace("OUT", str(tmp_path / "out")) for a in args]
    proc = run_script("video_inference_fdlm.py", "--model", det500m_onnx, "--video",
                      samples_dir / "hamilton_360p.mp4", "--out", tmp_path / "out", *args,
                      check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_rerun_keeps_the_earlier_complete_pair(det500m_onnx, samples_dir, tmp_path,
                                                           signum, code):
    out = tmp_path / "out"
    command = [sys.executable, str(REPO / "video_inference_fdlm.py"), "--model",
               str(det500m_onnx), "--size", "128,160", "--threads", "1", "--blur", "--video",
               str(samples_dir / "hamilton_360p.mp4"), "--out", str(out)]
    subprocess.run(command + ["--max-frames", "15"], check=True, capture_output=True, timeout=120)
    earlier = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(earlier) == {"hamilton_360p_fdlm.mp4", "hamilton_360p_fdlm.jsonl"}
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:  # until it is writing frames
        if any(p.stat().st_size > 30_000 for p in out.glob(".hamilton_360p_fdlm.*.part.mp4")):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "finished before it could be interrupted"
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code and "kept as they were" in stderr, stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == earlier  # no leftovers either


# ----------------------------------------------------------------------------- tracking
def moving_face(frame: int) -> np.ndarray:
    """A 40x50 face moving right 4 px and down 1 px a frame."""
    return np.array([100 + 4 * frame, 80 + frame, 140 + 4 * frame, 130 + frame], np.float64)


def test_a_short_miss_is_bridged_at_the_predicted_place():
    tracker = FaceTracker(score=0.5, track_score=0.2, hold=3)
    seen = {f: tracker.update(moving_face(f)[None], [0.9]) for f in range(10)}
    for f in (10, 11, 12, 13):  # four frames unseen: three held, the fourth not
        seen[f] = tracker.update(np.zeros((0, 4)), [])
    ids = {r.track for f in range(10) for r in seen[f]}
    assert len(ids) == 1
    for f in (10, 11, 12):
        [region] = seen[f]
        assert region.kind == PREDICTED and region.track in ids
        assert iou_matrix(region.box[None], moving_face(f)[None])[0, 0] > 0.8  # where it went
    assert seen[13] == []
    [back] = tracker.update(moving_face(14)[None], [0.9])
    assert back.kind == DETECTED and back.track not in ids  # forgotten after the hold


def test_low_scores_continue_a_face_but_never_start_one():
    tracker = FaceTracker(score=0.5, track_score=0.2, hold=2)
    for f in range(8):  # a lone low-score "face" (a pattern on a shirt): never blurred
        assert tracker.update(moving_face(f)[None], [0.3]) == []
    [start] = tracker.update(moving_face(8)[None], [0.8])
    for f in range(9, 16):  # the same face at low scores after one confident detection
        [region] = tracker.update(moving_face(f)[None], [0.3])
        assert (region.kind, region.track, region.score) == (LOW_SCORE, start.track,
                                                            pytest.approx(0.3))
    assert tracker.update(moving_face(16)[None], [0.1]) [0].kind == PREDICTED  # below 0.2


def test_tracked_boxes_are_added_never_substituted():
    tracker = FaceTracker(score=0.5, track_score=0.2, hold=5)
    for f in range(6):
        tracker.update(moving_face(f)[None], [0.9])
    beside = moving_face(6) + [200, 0, 200, 0]  # a new face appears; the old one is missed
    regions = tracker.update(np.array([beside, moving_face(6) + [0, 120, 0, 120]]), [0.9, 0.6])
    detected = sorted(r.box.tolist() for r in regions if r.kind == DETECTED)
    assert detected == sorted([beside.tolist(), (moving_face(6) + [0, 120, 0, 120]).tolist()])
    assert [r.kind for r in regions].count(PREDICTED) == 1  # the missed one, added


def test_two_pass_hides_a_face_before_its_first_detection():
    frames = [(np.zeros((0, 4)), np.zeros(0))] * 6 + [(moving_face(f)[None], np.array([0.3]))
                                                       for f in range(6, 10)]
    frames += [(moving_face(f)[None], np.array([0.9])) for f in range(10, 20)]
    one = track_video(frames, 0.5, 0.2, hold=3)
    two = track_video(frames, 0.5, 0.2, hold=3, two_pass=True)
    assert all(one[f] == [] for f in range(10))  # forward only: nothing before frame 10
    assert [r.kind for f in range(6, 10) for r in two[f]] == [LOW_SCORE] * 4
    assert [r.kind for f in (3, 4, 5) for r in two[f]] == [PREDICTED_BACK] * 3
    assert two[2] == []
    assert {r.track for f in range(3, 20) for r in two[f]} == {one[10][0].track}  # one id
    for f in (3, 4, 5):
        assert iou_matrix(two[f][0].box[None], moving_face(f)[None])[0, 0] > 0.7


def test_a_shot_change_forgets_every_face(samples_dir):
    frames = [(moving_face(f)[None], np.array([0.9])) for f in range(5)]
    frames += [(np.zeros((0, 4)), np.zeros(0))] * 3
    cuts = [False] * 5 + [True, False, False]
    assert [len(r) for r in track_video(frames, 0.5, 0.2, hold=3)[5:]] == [1, 1, 1]
    assert [len(r) for r in track_video(frames, 0.5, 0.2, hold=3, cuts=cuts)[5:]] == [0, 0, 0]
    # and the detector of cuts finds hamilton_360p's three cuts (frames 20, 82, 211), no more
    detector = CutDetector()
    with av.open(str(samples_dir / "hamilton_360p.mp4")) as container:
        found = [i for i, frame in enumerate(container.decode(video=0))
                 if detector(frame.to_ndarray(format="bgr24"))]
    assert found == [20, 82, 211]


# ----------------------------------------------------------------------------- privacy
def test_no_face_is_found_in_the_blurred_output(det500m_onnx, samples_dir, tmp_path):
    """Privacy by outcome: a stronger detector at full size finds each face in the source
    and none where it was, in the anonymised video, at its usual score 0.5. (Lower, at
    0.3-0.45, det_2.5g still calls the smooth head-shaped blob a face: that is the outline of
    a head, not a recognisable face.)"""
    reference = MODELS / "det_2.5g.onnx"
    reference = reference if reference.exists() else det500m_onnx
    source = write_clip(tmp_path / "friends.mp4", samples_dir / "friends.jpg", 6,
                        size=(480, 320))
    out = tmp_path / "friends_blurred.mp4"
    run_script("video_inference_fdlm.py", "--model", det500m_onnx, "--size", "320,480",
               "--video", source, "--out", out, "--blur")
    judge = SCRFD(reference, (320, 480), score_threshold=0.5)
    before, after = streams(source)["video"]["frames"], streams(out)["video"]["frames"]
    assert len(before) == len(after) == 6
    for original, blurred in zip(before, after):
        faces = judge.detect(original)
        assert len(faces) >= 5  # the test means something
        left = judge.detect(blurred)
        overlap = iou_matrix(faces.boxes, left.boxes) if len(left) else np.zeros((len(faces), 0))
        assert not (overlap >= 0.3).any(), (faces.boxes, left.boxes, left.scores)


# ----------------------------------------------------------------------------- leak measurement
def test_leak_measurement_geometry():
    """tests/tools/leaks.py, the judge of the README's leak tables, on cases worked by hand."""
    sys.path.insert(0, str(REPO / "tests" / "tools"))
    from leaks import blurred_share, coverage, measure

    face = np.array([[100, 100, 140, 160, 0.9]])
    same_box = {"box": [100, 100, 140, 160], "shape": "box"}
    inscribed = {"box": [100, 100, 140, 160], "shape": "ellipse"}
    left_half = {"box": [100, 100, 120, 160], "shape": "box"}
    covered = coverage(face, [same_box, inscribed, left_half], 640, 360)[0]
    assert covered == pytest.approx([1.0, np.pi / 4, 0.5], abs=0.02)
    # a face cut by the frame's edge counts only its visible part
    edge = np.array([[-20, 100, 20, 160, 0.9]])
    assert coverage(edge, [{"box": [0, 100, 20, 160]}], 640, 360)[0, 0] == pytest.approx(1.0)
    # frame 0: the face hidden, plus a region on nothing; frame 1: the face left bare
    far = {"box": [400, 50, 440, 100], "shape": "box"}
    report = measure([face, face], [[inscribed | {"box": [92, 88, 148, 172]}, far], []], 640, 360)
    assert (report.face_frames, report.leaked, report.leaked_at) == (2, 1, [[1, 60]])
    assert report.unmatched_per_frame == 0.5 and report.regions_per_frame == 1.0
    assert blurred_share([same_box], 640, 360) == pytest.approx(40 * 60 / (640 * 360), rel=0.1)


def test_two_pass_run_hides_a_face_before_it_appears(det500m_onnx, samples_dir, tmp_path):
    """A face hidden behind a grey patch for the first 4 frames of a still shot: --two-pass
    blurs where it is for --track-hold (2) frames before it is first seen, one pass does not."""
    import cv2

    photo = cv2.resize(read_image(samples_dir / "friends.jpg"), (480, 320))
    face = SCRFD(det500m_onnx, (320, 480), score_threshold=0.5).detect(photo).boxes[0]
    x1, y1, x2, y2 = (int(v) for v in face)
    covered = photo.copy()
    covered[y1 - 10:y2 + 10, x1 - 10:x2 + 10] = 128
    path = tmp_path / "appears.mp4"
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=10)
        video.width, video.height, video.pix_fmt = 480, 320, "yuv420p"
        video.options = {"preset": "ultrafast", "crf": "12"}
        for i in range(8):
            frame = av.VideoFrame.from_ndarray(covered if i < 4 else photo, format="bgr24")
            frame.pts = i
            container.mux(video.encode(frame))
        container.mux(video.encode(None))

    def regions_on_the_face(*extra: str) -> list[list[str]]:
        out = tmp_path / f"out{len(extra)}.mp4"
        run_script("video_inference_fdlm.py", "--model", det500m_onnx, "--size", "320,480",
                   "--video", path, "--out", out, "--blur", *extra)
        kinds = []
        for record in read_jsonl(out.with_name(out.name + ".jsonl")):  # <file name>.jsonl
            boxes = [r for r in record["blurred"]
                     if iou_matrix(np.array([r["box"]]), face[None])[0, 0] > 0.2]
            kinds.append([r["kind"] for r in boxes])
        return kinds

    assert regions_on_the_face() == [[], [], [], [], ["detected"], ["detected"], ["detected"],
                                     ["detected"]]
    assert regions_on_the_face("--two-pass") == [
        [], [], ["predicted-backward"], ["predicted-backward"], ["detected"], ["detected"],
        ["detected"], ["detected"]]
