"""Tiled multi-scale detection: the whole photo letterboxed into the model's input (for the
large faces) plus tiles of the photo at its own resolution, each exactly the input size (for
the small ones), merged into one set of faces.

Why: letterboxing a 1024-pixel photo into 640 pixels shrinks a 30-pixel face to 19, and
SCRFD loses faces below about 16 pixels. A fixed-shape export cannot be resized to the
photo, so the photo's own scale is reached with tiles (supervision's InferenceSlicer idea).

The plan: along each side, neighbouring tiles overlap by `face + 2 * BORDER_MARGIN` pixels,
so every face up to `face` pixels lies whole in some tile, at least BORDER_MARGIN pixels
from that tile's inner edges (edges inside the photo). `face` is at least what the
whole-photo pass needs to see a face (WHOLE_PASS_MIN_FACE pixels after its downscaling),
so every face size is whole in one pass or the other.

The merge: each pass answers for the faces it sees well. A tile detection reaching within
BORDER_MARGIN of an inner tile edge is dropped, since it may be a face cut in half; that face
is whole in a neighbouring tile, or, when larger than `face`, found by the whole-photo pass.
A whole-photo detection shorter than WHOLE_PASS_MIN_FACE input pixels is dropped: the tiles
see that face at up to 1/scale times the size. Then one NMS over the candidates of every
pass keeps each face once, with its own score and landmarks (nothing is averaged).
On a quarter of the WIDER FACE dev split (det_500m 480x640) dropping half faces is worth
+0.7 to +0.8 AP on every subset, and dropping the whole pass's small faces another +0.5 to
+0.6 (README, "Tiles").

Close-ups: SCRFD loses confidence on faces that fill the frame (insightface#1518, #2877).
When the whole pass has a candidate taller than CLOSEUP_FRACTION of the input, the photo
runs once more shrunk to CLOSEUP_SHRINK of the letterbox scale; on WIDER crops where one
face fills 70-90% of the frame this lifts recall at score 0.5 from 0.945 to 0.990.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from .defaults import TILE_FACE
from .decode import (INPUT_MEAN, INPUT_STD, STRIDES, RawOutputs, anchor_centers, decode,
                     distance2bbox, distance2kps, normalize, postprocess, preprocess)
from .detections import Detections
from .nms import nms
from .runners import RunnerPool
from .timing import Profile

BORDER_MARGIN = 8  # px; a tile detection this close to an inner tile edge may be a half face
WHOLE_PASS_MIN_FACE = 20  # px (face height in the model input) the whole-photo pass answers for
CLOSEUP_FRACTION = 0.5  # a whole-pass candidate this tall (of the input height) may be a close-up,
CLOSEUP_TRIGGER_SCORE = 0.1  # at any score from this on: then the photo runs once more,
CLOSEUP_SHRINK = 0.7  # at this times the letterbox scale (zero padding around it),
CLOSEUP_KEEP = 0.2  # and that pass answers for faces at least this tall (of its input height)
TILE_GATE_SCORE = 0.1  # a tile runs where the whole pass has a candidate this likely (None: all),
GATE_FULL_SCALE = 0.5  # halved where the whole pass shrinks the photo more than this,
GATE_MIN_SCALE = 0.25  # and off (every tile) where it shrinks it more than this


@dataclass(frozen=True)
class TilePlan:
    """Where the tiles of one photo go, and the face size they guarantee whole.

    `ys`, `xs`: tile origins along each axis (every pair is a tile, row-major). A photo that
    fits the input has no tiles. A side shorter than the tile gets one tile, zero-padded.
    """

    image_hw: tuple[int, int]
    tile_hw: tuple[int, int]
    face: int  # faces up to this many pixels lie whole, away from inner edges, in one tile
    ys: tuple[int, ...] = ()
    xs: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.ys) * len(self.xs)

    @property
    def origins(self) -> np.ndarray:
        """(N, 2) x, y of every tile's top-left corner, row-major."""
        ys, xs = np.meshgrid(self.ys, self.xs, indexing="ij")
        return np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32).reshape(-1, 2)

    @property
    def inner_edges(self) -> np.ndarray:
        """(N, 4) bool: left, top, right, bottom edge of each tile lies inside the photo
        (another tile continues there), so a face may be cut at it."""
        (height, width), (tile_h, tile_w) = self.image_hw, self.tile_hw
        x, y = self.origins[:, 0], self.origins[:, 1]
        return np.stack([x > 0, y > 0, x + tile_w < width, y + tile_h < height], axis=1)

    @property
    def overlap(self) -> int:
        """Pixels neighbouring tiles share (along both axes)."""
        return self.face + 2 * BORDER_MARGIN

    @property
    def tile_ratio(self) -> float:
        """Pixels the model sees in tiles over pixels in the photo (1.0: no overlap, no padding)."""
        return len(self) * self.tile_hw[0] * self.tile_hw[1] / (self.image_hw[0] * self.image_hw[1])


