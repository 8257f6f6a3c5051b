"""Model-facing code shared by every script: one preprocessing, one decode, one NMS.

SCRFD (InsightFace) is an anchor-free detector with three stride levels (8, 16, 32) and
two anchor centres per feature-map cell. For each level it outputs a face score, four
box distances (left, top, right, bottom) and optionally five landmark offsets, all
in units of the stride. This module turns an image into the model input, runs ONNX
Runtime or LiteRT, and turns the raw outputs back into boxes in image pixels.

TensorFlow is deliberately never imported here, so inference starts fast and small.
"""
from __future__ import annotations

import contextlib
import functools
import glob
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import cv2
import numpy as np

STRIDES = (8, 16, 32)
INPUT_MEAN = 127.5  # SCRFD normalisation: (pixel - 127.5) / 128, RGB
INPUT_STD = 128.0
CHANNELS_TO_KIND = {1: "score", 4: "bbox", 10: "kps"}
KINDS = ("score", "bbox", "kps")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
DEFAULT_THREADS = min(4, os.cpu_count() or 1)
METADATA_FORMAT = "scrfd-tflite/1"


class UserError(Exception):
    """A problem with what the user gave us; scripts print it on one line and exit 2."""


def cli(main: Callable[[], object]) -> None:
    """Run a script's main(): user errors become one line on stderr and exit code 2."""
    try:
        result = main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(result if isinstance(result, int) else 0)


# ----------------------------------------------------------------------------- detections
@dataclass
class Detections:
    """Faces found in one image, sorted by score, in original-image pixels."""

    boxes: np.ndarray  # (N, 4) float32, x1 y1 x2 y2
    scores: np.ndarray  # (N,) float32
    landmarks: np.ndarray | None = None  # (N, 5, 2) float32: eyes, nose, mouth corners

    @classmethod
    def empty(cls, with_landmarks: bool = True) -> "Detections":
        lm = np.zeros((0, 5, 2), np.float32) if with_landmarks else None
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), lm)

    def __len__(self) -> int:
        return len(self.scores)

    def __getitem__(self, index) -> "Detections":
        lm = None if self.landmarks is None else self.landmarks[index]
        return Detections(self.boxes[index], self.scores[index], lm)

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


# ----------------------------------------------------------------------------- files
def find_images(patterns: Sequence[str | os.PathLike]) -> list[Path]:
    """Expand files, folders (recursively) and glob patterns into a sorted list of images."""
    found: list[Path] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            found.append(path)
        elif any(ch in str(pattern) for ch in "*?["):
            matches = sorted(Path(p) for p in glob.glob(str(pattern), recursive=True))
            if not matches:
                raise UserError(f"no files match {pattern}")
            found += [p for p in matches if p.is_file()]
        else:
            raise UserError(f"no such file or folder: {pattern}")
    return list(dict.fromkeys(found))


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read any image as 8-bit BGR (grayscale, RGBA and 16-bit included); UserError if unreadable."""
    try:
        data = np.fromfile(str(path), np.uint8)
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror or err}") from None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH) if data.size else None
    if image is None:
        raise UserError(f"cannot decode image {path} (corrupt or not an image)")
    return to_bgr8(image)


def to_bgr8(image: np.ndarray) -> np.ndarray:
    """Bring an array from any common image format to contiguous uint8 BGR."""
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        peak = 1.0 if image.dtype.kind == "f" and float(image.max(initial=0)) <= 1.0 else 255.0
        image = np.clip(image.astype(np.float32) * (255.0 / peak), 0, 255).astype(np.uint8)
    if image.ndim == 2 or image.shape[-1] == 1:
        image = cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2BGR)
    elif image.shape[-1] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return np.ascontiguousarray(image)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator:
    """Write to a temporary file beside `path` and rename it into place only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
        os.chmod(tmp, 0o644)  # mkstemp makes files private; results are ordinary files
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_path(path: str | os.PathLike) -> contextlib.AbstractContextManager[Path]:
    """Like atomic_write, for libraries that want a file name: yields a temporary path."""
    @contextlib.contextmanager
    def _manager() -> Iterator[Path]:
        final = Path(path)
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.stem}.", suffix=final.suffix)
        os.close(fd)
        try:
            yield Path(tmp)
            os.chmod(tmp, 0o644)
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    return _manager()


