"""The per-photo job of scrfd.py: what is written for one image and where, and the loop that
reads ahead of the model and writes behind it.

One home for both, so the single-process run and a Ray actor write the same files and the
same JSON line for every photo.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import cv2
import numpy as np

from .detections import Detections, draw_detections
from .errors import UserError
from .exif import encode_with_metadata, read_metadata
from .faces import ARCFACE_SIZE, Replacement, aligned_crops, anonymize
from .detector import ModelOutputError
from .files import Output, StagedOutputs, check_name_length, display, read_image
from .locks import folder_lock
from .pipeline import WriteBehind, read_ahead

JSON_NAME = "faces.jsonl"
QUEUE_DEPTH = 4  # photos read ahead of, and written behind, the model


@dataclass(frozen=True)
class PhotoOutputs:
    """What to write for each photo: the annotated (or blurred) image, and aligned crops."""

    out_dir: Path
    blur: Replacement | str | None = None  # None: draw boxes and landmarks; else how to hide
    crops: Path | None = None  # folder for aligned crops, or None
    crop_size: int = ARCFACE_SIZE
    keep_metadata: bool = False  # copy the source's EXIF and ICC profile (exif.py); else none


NAMING = ("annotated images are named like their photos, <out>/<name>; photos that share a "
          "name keep their sub-folders (relative to the folder they share), and photos whose "
          "results would still share a name (p.jpg and p.png with --format png) get their own "
          "suffix added (p_jpg.png, p_png.png), then _2, _3... in input order should names "
          "still clash")  # one home for the rule: scrfd.py's --help shows it


def output_paths(images: list[Path], out_dir: Path, suffix: str | None = None) -> list[Path]:
    """<out>/<image name>, each distinct: the rule in NAMING."""
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
    counts = Counter(outputs)
    outputs = [out if counts[out] == 1 else
               out.with_name(f"{out.stem}_{image.suffix.lstrip('.')}{out.suffix}")
               for image, out in zip(images, outputs)]
    taken: set[Path] = set()
    for index, out in enumerate(outputs):
        number, unique = 1, out
        while unique in taken:
            number += 1
            unique = out.with_name(f"{out.stem}_{number}{out.suffix}")
        outputs[index] = unique
        taken.add(unique)
    return outputs


def planned_outputs(images: list, outputs: list[Path], settings: PhotoOutputs) -> list[Output]:
    """What a run writes for each photo, for files.check_outputs(): its annotated image and,
    with --crops, the family of its crops (<crops>/<stem>_face<N>.png)."""
    planned = []
    for image, output in zip(images, outputs):
        planned.append(Output("--out", output, f"--out {display(settings.out_dir)}: the "
                              f"{'blurred' if settings.blur else 'annotated'} image "
                              f"{display(output)} of {display(image)}"))
        if settings.crops is not None:
            crops = settings.crops / crop_stem(output, settings)
            planned.append(Output("--crops", crops.parent, f"--crops {display(settings.crops)}: "
                                  f"the crops {display(crops)}_face<N>.png of {display(image)}",
                                  stem=crops.name, tail=r"_face\d+\.png"))
    return planned


def crop_stem(output: Path, settings: PhotoOutputs) -> Path:
    """<sub-folders>/<stem> of a photo's crops, from its annotated image's path under --out."""
    return output.relative_to(settings.out_dir).with_suffix("")


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


JSON_MERGE = ("a file that exists is merged into, never replaced: its lines for photos this "
              "run does not process are kept, each photo it does gets this run's line (and "
              "crops) in place of an earlier one's (one it cannot read keeps an earlier good "
              "line), and runs at once into one file keep every line of each")  # scrfd.py --help


def earlier_lines(path: Path) -> dict[str, str]:
    """The JSON lines a file already holds, by photo path (none when it does not exist);
    UserError when it holds anything else, which merging would have to drop."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"--json {display(path)}: cannot read its earlier lines to keep them "
                        f"({getattr(err, 'strerror', None) or err})") from None
    lines: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("path"), str):
            raise UserError(f"--json {display(path)}: line {number} is not a JSON line of "
                            "scrfd.py (an object with a path); new lines are merged into an "
                            "existing file, so give --json a new file or one scrfd.py wrote")
        lines[record["path"]] = line + "\n"
    return lines


def merged_lines(path: Path, lines: Iterable[str]) -> tuple[str, list[dict]]:
    """The file's earlier lines with this run's merged in, as JSON_MERGE says, and the
    earlier records this run's replaced."""
    merged, replaced = earlier_lines(path), []
    for line in lines:
        record = json.loads(line)
        earlier = merged.get(record["path"])
        if earlier is not None:
            earlier_record = json.loads(earlier)
            if "error" in record and "error" not in earlier_record:
                continue  # its earlier result is still in place: its line stays with it
            replaced.append(earlier_record)
        merged[record["path"]] = line
    return "".join(merged.values()), replaced


def crop_files(records: Iterable[dict]) -> set[str]:
    return {os.path.abspath(face["crop"]) for record in records
            for face in record.get("faces", []) if isinstance(face.get("crop"), str)}


