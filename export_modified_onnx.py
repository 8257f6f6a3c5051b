"""Step 1: get an SCRFD ONNX model and fix it for conversion.

Fixes the input to one H x W (TFLite wants static shapes), folds the shape arithmetic away
(onnxsim), upgrades the opset, and gives the outputs canonical names and order
(score_8, score_16, score_32, bbox_8, ..., kps_32) identified from their shapes, since
every export names them differently.

    python export_modified_onnx.py --download buffalo_sc          # -> models/det_500m.onnx
    python export_modified_onnx.py --model models/det_500m.onnx --hw 480,640

--download fetches from InsightFace's v0.7 release, or from the folder URL in the
environment variable SCRFD_MODEL_URL (a mirror holding buffalo_sc.zip etc.); the sha256
of the detector is checked either way.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from scrfdkit.cli import (DEFAULT_IMAGE, MODELS_DIR, ArgumentParser, cli, display, parse_hw,
                          positive_int)
from scrfdkit.errors import UserError
from scrfdkit.export.model_files import check_output_path
from scrfdkit.export.onnx_edit import (DEFAULT_OPSET, DOWNLOAD_TIME_LIMIT, MODEL_URL_ENV,
                                       READ_TIMEOUT, RELEASES, canonical_outputs,
                                       check_download_url, check_image, download, fix_input,
                                       highest_opset, input_hw, load_onnx, opset_of,
                                       parity_with_source, release_url, resize_sizes_to_scales,
                                       run_onnx, simplify, upgrade_opset)
from scrfdkit.files import atomic_path, check_outputs, check_writable_folder, sha256_of

DEFAULT_MODEL = MODELS_DIR / "det_500m.onnx"
DEFAULT_HW = "480,640"
DEFAULT_CHECK_IMAGE = DEFAULT_IMAGE
PARITY_TOLERANCE = 1e-4  # the edits are exact; anything above this is a broken graph


def export(source: Path, out: Path, height: int, width: int, opset: int, check_path: Path) -> None:
    """Fix `source` to height x width, check it against the source, write it to `out`."""
    import onnx

    model = load_onnx(source)
    original_hw = input_hw(model)
    fixed_source = all(original_hw)
    if fixed_source and original_hw != (height, width):
        resize_sizes_to_scales(model)
    fix_input(model, height, width)
    model = upgrade_opset(simplify(model, height, width), opset)
    names = canonical_outputs(model, height, width)
    meta = {"scrfd_source": source.name, "scrfd_source_sha256": sha256_of(source),
            "scrfd_input_hw": f"{height},{width}", "scrfd_keypoints": str("kps_8" in names)}
    del model.metadata_props[:]
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)

    tensor, described = check_image(check_path, height, width)
    outputs = run_onnx(model, tensor)
    if not fixed_source or original_hw == (height, width):
        error = parity_with_source(source, names, outputs, tensor, (height, width))
        print(f"parity with {source.name} on {described}: max abs error {error:.2e}")
        if error > PARITY_TOLERANCE:
            raise UserError(f"the modified model differs from the source by {error:.2e}")
    else:
        print(f"{source.name} has a fixed {original_hw[0]}x{original_hw[1]} input, so there is no "
              "reference at this size; export_tflite.py checks the converted model against this one")
    with atomic_path(out) as tmp:
        onnx.save(model, str(tmp))
    ops = sorted({n.op_type for n in model.graph.node})
    print(f"input 1x3x{height}x{width}, opset {opset_of(model)}, {len(model.graph.node)} nodes "
          f"({', '.join(ops)})")
    print(f"outputs: {', '.join(names)}")
    print(f"wrote {display(out)}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(__doc__)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                        help=f"SCRFD ONNX model to fix (default {display(DEFAULT_MODEL)})")
    parser.add_argument("--hw", default=DEFAULT_HW,
                        help=f"input height,width, multiples of 32 (default {DEFAULT_HW})")
    parser.add_argument("--out", type=Path, default=None,
                        help="output .onnx, not the --model file (default "
                             "models/<model>_<H>x<W>.onnx)")
    parser.add_argument("--opset", type=positive_int, default=DEFAULT_OPSET,
                        help="upgrade to at least this opset, up to the newest the installed "
                             "onnx and onnxruntime know; a newer source keeps its own "
                             f"(default {DEFAULT_OPSET})")
    parser.add_argument("--check-image", type=Path, default=DEFAULT_CHECK_IMAGE,
                        help="photo for the parity check against the source model "
                             f"(default {DEFAULT_CHECK_IMAGE}; a synthetic image if missing)")
    parser.add_argument("--download", choices=sorted(RELEASES),
                        help="fetch the detector of an InsightFace model pack into --models-dir "
                             "(buffalo_sc: det_500m, buffalo_m: det_2.5g, buffalo_l: det_10g), "
                             "checking its sha256")
    parser.add_argument("--download-timeout", type=positive_int, default=int(DOWNLOAD_TIME_LIMIT),
                        metavar="SECONDS",
                        help="give a --download up when it takes longer than this in all "
                             f"(default {DOWNLOAD_TIME_LIMIT:g} s), or when no data comes for "
                             f"{READ_TIMEOUT:g} s")
    parser.add_argument("--models-dir", type=Path, default=MODELS_DIR,
                        help=f"where --download puts models (default {display(MODELS_DIR)})")
    parser.add_argument("--mirror", default=release_url(),
                        help="folder URL holding the release archives (<URL>/buffalo_sc.zip ...; "
                             f"default: ${MODEL_URL_ENV} when set, else InsightFace's v0.7 "
                             "release)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.download:
        check_download_url(args.mirror)
        check_writable_folder(args.models_dir, f"--models-dir {args.models_dir}")
        download(args.download, args.models_dir, args.mirror, args.download_timeout)
        return
    height, width = parse_hw(args.hw)
    if args.opset > highest_opset():
        raise UserError(f"--opset {args.opset} is newer than this onnx/onnxruntime can write "
                        f"and check; choose at most {highest_opset()} (default {DEFAULT_OPSET})")
    out = args.out or MODELS_DIR / f"{args.model.stem}_{height}x{width}.onnx"
    check_output_path(out, ".onnx", inputs=[args.model])
    check_outputs({"--out": out}, [args.model, args.check_image])
    export(args.model, out, height, width, args.opset, args.check_image)


if __name__ == "__main__":
    cli(main)
