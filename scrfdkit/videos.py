"""The video job of video_inference_fdlm.py and of the Python API: every frame decoded, its faces
found (and with blurring, followed from frame to frame), drawn or blurred, encoded, and one JSON
line per frame; the outputs staged and renamed into place together.

One home for the job, as photos.py is for photos, so the script and the API write the same
frames and the same JSON lines. Decoding (with preprocessing) runs ahead of the model in one
thread and drawing/encoding behind it in another, so a video goes at about the model's speed.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from tqdm import tqdm

from .defaults import (DEFAULT_THREADS, NMS_THRESHOLD, SCORE_THRESHOLD, TILE_FACE,
                       VIDEO_BLUR_SCORE_THRESHOLD)
from .detections import Detections, draw_detections
from .detector import SCRFD
from .errors import UserError
from .faces import ARCFACE_SIZE, VIDEO_BLUR_GROW, VIDEO_BLUR_SHAPE, Replacement, \
    aligned_crops, anonymize_regions, grow
from .files import StagedOutputs, display
from .photos import encode
from .pipeline import StopRequests, WriteBehind, read_ahead
from .keyframes import DEFAULT_INTERVAL, KeyframeSearch
from .tiles import largest_tile_face
from .timing import Profile
from .tracker import DEFAULT_HOLD, DEFAULT_TRACK_SCORE, FaceTracker, Region, track_video
from .video import (STREAM_TIMEOUT, Frame, StreamSource, VideoSource, VideoUnreadable,
                    WebcamSource, open_video)
from .video_sink import DEFAULT_PRESET, VideoSink, patch_yuv

QUEUE_DEPTH = 8  # frames decoded ahead of, and drawn/encoded behind, the model


@dataclass(frozen=True)
class VideoOptions:
    """What the job does with each frame: the video script's options, one field each."""

    blur: str | None = None  # None: draw boxes and landmarks; else the anonymize mode
    replacement: Replacement | None = None  # what hides a face (None: the blur mode's default)
    score: float | None = None  # faces shown and blurred from here (None: the job's default)
    blur_shape: str = VIDEO_BLUR_SHAPE
    blur_grow: float = VIDEO_BLUR_GROW
    track_score: float = DEFAULT_TRACK_SCORE  # with blur: low-score faces may continue a track
    track_hold: int = DEFAULT_HOLD
    two_pass: bool = False  # with blur: detect the whole video first (files only)
    keyframe_interval: int = DEFAULT_INTERVAL  # with tiles: the full search every K frames
    crops: Path | None = None  # folder for aligned face crops, or None
    crop_size: int = ARCFACE_SIZE
    max_frames: int = 0  # 0: every frame
    duration: float = 0.0  # seconds of video from its first frame (0: no limit)
    timeout: float = STREAM_TIMEOUT  # a stream: seconds to connect, and to wait for a read
    crf: int | None = None  # None: the encoder's default quality
    preset: str = DEFAULT_PRESET
    encoder_threads: int = 0  # 0: the encoder's own choice

    @classmethod
    def of(cls, namespace: object, **changes) -> "VideoOptions":
        """From an object with these fields as attributes (the script's parsed options)."""
        given = {f.name: getattr(namespace, f.name) for f in fields(cls)
                 if hasattr(namespace, f.name)}
        return cls(**{**given, **changes})

    @property
    def threshold(self) -> float:
        """--score, else 0.3 with blur (tracking adds what a frame misses), else 0.5."""
        if self.score is not None:
            return self.score
        return VIDEO_BLUR_SCORE_THRESHOLD if self.blur else SCORE_THRESHOLD

    @property
    def detect_from(self) -> float:
        """The detector's own threshold: with blur, down to --track-score (the tracker's
        second chance for a face it follows)."""
        return min(self.threshold, self.track_score) if self.blur else self.threshold


# Keyframes get every tile: the keyframe search is how video saves passes, measured with
# every tile (docs/video.md); a 1080p frame's letterbox shrinks faces 3x, and a face it
# misses must still be found at the next keyframe, not gated away.
VIDEO_TILE_GATE = None


def video_detector(model: str | os.PathLike, options: VideoOptions, tile: int | None = None,
                   nms_threshold: float = NMS_THRESHOLD, max_faces: int = 0,
                   input_hw: tuple[int, int] | None = None, threads: int = DEFAULT_THREADS
                   ) -> SCRFD:
    """The SCRFD the job runs for these options: faces reported from options.detect_from;
    `tile`: faces up to this many pixels whole in a tile, None for one pass a frame."""
    return SCRFD(model, input_hw, score_threshold=options.detect_from,
                 nms_threshold=nms_threshold, max_faces=max_faces, threads=threads,
                 tile=tile is not None, tile_face=tile or TILE_FACE, tile_gate=VIDEO_TILE_GATE)


