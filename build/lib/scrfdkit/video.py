"""Video in and out: a capture opened with clear errors, frames as a generator, and a
writer context (VideoSink) whose file appears only once it is complete and playable."""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from .errors import UserError
from .files import IMAGE_SUFFIXES, StagedOutputs, opencv_quiet

# FFmpeg's own messages about damaged frames would tear through the progress bar; we report
# broken input ourselves. Export OPENCV_FFMPEG_LOGLEVEL=16 to see them again.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".webm"}
# Codec by container: mp4v (MPEG-4 Part 2) is always in OpenCV's FFmpeg and plays in desktop
# players but not in browsers; VP8 in .webm plays in every browser.
FOURCC_BY_SUFFIX = {".mp4": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG", ".webm": "VP80"}
FALLBACK_FPS = 30.0  # when the source does not say (many webcams)


def open_capture(video: Path | None, webcam: int | None
                 ) -> tuple[cv2.VideoCapture, str, int | None, float]:
    """Open a video file or a camera: (capture, name stem, frame count or None, fps)."""
    if video is not None:
        if not video.is_file():
            raise UserError(f"no such video file: {video}")
        if video.suffix.lower() in IMAGE_SUFFIXES:
            raise UserError(f"{video} is a photo, not a video; use scrfd.py --image {video}")
        capture = cv2.VideoCapture(str(video))
        if not capture.isOpened():
            raise UserError(f"cannot open video {video}: not a video, damaged (for example "
                            "an .mp4 cut short before its index), or a format OpenCV cannot read")
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        stem, total = video.stem, count if count > 0 else None
    else:
        with opencv_quiet():  # OpenCV's warnings about missing cameras: we say it in one line
            capture = cv2.VideoCapture(webcam)
        if not capture.isOpened():
            raise UserError(f"cannot open webcam {webcam} (no such camera, or it is busy)")
        stem, total = f"webcam{webcam}", None
    fps = capture.get(cv2.CAP_PROP_FPS)
    if not math.isfinite(fps) or not 0 < fps <= 1000:
        print(f"note: the source does not report its fps; writing at {FALLBACK_FPS:g}",
              file=sys.stderr)
        fps = FALLBACK_FPS
    return capture, stem, total, fps


def frames(capture: cv2.VideoCapture, limit: int = 0) -> Iterator[np.ndarray]:
    """The capture's frames until it ends (or `limit` frames); releases it when done."""
    try:
        count = 0
        while not limit or count < limit:
            ok, frame = capture.read()
            if not ok:
                return
            count += 1
            yield frame
    finally:
        capture.release()


def fourcc_for(path: Path, fourcc: str | None) -> str:
    """The codec to write `path` with: the one asked for, else the container's usual one."""
    fourcc = fourcc or FOURCC_BY_SUFFIX.get(path.suffix.lower(), "mp4v")
    if len(fourcc) != 4:
        raise UserError(f"--fourcc must be four characters, got {fourcc!r}")
    return fourcc


class VideoSink:
    """Write frames to a staged temporary file; the video appears when the run commits.

    The writer opens at the first frame (its size is the video's); frames of another size
    (a camera switching modes) are resized to it.
    """

    def __init__(self, path: Path, staged: StagedOutputs, fps: float, fourcc: str) -> None:
        self.path, self.fps, self.fourcc = path, fps, fourcc
        self._staged = staged
        self._writer: cv2.VideoWriter | None = None
        self.size: tuple[int, int] | None = None
        self.frames = 0

    def __enter__(self) -> "VideoSink":
        return self

    def write(self, frame: np.ndarray) -> None:
        if self._writer is None:
            self.size = (frame.shape[1], frame.shape[0])
            temporary = self._staged.path(self.path)
            self._writer = cv2.VideoWriter(str(temporary), cv2.VideoWriter_fourcc(*self.fourcc),
                                           self.fps, self.size)
            if not self._writer.isOpened():
                raise UserError(f"cannot write a {self.path.suffix} video with codec "
                                f"{self.fourcc}; try --fourcc MJPG with an .avi --out")
        if (frame.shape[1], frame.shape[0]) != self.size:
            frame = cv2.resize(frame, self.size)
        self._writer.write(frame)
        self.frames += 1

    def __exit__(self, *exc) -> None:
        if self._writer is not None:
            self._writer.release()  # writes the container's index: the file is whole from here