def axis_origins(length: int, tile: int, overlap: int) -> tuple[int, ...]:
    """Tile starts along one side: as few tiles as keep `overlap` between neighbours, spread
    evenly from 0 to length - tile (every step at most tile - overlap)."""
    if length <= tile:
        return (0,)
    step = tile - overlap
    count = math.ceil((length - tile) / step) + 1
    return tuple(int(v) for v in np.floor(np.linspace(0, length - tile, count)))


def whole_pass_scale(image_hw: tuple[int, int], input_hw: tuple[int, int]) -> float:
    """The letterbox scale of the whole-photo pass (decode.letterbox's)."""
    return min(input_hw[0] / image_hw[0], input_hw[1] / image_hw[1])


def largest_tile_face(input_hw: tuple[int, int]) -> int:
    """The largest face size a plan keeps whole: tiles still advance by half a tile."""
    return min(input_hw) // 2 - 2 * BORDER_MARGIN


def plan_tiles(image_hw: tuple[int, int], input_hw: tuple[int, int], face: int = TILE_FACE
               ) -> TilePlan:
    """The tiles of a photo for a model of input_hw, keeping faces up to `face` px whole.

    `face` is raised to what the whole-photo pass needs (WHOLE_PASS_MIN_FACE after its
    downscaling) and capped so that tiles still advance by half a tile.
    """
    height, width = (int(v) for v in image_hw)
    tile_h, tile_w = (int(v) for v in input_hw)
    if height <= tile_h and width <= tile_w:
        return TilePlan((height, width), (tile_h, tile_w), 0)
    needed = math.ceil(WHOLE_PASS_MIN_FACE / whole_pass_scale((height, width), input_hw))
    face = max(1, min(max(int(face), needed), largest_tile_face(input_hw)))
    overlap = face + 2 * BORDER_MARGIN
    return TilePlan((height, width), (tile_h, tile_w), face,
                    axis_origins(height, tile_h, overlap), axis_origins(width, tile_w, overlap))


@dataclass
class TiledInput:
    """A photo made ready for tiled detection (SCRFD.prepare with tiles): the whole-photo
    pass's input, the photo in RGB (padded to at least one tile) and the plan, and the
    photo itself for a close-up pass."""

    whole: tuple[np.ndarray, float]  # (model input, letterbox scale), as decode.preprocess
    rgb: np.ndarray  # (>= tile_h, >= tile_w, 3): uint8 RGB, or the quantized input; empty
    plan: TilePlan  # without tiles
    image: np.ndarray  # the BGR photo (not a copy)
    quantized: bool = False  # rgb holds the model's int8/uint8 input values already


