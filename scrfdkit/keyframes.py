"""Video: the complete small-face search on keyframes only, and between them the single pass
plus one look, at full resolution, at the places where small faces are being followed.

Why: a tiled 1080p frame costs 13 model passes (scrfdkit/tiles.py), yet from one frame to the
next the small faces are where they were, a little moved. So the full search (the detector's
tiles) runs on the first frame, at every shot change and every `interval` frames after the
last keyframe; between keyframes the frame gets the whole-frame pass (which finds large faces
and any face entering big enough for it) and ONE more pass over a mosaic of patches: each
small face being followed, cut out at the frame's own resolution (the scale tiles see it at)
around where its Kalman filter predicts it, with the context around it, packed side by side
into one model input. Faces too small for the whole pass that appear between keyframes are
found at the next keyframe at the latest, `interval - 1` frames later.

Frames no larger than the model's input have no tiles; for them the "full search" is the
whole pass (and the close-up pass), so every frame is a keyframe and nothing changes.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .decode import normalize
from .detections import Detections
from .detector import SCRFD
from .nms import nms
from .tiles import (BORDER_MARGIN, CLOSEUP_FRACTION, CLOSEUP_KEEP, CLOSEUP_SHRINK,
                    WHOLE_PASS_MIN_FACE, TiledInput, plan_tiles)
from .timing import Profile
from .tracker import CutDetector, FaceTracker

DEFAULT_INTERVAL = 10  # frames from one full search to the next (docs/video.md: measured)
PATCH_BELOW = 24  # px in the whole pass's input: followed faces smaller than this get a patch
PATCH_CONTEXT = 1.0  # a patch reaches this many face heights past the face on every side
MIN_PATCH = 64  # px, a patch's smallest side (context for a tiny face)
GAP = 8  # px of zeros between patches in the mosaic
FOLLOW_FRAMES = 25  # a followed face is looked for this many frames (1 s at 25 fps) after it
# was last found: a face hidden for a moment (behind a passer-by) is looked for again


@dataclass
class KeyframeInput:
    """One frame made ready (KeyframeSearch.prepare, in the read-ahead thread)."""

    image: np.ndarray  # the BGR frame (not a copy)
    prepared: tuple[np.ndarray, float] | TiledInput  # the detector's prepared input
    keyframe: bool  # the full search runs on this frame
    cut: bool  # a new shot starts here


@dataclass(frozen=True)
class Patch:
    """A rectangle of the frame (x1, y1, x2, y2, ints) and where it sits in the mosaic."""

    box: tuple[int, int, int, int]
    at: tuple[int, int] = (0, 0)  # x, y of its top-left corner in the mosaic


class KeyframeSearch:
    """The video job's per-frame step (videos.py): prepare() each frame in order (any one
    thread), then detect() it, or call it as the job does (another thread): Detections
    as the tiled detector gives them on keyframes, the whole pass plus patches between.
    prepare() also tells whether a new shot starts at the frame (cuts.py; timed as "cuts" in
    `profile`). A detector without tiles, or interval 1, gives exactly the detector's own
    prepare() and detect_prepared() on every frame.

    Between keyframes it looks again where faces found from `score` on are predicted to be,
    continuing them from `track_score` (the blur tracker's association), for up to `follow`
    frames after each was last found. `passes`: model passes of the last frame.
    """

    def __init__(self, detector: SCRFD, interval: int = DEFAULT_INTERVAL, score: float = 0.2,
                 profile: Profile | None = None, track_score: float = 0.2,
                 follow: int = FOLLOW_FRAMES,
                 patch_below: float = PATCH_BELOW, context: float = PATCH_CONTEXT,
                 zoom: bool = True) -> None:
        if interval < 1:
            raise ValueError(f"the keyframe interval must be 1 or more, got {interval}")
        self.detector, self.interval = detector, interval
        self.active = bool(detector.tile) and interval > 1
        self.cuts, self.profile = CutDetector(), profile or Profile()
        self.patch_below, self.context, self.zoom = patch_below, context, zoom
        self.follow = FaceTracker(score, track_score, hold=0, keep=follow)
        self._since_keyframe: int | None = None
        self.passes = 0
        self.keyframes = 0

    def reset(self) -> None:
        """A new video: its first frame is a keyframe, nothing followed, no shot before it."""
        self.cuts, self._since_keyframe = CutDetector(), None
        self.follow.reset()

    def __call__(self, image: np.ndarray, prepared: KeyframeInput, cut: bool) -> Detections:
        """The frame's faces, as the job asks for them (`cut` is prepared.cut)."""
        return self.detect(prepared)

    def prepare(self, image_bgr: np.ndarray) -> KeyframeInput:
        """The frame's input: tiled on a keyframe, the single pass's otherwise."""
        with self.profile("cuts"):
            cut = self.cuts(image_bgr)
        if not self.active:
            return KeyframeInput(image_bgr, self.detector.prepare(image_bgr), True, cut)
        tiled = len(plan_tiles(image_bgr.shape[:2], self.detector.input_hw,
                               self.detector.tile_face)) > 0
        keyframe = (not tiled or cut or self._since_keyframe is None
                    or self._since_keyframe + 1 >= self.interval)
        self._since_keyframe = 0 if keyframe else self._since_keyframe + 1
        return KeyframeInput(image_bgr, self.detector.prepare(image_bgr, tile=keyframe),
                             keyframe, cut)

    def detect(self, frame: KeyframeInput) -> Detections:
        detector = self.detector
        if not self.active:
            self.keyframes += 1
            return detector.detect_prepared(frame.prepared)
        before = detector.total_passes
        if frame.cut:
            self.follow.reset()
        if frame.keyframe:
            self.keyframes += 1
            faces = detector.detect_prepared(frame.prepared)
        else:
            faces = self._between(frame)
        self.follow.update(faces.boxes, faces.scores)
        self.passes = detector.total_passes - before
        return faces

    def _between(self, frame: KeyframeInput) -> Detections:
        """The whole pass, with the patches packed into its letterbox's unused part (a 16:9
        frame fills 360 of a 480x640 input's rows) and, when more are needed, further
        mosaics of patches the input's size."""
        detector, image = self.detector, frame.image
        tensor, scale = frame.prepared
        looked = self.predicted()
        small = looked[(looked[:, 3] - looked[:, 1]) * scale < self.patch_below]
        used_h, used_w = (min(side, max(1, int(image.shape[i] * scale)))
                          for i, side in enumerate(detector.input_hw))
        free = (0, used_h + GAP, detector.input_hw[1], detector.input_hw[0])  # below the frame
        if detector.input_hw[1] - used_w > detector.input_hw[0] - used_h:  # or to its right
            free = (used_w + GAP, 0, detector.input_hw[1], detector.input_hw[0])
        mosaics = pack(patch_boxes(small, image.shape[:2], self.context), detector.input_hw, free)
        layout = detector.runner.layout
        if mosaics[0]:
            tensor = tensor.copy()
            x1, y1, x2, y2 = free
            strip = normalize(paste(image, mosaics[0], free), layout)
            if layout == "NCHW":
                tensor[:, :, y1:y2, x1:x2] = strip
            else:
                tensor[:, y1:y2, x1:x2] = strip
        found = detector.detect_prepared((tensor, scale))
        centres = (found.boxes[:, :2] + found.boxes[:, 2:]) / 2 * scale
        on_frame = (centres[:, 0] < used_w) & (centres[:, 1] < used_h)
        whole = found[on_frame]
        parts = [whole, from_mosaic(found[~on_frame].scaled(1 / scale), mosaics[0],
                                    image.shape[:2])]
        heights = whole.boxes[:, 3] - whole.boxes[:, 1]
        if self.zoom:  # small faces the whole pass glimpses where no patch looked: a closer look
            inside = within(whole.boxes, [p.box for mosaic in mosaics for p in mosaic])
            new = whole.boxes[~inside & (heights * scale < self.patch_below)]
            if len(new):
                extra = pack(patch_boxes(new, image.shape[:2], self.context), detector.input_hw,
                             (0, 0, 0, 0))[1:]
                mosaics = mosaics + extra
        for mosaic in mosaics[1:]:
            canvas = paste(image, mosaic, (0, 0, *detector.input_hw[::-1]))
            parts.append(from_mosaic(detector.detect(canvas, tile=False), mosaic,
                                     image.shape[:2]))
        # a face the whole pass sees too small is the patches' to answer for where they look
        inside = within(whole.boxes, [p.box for mosaic in mosaics for p in mosaic])
        parts[0] = whole[~(inside & (heights * scale < WHOLE_PASS_MIN_FACE))]
        large = self._closeup(image, scale, whole, looked)
        if large is not None:
            parts.append(large)
        return merge(parts, detector.nms_threshold, detector.max_faces)

    def _closeup(self, image: np.ndarray, scale: float, whole: Detections,
                 looked: np.ndarray) -> Detections | None:
        """The tiled search's close-up pass, when a face found or followed may fill half the
        input (SCRFD loses faces that fill the frame)."""
        input_h = self.detector.input_hw[0]
        heights = np.concatenate([whole.boxes[:, 3] - whole.boxes[:, 1],
                                  looked[:, 3] - looked[:, 1]])
        if not np.any(heights * scale >= CLOSEUP_FRACTION * input_h):
            return None
        shrink = scale * CLOSEUP_SHRINK
        new_h = min(input_h, max(1, int(image.shape[0] * shrink)))
        new_w = min(self.detector.input_hw[1], max(1, int(image.shape[1] * shrink)))
        canvas = np.zeros((*self.detector.input_hw, 3), np.uint8)
        canvas[:new_h, :new_w] = cv2.resize(image, (new_w, new_h))
        found = self.detector.detect(canvas, tile=False)
        found = found[found.boxes[:, 3] - found.boxes[:, 1] >= CLOSEUP_KEEP * input_h]
        return found.scaled(shrink)

    def predicted(self) -> np.ndarray:
        """(N, 4) where each followed face should be in the coming frame: its Kalman filter's
        estimate moved by its velocity (the size held for a face not found last frame)."""
        boxes = []
        for track in self.follow.tracks:
            velocity = track.filter.velocity.copy()
            if track.missed:  # not found last frame: its size held, as the tracker does
                velocity[2:] = 0.0
            cx, cy, w, h = track.filter.position + velocity
            w, h = max(w, 1.0), max(h, 1.0)
            boxes.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
        return np.array(boxes, np.float64).reshape(-1, 4)


def patch_boxes(faces: np.ndarray, image_hw: tuple[int, int], context: float
                ) -> list[tuple[int, int, int, int]]:
    """Each face's box grown by `context` face heights on every side (at least MIN_PATCH on a
    side), clipped to the frame; overlapping patches are joined into their union."""
    height, width = image_hw
    boxes = []
    for x1, y1, x2, y2 in faces:
        reach = context * max(y2 - y1, x2 - x1)
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        half_w = max((x2 - x1) / 2 + reach, MIN_PATCH / 2)
        half_h = max((y2 - y1) / 2 + reach, MIN_PATCH / 2)
        box = [int(max(0, np.floor(cx - half_w))), int(max(0, np.floor(cy - half_h))),
               int(min(width, np.ceil(cx + half_w))), int(min(height, np.ceil(cy + half_h)))]
        if box[2] > box[0] and box[3] > box[1]:
            boxes.append(box)
    joined = True
    while joined:  # join until no two overlap
        joined = False
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                a, b = boxes[i], boxes[j]
                if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]:
                    boxes[i] = [min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]),
                                max(a[3], b[3])]
                    del boxes[j]
                    joined = True
                    break
            if joined:
                break
    return [tuple(b) for b in boxes]


