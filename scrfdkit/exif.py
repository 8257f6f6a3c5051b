"""What a photo file says besides its pixels, and what a written copy keeps of it.

OpenCV writes pixels only: cv2.imencode puts no EXIF, XMP, IPTC or ICC profile in a file, so
the photos scrfd.py writes drop the GPS position, the camera's serial numbers, the owner's
name, the dates and the EXIF thumbnail (a small copy of the photo, faces unblurred) unless
asked to keep them. keep=True copies the source's EXIF, its orientation reset (the pixels are
written upright) and its thumbnail left out, and the ICC colour profile, through Pillow;
XMP and IPTC are never copied (they may hold a position too, and face regions).
"""
from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

# What the summary names when a photo had it and the written copy does not. EXIF tag numbers:
# the main image's (IFD0) and the Exif sub-IFD's, which Pillow reads as one of each.
IDENTIFYING_TAGS = {
    "camera make and model": (0x010F, 0x0110),
    "serial numbers": (0xA431, 0xA435, 0xA420),  # body, lens, image unique id
    "owner, artist or copyright": (0x013B, 0xA430, 0x8298),
    "dates and times": (0x0132, 0x9003, 0x9004),
}
EXIF_IFD, GPS_IFD, THUMBNAIL_IFD = 0x8769, 0x8825, -1  # Pillow's ExifTags.IFD numbers
ORIENTATION = 0x0112
JPEG_QUALITY = 95  # OpenCV's own default, so a kept-metadata JPEG looks like the default one
PILLOW_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".png": "PNG",
                  ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF"}  # formats that hold EXIF


@dataclass(frozen=True)
class PhotoMetadata:
    """A source photo's EXIF (as Pillow writes it, no thumbnail; None when it has none), ICC
    profile, and the names of the identifying things it carries (GPS position, XMP...)."""

    exif: bytes | None
    icc_profile: bytes | None
    found: tuple[str, ...]

    def dropped(self, keep: bool) -> tuple[str, ...]:
        """What a written copy lacks of `found`: all of it, or with keep what is never kept."""
        return tuple(n for n in self.found if not keep or n in ("thumbnail", "XMP", "IPTC"))


def read_metadata(path: str | os.PathLike) -> PhotoMetadata | None:
    """The metadata of a local photo file; None when Pillow cannot read it (the pixels'
    reader reports unreadable files)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's DecompressionBombWarning: header only
            with Image.open(path) as image:  # sub-IFDs of a TIFF are read from the open file
                exif, info = image.getexif(), dict(image.info)
                ifds = {ifd: dict(exif.get_ifd(ifd)) for ifd in (EXIF_IFD, GPS_IFD,
                                                                 THUMBNAIL_IFD)}
                data = exif.tobytes() if len(exif) else None  # Pillow writes no IFD1
    except Exception:  # noqa: BLE001 - any file Pillow cannot parse simply has no metadata here
        return None
    tags = {**dict(exif), **ifds[EXIF_IFD]}
    found = ["GPS position"] if ifds[GPS_IFD] else []
    found += [name for name, numbers in IDENTIFYING_TAGS.items()
              if any(tags.get(n) not in (None, "", b"") for n in numbers)]
    found += ["thumbnail"] if ifds[THUMBNAIL_IFD] else []
    found += ["XMP"] if info.get("xmp") or info.get("XML:com.adobe.xmp") else []
    found += ["IPTC"] if info.get("photoshop") else []
    return PhotoMetadata(data, info.get("icc_profile"), tuple(found))


def encode_with_metadata(path: Path, image_bgr: np.ndarray, metadata: PhotoMetadata
                         ) -> bytes | None:
    """The image in the format its name says, with the source's EXIF (orientation 1, no
    thumbnail: Pillow writes no IFD1) and ICC profile; None for a format that holds no EXIF
    (the caller writes it as usual)."""
    from PIL import Image

    fmt = PILLOW_FORMATS.get(path.suffix.lower())
    if fmt is None:
        return None
    options: dict = {}
    if metadata.exif is not None:
        exif = Image.Exif()
        exif.load(metadata.exif)
        if ORIENTATION in exif:
            exif[ORIENTATION] = 1
        options["exif"] = exif
    if metadata.icc_profile:
        options["icc_profile"] = metadata.icc_profile
    if fmt == "JPEG":
        options["quality"] = JPEG_QUALITY
    elif fmt == "WEBP":
        options["lossless"] = True  # as OpenCV writes WebP by default
    rgb = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)
    buffer = io.BytesIO()
    try:
        Image.fromarray(rgb).save(buffer, fmt, **options)
    except ValueError as err:  # EXIF over JPEG's 64 KB segment, and the like
        raise ValueError(f"cannot keep the metadata of {path.name}: {err}") from None
    return buffer.getvalue()
