"""Step 2: convert a fixed-size SCRFD ONNX model to TFLite (float32, float16, dynamic-range, int8).

Conversion goes through onnx2tf (NCHW -> NHWC). Int8 is full-integer quantization calibrated
on real WIDER FACE photos, preprocessed exactly as at inference (letterbox, RGB,
(x - 127.5) / 128). After every export the .tflite is run beside ONNX Runtime on real face
photos and the largest error per output is printed; float32 must agree within 1e-3.
Every .tflite gets a sidecar <file>.tflite.json with what inference needs to know.

    python export_tflite.py --onnx models/det_500m_480x640.onnx            # float32
    python export_tflite.py --onnx models/det_500m_480x640.onnx --int8 --calib data/WIDER_val/images
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from detector import (METADATA_FORMAT, INPUT_MEAN, INPUT_STD, KINDS, STRIDES, LiteRTRunner,
                      OnnxRunner, UserError, atomic_write, cli, find_images, identify_outputs,
                      letterbox, metadata_path, preprocess, read_image, sha256_of)

# ----------------------------------------------------------------------------- config
DEFAULT_ONNX = Path("models/det_500m_480x640.onnx")
DEFAULT_CALIB = Path("data/WIDER_val/images")
DEFAULT_CALIB_COUNT = 200
DEFAULT_CHECK_IMAGES = [Path("data/friends.jpg")]
FLOAT32_TOLERANCE = 1e-3
ONNX2TF_SUFFIX = {  # our precision name -> the file onnx2tf writes
    "float32": "float32", "float16": "float16", "dynamic": "dynamic_range_quant",
    "int8": "full_integer_quant", "int8-float-io": "integer_quant",
}
# onnx2tf validates its conversion on this file and downloads it when it is missing;
# we always write our own (real WIDER photos), so nothing goes to the network.
ONNX2TF_TEST_DATA = "calibration_image_sample_data_20x128x128x3_float32.npy"


# ----------------------------------------------------------------------------- calibration
def calibration_images(folder: Path, count: int) -> list[Path]:
    """`count` images spread evenly over the sorted folder (every WIDER event represented)."""
    if not folder.is_dir():
        raise UserError(f"calibration folder not found: {folder} (give --calib a folder of "
                        "photos, for example WIDER_val/images)")
    images = find_images([folder])
    if not images:
        raise UserError(f"no images in calibration folder {folder}")
    picks = np.linspace(0, len(images) - 1, min(count, len(images))).round().astype(int)
    return [images[i] for i in dict.fromkeys(picks)]


def calibration_tensor(paths: list[Path], input_hw: tuple[int, int]) -> np.ndarray:
    """N x H x W x 3 float32, preprocessed by the same function inference uses."""
    batch = []
    for path in paths:
        try:
            batch.append(preprocess(read_image(path), input_hw, "NHWC")[0][0])
        except UserError as err:
            print(f"warning: skipping calibration image: {err}", file=sys.stderr)
    if not batch:
        raise UserError("none of the calibration images could be read")
    return np.stack(batch)


def onnx2tf_test_data(paths: list[Path]) -> np.ndarray:
    """20 RGB photos in [0, 1] at 128x128, the format onnx2tf's own checks expect."""
    picks = [paths[i % len(paths)] for i in range(20)]
    return np.stack([cv2.cvtColor(letterbox(read_image(p), (128, 128))[0], cv2.COLOR_BGR2RGB)
                     for p in picks]).astype(np.float32) / 255.0