def prepare_tiled(image_bgr: np.ndarray, input_hw: tuple[int, int], layout: str,
                  face: int = TILE_FACE, pixel_table: np.ndarray | None = None) -> TiledInput:
    """The whole-photo input and the photo the tiles are cut from, each in one or two
    OpenCV passes. A float model's tiles are normalised from the RGB photo when they run
    (tile_tensor); a quantized model's photo is quantized here once, through the runner's
    pixel_table, so a tile is a copy. Either way a prepared photo holds one photo-sized
    array, not one tensor per tile."""
    plan = plan_tiles(image_bgr.shape[:2], input_hw, face)
    whole = preprocess(image_bgr, input_hw, layout)
    if not len(plan):
        return TiledInput(whole, np.zeros((0, 0, 3), np.uint8), plan, image_bgr)
    rgb = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)
    pad_h, pad_w = max(0, input_hw[0] - rgb.shape[0]), max(0, input_hw[1] - rgb.shape[1])
    if pad_h or pad_w:  # bottom/right zeros, as the letterbox pads
        rgb = cv2.copyMakeBorder(rgb, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=0)
    if pixel_table is not None:
        return TiledInput(whole, cv2.LUT(rgb, pixel_table), plan, image_bgr, quantized=True)
    return TiledInput(whole, rgb, plan, image_bgr)


def tile_tensor(prepared: TiledInput, x: int, y: int, input_hw: tuple[int, int], layout: str
                ) -> np.ndarray:
    """One tile as the model's input: a quantized photo's pixels copied, or (pixel - 127.5)
    / 128 in one OpenCV pass (the same float32 values decode.normalize gives: every step is
    exact)."""
    tile = prepared.rgb[y: y + input_hw[0], x: x + input_hw[1]]
    if prepared.quantized:
        tensor = tile
    else:
        tensor = cv2.addWeighted(tile, 1.0 / INPUT_STD, tile, 0.0, -INPUT_MEAN / INPUT_STD,
                                 dtype=cv2.CV_32F)
    return np.ascontiguousarray(tensor.transpose(2, 0, 1) if layout == "NCHW" else tensor)[None]


def shrunk_input(image_bgr: np.ndarray, input_hw: tuple[int, int], layout: str, factor: float
                 ) -> tuple[np.ndarray, float]:
    """The whole photo at `factor` times the letterbox scale, top-left in the zero canvas."""
    scale = whole_pass_scale(image_bgr.shape[:2], input_hw) * factor
    new_h = min(input_hw[0], max(1, int(image_bgr.shape[0] * scale)))
    new_w = min(input_hw[1], max(1, int(image_bgr.shape[1] * scale)))
    canvas = np.zeros((*input_hw, 3), np.uint8)
    canvas[:new_h, :new_w] = cv2.resize(image_bgr, (new_w, new_h))
    return normalize(canvas, layout), scale


