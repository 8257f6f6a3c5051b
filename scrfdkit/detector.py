"""SCRFD: image in, Detections out, on any backend, with the time of each stage kept."""
from __future__ import annotations

import os
import threading

import numpy as np

from .decode import decode, preprocess, suppress
from .defaults import DEFAULT_THREADS, NMS_THRESHOLD, SCORE_THRESHOLD, TILE_FACE
from .detections import Detections
from .errors import UserError
from .images import to_bgr8
from .postprocessed import detect_postprocessed
from .runners import Runner, RunnerPool, open_runner
from .tiles import TILE_GATE_SCORE, TiledInput, prepare_tiled, run_tiled
from .timing import Profile


class SCRFD:
    """Face detector over an ONNX Runtime or LiteRT runner.

    `timings` holds the seconds spent in the last call's preprocess / inference /
    postprocess (decode + nms), so scripts can report where time goes without wrapping calls;
    `passes` the model runs of the last call, `total_passes` of every call.

    tile=True adds, for photos larger than the model's input, tiles of the photo at its own
    resolution to the whole-photo pass (scrfdkit/tiles.py): small faces are found at their
    own size. `tile_face`: faces up to this many pixels lie whole in at least one tile.

    Threads: one detector may serve many threads at once (a web server's, say), each call
    getting the same faces as it would alone. Model runs go through a pool of runners
    (runners.RunnerPool): one call per LiteRT interpreter or ONNX Runtime session at a time,
    at most `workers` of them, made only when calls overlap. A tiled photo's passes are
    spread over the pool too. `timings`, `passes` and `candidates` are the calling thread's
    own (its last call's); `total_passes` and `profile.totals` count every thread's calls.
    """

    def __init__(self, model_path: str | os.PathLike, input_hw: tuple[int, int] | None = None,
                 score_threshold: float = SCORE_THRESHOLD, nms_threshold: float = NMS_THRESHOLD,
                 max_faces: int = 0, threads: int | None = DEFAULT_THREADS,
                 runner_options: dict | None = None, runner: Runner | None = None,
                 tile: bool = False, tile_face: int = TILE_FACE, workers: int | None = None,
                 tile_gate: float | None = TILE_GATE_SCORE, parallel_tiles: bool = False):
        """`runner`: an already open runner of model_path (the speed test's backends).
        `threads`: the first runner's intra-op threads (a single pass, a tiled photo's whole
        pass); `workers`: runners that may run at once (default `threads`), each extra one
        with threads // workers threads; a photo's tiles run on `workers` one-thread runners.
        `tile_gate`: tiles run only where the whole pass has a candidate scoring this much
        (None: every tile; scrfdkit/tiles.py gated_tiles). parallel_tiles=True runs a photo's
        tiles at once on `workers` one-thread runners instead of in turn on the runner of
        `threads` threads: on a shared 2-core machine in turn measured faster (docs/speed.md).
        ValueError for a threshold outside 0..1 (or NaN) or a negative max_faces."""
        for name, value in (("score_threshold", score_threshold),
                            ("nms_threshold", nms_threshold)):
            if not isinstance(value, (int, float, np.number)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a number between 0 and 1, got {value!r}")
        if not isinstance(max_faces, (int, np.integer)) or max_faces < 0:
            raise ValueError(f"max_faces must be a whole number, 0 (no limit) or more, got "
                             f"{max_faces!r}")
        self.model_path = model_path
        self.tile = tile
        self.tile_face = tile_face
        self.tile_gate = tile_gate
        self.parallel_tiles = parallel_tiles
        self._local = threading.local()  # this thread's passes and candidates
        self._lock = threading.Lock()
        self._total_passes = 0
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.max_faces = max_faces
        self.workers = max(1, int(workers or threads or DEFAULT_THREADS))
        self._clone_threads = max(1, (threads or DEFAULT_THREADS) // self.workers)
        self.runner = runner or open_runner(model_path, input_hw, threads,
                                            **(runner_options or {}))
        self.input_hw = self.runner.input_hw
        # decoded / object-detector exports (post-processing in the graph): no tiles
        if tile and getattr(self.runner, "postprocessed", False):
            raise UserError(f"tiles need a raw export, and {model_path} is a {self.runner.kind} "
                            "export: give --no-tile (or a raw export)")
        table = getattr(self.runner, "pixel_table", None)
        self._pixel_table = table() if table else None  # tiles of a quantized model
        self.profile = Profile()

    @property
    def runner(self) -> Runner:
        """The first runner of the pool (what every runner of this detector is like)."""
        return self._pool.first

    @runner.setter
    def runner(self, runner: Runner) -> None:
        self._pool = RunnerPool(runner, self.workers, self._clone_threads)
        self._tile_pool: RunnerPool | None = None

    def tile_pool(self) -> RunnerPool | None:
        """With parallel_tiles, the runners a photo's tiles run on at once: `workers`
        one-thread runners (made on the first tiled photo), or the detector's own pool when
        its runners have one thread already or there is one worker. None: in turn."""
        if not self.parallel_tiles:
            return None
        if self._tile_pool is None:
            first = self.runner
            if self.workers == 1 or getattr(first, "threads", None) == 1 or \
                    not callable(getattr(first, "clone", None)):
                self._tile_pool = self._pool
            else:
                with self._lock:
                    if self._tile_pool is None:
                        self._tile_pool = RunnerPool(first.clone(1) or first, self.workers, 1)
        return self._tile_pool

    @property
    def passes(self) -> int:
        """Model runs of this thread's last call."""
        return getattr(self._local, "passes", 0)

    @property
    def candidates(self) -> int:
        """Candidates before NMS in this thread's last single-pass call: what NMS sorted."""
        return getattr(self._local, "candidates", 0)

    @property
    def total_passes(self) -> int:
        """Model runs of every call, from every thread."""
        return self._total_passes

    def _count(self, passes: int) -> None:
        self._local.passes = passes
        with self._lock:
            self._total_passes += passes

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
        overlap decoding with inference. tile=None: as the detector was made. ValueError
        naming the problem for anything that is not an image with pixels."""
        check_image_array(image_bgr)
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
            faces, passes = run_tiled(self._pool, prepared, self.score_threshold,
                                      self.nms_threshold, self.max_faces, self.profile,
                                      self.tile_gate, self.tile_pool())
            self._count(passes)
            return faces
        self._count(1)
        tensor, scale = prepared
        if getattr(self.runner, "postprocessed", False):  # decoded / object-detector exports
            with self._pool() as runner:  # one call at a time on its interpreter
                faces, self._local.candidates = detect_postprocessed(
                    runner, tensor, scale, self.score_threshold, self.nms_threshold,
                    self.max_faces, self.profile)
            return faces
        with self.profile("inference"):
            raw = self._pool.run(tensor)
        with self.profile("postprocess"):
            with self.profile("decode"):
                boxes, scores, landmarks = decode(raw, self.input_hw, self.runner.anchors,
                                                  self.score_threshold)
                self._check_finite(raw, boxes, landmarks)
            self._local.candidates = len(scores)
            with self.profile("nms"):
                return suppress(boxes, scores, landmarks, scale, self.nms_threshold,
                                self.max_faces)

    def detect(self, image_bgr: np.ndarray, tile: bool | None = None) -> Detections:
        """Faces in one BGR image, best first, in the image's own pixels (tile=None: as the
        detector was made)."""
        return self.detect_prepared(self.prepare(image_bgr, tile))

    def _check_finite(self, raw: dict, boxes: np.ndarray, landmarks: np.ndarray | None) -> None:
        """NaN or Inf in the scores, or in the boxes and landmarks of the candidates kept, is a
        broken model (or export), never "no faces": say so. Microseconds per image."""
        for stride, level in raw.items():
            if not np.isfinite(level["score"]).all():
                bad = "NaN" if np.isnan(level["score"]).any() else "Inf"
                raise ModelOutputError(f"the model {self.model_path} gave {bad} scores at stride "
                                       f"{stride}; the file is damaged or was exported wrongly")
        for kind, values in (("boxes", boxes), ("landmarks", landmarks)):
            if values is not None and not np.isfinite(values).all():
                bad = "NaN" if np.isnan(values).any() else "Inf"
                raise ModelOutputError(f"the model {self.model_path} gave {bad} {kind}; the "
                                       "file is damaged or was exported wrongly")


class ModelOutputError(UserError):
    """The model's raw outputs hold NaN or Inf: a damaged or wrongly exported model."""


def check_image_array(image: object) -> None:
    """ValueError that names what is wrong with something given as an image (the Python API:
    None from a failed cv2.imread, a 0-d array, an image without pixels)."""
    if image is None:
        raise ValueError("the image is None (cv2.imread returns None for a file it cannot read)")
    if not isinstance(image, np.ndarray):
        raise ValueError(f"the image must be a numpy array (H x W x 3, BGR), got "
                         f"{type(image).__name__}")
    if image.ndim not in (2, 3):
        raise ValueError(f"the image must be a 2-d (gray) or 3-d (H x W x channels) array, got a "
                         f"{image.ndim}-d array of shape {image.shape}")
    if image.size == 0:
        raise ValueError(f"the image has no pixels (shape {image.shape})")
    if image.ndim == 3 and image.shape[2] not in (1, 3, 4):
        raise ValueError(f"the image must have 1, 3 or 4 channels, got shape {image.shape}")
