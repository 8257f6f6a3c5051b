"""Video in through PyAV (FFmpeg's libraries): frames as a generator that carries each frame's
source timestamp and the audio packets around it. Writing is video_sink.py.

Why PyAV and not cv2.VideoCapture for files: OpenCV's reader knows no audio and no source
timestamps (a variable frame rate or a stream start offset is lost). Webcams stay on OpenCV.
"""
from __future__ import annotations

import math
import re
import sys
import urllib.parse
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import cv2
import numpy as np

from .errors import UserError
from .files import IMAGE_SUFFIXES, opencv_quiet

# URL schemes of the stream protocols (and the RTSP demuxer) in PyAV 18.1's FFmpeg 8.1
# (avio_enum_protocols); srt:// is not among them (no libsrt in the wheel).
STREAM_SCHEMES = ("http", "https", "rtsp", "rtsps", "rtmp", "rtmps", "udp", "rtp", "tcp")
STREAM_TIMEOUT = 10.0  # seconds to connect to a stream, and to wait for each of its reads
FALLBACK_FPS = 30.0  # when the source does not say (many webcams)
WEBCAM_TIME_BASE = Fraction(1, 1000)  # webcam frames are stamped in milliseconds
DISPLAYMATRIX = av.sidedata.sidedata.Type.DISPLAYMATRIX  # how a phone says "turn me upright"


class VideoUnreadable(UserError):
    """A file that is no video, or one without a single frame to decode: a batch counts it as
    skipped and goes on."""


@dataclass
class Frame:
    """One decoded frame: BGR pixels, its timestamp, and the audio packets to mux beside it."""

    image: np.ndarray
    pts: int  # in the source's time base
    time: float  # seconds on the source's clock (its start offset included)
    audio: list = field(default_factory=list)  # av.Packet of the source's audio and subtitles
    yuv: np.ndarray | None = None  # the decoded 4:2:0 planes (I420), when the source has them


