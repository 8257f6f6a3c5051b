"""Step 2: convert a fixed-size SCRFD ONNX model to TFLite (float32, float16, dynamic-range, int8).

Conversion goes through onnx2tf (NCHW -> NHWC). Int8 is full-integer quantization calibrated
on real WIDER FACE photos, preprocessed exactly as at inference (letterbox, RGB,
(x - 127.5) / 128). After every export the .tflite is run beside ONNX Runtime on real face
photos and the largest error per output is printed; float32 must agree within 1e-3.
Every .tflite gets a sidecar <file>.tflite.json with what inference needs to know, including
the .tflite's own sha256 (a model altered after export is refused). The pair replaces an
earlier export only once everything has succeeded.

Int8 is more than "onnx2tf with a representative dataset" (scrfdkit/int8.py, docs/int8.md):
channel equalization, GPTQ rounding of the weights onto TFLite's int8 grid, and our own
TFLiteConverter pass that keeps the sigmoid in float. Input int8 (or float with --float-io),
outputs float32.

    python export_tflite.py --onnx models/det_500m_480x640.onnx            # float32
    python export_tflite.py --onnx models/det_500m_480x640.onnx --int8 --calib data/WIDER_val/images
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
                          positive_int)
from scrfdkit.decode import INPUT_MEAN, INPUT_STD, KINDS, STRIDES, identify_outputs
from scrfdkit.errors import UserError
from scrfdkit.export.int8 import (calibration_images, calibration_tensor, prepare_int8_onnx,
                                  quantize_int8)
from scrfdkit.export.model_files import (check_output_path, embed_metadata, replace_model,
                                         write_metadata)
from scrfdkit.export.onnx_edit import onnx2tf_test_data, onnx_metadata, run_onnx2tf, static_input
from scrfdkit.export.parity import FLOAT32_TOLERANCE, parity, parity_table, worst_error
from scrfdkit.files import Output, check_outputs, find_images, sha256_of
from scrfdkit.metadata import TFLITE_SHA256, export_family, export_name, metadata_path
from scrfdkit.runners import OnnxRunner, tflite_interpreter

DEFAULT_ONNX = MODELS_DIR / "det_500m_480x640.onnx"
DEFAULT_CALIB = DATA_DIR / "WIDER_val" / "images"  # make data links it
DEFAULT_CALIB_COUNT = 200
DEFAULT_CHECK_IMAGES = [DEFAULT_IMAGE]
CALIB_CHECK_PHOTOS = 4  # calibration photos added to the parity check when calibrating


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
    parser.add_argument("--check-images", nargs="+", type=Path, default=DEFAULT_CHECK_IMAGES,
                        help="face photos for the parity check (files or folders; default "
                             "data/friends.jpg, plus 4 calibration photos when calibrating)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output .tflite, its sidecar beside it as <out>.json (default "
                             "models/<family>_<H>x<W>_<precision>.tflite)")
    return parser.parse_args(argv)


def build_metadata(tflite_path: Path, onnx_path: Path, family: str, precision: str,
                   input_hw: tuple[int, int], calib_paths: list[Path], quant_type: str,
                   recipe: dict | None) -> dict:
    """The sidecar: what inference needs (input layout and quantization, output kinds) and
    where the model came from; model_files.write_metadata writes it."""
    import onnx2tf
    import tensorflow as tf

    interpreter = tflite_interpreter(tflite_path)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    outputs = interpreter.get_output_details()
    specs, anchors = identify_outputs([o["shape"] for o in outputs], input_hw)
    order = sorted(range(len(outputs)), key=lambda i: (KINDS.index(specs[i].kind),
                                                        STRIDES.index(specs[i].stride)))
    return {
        "family": family,
        "precision": precision,
        "input": {"name": inp["name"], "height": input_hw[0], "width": input_hw[1],
                  "layout": "NHWC", "dtype": np.dtype(inp["dtype"]).name,
                  "quantization": list(map(float, inp["quantization"])),
                  "channel_order": "RGB", "mean": INPUT_MEAN, "std": INPUT_STD,
                  "letterbox": "top-left, zero padding, keep aspect ratio"},
        "strides": list(STRIDES),
        "anchors_per_location": anchors,
        "keypoints": any(s.kind == "kps" for s in specs),
        "outputs": [{"name": outputs[i]["name"], "kind": specs[i].kind, "stride": specs[i].stride,
                     "shape": [int(d) for d in outputs[i]["shape"]],
                     "dtype": np.dtype(outputs[i]["dtype"]).name,
                     "quantization": list(map(float, outputs[i]["quantization"])),
                     "units": "probability" if specs[i].kind == "score" else "stride units"}
                    for i in order],
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
            test_data: np.ndarray, workdir: Path) -> tuple[Path, dict | None]:
    """onnx2tf (and for int8 the recipe before it and our quantizer after it): the .tflite.
    The converter gets a copy of --onnx: onnx2tf saves over the model it is given."""
    source = workdir / "source" / args.onnx.name
    source.parent.mkdir()
    shutil.copyfile(args.onnx, source)
    if precision != "int8":
        return run_onnx2tf(source, precision, workdir, test_data), None
    started = time.perf_counter()
    per_channel = args.quant_type == "per-channel"
    prepared = workdir / args.onnx.name
    recipe = prepare_int8_onnx(source, calib, per_channel, prepared)
    print(f"int8: equalized {recipe['equalized_pairs']} conv pairs, rounded "
          f"{recipe['rounded_convs']} convs' weights on {recipe['stats_images']} images "
          f"({time.perf_counter() - started:.0f} s)")
    run_onnx2tf(prepared, precision, workdir, test_data)
    produced = workdir / "int8.tflite"
    produced.write_bytes(quantize_int8(workdir / "out", calib, args.float_io, per_channel,
                                       workdir / "quantize.log"))
    recipe.update(input="float32" if args.float_io else "int8", outputs="float32",
                  float_ops="sigmoid of the score outputs")
    return produced, recipe


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
    out = args.out or MODELS_DIR / export_name(family, (height, width), precision)
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
                                   Path(work))
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as stage:
            staged = Path(stage) / out.name  # the new pair waits here until it has passed
            shutil.copyfile(produced, staged)
            meta = build_metadata(staged, args.onnx, family, precision, (height, width),
                                  calib_paths, args.quant_type, recipe)
            embed_metadata(staged, meta)  # a .tflite copied alone still describes itself
            write_metadata(staged, {**meta, TFLITE_SHA256: sha256_of(staged)})
            print(f"converted in {time.perf_counter() - started:.0f} s")
            worst = parity(args.onnx, staged, photos)
            print("\n".join(parity_table(worst, len(photos))))
            if precision == "float32" and worst_error(worst) > FLOAT32_TOLERANCE:
                print(f"error: float32 parity above {FLOAT32_TOLERANCE:g}; the conversion is "
                      f"wrong, so {out} was left as it was", file=sys.stderr)
                return 1
            replace_model(staged, out)
    print(f"wrote {display(out)} ({out.stat().st_size / 1e6:.2f} MB, {precision}) and "
          f"{display(metadata_path(out))}")
    return 0


if __name__ == "__main__":
    cli(main)