@contextlib.contextmanager
def jsonl_writer(path: Path) -> Iterator[Callable[[dict], None]]:
    """JSON lines into a temporary file, flushed per record and renamed into place at the end.

    The rename happens even after an error or Ctrl-C, since every line written is complete;
    a run that wrote nothing leaves any earlier file alone.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    count = 0
    with os.fdopen(fd, "w") as handle:
        def write(record: dict) -> None:
            nonlocal count
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            count += 1
        try:
            yield write
        finally:
            handle.close()
            if count:
                os.chmod(tmp, 0o644)
                os.replace(tmp, path)
            else:
                os.unlink(tmp)


def display(path: str | os.PathLike) -> str:
    """Paths relative to the working folder when they are inside it: shorter to read."""
    with contextlib.suppress(ValueError):
        return str(Path(path).resolve().relative_to(Path.cwd()))
    return str(path)


REPO = Path(__file__).resolve().parent
DEFAULT_MODEL = REPO / "models" / "scrfd500m_480x640_float32.tflite"  # the original quick start
EXPORT_HINT = ("`python export_modified_onnx.py --model models/det_500m.onnx --hw 480,640` then "
               "`python export_tflite.py --onnx models/det_500m_480x640.onnx`")
DOWNLOAD_HINT = "`python export_modified_onnx.py --download buffalo_sc`"


def check_model(path: Path) -> Path:
    """A missing default model gets the commands that create it instead of a bare 'not found'."""
    if path.exists() or path.resolve() != DEFAULT_MODEL:
        return path  # the runners report a missing or unusable --model themselves
    fetch = "" if (REPO / "models" / "det_500m.onnx").exists() else \
        f" (first fetch det_500m.onnx with {DOWNLOAD_HINT})"
    raise UserError(f"default model {display(path)} not found; create it with {EXPORT_HINT}"
                    f"{fetch}, or pass --model")


def parse_hw(text: str) -> tuple[int, int]:
    """Parse 'H,W' (or 'HxW'); both must be positive multiples of 32 (SCRFD's largest stride)."""
    try:
        height, width = (int(v) for v in text.lower().replace("x", ",").split(","))
    except ValueError:
        raise UserError(f"size must look like H,W (for example 480,640), got {text!r}") from None
    for name, value in (("height", height), ("width", width)):
        if value <= 0 or value % 32:
            lower, upper = max(32, value // 32 * 32), (value // 32 + 1) * 32
            raise UserError(f"{name} {value} is not a multiple of 32; nearest valid sizes are "
                            f"{lower} and {upper}")
    return height, width


SCORE_THRESHOLD = 0.5  # SCRFD's usual operating point: few false positives on photos
NMS_THRESHOLD = 0.4  # InsightFace's default IoU for merging duplicate boxes


def add_detector_arguments(parser, per: str = "image") -> None:
    """The detector options scrfd.py and video_inference_fdlm.py share."""
    parser.add_argument("--score", type=float, default=SCORE_THRESHOLD,
                        help=f"minimum face score, 0..1 (default {SCORE_THRESHOLD})")
    parser.add_argument("--nms", type=float, default=NMS_THRESHOLD,
                        help=f"IoU above which overlapping boxes are merged "
                             f"(default {NMS_THRESHOLD})")
    parser.add_argument("--max-faces", type=int, default=0,
                        help=f"keep at most this many faces per {per}, best first (default 0: all)")
    parser.add_argument("--size", type=parse_hw, default=None, metavar="H,W",
                        help="input size for dynamic ONNX models, multiples of 32 (default 640,640;"
                             " a .tflite or fixed-size ONNX model has its own size)")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                        help=f"CPU threads for inference (default {DEFAULT_THREADS})")


def sha256_of(path: str | os.PathLike) -> str:
    import hashlib
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- preprocessing
def letterbox(image: np.ndarray, input_hw: tuple[int, int]) -> tuple[np.ndarray, float]:
    """Resize keeping the aspect ratio into the top-left of a zero canvas (as InsightFace does).

    Returns the BGR uint8 canvas and the scale from original to input pixels.
    """
    height, width = input_hw
    img_h, img_w = image.shape[:2]
    scale = min(height / img_h, width / img_w)
    new_h = min(height, max(1, int(img_h * scale)))  # truncation and bilinear, as InsightFace
    new_w = min(width, max(1, int(img_w * scale)))
    canvas = np.zeros((height, width, 3), np.uint8)
    canvas[:new_h, :new_w] = cv2.resize(image, (new_w, new_h))
    return canvas, scale


def normalize(canvas_bgr: np.ndarray, layout: str) -> np.ndarray:
    """BGR uint8 canvas -> float32 (x - 127.5) / 128 in RGB, batch of one, NCHW or NHWC."""
    rgb = cv2.cvtColor(canvas_bgr, cv2.COLOR_BGR2RGB)
    tensor = (rgb.transpose(2, 0, 1) if layout == "NCHW" else rgb).astype(np.float32)
    tensor -= INPUT_MEAN
    tensor *= 1.0 / INPUT_STD
    return tensor[None]


def preprocess(image: np.ndarray, input_hw: tuple[int, int], layout: str = "NCHW"
               ) -> tuple[np.ndarray, float]:
    """The one preprocessing used everywhere (inference, calibration, parity checks)."""
    canvas, scale = letterbox(image, input_hw)
    return normalize(canvas, layout), scale


# ----------------------------------------------------------------------------- outputs
@dataclass(frozen=True)
class OutputSpec:
    """What one raw model output is: its kind (score/bbox/kps) and stride."""

    kind: str
    stride: int


def identify_outputs(shapes: Sequence[Sequence[int]], input_hw: tuple[int, int]
                     ) -> tuple[list[OutputSpec], int]:
    """Name SCRFD outputs from their shapes alone (output names differ between exports).

    Each output is (N, C) or (1, N, C) with C = 1 (score), 4 (box) or 10 (landmarks) and
    N = cells(stride) * anchors. Returns one OutputSpec per output and the anchors per cell.
    """
    height, width = input_hw
    groups: dict[str, list[tuple[int, int]]] = {}
    for position, shape in enumerate(shapes):
        shape = [int(d) for d in shape]
        channels = shape[-1] if shape else 0
        rows = int(np.prod(shape[:-1])) if len(shape) >= 2 else 0
        if channels not in CHANNELS_TO_KIND or len(shape) < 2 or any(d != 1 for d in shape[:-2]):
            raise UserError(f"not an SCRFD model: output {position} has shape {shape}, expected "
                            "(N, 1|4|10) per stride")
        groups.setdefault(CHANNELS_TO_KIND[channels], []).append((rows, position))
    if set(groups) not in ({"score", "bbox"}, {"score", "bbox", "kps"}):
        raise UserError(f"not an SCRFD model: found outputs {sorted(groups)}, expected score and "
                        "bbox (and optionally kps) for strides 8, 16, 32")
    specs: list[OutputSpec | None] = [None] * len(shapes)
    anchors = None
    for kind, members in groups.items():
        if len(members) != len(STRIDES):
            raise UserError(f"not an SCRFD model: {len(members)} {kind} outputs, expected "
                            f"{len(STRIDES)} (strides {STRIDES})")
        for stride, (rows, position) in zip(STRIDES, sorted(members, reverse=True)):
            cells = (height // stride) * (width // stride)
            if rows % cells or (anchors is not None and rows // cells != anchors):
                raise UserError(f"{kind} output at stride {stride} has {rows} rows; the input "
                                f"{height}x{width} gives {cells} cells, so the model does not "
                                "match this input size or is not SCRFD")
            anchors = rows // cells
            specs[position] = OutputSpec(kind, stride)
    return specs, int(anchors)  # type: ignore[return-value]


@functools.lru_cache(maxsize=64)
def anchor_centers(height: int, width: int, stride: int, anchors: int) -> np.ndarray:
    """(x, y) of every anchor, row-major, each repeated `anchors` times; cached per input size."""
    ys, xs = np.mgrid[: height // stride, : width // stride]
    centers = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float32) * stride
    centers = np.repeat(centers, anchors, axis=0)
    centers.setflags(write=False)
    return centers


RawOutputs = dict  # {stride: {"score": (N,), "bbox": (N, 4), "kps": (N, 10) or absent}}


def decode(raw: RawOutputs, input_hw: tuple[int, int], anchors: int, score_threshold: float
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Raw outputs -> candidate boxes, scores, landmarks in model-input pixels (before NMS)."""
    boxes, scores, points = [], [], []
    with_kps = all("kps" in level for level in raw.values())
    for stride, level in raw.items():
        keep = np.flatnonzero(level["score"] >= score_threshold)
        centers = anchor_centers(*input_hw, stride, anchors)[keep]
        dist = level["bbox"][keep] * stride
        boxes.append(np.hstack([centers - dist[:, :2], centers + dist[:, 2:]]))
        scores.append(level["score"][keep])
        if with_kps:
            points.append(level["kps"][keep].reshape(-1, 5, 2) * stride + centers[:, None, :])
    landmarks = np.concatenate(points).astype(np.float32) if with_kps else None
    return (np.concatenate(boxes).astype(np.float32), np.concatenate(scores).astype(np.float32),
            landmarks)


_ALL_NEIGHBOURS = np.array([(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
_FORWARD_NEIGHBOURS = np.array([(0, 0), (0, 1), (1, -1), (1, 0), (1, 1)])  # each pair once
_ALL_PAIRS_UP_TO = 16384  # band pairs with fewer candidate pairs are compared all against all


def _grid_pairs(cx: np.ndarray, cy: np.ndarray, cell_w: float, cell_h: float,
                anchors: np.ndarray, partners: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (anchor, partner) whose centres fall in the same or adjacent grid cells.

    With partners=None the anchors are paired among themselves, each pair once.
    """
    same = partners is None
    partners = anchors if same else partners
    both = anchors if same else np.concatenate([anchors, partners])
    gx = (cx[both] / cell_w).astype(np.int64)
    gy = (cy[both] / cell_h).astype(np.int64)
    gx -= gx.min() - 1
    gy -= gy.min() - 1
    row = int(gx.max()) + 2
    keys = gy * row + gx
    anchor_keys, partner_keys = keys[: len(anchors)], keys[len(anchors):] if not same else keys
    neighbours = _FORWARD_NEIGHBOURS if same else _ALL_NEIGHBOURS
    wanted = (anchor_keys[:, None] + (neighbours[:, 0] * row + neighbours[:, 1])).ravel()
    order = np.argsort(partner_keys, kind="stable")
    cells = (int(gy.max()) + 2) * row
    if cells <= 64 * len(wanted) + 4096:  # dense table: O(1) lookups
        per_cell = np.bincount(partner_keys, minlength=cells)
        left, counts = (np.cumsum(per_cell) - per_cell)[wanted], per_cell[wanted]
    else:  # a sparse grid (tiny boxes far apart): binary search
        sorted_keys = partner_keys[order]
        left = np.searchsorted(sorted_keys, wanted, "left")
        counts = np.searchsorted(sorted_keys, wanted, "right") - left
    ends = np.cumsum(counts)
    index = np.arange(int(ends[-1]) if len(ends) else 0) + np.repeat(left - ends + counts, counts)
    a_pos = np.repeat(np.arange(len(anchors)).repeat(len(neighbours)), counts)
    b_pos = order[index]
    if same:  # within one cell, keep each pair once
        once = (b_pos > a_pos) | (partner_keys[b_pos] != anchor_keys[a_pos])
        a_pos, b_pos = a_pos[once], b_pos[once]
    return anchors[a_pos], partners[b_pos]


def _overlapping_pairs(boxes: np.ndarray, iou_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (a, b) with IoU above t, without comparing every pair.

    IoU > t implies a 1-D IoU above t along x and along y, so the narrower box is more than
    t times as wide as the other and the centres are closer than (w_a + w_b)(1 - t)/(2 + 2t)
    (likewise for heights). Boxes are banded by log2(width); each band meets itself and
    the few next bands through a grid whose cells are that centre-distance bound.
    """
    t = max(float(iou_threshold), 0.0)
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    widths, heights = np.maximum(x2 - x1, 1e-6), np.maximum(y2 - y1, 1e-6)
    reach = (1 - t) / (2 * (1 + t))
    span = int(np.ceil(np.log2(1 / t))) if t > 0 else 1 << 20
    band = np.maximum(np.floor(np.log2(widths)), 0).astype(np.int64)  # < 1 px: one band
    cx, cy = (x1 + x2) * 0.5, (y1 + y2) * 0.5
    by_band = np.argsort(band, kind="stable")
    levels, starts = np.unique(band[by_band], return_index=True)
    members = dict(zip(levels.tolist(), np.split(by_band, starts[1:])))
    widest = {level: float(widths[m].max()) for level, m in members.items()}
    tallest = {level: float(heights[m].max()) for level, m in members.items()}
    firsts, seconds = [], []
    for level in members:
        for other in (o for o in members if level <= o <= level + span):
            mine, theirs = members[level], members[other]
            if len(mine) * len(theirs) <= _ALL_PAIRS_UP_TO:  # few boxes: a grid costs more
                if other == level:
                    i, j = np.triu_indices(len(mine), 1)
                    a, b = mine[i], mine[j]
                else:
                    a, b = np.repeat(mine, len(theirs)), np.tile(theirs, len(mine))
            else:
                cell_w = max(reach * (widest[level] + widest[other]), 1e-6)
                cell_h = max(reach * (tallest[level] + tallest[other]), 1e-6)
                a, b = _grid_pairs(cx, cy, cell_w, cell_h, mine, None if other == level else theirs)
            firsts.append(a)
            seconds.append(b)
    a, b = np.concatenate(firsts), np.concatenate(seconds)
    inter = (np.clip(np.minimum(x2[a], x2[b]) - np.maximum(x1[a], x1[b]), 0, None)
             * np.clip(np.minimum(y2[a], y2[b]) - np.maximum(y1[a], y1[b]), 0, None))
    areas = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    hit = inter > t * np.maximum(areas[a] + areas[b] - inter, 1e-9)
    return a[hit], b[hit]


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Exact greedy non-maximum suppression; indices of kept boxes, highest score first.

    Ties are broken by position (stable sort), so equal scores never make boxes vanish,
    unlike cv2.dnn.NMSBoxes, which drops scores not strictly above its threshold.
    Greedy NMS keeps a box unless a kept, better-ranked box overlaps it. Only overlapping
    pairs matter, so we find them spatially and settle "kept" by fixed-point iteration
    over those pairs: ranks settle in order, in as many rounds as the longest chain of
    suppressions, which keeps 5,000 crowded candidates at a few milliseconds.
    """
    order = np.argsort(-scores, kind="stable")
    if len(order) <= 1:
        return order.astype(np.int64)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    a, b = _overlapping_pairs(boxes, iou_threshold)
    better = np.where(rank[a] < rank[b], a, b)
    worse = np.where(rank[a] < rank[b], b, a)
    keep = np.ones(len(scores), bool)
    while True:
        suppressed = np.zeros(len(scores), bool)
        suppressed[worse[keep[better]]] = True
        if np.array_equal(~suppressed, keep):
            break
        keep = ~suppressed
    return order[keep[order]].astype(np.int64)


def postprocess(raw: RawOutputs, input_hw: tuple[int, int], anchors: int, scale: float,
                score_threshold: float, nms_threshold: float, max_faces: int = 0) -> Detections:
    """decode -> NMS -> undo the letterbox: the one post-processing every backend uses."""
    boxes, scores, landmarks = decode(raw, input_hw, anchors, score_threshold)
    keep = nms(boxes, scores, nms_threshold)
    if max_faces > 0:
        keep = keep[:max_faces]
    boxes = boxes[keep] / scale
    landmarks = None if landmarks is None else landmarks[keep] / scale
    return Detections(boxes, scores[keep], landmarks)


# ----------------------------------------------------------------------------- runners
def metadata_path(model_path: str | os.PathLike) -> Path:
    """Sidecar JSON that export_tflite.py writes beside every .tflite."""
    return Path(str(model_path) + ".json")


def load_metadata(model_path: str | os.PathLike) -> dict | None:
    path = metadata_path(model_path)
    if not path.exists():
        return None
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read model metadata {path}: {err}") from None
    if meta.get("format") != METADATA_FORMAT:
        raise UserError(f"{path} is not scrFDOnlyInference metadata (format {meta.get('format')!r})")
    return meta


def _check_model_file(path: Path, suffix: str) -> None:
    if not path.is_file():
        raise UserError(f"model not found: {path}")
    if path.suffix.lower() != suffix:
        raise UserError(f"{path}: expected a {suffix} file")


class OnnxRunner:
    """ONNX Runtime on CPU (or CUDA when asked), at a chosen input size for dynamic models."""

    backend = "onnxruntime"
    layout = "NCHW"

    def __init__(self, model_path: str | os.PathLike, input_hw: tuple[int, int] | None = None,
                 threads: int | None = DEFAULT_THREADS, providers: Sequence[str] | None = None):
        import onnxruntime as ort

        path = Path(model_path)
        _check_model_file(path, ".onnx")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # dynamic-shape exports warn on every size but 640
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), options,
                                                providers=list(providers or ["CPUExecutionProvider"]))
        except Exception as err:  # onnxruntime raises its own exception types
            raise UserError(f"cannot load {path} as ONNX: {str(err).splitlines()[0]}") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4 or inputs[0].shape[1] not in (3, "3"):
            raise UserError(f"not an SCRFD model: {path} needs one 1x3xHxW image input")
        self.input_name = inputs[0].name
        fixed = [d if isinstance(d, int) else None for d in inputs[0].shape[2:]]
        if all(fixed):
            if input_hw and tuple(input_hw) != tuple(fixed):
                raise UserError(f"{path.name} has a fixed {fixed[0]}x{fixed[1]} input; re-export "
                                f"it with export_modified_onnx.py --hw {input_hw[0]},{input_hw[1]}")
            input_hw = (int(fixed[0]), int(fixed[1]))
        self.input_hw: tuple[int, int] = tuple(input_hw or (640, 640))  # type: ignore[assignment]
        self.output_names = [o.name for o in self.session.get_outputs()]
        try:
            probe = self.session.run(None, {self.input_name: np.zeros((1, 3, *self.input_hw),
                                                                       np.float32)})
        except Exception as err:
            raise UserError(f"{path.name} does not run at {self.input_hw[0]}x{self.input_hw[1]}: "
                            f"{str(err).splitlines()[0]}") from None
        self.specs, self.anchors = identify_outputs([o.shape for o in probe], self.input_hw)
        self.has_landmarks = any(s.kind == "kps" for s in self.specs)

    def __call__(self, tensor: np.ndarray) -> RawOutputs:
        outputs = self.session.run(None, {self.input_name: tensor})
        return group_outputs(zip(self.specs, outputs))


def group_outputs(pairs) -> RawOutputs:
    """[(OutputSpec, array)] -> {stride: {kind: (N, C) array}} with scores flattened to (N,)."""
    raw: RawOutputs = {stride: {} for stride in STRIDES}
    for spec, array in pairs:
        channels = 1 if spec.kind == "score" else (4 if spec.kind == "bbox" else 10)
        array = array.reshape(-1, channels)
        raw[spec.stride][spec.kind] = array[:, 0] if spec.kind == "score" else array
    return raw


class LiteRTRunner:
    """A .tflite through LiteRT (XNNPACK on CPU), reading the export's metadata when present.

    `delegates` are extra LiteRT delegates (a GPU one, say); xnnpack=False turns LiteRT's
    default XNNPACK delegate off (builtin kernels only), to see what XNNPACK is worth.
    `delegated_partitions` counts the parts of the graph some delegate took.
    """

    backend = "litert"

    def __init__(self, model_path: str | os.PathLike, input_hw: tuple[int, int] | None = None,
                 threads: int | None = DEFAULT_THREADS, delegates: Sequence | None = None,
                 xnnpack: bool = True):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        path = Path(model_path)
        _check_model_file(path, ".tflite")
        self.metadata = load_metadata(path)
        resolver = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        try:
            self.interpreter = Interpreter(model_path=str(path), num_threads=threads or None,
                                           experimental_delegates=delegates,
                                           experimental_op_resolver_type=resolver)
        except (ValueError, RuntimeError) as err:
            raise UserError(f"cannot load {path} as TFLite: {str(err).splitlines()[0]}") from None
        details = self.interpreter.get_input_details()
        shape = [int(d) for d in details[0]["shape_signature"]] if len(details) == 1 else []
        if len(shape) != 4 or not (shape[1] == 3 or shape[3] in (3, 4)):
            raise UserError(f"not an SCRFD model: {path} needs one image input")
        self.layout = "NCHW" if shape[1] == 3 else "NHWC"
        # A 4-channel NHWC input is RGB plus a channel the stem ignores (zero weights): XNNPACK's
        # first convolution runs much faster on 4 channels than on 3; we fill it in place.
        self._rgba = self.layout == "NHWC" and shape[3] == 4
        spatial = shape[2:] if self.layout == "NCHW" else shape[1:3]
        if min(spatial) <= 0:  # dynamic input: size it before allocating
            input_hw = tuple(input_hw or (640, 640))
            new_shape = [1, 3, *input_hw] if self.layout == "NCHW" else [1, *input_hw, shape[3]]
            self.interpreter.resize_tensor_input(details[0]["index"], new_shape)
        else:
            if input_hw and tuple(input_hw) != tuple(spatial):
                raise UserError(f"{path.name} was exported for {spatial[0]}x{spatial[1]}, not "
                                f"{input_hw[0]}x{input_hw[1]}; export another size")
            input_hw = tuple(spatial)
        self.input_hw: tuple[int, int] = tuple(int(v) for v in input_hw)  # type: ignore
        self.interpreter.allocate_tensors()
        self.delegated_partitions = sum(op["op_name"] == "DELEGATE"
                                        for op in self.interpreter._get_ops_details())
        self.input = self.interpreter.get_input_details()[0]
        outputs = self.interpreter.get_output_details()
        if self.metadata:
            by_name = {o["name"]: o for o in self.metadata["outputs"]}
            missing = [o["name"] for o in outputs if o["name"] not in by_name]
            if missing:
                raise UserError(f"metadata {metadata_path(path)} does not match the model "
                                f"(unknown outputs {missing})")
            self.specs = [OutputSpec(by_name[o["name"]]["kind"], by_name[o["name"]]["stride"])
                          for o in outputs]
            self.anchors = int(self.metadata["anchors_per_location"])
        else:
            self.specs, self.anchors = identify_outputs([o["shape"] for o in outputs],
                                                        self.input_hw)
        self.has_landmarks = any(s.kind == "kps" for s in self.specs)
        self._outputs = [(spec, o["index"], *o["quantization"], o["dtype"])
                         for spec, o in zip(self.specs, outputs)]
        in_scale, in_zero = self.input["quantization"]
        self._quantize = None
        if self.input["dtype"] in (np.int8, np.uint8):
            depth = cv2.CV_8S if self.input["dtype"] == np.int8 else cv2.CV_8U
            self._quantize = (1.0 / in_scale, float(in_zero), depth)

    @property
    def precision(self) -> str:
        return (self.metadata or {}).get("precision", "unknown")

    def __call__(self, tensor: np.ndarray) -> RawOutputs:
        if self._quantize:  # round(x / scale + zero), saturated: one OpenCV pass, not five numpy ones
            inv_scale, zero, depth = self._quantize
            flat = np.ascontiguousarray(tensor, np.float32).reshape(
                -1, tensor.shape[-2] * tensor.shape[-1])
            tensor = cv2.addWeighted(flat, inv_scale, flat, 0.0, zero, dtype=depth).reshape(
                tensor.shape)
        if self._rgba:
            self._write_rgba(tensor)
        else:
            self.interpreter.set_tensor(self.input["index"], tensor)
        self.interpreter.invoke()
        pairs = []
        for spec, index, scale, zero, dtype in self._outputs:
            array = self.interpreter.get_tensor(index)
            if dtype != np.float32:
                array = (array.astype(np.float32) - zero) * scale if scale else array.astype(
                    np.float32)
            pairs.append((spec, array))
        return group_outputs(pairs)


    def _write_rgba(self, tensor: np.ndarray) -> None:
        """RGB (1, H, W, 3) into the 4-channel input buffer, in place, in one OpenCV pass."""
        buffer = self.interpreter.tensor(self.input["index"])()  # a view: drop it before invoke
        source, target = tensor.reshape(tensor.shape[-3:]), buffer[0]
        if source.dtype != np.float32:  # int8/uint8: same bytes, OpenCV only knows uint8
            source, target = source.view(np.uint8), target.view(np.uint8)
        written = cv2.cvtColor(source, cv2.COLOR_RGB2RGBA, dst=target)
        if written.ctypes.data != target.ctypes.data:  # OpenCV chose its own array after all
            target[..., :3] = source
        del buffer, target, written


def open_runner(model_path: str | os.PathLike, input_hw: tuple[int, int] | None = None,
                threads: int | None = DEFAULT_THREADS, **kwargs):
    """ONNX Runtime for .onnx, LiteRT for .tflite."""
    suffix = Path(model_path).suffix.lower()
    if suffix == ".onnx":
        return OnnxRunner(model_path, input_hw, threads, **kwargs)
    if suffix == ".tflite":
        return LiteRTRunner(model_path, input_hw, threads, **kwargs)
    raise UserError(f"{model_path}: unsupported model type (expected .onnx or .tflite)")


# ----------------------------------------------------------------------------- detector
@dataclass
class SCRFD:
    """Face detector: image in, Detections out, for any backend.

    `timings` holds the seconds spent in the last call's preprocess / inference /
    postprocess, so scripts can report where time goes without wrapping the calls.
    """

    model_path: str | os.PathLike
    input_hw: tuple[int, int] | None = None
    score_threshold: float = 0.5
    nms_threshold: float = 0.4
    max_faces: int = 0
    threads: int | None = DEFAULT_THREADS
    runner_options: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.runner = open_runner(self.model_path, self.input_hw, self.threads,
                                  **self.runner_options)
        self.input_hw = self.runner.input_hw

    @property
    def has_landmarks(self) -> bool:
        return self.runner.has_landmarks

    def detect(self, image_bgr: np.ndarray) -> Detections:
        if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.dtype != np.uint8:
            image_bgr = to_bgr8(image_bgr)
        t0 = time.perf_counter()
        tensor, scale = preprocess(image_bgr, self.input_hw, self.runner.layout)
        t1 = time.perf_counter()
        raw = self.runner(tensor)
        t2 = time.perf_counter()
        dets = postprocess(raw, self.input_hw, self.runner.anchors, scale,
                           self.score_threshold, self.nms_threshold, self.max_faces)
        t3 = time.perf_counter()
        self.timings = {"preprocess": t1 - t0, "inference": t2 - t1, "postprocess": t3 - t2}
        return dets


# ----------------------------------------------------------------------------- drawing
LANDMARK_COLORS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255))  # BGR


def draw_detections(image_bgr: np.ndarray, dets: Detections, color=(0, 200, 0)) -> np.ndarray:
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
