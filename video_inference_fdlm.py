"""Detect faces and landmarks in a video file or a webcam stream with an SCRFD model.

Writes an annotated (or, with --blur, anonymised) video at the source's fps and frame size
and one JSON line per frame (frame index, time in seconds, faces with box, score and
landmarks), then prints a summary of frames, faces and where the time went. Decoding,
inference and drawing/encoding run side by side, so the video goes at about the model's speed.

    python video_inference_fdlm.py --video data/fatboygang.mp4   # -> results/fatboygang_fdlm.mp4
    python video_inference_fdlm.py --video clip.mp4 --blur --out /tmp/o/clip.webm  # plays in browsers
    python video_inference_fdlm.py --webcam 0 --show             # stop with q, Esc or Ctrl-C

A video that breaks mid-way keeps every frame decoded before the break (with a warning).
Ctrl-C or SIGTERM finishes the frames in hand and closes both outputs properly (exit 130 or
143). The video and the JSON lines appear together, only once complete; after an error
neither replaces an earlier result.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from scrfdkit.cli import (DEFAULT_MODEL, RESULTS_DIR, ArgumentParser, add_detector_arguments,
                          add_face_output_arguments, camera_index, check_model, cli, count,
                          display, score_threshold)
from scrfdkit.detections import draw_detections
from scrfdkit.detector import SCRFD
from scrfdkit.errors import UserError
from scrfdkit.faces import aligned_crops, anonymize
from scrfdkit.files import (Output, StagedOutputs, check_output_file, check_output_folder,
                            check_outputs)
from scrfdkit.metadata import metadata_path
from scrfdkit.photos import encode
from scrfdkit.pipeline import WriteBehind, read_ahead
from scrfdkit.timing import Profile
from scrfdkit.video import VIDEO_SUFFIXES, VideoSink, fourcc_for, frames, open_capture

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
                             f"{'/'.join(sorted(VIDEO_SUFFIXES))} (default: results/); .mp4 "
                             "(mp4v) plays in desktop players, .webm (VP8) also in browsers")
    parser.add_argument("--json", type=Path, default=None,
                        help="JSON lines file, one line per frame (default: beside the video, "
                             f"<out>/<video stem>{SUFFIX}.jsonl, or for an --out file <that "
                             "file's name>.jsonl, so x.avi and x.mkv keep their own)")
    parser.add_argument("--max-frames", type=count, default=0,
                        help="stop after this many frames (default 0: the whole video; webcam "
                             "until Ctrl-C)")
    parser.add_argument("--show", action="store_true",
                        help="also show the annotated frames in a window (q or Esc stops)")
    parser.add_argument("--fourcc", default=None,
                        help="codec of the output video, four characters (default: mp4v for "
                             ".mp4, VP80 for .webm, MJPG for .avi)")
    add_face_output_arguments(parser, crop_name="<video>_frame<N>_face<M>.png")
    add_detector_arguments(parser, per="frame")
    return parser.parse_args(argv)


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


def main() -> int:
    args = parse_args()
    if args.show:
        open_window()
    model_path = check_model(args.model)
    capture, stem, total, fps = open_capture(args.video, args.webcam)
    video_path, json_path = output_paths(args, stem)
    fourcc = fourcc_for(video_path, args.fourcc)
    if args.crops is not None:
        check_output_folder(args.crops, "--crops")
    detector = SCRFD(model_path, args.size, score_threshold=score_threshold(args),
                     nms_threshold=args.nms, max_faces=args.max_faces, threads=args.threads)
    if args.crops and not detector.has_landmarks:
        raise UserError(f"--crops needs landmarks, and {display(model_path)} has none")
    source = display(args.video) if args.video is not None else f"webcam {args.webcam}"
    print(f"model {display(model_path)}: {detector.runner.backend}, input "
          f"{detector.input_hw[0]}x{detector.input_hw[1]}, score >= {detector.score_threshold:g}"
          f"; source {source}: {total or 'unknown number of'} frames at {fps:.2f} fps")

    profile = Profile()

    def decoded() -> tuple[np.ndarray, tuple]:
        """Frames with their model input, made in the read-ahead thread."""
        stream = frames(capture, args.max_frames)
        while True:
            with profile("decode"):
                frame = next(stream, None)
            if frame is None:
                return
            yield frame, detector.prepare(frame)

    def write_frame(index: int, frame: np.ndarray, dets, sink: VideoSink, staged: StagedOutputs,
                    lines: list[str]) -> None:
        with profile("draw+write"):
            shown = anonymize(frame, dets, args.blur) if args.blur else draw_detections(frame, dets)
            sink.write(shown)
            # time on the output video's clock, so JSON and annotated video line up
            record = {"frame": index, "time": round(index / fps, 3), "faces": dets.to_list()}
            if args.crops is not None:
                for face, crop in enumerate(aligned_crops(frame, dets, args.crop_size)):
                    crop_path = args.crops / f"{stem}_frame{index:06d}_face{face}.png"
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
    wanted = min(filter(None, (total, args.max_frames)), default=None)
    frame_count = faces = 0
    lines: list[str] = []
    started = time.perf_counter()
    try:
        with StagedOutputs() as staged:
            with VideoSink(video_path, staged, fps, fourcc) as sink, WriteBehind(QUEUE_DEPTH) as \
                    writer, tqdm(total=wanted, unit="frame", desc=stem, dynamic_ncols=True) as bar:
                for frame, prepared in read_ahead(decoded(), QUEUE_DEPTH):
                    if stop:
                        break
                    dets = detector.detect_prepared(prepared)
                    writer.submit(write_frame, frame_count, frame, dets, sink, staged, lines)
                    frame_count += 1
                    faces += len(dets)
                    bar.set_postfix(faces=faces, refresh=False)
                    bar.update()
            if not frame_count:
                raise UserError(f"no frames could be decoded from {source}")
            staged.path(json_path).write_text("".join(lines))
            staged.commit()
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        if args.show:
            cv2.destroyAllWindows()
    elapsed = time.perf_counter() - started

    stopped = stop[0] if stop else ""
    if stopped:
        print(f"{stopped} after {frame_count} frames; both outputs hold those frames",
              file=sys.stderr)
    elif total and frame_count < total and frame_count != args.max_frames:
        print(f"warning: {source} ended after {frame_count} of the {total} frames it announces "
              f"(truncated or damaged?); kept the {frame_count} frames before the break",
              file=sys.stderr)
    print_summary(frame_count, faces, elapsed, {**profile.totals, **detector.profile.totals})
    print(f"{'anonymised' if args.blur else 'annotated'} video: {display(video_path)} "
          f"({sink.size[0]}x{sink.size[1]}, {fps:.2f} fps, {frame_count} frames, {fourcc})")
    if args.crops is not None:
        print(f"aligned crops ({args.crop_size}x{args.crop_size}): {display(args.crops)}/")
    print(f"faces (JSON lines): {display(json_path)}")
    if stopped.startswith("terminated"):
        return 143
    return 130 if stopped.startswith("interrupted") and args.video is not None else 0


def print_summary(frame_count: int, faces: int, elapsed: float, seconds: dict[str, float]) -> None:
    """Overall fps beside each stage's own fps: stages overlap, so the slowest one sets the pace."""
    overall = frame_count / elapsed
    model = frame_count / seconds["inference"] if seconds["inference"] else float("inf")
    print(f"summary: {frame_count} frames, {faces} faces ({faces / frame_count:.2f} per frame) "
          f"in {elapsed:.1f} s: {overall:.1f} fps overall, {model:.1f} fps model only "
          f"({overall / model:.0%} of the model's speed)")
    for label, keys in (("decode", ("decode",)), ("preprocess", ("preprocess",)),
                        ("model", ("inference",)), ("boxes + NMS", ("postprocess",)),
                        ("draw + encode", ("draw+write",))):
        spent = sum(seconds.get(k, 0.0) for k in keys)
        rate = frame_count / spent if spent else float("inf")
        print(f"  {label:15} {spent:7.2f} s {rate:8.1f} fps")


if __name__ == "__main__":
    cli(main)
