"""Side streams: a video's audio tracks keep their language and title, and its subtitles are
copied where the output container takes them, or named in the summary as left out."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from conftest import run_script
from scrfdkit import read_image
from test_video import SIZE

pytestmark = pytest.mark.inference
CUES = ((0, 400, "Hello there"), (500, 900, "Second line"))  # ms: start, end, text
TRACKS = (("eng", "English"), ("fra", "Français"))


def two_languages_and_subtitles(folder: Path, photo: Path) -> Path:
    """An .mkv of `photo` (10 frames at 10 fps) with two AAC tracks tagged eng/English and
    fra/Français (a 440 and a 660 Hz tone) and an English SubRip track of two cues."""
    srt = folder / "cues.srt"
    srt.write_text("".join(f"{i + 1}\n00:00:00,{a:03d} --> 00:00:00,{b:03d}\n{text}\n\n"
                           for i, (a, b, text) in enumerate(CUES)))
    picture = cv2.resize(read_image(photo), (320, 240))
    path = folder / "two_languages.mkv"
    with av.open(str(srt)) as cues, av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=10)
        video.width, video.height, video.pix_fmt = 320, 240, "yuv420p"
        tracks = []
        for language, title in TRACKS:
            track = container.add_stream("aac", rate=44100, layout="stereo")
            track.metadata.update(language=language, title=title)
            tracks.append(track)
        subtitles = container.add_stream_from_template(cues.streams.subtitles[0])
        subtitles.metadata["language"] = "eng"
        for index in range(10):
            frame = av.VideoFrame.from_ndarray(picture, format="bgr24")
            frame.pts, frame.time_base = index, Fraction(1, 10)
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        for track, pitch in zip(tracks, (440, 660)):
            for start in range(0, 44100, 1024):
                tone = np.sin(2 * np.pi * pitch * np.arange(start, start + 1024) / 44100)
                samples = np.repeat((tone * 8000).astype(np.int16)[None], 2, 0).reshape(1, -1)
                chunk = av.AudioFrame.from_ndarray(samples, format="s16", layout="stereo")
                chunk.sample_rate, chunk.pts = 44100, start
                container.mux(track.encode(chunk))
            container.mux(track.encode(None))
        for packet in cues.demux(cues.streams.subtitles[0]):
            if packet.size:
                packet.stream = subtitles
                container.mux(packet)
    return path


def side_streams(path: Path) -> tuple[list[dict], list[tuple[bytes, float]]]:
    """Each audio track's tags (title as FFmpeg reads it back: `title`, or MP4's `name`), and
    the subtitle packets (text, start in seconds), read back with PyAV."""
    with av.open(str(path)) as container:
        tracks = [{"language": s.metadata.get("language"),
                   "title": s.metadata.get("title") or s.metadata.get("name")}
                  for s in container.streams.audio]
        cues = [(bytes(p), float(p.pts * p.time_base)) for p in container.demux()
                if p.stream.type == "subtitle" and p.size]
    return tracks, cues


@pytest.fixture(scope="module")
def source(samples_dir, tmp_path_factory) -> Path:
    return two_languages_and_subtitles(tmp_path_factory.mktemp("side"), samples_dir /
                                       "friends.jpg")


def test_the_source_has_what_the_tests_expect(source):
    tracks, cues = side_streams(source)
    assert tracks == [{"language": lang, "title": title} for lang, title in TRACKS]
    assert [c[0] for c in cues] == [text.encode() for _, _, text in CUES]


def test_mkv_keeps_both_languages_and_the_subtitles(det500m_onnx, source, tmp_path):
    out = tmp_path / "out.mkv"
    proc = run_script("video_inference_fdlm.py", "--model", det500m_onnx, "--size", SIZE,
                      "--video", source, "--out", out, "--blur", "--no-tile")
    assert side_streams(out) == side_streams(source)
    assert "subtitles srt copied (eng)" in proc.stdout and "left out" not in proc.stdout


def test_mp4_keeps_the_languages_and_says_the_subtitles_are_left_out(det500m_onnx, source,
                                                                     tmp_path):
    out = tmp_path / "out.mp4"
    proc = run_script("video_inference_fdlm.py", "--model", det500m_onnx, "--size", SIZE,
                      "--video", source, "--out", out, "--blur", "--no-tile")
    tracks, cues = side_streams(out)
    assert tracks == side_streams(source)[0] and cues == []
    assert "AAC copied (eng, English), AAC copied (fra, Français)" in proc.stdout
    assert "left out: subtitles srt (eng) (.mp4 takes mov_text; .mkv keeps them)" in proc.stdout
