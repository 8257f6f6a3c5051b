"""Detect faces and landmarks in a video file or a webcam stream with an SCRFD model.

Writes an annotated video at the source's fps and frame size and one JSON line per frame
(frame index, time in seconds, faces with box, score and landmarks), then prints a summary
of frames, faces and where the time went (decode, inference, post-processing).

    python video_inference_fdlm.py --video data/fatboygang.mp4   # -> results/fatboygang_fdlm.mp4
    python video_inference_fdlm.py --webcam 0 --show             # stop with q, Esc or Ctrl-C
    python video_inference_fdlm.py --video clip.mp4 --max-frames 30 --out /tmp/o

A video that breaks mid-way keeps every frame decoded before the break (with a warning);
Ctrl-C still closes the output properly. Outputs are written under temporary names and
renamed only once complete, so no half-written file is ever left behind.
"""
from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import time
from pathlib import Path

import cv2
from tqdm import tqdm

from detector import (DEFAULT_MODEL, REPO, SCRFD, UserError, atomic_path,
                      add_detector_arguments, check_model, cli, display, draw_detections, jsonl_writer)

# Defaults are relative to this project folder, so the script runs from anywhere.
DEFAULT_OUT = REPO / "results"
SUFFIX = "_fdlm"  # results/<video stem>_fdlm.mp4 and .jsonl
VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov"}
FOURCC = "mp4v"  # MPEG-4 Part 2: always available in OpenCV's FFmpeg, plays in common players
FALLBACK_FPS = 30.0  # when the source does not say (many webcams)
WINDOW = "SCRFD faces (q or Esc to stop)"
# FFmpeg's own messages about damaged frames would tear through the progress bar; we report
# broken input ourselves. Export OPENCV_FFMPEG_LOGLEVEL=16 to see them again.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--video", type=Path, metavar="FILE", help="video file to annotate")
    source.add_argument("--webcam", type=int, metavar="INDEX",
                        help="camera index (0 is the first camera); stop with Ctrl-C or "
                             "--max-frames")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                        help=".tflite or .onnx SCRFD model (default: "
                             "models/scrfd500m_480x640_float32.tflite, made by the export scripts)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"output folder, giving <out>/<video stem>{SUFFIX}.mp4 (webcam: "
                             f"webcam<INDEX>{SUFFIX}.mp4), or a file name ending in "
                             f"{'/'.join(sorted(VIDEO_SUFFIXES))} (default: results/)")
    parser.add_argument("--json", type=Path, default=None,
                        help="JSON lines file, one line per frame (default: beside the video, "
                             f"<out>/<video stem>{SUFFIX}.jsonl)")
    parser.add_argument("--max-frames", type=int, default=0,
                        help="stop after this many frames (default 0: the whole video; webcam "
                             "until Ctrl-C)")
    parser.add_argument("--show", action="store_true",
                        help="also show the annotated frames in a window (q or Esc stops)")
    parser.add_argument("--fourcc", default=FOURCC,
                        help=f"codec of the output video, four characters (default {FOURCC}; "
                             "try MJPG with an .avi --out if your player cannot open the .mp4)")
    add_detector_arguments(parser, per="frame")
    return parser.parse_args(argv)


def open_source(args: argparse.Namespace) -> tuple[cv2.VideoCapture, str, int | None, float]:
    """Open the video or camera: (capture, name stem, frame count or None, fps)."""
    if args.video is not None:
        if not args.video.is_file():
            raise UserError(f"no such video file: {args.video}")
        capture = cv2.VideoCapture(str(args.video))
        if not capture.isOpened():
            raise UserError(f"cannot open video {args.video}: not a video, damaged (for example "
                            "an .mp4 cut short before its index), or a format OpenCV cannot read")
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        stem, total = args.video.stem, count if count > 0 else None
    else:
        level = cv2.getLogLevel()
        cv2.setLogLevel(0)  # silent: OpenCV's warnings about missing cameras; we say it in one line
        try:
            capture = cv2.VideoCapture(args.webcam)
        finally:
            cv2.setLogLevel(level)
        if not capture.isOpened():
            raise UserError(f"cannot open webcam {args.webcam} (no such camera, or it is busy)")
        stem, total = f"webcam{args.webcam}", None
    fps = capture.get(cv2.CAP_PROP_FPS)
    if not math.isfinite(fps) or not 0 < fps <= 1000:
        print(f"note: the source does not report its fps; writing at {FALLBACK_FPS:g}",
              file=sys.stderr)
        fps = FALLBACK_FPS
    return capture, stem, total, fps


def output_paths(args: argparse.Namespace, stem: str) -> tuple[Path, Path]:
    """<out>/<stem>_fdlm.mp4 and .jsonl, or the file named by --out and a .jsonl beside it."""
    if args.out.suffix.lower() in VIDEO_SUFFIXES:
        video = args.out
    elif args.out.suffix:
        raise UserError(f"--out {args.out}: give a folder or a video file ending in "
                        f"{'/'.join(sorted(VIDEO_SUFFIXES))}")
    else:
        video = args.out / f"{stem}{SUFFIX}.mp4"
    if args.video is not None and video.resolve() == args.video.resolve():
        raise UserError(f"--out {video} would overwrite the input video; choose another name")
    json_path = args.json or video.with_suffix(".jsonl")
    if json_path.is_dir():
        raise UserError(f"--json {json_path} is a folder; give a file name such as faces.jsonl")
    return video, json_path