def commit_photos(staged: StagedOutputs, json_path: Path, lines: Sequence[str],
                  crops: Path | None = None) -> None:
    """Rename a run's files into place, its JSON lines merged into json_path's. Under an
    exclusive lock on the file's folder, re-reading the file there: a run finishing at the
    same moment waits, then merges into what the other wrote. A photo done again keeps no
    crop of its earlier result in `crops` that its new line does not name (p_face5.png of six
    faces, when five are found now)."""
    with folder_lock(json_path.parent):
        text, replaced = merged_lines(json_path, lines)
        staged.write_text(json_path, text)
        staged.commit()
        if crops is None:
            return
        kept = crop_files(map(json.loads, text.splitlines()))
        folder = Path(os.path.abspath(crops))
        for stale in crop_files(replaced) - kept:
            if Path(stale).is_relative_to(folder) and re.search(r"_face\d+\.png$", stale):
                with contextlib.suppress(OSError):
                    os.unlink(stale)


def error_line(path: str | Path, message: str) -> str:
    """The JSON line of a photo that could not be used."""
    return json_line({"path": str(path), "error": message})


WRITE_ERRORS = (cv2.error, ValueError)  # what encoding a result may raise: a skipped photo


def write_error(path: str | Path, err: BaseException) -> str:
    """The one-line reason a photo's result could not be written."""
    detail = str(err).strip().splitlines()
    return f"cannot write the result of {path}: {detail[-1] if detail else type(err).__name__}"


def save_photo(path: str | Path, output: Path, image: np.ndarray, dets: Detections,
               settings: PhotoOutputs, staged: StagedOutputs, metadata=None) -> str:
    """Stage the annotated (or blurred) image and its crops; return the photo's JSON line.
    `metadata` (exif.PhotoMetadata): the source's, written into the image with keep_metadata."""
    record = {"path": str(path), "size": {"width": image.shape[1], "height": image.shape[0]},
              "faces": dets.to_list()}
    shown = anonymize(image, dets, settings.blur) if settings.blur else draw_detections(image, dets)
    kept = encode_with_metadata(output, shown, metadata) if settings.keep_metadata and metadata \
        else None
    files = [(output, kept or encode(output, shown))]
    if settings.crops is not None:
        stem = crop_stem(output, settings)
        for index, crop in enumerate(aligned_crops(image, dets, settings.crop_size)):
            crop_path = settings.crops / f"{stem}_face{index}.png"
            files.append((crop_path, encode(crop_path, crop)))
            record["faces"][index]["crop"] = str(crop_path)
    for final, _ in files:  # all of a photo's files, or none of them (a name too long: none)
        check_name_length(final)
    for final, data in files:
        staged.write_bytes(final, data)
    return json_line(record)


@dataclass
class Photo:
    """One photo on its way through run_photos(): what was read, found and written, or why not."""

    source: str
    output: Path
    image: np.ndarray | None = None
    prepared: tuple | None = None
    error: str | None = None  # why it was skipped (unreadable, or its result unwritable)
    note: str | None = None  # what the user should know though it was used (first frame only)
    size: tuple[int, int] | None = None  # height, width as read
    faces: int = 0
    passes: int = 0  # model passes (more than one when tiled)
    line: str = ""  # its JSON line
    dropped: tuple[str, ...] = ()  # identifying metadata of the source not in the written copy
    seconds: dict[str, float] = field(default_factory=dict)  # read, preprocess, ..., write


def run_photos(detector, sources: Iterable, outputs: Iterable[Path], settings: PhotoOutputs,
               staged: StagedOutputs, done: Callable[[Photo], None],
               read: Callable[[str, list[str]], np.ndarray] = read_image) -> None:
    """Read, detect and stage every photo, calling done(photo) for each in input order.

    A thread reads and preprocesses ahead of the model and another writes behind it, so the
    model never waits on files. A photo that cannot be read or written is a Photo with an
    error (and an error JSON line), never the end of the run; a model giving NaN or Inf is
    (a UserError). done() runs on the writer thread. read(source, notes) may add a note.
    """
    def load(source, output: Path) -> Photo:
        photo, started = Photo(str(source), Path(output)), time.perf_counter()
        notes: list[str] = []
        try:
            photo.image = read(photo.source, notes)
        except UserError as err:
            photo.error = str(err)
        photo.note = "; ".join(notes) or None
        photo.seconds["read"] = time.perf_counter() - started
        if photo.image is not None:
            photo.size = photo.image.shape[:2]
            started = time.perf_counter()
            photo.prepared = detector.prepare(photo.image)
            photo.seconds["preprocess"] = time.perf_counter() - started
        return photo

    def save(photo: Photo, dets: Detections | None) -> None:
        started = time.perf_counter()
        if dets is not None:
            # the metadata of local files (a URI's, with --ray, is not read: none is written)
            metadata = None if "://" in photo.source else read_metadata(photo.source)
            photo.dropped = metadata.dropped(settings.keep_metadata) if metadata else ()
            try:
                photo.line = save_photo(photo.source, photo.output, photo.image, dets, settings,
                                        staged, metadata)
            except WRITE_ERRORS as err:
                photo.error = write_error(photo.source, err)
        if photo.error:
            photo.line = error_line(photo.source, photo.error)
        photo.seconds["write"] = time.perf_counter() - started
        photo.image = photo.prepared = None  # the pixels are written: free them now
        done(photo)

    with WriteBehind(QUEUE_DEPTH) as writer:
        for photo in read_ahead(map(load, sources, outputs), QUEUE_DEPTH):
            dets = None
            if photo.error is None:
                try:
                    dets = detector.detect_prepared(photo.prepared)
                except ModelOutputError as err:
                    raise UserError(f"{err} (first seen on {photo.source})") from None
                photo.faces, photo.passes = len(dets), detector.passes
                photo.seconds.update(inference=detector.timings["inference"],
                                     postprocess=detector.timings["postprocess"])
            writer.submit(save, photo, dets)
