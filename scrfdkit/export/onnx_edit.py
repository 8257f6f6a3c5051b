"""SCRFD ONNX graphs made ready for TFLite: fetch, load, fix the input size, simplify, upgrade
the opset, name the outputs, run them for checks, and hand them to onnx2tf.

onnx, onnxsim, onnxruntime and onnx2tf are imported inside the functions that need them, so
importing this module costs nothing.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from ..decode import KINDS, STRIDES, identify_outputs, letterbox, preprocess
from ..errors import UserError
from ..files import read_image, sha256_of
from ..runners import onnx_session

DEFAULT_OPSET = 13  # what onnx2tf handles best for these graphs
RELEASE_URL = "https://github.com/deepinsight/insightface/releases/download/v0.7/"
MODEL_URL_ENV = "SCRFD_MODEL_URL"  # a folder (URL) holding buffalo_sc.zip etc., for mirrors
RELEASES = {  # archive -> (detector inside it, sha256 of that detector)
    "buffalo_sc": ("det_500m.onnx", "5e4447f50245bbd7966bd6c0fa52938c61474a04ec7def48753668a9d8b4ea3a"),
    "buffalo_m": ("det_2.5g.onnx", "041f73f47371333d1d17a6fee6c8ab4e6aecabefe398ff32cca4e2d5eaee0af9"),
    "buffalo_l": ("det_10g.onnx", "5838f7fe053675b1c7a08b633df49e7af5495cee0493c7dcf6697200b85b5b91"),
}
DOWNLOAD_SCHEMES = ("http", "https", "ftp", "file")  # what urllib can fetch
DOWNLOAD_TIME_LIMIT = 1800.0  # seconds for a whole download: buffalo_l (275 MB) at 160 kB/s
READ_TIMEOUT = 30.0  # seconds one read may wait for data before the download is given up
# onnx2tf validates its conversion on this file and downloads it when it is missing;
# we always write our own (real photos), so nothing goes to the network.
ONNX2TF_TEST_DATA = "calibration_image_sample_data_20x128x128x3_float32.npy"
ONNX2TF_SUFFIX = {"float32": "float32", "float16": "float16", "dynamic": "dynamic_range_quant"}


# ----------------------------------------------------------------------------- download
def release_url() -> str:
    """Where the InsightFace model packs are fetched from: $SCRFD_MODEL_URL, else the release."""
    return os.environ.get(MODEL_URL_ENV) or RELEASE_URL


def check_download_url(base_url: str) -> None:
    """Refuse a base URL urllib cannot fetch before anything is downloaded."""
    if urllib.parse.urlsplit(base_url).scheme.lower() not in DOWNLOAD_SCHEMES:
        raise UserError(f"download URL {base_url!r} is not a folder URL (expected "
                        f"{', '.join(s + '://' for s in DOWNLOAD_SCHEMES)}); check --mirror or "
                        f"${MODEL_URL_ENV}")


def download(archive: str, models_dir: Path, base_url: str,
             time_limit: float = DOWNLOAD_TIME_LIMIT) -> Path:
    """Fetch an InsightFace release zip, extract its detector, check the sha256, write atomically.

    Gives up when one read waits READ_TIMEOUT seconds, and when the whole download takes more
    than `time_limit` seconds (a mirror trickling a byte at a time never trips a read timeout).
    """
    from tqdm import tqdm

    member, expected = RELEASES[archive]
    destination = models_dir / member
    url = base_url.rstrip("/") + f"/{archive}.zip"
    by_hand = (f"download {url} yourself, unzip it and put {member} into {models_dir}/")
    if destination.exists() and sha256_of(destination) == expected:
        print(f"{destination} is already there (sha256 ok)")
        return destination
    models_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=models_dir, prefix=".download-") as tmp:
        zip_path = Path(tmp) / f"{archive}.zip"
        deadline = time.monotonic() + time_limit
        try:
            with urllib.request.urlopen(url, timeout=min(READ_TIMEOUT, time_limit)) as response, \
                    open(zip_path, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0) or None
                read = getattr(response, "read1", response.read)  # returns what has arrived
                with tqdm(total=total, unit="B", unit_scale=True, desc=f"{archive}.zip") as bar:
                    for block in iter(lambda: read(1 << 16), b""):
                        out.write(block)
                        bar.update(len(block))
                        if time.monotonic() > deadline:
                            of = f" of {total}" if total else ""
                            raise UserError(f"download of {url} took more than {time_limit:g} s "
                                            f"(--download-timeout) and was given up after "
                                            f"{bar.n}{of} bytes; {by_hand}")
            if total and zip_path.stat().st_size != total:
                raise UserError(f"download of {url} stopped early; {by_hand}")
            with zipfile.ZipFile(zip_path) as archive_zip:
                names = [n for n in archive_zip.namelist() if Path(n).name == member]
                if not names:
                    raise UserError(f"{url} has no {member}; {by_hand}")
                with archive_zip.open(names[0]) as src, open(Path(tmp) / member, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        except (urllib.error.URLError, OSError, zipfile.BadZipFile, ValueError) as err:
            reason = getattr(err, "reason", None) or err
            raise UserError(f"cannot download {url} ({reason}); {by_hand}") from None
        actual = sha256_of(Path(tmp) / member)
        if actual != expected:
            raise UserError(f"{member} from {url} has sha256 {actual[:12]}..., expected "
                            f"{expected[:12]}...; {by_hand}")
        os.replace(Path(tmp) / member, destination)
    print(f"wrote {destination} (sha256 ok)")
    return destination


# ----------------------------------------------------------------------------- graph edits
def load_onnx(path: Path):
    """The checked ONNX model at `path`; UserError when it is missing or not valid ONNX."""
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


def input_hw(model) -> tuple[int, int]:
    """The image input's declared height and width (0 where it is dynamic)."""
    height, width = (d.dim_value for d in image_input(model).type.tensor_type.shape.dim[2:])
    return height, width


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
    """Declare the input 1x3xHxW and forget every shape that was inferred for another size."""
    for dim, value in zip(image_input(model).type.tensor_type.shape.dim, (1, 3, height, width)):
        dim.ClearField("dim_param")
        dim.dim_value = value
    for output in model.graph.output:  # exports declare 640x640 output shapes
        for dim in output.type.tensor_type.shape.dim:
            dim.Clear()
    del model.graph.value_info[:]  # stale intermediate shapes; onnxsim infers them anew


