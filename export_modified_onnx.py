"""Step 1: get an SCRFD ONNX model and fix it for conversion.

Fixes the input to one H x W (TFLite wants static shapes), folds the shape arithmetic away
(onnxsim), upgrades the opset, and gives the outputs canonical names and order
(score_8, score_16, score_32, bbox_8, ..., kps_32) identified from their shapes, since
every export names them differently.

    python export_modified_onnx.py --download buffalo_sc          # -> models/det_500m.onnx
    python export_modified_onnx.py --model models/det_500m.onnx --hw 480,640
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np

from detector import (KINDS, STRIDES, UserError, atomic_path, cli, identify_outputs, parse_hw,
                      preprocess, read_image, sha256_of)

# ----------------------------------------------------------------------------- config
MODELS_DIR = Path("models")
DEFAULT_MODEL = MODELS_DIR / "det_500m.onnx"
DEFAULT_HW = "480,640"
DEFAULT_OPSET = 13  # what onnx2tf handles best for these graphs
DEFAULT_CHECK_IMAGE = Path("data/friends.jpg")
RELEASE_URL = "https://github.com/deepinsight/insightface/releases/download/v0.7/"
RELEASES = {  # archive -> (detector inside it, sha256 of that detector)
    "buffalo_sc": ("det_500m.onnx", "5e4447f50245bbd7966bd6c0fa52938c61474a04ec7def48753668a9d8b4ea3a"),
    "buffalo_m": ("det_2.5g.onnx", "041f73f47371333d1d17a6fee6c8ab4e6aecabefe398ff32cca4e2d5eaee0af9"),
    "buffalo_l": ("det_10g.onnx", "5838f7fe053675b1c7a08b633df49e7af5495cee0493c7dcf6697200b85b5b91"),
}


# ----------------------------------------------------------------------------- download
def download(archive: str, models_dir: Path, base_url: str) -> Path:
    """Fetch an InsightFace release zip, extract its detector, check the sha256, write atomically."""
    from tqdm import tqdm

    member, expected = RELEASES[archive]
    target = models_dir / member
    url = base_url.rstrip("/") + f"/{archive}.zip"
    by_hand = (f"download {url} yourself, unzip it and put {member} into {models_dir}/")
    if target.exists() and sha256_of(target) == expected:
        print(f"{target} is already there (sha256 ok)")
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=models_dir, prefix=".download-") as tmp:
        zip_path = Path(tmp) / f"{archive}.zip"
        try:
            with urllib.request.urlopen(url, timeout=30) as response, open(zip_path, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=f"{archive}.zip") as bar:
                    for block in iter(lambda: response.read(1 << 16), b""):
                        out.write(block)
                        bar.update(len(block))
            if total and zip_path.stat().st_size != total:
                raise UserError(f"download of {url} stopped early; {by_hand}")
            with zipfile.ZipFile(zip_path) as archive_zip:
                names = [n for n in archive_zip.namelist() if Path(n).name == member]
                if not names:
                    raise UserError(f"{url} has no {member}; {by_hand}")
                with archive_zip.open(names[0]) as src, open(Path(tmp) / member, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        except (urllib.error.URLError, OSError, zipfile.BadZipFile) as err:
            reason = getattr(err, "reason", None) or err
            raise UserError(f"cannot download {url} ({reason}); {by_hand}") from None
        actual = sha256_of(Path(tmp) / member)
        if actual != expected:
            raise UserError(f"{member} from {url} has sha256 {actual[:12]}..., expected "
                            f"{expected[:12]}...; {by_hand}")
        os.replace(Path(tmp) / member, target)
    print(f"wrote {target} (sha256 ok)")
    return target


# ----------------------------------------------------------------------------- graph edits
def load_onnx(path: Path):
    import onnx

    if not path.is_file():
        raise UserError(f"model not found: {path}")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as err:  # protobuf DecodeError, ValidationError, ...
        raise UserError(f"{path} is not a valid ONNX model ({str(err).splitlines()[0][:120]})"
                        ) from None
    return model


def image_input(model):
    """The single 1x3xHxW image input (initializers excluded); UserError if there is none."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    dims = inputs[0].type.tensor_type.shape.dim if len(inputs) == 1 else []
    if len(inputs) != 1 or len(dims) != 4 or dims[1].dim_value not in (0, 3):
        raise UserError("not an SCRFD model: expected one image input of shape 1x3xHxW")
    return inputs[0]


