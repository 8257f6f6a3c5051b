"""Faces followed from frame to frame, so that a face the detector misses for a moment stays
hidden: ByteTrack's two-stage association (confident detections first, then low-score ones
for the tracks left over) with a constant-velocity Kalman filter per face.

What gets blurred in a frame (its regions) is every confident detection, as without tracking,
PLUS what tracking adds: a low-score detection that continues a known face, and the predicted
box of a face missed for at most `hold` frames. Tracking never removes or moves a detection's
own region. A low-score detection never starts a face: alone, it is more often a pattern on a
shirt than a face.

Each face's box, BoxKalman: where the face will be next frame. State: centre x, centre y,
width, height, each with its velocity. Noise scales with the box's size, as in SORT and
ByteTrack, so a 20-pixel face and a 400-pixel one are followed alike. The motion, the noise and
the start are the same per coordinate and never mix coordinates, so the 8-state filter is
exactly four independent (position, velocity) filters: 2x2 covariances and a scalar division
instead of an 8x8 solve (which, through LAPACK's threads, took milliseconds per face on a busy
machine).

Shot changes, CutDetector: where a video cuts to another scene, every face the tracker follows
is gone. Without this, a face's predicted box stays blurred for --track-hold frames over the
new shot, where nobody stands (on the sample videos, most held boxes after a cut were on no
face).
"""
from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

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

DETECTED, LOW_SCORE, PREDICTED, PREDICTED_BACK = "detected", "low-score", "predicted", \
    "predicted-backward"
DEFAULT_TRACK_SCORE = 0.2  # low-score detections from here may continue a face (README)
DEFAULT_HOLD = 2  # frames a missed face stays blurred at its predicted place (README)
MATCH_IOU = 0.2  # a confident detection continues a track whose predicted box it overlaps this much
LOW_MATCH_IOU = 0.4  # a low-score one must overlap more: it has less to vouch for it


@dataclass
class Region:
    """One face to hide in one frame: a box in image pixels, and why it is hidden."""

    box: np.ndarray  # x1 y1 x2 y2, the face (detected or predicted), before any margin
    track: int  # the face's id, the same in every frame it is hidden in
    kind: str  # DETECTED, LOW_SCORE, PREDICTED or PREDICTED_BACK
    score: float | None = None  # the detection's score (None for a predicted box)
    detection: int = -1  # index in the frame's detections (-1 for a predicted box)


