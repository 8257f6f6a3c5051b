"""Shot changes: where a video cuts to another scene, every face the tracker follows is gone.

Without this, a face's predicted box stays blurred for --track-hold frames over the new shot,
where nobody stands (on the sample videos, most held boxes after a cut were on no face).
"""
from __future__ import annotations

from collections import deque

import cv2
import numpy as np

THUMBNAIL = (64, 36)  # frames are compared as grey thumbnails of this size
CUT_CHANGE = 0.08  # mean absolute change (0..1) of the thumbnail at a cut; measured on the
# samples: cuts 0.10-0.25, the largest change within a shot 0.053 (README)
CUT_RATIO = 3.0  # and this many times the recent typical change, so a fast pan is no cut
RECENT = 15  # frames whose changes make up the typical change


def thumbnail(image_bgr: np.ndarray) -> np.ndarray:
    """A small grey float copy. Strided first: a 1080p frame costs 1 ms, not 14."""
    height, width = image_bgr.shape[:2]
    stride = max(1, min(height // (4 * THUMBNAIL[1]), width // (4 * THUMBNAIL[0])))
    small = cv2.resize(image_bgr[::stride, ::stride], THUMBNAIL, interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(small, cv2.COLOR_BGR2GRAY).astype(np.float32) / 255.0


class CutDetector:
    """Call with each frame in order; True when the frame starts a new shot."""

    def __init__(self) -> None:
        self.previous: np.ndarray | None = None
        self.recent: deque[float] = deque(maxlen=RECENT)

    def __call__(self, image_bgr: np.ndarray) -> bool:
        current = thumbnail(image_bgr)
        previous, self.previous = self.previous, current
        if previous is None:
            return False
        change = float(np.abs(current - previous).mean())
        typical = float(np.median(self.recent)) if self.recent else 0.0
        self.recent.append(change)
        return change >= CUT_CHANGE and change >= CUT_RATIO * typical
