"""The library's defaults: one home for each threshold and size, so no two scripts disagree."""
from __future__ import annotations

import os

DEFAULT_INPUT_HW = (640, 640)  # dynamic ONNX models: SCRFD's "VGA" input
DEFAULT_THREADS = min(4, os.cpu_count() or 1)
MAX_INPUT_SIDE = 4096  # model input sides beyond this only exhaust memory

SCORE_THRESHOLD = 0.5  # SCRFD's usual operating point: few false positives on photos
BLUR_SCORE_THRESHOLD = 0.4  # anonymising: +8 points recall on 16 px faces for 0.27 false positives per image (docs/accuracy.md)
# video --blur, where tracking adds what a frame misses: 0.3 leaks 0.9 / 0.2 / 0.7% of the sample
# videos' face-frames, 0.4 leaks 3.2 / 1.6 / 1.2% (docs/video.md, tests/tools/blur_sweep.py)
VIDEO_BLUR_SCORE_THRESHOLD = 0.3
# --verify: a face found again under a blur counts from the photo default; one found where
# nothing was blurred only from this higher score, as a face the anonymiser missed must be a
# clear one: on the sample photos and videos such finds scored at most 0.61 (an open hand, a
# coat of arms, hair, 6-8 px faces, a face cut by the frame's edge; docs/faces.md)
NEVER_HIDDEN_SCORE = 0.7
NMS_THRESHOLD = 0.4  # InsightFace's default IoU for merging duplicate boxes
EVAL_SCORE_THRESHOLD = 0.02  # SCRFD paper's WIDER FACE protocol: keep nearly every candidate,
EVAL_NMS_THRESHOLD = 0.45  # and suppress at IoU 0.45
TILE_FACE = 64  # --tile: faces up to this many photo pixels lie whole in at least one tile
