"""Detect faces and landmarks in videos or a webcam stream with an SCRFD model.

Writes an annotated (or, with --blur, anonymised) video that keeps the source's timestamps
(variable frame rates and start offsets too) and its audio, and one JSON line per frame
(frame index, timestamp in seconds, faces with box, score and landmarks; with --blur, every
blurred region with its face's track id), then prints a summary of frames, faces and where the
time went. Decoding, inference and drawing/encoding run side by side, so a video goes at
about the model's speed. A phone's portrait video is turned upright (its display matrix).
A live stream (a URL; see --timeout) is recorded until its sender stops, it stalls, a limit or
Ctrl-C (exit 0), its .mp4 fragmented so it plays however the run ends. --ray: one video a task.

    python video_inference_fdlm.py --video data/fatboygang.mp4   # -> results/fatboygang_fdlm.mp4
    python video_inference_fdlm.py --video clip.mp4 --blur --two-pass --out /tmp/o/clip.webm
    python video_inference_fdlm.py --video archive/ "more/*.mov" --blur --out /tmp/anonymised
    python video_inference_fdlm.py --webcam 0 --show             # stop with q, Esc or Ctrl-C

.mp4 (H.264, the default) and .webm (VP9) play in browsers and phones, .mov and .mkv (H.264)
in desktop players; audio is copied, or re-encoded (AAC, Opus for .webm) where it must be.

--blur follows faces across frames (ByteTrack-style), so a face the detector misses for a few
frames stays hidden: a low-score detection (--track-score) may continue a face but never
starts one, and a face's predicted box stays blurred for --track-hold frames after its last
detection. --two-pass first detects the whole video, then also hides each face for
--track-hold frames before its first detection. --verify then looks for faces again in every
written frame (the run's model and a stronger one), and exits 1 if one is left.

A video that breaks mid-way keeps every frame decoded before the break (with a warning); one
that cannot be read is counted and skipped. Ctrl-C or SIGTERM finishes the frames in hand and
ends the batch (exit 130 or 143): every finished video is kept, the partial one appears if
there was no earlier result. Outputs never replace an earlier result after an error.
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path

import cv2

from scrfdkit.cli import (DEFAULT_MODEL, MODELS_DIR, RESULTS_DIR, WINDOW, ArgumentParser,
                          add_detector_arguments, add_face_output_arguments, add_tile_argument,
                          add_verify_arguments, add_video_blur_arguments,
                          add_video_encoding_arguments, add_video_run_arguments, camera_index,
                          check_face_output_options, check_model, cli, count, detector_options,
                          display, open_detector, open_window, show_frame, tile_setting)
from scrfdkit.defaults import VIDEO_BLUR_SCORE_THRESHOLD
from scrfdkit.errors import UserError
from scrfdkit.files import check_output_folder
from scrfdkit.metadata import metadata_path
from scrfdkit.privacy import (DEFAULT_VERIFY_MODEL, VERIFY_SCORE, verifiers_for,
                              verify_video_run)
from scrfdkit.pipeline import StopRequests
from scrfdkit.scale.reach import CONNECT_TIMEOUT, check_reachable
from scrfdkit.video import VideoUnreadable, is_stream
from scrfdkit.video_sink import VIDEO_SUFFIXES, check_encoding, spare_threads
from scrfdkit.video_api import SUFFIX, find_videos, output_names, output_paths
from scrfdkit.videos import (VIDEO_TILE_GATE, VideoOptions, VideoSummary, describe_detection,
                             frame_step, run_videos)

def parse_args(argv: list[str] | None = None):
    parser = ArgumentParser(__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--video", nargs="+", metavar="PATH",
                        help="video files, folders (searched recursively), glob patterns or "
                             "live stream URLs (see --timeout); a video that cannot be read is "
                             "counted, skipped, and the rest go on")
    source.add_argument("--webcam", type=camera_index, metavar="INDEX",
                        help="camera index (0 is the first camera); stop with Ctrl-C or "
                             "--max-frames")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                        help=".tflite or .onnx SCRFD model (default: "
                             "models/scrfd500m_480x640_float32.tflite, made by the export scripts)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR,
                        help=f"output folder, giving <out>/<video stem>{SUFFIX}.mp4 (webcam: "
                             f"webcam<INDEX>{SUFFIX}.mp4; videos sharing a stem keep their "
                             "sub-folders), or for one video a file name ending in "
                             f"{'/'.join(sorted(VIDEO_SUFFIXES))} (default: results/): H.264 "
                             "in .mp4/.mov/.mkv, VP9 in .webm")
    parser.add_argument("--json", type=Path, default=None,
                        help="one video's JSON lines file, one line per frame (default: beside "
                             f"each video, <out>/<video stem>{SUFFIX}.jsonl, or for an --out "
                             "file <that file's name>.jsonl, so x.avi and x.mkv keep their own)")
    parser.add_argument("--max-frames", type=count, default=0,
                        help="stop after this many frames (default 0: the whole video; webcam "
                             "until Ctrl-C)")
    parser.add_argument("--show", action="store_true",
                        help="also show the annotated frames in a window (q or Esc stops)")
    add_video_encoding_arguments(parser)
    add_face_output_arguments(parser, crop_name="<video>_frame<N>_face<M>.png")
    add_video_blur_arguments(parser)
    add_detector_arguments(parser, per="frame", blur_score=VIDEO_BLUR_SCORE_THRESHOLD)
    add_tile_argument(parser, per="frame", blur=True)
    add_verify_arguments(parser, "frame", DEFAULT_VERIFY_MODEL, VERIFY_SCORE)
    add_video_run_arguments(parser, CONNECT_TIMEOUT)
    args = parser.parse_args(argv)
    if not 0 <= args.blur_grow <= 2:
        parser.error(f"--blur-grow must be between 0 and 2, got {args.blur_grow:g}")
    if args.two_pass and not args.blur:
        parser.error("--two-pass goes with --blur (it decides what to hide)")
    if args.two_pass and (args.webcam is not None or any(map(is_stream, args.video))):
        parser.error("--two-pass needs video files (a camera or a stream cannot be read twice)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.show:
        open_window(WINDOW)
    model_path = check_model(args.model)
    check_face_output_options(args)
    check_encoding(args.crf, args.preset)
    if args.ray is not None:
        check_reachable(args.ray)
    if args.crops is not None:
        check_output_folder(args.crops, "--crops")
    passed_over: list[str] = []
    exclude = [args.out] + ([args.crops] if args.crops else [])
    videos = find_videos(args.video, exclude, passed_over) if args.video else [args.webcam]
    if not videos:
        raise UserError(f"no videos found in {' '.join(args.video)}")
    names = output_names(videos) if args.video else [Path(f"webcam{args.webcam}")]
    paths = output_paths(args.out, args.json, names, args.crops,
                         [*videos[:len(args.video or ())], args.model, metadata_path(args.model)])
    options = VideoOptions.of(args, encoder_threads=spare_threads(args.threads))
    tile = tile_setting(args)
    recipe = functools.partial(open_detector, detector_options(  # --ray: made per task
        args, model_path, options.detect_from, tile, tile_gate=VIDEO_TILE_GATE), args.device)
    detector = recipe()
    if args.crops and not detector.has_landmarks:
        raise UserError(f"--crops needs landmarks, and {display(model_path)} has none")
    print(f"model {display(model_path)}: {describe_detection(detector, options, tile)}"
          + (f"; {len(videos)} videos" if len(videos) > 1 else ""))
    stop = StopRequests()
    show = functools.partial(show_frame, WINDOW, stop) if args.show else None
    done = functools.partial(report, args, tile)
    try:
        if args.ray is not None:  # Ray only when asked for
            from scrfdkit.scale.video_jobs import run_videos_on_ray
            batch = run_videos_on_ray(recipe, videos, paths, options, stop, args.ray or None,
                                      args.threads, done)
        else:
            batch = run_videos(frame_step(detector, options), videos, paths, options, stop,
                               lambda s: print(f"source {s.name}: {s.total or 'unknown number of'}"
                                               f" frames at {s.fps:.2f} fps"), done, show)
    finally:
        if args.show:
            cv2.destroyAllWindows()
    if len(videos) > 1:
        print(batch.describe(len(passed_over)))
    if stop.terminated:
        return 143
    if stop.reason.startswith("interrupted") and any(isinstance(v, Path) for v in videos):
        return 130
    if not args.verify:
        return 0
    verifiers = verifiers_for(detector.model_path, detector.input_hw, args.verify_model,
                              MODELS_DIR / DEFAULT_VERIFY_MODEL, args.threads)
    return max((verify_video_run(verifiers, run.video, run.json) for run in batch.runs
                if run.written), default=0)


def report(args, tile: int | None, run: VideoSummary | VideoUnreadable) -> None:
    """What happened to one video, and its summary: overall fps beside each stage's own fps."""
    if isinstance(run, VideoUnreadable):
        print(f"warning: {run}; skipped", file=sys.stderr)
        return
    if run.outcome:
        print(run.outcome, file=sys.stderr)
    if run.in_first_pass:
        return
    frames, seconds = run.frames, run.stages
    overall = frames / run.seconds
    model = frames / seconds["inference"] if seconds["inference"] else float("inf")
    hidden = f", {run.blurred} regions blurred ({run.blurred / frames:.2f} per frame)" \
        if run.blurred is not None else ""
    print(f"summary: {frames} frames, {run.faces} faces ({run.faces / frames:.2f} per frame)"
          f"{hidden} in {run.seconds:.1f} s, {run.passes / frames:.2f} model passes per frame: "
          f"{overall:.1f} fps overall, {model:.1f} fps model only "
          f"({overall / model:.0%} of the model's speed)")
    if run.first_pass:
        print(f"  two passes: {run.first_pass:.1f} s detecting and tracking, "
              f"{run.seconds - run.first_pass:.1f} s decoding again, blurring and encoding")
    for label, spent in run.stage_seconds().items():
        print(f"  {label:15} {spent:7.2f} s {frames / spent if spent else float('inf'):8.1f} fps")
    if run.rotation:
        print(f"upright: every frame turned {run.rotation}° counter-clockwise, as the source's "
              f"{run.rotated_by} asks; the video and the JSON lines are upright")
    if tile and args.blur and args.tile is None:
        print(f"(tiled, the --blur default, for the small faces: the full search on "
              f"{run.keyframes} keyframes, --keyframe-interval; --no-tile: one pass a frame)")
    if not run.kept:
        print(f"{'anonymised' if args.blur else 'annotated'} video: {display(run.video)} "
              f"({run.encoding}; {run.fps:.2f} fps, {frames} frames)")
        if args.crops is not None:
            print(f"aligned crops ({args.crop_size}x{args.crop_size}): {display(args.crops)}/")
        print(f"faces (JSON lines): {display(run.json)}")


if __name__ == "__main__":
    cli(main)
