"""Detect faces and landmarks in a video file or a webcam stream with an SCRFD model.

Writes an annotated (or, with --blur, anonymised) video that keeps the source's timestamps
(variable frame rates and start offsets too) and its audio, and one JSON line per frame
(frame index, timestamp in seconds, faces with box, score and landmarks; with --blur, every
blurred region with its face's track id), then prints a summary of frames, faces and where the
time went. Decoding, inference and drawing/encoding run side by side, so the video goes at
about the model's speed.

    python video_inference_fdlm.py --video data/fatboygang.mp4   # -> results/fatboygang_fdlm.mp4
    python video_inference_fdlm.py --video clip.mp4 --blur --two-pass --out /tmp/o/clip.webm
    python video_inference_fdlm.py --webcam 0 --show             # stop with q, Esc or Ctrl-C

.mp4 (H.264, the default) and .webm (VP9) play in browsers and phones, .mov and .mkv (H.264)
in desktop players; audio is copied, or re-encoded (AAC, Opus for .webm) where it must be.

--blur follows faces across frames (ByteTrack-style), so a face the detector misses for a few
frames stays hidden: a low-score detection (--track-score) may continue a face but never
starts one, and a face's predicted box stays blurred for --track-hold frames after its last
detection. --two-pass first detects the whole video, then also hides each face for
--track-hold frames before its first detection. --verify then looks for faces again in every
written frame (the run's model and a stronger one), and exits 1 if one is left.

A video that breaks mid-way keeps every frame decoded before the break (with a warning).
Ctrl-C or SIGTERM finishes the frames in hand (exit 130 or 143): the partial video and JSON
lines appear if there was no earlier result there; an earlier result is kept as it was. The
outputs appear together, and never replace an earlier result after an error.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
from tqdm import tqdm

from scrfdkit.cli import (DEFAULT_MODEL, MODELS_DIR, RESULTS_DIR, ArgumentParser,
                          add_detector_arguments, add_face_output_arguments, add_tile_argument,
                          add_verify_arguments, camera_index, check_model, check_verify_options,
                          cli, count, display, fraction, score_threshold, tile_setting)
from scrfdkit.defaults import TILE_FACE, VIDEO_BLUR_SCORE_THRESHOLD
from scrfdkit.detections import Detections, draw_detections
from scrfdkit.detector import SCRFD
from scrfdkit.privacy import (DEFAULT_VERIFY_MODEL, VERIFY_SCORE, report_verification,
                              verifiers_for, verify_video)
from scrfdkit.errors import UserError
from scrfdkit.faces import (BLUR_SHAPES, VIDEO_BLUR_GROW, VIDEO_BLUR_SHAPE, aligned_crops,
                            anonymize_regions, grow)
from scrfdkit.files import (Output, StagedOutputs, check_output_file, check_output_folder,
                            check_outputs)
from scrfdkit.metadata import metadata_path
from scrfdkit.photos import encode
from scrfdkit.pipeline import WriteBehind, read_ahead
from scrfdkit.tiles import largest_tile_face
from scrfdkit.timing import Profile
from scrfdkit.track import DEFAULT_HOLD, DEFAULT_TRACK_SCORE, FaceTracker, Region, track_video
from scrfdkit.track.keyframes import KeyframeSearch, add_keyframe_argument
from scrfdkit.video import (DEFAULT_CRF, DEFAULT_PRESET, PRESETS, VIDEO_SUFFIXES, Frame,
                            VideoSink, check_encoding, open_source, patch_yuv, spare_threads)

SUFFIX = "_fdlm"  # results/<video stem>_fdlm.mp4 and .jsonl
WINDOW = "SCRFD faces (q or Esc to stop)"
QUEUE_DEPTH = 8  # frames decoded ahead of, and drawn/encoded behind, the model


def parse_args(argv: list[str] | None = None):
    parser = ArgumentParser(__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--video", type=Path, metavar="FILE", help="video file to annotate")
    source.add_argument("--webcam", type=camera_index, metavar="INDEX",
                        help="camera index (0 is the first camera); stop with Ctrl-C or "
                             "--max-frames")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                        help=".tflite or .onnx SCRFD model (default: "
                             "models/scrfd500m_480x640_float32.tflite, made by the export scripts)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR,
                        help=f"output folder, giving <out>/<video stem>{SUFFIX}.mp4 (webcam: "
                             f"webcam<INDEX>{SUFFIX}.mp4), or a file name ending in "
                             f"{'/'.join(sorted(VIDEO_SUFFIXES))} (default: results/): H.264 "
                             "in .mp4/.mov/.mkv, VP9 in .webm")
    parser.add_argument("--json", type=Path, default=None,
                        help="JSON lines file, one line per frame (default: beside the video, "
                             f"<out>/<video stem>{SUFFIX}.jsonl, or for an --out file <that "
                             "file's name>.jsonl, so x.avi and x.mkv keep their own)")
    parser.add_argument("--max-frames", type=count, default=0,
                        help="stop after this many frames (default 0: the whole video; webcam "
                             "until Ctrl-C)")
    parser.add_argument("--show", action="store_true",
                        help="also show the annotated frames in a window (q or Esc stops)")
    parser.add_argument("--crf", type=int, default=None,
                        help="video quality, 0..51, lower is better and bigger (default "
                             f"{DEFAULT_CRF['libx264']} for H.264, {DEFAULT_CRF['libvpx-vp9']} "
                             "for VP9)")
    parser.add_argument("--preset", default=DEFAULT_PRESET, metavar="NAME",
                        help=f"encoder speed: {', '.join(PRESETS)}; slower gives smaller files "
                             f"at the same quality (default {DEFAULT_PRESET}: veryfast up to "
                             "960x540, superfast up to 1280x720, ultrafast above, so encoding "
                             "keeps up with the model on 2 cores)")
    add_face_output_arguments(parser, crop_name="<video>_frame<N>_face<M>.png")
    blur = parser.add_argument_group("anonymising (--blur)")
    blur.add_argument("--blur-shape", choices=BLUR_SHAPES, default=VIDEO_BLUR_SHAPE,
                      help=f"blur the face's grown box or the ellipse inside it (default "
                           f"{VIDEO_BLUR_SHAPE})")
    blur.add_argument("--blur-grow", type=float, default=VIDEO_BLUR_GROW, metavar="F",
                      help=f"each side of a face grows by this fraction of its size before "
                           f"blurring, 0..2 (default {VIDEO_BLUR_GROW})")
    blur.add_argument("--track-score", type=fraction, default=DEFAULT_TRACK_SCORE,
                      help="detections from this score, below --score, may continue a "
                           f"followed face but never start one (default {DEFAULT_TRACK_SCORE})")
    blur.add_argument("--track-hold", type=count, default=DEFAULT_HOLD, metavar="FRAMES",
                      help="a missed face stays blurred at its predicted place for this many "
                           f"frames (default {DEFAULT_HOLD}; 0 and --track-score equal to "
                           "--score: no tracking)")
    blur.add_argument("--two-pass", action="store_true",
                      help="detect the whole video first, then also blur each face for "
                           "--track-hold frames before its first detection (video files only)")
    add_detector_arguments(parser, per="frame", blur_score=VIDEO_BLUR_SCORE_THRESHOLD)
    add_tile_argument(parser, per="frame", blur=True)
    add_keyframe_argument(parser)
    add_verify_arguments(parser, "frame", DEFAULT_VERIFY_MODEL, VERIFY_SCORE)
    args = parser.parse_args(argv)
    if not 0 <= args.blur_grow <= 2:
        parser.error(f"--blur-grow must be between 0 and 2, got {args.blur_grow:g}")
    if args.two_pass and not args.blur:
        parser.error("--two-pass goes with --blur (it decides what to hide)")
    if args.two_pass and args.webcam is not None:
        parser.error("--two-pass needs a --video file (a camera cannot be read twice)")
    return args


def output_paths(args, stem: str) -> tuple[Path, Path]:
    """<out>/<stem>_fdlm.mp4 and .jsonl, or the file named by --out and <its name>.jsonl,
    checked against the inputs (video, model and sidecar) and each other before any work."""
    if args.out.suffix.lower() in VIDEO_SUFFIXES:
        video = check_output_file(args.out, "--out")
        default_json = video.with_name(video.name + ".jsonl")
    elif args.out.suffix and not args.out.is_dir():
        raise UserError(f"--out {args.out}: give a folder or a video file ending in "
                        f"{'/'.join(sorted(VIDEO_SUFFIXES))}")
    else:
        video = check_output_folder(args.out, "--out") / f"{stem}{SUFFIX}.mp4"
        default_json = video.with_suffix(".jsonl")
    json_path = check_output_file(args.json or default_json, "--json")
    planned = [Output("--out", video), Output("--json", json_path)]
    if args.crops is not None:
        planned.append(Output("--crops", args.crops, f"--crops {args.crops}: the crops "
                              f"{stem}_frame<N>_face<M>.png", stem=stem,
                              tail=r"_frame\d+_face\d+\.png"))
    inputs = [args.video] if args.video is not None else []
    check_outputs(planned, [*inputs, args.model, metadata_path(args.model)])
    return video, json_path


def open_window() -> None:
    """Fail early and in one line without a display (OpenCV's Qt would abort the process)."""
    headless = sys.platform.startswith("linux") and not (os.environ.get("DISPLAY")
                                                         or os.environ.get("WAYLAND_DISPLAY"))
    try:
        if headless:
            raise cv2.error("no display")
        cv2.namedWindow(WINDOW, cv2.WINDOW_NORMAL)
    except cv2.error:
        raise UserError("cannot open a window (no display?); run without --show") from None


def region_records(regions: list[Region], grown: np.ndarray, shape: str) -> list[dict]:
    """The JSON of what was blurred: the grown box (the ellipse's, with shape "ellipse"; it
    may reach past the frame), the face's track id, and why it was blurred."""
    return [{"box": [round(float(v), 1) for v in box], "shape": shape, "track": r.track,
             "kind": r.kind, "score": None if r.score is None else round(r.score, 4)}
            for r, box in zip(regions, grown)]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.show:
        open_window()
    model_path = check_model(args.model)
    check_verify_options(args)
    check_encoding(args.crf, args.preset)
    if args.crops is not None:
        check_output_folder(args.crops, "--crops")
    source = open_source(args.video, args.webcam)
    video_path, json_path = output_paths(args, source.stem)
    threshold = score_threshold(args, VIDEO_BLUR_SCORE_THRESHOLD)
    # with --blur the model reports faces down to --track-score: the tracker's second chance
    detect_from = min(threshold, args.track_score) if args.blur else threshold
    tile = tile_setting(args)
    detector = SCRFD(model_path, args.size, score_threshold=detect_from, nms_threshold=args.nms,
                     max_faces=args.max_faces, threads=args.threads, tile=tile is not None,
                     tile_face=tile or TILE_FACE)
    if args.crops and not detector.has_landmarks:
        raise UserError(f"--crops needs landmarks, and {display(model_path)} has none")
    print(f"model {display(model_path)}: {detector.runner.backend}, input "
          f"{detector.input_hw[0]}x{detector.input_hw[1]}, score >= {threshold:g}"
          + (f" (tracked from {args.track_score:g}, held {args.track_hold} frames"
             f"{', two passes' if args.two_pass else ''})" if args.blur else "")
          + (f", tiled (faces up to {min(tile, largest_tile_face(detector.input_hw))} px whole "
             "in a tile)" if tile else "")
          + f"; source {source.name}: {source.total or 'unknown number of'} frames at "
            f"{source.fps:.2f} fps")
    profile = Profile()
    lines: list[str] = []
    # the full search on keyframes (scrfdkit/track/keyframes.py); shot changes found there too
    search = KeyframeSearch(detector, args.keyframe_interval, detect_from, profile)

    def decoded(frames: Iterator[Frame], prepare: bool = True
                ) -> Iterator[tuple[Frame, tuple | None, bool]]:
        """Frames with their model input and whether a new shot starts there (when wanted),
        made in the read-ahead thread."""
        while True:
            with profile("decode"):
                frame = next(frames, None)
            if frame is None:
                return
            if not prepare:
                yield frame, None, False
                continue
            prepared = search.prepare(frame.image)
            yield frame, prepared, prepared.cut

    def write_frame(index: int, frame: Frame, faces: Detections, regions: list[Region] | None,
                    sink: VideoSink, staged: StagedOutputs) -> None:
        with profile("draw+write"):
            record = {"frame": index, "time": round(frame.time, 4), "faces": faces.to_list()}
            yuv = None
            if args.blur:
                grown = grow(np.array([r.box for r in regions]), args.blur_grow)
                shown = anonymize_regions(frame.image, grown, args.blur, args.blur_shape)
                record["blurred"] = region_records(regions, grown, args.blur_shape)
                if frame.yuv is not None:  # only the blurred pixels are converted back
                    yuv = patch_yuv(frame.yuv, shown, grown)
            else:
                shown = draw_detections(frame.image, faces)
            sink.write(shown, frame.pts, frame.audio, yuv)
            if args.crops is not None:
                for face, crop in enumerate(aligned_crops(frame.image, faces, args.crop_size)):
                    crop_path = args.crops / f"{source.stem}_frame{index:06d}_face{face}.png"
                    staged.write_bytes(crop_path, encode(crop_path, crop))
                    record["faces"][face]["crop"] = str(crop_path)
            lines.append(json.dumps(record) + "\n")
        if args.show:
            cv2.imshow(WINDOW, shown)
            if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                stop.append("stopped from the window")

    # Ctrl-C and SIGTERM only ask to stop: frames in hand are finished (video and JSON line
    # together), so the two outputs always hold the same frames and the video stays playable.
    stop: list[str] = []
    handlers = {sig: signal.signal(sig, lambda signum, _: stop.append(
        "interrupted (Ctrl-C)" if signum == signal.SIGINT else "terminated (SIGTERM)"))
        for sig in (signal.SIGINT, signal.SIGTERM)}
    wanted = min(filter(None, (source.total, args.max_frames)), default=None)
    frame_count = faces = blurred = 0
    plan: list[tuple[Detections, list[Region]]] | None = None
    started = time.perf_counter()
    first_pass, broken = 0.0, ""
    try:
        if args.two_pass:  # pass 1: detect and track the whole video, nothing written
            found, cut_flags = [], []
            with tqdm(total=wanted, unit="frame", desc=f"{source.stem} 1/2", dynamic_ncols=True,
                      delay=1) as bar:
                for frame, prepared, cut in read_ahead(decoded(source.frames(args.max_frames)),
                                                       QUEUE_DEPTH):
                    if stop:
                        break
                    found.append(search.detect(prepared))
                    cut_flags.append(cut)
                    bar.update()
            if stop:
                print(f"{stop[0]} in the first pass; nothing written", file=sys.stderr)
                return 143 if stop[0].startswith("terminated") else 130
            if not found:
                raise UserError(f"no frames could be decoded from {source.name}")
            with profile("track"):
                tracked = track_video([(d.boxes, d.scores) for d in found], threshold,
                                      args.track_score, args.track_hold, True, cut_flags)
            plan, broken = list(zip(found, tracked)), source.broken
            first_pass = time.perf_counter() - started
            source.close()
            source = open_source(args.video, None)  # pass 2 reads the video again
        tracker = FaceTracker(threshold, args.track_score, args.track_hold) if args.blur else None
        with StagedOutputs() as staged:
            with VideoSink(video_path, staged, source, args.crf, args.preset,
                           spare_threads(args.threads)) as sink, \
                    WriteBehind(QUEUE_DEPTH) as writer, \
                    tqdm(total=len(plan) if plan is not None else wanted, unit="frame",
                         desc=source.stem + (" 2/2" if plan is not None else ""),
                         dynamic_ncols=True) as bar:
                frames = source.frames(len(plan) if plan is not None else args.max_frames)
                for frame, prepared, cut in read_ahead(decoded(frames, plan is None),
                                                       QUEUE_DEPTH):
                    if stop or (plan is not None and frame_count >= len(plan)):
                        break
                    if plan is not None:
                        dets, regions = plan[frame_count]
                    else:
                        dets, regions = search.detect(prepared), None
                        if tracker is not None:
                            with profile("track"):
                                if cut:
                                    tracker.reset()
                                regions = tracker.update(dets.boxes, dets.scores)
                    shown_faces = dets[dets.scores >= threshold]
                    writer.submit(write_frame, frame_count, frame, shown_faces, regions, sink,
                                  staged)
                    frame_count += 1
                    faces += len(shown_faces)
                    blurred += len(regions or ())
                    bar.set_postfix(faces=faces, refresh=False)
                    bar.update()
            if not frame_count:
                raise UserError(f"no frames could be decoded from {source.name}")
            staged.path(json_path).write_text("".join(lines))
            stopped = stop[0] if stop else ""
            kept = stopped and args.video is not None and (video_path.exists()
                                                           or json_path.exists())
            if not kept:
                staged.commit()
    finally:
        source.close()  # after the writer: the audio packets it muxed came from here
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        if args.show:
            cv2.destroyAllWindows()
    elapsed = time.perf_counter() - started

    if kept:
        print(f"{stopped} after {frame_count} frames; the earlier {display(video_path)} and "
              f"{display(json_path)} are kept as they were", file=sys.stderr)
    elif stopped:
        print(f"{stopped} after {frame_count} frames; both outputs hold those frames",
              file=sys.stderr)
    elif broken or source.broken or (source.total and frame_count < source.total
                                     and frame_count != args.max_frames):
        print(f"warning: {source.name} ended after {frame_count} of the "
              f"{source.total or 'unknown number of'} frames it announces (truncated or "
              f"damaged?); kept the {frame_count} frames before the break", file=sys.stderr)
    seconds = {**profile.totals, **detector.profile.totals}
    print_summary(frame_count, faces, blurred if args.blur else None, elapsed, first_pass,
                  seconds, detector.total_passes)
    if tile and args.blur and args.tile is None:
        print(f"(tiled, the --blur default, for the small faces: the full search on "
              f"{search.keyframes} keyframes, --keyframe-interval; --no-tile: one pass a frame)")
    if not kept:
        print(f"{'anonymised' if args.blur else 'annotated'} video: {display(video_path)} "
              f"({sink.describe()}; {source.fps:.2f} fps, {frame_count} frames)")
        if args.crops is not None:
            print(f"aligned crops ({args.crop_size}x{args.crop_size}): {display(args.crops)}/")
        print(f"faces (JSON lines): {display(json_path)}")
    if stopped.startswith("terminated"):
        return 143
    if stopped.startswith("interrupted") and args.video is not None:
        return 130
    return verify(args, detector, video_path, json_path) if args.verify else 0


def verify(args, detector: SCRFD, video_path: Path, json_path: Path) -> int:
    """--verify: every written frame searched again; each frame with a face left, and exit 1."""
    verifiers = verifiers_for(detector.model_path, detector.input_hw, args.verify_model,
                              MODELS_DIR / DEFAULT_VERIFY_MODEL, args.threads)
    records = [json.loads(line) for line in json_path.read_text().splitlines()]
    results = ((f"{video_path}#frame{index}", left)
               for index, left in verify_video(verifiers, video_path, records))
    return report_verification(verifiers, results, len(records), "frame")


def print_summary(frame_count: int, faces: int, blurred: int | None, elapsed: float,
                  first_pass: float, seconds: dict[str, float], passes: int) -> None:
    """Overall fps beside each stage's own fps: stages overlap, so the slowest one sets the pace."""
    overall = frame_count / elapsed
    model = frame_count / seconds["inference"] if seconds["inference"] else float("inf")
    hidden = f", {blurred} regions blurred ({blurred / frame_count:.2f} per frame)" \
        if blurred is not None else ""
    print(f"summary: {frame_count} frames, {faces} faces ({faces / frame_count:.2f} per frame)"
          f"{hidden} in {elapsed:.1f} s, {passes / frame_count:.2f} model passes per frame: "
          f"{overall:.1f} fps overall, {model:.1f} fps model only "
          f"({overall / model:.0%} of the model's speed)")
    if first_pass:
        print(f"  two passes: {first_pass:.1f} s detecting and tracking, "
              f"{elapsed - first_pass:.1f} s decoding again, blurring and encoding")
    for label, keys in (("decode", ("decode",)), ("preprocess", ("preprocess",)),
                        ("model", ("inference",)), ("boxes + NMS", ("postprocess",)),
                        ("tracking", ("track", "cuts")), ("draw + encode", ("draw+write",))):
        spent = sum(seconds.get(k, 0.0) for k in keys)
        if label == "tracking" and blurred is None:
            continue
        rate = frame_count / spent if spent else float("inf")
        print(f"  {label:15} {spent:7.2f} s {rate:8.1f} fps")


if __name__ == "__main__":
    cli(main)
