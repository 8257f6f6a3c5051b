"""Step 2: convert a fixed-size SCRFD ONNX model to TFLite (float32, float16, dynamic-range, int8).

Conversion goes through onnx2tf (NCHW -> NHWC). Int8 is full-integer quantization calibrated
on real WIDER FACE photos, preprocessed exactly as at inference (letterbox, RGB,
(x - 127.5) / 128). After every export the .tflite is run beside ONNX Runtime on real face
photos and the largest error per output is printed; float32 must agree within 1e-3.
Every .tflite gets a sidecar <file>.tflite.json with what inference needs to know, including
the .tflite's own sha256 (a model altered after export is refused). The pair replaces an
earlier export only once everything has succeeded.

--kind decoded and --kind object-detector put the post-processing into the graph
(scrfdkit/export/heads.py, docs/mobile.md): anchor decode and NMS, boxes (and landmarks) in
input pixels, or MediaPipe ObjectDetector's four outputs with a uint8 RGB input; both carry
TFLite Support metadata (MediaPipe's writer) beside the project's own. --int8 --integer-io
makes raw and decoded exports integer at both ends (int8 input and outputs).

Int8 is more than "onnx2tf with a representative dataset" (scrfdkit/int8.py, docs/int8.md):
channel equalization, GPTQ rounding of the weights onto TFLite's int8 grid, and our own
TFLiteConverter pass that keeps the sigmoid in float. Input int8 (or float with --float-io),
outputs float32.

    python export_tflite.py --onnx models/det_500m_480x640.onnx            # float32
    python export_tflite.py --onnx models/det_500m_480x640.onnx --int8 --calib data/WIDER_val/images
    python export_tflite.py --onnx models/det_500m_480x640.onnx --kind object-detector  # MediaPipe
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from scrfdkit.cli import (DATA_DIR, DEFAULT_IMAGE, MODELS_DIR, ArgumentParser, cli, display,
                          fraction, positive_int)
from scrfdkit.decode import INPUT_MEAN, INPUT_STD, KINDS, STRIDES, identify_outputs
from scrfdkit.defaults import EVAL_SCORE_THRESHOLD, NMS_THRESHOLD
from scrfdkit.errors import UserError
from scrfdkit.export.int8 import (calibration_images, calibration_tensor, prepare_int8_onnx,
                                  quantize_int8)
from scrfdkit.export.model_files import (check_output_path, embed_metadata, replace_model,
                                         write_metadata)
from scrfdkit.export.onnx_edit import onnx2tf_test_data, onnx_metadata, run_onnx2tf, static_input
from scrfdkit.export.heads import Head, convert_head, op_types, output_names
from scrfdkit.export.parity import (FLOAT32_TOLERANCE, faces_parity, faces_parity_line, parity,
                                    parity_table, worst_error)
from scrfdkit.export.support_metadata import write_support_metadata
from scrfdkit.files import Output, check_outputs, find_images, sha256_of
from scrfdkit.metadata import TFLITE_SHA256, export_family, export_name, metadata_path
from scrfdkit.postprocessed import EXPORT_KINDS, RAW
from scrfdkit.runners import OnnxRunner, tflite_interpreter

DEFAULT_ONNX = MODELS_DIR / "det_500m_480x640.onnx"
DEFAULT_CALIB = DATA_DIR / "WIDER_val" / "images"  # make data links it
DEFAULT_CALIB_COUNT = 200
DEFAULT_CHECK_IMAGES = [DEFAULT_IMAGE]
CALIB_CHECK_PHOTOS = 4  # calibration photos added to the parity check when calibrating
DEFAULT_MAX_FACES = 500  # rows of a post-processed export's outputs
MODEL_VERSION = "1"  # the TFLite Support metadata's model version


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(__doc__)
    parser.add_argument("--onnx", type=Path, default=DEFAULT_ONNX,
                        help=f"fixed-size ONNX from export_modified_onnx.py (default {display(DEFAULT_ONNX)})")
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--int8", "--int", dest="int8", action="store_true",
                      help="full-integer int8 quantization calibrated on --calib (--int is the "
                           "original project's name for it)")
    kind.add_argument("--fp16", action="store_true", help="float16 weights, float32 compute")
    kind.add_argument("--dynamic", action="store_true",
                      help="dynamic-range quantization: int8 weights, float activations")
    parser.add_argument("--calib", type=Path, default=DEFAULT_CALIB,
                        help=f"folder of photos for int8 calibration (default {display(DEFAULT_CALIB)})")
    parser.add_argument("--calib-count", type=positive_int, default=DEFAULT_CALIB_COUNT,
                        help="calibration images, spread over the folder, at least 1 "
                             f"(default {DEFAULT_CALIB_COUNT})")
    parser.add_argument("--quant-type", choices=("per-channel", "per-tensor"), default="per-channel",
                        help="int8 weight quantization granularity (default per-channel)")
    parser.add_argument("--float-io", action="store_true",
                        help="int8 model with a float32 input, quantized inside the model "
                             "(default: int8 input; outputs are float32 either way)")
    parser.add_argument("--kind", choices=EXPORT_KINDS, default=RAW,
                        help="raw: per-stride score, box and landmark tensors (default); decoded: "
                             "boxes, scores, landmarks and count in input pixels, decoded and "
                             "NMSed in the graph; object-detector: MediaPipe ObjectDetector / Task "
                             "Library layout with a uint8 RGB input (docs/mobile.md)")
    parser.add_argument("--integer-io", action="store_true",
                        help="with --int8, raw or decoded: int8 outputs as well as an int8 input "
                             "(for NPUs and microcontrollers); the op types left in float are "
                             "printed")
    parser.add_argument("--max-faces", type=positive_int, default=DEFAULT_MAX_FACES,
                        help="decoded / object-detector: rows of the outputs, the most faces "
                             f"one image can give (default {DEFAULT_MAX_FACES})")
    parser.add_argument("--score-floor", type=fraction, default=EVAL_SCORE_THRESHOLD,
                        help="decoded / object-detector: candidates below this score never "
                             f"reach the graph's NMS (default {EVAL_SCORE_THRESHOLD:g}, the "
                             "WIDER FACE protocol's; apps set their own threshold above it)")
    parser.add_argument("--nms-threshold", type=fraction, default=NMS_THRESHOLD,
                        help="decoded / object-detector: IoU of the graph's NMS (default "
                             f"{NMS_THRESHOLD:g}; evaluate_widerface.py uses 0.45)")
    parser.add_argument("--no-nms", action="store_true",
                        help="decoded: no NMS in the graph; every anchor is output, decoded")
    parser.add_argument("--check-images", nargs="+", type=Path, default=DEFAULT_CHECK_IMAGES,
                        help="face photos for the parity check (files or folders; default "
                             "data/friends.jpg, plus 4 calibration photos when calibrating)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output .tflite, its sidecar beside it as <out>.json (default "
                             "models/<family>_<H>x<W>_<precision>.tflite)")
    args = parser.parse_args(argv)
    if args.integer_io and not args.int8:
        parser.error("--integer-io needs --int8")
    if args.integer_io and args.kind == "object-detector":
        parser.error("--integer-io is for raw and decoded: the object-detector input is uint8 "
                     "already, and MediaPipe reads its outputs as float")
    if args.integer_io and args.float_io:
        parser.error("--integer-io and --float-io contradict each other")
    if args.no_nms and args.kind != "decoded":
        parser.error("--no-nms is for --kind decoded")
    if args.kind != RAW and (args.fp16 or args.dynamic):
        parser.error(f"--kind {args.kind} is exported in float32 or --int8")
    return args


def build_metadata(tflite_path: Path, onnx_path: Path, family: str, precision: str,
                   input_hw: tuple[int, int], calib_paths: list[Path], quant_type: str,
                   recipe: dict | None, head: Head | None = None, anchors: int = 2,
                   keypoints: bool = True) -> dict:
    """The sidecar: what inference needs (input layout and quantization, output kinds or the
    post-processing in the graph) and where the model came from; model_files.write_metadata
    writes it."""
    import onnx2tf
    import tensorflow as tf

    interpreter = tflite_interpreter(tflite_path)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    outputs = interpreter.get_output_details()
    pixels = head is not None and head.kind == "object-detector"
    described = {"family": family, "precision": precision, "kind": head.kind if head else RAW,
                 "input": {"name": inp["name"], "height": input_hw[0], "width": input_hw[1],
                           "layout": "NHWC", "dtype": np.dtype(inp["dtype"]).name,
                           "quantization": list(map(float, inp["quantization"])),
                           "channel_order": "RGB",
                           "mean": 0.0 if pixels else INPUT_MEAN, "std": 1.0 if pixels else INPUT_STD,
                           "letterbox": "top-left, zero padding, keep aspect ratio"},
                 "strides": list(STRIDES)}
    if head is not None:
        names = [o["name"] for o in outputs]
        described.update(
            anchors_per_location=anchors, keypoints=keypoints,
            postprocess={"outputs": names, "max_faces": int(outputs[0]["shape"][1]),
                         "score_threshold": head.score_threshold,
                         "nms_threshold": head.nms_threshold,
                         "boxes": ("ymin xmin ymax xmax, fractions of the input" if pixels else
                                   "x1 y1 x2 y2, input pixels")},
            outputs=[{"name": o["name"], "shape": [int(d) for d in o["shape"]],
                      "dtype": np.dtype(o["dtype"]).name,
                      "quantization": list(map(float, o["quantization"]))} for o in outputs])
        order = []
    else:
        specs, anchors = identify_outputs([o["shape"] for o in outputs], input_hw)
        order = sorted(range(len(outputs)), key=lambda i: (KINDS.index(specs[i].kind),
                                                            STRIDES.index(specs[i].stride)))
        described.update(anchors_per_location=anchors,
                         keypoints=any(s.kind == "kps" for s in specs))
    return {
        **described,
        **({} if head else {"outputs": [
            {"name": outputs[i]["name"], "kind": specs[i].kind, "stride": specs[i].stride,
             "shape": [int(d) for d in outputs[i]["shape"]],
             "dtype": np.dtype(outputs[i]["dtype"]).name,
             "quantization": list(map(float, outputs[i]["quantization"])),
             "units": "probability" if specs[i].kind == "score" else "stride units"}
            for i in order]}),
        "op_types": op_types(tflite_path.read_bytes()),
        "source": {"onnx": onnx_path.name, "sha256": sha256_of(onnx_path)},
        "calibration": ({"images": len(calib_paths), "quant_type": quant_type, **(recipe or {})}
                        if calib_paths else None),
        "converter": {"onnx2tf": onnx2tf.__version__, "tensorflow": tf.__version__},
    }


def parity_photos(check_images: list[Path], calib_paths: list[Path]) -> list[Path]:
    """The --check-images (every one given must exist; the default may be missing), plus a
    few calibration photos when calibrating."""
    if check_images != DEFAULT_CHECK_IMAGES:
        missing = [p for p in check_images if not p.exists()]
        if missing:
            raise UserError(f"--check-images {missing[0]}: no such file or folder")
    existing = [p for p in check_images if p.exists()]
    photos = find_images(existing) if existing else []
    photos += calib_paths[:: max(1, len(calib_paths) // CALIB_CHECK_PHOTOS)][:CALIB_CHECK_PHOTOS]
    if not photos:
        raise UserError("no photo for the parity check: give --check-images")
    return photos


def convert(args: argparse.Namespace, precision: str, calib: np.ndarray | None,
            test_data: np.ndarray, workdir: Path, head: Head | None) -> tuple[Path, dict | None]:
    """onnx2tf (and for int8 the recipe before it and our quantizer after it; for decoded and
    object-detector the head after it): the .tflite. The converter gets a copy of --onnx:
    onnx2tf saves over the model it is given."""
    source = workdir / "source" / args.onnx.name
    source.parent.mkdir()
    shutil.copyfile(args.onnx, source)
    if precision != "int8" and head is None:
        return run_onnx2tf(source, precision, workdir, test_data), None
    if precision != "int8":
        run_onnx2tf(source, precision, workdir, test_data, signatures=True)
        produced = workdir / "head.tflite"
        produced.write_bytes(convert_head(workdir / "out", head, None, True, False,
                                          workdir / "head.log"))
        return produced, None
    started = time.perf_counter()
    per_channel = args.quant_type == "per-channel"
    prepared = workdir / args.onnx.name
    recipe = prepare_int8_onnx(source, calib, per_channel, prepared)
    print(f"int8: equalized {recipe['equalized_pairs']} conv pairs, rounded "
          f"{recipe['rounded_convs']} convs' weights on {recipe['stats_images']} images "
          f"({time.perf_counter() - started:.0f} s)")
    run_onnx2tf(prepared, precision, workdir, test_data)
    produced = workdir / "int8.tflite"
    if head is None:
        produced.write_bytes(quantize_int8(workdir / "out", calib, args.float_io, per_channel,
                                           workdir / "quantize.log", args.integer_io))
        float_ops = "none" if args.integer_io else "sigmoid of the score outputs"
    else:
        produced.write_bytes(convert_head(workdir / "out", head, calib, per_channel,
                                          args.integer_io, workdir / "quantize.log"))
        float_ops = "sigmoid, decode and NMS (the network before them is int8)"
    pixels = head is not None and head.kind == "object-detector"
    recipe.update(input="uint8" if pixels else "float32" if args.float_io else "int8",
                  outputs="int8" if args.integer_io else "float32", float_ops=float_ops)
    return produced, recipe


def parity_passes(onnx_path: Path, staged: Path, photos: list[Path], head: Head | None,
                  precision: str) -> bool:
    """Print the export's agreement with ONNX; False when a float32 export strays: raw
    outputs beyond FLOAT32_TOLERANCE (stride units), or post-processed faces that differ in
    number or by more than FLOAT32_TOLERANCE stride units at the largest stride."""
    if head is None:
        worst = parity(onnx_path, staged, photos)
        print("\n".join(parity_table(worst, len(photos))))
        return precision != "float32" or worst_error(worst) <= FLOAT32_TOLERANCE
    faces = faces_parity(onnx_path, staged, photos, head.score_threshold, head.nms_threshold,
                         head.max_faces)
    print(faces_parity_line(faces, len(photos)))
    limit = FLOAT32_TOLERANCE * max(STRIDES)
    return precision != "float32" or (faces["faces_onnx"] == faces["faces_tflite"] and
                                      max(faces["box_px"], faces["landmark_px"]) <= limit)


def describe_for_apps(staged: Path, head: Head, family: str, precision: str,
                      keypoints: bool) -> None:
    """TFLite Support metadata (MediaPipe's writer) into the staged .tflite, in place."""
    what = ("MediaPipe ObjectDetector / TFLite Task Library layout" if head.kind == "object-detector"
            else "boxes, scores, landmarks and count in input pixels")
    model, _ = write_support_metadata(
        staged.read_bytes(), head.kind, f"SCRFD {family} face detector ({precision})",
        MODEL_VERSION, f"SCRFD face detection with decoding and NMS in the graph: {what}. "
        f"Label: face. Input {head.input_hw[0]}x{head.input_hw[1]} RGB.",
        output_names(head, keypoints), head.kind == "object-detector")
    staged.write_bytes(model)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    precision = ("int8" if args.int8 else "float16" if args.fp16 else
                 "dynamic" if args.dynamic else "float32")
    source = OnnxRunner(args.onnx, threads=None)  # validates: exists, ONNX, SCRFD, runs
    if not static_input(args.onnx):
        raise UserError(f"{args.onnx} has a dynamic input; fix its size first with "
                        f"export_modified_onnx.py --model {args.onnx} --hw H,W")
    height, width = source.input_hw
    family = export_family(onnx_metadata(args.onnx).get("scrfd_source", args.onnx.name),
                           source.has_landmarks)
    head = None if args.kind == RAW else Head(args.kind, (height, width), args.max_faces,
                                              args.score_floor,
                                              None if args.no_nms else args.nms_threshold)
    out = args.out or MODELS_DIR / export_name(family, (height, width), precision, args.kind,
                                               args.integer_io)
    check_output_path(out, ".tflite", inputs=[args.onnx])
    check_outputs([Output("--out", out), Output("--out", metadata_path(out),
                                                f"the sidecar {metadata_path(out)} of --out")],
                  [args.onnx, *args.check_images])

    calib_paths: list[Path] = []
    calib = None
    if precision == "int8":
        calib_paths = calibration_images(args.calib, args.calib_count)
        calib = calibration_tensor(calib_paths, (height, width))
        print(f"calibrating on {len(calib)} images from {args.calib}")
    photos = parity_photos(args.check_images, calib_paths)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="export_tflite-") as work:
        produced, recipe = convert(args, precision, calib, onnx2tf_test_data(calib_paths or photos),
                                   Path(work), head)
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as stage:
            staged = Path(stage) / out.name  # the new pair waits here until it has passed
            shutil.copyfile(produced, staged)
            meta = build_metadata(staged, args.onnx, family, precision, (height, width),
                                  calib_paths, args.quant_type, recipe, head, source.anchors,
                                  source.has_landmarks)
            embed_metadata(staged, meta)  # a .tflite copied alone still describes itself
            if head is not None:  # after embed_metadata: the writer appends the label file
                describe_for_apps(staged, head, family, precision, source.has_landmarks)
            write_metadata(staged, {**meta, TFLITE_SHA256: sha256_of(staged)})
            print(f"converted in {time.perf_counter() - started:.0f} s")
            print("op types: " + "; ".join(f"{kind}: " + ", ".join(
                f"{op} x{n}" for op, n in sorted(ops.items()))
                for kind, ops in meta["op_types"].items()))
            if not parity_passes(args.onnx, staged, photos, head, precision):
                what = "parity" if head is None else "faces' parity (stride units)"
                print(f"error: float32 {what} above {FLOAT32_TOLERANCE:g}; the conversion is "
                      f"wrong, so {out} was left as it was", file=sys.stderr)
                return 1
            replace_model(staged, out)
    print(f"wrote {display(out)} ({out.stat().st_size / 1e6:.2f} MB, {precision}) and "
          f"{display(metadata_path(out))}")
    return 0


if __name__ == "__main__":
    cli(main)
