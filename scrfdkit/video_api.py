"""The video job from outside: where each video's results go, and the Python API (a generator of
each frame's faces, and one call that writes an anonymised or annotated copy).

    from scrfdkit import anonymise_video, video_faces
    for index, seconds, image, faces in video_faces("clip.mp4", "models/det_500m.onnx"):
        print(index, seconds, len(faces))
    summary = anonymise_video("clip.mp4", "out/", "models/det_500m.onnx")  # out/clip_fdlm.mp4

Both take a SCRFD or a model path and the video script's options, by the same names.
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np

from .defaults import DEFAULT_THREADS, NMS_THRESHOLD, TILE_FACE
from .detections import Detections
from .detector import SCRFD
from .errors import UserError
from .files import (VIDEO_FILE_SUFFIXES, Output, check_output_file, check_output_folder,
                    check_outputs, find_images)
from .metadata import metadata_path
from .pipeline import StopRequests
from .video import VideoSource, WebcamSource, is_stream, open_video, stream_stem
from .video_sink import VIDEO_SUFFIXES, spare_threads
from .keyframes import KeyframeSearch
from .videos import (VideoJob, frame_step, VideoOptions, VideoPaths, VideoSummary, run_video,
                     video_detector)

SUFFIX = "_fdlm"  # <out>/<video stem>_fdlm.mp4 and .jsonl


def find_videos(patterns: list[str], exclude: list[Path] = (),
                passed_over: list[str] | None = None) -> list[Path | str]:
    """--video's files, folders and globs expanded (as --image's are), then its stream URLs
    as given."""
    files = [p for p in patterns if not is_stream(p)]
    return (find_images(files, exclude, passed_over, VIDEO_FILE_SUFFIXES, {}) if files else []) \
        + [p for p in patterns if is_stream(p)]


def output_names(videos: list[Path | str]) -> list[Path]:
    """Each video's name under --out (its outputs add _fdlm.mp4, _fdlm.jsonl): its stem, a
    stream's from its URL (see stream_stem); videos that share a stem keep their sub-folders
    (relative to the folder they share), and those still alike (x.mp4 and x.mkv) get their
    suffix added (x_mp4, x_mkv); streams alike get _2, _3..."""
    files = iter(_file_names([v for v in videos if not is_stream(v)]))
    names = [None if is_stream(v) else next(files) for v in videos]
    taken = Counter(str(name).lower() for name in names if name is not None)
    for index, video in enumerate(videos):
        if is_stream(video):
            stem = stream_stem(video)
            taken[stem.lower()] += 1
            seen = taken[stem.lower()]
            names[index] = Path(stem if seen == 1 else f"{stem}_{seen}")
    return names


def _file_names(videos: list[Path]) -> list[Path]:
    if not videos:
        return []
    stems = [p.stem.lower() for p in videos]
    if len(set(stems)) == len(stems):
        names = [Path(p.stem) for p in videos]
    else:
        resolved = [Path(os.path.abspath(p)) for p in videos]  # not resolve(): keep link names
        root = Path(os.path.commonpath([p.parent for p in resolved]))
        names = [p.relative_to(root).with_suffix("") for p in resolved]
    counts = Counter(str(name).lower() for name in names)
    return [name if counts[str(name).lower()] == 1 else
            name.with_name(f"{name.name}_{video.suffix.lstrip('.').lower()}")
            for name, video in zip(names, videos)]


def output_paths(out: Path, json_path: Path | None, names: list[Path], crops: Path | None = None,
                 inputs: list = ()) -> list[VideoPaths]:
    """Per video, <out>/<name>_fdlm.mp4 and .jsonl; for a single video `out` may name the file
    (its JSON lines: <its name>.jsonl) and `json_path` the JSON file. All checked against the
    inputs (videos, model and sidecar; None is skipped) and each other before any work."""
    several = len(names) > 1
    if out.suffix.lower() in VIDEO_SUFFIXES and not several:
        video = check_output_file(out, "--out")
        pairs = [(video, json_path or video.with_name(video.name + ".jsonl"))]
    elif out.suffix and not out.is_dir():
        wanted = f"a folder (for {len(names)} videos)" if several else \
            f"a folder or a video file ending in {'/'.join(sorted(VIDEO_SUFFIXES))}"
        raise UserError(f"--out {out}: give {wanted}")
    elif json_path is not None and several:
        raise UserError(f"--json names one file, and there are {len(names)} videos: leave it out "
                        f"and each video's JSON lines go beside it, <out>/<name>{SUFFIX}.jsonl")
    else:
        check_output_folder(out, "--out")
        pairs = [(out / f"{name}{SUFFIX}.mp4", json_path or out / f"{name}{SUFFIX}.jsonl")
                 for name in names]
    planned, paths = [], []
    for (video, json_file), name in zip(pairs, names):
        json_file = check_output_file(json_file, "--json")
        planned += [Output("--out", video), Output("--json", json_file)]
        if crops is not None:
            folder, stem = (crops / name).parent, Path(name).name
            planned.append(Output("--crops", folder, f"--crops {crops}: the crops "
                                  f"{stem}_frame<N>_face<M>.png", stem=stem,
                                  tail=r"_frame\d+_face\d+\.png"))
        paths.append(VideoPaths(video, json_file, str(name)))
    check_outputs(planned, [p for p in inputs if p is not None and not is_stream(p)])
    return paths


class FrameFaces(NamedTuple):
    """One frame of video_faces(): its index, its time in seconds on the source's clock, the
    upright BGR pixels, and the faces (score >= the threshold), as its JSON line has them."""

    index: int
    time: float
    image: np.ndarray
    faces: Detections


def _prepared(model: SCRFD | str | os.PathLike, tile: int | bool | None, nms: float,
              max_faces: int, size: tuple[int, int] | None, threads: int, **options
              ) -> tuple[KeyframeSearch, VideoOptions]:
    """The detection step and the options for the API's keyword arguments, as the script
    makes them from its options (tile None: on with blur, as --blur's default)."""
    options.setdefault("encoder_threads", spare_threads(threads))  # as the script does
    video_options = VideoOptions(**options)
    if isinstance(model, SCRFD):  # used as it is made: its threshold is where faces start
        return frame_step(model, video_options), video_options
    if tile is None:
        tile = bool(video_options.blur)
    tile_face = None if tile is False else TILE_FACE if tile is True else int(tile)
    return frame_step(video_detector(model, video_options, tile_face, nms, max_faces, size,
                                     threads), video_options), video_options


def _source(video: str | os.PathLike | int) -> VideoSource | WebcamSource:
    return open_video(video if isinstance(video, (int, str)) else Path(video))


def video_faces(video: str | os.PathLike | int, model: SCRFD | str | os.PathLike, *,
                tile: int | bool | None = None, nms: float = NMS_THRESHOLD, max_faces: int = 0,
                size: tuple[int, int] | None = None, threads: int = DEFAULT_THREADS,
                **options) -> Iterator[FrameFaces]:
    """(index, seconds, upright BGR frame, faces) for every frame of a video file, or of a
    camera (an int: its index) until the caller stops. A phone video's display matrix is
    applied, so frames and faces stand as players show them. `options`: VideoOptions' fields
    (score, max_frames, blur, which lowers the default score to 0.3 and tiles...); `tile`:
    faces up to this many pixels whole in a tile, True (64) or False (one pass a frame)."""
    step, video_options = _prepared(model, tile, nms, max_faces, size, threads, **options)
    source = _source(video)
    job = VideoJob(step, source, video_options, StopRequests(), progress=False)
    frames = job.detected()
    try:
        for index, (frame, dets, _) in enumerate(frames):
            yield FrameFaces(index, frame.time, frame.image, dets[dets.scores >= job.threshold])
    finally:
        frames.close()
        source.close()


def anonymise_video(video: str | os.PathLike, out: str | os.PathLike,
                    model: SCRFD | str | os.PathLike, *, blur: str | None = "gaussian",
                    json: str | os.PathLike | None = None, tile: int | bool | None = None,
                    nms: float = NMS_THRESHOLD, max_faces: int = 0,
                    size: tuple[int, int] | None = None, threads: int = DEFAULT_THREADS,
                    progress: bool = False, **options) -> VideoSummary:
    """Write a copy of `video` with every face blurred (blur=None: drawn), its audio kept, to
    `out` (a folder: <out>/<stem>_fdlm.mp4; or a file name ending in .mp4, .mov, .mkv or .webm)
    with its JSON lines beside it (or at `json`), as video_inference_fdlm.py does; return the
    summary (frames, faces, blurred regions, passes, seconds...). Options as video_faces().
    Nothing is replaced unless the whole copy is made; Ctrl-C ends it early, with the frames
    done (summary.stopped says so)."""
    source_path = Path(video)
    model_path = getattr(model, "model_path", model)
    where = output_paths(Path(out), None if json is None else Path(json), [Path(source_path.stem)],
                         options.get("crops"), [source_path, model_path, metadata_path(model_path)]
                         )[0]
    step, video_options = _prepared(model, tile, nms, max_faces, size, threads, blur=blur,
                                    **options)
    return run_video(step, VideoSource(source_path), where.video, where.json, video_options,
                     progress=progress, crop_name=where.name)