class Track:
    """One face: its filter, its id, and how many frames it has gone undetected."""

    def __init__(self, track_id: int, box: np.ndarray) -> None:
        self.id = track_id
        self.filter = BoxKalman(box)
        self.missed = 0

    def predict(self) -> None:
        self.filter.predict(still_size=self.missed > 0)

    def update(self, box: np.ndarray) -> None:
        self.filter.update(box)
        self.missed = 0


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in `a` (N, 4) with every box in `b` (M, 4)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    low = np.maximum(a[:, None, :2], b[None, :, :2])
    high = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(high - low, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def match(tracks: list[Track], boxes: np.ndarray, min_iou: float) -> list[tuple[int, int]]:
    """(track index, box index) pairs of the assignment with the largest total IoU, each pair
    overlapping at least `min_iou` (Hungarian algorithm, as ByteTrack)."""
    if not tracks or not len(boxes):
        return []
    overlap = iou_matrix(np.array([t.filter.box for t in tracks]), boxes)
    rows, cols = linear_sum_assignment(-overlap)
    return [(r, c) for r, c in zip(rows, cols) if overlap[r, c] >= min_iou]


class FaceTracker:
    """update() once per frame with that frame's detections; it returns the frame's regions.

    `score`: the blur threshold, at or above which a detection is hidden and may start a
    face. `track_score`: lower detections may continue a face. `hold`: frames a face stays
    hidden at its predicted place after its last detection. `keep`: frames an undetected
    face is remembered for (at least `hold`), so a later detection gets its id back.
    """

    def __init__(self, score: float, track_score: float = DEFAULT_TRACK_SCORE,
                 hold: int = DEFAULT_HOLD, keep: int | None = None,
                 kind_predicted: str = PREDICTED) -> None:
        self.score, self.track_score, self.hold = score, min(track_score, score), hold
        self.keep = max(hold, keep if keep is not None else hold)
        self.kind_predicted = kind_predicted
        self.tracks: list[Track] = []
        self._ids = itertools.count(1)

    def reset(self) -> None:
        """Forget every face (a cut to another shot); ids keep counting up."""
        self.tracks = []

    def update(self, boxes: np.ndarray, scores: np.ndarray) -> list[Region]:
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        scores = np.asarray(scores, np.float64).reshape(-1)
        for track in self.tracks:
            track.predict()
        confident = np.flatnonzero(scores >= self.score)
        low = np.flatnonzero((scores >= self.track_score) & (scores < self.score))
        regions: list[Region] = []
        # stage 1: confident detections against every remembered face
        pairs = match(self.tracks, boxes[confident], MATCH_IOU)
        matched = {t for t, _ in pairs}
        taken = {confident[d] for _, d in pairs}
        for t, d in pairs:
            self.tracks[t].update(boxes[confident[d]])
        # stage 2: low-score detections against the faces still unmatched
        rest = [t for t in range(len(self.tracks)) if t not in matched]
        for r, d in match([self.tracks[t] for t in rest], boxes[low], LOW_MATCH_IOU):
            track = self.tracks[rest[r]]
            track.update(boxes[low[d]])
            matched.add(rest[r])
            regions.append(Region(boxes[low[d]], track.id, LOW_SCORE, float(scores[low[d]]),
                                  int(low[d])))
        # every confident detection is hidden; those that continue no face start one
        owner = {confident[d]: self.tracks[t].id for t, d in pairs}
        for d in confident:
            if d not in taken:
                track = Track(next(self._ids), boxes[d])
                self.tracks.append(track)
                owner[d] = track.id
            regions.append(Region(boxes[d], owner[d], DETECTED, float(scores[d]), int(d)))
        # faces missed in this frame: their predicted box, for `hold` frames
        survivors = []
        for index, track in enumerate(self.tracks):
            if index not in matched and track.id not in owner.values():
                track.missed += 1
                if track.missed <= self.hold:
                    regions.append(Region(track.filter.box, track.id, self.kind_predicted))
                if track.missed > self.keep:
                    continue
            survivors.append(track)
        self.tracks = survivors
        return sorted(regions, key=lambda r: r.track)


def track_video(detections: list[tuple[np.ndarray, np.ndarray]], score: float,
                track_score: float = DEFAULT_TRACK_SCORE, hold: int = DEFAULT_HOLD,
                two_pass: bool = False, cuts: list[bool] | None = None) -> list[list[Region]]:
    """Regions for every frame of a whole video, given each frame's (boxes, scores) and
    whether it starts a new shot (`cuts`, see CutDetector: every face is forgotten there).

    two_pass: the frames are also tracked backwards, from the last to the first, so a face
    is hidden for `hold` frames BEFORE its first detection too (and low-score detections
    before it count). The backward regions are added to the forward ones, under the id the
    face has going forward; one already hidden (IoU >= 0.5) is not hidden twice.
    """
    cuts = cuts or [False] * len(detections)
    forward = FaceTracker(score, track_score, hold)
    regions = []
    for (boxes, scores), cut in zip(detections, cuts):
        if cut:
            forward.reset()
        regions.append(forward.update(boxes, scores))
    if not two_pass:
        return regions
    forward_id = {(f, r.detection): r.track for f, frame in enumerate(regions) for r in frame
                  if r.detection >= 0}
    backward = FaceTracker(score, track_score, hold, kind_predicted=PREDICTED_BACK)
    link: dict[int, int] = {}  # backward id -> forward id of the detection it last continued
    for f in range(len(detections) - 1, -1, -1):
        for region in backward.update(*detections[f]):
            if region.detection >= 0 and (f, region.detection) in forward_id:
                link[region.track] = forward_id[(f, region.detection)]
                continue  # the forward pass hides this detection already
            if region.kind == DETECTED:
                continue  # (not reached: every confident detection is hidden going forward)
            region.track = link.get(region.track, region.track)
            hidden = np.array([r.box for r in regions[f]]).reshape(-1, 4)
            if not len(hidden) or iou_matrix(region.box[None], hidden).max() < 0.5:
                regions[f].append(region)
        if cuts[f]:  # going backwards, the shot before this frame is another scene
            backward.reset()
    return regions