def describe_detection(detector: SCRFD, options: VideoOptions, tile: int | None) -> str:
    """'litert, input 480x640, score >= 0.3 (tracked from 0.2, held 2 frames), tiled (...)':
    how the job detects, for the line a run starts with."""
    return (f"{detector.runner.backend}, input {detector.input_hw[0]}x{detector.input_hw[1]}, "
            f"score >= {options.threshold:g}"
            + (f" (tracked from {options.track_score:g}, held {options.track_hold} frames"
               f"{', two passes' if options.two_pass else ''})" if options.blur else "")
            + (f", tiled (faces up to {min(tile, largest_tile_face(detector.input_hw))} px "
               "whole in a tile)" if tile else ""))


def frame_step(detector: SCRFD, options: VideoOptions) -> KeyframeSearch:
    """The per-frame detection step, the one place run_video asks for a frame's faces: with
    tiles, the full search on keyframes and the whole pass plus patches between them
    (keyframes.py); without tiles (or --keyframe-interval 1), the detector on every frame."""
    return KeyframeSearch(detector, options.keyframe_interval, options.detect_from,
                          track_score=options.track_score)


STAGES = (("decode", ("decode",)), ("preprocess", ("preprocess",)), ("model", ("inference",)),
          ("boxes + NMS", ("postprocess",)), ("tracking", ("track", "cuts")),
          ("draw + encode", ("draw+write",)))  # the summary's stages, from the profiles' keys


@dataclass
class VideoSummary:
    """What one video's run did: the numbers the script prints and the API returns."""

    source: str  # the video's name
    video: Path  # the anonymised (or annotated) video
    json: Path  # its JSON lines
    frames: int = 0
    faces: int = 0  # faces shown (score >= the threshold), summed over the frames
    blurred: int | None = None  # regions blurred, summed over the frames (None: no blur)
    passes: int = 0  # model passes (more than one a frame when tiled)
    keyframes: int = 0  # frames given the full search (every frame without tiles)
    seconds: float = 0.0  # the whole run
    first_pass: float = 0.0  # two passes: the seconds of the first (detect and track)
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage
    fps: float = 0.0  # the source's frame rate
    announced: int | None = None  # frames the source says it has
    broken: str = ""  # why the source ended early, when it did
    stopped: str = ""  # why the run stopped early (Ctrl-C, SIGTERM, the window), when it did
    in_first_pass: bool = False  # stopped in the first of two passes: nothing written
    kept: bool = False  # stopped where an earlier result was: that result is kept as it was
    encoding: str = ""  # the written video's codecs and settings
    rotation: int = 0  # degrees the frames were turned counter-clockwise to stand upright
    rotated_by: str = ""  # what asked for the turn: the display matrix, or the rotate tag
    left_out: list[str] = field(default_factory=list)  # side streams the output cannot hold
    max_frames: int = 0  # the frame limit it ran with (0: none)
    stream: bool = False  # a live stream (a URL): it ends when its sender stops or stalls
    limited: bool = False  # ended by --max-frames or --duration

    @property
    def written(self) -> bool:
        """The outputs were renamed into place."""
        return not (self.kept or self.in_first_pass)

    @property
    def outcome(self) -> str:
        """How the run ended, when the user must know it ("" when it went through)."""
        if self.in_first_pass:
            return f"{self.stopped} in the first pass; nothing written"
        if self.kept:
            return (f"{self.stopped} after {self.frames} frames; the earlier "
                    f"{display(self.video)} and {display(self.json)} are kept as they were")
        if self.stopped:
            return f"{self.stopped} after {self.frames} frames; both outputs hold those frames"
        if self.stream and not self.limited:
            why = self.broken or "the connection closed: its sender stopped or went away"
            return (f"warning: the stream {self.source} ended after {self.frames} frames "
                    f"({why}); both outputs hold the frames received")
        if self.truncated:
            return (f"warning: {self.source} ended after {self.frames} of the "
                    f"{self.announced or 'unknown number of'} frames it announces (truncated "
                    f"or damaged?); kept the {self.frames} frames before the break")
        return ""

    def stage_seconds(self) -> dict[str, float]:
        """Seconds per stage as the summary names them (tracking only with blur); the stages
        overlap, so the slowest one sets the pace."""
        return {label: sum(self.stages.get(key, 0.0) for key in keys)
                for label, keys in STAGES if label != "tracking" or self.blurred is not None}

    @property
    def truncated(self) -> bool:
        """The source ended before the frames it announced (damaged, or cut short)."""
        return bool(self.broken) or bool(self.announced and self.frames < self.announced
                                         and self.frames != self.max_frames and not self.limited)