def pack(boxes: list[tuple[int, int, int, int]], input_hw: tuple[int, int],
         free: tuple[int, int, int, int]) -> list[list[Patch]]:
    """Patches placed in rows (tallest first, GAP apart): first in `free` (x1, y1, x2, y2 of
    the whole pass's unused input), then on mosaics of the input's size. The first list is
    what goes into `free` (maybe none); a patch larger than the input is cut into pieces
    that fit, overlapping."""
    input_h, input_w = input_hw
    pieces = []
    for x1, y1, x2, y2 in boxes:
        for ty in _spans(y1, y2, input_h):
            for tx in _spans(x1, x2, input_w):
                pieces.append((tx[0], ty[0], tx[1], ty[1]))
    pieces.sort(key=lambda b: (b[3] - b[1], b[2] - b[0]), reverse=True)
    bins = [Shelf(free)]
    mosaics: list[list[Patch]] = [[]]
    for box in pieces:
        for shelf, mosaic in zip(bins, mosaics):
            at = shelf.place(box[2] - box[0], box[3] - box[1])
            if at is not None:
                mosaic.append(Patch(box, at))
                break
        else:
            bins.append(Shelf((0, 0, input_w, input_h)))
            mosaics.append([Patch(box, bins[-1].place(box[2] - box[0], box[3] - box[1]))])
    return mosaics


