"""The measurement behind video_inference_fdlm.py's --blur defaults: leaks and cost of each
setting (score, --track-score, --track-hold, --blur-grow, --blur-shape, --two-pass) on the
sample videos, against leaks.py's reference faces.

The model runs once per video (its faces down to score 0.05 are cached in .cache/leaks/), and
every setting is then tracked and scored from those faces with the same tracker the script
runs, so a sweep of dozens of settings takes seconds.

    python tests/tools/blur_sweep.py --video ../shared/samples/*.mp4 \\
        --model models/scrfd500m_480x640_float32.tflite --hold 0 4 8 --grow 0.25 0.35
    python tests/tools/blur_sweep.py ... --model ../shared/models/det_500m.onnx --full-size
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from leaks import CACHE, frame_size, measure, reference_faces  # noqa: E402

from scrfdkit import SCRFD  # noqa: E402
from scrfdkit.defaults import VIDEO_BLUR_SCORE_THRESHOLD  # noqa: E402
from scrfdkit.faces import VIDEO_BLUR_GROW, VIDEO_BLUR_SHAPE, grow  # noqa: E402
from scrfdkit.files import atomic_write, sha256_of  # noqa: E402
from scrfdkit.tracker import (DEFAULT_HOLD, DEFAULT_TRACK_SCORE, CutDetector,  # noqa: E402
                              track_video)
from scrfdkit.video import VideoSource  # noqa: E402

CANDIDATE_SCORE = 0.05  # the lowest --track-score a sweep can try


def candidates(video: Path, model: Path, full_size: bool = False, cache: Path = CACHE
               ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per frame, the model's (boxes, scores) down to CANDIDATE_SCORE, after NMS.

    NMS keeps the higher-scored of two boxes, so the faces above any threshold are the same
    whether it is applied before or after NMS: one run serves every --track-score.
    full_size: a dynamic ONNX model at each frame's own size padded to 32 (no downscaling).
    """
    tag = ("full" if full_size else "fit") + "-script"  # frames decoded as the script does
    key = f"{video.stem}-{sha256_of(video)[:16]}-{model.name}-{sha256_of(model)[:8]}-{tag}"
    path = cache / f"{key}.npz"
    if path.exists():
        stored = np.load(path)
        rows = np.split(stored["rows"], stored["splits"])
        return [(r[:, :4], r[:, 4]) for r in rows]
    detector, rows = None, []
    for image in script_frames(video):
        height, width = image.shape[:2]
        size = (-(-height // 32) * 32, -(-width // 32) * 32) if full_size else None
        if detector is None:
            detector = SCRFD(model, size, score_threshold=CANDIDATE_SCORE)
        if full_size:
            canvas = np.zeros((*size, 3), np.uint8)
            canvas[:height, :width] = image
            image = canvas
        dets = detector.detect(image)
        rows.append(np.hstack([dets.boxes, dets.scores[:, None]]).astype(np.float32))
    cache.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as handle:
        np.savez(handle, rows=np.concatenate(rows).reshape(-1, 5),
                 splits=np.cumsum([len(r) for r in rows])[:-1])
    return [(r[:, :4], r[:, 4]) for r in rows]


def script_frames(video: Path):
    """The frames exactly as video_inference_fdlm.py decodes them (scrfdkit.video): its colour
    conversion differs from leaks.py's by about one grey level, enough to move scores near a
    threshold."""
    with VideoSource(video) as source:
        for frame in source.frames():
            yield frame.image


def shot_cuts(video: Path) -> list[bool]:
    """Whether each frame starts a new shot, as the script decides it."""
    detector = CutDetector()
    return [detector(image) for image in script_frames(video)]


def regions_for(found: list[tuple[np.ndarray, np.ndarray]], score: float, track_score: float,
                hold: int, grow_by: float, shape: str, two_pass: bool,
                cuts: list[bool] | None = None) -> list[list[dict]]:
    """What the script would write as "blurred" for each frame with these settings."""
    kept = [(b[s >= min(score, track_score)], s[s >= min(score, track_score)]) for b, s in found]
    tracked = track_video(kept, score, track_score, hold, two_pass, cuts)
    out = []
    for frame in tracked:
        boxes = grow(np.array([r.box for r in frame]).reshape(-1, 4), grow_by)
        out.append([{"box": list(box), "shape": shape} for box in boxes])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--video", type=Path, nargs="+", required=True)
    parser.add_argument("--model", type=Path, required=True,
                        help="the model the script would run (each setting below takes one or "
                             "more values, every combination is a row; defaults: the script's)")
    parser.add_argument("--full-size", action="store_true",
                        help="dynamic ONNX model at each frame's own size (padded to 32)")
    parser.add_argument("--score", type=float, nargs="+", default=[VIDEO_BLUR_SCORE_THRESHOLD])
    parser.add_argument("--track-score", type=float, nargs="+", default=[DEFAULT_TRACK_SCORE])
    parser.add_argument("--hold", type=int, nargs="+", default=[DEFAULT_HOLD])
    parser.add_argument("--grow", type=float, nargs="+", default=[VIDEO_BLUR_GROW])
    parser.add_argument("--shape", nargs="+", default=[VIDEO_BLUR_SHAPE],
                        choices=("box", "ellipse"))
    parser.add_argument("--two-pass", type=int, nargs="+", default=[0], choices=(0, 1))
    parser.add_argument("--cuts", type=int, nargs="+", default=[1], choices=(0, 1),
                        help="1: forget faces at shot changes, as the script does")
    args = parser.parse_args()
    data = []
    for video in args.video:
        data.append((video, frame_size(video), reference_faces(video),
                     candidates(video, args.model, args.full_size), shot_cuts(video)))
    names = [v.stem.split("_")[0] for v in args.video]
    print("| score | track | hold | grow | shape | 2-pass | cuts | "
          + " | ".join(f"{n} leaked | {n} regions (no face) / frame, blurred" for n in names)
          + " |")
    print("| " + " | ".join(["---:"] * (7 + 2 * len(names))) + " |")
    for score, track_score, hold, grow_by, shape, two_pass, use_cuts in itertools.product(
            args.score, args.track_score, args.hold, args.grow, args.shape, args.two_pass,
            args.cuts):
        cells = []
        for video, (width, height), refs, found, cuts in data:
            regions = regions_for(found, score, track_score, hold, grow_by, shape,
                                  bool(two_pass), cuts if use_cuts else None)
            r = measure(refs, regions, width, height, video.name)
            cells.append(f"{r.leaked} ({r.leaked_percent:.1f}%) | {r.regions_per_frame:.2f} "
                         f"({r.unmatched_per_frame:.2f}), {r.blurred_percent:.1f}%")
        print(f"| {score:g} | {track_score:g} | {hold} | {grow_by:g} | {shape} | {two_pass} | "
              f"{use_cuts} | "
              + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