@dataclass(frozen=True)
class VideoPaths:
    """Where one video's results go."""

    video: Path
    json: Path
    name: str  # the crops' names start with it: <crops>/<name>_frame<N>_face<M>.png


def region_records(regions: list[Region], grown: np.ndarray, shape: str) -> list[dict]:
    """The JSON of what was blurred: the grown box (the ellipse's, with shape "ellipse"; it
    may reach past the frame), the face's track id, and why it was blurred."""
    return [{"box": [round(float(v), 1) for v in box], "shape": shape, "track": r.track,
             "kind": r.kind, "score": None if r.score is None else round(r.score, 4)}
            for r, box in zip(regions, grown)]


Planned = list[tuple[Detections, list[Region]]]  # two passes: each frame's faces and regions


class VideoJob:
    """One video through the job; run_video() is how it is used."""

    def __init__(self, step: KeyframeSearch, source: VideoSource | WebcamSource,
                 options: VideoOptions, stop: StopRequests,
                 on_frame: Callable[[np.ndarray], None] | None = None, progress: bool = True,
                 crop_name: str | None = None) -> None:
        self.step, self.source, self.options, self.stop = step, source, options, stop
        self.on_frame, self.progress = on_frame, progress
        self.crop_name = crop_name or source.stem
        self.threshold = options.threshold
        self.profile = Profile()
        self.lines: list[str] = []
        self.limited = False  # --duration ended the frames
        self.wanted = min(filter(None, (source.total, options.max_frames)), default=None)

    def decoded(self, frames: Iterator[Frame], prepare: bool = True
                ) -> Iterator[tuple[Frame, object, bool]]:
        """Frames with their model input and whether a new shot starts there (when wanted),
        made in the read-ahead thread."""
        while True:
            with self.profile("decode"):
                frame = next(frames, None)
            if frame is None:
                return
            if not prepare:
                yield frame, None, False
                continue
            prepared = self.step.prepare(frame.image)  # with the shot-change flag
            yield frame, prepared, prepared.cut

    def frames(self) -> Iterator[Frame]:
        """The source's frames, up to --max-frames and --duration (seconds from the first)."""
        frames = self.source.frames(self.options.max_frames)
        if not self.options.duration:
            yield from frames
            return
        with contextlib.closing(frames):
            start = None
            for frame in frames:
                start = frame.time if start is None else start
                if frame.time - start >= self.options.duration:
                    self.limited = True
                    return
                yield frame

    def detected(self) -> Iterator[tuple[Frame, Detections, list[Region] | None]]:
        """One pass: each frame, its faces, and with blur the regions the tracker hides."""
        tracker = FaceTracker(self.threshold, self.options.track_score,
                              self.options.track_hold) if self.options.blur else None
        frames = self.frames()
        for frame, prepared, cut in read_ahead(self.decoded(frames), QUEUE_DEPTH):
            if self.stop:
                return
            dets, regions = self.step(frame.image, prepared, cut), None
            if tracker is not None:
                with self.profile("track"):
                    if cut:
                        tracker.reset()
                    regions = tracker.update(dets.boxes, dets.scores)
            yield frame, dets, regions

    def first_pass(self) -> Planned | None:
        """Two passes, the first: detect and track the whole video, nothing written; None when
        stopped."""
        found, cut_flags = [], []
        frames = self.frames()
        with tqdm(total=self.wanted, unit="frame", desc=f"{self.source.stem} 1/2",
                  dynamic_ncols=True, delay=1, disable=not self.progress) as bar:
            for frame, prepared, cut in read_ahead(self.decoded(frames), QUEUE_DEPTH):
                if self.stop:
                    break
                found.append(self.step(frame.image, prepared, cut))
                cut_flags.append(cut)
                bar.update()
        if self.stop:
            return None
        if not found:
            raise VideoUnreadable(f"no frames could be decoded from {self.source.name}")
        with self.profile("track"):
            tracked = track_video([(d.boxes, d.scores) for d in found], self.threshold,
                                  self.options.track_score, self.options.track_hold, True,
                                  cut_flags)
        return list(zip(found, tracked))

    def replayed(self, plan: Planned) -> Iterator[tuple[Frame, Detections, list[Region]]]:
        """Two passes, the second: the video decoded again, each frame with its planned faces."""
        frames = self.source.frames(len(plan))
        for index, (frame, _, _) in enumerate(read_ahead(self.decoded(frames, False),
                                                         QUEUE_DEPTH)):
            if self.stop or index >= len(plan):
                return
            yield frame, *plan[index]

    def write_frame(self, index: int, frame: Frame, faces: Detections,
                    regions: list[Region] | None, sink: VideoSink, staged: StagedOutputs) -> None:
        """Draw or blur one frame, encode it, stage its crops, keep its JSON line (on the
        write-behind thread, in frame order)."""
        options = self.options
        with self.profile("draw+write"):
            record = {"frame": index, "time": round(frame.time, 4), "faces": faces.to_list()}
            yuv = None
            if options.blur:
                grown = grow(np.array([r.box for r in regions]), options.blur_grow)
                shown = anonymize_regions(frame.image, grown, options.replacement or options.blur,
                                          options.blur_shape)
                record["blurred"] = region_records(regions, grown, options.blur_shape)
                if frame.yuv is not None:  # only the blurred pixels are converted back
                    yuv = patch_yuv(frame.yuv, shown, grown)
            else:
                shown = draw_detections(frame.image, faces)
            sink.write(shown, frame.pts, frame.audio, yuv)
            if options.crops is not None:
                for face, crop in enumerate(aligned_crops(frame.image, faces, options.crop_size)):
                    crop_path = options.crops / f"{self.crop_name}_frame{index:06d}_face{face}.png"
                    staged.write_bytes(crop_path, encode(crop_path, crop))
                    record["faces"][face]["crop"] = str(crop_path)
            self.lines.append(json.dumps(record) + "\n")
        if self.on_frame is not None:
            self.on_frame(shown)

    def write(self, frames: Iterator, summary: VideoSummary, staged: StagedOutputs,
              total: int | None, desc: str) -> None:
        """Every frame of `frames` written: the video, then the JSON lines, staged."""
        options, source = self.options, self.source
        with VideoSink(summary.video, staged, source, options.crf, options.preset,
                       options.encoder_threads) as sink, \
                WriteBehind(QUEUE_DEPTH) as writer, \
                tqdm(total=total, unit="frame", desc=desc, dynamic_ncols=True,
                     disable=not self.progress) as bar, \
                contextlib.closing(frames):
            for frame, dets, regions in frames:
                shown = dets[dets.scores >= self.threshold]
                writer.submit(self.write_frame, summary.frames, frame, shown, regions, sink,
                              staged)
                summary.frames += 1
                summary.faces += len(shown)
                if summary.blurred is not None:
                    summary.blurred += len(regions or ())
                bar.set_postfix(faces=summary.faces, refresh=False)
                bar.update()
        summary.encoding, summary.left_out = sink.describe(), sink.left_out
        if not summary.frames:
            raise VideoUnreadable(f"no frames could be decoded from {source.name}")
        staged.path(summary.json).write_text("".join(self.lines))

    def run(self, video_path: Path, json_path: Path) -> VideoSummary:
        source, options = self.source, self.options
        summary = VideoSummary(source.name, video_path, json_path, fps=source.fps,
                               announced=source.total, max_frames=options.max_frames,
                               blurred=0 if options.blur else None)
        detector = self.step.detector
        passes, seconds = detector.total_passes, dict(detector.profile.totals)
        self.step.reset()
        steps, keyframes = dict(self.step.profile.totals), self.step.keyframes
        started = time.perf_counter()
        plan: Planned | None = None
        with self.stop:
            try:
                if options.two_pass:
                    plan = self.first_pass()
                    if plan is None:
                        summary.stopped, summary.in_first_pass = self.stop.reason, True
                        return summary
                    summary.broken, summary.first_pass = source.broken, \
                        time.perf_counter() - started
                    source.close()
                    self.source = source = source.reopen()  # pass 2 reads the video again
                with StagedOutputs() as staged:
                    if plan is not None:
                        self.write(self.replayed(plan), summary, staged, len(plan),
                                   f"{source.stem} 2/2")
                    else:
                        self.write(self.detected(), summary, staged, self.wanted, source.stem)
                    summary.stopped = self.stop.reason
                    summary.kept = bool(summary.stopped) and not source.live \
                        and (video_path.exists() or json_path.exists())
                    if not summary.kept:
                        staged.commit()
            finally:
                source.close()  # after the writer: the audio packets it muxed came from here
        summary.seconds = time.perf_counter() - started
        summary.broken = summary.broken or source.broken
        summary.stream = isinstance(source, StreamSource)
        summary.limited = self.limited or summary.frames == options.max_frames
        summary.rotation = getattr(source, "rotation", 0)
        summary.rotated_by = getattr(source, "rotated_by", "")
        summary.passes = detector.total_passes - passes
        summary.stages = {**self.profile.totals, **{
            stage: total - seconds.get(stage, 0.0)
            for stage, total in detector.profile.totals.items()}, **{
            stage: total - steps.get(stage, 0.0) for stage, total in self.step.profile.totals.items()}}
        summary.keyframes = self.step.keyframes - keyframes
        return summary