class Shelf:
    """Rows of rectangles filling an area left to right, top to bottom."""

    def __init__(self, area: tuple[int, int, int, int]) -> None:
        self.x1, self.y1, self.x2, self.y2 = area
        self.x, self.y, self.row_h = self.x1, self.y1, 0

    def place(self, w: int, h: int) -> tuple[int, int] | None:
        if self.x + w > self.x2 and self.row_h:  # next row
            self.x, self.y, self.row_h = self.x1, self.y + self.row_h + GAP, 0
        if self.x + w > self.x2 or self.y + h > self.y2:
            return None
        at = (self.x, self.y)
        self.x, self.row_h = self.x + w + GAP, max(self.row_h, h)
        return at


def paste(image: np.ndarray, mosaic: list[Patch], area: tuple[int, int, int, int]
          ) -> np.ndarray:
    """The BGR canvas of `area` (x1, y1, x2, y2 in the input) with its patches in place."""
    canvas = np.zeros((area[3] - area[1], area[2] - area[0], 3), np.uint8)
    for patch in mosaic:
        x1, y1, x2, y2 = patch.box
        ax, ay = patch.at[0] - area[0], patch.at[1] - area[1]
        canvas[ay: ay + y2 - y1, ax: ax + x2 - x1] = image[y1:y2, x1:x2]
    return canvas