def simplify(model, height: int, width: int):
    """onnxsim at the fixed size: folds the shape arithmetic TFLite cannot express statically."""
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


def opset_of(model) -> int:
    """The model's default-domain opset (0 if it declares none)."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def highest_opset() -> int:
    """The newest opset both the onnx converter can write and ONNX Runtime can run (for checks)."""
    import onnx
    import onnxruntime.capi.onnxruntime_pybind11_state as ort_state

    highest = onnx.defs.onnx_opset_version()
    with contextlib.suppress(Exception):  # an ORT build without its schema list: trust onnx
        highest = min(highest, max(s.since_version for s in ort_state.get_all_operator_schema()
                                   if s.domain in ("", "ai.onnx")))
    return highest


def upgrade_opset(model, opset: int):
    """The model at `opset` or newer: upgraded when older, unchanged when already newer."""
    import onnx
    from onnx import version_converter

    current = opset_of(model)
    if current >= opset:
        return model
    try:
        upgraded = version_converter.convert_version(model, opset)
        onnx.checker.check_model(upgraded)
    except Exception as err:
        raise UserError(f"cannot upgrade opset {current} -> {opset}: {str(err).splitlines()[0]}"
                        ) from None
    return upgraded


# ----------------------------------------------------------------------------- running
def model_session(model):
    """An ONNX Runtime session for an in-memory model (through runners.onnx_session)."""
    with tempfile.TemporaryDirectory(prefix="scrfd-onnx-") as tmp:
        path = Path(tmp) / "model.onnx"
        path.write_bytes(model.SerializeToString())
        return onnx_session(path, threads=None)


def run_onnx(model_or_path, tensor: np.ndarray) -> list[np.ndarray]:
    """All outputs of a model (ModelProto or file) on one NCHW tensor, on CPU."""
    session = (onnx_session(model_or_path, threads=None) if isinstance(model_or_path, (str, Path))
               else model_session(model_or_path))
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


def parity_with_source(source: Path, names: list[str], outputs: list[np.ndarray],
                       tensor: np.ndarray, input_hw: tuple[int, int]) -> float:
    """Largest |source - modified| over all outputs, matched by kind and stride."""
    reference = run_onnx(source, tensor)
    specs, _ = identify_outputs([r.shape for r in reference], input_hw)
    by_name = {f"{s.kind}_{s.stride}": r for s, r in zip(specs, reference)}
    return max(float(np.abs(by_name[n].reshape(-1) - a.reshape(-1)).max())
               for n, a in zip(names, outputs))


def check_image(path: Path, height: int, width: int) -> tuple[np.ndarray, str]:
    """A real photo for the parity check, or a fixed synthetic one if none is at hand."""
    if path.is_file():
        return preprocess(read_image(path), (height, width))[0], str(path)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return preprocess(image, (height, width))[0], "a synthetic image"


# ----------------------------------------------------------------------------- onnx2tf
@contextlib.contextmanager
def captured_output(log_path: Path) -> Iterator[None]:
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


@contextlib.contextmanager
def converter_step(what: str, log_path: Path) -> Iterator[None]:
    """Quiet the converter, and turn any failure into one UserError line with its cause."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        with captured_output(log_path):
            yield
    except BaseException as err:
        if isinstance(err, KeyboardInterrupt):
            raise
        log = re.sub(r"\x1b\[[0-9;]*m", "", log_path.read_text(errors="replace")).splitlines()
        causes = [line.strip() for line in log if re.match(r"\s*\w*(Error|Exception):", line)]
        detail = (causes or [f"{type(err).__name__}: {err}"])[-1][:200]
        raise UserError(f"{what} failed: {detail}") from None


