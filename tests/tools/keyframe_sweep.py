"""The measurement behind --keyframe-interval and the patch settings (scrfdkit/keyframes.py):
leaks and model passes of each setting on a video, against leaks.py's reference faces.

Each setting replays the script's --blur loop (frames decoded as the script decodes them, the
keyframe search, the blur tracker, regions grown as the script grows them); the full searches
of keyframes are cached per frame (in memory), so a sweep runs only the passes between them.

    python tests/tools/keyframe_sweep.py --video ../shared/samples/walking_1080p.mp4 \\
        --setting '{"interval": 10}' '{"interval": 10, "follow": 25}' \\
        '{"interval": 10, "MIN_PATCH": 96}'

A setting's lower-case keys are KeyframeSearch's arguments; upper-case ones set the module's
constants (MIN_PATCH, GAP) for that setting.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from blur_sweep import script_frames  # noqa: E402
from leaks import frame_size, measure, reference_faces  # noqa: E402

import scrfdkit.keyframes as keyframes  # noqa: E402
from scrfdkit import SCRFD  # noqa: E402
from scrfdkit.defaults import VIDEO_BLUR_SCORE_THRESHOLD  # noqa: E402
from scrfdkit.faces import VIDEO_BLUR_GROW, VIDEO_BLUR_SHAPE, grow  # noqa: E402
from scrfdkit.tracker import DEFAULT_HOLD, DEFAULT_TRACK_SCORE, FaceTracker  # noqa: E402


class CachedKeyframes:
    """The detector, with each frame's full search computed once for every setting."""

    def __init__(self, detector: SCRFD, frames: list[np.ndarray]) -> None:
        self.detector, self.frames = detector, frames
        self.index = {id(frame): i for i, frame in enumerate(frames)}
        self.cache: dict[int, tuple] = {}
        self.total_passes = 0

    def __getattr__(self, name):  # input_hw, tile, tile_face, runner, thresholds
        return getattr(self.detector, name)

    def prepare(self, image, tile=None):
        if tile is None or tile:
            return ("full", self.index[id(image)])
        return self.detector.prepare(image, tile=False)

    def detect_prepared(self, prepared):
        if not isinstance(prepared[0], str):
            faces = self.detector.detect_prepared(prepared)
            self.total_passes += 1
            return faces
        i = prepared[1]
        if i not in self.cache:
            self.cache[i] = (self.detector.detect(self.frames[i], tile=True), self.detector.passes)
        faces, passes = self.cache[i]
        self.total_passes += passes
        return faces

    def detect(self, image, tile=None):
        faces = self.detector.detect(image, tile=tile)
        self.total_passes += self.detector.passes
        return faces


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--video", type=Path, required=True)
    parser.add_argument("--model", type=Path,
                        default=Path("models/scrfd500m_480x640_float32.tflite"))
    parser.add_argument("--setting", nargs="+", default=['{}'], help="JSON objects")
    parser.add_argument("--max-frames", type=int, default=0)
    args = parser.parse_args()
    frames = list(itertools.islice(script_frames(args.video), args.max_frames or None))
    references = reference_faces(args.video)[:len(frames)]
    width, height = frame_size(args.video)
    score, track_score = VIDEO_BLUR_SCORE_THRESHOLD, DEFAULT_TRACK_SCORE
    detector = CachedKeyframes(SCRFD(args.model, None, score_threshold=min(score, track_score),
                                     tile=True, threads=1), frames)
    defaults = {name: getattr(keyframes, name) for name in ("MIN_PATCH", "GAP")}
    for text in args.setting:
        setting = json.loads(text)
        constants = {k: v for k, v in setting.items() if k.isupper()}
        for name, value in {**defaults, **constants}.items():
            setattr(keyframes, name, value)
        search = keyframes.KeyframeSearch(detector, **{k: v for k, v in setting.items()
                                                       if not k.isupper()})
        tracker = FaceTracker(score, track_score, DEFAULT_HOLD)
        regions, before = [], detector.total_passes
        for image in frames:
            frame = search.prepare(image)
            dets = search.detect(frame)
            if frame.cut:
                tracker.reset()
            boxes = grow(np.array([r.box for r in tracker.update(dets.boxes, dets.scores)]
                                  ).reshape(-1, 4), VIDEO_BLUR_GROW)
            regions.append([{"box": list(b), "shape": VIDEO_BLUR_SHAPE} for b in boxes])
        passes = detector.total_passes - before
        report = measure(references, regions, width, height, args.video.name)
        print(f"{json.dumps(setting)}: leaked {report.leaked} of {report.face_frames} "
              f"({report.leaked_percent:.2f}%), {passes / len(frames):.2f} passes per frame, "
              f"{report.regions_per_frame:.2f} regions per frame "
              f"({report.unmatched_per_frame:.2f} on no face), "
              f"{report.blurred_percent:.2f}% blurred, {search.keyframes} keyframes; leaks "
              f"(frame, px): {report.leaked_at[:12]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