def open_writer(path: Path, fourcc: str, fps: float, width: int, height: int) -> cv2.VideoWriter:
    if len(fourcc) != 4:
        raise UserError(f"--fourcc must be four characters, got {fourcc!r}")
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    if not writer.isOpened():
        raise UserError(f"cannot write a {path.suffix} video with codec {fourcc}; try "
                        "--fourcc MJPG with an .avi --out")
    return writer


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
    if args.max_frames < 0:
        raise UserError(f"--max-frames must be 0 (no limit) or more, got {args.max_frames}")
    if args.show:
        open_window()
    model_path = check_model(args.model)
    capture, stem, total, fps = open_source(args)
    video_path, json_path = output_paths(args, stem)
    detector = SCRFD(model_path, args.size, score_threshold=args.score,
                     nms_threshold=args.nms, max_faces=args.max_faces, threads=args.threads)
    source = display(args.video) if args.video is not None else f"webcam {args.webcam}"
    print(f"model {display(model_path)}: {detector.runner.backend}, input "
          f"{detector.input_hw[0]}x{detector.input_hw[1]}; source {source}: "
          f"{total or 'unknown number of'} frames at {fps:.2f} fps")

    wanted = min(filter(None, (total, args.max_frames)), default=None)
    frames = faces = 0
    size = None  # (width, height) of the first frame: the output's frame size
    stopped = ""  # why we stopped before the source ended, if we did
    seconds = {"decode": 0.0, "preprocess": 0.0, "inference": 0.0, "postprocess": 0.0,
               "draw+write": 0.0}
    started = time.perf_counter()
    with atomic_path(video_path) as tmp_video, jsonl_writer(json_path) as write_json:
        writer = None
        bar = tqdm(total=wanted, unit="frame", desc=stem, dynamic_ncols=True)
        # Ctrl-C only asks to stop: the frame in hand is finished (video and JSON line
        # together), so the two outputs always hold the same frames.
        interrupted: list[int] = []
        previous_handler = signal.signal(signal.SIGINT, lambda *_: interrupted.append(1))
        try:
            while (not args.max_frames or frames < args.max_frames) and not interrupted:
                t0 = time.perf_counter()
                ok, frame = capture.read()
                t1 = time.perf_counter()
                seconds["decode"] += t1 - t0
                if not ok:
                    break
                dets = detector.detect(frame)
                t2 = time.perf_counter()
                if writer is None:
                    size = (frame.shape[1], frame.shape[0])
                    writer = open_writer(tmp_video, args.fourcc, fps, *size)
                annotated = draw_detections(frame, dets)
                if (annotated.shape[1], annotated.shape[0]) != size:  # a camera switched modes
                    annotated = cv2.resize(annotated, size)
                writer.write(annotated)
                # time on the output video's clock, so JSON and annotated video line up
                write_json({"frame": frames, "time": round(frames / fps, 3),
                            "faces": dets.to_list()})
                frames += 1
                faces += len(dets)
                seconds["draw+write"] += time.perf_counter() - t2
                for key, value in detector.timings.items():
                    seconds[key] += value
                bar.set_postfix(faces=faces, refresh=False)
                bar.update()
                if args.show:
                    cv2.imshow(WINDOW, annotated)
                    if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                        stopped = "stopped from the window"
                        break
            if interrupted:
                stopped = "interrupted (Ctrl-C)"
        except KeyboardInterrupt:
            stopped = "interrupted (Ctrl-C)"
        finally:
            signal.signal(signal.SIGINT, previous_handler)
            bar.close()
            capture.release()
            if writer is not None:
                writer.release()  # writes the container's index: the file is complete from here
            if args.show:
                cv2.destroyAllWindows()
        if not frames:
            raise UserError(f"no frames could be decoded from {source}")
    elapsed = time.perf_counter() - started

    if stopped:
        print(f"{stopped} after {frames} frames", file=sys.stderr)
    elif total and frames < total and frames != args.max_frames:
        print(f"warning: {source} ended after {frames} of the {total} frames it announces "
              f"(truncated or damaged?); kept the {frames} frames before the break",
              file=sys.stderr)

    def rate(*keys: str) -> str:
        spent = sum(seconds[k] for k in keys)
        return f"{spent:7.2f} s {frames / spent if spent else float('inf'):8.1f} fps"
    print(f"summary: {frames} frames, {faces} faces ({faces / frames:.2f} per frame) in "
          f"{elapsed:.1f} s: {frames / elapsed:.1f} fps overall")
    print(f"  decode           {rate('decode')}")
    print(f"  inference        {rate('preprocess', 'inference')}  (preprocess "
          f"{seconds['preprocess']:.2f} s, model {seconds['inference']:.2f} s)")
    print(f"  post-processing  {rate('postprocess', 'draw+write')}  (boxes + NMS "
          f"{seconds['postprocess']:.2f} s, draw + encode + JSON {seconds['draw+write']:.2f} s)")
    print(f"annotated video: {display(video_path)} ({size[0]}x{size[1]}, {fps:.2f} fps, "
          f"{frames} frames)")
    print(f"faces (JSON lines): {display(json_path)}")
    return 130 if stopped.startswith("interrupted") and args.video is not None else 0


if __name__ == "__main__":
    cli(main)
