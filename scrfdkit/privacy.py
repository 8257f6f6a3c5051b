"""Anonymisation checked by its outcome: detectors look for faces in the anonymised pixels.

A blur is good enough when no detector finds a face where one was hidden, so this is what is
checked, not how sharp the blurred patch still is: a blur far too weak to hide a face still
takes most of its sharpness away. Two kinds of face can be left in an anonymised image, and
both are reported:

- under the blur: the hidden face found again, at its place (centre inside a blurred region,
  IoU >= SAME_PLACE_IOU with it): the blur did not hide it; it counts from VERIFY_SCORE, as a
  face is known to be there;
- never hidden: found elsewhere (hair above a blurred face, a hand, a face the anonymising
  detector missed); it counts only from NEVER_HIDDEN_SCORE, as nothing but the verifier says
  it is a face, and at the photo default open hands and faces a few pixels tall are found too.
  Weaker finds are counted in the summary, never reported as faces left.

A verifier is an SCRFD model: a fixed-size one (.tflite, fixed ONNX) runs at its own size; a
dynamic ONNX model runs at each image's own resolution (sides rounded up to 32, the longest
capped at MAX_INPUT_SIDE), where it sees the small faces a shrunken input loses. Faces count
from VERIFY_SCORE, the photo default: a face an ordinary run of scrfd.py would report.
"""
from __future__ import annotations

import copy
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .defaults import MAX_INPUT_SIDE, NEVER_HIDDEN_SCORE, SCORE_THRESHOLD
from .detections import Detections
from .detector import SCRFD
from .faces import grown_boxes
from .files import display, read_image

VERIFY_SCORE = SCORE_THRESHOLD  # a face left is one an ordinary (non-anonymising) run reports
DEFAULT_VERIFY_MODEL = "det_2.5g.onnx"  # the stronger verifier, looked for in the models folder
SAME_FACE_IOU = 0.5  # two verifiers' boxes overlapping this much are one face, reported once
SAME_PLACE_IOU = 0.25  # a find this close to a blurred region is its face found again (a face
# box has IoU 0.44 with its region, grown by BLUR_MARGIN on each side; the head of hair above a
# blurred face in walking_1080p.mp4 that det_2.5g scores 0.55 has 0.06)


@dataclass(frozen=True)
class FaceLeft:
    """A face a verifier still finds in an anonymised image."""

    verifier: str  # which detector saw it (Verifier.name)
    box: tuple[float, float, float, float]  # x1 y1 x2 y2, image pixels
    score: float
    under_blur: bool  # True: inside a hidden region (the blur failed); False: never hidden

    @property
    def counted(self) -> bool:
        """Strong evidence of a face left: under a blur, or a clear face never hidden."""
        return self.under_blur or self.score >= NEVER_HIDDEN_SCORE

    def describe(self) -> str:
        where = "under the blur" if self.under_blur else "never hidden"
        x1, y1, x2, y2 = (round(v) for v in self.box)
        return f"{where} at {x1},{y1},{x2},{y2} (score {self.score:.2f}, {self.verifier})"


def full_resolution(shape: tuple[int, ...], limit: int = MAX_INPUT_SIDE) -> tuple[int, int]:
    """The model input that keeps an image's own pixels: sides rounded up to multiples of 32,
    the whole shrunk first when its longest side exceeds `limit`."""
    height, width = shape[:2]
    scale = min(1.0, limit / max(height, width))
    return (max(32, math.ceil(height * scale / 32) * 32),
            max(32, math.ceil(width * scale / 32) * 32))


class Verifier:
    """One SCRFD model looking for faces at VERIFY_SCORE, at full resolution when it can."""

    def __init__(self, model_path: str | os.PathLike, input_hw: tuple[int, int] | None = None,
                 threads: int | None = None, score_threshold: float = VERIFY_SCORE,
                 limit: int = MAX_INPUT_SIDE):
        """input_hw: the size for a dynamic ONNX model; None runs it at each image's size."""
        self.detector = SCRFD(model_path, input_hw, score_threshold=score_threshold,
                              threads=threads)
        runner = self.detector.runner
        self.full_resolution = bool(getattr(runner, "dynamic_input", False)) and input_hw is None \
            and runner.backend == "onnxruntime"
        self.limit = limit
        self._sized: dict[tuple[int, int], SCRFD] = {}
        hw = self.detector.input_hw
        size = "full resolution" if self.full_resolution else f"{hw[0]}x{hw[1]}"
        self.name = f"{Path(model_path).name} at {size}"

    def detector_for(self, shape: tuple[int, ...]) -> SCRFD:
        """The detector for an image of this shape: one ONNX Runtime session serves every
        size (a dynamic model runs at any input), so only the input size changes."""
        if not self.full_resolution:
            return self.detector
        hw = full_resolution(shape, self.limit)
        if hw not in self._sized:
            runner = copy.copy(self.detector.runner)
            runner.input_hw = hw
            self._sized[hw] = SCRFD(self.detector.model_path, runner=runner,
                                    score_threshold=self.detector.score_threshold,
                                    nms_threshold=self.detector.nms_threshold)
        return self._sized[hw]

    def detect(self, image_bgr: np.ndarray) -> Detections:
        return self.detector_for(image_bgr.shape).detect(image_bgr)


