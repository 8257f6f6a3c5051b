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
import signal
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from tqdm import tqdm

from .cuts import CutDetector
from .defaults import (DEFAULT_THREADS, NMS_THRESHOLD, SCORE_THRESHOLD, TILE_FACE,
                       VIDEO_BLUR_SCORE_THRESHOLD)
from .detections import Detections, draw_detections
from .detector import SCRFD
from .errors import UserError
from .faces import ARCFACE_SIZE, VIDEO_BLUR_GROW, VIDEO_BLUR_SHAPE, aligned_crops, \
    anonymize_regions, grow
from .files import (Output, StagedOutputs, check_output_file, check_output_folder,
                    check_outputs)
from .photos import encode
from .pipeline import WriteBehind, read_ahead
from .timing import Profile
from .tracker import DEFAULT_HOLD, DEFAULT_TRACK_SCORE, FaceTracker, Region, track_video
from .video import Frame, VideoSource, WebcamSource
from .video_sink import DEFAULT_PRESET, VIDEO_SUFFIXES, VideoSink, patch_yuv

QUEUE_DEPTH = 8  # frames decoded ahead of, and drawn/encoded behind, the model
SUFFIX = "_fdlm"  # <out>/<video stem>_fdlm.mp4 and .jsonl


@dataclass(frozen=True)
class VideoOptions:
    """What the job does with each frame: the video script's options, one field each."""

    blur: str | None = None  # None: draw boxes and landmarks; else the anonymize mode
    score: float | None = None  # faces shown and blurred from here (None: the job's default)
    blur_shape: str = VIDEO_BLUR_SHAPE
    blur_grow: float = VIDEO_BLUR_GROW
    track_score: float = DEFAULT_TRACK_SCORE  # with blur: low-score faces may continue a track
    track_hold: int = DEFAULT_HOLD
    two_pass: bool = False  # with blur: detect the whole video first (files only)
    crops: Path | None = None  # folder for aligned face crops, or None
    crop_size: int = ARCFACE_SIZE
    max_frames: int = 0  # 0: every frame
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


def video_detector(model: str | os.PathLike, options: VideoOptions, tile: int | None = None,
                   nms_threshold: float = NMS_THRESHOLD, max_faces: int = 0,
                   input_hw: tuple[int, int] | None = None, threads: int = DEFAULT_THREADS
                   ) -> SCRFD:
    """The SCRFD the job runs for these options: faces reported from options.detect_from;
    `tile`: faces up to this many pixels whole in a tile, None for one pass a frame."""
    return SCRFD(model, input_hw, score_threshold=options.detect_from,
                 nms_threshold=nms_threshold, max_faces=max_faces, threads=threads,
                 tile=tile is not None, tile_face=tile or TILE_FACE)


class EveryFrame:
    """The per-frame detection step, the one place run_video asks for a frame's faces: the
    detector on every frame. Another scheme (detecting fewer frames, say) stands in with the
    same two calls and a `detector` (whose passes and timings the summary reports)."""

    def __init__(self, detector) -> None:
        self.detector = detector

    def prepare(self, image: np.ndarray) -> object:
        """The model input, made in the read-ahead thread beside decoding."""
        return self.detector.prepare(image)

    def __call__(self, image: np.ndarray, prepared: object, cut: bool) -> Detections:
        """The frame's faces; `cut`: the frame starts a new shot."""
        return self.detector.detect_prepared(prepared)