class VideoSource:
    """A video file opened with PyAV, with clear one-line errors.

    frames() yields every frame with its own timestamp (variable frame rates and a late start
    survive) and hands each audio packet along with the frame it came beside, so one
    demuxing pass feeds the writer both. A stream that breaks mid-way ends the frames;
    `broken` then says why. Close it (or leave its `with` block) only after the writer is
    done: the audio packets handed along still belong to it.
    """

    live = False  # a file: it can be read twice, and a stop request leaves it unfinished

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise VideoUnreadable(f"no such video file: {path}")
        if path.suffix.lower() in IMAGE_SUFFIXES:
            raise VideoUnreadable(f"{path} is a photo, not a video; use scrfd.py --image "
                                  f"{path}")
        try:
            self.container = av.open(str(path), metadata_errors="ignore")
        except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as err:
            raise VideoUnreadable(f"cannot open video {path}: not a video, or damaged (for "
                                  "example an .mp4 cut short before its index) "
                                  f"({_reason(err)})") from None
        if not self.container.streams.video:
            self.container.close()
            raise VideoUnreadable(f"cannot open video {path}: it has no video stream")
        self._setup(path, str(path), path.stem)

    def _setup(self, path: Path | None, name: str, stem: str) -> None:
        """The video stream, its rate, size and rotation, from the opened container."""
        self.path, self.name, self.stem = path, name, stem
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"  # frame and slice threads: 1080p decodes at 40+ fps
        self.audio = list(self.container.streams.audio)
        self.subtitles = list(self.container.streams.subtitles)
        self.time_base = self.stream.time_base or Fraction(1, 90000)
        rate = self.stream.average_rate or self.stream.guessed_rate
        self.fps = float(rate) if rate and 0 < float(rate) <= 1000 else FALLBACK_FPS
        self.total = self.stream.frames or self._estimated_frames()
        self.broken = ""
        self.error: Exception | None = None  # what broke the stream, when something did
        self.legacy_rotation = legacy_rotation(self.stream.metadata)
        self.rotation = 0  # degrees counter-clockwise the frames are turned (see upright())
        self.rotated_by = ""  # what asked for it: "display matrix" or "rotate tag"

    def _estimated_frames(self) -> int | None:
        """Containers without a frame count (Matroska): duration x rate, as OpenCV does."""
        seconds = (float(self.stream.duration * self.time_base) if self.stream.duration
                   else (self.container.duration or 0) / av.time_base)
        return round(seconds * self.fps) or None

    def frames(self, limit: int = 0) -> Iterator[Frame]:
        """Decoded frames in display order (at most `limit`, 0: all), audio attached.

        Audio demuxed before a frame's successor goes with that frame; the last frame takes
        the rest (after `limit`: only the audio that plays before the video's end).
        """
        step = max(1, round(1 / (self.fps * self.time_base)))  # a frame's duration, for gaps
        held: Frame | None = None
        audio: list = []
        count, last_pts, end = 0, None, None
        try:
            for packet in self._packets():
                if packet.stream.type != "video":  # audio and subtitles go with their frame
                    if packet.dts is None:
                        continue  # a flush marker, no data
                    if end is not None and _seconds(packet) >= end:
                        break  # the audio has passed the video's end
                    audio.append(packet)
                    continue
                if end is not None:
                    continue  # past --max-frames: only the audio up to the end is wanted
                for decoded in packet.decode():
                    pts = decoded.pts
                    if pts is None or (last_pts is not None and pts <= last_pts):
                        pts = 0 if last_pts is None else last_pts + step  # encoders need order
                    last_pts = pts
                    if held is not None:
                        held.audio, audio = audio, []
                        yield held
                    self.rotation, self.rotated_by = upright(decoded, self.legacy_rotation)
                    image, yuv = to_bgr(decoded, self.rotation)
                    held = Frame(image, pts, float(pts * self.time_base), yuv=yuv)
                    count += 1
                    if limit and count >= limit:
                        end = held.time + float(step * self.time_base)
                        break
                if end is not None and not (self.audio or self.subtitles):
                    break
        except av.error.FFmpegError as err:
            self.broken, self.error = _reason(err), err
        if held is not None:
            held.audio = [p for p in audio if end is None or _seconds(p) < end]
            yield held

    def _packets(self) -> Iterator[av.Packet]:
        """The demuxed packets; where the input breaks, an empty video packet after them, so
        the decoder gives up the frames it still holds (a threaded decoder holds several)."""
        try:
            yield from self.container.demux(self.stream, *self.audio, *self.subtitles)
        except av.error.FFmpegError as err:
            self.broken, self.error = _reason(err), err
            flush = av.Packet()
            flush.stream = self.stream
            yield flush

    def reopen(self) -> "VideoSource":
        """The same file opened again, from its first frame (the second of two passes)."""
        return VideoSource(self.path)

    def close(self) -> None:
        self.container.close()

    def __enter__(self) -> "VideoSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class StreamSource(VideoSource):
    """A live stream FFmpeg opens from a URL (STREAM_SCHEMES): read with a timeout, so a
    stream that stalls ends the frames (`broken` says so) instead of hanging the run. It
    cannot be read twice, it has no frame count, and a stop request is its normal end."""

    live = True

    def __init__(self, url: str, timeout: float = STREAM_TIMEOUT) -> None:
        scheme = url.split("://", 1)[0].lower()
        if scheme not in STREAM_SCHEMES:
            raise VideoUnreadable(f"cannot open {url}: {scheme}:// is not among the stream "
                                  f"protocols of this FFmpeg ({', '.join(STREAM_SCHEMES)})")
        try:  # (open, read): seconds to connect, and to wait for each read
            self.container = av.open(url, timeout=(timeout, timeout), metadata_errors="ignore")
        except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as err:
            raise VideoUnreadable(f"cannot open stream {url} ({_reason(err)})") from None
        if not self.container.streams.video:
            self.container.close()
            raise VideoUnreadable(f"cannot open stream {url}: it has no video stream")
        self.timeout = timeout
        self._setup(None, url, stream_stem(url))
        self.total = None  # live: however many frames arrive

    def frames(self, limit: int = 0) -> Iterator[Frame]:
        yield from super().frames(limit)
        if isinstance(self.error, av.error.ExitError):  # FFmpeg's answer to the read timeout
            self.broken = f"no data for {self.timeout:g} s"

    def reopen(self) -> "VideoSource":
        raise UserError(f"{self.name} is a live stream: it cannot be read twice")


def stream_stem(url: str) -> str:
    """The outputs' name for a stream: the last part of its path, else its host and port
    (rtsp://cam/live/main -> main; udp://@:5000 -> udp_5000)."""
    parts = urllib.parse.urlsplit(url)
    stem = Path(parts.path).stem or f"{parts.scheme}_{parts.netloc}"
    return re.sub(r"[^A-Za-z0-9.-]+", "_", stem).strip("_.") or parts.scheme


def is_stream(video: object) -> bool:
    """A URL (scheme://...) rather than a file name."""
    return isinstance(video, str) and re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", video) is not None


def open_video(video: Path | str | int, timeout: float = STREAM_TIMEOUT
               ) -> VideoSource | WebcamSource:
    """A file (Path), a stream (a URL) or a camera (int) opened for reading."""
    if isinstance(video, int):
        return WebcamSource(video)
    return StreamSource(video, timeout) if is_stream(video) else VideoSource(Path(video))


