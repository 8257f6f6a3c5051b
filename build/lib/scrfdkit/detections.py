"""Detections: the faces found in one image, as one dataclass of numpy arrays, and drawing."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
LANDMARK_COLORS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255))  # BGR
BOX_COLOR = (0, 200, 0)  # BGR


@dataclass
class Detections:
    """Faces found in one image, best first, in original-image pixels.

    Shapes are checked on construction, so a bad array fails where it is made, not later
    in a writer. Indexing with an int, slice, mask or index array returns Detections.
    """

    boxes: np.ndarray  # (N, 4) float32, x1 y1 x2 y2
    scores: np.ndarray  # (N,) float32
    landmarks: np.ndarray | None = None  # (N, 5, 2) float32: eyes, nose, mouth corners

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, np.float32).reshape(-1)
        if len(self.boxes) != len(self.scores):
            raise ValueError(f"{len(self.boxes)} boxes but {len(self.scores)} scores")
        if self.landmarks is not None:
            self.landmarks = np.asarray(self.landmarks, np.float32)
            if self.landmarks.shape != (len(self.scores), 5, 2):
                raise ValueError(f"landmarks must be ({len(self.scores)}, 5, 2), got "
                                 f"{self.landmarks.shape}")

    def __len__(self) -> int:
        return len(self.scores)

    def __getitem__(self, index) -> "Detections":
        if isinstance(index, (int, np.integer)):
            index = [index]
        return Detections(self.boxes[index], self.scores[index],
                          None if self.landmarks is None else self.landmarks[index])

    def scaled(self, factor: float) -> "Detections":
        """The same faces with coordinates divided by `factor` (model input -> image pixels)."""
        return Detections(self.boxes / factor, self.scores,
                          None if self.landmarks is None else self.landmarks / factor)

    def to_list(self, ndigits: int = 2) -> list[dict]:
        """JSON-friendly list of faces: box, score and landmarks."""
        faces = []
        for i in range(len(self)):
            face = {"box": [round(float(v), ndigits) for v in self.boxes[i]],
                    "score": round(float(self.scores[i]), 5)}
            if self.landmarks is not None:
                face["landmarks"] = [[round(float(x), ndigits), round(float(y), ndigits)]
                                     for x, y in self.landmarks[i]]
            faces.append(face)
        return faces


def draw_detections(image_bgr: np.ndarray, dets: Detections, color=BOX_COLOR) -> np.ndarray:
    """Boxes, scores and the five landmarks (each its own colour) drawn on a copy."""
    out = image_bgr.copy()
    thickness = max(1, round(max(out.shape[:2]) / 600))
    for i in range(len(dets)):
        x1, y1, x2, y2 = (int(round(v)) for v in dets.boxes[i])
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thickness)
        cv2.putText(out, f"{dets.scores[i]:.2f}", (x1, max(0, y1 - 3)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.4 * thickness, color, thickness, cv2.LINE_AA)
        if dets.landmarks is not None:
            for (x, y), lm_color in zip(dets.landmarks[i], LANDMARK_COLORS):
                cv2.circle(out, (int(round(x)), int(round(y))), thickness + 1, lm_color, -1)
    return out