class StopRequests:
    """Ctrl-C and SIGTERM, while inside `with`, only ask the job to stop: the frames in hand are
    finished (video and JSON line together), so the outputs hold the same frames and the
    video stays playable. Call it with a reason to ask from elsewhere (a window's q key).
    Handlers are set only in the main thread (the only one Python lets set them)."""

    def __init__(self) -> None:
        self.reasons: list[str] = []
        self._handlers: dict = {}
        self._depth = 0

    def __call__(self, reason: str) -> None:
        self.reasons.append(reason)

    def __bool__(self) -> bool:
        return bool(self.reasons)

    @property
    def reason(self) -> str:
        return self.reasons[0] if self.reasons else ""

    @property
    def terminated(self) -> bool:
        return self.reason.startswith("terminated")

    def _signalled(self, signum: int, _frame) -> None:
        self("interrupted (Ctrl-C)" if signum == signal.SIGINT else "terminated (SIGTERM)")

    def __enter__(self) -> "StopRequests":
        self._depth += 1
        if self._depth == 1 and threading.current_thread() is threading.main_thread():
            self._handlers = {sig: signal.signal(sig, self._signalled)
                              for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        self._depth -= 1
        if self._depth == 0:
            for sig, handler in self._handlers.items():
                signal.signal(sig, handler)
            self._handlers = {}


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
    max_frames: int = 0  # the frame limit it ran with (0: none)

    @property
    def written(self) -> bool:
        """The outputs were renamed into place."""
        return not (self.kept or self.in_first_pass)

    def stage_seconds(self) -> dict[str, float]:
        """Seconds per stage as the summary names them (tracking only with blur); the stages
        overlap, so the slowest one sets the pace."""
        return {label: sum(self.stages.get(key, 0.0) for key in keys)
                for label, keys in STAGES if label != "tracking" or self.blurred is not None}

    @property
    def truncated(self) -> bool:
        """The source ended before the frames it announced (damaged, or cut short)."""
        return bool(self.broken) or bool(self.announced and self.frames < self.announced
                                         and self.frames != self.max_frames)


def output_paths(out: Path, json_path: Path | None, stem: str, crops: Path | None = None,
                 inputs: list = ()) -> tuple[Path, Path]:
    """<out>/<stem>_fdlm.mp4 and .jsonl, or the file `out` names and <its name>.jsonl,
    checked against the inputs (video, model and sidecar; None is skipped) and each other
    before any work."""
    if out.suffix.lower() in VIDEO_SUFFIXES:
        video = check_output_file(out, "--out")
        default_json = video.with_name(video.name + ".jsonl")
    elif out.suffix and not out.is_dir():
        raise UserError(f"--out {out}: give a folder or a video file ending in "
                        f"{'/'.join(sorted(VIDEO_SUFFIXES))}")
    else:
        video = check_output_folder(out, "--out") / f"{stem}{SUFFIX}.mp4"
        default_json = video.with_suffix(".jsonl")
    json_path = check_output_file(json_path or default_json, "--json")
    planned = [Output("--out", video), Output("--json", json_path)]
    if crops is not None:
        planned.append(Output("--crops", crops, f"--crops {crops}: the crops "
                              f"{stem}_frame<N>_face<M>.png", stem=stem,
                              tail=r"_frame\d+_face\d+\.png"))
    check_outputs(planned, [path for path in inputs if path is not None])
    return video, json_path


def region_records(regions: list[Region], grown: np.ndarray, shape: str) -> list[dict]:
    """The JSON of what was blurred: the grown box (the ellipse's, with shape "ellipse"; it
    may reach past the frame), the face's track id, and why it was blurred."""
    return [{"box": [round(float(v), 1) for v in box], "shape": shape, "track": r.track,
             "kind": r.kind, "score": None if r.score is None else round(r.score, 4)}
            for r, box in zip(regions, grown)]


Planned = list[tuple[Detections, list[Region]]]  # two passes: each frame's faces and regions


class VideoJob:
    """One video through the job; run_video() is how it is used."""

    def __init__(self, step: EveryFrame, source: VideoSource | WebcamSource,
                 options: VideoOptions, stop: StopRequests,
                 on_frame: Callable[[np.ndarray], None] | None = None, progress: bool = True
                 ) -> None:
        self.step, self.source, self.options, self.stop = step, source, options, stop
        self.on_frame, self.progress = on_frame, progress
        self.threshold = options.threshold
        self.profile = Profile()
        self.cuts = CutDetector()
        self.lines: list[str] = []
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
            cut = False
            if self.options.blur:
                with self.profile("cuts"):
                    cut = self.cuts(frame.image)
            yield frame, self.step.prepare(frame.image), cut

    def detected(self) -> Iterator[tuple[Frame, Detections, list[Region] | None]]:
        """One pass: each frame, its faces, and with blur the regions the tracker hides."""
        tracker = FaceTracker(self.threshold, self.options.track_score,
                              self.options.track_hold) if self.options.blur else None
        frames = self.source.frames(self.options.max_frames)
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
        frames = self.source.frames(self.options.max_frames)
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
            raise UserError(f"no frames could be decoded from {self.source.name}")
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
                shown = anonymize_regions(frame.image, grown, options.blur, options.blur_shape)
                record["blurred"] = region_records(regions, grown, options.blur_shape)
                if frame.yuv is not None:  # only the blurred pixels are converted back
                    yuv = patch_yuv(frame.yuv, shown, grown)
            else:
                shown = draw_detections(frame.image, faces)
            sink.write(shown, frame.pts, frame.audio, yuv)
            if options.crops is not None:
                for face, crop in enumerate(aligned_crops(frame.image, faces, options.crop_size)):
                    crop_path = options.crops / f"{self.source.stem}_frame{index:06d}_face{face}.png"
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
        summary.encoding = sink.describe()
        if not summary.frames:
            raise UserError(f"no frames could be decoded from {source.name}")
        staged.path(summary.json).write_text("".join(self.lines))

    def run(self, video_path: Path, json_path: Path) -> VideoSummary:
        source, options = self.source, self.options
        summary = VideoSummary(source.name, video_path, json_path, fps=source.fps,
                               announced=source.total, max_frames=options.max_frames,
                               blurred=0 if options.blur else None)
        detector = self.step.detector
        passes, seconds = detector.total_passes, dict(detector.profile.totals)
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
                    summary.kept = bool(summary.stopped) and isinstance(source, VideoSource) \
                        and (video_path.exists() or json_path.exists())
                    if not summary.kept:
                        staged.commit()
            finally:
                source.close()  # after the writer: the audio packets it muxed came from here
        summary.seconds = time.perf_counter() - started
        summary.broken = summary.broken or source.broken
        summary.rotation = getattr(source, "rotation", 0)
        summary.rotated_by = getattr(source, "rotated_by", "")
        summary.passes = detector.total_passes - passes
        summary.stages = {**self.profile.totals, **{
            stage: total - seconds.get(stage, 0.0)
            for stage, total in detector.profile.totals.items()}}
        return summary


def run_video(step: EveryFrame, source: VideoSource | WebcamSource, video_path: Path,
              json_path: Path, options: VideoOptions = VideoOptions(),
              stop: StopRequests | None = None,
              on_frame: Callable[[np.ndarray], None] | None = None, progress: bool = True
              ) -> VideoSummary:
    """Detect, follow, blur or draw, and write one video: `video_path` and `json_path` appear
    together when it ends, and never replace an earlier result after an error or, for a file,
    after a stop request (Ctrl-C, SIGTERM or `stop`). `on_frame(image)` sees every written
    frame (on the writer thread). Closes `source`. UserError when no frame decodes."""
    if options.two_pass and not isinstance(source, VideoSource):
        raise UserError("two passes need a video file (a camera cannot be read twice)")
    job = VideoJob(step, source, options, StopRequests() if stop is None else stop, on_frame,
                   progress)
    return job.run(video_path, json_path)