def run_video(step: KeyframeSearch, source: VideoSource | WebcamSource, video_path: Path,
              json_path: Path, options: VideoOptions = VideoOptions(),
              stop: StopRequests | None = None,
              on_frame: Callable[[np.ndarray], None] | None = None, progress: bool = True,
              crop_name: str | None = None) -> VideoSummary:
    """Detect, follow, blur or draw, and write one video: `video_path` and `json_path` appear
    together when it ends, and never replace an earlier result after an error or, for a file,
    after a stop request (Ctrl-C, SIGTERM or `stop`). `on_frame(image)` sees every written
    frame (on the writer thread); crops are named <crop_name>_frame<N>_face<M>.png (default:
    the source's stem). Closes `source`. VideoUnreadable when no frame decodes."""
    if options.two_pass and source.live:
        raise UserError("two passes need a video file (a camera or a stream cannot be read "
                        "twice)")
    job = VideoJob(step, source, options, StopRequests() if stop is None else stop, on_frame,
                   progress, crop_name)
    return job.run(video_path, json_path)


@dataclass
class BatchSummary:
    """A run over several videos: each one's summary, and why each skipped one was."""

    given: int  # videos found
    runs: list[VideoSummary] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def frames(self) -> int:
        return sum(run.frames for run in self.runs)

    @property
    def faces(self) -> int:
        return sum(run.faces for run in self.runs)

    def describe(self, passed_over: int = 0) -> str:
        """The batch's summary line: videos done and skipped, frames, faces, overall fps."""
        return (f"videos: {self.given}: {len(self.runs)} done, {len(self.skipped)} skipped (not "
                "a video, or damaged)" + f", {passed_over} more passed over" * bool(passed_over)
                + f"; {self.frames} frames, {self.faces} faces in {self.seconds:.1f} s: "
                f"{self.frames / self.seconds:.1f} fps overall")