def _spans(start: int, stop: int, size: int) -> list[tuple[int, int]]:
    """[start, stop) cut into pieces of at most `size`, overlapping by half a piece's slack."""
    if stop - start <= size:
        return [(start, stop)]
    count = -(-(stop - start - size) // (size // 2)) + 1
    starts = np.linspace(start, stop - size, count).astype(int)
    return [(int(s), int(s) + size) for s in starts]


def from_mosaic(found: Detections, mosaic: list[Patch], image_hw: tuple[int, int]
                ) -> Detections:
    """Mosaic detections back to frame pixels: each belongs to the patch holding its centre,
    and is dropped when it reaches within BORDER_MARGIN of an edge of that patch lying inside
    the frame (it may be half a face: the whole face is in another pass)."""
    height, width = image_hw
    keep, offsets = [], []
    for index, (x1, y1, x2, y2) in enumerate(found.boxes):
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        for patch in mosaic:
            px1, py1, px2, py2 = patch.box
            ax, ay = patch.at
            w, h = px2 - px1, py2 - py1
            if not (ax <= cx < ax + w and ay <= cy < ay + h):
                continue
            cut = ((px1 > 0 and x1 < ax + BORDER_MARGIN) or (py1 > 0 and y1 < ay + BORDER_MARGIN)
                   or (px2 < width and x2 > ax + w - BORDER_MARGIN)
                   or (py2 < height and y2 > ay + h - BORDER_MARGIN))
            if not cut:
                keep.append(index)
                offsets.append((px1 - ax, py1 - ay))
            break
    kept = found[np.array(keep, int)]
    shift = np.array(offsets, np.float32).reshape(-1, 2)
    kept.boxes = kept.boxes + np.tile(shift, 2)
    if kept.landmarks is not None:
        kept.landmarks = kept.landmarks + shift[:, None, :]
    return kept


def within(boxes: np.ndarray, patches: list[tuple[int, int, int, int]]) -> np.ndarray:
    """Which boxes have their centre inside some patch."""
    inside = np.zeros(len(boxes), bool)
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    for x1, y1, x2, y2 in patches:
        inside |= (cx >= x1) & (cx < x2) & (cy >= y1) & (cy < y2)
    return inside


def merge(parts: list[Detections], nms_threshold: float, max_faces: int) -> Detections:
    """Every pass's faces, each face once (NMS over all of them, best first)."""
    boxes = np.concatenate([p.boxes for p in parts])
    scores = np.concatenate([p.scores for p in parts])
    with_points = all(p.landmarks is not None for p in parts)
    points = np.concatenate([p.landmarks for p in parts]) if with_points else None
    keep = nms(boxes, scores, nms_threshold)
    if max_faces > 0:
        keep = keep[:max_faces]
    return Detections(boxes[keep], scores[keep], None if points is None else points[keep])
