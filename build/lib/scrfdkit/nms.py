"""Exact greedy non-maximum suppression that stays fast on thousands of crowded candidates,
and beside it the plain greedy loop it must equal (the tests compare the two)."""
from __future__ import annotations

import numpy as np

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


def box_iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one x1 y1 x2 y2 box with each of `others` (0 where the union is empty)."""
    x1 = np.maximum(box[0], others[:, 0])
    y1 = np.maximum(box[1], others[:, 1])
    x2 = np.minimum(box[2], others[:, 2])
    y2 = np.minimum(box[3], others[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)

    def area(b: np.ndarray) -> np.ndarray:
        return np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)

    union = area(box) + area(others) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def greedy_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Textbook greedy NMS, one box at a time: the slow definition `nms` must equal exactly."""
    kept: list[int] = []
    for i in np.argsort(-scores, kind="stable"):
        if not kept or not (box_iou(boxes[i], boxes[kept]) > iou_threshold).any():
            kept.append(int(i))
    return np.array(kept, dtype=np.int64)