def run_videos(step: KeyframeSearch, videos: list[Path | str | int], paths: list[VideoPaths],
               options: VideoOptions = VideoOptions(), stop: StopRequests | None = None,
               started: Callable[[VideoSource], None] = lambda source: None,
               done: Callable[[VideoSummary | VideoUnreadable], None] = lambda result: None,
               on_frame: Callable[[np.ndarray], None] | None = None, progress: bool = True
               ) -> BatchSummary:
    """Every video (a file, a stream's URL, or an int: a camera) through run_video() in turn, `started(source)`
    before and `done(summary)` after each. A video that is no video or has no frame to
    decode is skipped (`done(error)`) and the batch goes on; a stop
    request finishes the frames in hand of the current video and ends the batch, every
    completed video kept. UserError when none could be used (a single video: its own error).
    """
    stop = StopRequests() if stop is None else stop
    batch, began = BatchSummary(len(videos)), time.perf_counter()
    with stop:
        for video, where in zip(videos, paths):
            if stop:
                break
            try:
                source = open_video(video, options.timeout)
                started(source)
                run = run_video(step, source, where.video, where.json, options, stop, on_frame,
                                progress, where.name)
            except VideoUnreadable as err:
                if len(videos) == 1:
                    raise
                batch.skipped.append(str(err))
                done(err)
                continue
            batch.runs.append(run)
            done(run)
    batch.seconds = time.perf_counter() - began
    if batch.skipped and not batch.runs:
        raise UserError(f"none of the {len(videos)} videos could be read (see the warnings)")
    return batch
