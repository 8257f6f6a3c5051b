"""The compiled part of scrfdkit.nms: greedy NMS over per-size grids, in numba.

A module of its own so that only a process that runs NMS imports numba and loads the kernel
(about half a second, longer the first time ever, when numba compiles and caches it in
scrfdkit/__pycache__): --help, option errors and the export scripts start without it.
"""
from __future__ import annotations

import math

import numba
import numpy as np

# Why the grids find every pair that matters, whatever the rounding:
# * IoU > t >= 0 needs a positive intersection, so boxes of zero or non-finite area never
#   suppress nor get suppressed; they stay out of the grids and are simply kept.
# * A pair with IoU > t has 1-D IoUs above t along x and y, so their centres are closer than
#   reach * (w_a + w_b) / 2 with reach = (1 - t) / (1 + t): the boxes shrunk about their centres
#   by `reach` overlap. The float IoU is within 1e-6 (relative) of the exact one, so reach is
#   taken for t * (1 - 1e-4), and the shrunk boxes are widened by 1e-9 of their coordinates
#   to cover the rounding of their own float64 arithmetic.
# * For the same reason the areas of such a pair are within a factor t * (1 - 1e-4): boxes are
#   grouped by area into powers of two ("levels", exact through frexp), and a kept box skips
#   the levels too large or too small for it.
# * Each box is listed in every cell of its level's grid that its shrunk box touches. Cell
#   indices are a monotone function of the coordinate, so two overlapping intervals always
#   share a cell.
# These need normal floats; with a threshold below 1e-6 or areas near underflow, boxes are not
# shrunk (reach 1: overlapping boxes share a cell) and every level is searched.
_THRESHOLD_SLACK = 1 - 1e-4
_COORD_SLACK = 1e-9


@numba.njit(cache=True)
def _cell(x: float, origin: float, inv_side: float, cells: int) -> int:
    """Grid column (or row) of coordinate x: monotone in x, clamped to the grid."""
    q = (x - origin) * inv_side
    if not q > 0:  # also NaN (0 * inf)
        return 0
    if q > cells - 1:
        return cells - 1
    return int(q)


@numba.njit(cache=True)
def _span(low: float, high: float, origin: float, inv_side: float, cells: int) -> tuple[int, int]:
    """First and last grid column (or row) that the interval [low, high] touches."""
    return _cell(low, origin, inv_side, cells), _cell(high, origin, inv_side, cells)


