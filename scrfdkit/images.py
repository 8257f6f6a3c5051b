"""Images in: any file OpenCV decodes, as 8-bit BGR at its true brightness, with one-line
errors that name what cannot be read (GIF, HEIC, a damaged file) instead of a traceback."""
from __future__ import annotations

import contextlib
import os
import struct
from typing import Iterator

import cv2
import numpy as np

from .errors import UserError

FLOAT_UNIT_PEAK = 1.5  # float images peaking below this hold [0, 1] samples, above it [0, 255]

UNSUPPORTED_SIGNATURES = {  # formats OpenCV cannot decode: named instead of called corrupt
    b"GIF87a": "GIF", b"GIF89a": "GIF", b"%PDF": "PDF", b"8BPS": "Photoshop (PSD)",
    b"<svg": "SVG", b"<?xml": "SVG/XML",
}
ISO_BRANDS = {b"heic": "HEIC", b"heix": "HEIC", b"mif1": "HEIF", b"avif": "AVIF"}  # at offset 8
VOWEL_SOUND_LETTERS = set("AEFHILMNORSX")  # letters whose spoken names start with a vowel
READ_AS_WORDS = {"HEIC", "HEIF"}  # names said as words ("heek"), not letter by letter


def with_article(name: str) -> str:
    """'an AVIF', 'a GIF', 'an SVG', 'a HEIC': a format's name with the article it takes as
    it is said (an initialism letter by letter)."""
    first = name.split()[0]
    spelled = first.isupper() and first not in READ_AS_WORDS
    vowel = name[0] in "AEIOU" or (spelled and name[0] in VOWEL_SOUND_LETTERS)
    return f"{'an' if vowel else 'a'} {name}"


@contextlib.contextmanager
def opencv_quiet() -> Iterator[None]:
    """Silence OpenCV's own log lines for a moment (OpenCV 4 and 5 keep the switch apart)."""
    logging = getattr(getattr(cv2, "utils", None), "logging", None)
    get_level = getattr(logging, "getLogLevel", None) or cv2.getLogLevel
    set_level = getattr(logging, "setLogLevel", None) or cv2.setLogLevel
    level = get_level()
    set_level(0)
    try:
        yield
    finally:
        set_level(level)

def unsupported_format(data: np.ndarray) -> str | None:
    """The name of a known image format OpenCV cannot read, from the file's first bytes."""
    head = data[:16].tobytes()
    for signature, name in UNSUPPORTED_SIGNATURES.items():
        if head.lstrip().startswith(signature):
            return name
    return ISO_BRANDS.get(head[8:12]) if head[4:8] == b"ftyp" else None

def read_image(path: str | os.PathLike, notes: list[str] | None = None) -> np.ndarray:
    """Read any image OpenCV decodes as 8-bit BGR; UserError (one line) for what it cannot.

    Grayscale, palette, CMYK, alpha, 16-bit and float samples are converted to 8-bit BGR at
    their true brightness. Unsupported formats are named (GIF, HEIC...), not called corrupt.
    An animated WebP or PNG, or a multi-page TIFF, gives its first frame, and `notes` (when
    given) gets a line saying so.
    """
    try:
        data = np.fromfile(str(path), np.uint8)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {path}: {getattr(err, 'strerror', None) or err}") from None
    if not data.size:
        raise UserError(f"cannot decode image {path}: the file is empty")
    image = None
    try:
        with opencv_quiet():  # OpenCV's own decoder complaints: we say what went wrong in one line
            image = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
            if image is None:  # single-channel float or 32-bit TIFFs only decode unchanged
                image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error as err:
        if "pixels" in str(err).lower() or "size" in str(err).lower():
            raise UserError(f"cannot decode image {path}: its header claims more pixels than "
                            "OpenCV accepts (damaged, or too large)") from None
        raise UserError(f"cannot decode image {path}: {str(err).strip().splitlines()[-1]}") from None
    if image is None:
        name = unsupported_format(data)
        if name:
            raise UserError(f"{path} is {with_article(name)} file, not a supported image format; convert it "
                            "to JPEG or PNG")
        raise UserError(f"cannot decode image {path} (corrupt or not an image)")
    pages = frame_count(data)
    if pages > 1 and notes is not None:
        notes.append(f"{path} holds {pages} frames (animated or multi-page); only the first "
                     "is used")
    try:
        return to_bgr8(image)
    except ValueError as err:
        raise UserError(f"cannot use image {path}: {err}") from None

def frame_count(data: np.ndarray) -> int:
    """Frames in an animated PNG (acTL), an animated WebP (ANMF chunks) or a TIFF (its chain of
    image directories), read from the file's bytes; 1 for any other image."""
    head = data[:16].tobytes()
    try:
        if head.startswith(b"\x89PNG\r\n\x1a\n"):
            at = 8
            while at + 8 <= len(data):
                length, kind = struct.unpack(">I4s", data[at:at + 8].tobytes())
                if kind == b"acTL":
                    return max(1, struct.unpack(">I", data[at + 8:at + 12].tobytes())[0])
                if kind == b"IDAT":
                    return 1
                at += 12 + length
        elif head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            at, frames = 12, 0
            while at + 8 <= len(data):
                kind, length = struct.unpack("<4sI", data[at:at + 8].tobytes())
                frames += kind == b"ANMF"
                at += 8 + length + (length & 1)
            return max(1, frames)
        elif head[:4] in (b"II*\0", b"MM\0*"):
            order = "<" if head[:2] == b"II" else ">"
            offset, pages, seen = struct.unpack(order + "I", head[4:8])[0], 0, set()
            while 0 < offset < len(data) - 2 and offset not in seen and pages < 10000:
                seen.add(offset)
                pages += 1
                entries = struct.unpack(order + "H", data[offset:offset + 2].tobytes())[0]
                next_at = offset + 2 + 12 * entries
                offset = struct.unpack(order + "I", data[next_at:next_at + 4].tobytes())[0]
            return max(1, pages)
    except struct.error:  # a truncated header: OpenCV has already decoded what it could
        pass
    return 1

def to_bgr8(image: np.ndarray) -> np.ndarray:
    """Bring an array from any common image format to contiguous uint8 BGR.

    16-bit samples keep their full-range meaning (>> 8). Float samples in [0, 1] (rounding
    may reach a little past 1) are scaled by 255, float samples in [0, 255] kept, brighter (HDR) ones scaled to their peak. Other
    integer depths are refused rather than guessed.
    """
    if image.size == 0:
        raise ValueError("the image has no pixels")
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype.kind == "f":
        finite = np.nan_to_num(image.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        peak = float(finite.max(initial=0))
        scale = 255.0 if peak <= FLOAT_UNIT_PEAK else (1.0 if peak <= 255.0 else 255.0 / peak)
        image = np.clip(finite * scale, 0, 255).astype(np.uint8)
    elif image.dtype == np.bool_:
        image = image.astype(np.uint8) * 255
    elif image.dtype != np.uint8:
        if image.dtype.kind in "iu" and image.min(initial=0) >= 0 and image.max(initial=0) <= 255:
            image = image.astype(np.uint8)
        else:
            raise ValueError(f"{image.dtype} samples are not supported; save it with 8- or "
                             "16-bit samples")
    if image.ndim == 2 or image.shape[-1] == 1:
        image = cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2BGR)
    elif image.shape[-1] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    elif image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"an image of shape {image.shape} is not grayscale, BGR or BGRA")
    return np.ascontiguousarray(image)
