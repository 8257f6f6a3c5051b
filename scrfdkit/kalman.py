"""A constant-velocity Kalman filter of one face box: where the face will be next frame.

State: centre x, centre y, width, height, each with its velocity. Noise scales with the box's
size, as in SORT and ByteTrack, so a 20-pixel face and a 400-pixel one are followed alike.
The motion, the noise and the start are the same per coordinate and never mix coordinates,
so the 8-state filter is exactly four independent (position, velocity) filters: 2x2
covariances and a scalar division instead of an 8x8 solve (which, through LAPACK's threads,
took milliseconds per face on a busy machine).
"""
from __future__ import annotations

import numpy as np

POSITION_STD = 1 / 20  # measurement and process noise of position and size, per box side
VELOCITY_STD = 1 / 160  # process noise of the velocities, per box side


def to_centre(box: np.ndarray) -> np.ndarray:
    """x1 y1 x2 y2 -> centre x, centre y, width, height."""
    x1, y1, x2, y2 = np.asarray(box, np.float64)
    return np.array([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1])


class BoxKalman:
    """predict() a frame ahead, update() with a detected box; `box` is the current estimate."""

    def __init__(self, box: np.ndarray) -> None:
        measured = to_centre(box)
        self.position, self.velocity = measured, np.zeros(4)
        sides = self._sides()
        # per coordinate: [[var(position), cov], [cov, var(velocity)]]
        self.covariance = np.zeros((4, 2, 2))
        self.covariance[:, 0, 0] = (2 * POSITION_STD * sides) ** 2
        self.covariance[:, 1, 1] = (10 * VELOCITY_STD * sides) ** 2

    def _sides(self) -> np.ndarray:
        w, h = np.maximum(self.position[2:], 1.0)
        return np.array([w, h, w, h])

    @property
    def box(self) -> np.ndarray:
        cx, cy, w, h = self.position
        w, h = max(w, 1.0), max(h, 1.0)
        return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])

    def predict(self, still_size: bool = False) -> None:
        """One frame ahead. `still_size`: a face out of sight keeps its size (a shrinking or
        growing estimate would run away without detections to correct it)."""
        if still_size:
            self.velocity[2:] = 0.0
        sides = self._sides()
        p = self.covariance
        self.position = self.position + self.velocity
        # F P F^T with F = [[1, 1], [0, 1]], plus the process noise
        p00 = p[:, 0, 0] + 2 * p[:, 0, 1] + p[:, 1, 1] + (POSITION_STD * sides) ** 2
        p01 = p[:, 0, 1] + p[:, 1, 1]
        p11 = p[:, 1, 1] + (VELOCITY_STD * sides) ** 2
        self.covariance = np.stack([np.stack([p00, p01], 1), np.stack([p01, p11], 1)], 1)

    def update(self, box: np.ndarray) -> None:
        measured = to_centre(box)
        p = self.covariance
        innovation = p[:, 0, 0] + (POSITION_STD * self._sides()) ** 2
        gain = p[:, :, 0] / innovation[:, None]  # (4, 2): position and velocity gains
        residual = measured - self.position
        self.position = self.position + gain[:, 0] * residual
        self.velocity = self.velocity + gain[:, 1] * residual
        self.covariance = p - gain[:, :, None] * p[:, None, 0, :]