def resize_sizes_to_scales(model) -> None:
    """Resize nodes with constant `sizes` only fit the export size; turn them into scales.

    Fixed-shape exports (scrfd_*_bnkps) bake their FPN upsampling as sizes (1,16,40,40);
    as scales (1,1,2,2) they work for any input that is a multiple of 32.
    """
    import onnx
    from onnx import numpy_helper

    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(inferred.graph.value_info) + list(inferred.graph.input)}
    constants = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            constants[node.output[0]] = node.attribute[0].t
    for node in model.graph.node:
        if node.op_type != "Resize" or len(node.input) < 4 or node.input[3] not in constants:
            continue
        sizes = numpy_helper.to_array(constants[node.input[3]]).astype(np.float32)
        source = shapes.get(node.input[0])
        if not source or 0 in source:
            raise UserError(f"cannot make Resize node {node.name} size-independent")
        scales = numpy_helper.from_array(sizes / np.asarray(source, np.float32),
                                         name=f"{node.name or node.output[0]}_scales")
        model.graph.initializer.append(scales)
        node.input[2] = scales.name
        del node.input[3]


def fix_input(model, height: int, width: int) -> None:
    for dim, value in zip(image_input(model).type.tensor_type.shape.dim, (1, 3, height, width)):
        dim.ClearField("dim_param")
        dim.dim_value = value
    for output in model.graph.output:  # exports declare 640x640 output shapes
        for dim in output.type.tensor_type.shape.dim:
            dim.Clear()
    del model.graph.value_info[:]  # stale intermediate shapes; onnxsim infers them anew


def simplify(model, height: int, width: int):
    import onnxsim

    name = image_input(model).name
    try:
        simplified, ok = onnxsim.simplify(model, overwrite_input_shapes={name: [1, 3, height, width]})
    except Exception as err:
        raise UserError(f"cannot simplify the graph at {height}x{width}: "
                        f"{str(err).splitlines()[0][:160]}") from None
    if not ok:
        raise UserError("onnxsim could not validate the simplified graph")
    return simplified


def upgrade_opset(model, opset: int):
    import onnx
    from onnx import version_converter

    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if current >= opset:
        return model
    try:
        upgraded = version_converter.convert_version(model, opset)
        onnx.checker.check_model(upgraded)
    except Exception as err:
        raise UserError(f"cannot upgrade opset {current} -> {opset}: {str(err).splitlines()[0]}"
                        ) from None
    return upgraded


def run_onnx(model_or_path, tensor: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    source = model_or_path if isinstance(model_or_path, (str, Path)) else \
        model_or_path.SerializeToString()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(source) if isinstance(source, Path) else source, options,
                                   providers=["CPUExecutionProvider"])
    try:
        return session.run(None, {session.get_inputs()[0].name: tensor})
    except Exception as err:
        raise UserError(f"the model does not run at this size: {str(err).splitlines()[0]}"
                        ) from None


def canonical_outputs(model, height: int, width: int) -> list[str]:
    """Rename outputs score_8 ... kps_32 (identified by shape) and put them in that order."""
    shapes = [o.shape for o in run_onnx(model, np.zeros((1, 3, height, width), np.float32))]
    specs, _ = identify_outputs(shapes, (height, width))
    renames = {out.name: f"{spec.kind}_{spec.stride}" for out, spec in zip(model.graph.output, specs)}
    for node in model.graph.node:
        for i, name in enumerate(node.output):
            node.output[i] = renames.get(name, name)
        for i, name in enumerate(node.input):
            node.input[i] = renames.get(name, name)
    outputs = sorted(model.graph.output, key=lambda o: (
        KINDS.index(specs[list(renames).index(o.name)].kind),
        STRIDES.index(specs[list(renames).index(o.name)].stride)))
    outputs = [type(o).FromString(o.SerializeToString()) for o in outputs]
    for output in outputs:
        output.name = renames[output.name]
    del model.graph.output[:]
    model.graph.output.extend(outputs)
    return [o.name for o in outputs]


