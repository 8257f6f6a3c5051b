"""The library's defaults: one home for each threshold and size, so no two scripts disagree."""
from __future__ import annotations

import os

DEFAULT_INPUT_HW = (640, 640)  # dynamic ONNX models: SCRFD's "VGA" input
DEFAULT_THREADS = min(4, os.cpu_count() or 1)
MAX_INPUT_SIDE = 4096  # model input sides beyond this only exhaust memory

SCORE_THRESHOLD = 0.5  # SCRFD's usual operating point: few false positives on photos
BLUR_SCORE_THRESHOLD = 0.4  # anonymising: +8 points recall on 16 px faces for 0.27 false positives per image (docs/accuracy.md)
NMS_THRESHOLD = 0.4  # InsightFace's default IoU for merging duplicate boxes
EVAL_SCORE_THRESHOLD = 0.02  # SCRFD paper's WIDER FACE protocol: keep nearly every candidate,
EVAL_NMS_THRESHOLD = 0.45  # and suppress at IoU 0.45