class WebcamSource:
    """A camera through OpenCV; frames are stamped at the camera's nominal rate."""

    live = True  # a stop request is its normal end; it cannot be read twice
    audio: list = []
    subtitles: list = []
    time_base = WEBCAM_TIME_BASE
    total = None
    broken = ""

    def __init__(self, index: int) -> None:
        with opencv_quiet():  # OpenCV's warnings about missing cameras: we say it in one line
            self.capture = cv2.VideoCapture(index)
        if not self.capture.isOpened():
            raise UserError(f"cannot open webcam {index} (no such camera, or it is busy)")
        self.name, self.stem = f"webcam {index}", f"webcam{index}"
        fps = self.capture.get(cv2.CAP_PROP_FPS)
        if not math.isfinite(fps) or not 0 < fps <= 1000:
            print(f"note: the camera does not report its fps; writing at {FALLBACK_FPS:g}",
                  file=sys.stderr)
            fps = FALLBACK_FPS
        self.fps = fps

    def frames(self, limit: int = 0) -> Iterator[Frame]:
        try:
            count = 0
            while not limit or count < limit:
                ok, image = self.capture.read()
                if not ok:
                    return
                pts = round(count / self.fps / self.time_base)
                yield Frame(image, pts, float(pts * self.time_base))
                count += 1
        finally:
            self.close()

    def close(self) -> None:
        self.capture.release()

    def __enter__(self) -> "WebcamSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_source(video: Path | None, webcam: int | None) -> VideoSource | WebcamSource:
    return VideoSource(video) if video is not None else WebcamSource(webcam)


def legacy_rotation(metadata: dict) -> int:
    """The old `rotate` tag (clockwise degrees, as phones and older FFmpeg wrote it; Matroska
    keeps it as ROTATE), as counter-clockwise degrees; 0 without one."""
    tag = next((value for key, value in metadata.items() if key.lower() == "rotate"), None)
    try:
        return -round(float(tag) / 90) * 90 % 360 if tag is not None else 0
    except ValueError:
        return 0


def upright(frame: av.VideoFrame, legacy: int = 0) -> tuple[int, str]:
    """Degrees (0, 90, 180 or 270) to turn a decoded frame counter-clockwise so it stands as
    players show it, and what said so: its display matrix (what phones write for a portrait
    video), else the legacy rotate tag. Other angles go to the nearest quarter turn."""
    if any(data.type == DISPLAYMATRIX for data in frame.side_data):
        return round(frame.rotation / 90) * 90 % 360, "display matrix"
    return legacy, "rotate tag"


def to_bgr(frame: av.VideoFrame, rotation: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """BGR pixels turned `rotation` degrees counter-clockwise, and the I420 planes when the
    frame is 8-bit 4:2:0 of an even size (most videos): VideoSink can then encode the decoded
    planes themselves with only the blurred regions converted back, so pixels nobody blurred
    reach the encoder exactly as decoded. Planes are turned before the conversion: a 2x2
    chroma block stays one, so both give the same pixels."""
    even = not frame.width % 2 and not frame.height % 2
    if frame.format.name in ("yuv420p", "yuvj420p") and even:
        yuv = frame.to_ndarray(format="yuv420p")
        if rotation:
            yuv = turn_i420(yuv, frame.width, frame.height, rotation)
        return cv2.cvtColor(yuv, cv2.COLOR_YUV2BGR_I420), yuv
    image = frame.to_ndarray(format="bgr24")
    return (np.ascontiguousarray(np.rot90(image, rotation // 90)) if rotation else image), None


def turn_i420(yuv: np.ndarray, width: int, height: int, rotation: int) -> np.ndarray:
    """I420 planes (Y, then U and V at half size, as one (3h/2, w) array) of a frame turned
    `rotation` degrees counter-clockwise."""
    quarters = rotation // 90
    luma = np.rot90(yuv[:height], quarters)
    chroma = np.rot90(yuv[height:].reshape(2, height // 2, width // 2), quarters, axes=(1, 2))
    rows, cols = luma.shape
    return np.concatenate([luma.reshape(-1), chroma.reshape(-1)]).reshape(rows * 3 // 2, cols)


def _seconds(packet: av.Packet) -> float:
    return float((packet.pts if packet.pts is not None else packet.dts) * packet.time_base)


def _reason(err: BaseException) -> str:
    text = getattr(err, "strerror", None) or str(err)
    return str(text).strip().splitlines()[0] if str(text).strip() else type(err).__name__