def onnx2tf_test_data(paths: list[Path]) -> np.ndarray:
    """20 RGB photos in [0, 1] at 128x128, the format onnx2tf's own checks expect."""
    picks = [paths[i % len(paths)] for i in range(20)]
    return np.stack([cv2.cvtColor(letterbox(read_image(p), (128, 128))[0], cv2.COLOR_BGR2RGB)
                     for p in picks]).astype(np.float32) / 255.0


def run_onnx2tf(onnx_path: Path, precision: str, workdir: Path, test_data: np.ndarray,
                signatures: bool = False) -> Path:
    """Run onnx2tf in `workdir`: the saved_model (workdir/out) and the .tflite of `precision`
    (float32 for int8, which int8.quantize_int8 makes from the saved_model). signatures: the
    saved_model gets a serving signature (int8 and the post-processed kinds build on it)."""
    np.save(workdir / ONNX2TF_TEST_DATA, test_data)
    options = dict(input_onnx_file_path=str(onnx_path.resolve()),
                   output_folder_path=str(workdir / "out"), non_verbose=True)
    if precision == "int8" or signatures:  # the saved_model is converted again: a signature
        options["output_signaturedefs"] = True
    if precision == "dynamic":
        options["output_dynamic_range_quantized_tflite"] = True
    cwd = os.getcwd()
    try:
        os.chdir(workdir)
        with converter_step(f"onnx2tf on {onnx_path}", workdir / "onnx2tf.log"):
            import onnx2tf
            onnx2tf.convert(**options)
    finally:
        os.chdir(cwd)
    produced = workdir / "out" / f"{onnx_path.stem}_{ONNX2TF_SUFFIX.get(precision, 'float32')}.tflite"
    if not produced.exists():
        raise UserError(f"onnx2tf did not write {produced.name}; see the log above")
    return produced


# ----------------------------------------------------------------------------- reading
def onnx_metadata(path: Path) -> dict[str, str]:
    """The metadata_props export_modified_onnx.py wrote (scrfd_source, scrfd_input_hw, ...)."""
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def static_input(path: Path) -> bool:
    """Whether every input dimension, batch included, is a fixed number (TFLite needs that)."""
    session = onnx_session(path, threads=1)
    return all(isinstance(d, int) for d in session.get_inputs()[0].shape)
