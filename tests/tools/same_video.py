"""Are two runs of the video script the same? JSON lines byte for byte, and the written videos
decoded frame by frame with PyAV: identical pixels, else the lowest PSNR over the frames.

    python tests/tools/same_video.py A.mp4 B.mp4 [--json-a A.jsonl --json-b B.jsonl]

Each JSON file defaults to <video name>.jsonl beside its video. Prints one line and exits 0 when
the JSON lines are identical and every frame is identical or at least --min-psnr dB (x264 with
several threads need not give the same bytes twice), 1 otherwise. Judges the files alone: it
shares no code with the script.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import av
import numpy as np


def decoded(video: Path):
    with av.open(str(video)) as container:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    error = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if error == 0 else 10 * np.log10(255.0 ** 2 / error)


def compare(video_a: Path, video_b: Path, json_a: Path, json_b: Path) -> dict:
    lines_a, lines_b = json_a.read_bytes(), json_b.read_bytes()
    frames = identical = 0
    worst = float("inf")
    shapes_differ = False
    a_frames, b_frames = decoded(video_a), decoded(video_b)
    while True:
        a, b = next(a_frames, None), next(b_frames, None)
        if a is None or b is None:
            count_differs = (a is None) != (b is None)
            break
        frames += 1
        if a.shape != b.shape:
            shapes_differ = True
            continue
        same = np.array_equal(a, b)
        identical += same
        if not same:
            worst = min(worst, psnr(a, b))
    return {"json_identical": lines_a == lines_b, "json_lines": lines_a.count(b"\n"),
            "frames": frames, "identical_frames": identical, "min_psnr": worst,
            "frame_count_differs": count_differs, "shapes_differ": shapes_differ}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("video_a", type=Path)
    parser.add_argument("video_b", type=Path)
    parser.add_argument("--json-a", type=Path)
    parser.add_argument("--json-b", type=Path)
    parser.add_argument("--min-psnr", type=float, default=45.0)
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    json_a = args.json_a or args.video_a.with_name(args.video_a.name + ".jsonl")
    json_b = args.json_b or args.video_b.with_name(args.video_b.name + ".jsonl")
    result = compare(args.video_a, args.video_b, json_a, json_b)
    ok = (result["json_identical"] and not result["frame_count_differs"]
          and not result["shapes_differ"] and result["min_psnr"] >= args.min_psnr)
    frames = "all frames identical" if result["identical_frames"] == result["frames"] else \
        f"{result['identical_frames']} identical, lowest PSNR {result['min_psnr']:.2f} dB"
    print(f"{args.label + ': ' if args.label else ''}"
          f"JSON lines {'identical' if result['json_identical'] else 'DIFFER'} "
          f"({result['json_lines']} lines); {result['frames']} frames decoded, {frames}"
          + ("; FRAME COUNTS DIFFER" if result["frame_count_differs"] else "")
          + ("; FRAME SIZES DIFFER" if result["shapes_differ"] else "")
          + f" -> {'same' if ok else 'NOT THE SAME'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
