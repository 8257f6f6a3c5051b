"""The per-photo job of scrfd.py: what is written for one image, and where.

One home for it, so the single-process run and a distributed one write the same files
and the same JSON line for every photo.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .cli import UserError, display
from .detections import Detections, draw_detections
from .faces import ARCFACE_SIZE, aligned_crops, anonymize
from .files import StagedOutputs, same_file

JSON_NAME = "faces.jsonl"


@dataclass(frozen=True)
class PhotoOutputs:
    """What to write for each photo: the annotated (or blurred) image, and aligned crops."""

    out_dir: Path
    blur: str | None = None  # None: draw boxes and landmarks; else the anonymize() mode
    crops: Path | None = None  # folder for aligned crops, or None
    crop_size: int = ARCFACE_SIZE


def output_paths(images: list[Path], out_dir: Path, suffix: str | None = None) -> list[Path]:
    """<out>/<image name>; inputs that share a name keep their sub-folders to stay apart."""
    names = [p.name.lower() for p in images]
    if len(set(names)) == len(names):
        outputs = [out_dir / p.name for p in images]
    else:
        resolved = [Path(os.path.abspath(p)) for p in images]  # not resolve(): keep symlinked names
        root = Path(os.path.commonpath([p.parent for p in resolved]))
        outputs = [out_dir / p.relative_to(root) for p in resolved]
    if suffix:
        outputs = [p.with_suffix(suffix) for p in outputs]
    # a photo whose format OpenCV reads but cannot write (.jfif, ...) is written as <name>.png
    outputs = [p if cv2.haveImageWriter(f"x{p.suffix}") else p.with_name(f"{p.name}.png")
               for p in outputs]
    for image, output in zip(images, outputs):
        if same_file(output, image):
            raise UserError(f"--out {display(out_dir)} would overwrite the input {display(image)}; "
                            "choose another folder")
    return outputs


def image_format(text: str | None) -> str | None:
    """'.png' from 'png' or '.PNG'; UserError when OpenCV cannot write that format."""
    if text is None:
        return None
    suffix = "." + text.lower().lstrip(".")
    if not cv2.haveImageWriter(f"x{suffix}"):
        raise UserError(f"--format {text}: OpenCV cannot write this format; try png or jpg")
    return suffix


def encode(path: Path, image: np.ndarray) -> bytes:
    """The image in the format its name says; ValueError when OpenCV cannot encode it."""
    try:
        ok, data = cv2.imencode(path.suffix or ".png", image)
    except cv2.error as err:
        raise ValueError(f"OpenCV cannot encode {path.name}: {str(err).strip().splitlines()[-1]}"
                         ) from None
    if not ok:
        raise ValueError(f"OpenCV cannot encode {path.name}")
    return data.tobytes()


def json_line(record: dict) -> str:
    return json.dumps(record) + "\n"


def error_line(path: str | Path, message: str) -> str:
    """The JSON line of a photo that could not be used."""
    return json_line({"path": str(path), "error": message})


WRITE_ERRORS = (cv2.error, ValueError)  # what encoding a result may raise: a skipped photo


def write_error(path: str | Path, err: BaseException) -> str:
    """The one-line reason a photo's result could not be written."""
    detail = str(err).strip().splitlines()
    return f"cannot write the result of {path}: {detail[-1] if detail else type(err).__name__}"


def save_photo(path: str | Path, output: Path, image: np.ndarray, dets: Detections,
               settings: PhotoOutputs, staged: StagedOutputs) -> str:
    """Stage the annotated (or blurred) image and its crops; return the photo's JSON line."""
    record = {"path": str(path), "size": {"width": image.shape[1], "height": image.shape[0]},
              "faces": dets.to_list()}
    shown = anonymize(image, dets, settings.blur) if settings.blur else draw_detections(image, dets)
    staged.write_bytes(output, encode(output, shown))
    if settings.crops is not None:
        stem = output.relative_to(settings.out_dir).with_suffix("")
        for index, crop in enumerate(aligned_crops(image, dets, settings.crop_size)):
            crop_path = settings.crops / f"{stem}_face{index}.png"
            staged.write_bytes(crop_path, encode(crop_path, crop))
            record["faces"][index]["crop"] = str(crop_path)
    return json_line(record)
