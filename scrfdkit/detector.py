"""SCRFD: image in, Detections out, on any backend, with the time of each stage kept."""
from __future__ import annotations

import os

import numpy as np

from .cli import DEFAULT_THREADS, NMS_THRESHOLD, SCORE_THRESHOLD, TILE_FACE
from .decode import postprocess, preprocess
from .detections import Detections
from .files import to_bgr8
from .runners import open_runner
from .tiles import TiledInput, prepare_tiled, run_tiled
from .timing import Profile


class SCRFD:
    """Face detector over an ONNX Runtime or LiteRT runner.

    `timings` holds the seconds spent in the last call's preprocess / inference /
    postprocess, so scripts can report where time goes without wrapping the calls;
    `passes` the model runs of the last call, `total_passes` of every call.

    tile=True adds, for photos larger than the model's input, tiles of the photo at its own
    resolution to the whole-photo pass (scrfdkit/tiles.py): small faces are found at their
    own size. `tile_face`: faces up to this many pixels lie whole in at least one tile.
    """

    def __init__(self, model_path: str | os.PathLike, input_hw: tuple[int, int] | None = None,
                 score_threshold: float = SCORE_THRESHOLD, nms_threshold: float = NMS_THRESHOLD,
                 max_faces: int = 0, threads: int | None = DEFAULT_THREADS,
                 runner_options: dict | None = None, tile: bool = False,
                 tile_face: int = TILE_FACE):
        self.model_path = model_path
        self.tile = tile
        self.tile_face = tile_face
        self.passes = self.total_passes = 0
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.max_faces = max_faces
        self.runner = open_runner(model_path, input_hw, threads, **(runner_options or {}))
        self.input_hw = self.runner.input_hw
        table = getattr(self.runner, "pixel_table", None)
        self._pixel_table = table() if table else None  # tiles of a quantized model
        self.profile = Profile()

    @property
    def has_landmarks(self) -> bool:
        return self.runner.has_landmarks

    @property
    def timings(self) -> dict[str, float]:
        return dict(self.profile.last)

    def prepare(self, image_bgr: np.ndarray, tile: bool | None = None
                ) -> tuple[np.ndarray, float] | TiledInput:
        """Image -> (model input, scale back to image pixels), or with tiles a TiledInput.
        Safe to run in another thread than detect_prepared(), which is how the scripts
        overlap decoding with inference. tile=None: as the detector was made."""
        if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.dtype != np.uint8:
            image_bgr = to_bgr8(image_bgr)
        with self.profile("preprocess"):
            if self.tile if tile is None else tile:
                return prepare_tiled(image_bgr, self.input_hw, self.runner.layout,
                                     self.tile_face, self._pixel_table)
            return preprocess(image_bgr, self.input_hw, self.runner.layout)

    def detect_prepared(self, prepared: tuple[np.ndarray, float] | TiledInput) -> Detections:
        """Inference and post-processing of a prepare()d image."""
        if isinstance(prepared, TiledInput):
            faces, self.passes = run_tiled(self.runner, prepared, self.score_threshold,
                                           self.nms_threshold, self.max_faces, self.profile)
            self.total_passes += self.passes
            return faces
        self.passes = 1
        self.total_passes += 1
        tensor, scale = prepared
        with self.profile("inference"):
            raw = self.runner.run(tensor)
        with self.profile("postprocess"):
            return postprocess(raw, self.input_hw, self.runner.anchors, scale,
                               self.score_threshold, self.nms_threshold, self.max_faces)

    def detect(self, image_bgr: np.ndarray, tile: bool | None = None) -> Detections:
        """Faces in one BGR image, best first, in the image's own pixels (tile=None: as the
        detector was made)."""
        return self.detect_prepared(self.prepare(image_bgr, tile))
