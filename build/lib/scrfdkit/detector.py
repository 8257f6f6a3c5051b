"""SCRFD: image in, Detections out, on any backend, with the time of each stage kept."""
from __future__ import annotations

import os

import numpy as np

from .decode import decode, preprocess, suppress
from .defaults import DEFAULT_THREADS, NMS_THRESHOLD, SCORE_THRESHOLD
from .detections import Detections
from .files import to_bgr8
from .runners import Runner, open_runner
from .timing import Profile


class SCRFD:
    """Face detector over an ONNX Runtime or LiteRT runner.

    `timings` holds the seconds spent in the last call's preprocess / inference /
    postprocess (decode + nms), so scripts can report where time goes without wrapping calls.
    """

    def __init__(self, model_path: str | os.PathLike, input_hw: tuple[int, int] | None = None,
                 score_threshold: float = SCORE_THRESHOLD, nms_threshold: float = NMS_THRESHOLD,
                 max_faces: int = 0, threads: int | None = DEFAULT_THREADS,
                 runner_options: dict | None = None, runner: Runner | None = None):
        """`runner`: an already open runner of model_path (the speed test's backends)."""
        self.model_path = model_path
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.max_faces = max_faces
        self.runner = runner or open_runner(model_path, input_hw, threads,
                                            **(runner_options or {}))
        self.input_hw = self.runner.input_hw
        self.profile = Profile()
        self.candidates = 0  # before NMS, in the last call: what NMS had to sort through

    @property
    def has_landmarks(self) -> bool:
        return self.runner.has_landmarks

    @property
    def timings(self) -> dict[str, float]:
        return dict(self.profile.last)

    def prepare(self, image_bgr: np.ndarray) -> tuple[np.ndarray, float]:
        """Image -> (model input, scale back to image pixels). Safe to run in another thread
        than detect_prepared(), which is how the scripts overlap decoding with inference."""
        if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.dtype != np.uint8:
            image_bgr = to_bgr8(image_bgr)
        with self.profile("preprocess"):
            return preprocess(image_bgr, self.input_hw, self.runner.layout)

    def detect_prepared(self, prepared: tuple[np.ndarray, float]) -> Detections:
        """Inference and post-processing of a prepare()d image."""
        tensor, scale = prepared
        with self.profile("inference"):
            raw = self.runner.run(tensor)
        with self.profile("postprocess"):
            with self.profile("decode"):
                boxes, scores, landmarks = decode(raw, self.input_hw, self.runner.anchors,
                                                  self.score_threshold)
            self.candidates = len(scores)
            with self.profile("nms"):
                return suppress(boxes, scores, landmarks, scale, self.nms_threshold,
                                self.max_faces)

    def detect(self, image_bgr: np.ndarray) -> Detections:
        """Faces in one BGR image, best first, in the image's own pixels."""
        return self.detect_prepared(self.prepare(image_bgr))
