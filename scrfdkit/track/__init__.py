"""Faces followed across video frames, so that a face the detector misses for a few frames is
still hidden. Imports only the top level of scrfdkit."""
from .cuts import CutDetector
from .tracker import (DEFAULT_HOLD, DEFAULT_TRACK_SCORE, DETECTED, LOW_SCORE, PREDICTED,
                      PREDICTED_BACK, FaceTracker, Region, iou_matrix, track_video)

__all__ = ["CutDetector", "DEFAULT_HOLD", "DEFAULT_TRACK_SCORE", "DETECTED", "LOW_SCORE",
           "PREDICTED", "PREDICTED_BACK", "FaceTracker", "Region", "iou_matrix", "track_video"]