def faces_left(verifiers: Sequence[Verifier], image_bgr: np.ndarray,
               hidden_boxes: np.ndarray) -> list[FaceLeft]:
    """Every face any verifier finds in an anonymised image, each marked under the blur (its
    centre inside one of `hidden_boxes`, x1 y1 x2 y2: the regions that were blurred, and IoU
    >= SAME_PLACE_IOU with it) or never hidden. FaceLeft.counted says which are faces left."""
    hidden = np.asarray(hidden_boxes, np.float64).reshape(-1, 4)
    left: list[FaceLeft] = []
    for verifier in verifiers:
        found = verifier.detect(image_bgr)
        centres = (found.boxes[:, :2] + found.boxes[:, 2:]) / 2
        for box, score, (cx, cy) in zip(found.boxes, found.scores, centres):
            same = next((i for i, face in enumerate(left) if iou(face.box, box) >= SAME_FACE_IOU),
                        None)
            if same is not None:  # another verifier's face: one face, seen by both
                face = left[same]
                left[same] = FaceLeft(f"{face.verifier} and {verifier.name}", face.box,
                                      max(face.score, float(score)), face.under_blur)
                continue
            inside = any(region[0] <= cx <= region[2] and region[1] <= cy <= region[3]
                         and iou(region, box) >= SAME_PLACE_IOU for region in hidden)
            left.append(FaceLeft(verifier.name, tuple(float(v) for v in box), float(score),
                                 inside))
    return left


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two x1 y1 x2 y2 boxes."""
    inter = (max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
             * max(0.0, min(a[3], b[3]) - max(a[1], b[1])))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def report_line(path: str | os.PathLike, left: list[FaceLeft]) -> str:
    """One line naming an image's faces left: how many, of which kind, and where."""
    under = sum(face.under_blur for face in left)
    kinds = ", ".join(part for part in (f"{under} under the blur" if under else "",
                                        f"{len(left) - under} never hidden"
                                        if len(left) > under else "") if part)
    return (f"{display(path)}: {len(left)} face(s) still detectable ({kinds}): "
            + "; ".join(face.describe() for face in left))


def verify_photos(verifiers: Sequence[Verifier], outputs: Sequence[Path], records: Sequence[dict]
                  ) -> Iterator[tuple[Path, list[FaceLeft]]]:
    """(written image, faces left in it) for every photo of a finished --blur run.

    `records` are the run's JSON lines, in the order of `outputs`; the regions that were
    blurred are their boxes grown as anonymize() grows them. Photos with an error are skipped.
    The image is read back from its file: what is checked is what was written.
    """
    for output, record in zip(outputs, records):
        if "faces" not in record:
            continue
        image = read_image(output)
        faces = record["faces"]
        hidden = grown_boxes(Detections([f["box"] for f in faces], [f["score"] for f in faces]),
                             image.shape)
        yield output, faces_left(verifiers, image, hidden)


def verifiers_for(model_path: str | os.PathLike, input_hw: tuple[int, int],
                  stronger: Path | None, default_stronger: Path, threads: int) -> list[Verifier]:
    """--verify's detectors: the run's model at the run's size, and the stronger one (given,
    else `default_stronger` when it exists, with a note when it does not)."""
    verifiers = [Verifier(model_path, input_hw, threads)]
    if stronger is None and not default_stronger.exists():
        print(f"note: {display(default_stronger)} not found, so --verify checks with "
              f"{display(model_path)} alone")
    else:
        verifiers.append(Verifier(stronger or default_stronger, threads=threads))
    return verifiers


def verify_video(verifiers: Sequence[Verifier], video: Path, records: Sequence[dict]
                 ) -> Iterator[tuple[int, list[FaceLeft]]]:
    """(frame index, faces left in it) for every frame of a finished video --blur run, decoded
    back from the written file and paired with its JSON line's blurred regions (each region's
    box: the ellipse's or the grown box)."""
    from .video import VideoSource  # PyAV only for videos

    with VideoSource(Path(video)) as source:
        for index, (frame, record) in enumerate(zip(source.frames(), records)):
            hidden = [region["box"] for region in record.get("blurred", [])]
            yield index, faces_left(verifiers, frame.image, np.asarray(hidden).reshape(-1, 4))


def verify_video_run(verifiers: Sequence[Verifier], video: Path, json_path: Path) -> int:
    """--verify after a video run: each written frame decoded back and searched, beside its
    JSON line's blurred regions; a warning per frame with a face left, and 1 if there is one."""
    records = [json.loads(line) for line in Path(json_path).read_text().splitlines()]
    results = ((f"{video}#frame{index}", left)
               for index, left in verify_video(verifiers, video, records))
    return report_verification(verifiers, results, len(records), "frame")


def report_verification(verifiers: Sequence[Verifier], results: Iterator[tuple[str, list]],
                        total: int, unit: str) -> int:
    """Print a warning line per image or frame with a face left and a summary; 1 if any.
    Weak finds where nothing was blurred (FaceLeft.counted) are only counted in the summary."""
    from tqdm import tqdm

    checked = flagged = faces = weak = 0
    for name, found in tqdm(results, total=total, unit=unit, desc="verify"):
        checked += 1
        left = [face for face in found if face.counted]
        weak += len(found) - len(left)
        if left:
            flagged, faces = flagged + 1, faces + len(left)
            tqdm.write(f"warning: {report_line(name, left)}", file=sys.stderr)
    names = " and ".join(verifier.name for verifier in verifiers)
    print(f"verify: {checked} blurred {unit}(s) checked by {names} at score >= "
          f"{VERIFY_SCORE:g} under a blur, >= {NEVER_HIDDEN_SCORE:g} elsewhere: {faces} "
          "face(s) still detectable" + (f" in {flagged} {unit}(s)" if faces else "")
          + (f"; {weak} weaker find(s) elsewhere, not counted" if weak else ""))
    if faces:
        print(f"error: faces still detectable in {flagged} of {checked} blurred {unit}(s), "
              "listed above; the outputs are written: check them, or blur again with a lower "
              "--score or a larger model or --size", file=sys.stderr)
    return 1 if faces else 0