@numba.njit(cache=True, nogil=True)
def greedy(boxes: np.ndarray, order: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy NMS visiting boxes in `order` (best first); returns the kept indices."""
    n = len(order)
    zero = threshold - threshold  # 0 in the boxes' own float type
    x1, y1 = np.empty(n, boxes.dtype), np.empty(n, boxes.dtype)  # from here on, by rank
    x2, y2 = np.empty(n, boxes.dtype), np.empty(n, boxes.dtype)
    for k in range(n):
        i = order[k]
        x1[k], y1[k], x2[k], y2[k] = boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3]
    area = np.empty(n, boxes.dtype)
    live = np.zeros(n, np.bool_)  # positive, finite area: the only boxes that can overlap
    level = np.zeros(n, np.int64)
    n_live, lowest, highest, smallest = 0, 1 << 30, -(1 << 30), math.inf
    for i in range(n):
        area[i] = max(x2[i] - x1[i], zero) * max(y2[i] - y1[i], zero)  # as greedy_nms
        if (zero < area[i] < math.inf and np.isfinite(x1[i]) and np.isfinite(y1[i])
                and np.isfinite(x2[i]) and np.isfinite(y2[i])):
            live[i] = True
            n_live += 1
            level[i] = math.frexp(np.float64(area[i]))[1] - 1  # area in [2^level, 2^(level+1))
            lowest, highest = min(lowest, level[i]), max(highest, level[i])
            smallest = min(smallest, np.float64(area[i]))
    if n_live == 0:
        return order.copy()

    info = np.finfo(boxes.dtype)
    normal = smallest >= np.float64(info.tiny) / np.float64(info.eps)  # no area near underflow
    prune = np.float64(threshold) >= 1e-6 and normal
    t_low = np.float64(threshold) * _THRESHOLD_SLACK
    reach = (1 - t_low) / (1 + t_low) if prune else 1.0
    sx1, sy1, sx2, sy2 = np.empty(n), np.empty(n), np.empty(n), np.empty(n)  # shrunk boxes
    left, top, right, bottom = math.inf, math.inf, -math.inf, -math.inf
    for i in range(n):
        if live[i]:
            sx1[i], sx2[i] = _shrink(np.float64(x1[i]), np.float64(x2[i]), reach)
            sy1[i], sy2[i] = _shrink(np.float64(y1[i]), np.float64(y2[i]), reach)
            left, top = min(left, sx1[i]), min(top, sy1[i])
            right, bottom = max(right, sx2[i]), max(bottom, sy2[i])

    # One grid per level, cells about the size of its shrunk boxes, and no level with more
    # cells than half the boxes (the finer levels merge into one; measured best of n/8..2n).
    span_x, span_y = right - left, bottom - top
    most_cells = 0.5 * n_live
    min_side = max(math.sqrt(span_x * span_y / most_cells), max(span_x, span_y) / most_cells)
    first_level = lowest
    if min_side >= math.inf:
        first_level = highest
    elif min_side > 0:
        first_level = max(lowest, math.ceil(2 * math.log2(min_side / reach)) - 1)  # side^2
    first_level = min(first_level, highest)
    n_levels = highest - first_level + 1
    inv_side = np.empty(n_levels)
    cols, rows = np.empty(n_levels, np.int64), np.empty(n_levels, np.int64)
    area_below, area_from = np.empty(n_levels), np.empty(n_levels)  # each level's area range
    first_cell = np.zeros(n_levels + 1, np.int64)
    for lv in range(n_levels):
        area_below[lv] = 2.0 ** (first_level + lv + 1)
        area_from[lv] = 2.0 ** (first_level + lv) if lv > 0 else 0.0
        side = max(math.sqrt(area_below[lv]) * reach, min_side)
        inv_side[lv] = 1 / side
        cols[lv] = _cell(span_x, 0.0, 1 / side, 4 * n_live) + 1  # <= 4n, also for NaN or inf
        rows[lv] = _cell(span_y, 0.0, 1 / side, 4 * n_live) + 1
        first_cell[lv + 1] = first_cell[lv] + cols[lv] * rows[lv]
    for i in range(n):
        if live[i]:
            level[i] = max(level[i], first_level) - first_level

    # Cell lists in rank order (a counting sort): each box in the cells its shrunk box touches.
    spans = np.zeros((n, 4), np.int64)  # first and last column, first and last row
    start = np.zeros(first_cell[n_levels] + 1, np.int64)
    for i in range(n):
        if live[i]:
            lv = level[i]
            c0, c1 = _span(sx1[i], sx2[i], left, inv_side[lv], cols[lv])
            r0, r1 = _span(sy1[i], sy2[i], top, inv_side[lv], rows[lv])
            spans[i, 0], spans[i, 1], spans[i, 2], spans[i, 3] = c0, c1, r0, r1
            for row in range(first_cell[lv] + r0 * cols[lv], first_cell[lv] + (r1 + 1) * cols[lv],
                             cols[lv]):
                for cell in range(row + c0, row + c1 + 1):  # a loop: slices cost 5x here
                    start[cell + 1] += 1
    start = np.cumsum(start)
    entry = np.empty(start[-1], np.int32)
    cursor = start[:-1].copy()
    for i in range(n):
        if live[i]:
            lv, c0, c1, r0, r1 = level[i], spans[i, 0], spans[i, 1], spans[i, 2], spans[i, 3]
            for row in range(first_cell[lv] + r0 * cols[lv], first_cell[lv] + (r1 + 1) * cols[lv],
                             cols[lv]):
                for cell in range(row + c0, row + c1 + 1):
                    entry[cursor[cell]] = i
                    cursor[cell] += 1

    # Greedy: each kept box suppresses the later boxes it overlaps with IoU > t.
    cursor[:] = start[:-1]  # per cell: the first entry ranked after the current box
    suppressed = np.zeros(n, np.bool_)
    kept, n_kept = np.empty(n, np.int64), 0
    for k in range(n):
        if suppressed[k]:
            continue
        kept[n_kept] = order[k]
        n_kept += 1
        if not live[k]:
            continue
        kx1, ky1, kx2, ky2, k_area = x1[k], y1[k], x2[k], y2[k], area[k]
        for lv in range(n_levels):
            if prune and (area_below[lv] <= t_low * k_area or area_from[lv] * t_low >= k_area):
                continue
            c0, c1 = _span(sx1[k], sx2[k], left, inv_side[lv], cols[lv])
            r0, r1 = _span(sy1[k], sy2[k], top, inv_side[lv], rows[lv])
            for row in range(first_cell[lv] + r0 * cols[lv], first_cell[lv] + (r1 + 1) * cols[lv],
                             cols[lv]):
                for cell in range(row + c0, row + c1 + 1):
                    later, end = cursor[cell], start[cell + 1]
                    while later < end and entry[later] <= k:
                        later += 1
                    cursor[cell] = later
                    for e in range(later, end):  # branch-free: mispredictions cost more than IoUs
                        j = entry[e]
                        w = max(min(x2[j], kx2) - max(x1[j], kx1), zero)
                        h = max(min(y2[j], ky2) - max(y1[j], ky1), zero)
                        inter = w * h
                        union = area[j] + k_area - inter  # greedy_nms's order of operations
                        suppressed[j] |= (union > zero) & (inter / union > threshold)
    return kept[:n_kept]


@numba.njit(cache=True)
def _shrink(low: float, high: float, reach: float) -> tuple[float, float]:
    """Interval [low, high] shrunk about its centre by `reach`, widened for rounding."""
    centre, half = (low + high) * 0.5, (high - low) * 0.5 * reach
    margin = _COORD_SLACK * (abs(low) + abs(high))
    return centre - half - margin, centre + half + margin