def check_image(path: Path, height: int, width: int) -> tuple[np.ndarray, str]:
    """A real photo for the parity check, or a fixed synthetic one if none is at hand."""
    if path.is_file():
        return preprocess(read_image(path), (height, width))[0], str(path)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return preprocess(image, (height, width))[0], "a synthetic image"


def export(source: Path, out: Path, height: int, width: int, opset: int, check_path: Path) -> None:
    import onnx

    model = load_onnx(source)
    original = image_input(model)
    original_hw = [d.dim_value for d in original.type.tensor_type.shape.dim][2:]
    fixed_source = all(original_hw)
    if fixed_source and tuple(original_hw) != (height, width):
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
    new = run_onnx(model, tensor)
    if not fixed_source or tuple(original_hw) == (height, width):
        reference = run_onnx(source, tensor)
        specs, _ = identify_outputs([r.shape for r in reference], (height, width))
        by_name = {f"{s.kind}_{s.stride}": r for s, r in zip(specs, reference)}
        error = max(float(np.abs(by_name[n].reshape(-1) - a.reshape(-1)).max())
                    for n, a in zip(names, new))
        print(f"parity with {source.name} on {described}: max abs error {error:.2e}")
        if error > 1e-4:
            raise UserError(f"the modified model differs from the source by {error:.2e}")
    else:
        print(f"{source.name} has a fixed {original_hw[0]}x{original_hw[1]} input, so there is no "
              "reference at this size; export_tflite.py checks the converted model against this one")
    with atomic_path(out) as tmp:
        onnx.save(model, str(tmp))
    ops = sorted({n.op_type for n in model.graph.node})
    print(f"input 1x3x{height}x{width}, opset {opset}, {len(model.graph.node)} nodes ({', '.join(ops)})")
    print(f"outputs: {', '.join(names)}")
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                        help=f"SCRFD ONNX model to fix (default {DEFAULT_MODEL})")
    parser.add_argument("--hw", default=DEFAULT_HW,
                        help=f"input height,width, multiples of 32 (default {DEFAULT_HW})")
    parser.add_argument("--out", type=Path, default=None,
                        help="output path (default models/<model>_<H>x<W>.onnx)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help=f"upgrade to at least this opset (default {DEFAULT_OPSET})")
    parser.add_argument("--check-image", type=Path, default=DEFAULT_CHECK_IMAGE,
                        help="photo for the parity check against the source model "
                             f"(default {DEFAULT_CHECK_IMAGE}; a synthetic image if missing)")
    parser.add_argument("--download", choices=sorted(RELEASES),
                        help="fetch the detector of an InsightFace model pack into --models-dir "
                             "(buffalo_sc: det_500m, buffalo_m: det_2.5g, buffalo_l: det_10g)")
    parser.add_argument("--models-dir", type=Path, default=MODELS_DIR,
                        help=f"where --download puts models (default {MODELS_DIR})")
    parser.add_argument("--mirror", default=os.environ.get("SCRFD_DOWNLOAD_URL", RELEASE_URL),
                        help="base URL of the release archives (default: InsightFace's v0.7 "
                             "release; env SCRFD_DOWNLOAD_URL)")
    args = parser.parse_args()

    if args.download:
        download(args.download, args.models_dir, args.mirror)
        return
    height, width = parse_hw(args.hw)
    out = args.out or MODELS_DIR / f"{args.model.stem}_{height}x{width}.onnx"
    export(args.model, out, height, width, args.opset, args.check_image)


if __name__ == "__main__":
    cli(main)
