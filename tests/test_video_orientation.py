"""Phone videos: a portrait clip is stored sideways with a display matrix (or, from older
phones and tools, a `rotate` tag) that tells players to turn it. The script must see, blur and
write it upright, as a player shows it.

The clips are made here from a real photo with faces: the upright copy and the same frames
stored turned, with the matrix that turns them back, both lossless, so the frames a player
shows are exactly the upright copy's and every difference is the script's.
"""
from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from conftest import run_script
from scrfdkit import read_image

pytestmark = pytest.mark.inference
SIZE = "256,320"  # det_500m ONNX input: a 320x240 frame of friends.jpg, its faces found
FRAMES = 6


def upright_planes(photo: Path, frames: int = FRAMES, size: tuple[int, int] = (320, 240)
                   ) -> list[np.ndarray]:
    """I420 planes of `photo` sliding sideways, `size` (width, height) upright."""
    width, height = size
    picture = cv2.resize(read_image(photo), (width + frames * 4, height))
    return [cv2.cvtColor(np.ascontiguousarray(picture[:, i * 4: i * 4 + width]),
                         cv2.COLOR_BGR2YUV_I420) for i in range(frames)]


def stored_turned(yuv: np.ndarray, degrees: int) -> np.ndarray:
    """The I420 frame as a phone stores it when players must turn it `degrees` counter-
    clockwise: the upright frame turned the other way (each plane on its own)."""
    height = yuv.shape[0] * 2 // 3
    width = yuv.shape[1]
    quarters = -degrees // 90
    luma = np.rot90(yuv[:height], quarters)
    chroma = np.rot90(yuv[height:].reshape(2, height // 2, width // 2), quarters, axes=(1, 2))
    return np.concatenate([luma.ravel(), chroma.ravel()]).reshape(-1, luma.shape[1])


def write_lossless(path: Path, planes: list[np.ndarray], rotation: int | None = None,
                   rotate_tag: int | None = None) -> Path:
    """A lossless H.264 clip of the I420 `planes` at 10 fps, with a display matrix asking
    players to turn it `rotation` degrees counter-clockwise, or a legacy rotate tag."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=10)
        video.height, video.width = planes[0].shape[0] * 2 // 3, planes[0].shape[1]
        video.pix_fmt = "yuv420p"
        video.time_base = video.codec_context.time_base = Fraction(1, 10)
        video.options = {"preset": "ultrafast", "qp": "0"}  # lossless
        if rotation is not None:
            video.set_display_rotation(rotation)
        if rotate_tag is not None:
            video.metadata["rotate"] = str(rotate_tag)
        for index, yuv in enumerate(planes):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(yuv), format="yuv420p")
            frame.pts = index
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
    return path


def player_view(path: Path) -> tuple[int, tuple[int, int], np.ndarray]:
    """What a player learns from the file (as ffprobe shows it): the rotation of the display
    matrix, the stored frame size (width, height), and the first frame as stored (BGR)."""
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        return frame.rotation % 360, (frame.width, frame.height), frame.to_ndarray(format="bgr24")


def faces_per_frame(json_path: Path) -> list[list[dict]]:
    return [json.loads(line)["faces"] for line in json_path.read_text().splitlines()]


@pytest.fixture(scope="module")
def upright_run(det500m_onnx, samples_dir, tmp_path_factory):
    """The upright copy of the clip, and the script's run on it (faces drawn, one pass)."""
    folder = tmp_path_factory.mktemp("upright")
    planes = upright_planes(samples_dir / "friends.jpg")
    source = write_lossless(folder / "upright.mp4", planes)
    out = folder / "out.mp4"
    run_script("video_inference_fdlm.py", "--model", det500m_onnx, "--size", SIZE, "--video",
               source, "--out", out, "--crf", "12")
    return planes, source, out


@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_a_turned_clip_is_seen_blurred_and_written_upright(det500m_onnx, upright_run, tmp_path,
                                                          degrees):
    planes, upright_source, upright_out = upright_run
    source = write_lossless(tmp_path / f"phone{degrees}.mp4",
                            [stored_turned(p, degrees) for p in planes], rotation=degrees)
    rotation, stored_size, _ = player_view(source)
    assert rotation == degrees  # players turn it: it is a real phone-style clip
    assert stored_size == ((240, 320) if degrees % 180 else (320, 240))
    out = tmp_path / "out.mp4"
    proc = run_script("video_inference_fdlm.py", "--model", det500m_onnx, "--size", SIZE,
                      "--video", source, "--out", out, "--crf", "12")
    assert f"turned {degrees}° counter-clockwise" in proc.stdout
    upright_faces = faces_per_frame(upright_out.with_name(upright_out.name + ".jsonl"))
    assert sum(map(len, upright_faces)) >= 4 * FRAMES  # friends.jpg's faces are found upright
    # the same faces, at the same places, as in the upright copy
    assert faces_per_frame(out.with_name(out.name + ".jsonl")) == upright_faces
    # the output plays upright with no rotation left for a player to apply
    out_rotation, out_size, out_first = player_view(out)
    _, _, source_first = player_view(upright_source)
    assert (out_rotation, out_size) == (0, (320, 240))
    with av.open(str(out)) as container:
        first = next(container.decode(video=0))
        assert not [d for d in first.side_data if d.type.name == "DISPLAYMATRIX"]
    # the drawn boxes aside (the median pixel is on none), the codec's loss alone
    assert np.median(np.abs(out_first.astype(int) - source_first)) <= 2
    assert np.median(np.abs(np.rot90(out_first, 2).astype(int) - source_first)) > 10
    _, _, upright_out_first = player_view(upright_out)
    assert np.abs(out_first.astype(int) - upright_out_first).mean() < 1


def test_a_turned_clip_blurred_leaves_no_face(det500m_onnx, samples_dir, tmp_path):
    """--blur on a clip stored sideways: the faces are found upright and hidden."""
    from scrfdkit import SCRFD

    planes = upright_planes(samples_dir / "friends.jpg")
    source = write_lossless(tmp_path / "phone.mp4", [stored_turned(p, 90) for p in planes],
                            rotation=90)
    out = tmp_path / "out.mp4"
    run_script("video_inference_fdlm.py", "--model", det500m_onnx, "--size", SIZE, "--video",
               source, "--out", out, "--blur", "--no-tile")
    detector = SCRFD(det500m_onnx, (256, 320), score_threshold=0.5)
    upright = cv2.cvtColor(planes[0], cv2.COLOR_YUV2BGR_I420)
    assert len(detector.detect(upright)) >= 4
    with av.open(str(out)) as container:
        for frame in container.decode(video=0):
            assert (frame.width, frame.height, frame.rotation) == (320, 240, 0)  # upright
            assert len(detector.detect(frame.to_ndarray(format="bgr24"))) == 0


def test_the_legacy_rotate_tag_turns_the_frames_too(det500m_onnx, upright_run, tmp_path):
    """Older phones and tools wrote `rotate=90` (clockwise) as a stream tag instead of the
    matrix; Matroska keeps such a tag. The frames are turned by it."""
    planes, _, upright_out = upright_run
    source = write_lossless(tmp_path / "tagged.mkv", [stored_turned(p, 270) for p in planes],
                            rotate_tag=90)  # 90 clockwise is 270 counter-clockwise
    with av.open(str(source)) as container:
        assert container.streams.video[0].metadata.get("ROTATE") == "90"
    out = tmp_path / "out.mp4"
    proc = run_script("video_inference_fdlm.py", "--model", det500m_onnx, "--size", SIZE,
                      "--video", source, "--out", out)
    assert "rotate tag" in proc.stdout
    assert faces_per_frame(out.with_name(out.name + ".jsonl")) == \
        faces_per_frame(upright_out.with_name(upright_out.name + ".jsonl"))