def decode_tiles(raws: list[RawOutputs], plan: TilePlan, anchors: int, score_threshold: float,
                 chosen: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Every tile's raw outputs at once -> candidates in photo pixels, half faces dropped.
    `chosen`: the plan's tiles that `raws` are of (default: all of them, in order).

    Scores are stacked per stride and thresholded at once; boxes and landmarks are copied
    for the candidates only (stacking every tile's would copy megabytes per photo). A
    candidate within BORDER_MARGIN of an inner edge of its tile is dropped: it may be cut,
    and the plan keeps the whole face in another pass.
    """
    tile_h, tile_w = plan.tile_hw
    boxes, scores, points, owner = [], [], [], []
    with_kps = all("kps" in level for level in raws[0].values())
    for stride in STRIDES:
        score = np.stack([raw[stride]["score"] for raw in raws])  # (tiles, anchors)
        tile, anchor = np.nonzero(score >= score_threshold)
        centers = anchor_centers(tile_h, tile_w, stride, anchors)[anchor]
        bounds = np.searchsorted(tile, np.arange(len(raws) + 1)).tolist()  # rows per tile
        distances = _gather([raw[stride]["bbox"] for raw in raws], anchor, bounds)
        boxes.append(distance2bbox(centers, distances * stride))
        scores.append(score[tile, anchor])
        owner.append(tile)
        if with_kps:
            offsets = _gather([raw[stride]["kps"] for raw in raws], anchor, bounds)
            points.append(distance2kps(centers, offsets * stride))
    box = np.concatenate(boxes).astype(np.float32)
    tile = np.concatenate(owner)
    chosen = np.arange(len(plan)) if chosen is None else np.asarray(chosen)
    inner = plan.inner_edges[chosen][tile]
    cut = ((inner[:, 0] & (box[:, 0] < BORDER_MARGIN)) | (inner[:, 1] & (box[:, 1] < BORDER_MARGIN))
           | (inner[:, 2] & (box[:, 2] > tile_w - BORDER_MARGIN))
           | (inner[:, 3] & (box[:, 3] > tile_h - BORDER_MARGIN)))
    whole = ~cut
    offset = plan.origins[chosen][tile[whole]]
    box = box[whole] + np.tile(offset, 2)
    landmarks = None
    if with_kps:
        landmarks = np.concatenate(points).astype(np.float32)[whole] + offset[:, None, :]
    return box, np.concatenate(scores).astype(np.float32)[whole], landmarks


def _gather(arrays: list[np.ndarray], rows: np.ndarray, bounds: list[int]) -> np.ndarray:
    """arrays[t][rows[i]] for the i in bounds[t]:bounds[t + 1], concatenated over t."""
    parts = [array[rows[lo:hi]] for array, lo, hi in zip(arrays, bounds, bounds[1:]) if hi > lo]
    return np.concatenate(parts) if parts else np.zeros((0, arrays[0].shape[-1]), np.float32)


Candidates = tuple[np.ndarray, np.ndarray, "np.ndarray | None"]  # boxes, scores, landmarks


def _select(candidates: Candidates, keep: np.ndarray, scale: float = 1.0) -> Candidates:
    boxes, scores, landmarks = candidates
    return (boxes[keep] / scale, scores[keep],
            None if landmarks is None else landmarks[keep] / scale)


def gate_score(gate: float | None, scale: float) -> float | None:
    """The whole-pass score that opens a tile, for a whole pass at `scale`: `gate`, halved
    when the photo shrinks more than GATE_FULL_SCALE (its faces shrink too, and a 7-pixel
    face in the letterbox scores only 0.03-0.1), None (every tile) when it shrinks more than
    GATE_MIN_SCALE: a panorama's faces are then a few pixels in the letterbox and leave no
    candidate to open their tile (a 4800x400 strip of faces: none found with the gate)."""
    if gate is None or scale < GATE_MIN_SCALE:
        return None
    return gate * (1.0 if scale >= GATE_FULL_SCALE else 0.5)


def gated_tiles(plan: TilePlan, centers: np.ndarray, scores: np.ndarray, gate: float | None
                ) -> np.ndarray:
    """The tiles to run (indices): with gate None all of them, else those holding the centre
    (photo pixels) of a whole-pass candidate scoring at least `gate`. A face the tiles would
    find small shows in the whole pass first, at a lower score: where the whole pass shows
    nothing, a tile rarely finds a face (docs/speed.md: what the gate costs in AP and saves
    in passes; a face alone on a plain background, under 8 pixels in the letterbox, can be
    missed: tile_gate=None runs every tile)."""
    if gate is None or not len(plan):
        return np.arange(len(plan))
    return np.flatnonzero(_inside(plan, centers[scores >= gate]).any(axis=1))


def _inside(plan: TilePlan, centers: np.ndarray) -> np.ndarray:
    """(tiles, points) bool: each point (x, y in photo pixels) within each tile."""
    x, y = plan.origins[:, :1], plan.origins[:, 1:]
    return ((centers[:, 0] >= x) & (centers[:, 0] < x + plan.tile_hw[1])
            & (centers[:, 1] >= y) & (centers[:, 1] < y + plan.tile_hw[0]))


def run_tiled(runner, prepared: TiledInput, score_threshold: float, nms_threshold: float,
              max_faces: int, profile: Profile, gate: float | None = None,
              tile_runner=None) -> tuple[Detections, int]:
    """The whole-photo pass, the tiles and, when a face may fill half the input, the
    close-up pass, merged by one NMS. Returns the faces and the passes.

    The whole pass runs first, on `runner` (a runner or a RunnerPool: its intra-op threads
    all on this one pass); then the tiles (with gate a score: only those gated_tiles()
    picks) and the close-up pass: in turn on one runner of `runner`, or with `tile_runner`
    (a RunnerPool of one-thread runners) at once over its runners.

    Each call adds to `profile` once: "inference" (all model calls), "postprocess" (decoding
    and the merge) and, with a close-up pass, "preprocess" (its input), the stages a single
    pass reports, so `profile.last` holds this call's sums.
    """
    spent = Profile()
    try:
        return _run_tiled(runner, tile_runner, prepared, score_threshold, nms_threshold,
                          max_faces, spent, gate)
    finally:
        profile.add(dict(spent.totals))


def _run_tiled(runner, tile_runner, prepared: TiledInput, score_threshold: float,
               nms_threshold: float, max_faces: int, profile: Profile, gate: float | None
               ) -> tuple[Detections, int]:
    pool = runner if isinstance(runner, RunnerPool) else RunnerPool(runner)
    tile_pool = tile_runner if tile_runner is None or isinstance(tile_runner, RunnerPool) \
        else RunnerPool(tile_runner)
    first = pool.first
    input_hw, layout, anchors = first.input_hw, first.layout, first.anchors
    plan, scale = prepared.plan, prepared.whole[1]
    quantized = {"quantized": True} if prepared.quantized else {}
    gate = gate_score(gate, scale)
    with profile("inference"):
        whole_raw = pool.run(prepared.whole[0])
    with profile("postprocess"):
        whole = decode(whole_raw, input_hw, anchors,
                       min(score_threshold, CLOSEUP_TRIGGER_SCORE, 1.0 if gate is None else gate))
        centers = (whole[0][:, :2] + whole[0][:, 2:]) / (2 * scale)  # photo pixels
        chosen = gated_tiles(plan, centers, whole[1], gate)
        heights = whole[0][:, 3] - whole[0][:, 1]
        close = bool(np.any((heights >= CLOSEUP_FRACTION * input_hw[0])
                            & (whole[1] >= CLOSEUP_TRIGGER_SCORE)))
    if not len(chosen) and not close and not len(plan):  # the single pass, exactly
        with profile("postprocess"):
            return postprocess(whole_raw, input_hw, anchors, scale, score_threshold,
                               nms_threshold, max_faces), 1
    close_scale = 0.0
    if close:
        with profile("preprocess"):
            close_tensor, close_scale = shrunk_input(prepared.image, input_hw, layout,
                                                     CLOSEUP_SHRINK)

    def run_pass(runner, origin):
        if origin is None:
            return runner.run(close_tensor)
        tensor = tile_tensor(prepared, int(origin[0]), int(origin[1]), input_hw, layout)
        return runner.run(tensor, **quantized)

    passes = [*plan.origins[chosen], *([None] if close else [])]
    with profile("inference"):
        if tile_pool is None:  # in turn, on one runner
            with pool() as held:
                raws = [run_pass(held, origin) for origin in passes]
        else:
            raws = tile_pool.map(run_pass, passes)
    close_raw = raws.pop() if close else None
    with profile("postprocess"):
        keep = whole[1] >= score_threshold
        if len(chosen):  # smaller faces are the tiles', where a tile ran
            small = heights < WHOLE_PASS_MIN_FACE
            if len(chosen) < len(plan):
                small &= _inside(plan, centers)[chosen].any(axis=0)
            keep &= ~small
        parts = [_select(whole, keep, scale)]
        if raws:
            parts.append(decode_tiles(raws, plan, anchors, score_threshold, chosen))
        if close_raw is not None:
            found = decode(close_raw, input_hw, anchors, score_threshold)
            large = found[0][:, 3] - found[0][:, 1] >= CLOSEUP_KEEP * input_hw[0]
            parts.append(_select(found, large, close_scale))
        boxes = np.concatenate([part[0] for part in parts])
        scores = np.concatenate([part[1] for part in parts])
        landmarks = None if parts[0][2] is None else np.concatenate([part[2] for part in parts])
        keep = nms(boxes, scores, nms_threshold)
        if max_faces > 0:
            keep = keep[:max_faces]
        faces = Detections(boxes[keep], scores[keep],
                           None if landmarks is None else landmarks[keep])
    return faces, 1 + len(raws) + close
