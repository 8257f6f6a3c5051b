"""Exports with the post-processing in the graph (export_tflite.py --kind decoded |
object-detector): a runner that gives faces instead of raw tensors, and the detector step
that takes them. The kind is read from the export's metadata (sidecar or embedded copy).

A decoded export takes the raw export's input (letterboxed, normalised float32, or int8) and
gives boxes, scores, landmarks and a count in input pixels; an object-detector export takes
uint8 RGB pixels and gives MediaPipe's boxes (fractions, ymin xmin ymax xmax), classes,
scores and count. Here both are fed the letterboxed photo, as every other kind is, so the
scale back to photo pixels is the same. The graph's NMS and score floor were fixed at export;
a stricter threshold asked at run time is applied on top of them (exact for the score, a
second NMS for the IoU), a looser one cannot be and is said once.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from .decode import INPUT_MEAN, INPUT_STD
from .detections import Detections
from .errors import UserError
from .metadata import check_unaltered, read_metadata_or_none
from .nms import nms

RAW = "raw"
POSTPROCESSED_KINDS = ("decoded", "object-detector")
EXPORT_KINDS = (RAW, *POSTPROCESSED_KINDS)  # export_tflite.py --kind


def export_kind(model_path: str | os.PathLike) -> str:
    """raw, decoded or object-detector, as the export's metadata says (raw without one)."""
    path = Path(model_path)
    if path.suffix.lower() != ".tflite" or not path.is_file():
        return RAW
    kind = (read_metadata_or_none(path) or {}).get("kind", RAW)
    return kind if kind in EXPORT_KINDS else RAW


class PostprocessedRunner:
    """A decoded or object-detector .tflite through LiteRT: run_faces() gives candidates in
    input pixels, best first. run() (raw outputs) does not exist for these files."""

    backend = "litert"
    layout = "NHWC"
    postprocessed = True
    delegated_partitions = 0

    def __init__(self, model_path: str | os.PathLike, interpreter,
                 input_hw: tuple[int, int] | None = None):
        path = Path(model_path)
        self.model_path = path
        self.metadata = read_metadata_or_none(path) or {}
        check_unaltered(path, self.metadata)
        self.kind = self.metadata.get("kind")
        post = self.metadata.get("postprocess") or {}
        if self.kind not in POSTPROCESSED_KINDS or not isinstance(post, dict):
            raise UserError(f"{path}: its metadata names no post-processed kind; re-export it")
        self.interpreter = interpreter
        detail = interpreter.get_input_details()[0]
        shape = [int(d) for d in detail["shape"]]
        self.input_hw = (shape[1], shape[2])
        if input_hw and tuple(input_hw) != self.input_hw:
            raise UserError(f"{path.name} was exported for {self.input_hw[0]}x{self.input_hw[1]}, "
                            f"not {input_hw[0]}x{input_hw[1]}; export another size")
        try:
            interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as err:
            raise UserError(f"cannot prepare {path}: {str(err).splitlines()[0]}") from None
        self.input = interpreter.get_input_details()[0]
        self.input_dtype = np.dtype(self.input["dtype"])
        self.outputs = {o["name"]: o for o in interpreter.get_output_details()}
        wanted = post.get("outputs", [])
        if sorted(wanted) != sorted(self.outputs):
            raise UserError(f"{path}: outputs {sorted(self.outputs)} do not match its metadata "
                            f"({sorted(wanted)}); re-export it")
        self.has_landmarks = "landmarks" in self.outputs
        self.anchors = self.metadata.get("anchors_per_location", 2)
        self.nms_threshold = post.get("nms_threshold")  # None: no NMS in the graph
        self.score_floor = float(post.get("score_threshold", 0.0))
        self.max_faces = int(post.get("max_faces", 0))
        self._said: set[str] = set()

    @property
    def precision(self) -> str:
        return self.metadata.get("precision", "float32")

    def op_names(self) -> list[str]:
        return [op["op_name"] for op in self.interpreter._get_ops_details()]

    def pixel_table(self) -> None:
        return None

    def run(self, tensor: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """One model call, as speed tests time runners: here it gives faces (run_faces),
        never raw outputs, so tiles and parity checks need a raw export."""
        return self.run_faces(tensor)

    def _input(self, tensor: np.ndarray) -> np.ndarray:
        """The normalised letterboxed float input as this model takes it."""
        if self.kind == "object-detector":  # back to the pixels it was made from, exactly
            return np.rint(tensor * INPUT_STD + INPUT_MEAN).clip(0, 255).astype(np.uint8)
        if self.input_dtype.kind in "iu":
            scale, zero = self.input["quantization"]
            info = np.iinfo(self.input_dtype)
            return np.rint(tensor / scale + zero).clip(info.min, info.max).astype(self.input_dtype)
        return tensor.astype(np.float32, copy=False)

    def _output(self, name: str) -> np.ndarray:
        detail = self.outputs[name]
        array = self.interpreter.get_tensor(detail["index"])
        scale, zero = detail["quantization"]
        if array.dtype.kind in "iu" and scale and name != "count":
            return (array.astype(np.float32) - zero) * np.float32(scale)
        return array

    def run_faces(self, tensor: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Boxes (n, 4) x1 y1 x2 y2 and landmarks (n, 5, 2) in input pixels, scores (n,)."""
        self.interpreter.set_tensor(self.input["index"], self._input(tensor))
        self.interpreter.invoke()
        count = int(np.asarray(self._output("count")).reshape(-1)[0])
        boxes = self._output("boxes")[0, :count].astype(np.float32)
        scores = self._output("scores")[0, :count].astype(np.float32)
        landmarks = None
        if self.kind == "object-detector":
            height, width = self.input_hw
            boxes = boxes[:, [1, 0, 3, 2]] * np.array([width, height, width, height], np.float32)
        elif self.has_landmarks:
            landmarks = self._output("landmarks")[0, :count].astype(np.float32)
        return boxes, scores, landmarks

    def note_once(self, key: str, text: str) -> None:
        if key not in self._said:
            self._said.add(key)
            print(f"note: {text}", file=sys.stderr)


def detect_postprocessed(runner: PostprocessedRunner, tensor: np.ndarray, scale: float,
                         score_threshold: float, nms_threshold: float, max_faces: int,
                         profile) -> tuple[Detections, int]:
    """The faces of one prepared input from a post-processed export, and the candidates the
    graph returned. NMS runs again here only where it changes something: no NMS in the graph,
    or a stricter IoU than the graph's."""
    with profile("inference"):
        boxes, scores, landmarks = runner.run_faces(tensor)
    with profile("postprocess"):
        name = runner.model_path.name
        if score_threshold < runner.score_floor:
            runner.note_once("score", f"{name} keeps scores from {runner.score_floor:g} in its "
                                      f"graph; a threshold of {score_threshold:g} finds no more")
        with profile("decode"):  # done in the graph: here only the run-time score threshold
            keep = np.flatnonzero(scores >= score_threshold)
        with profile("nms"):
            if runner.nms_threshold is None or nms_threshold < runner.nms_threshold:
                keep = keep[nms(boxes[keep], scores[keep], nms_threshold)]
        if runner.nms_threshold is not None and nms_threshold > runner.nms_threshold:
            runner.note_once("nms", f"{name} merges boxes at IoU {runner.nms_threshold:g} in its "
                                    f"graph; an NMS threshold of {nms_threshold:g} cannot undo it")
        if max_faces > 0:
            keep = keep[:max_faces]
        faces = Detections(boxes[keep], scores[keep],
                           None if landmarks is None else landmarks[keep]).scaled(scale)
    return faces, len(scores)