# ----------------------------------------------------------------------------- conversion
@contextlib.contextmanager
def captured_output(log_path: Path):
    """Send the converter's (very chatty) stdout/stderr, C++ logs included, to a file."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "w") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def convert(onnx_path: Path, precision: str, workdir: Path, input_name: str,
            calib: np.ndarray | None, test_data: np.ndarray, quant_type: str) -> Path:
    """Run onnx2tf in `workdir` and return the .tflite of the requested precision."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    np.save(workdir / ONNX2TF_TEST_DATA, test_data)
    options = dict(input_onnx_file_path=str(onnx_path.resolve()),
                   output_folder_path=str(workdir / "out"), non_verbose=True)
    if precision == "dynamic":
        options["output_dynamic_range_quantized_tflite"] = True
    if precision.startswith("int8"):
        np.save(workdir / "calib.npy", calib)
        options.update(output_integer_quantized_tflite=True, quant_type=quant_type,
                       custom_input_op_name_np_data_path=[
                           [input_name, str(workdir / "calib.npy"), [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]],
                       input_quant_dtype="int8", output_quant_dtype="int8")
    log_path = workdir / "onnx2tf.log"
    cwd = os.getcwd()
    try:
        os.chdir(workdir)
        with captured_output(log_path):
            import onnx2tf
            onnx2tf.convert(**options)
    except BaseException as err:
        if isinstance(err, KeyboardInterrupt):
            raise
        log = re.sub(r"\x1b\[[0-9;]*m", "", log_path.read_text(errors="replace")).splitlines()
        causes = [line.strip() for line in log if re.match(r"\s*\w*(Error|Exception):", line)]
        detail = (causes or [f"{type(err).__name__}: {err}"])[-1][:200]
        raise UserError(f"onnx2tf failed on {onnx_path}: {detail}") from None
    finally:
        os.chdir(cwd)
    produced = workdir / "out" / f"{onnx_path.stem}_{ONNX2TF_SUFFIX[precision]}.tflite"
    if not produced.exists():
        raise UserError(f"onnx2tf did not write {produced.name}; see the log above")
    return produced


# ----------------------------------------------------------------------------- metadata
def family_name(onnx_path: Path, keypoints: bool) -> str:
    """'scrfd500m' from det_500m, 'scrfd2.5g_bnkps' from scrfd_2.5g_bnkps, ... (original naming)."""
    import onnx

    props = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    stem = Path(props.get("scrfd_source", onnx_path.name)).stem
    parts = stem.split("_")
    if parts[-1].count("x") == 1 and parts[-1].replace("x", "").isdigit():
        parts = parts[:-1]  # drop a _HxW suffix
    if parts[0] in ("det", "scrfd"):
        parts = parts[1:]
    name = "scrfd" + "_".join(parts)
    return name if keypoints else name + "_nokps"


def build_metadata(tflite_path: Path, onnx_path: Path, precision: str, input_hw,
                   calib_paths: list[Path], quant_type: str) -> dict:
    import onnx2tf

    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(tflite_path))
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    outputs = interpreter.get_output_details()
    specs, anchors = identify_outputs([o["shape"] for o in outputs], input_hw)
    order = sorted(range(len(outputs)), key=lambda i: (KINDS.index(specs[i].kind),
                                                        STRIDES.index(specs[i].stride)))
    return {
        "format": METADATA_FORMAT,
        "family": family_name(onnx_path, any(s.kind == "kps" for s in specs)),
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
        "calibration": {"images": len(calib_paths), "quant_type": quant_type} if calib_paths else None,
        "converter": {"onnx2tf": onnx2tf.__version__},
    }


# ----------------------------------------------------------------------------- parity
def parity(onnx_path: Path, tflite_path: Path, images: list[Path]) -> dict[str, float]:
    """Largest |ONNX - TFLite| per output kind over the check images, in raw output units."""
    reference = OnnxRunner(onnx_path, threads=None)
    candidate = LiteRTRunner(tflite_path, threads=None)
    worst = {}
    for path in images:
        image = read_image(path)
        expected = reference(preprocess(image, reference.input_hw, "NCHW")[0])
        actual = candidate(preprocess(image, candidate.input_hw, candidate.layout)[0])
        for stride in STRIDES:
            for kind, values in expected[stride].items():
                error = float(np.abs(values - actual[stride][kind]).max())
                worst[kind] = max(worst.get(kind, 0.0), error)
                worst[f"{kind}_{stride}"] = max(worst.get(f"{kind}_{stride}", 0.0), error)
    return worst


def print_parity(worst: dict[str, float], count: int) -> None:
    print(f"parity against ONNX Runtime on {count} photo(s): max abs error per output")
    print("| output | stride 8 | stride 16 | stride 32 | all |")
    print("| --- | --- | --- | --- | --- |")
    for kind in KINDS:
        if kind in worst:
            cells = " | ".join(f"{worst[f'{kind}_{s}']:.2e}" for s in STRIDES)
            units = "probability" if kind == "score" else "stride units"
            print(f"| {kind} ({units}) | {cells} | {worst[kind]:.2e} |")


