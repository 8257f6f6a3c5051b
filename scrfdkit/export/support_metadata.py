"""TFLite Support metadata (the "TFLITE_METADATA" flatbuffer MediaPipe Tasks and the TFLite
Task Library read: name, version, licence, input normalisation, output descriptions, label
file), written by MediaPipe's own metadata writer (mediapipe 0.10.21, the last release whose
writer imports), never by hand. The label file `face` travels inside the .tflite.
"""
from __future__ import annotations

from ..decode import INPUT_MEAN, INPUT_STD
from ..errors import UserError

LICENSE = ("InsightFace SCRFD weights: non-commercial research use only "
           "(https://github.com/deepinsight/insightface#license)")
AUTHOR = "InsightFace (SCRFD model); scrFDOnlyInference (conversion)"
LABEL = "face"
WRITER_HINT = ("install the metadata writer into the converter's environment: "
               "pip install --no-deps -r requirements-mobile.txt")

DESCRIPTIONS = {
    "boxes": "Face boxes x1, y1, x2, y2 in input pixels (letterboxed input); rows past count are 0.",
    "scores": "Face probability of each box, best first; rows past count are 0.",
    "landmarks": ("Five landmarks per face (left eye, right eye, nose, left and right mouth "
                  "corner) as x, y in input pixels."),
    "count": "Number of valid rows in boxes, scores and landmarks.",
}


def _writer():
    try:
        from mediapipe.tasks.python.metadata.metadata_writers import metadata_info, metadata_writer
    except ImportError as err:
        raise UserError(f"cannot write TFLite Support metadata ({err}); {WRITER_HINT}") from None
    return metadata_info, metadata_writer


def write_support_metadata(model: bytes, kind: str, name: str, version: str, description: str,
                           output_names: tuple[str, ...], pixel_input: bool) -> tuple[bytes, str]:
    """The .tflite with TFLite Support metadata, and the metadata as JSON (for the log).

    object-detector: MediaPipe's detection output group (location, category, score, number
    of detections) with the label file; decoded: one described feature output per tensor.
    The input is described as an RGB image, normalised (x - 127.5) / 128; a uint8 input
    normalises inside the graph, so its metadata carries no normalisation (mean 0, std 1).
    """
    metadata_info, metadata_writer = _writer()
    writer = metadata_writer.MetadataWriter.create(bytearray(model))
    # add_general_info takes a name and a description only; the version, author and licence
    # go into the same GeneralMd the writer would make.
    writer._general_md = metadata_info.GeneralMd(name=name, version=version,
                                                 description=description, author=AUTHOR,
                                                 licenses=LICENSE)
    mean, std = ([0.0], [1.0]) if pixel_input else ([INPUT_MEAN], [INPUT_STD])
    what = ("RGB image, uint8 pixels 0..255, the whole photo resized to the input (the model "
            "normalises it)" if pixel_input else
            "RGB image letterboxed into the top-left corner (zero padding), (x - 127.5) / 128")
    writer.add_image_input(mean, std, name="image", description=what)
    try:
        if kind == "object-detector":
            writer.add_detection_output(metadata_writer.Labels().add([LABEL]))
        else:
            for output in output_names:
                writer.add_feature_output(name=output, description=DESCRIPTIONS[output])
        content, as_json = writer.populate()
    except (ValueError, RuntimeError) as err:
        raise UserError(f"the metadata writer refused the {kind} model: {err}") from None
    return bytes(content), as_json