# ----------------------------------------------------------------------------- main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--onnx", type=Path, default=DEFAULT_ONNX,
                        help=f"fixed-size ONNX from export_modified_onnx.py (default {DEFAULT_ONNX})")
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--int8", "--int", dest="int8", action="store_true",
                      help="full-integer int8 quantization calibrated on --calib (--int is the "
                           "original project's name for it)")
    kind.add_argument("--fp16", action="store_true", help="float16 weights, float32 compute")
    kind.add_argument("--dynamic", action="store_true",
                      help="dynamic-range quantization: int8 weights, float activations")
    parser.add_argument("--calib", type=Path, default=DEFAULT_CALIB,
                        help=f"folder of photos for int8 calibration (default {DEFAULT_CALIB})")
    parser.add_argument("--calib-count", type=int, default=DEFAULT_CALIB_COUNT,
                        help=f"calibration images, spread over the folder (default {DEFAULT_CALIB_COUNT})")
    parser.add_argument("--quant-type", choices=("per-channel", "per-tensor"), default="per-channel",
                        help="int8 weight quantization granularity (default per-channel)")
    parser.add_argument("--float-io", action="store_true",
                        help="int8 model with float32 input and outputs (default: int8 in and out)")
    parser.add_argument("--check-images", nargs="+", type=Path, default=DEFAULT_CHECK_IMAGES,
                        help="face photos for the parity check (files or folders; default "
                             "data/friends.jpg, plus 4 calibration photos when calibrating)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output .tflite (default models/<family>_<H>x<W>_<precision>.tflite)")
    args = parser.parse_args()

    precision = ("int8" if args.int8 else "float16" if args.fp16 else
                 "dynamic" if args.dynamic else "float32")
    source = OnnxRunner(args.onnx, threads=None)  # validates: exists, ONNX, SCRFD, runs
    if any(not isinstance(d, int) for d in source.session.get_inputs()[0].shape):
        raise UserError(f"{args.onnx} has a dynamic input; fix its size first with "
                        f"export_modified_onnx.py --model {args.onnx} --hw H,W")
    height, width = source.input_hw
    out = args.out or Path("models") / f"{family_name(args.onnx, source.has_landmarks)}_{height}x{width}_{precision}.tflite"

    calib_paths: list[Path] = []
    calib = None
    if precision == "int8":
        calib_paths = calibration_images(args.calib, args.calib_count)
        calib = calibration_tensor(calib_paths, (height, width))
        print(f"calibrating on {len(calib)} images from {args.calib}")
    check_paths = [p for p in args.check_images if p.exists()]
    check_images = find_images(check_paths) if check_paths else []
    if not check_images and calib_paths:
        check_images = calib_paths[:: max(1, len(calib_paths) // 4)][:4]
    elif calib_paths:
        check_images += calib_paths[:: max(1, len(calib_paths) // 4)][:4]
    if not check_images:
        raise UserError("no photo for the parity check: give --check-images")

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="export_tflite-") as tmp:
        name = precision + ("-float-io" if precision == "int8" and args.float_io else "")
        produced = convert(args.onnx, name, Path(tmp), source.input_name, calib,
                           onnx2tf_test_data(calib_paths or check_images), args.quant_type)
        out.parent.mkdir(parents=True, exist_ok=True)
        staged = out.with_name(f".{out.name}.part")
        shutil.copyfile(produced, staged)
        meta = build_metadata(staged, args.onnx, precision, (height, width), calib_paths,
                              args.quant_type)
        os.replace(staged, out)
    with atomic_write(metadata_path(out)) as handle:
        json.dump(meta, handle, indent=1)
    print(f"converted in {time.perf_counter() - started:.0f} s")

    worst = parity(args.onnx, out, check_images)
    print_parity(worst, len(check_images))
    size = out.stat().st_size
    print(f"wrote {out} ({size / 1e6:.2f} MB, {precision}) and {metadata_path(out)}")
    if precision == "float32" and max(worst[k] for k in KINDS if k in worst) > FLOAT32_TOLERANCE:
        print(f"error: float32 parity above {FLOAT32_TOLERANCE:g}; the conversion is wrong",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    cli(main)
