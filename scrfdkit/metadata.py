"""The metadata export_tflite.py writes for every .tflite (a sidecar <model>.tflite.json and a
copy embedded in the file), read back here without TensorFlow, and the names of model files:
precision labels, families and export names. Every script asks here instead of guessing."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from .errors import UserError
from .files import sha256_of
from .tflite_check import Damaged, FlatBuffer

METADATA_FORMAT = "scrfd-tflite/1"
PRECISIONS = ("float32", "float16", "dynamic", "int8")  # export_tflite.py's --fp16/--dynamic/--int8
PRECISION_ALIASES = {"fp16": "float16", "integer_quant": "int8", "dynamic_range_quant": "dynamic",
                     "dynamic-range": "dynamic"}
MODEL_SUFFIXES = (".onnx", ".tflite")
TFLITE_SHA256 = "tflite_sha256"  # sidecar key: the .tflite's own sha256 when it was exported
EMBEDDED_NAME = "scrfd_metadata"  # the .tflite's own metadata entry holding the same JSON


def metadata_path(model_path: str | os.PathLike) -> Path:
    """The sidecar JSON export_tflite.py writes beside every .tflite: <model>.tflite.json."""
    return Path(str(model_path) + ".json")


def read_metadata(model_path: str | os.PathLike) -> dict | None:
    """The export's metadata for a .tflite: its sidecar, else the copy export_tflite.py
    embedded in the .tflite itself (a model copied alone to a device keeps it); None when
    neither exists (a .tflite made elsewhere)."""
    path = metadata_path(model_path)
    if not path.exists():
        if Path(model_path).suffix.lower() != ".tflite" or not Path(model_path).is_file():
            return None
        text = read_embedded_metadata(model_path)
        return None if text is None else _parse_metadata(text, f"{model_path} (embedded)")
    try:
        text = path.read_text()
    except OSError as err:
        raise UserError(f"cannot read model metadata {path}: {err}") from None
    return _parse_metadata(text, str(path))


def _parse_metadata(text: str, where: str) -> dict:
    try:
        meta = json.loads(text)
    except ValueError as err:
        raise UserError(f"cannot read model metadata {where}: {err}") from None
    if not isinstance(meta, dict) or meta.get("format") != METADATA_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise UserError(f"{where} is not scrFDOnlyInference metadata (format {found!r})")
    return meta


def read_metadata_or_none(model_path: str | os.PathLike) -> dict | None:
    """Like read_metadata, but an unreadable sidecar counts as none (for labels, not inference)."""
    try:
        return read_metadata(model_path) if Path(model_path).suffix.lower() == ".tflite" else None
    except UserError:
        return None




def read_embedded_metadata(tflite_path: str | os.PathLike) -> str | None:
    """The JSON export_tflite.py embedded in a .tflite, or None; pure Python, no TensorFlow.
    Every read is bounds-checked, so a damaged file is a UserError, never a crash."""
    try:
        data = Path(tflite_path).read_bytes()
        buffer = FlatBuffer(data)
        model = buffer.table(buffer.read("<I", 0, "the root offset"), "model")
        buffers = buffer.tables(model, 4, "model.buffers")
        for item in buffer.tables(model, 6, "model.metadata"):
            name_at = buffer.pointee(item, 0, f"{item.name}.name")
            if name_at is None:
                continue
            start, count = buffer.vector(name_at, 1, f"{item.name}.name")
            if bytes(data[start:start + count]) != EMBEDDED_NAME.encode():
                continue
            index = buffer.scalar(item, 1, "<I")
            data_at = buffer.pointee(buffers[index], 0, f"model.buffers[{index}].data") \
                if index < len(buffers) else None
            if data_at is None:
                return None
            start, count = buffer.vector(data_at, 1, f"model.buffers[{index}].data")
            return bytes(data[start:start + count]).decode("utf-8", "replace")
    except Damaged as err:
        raise UserError(f"{tflite_path} is damaged: {err} (copy or export it again)") from None
    except OSError as err:
        raise UserError(f"cannot read {tflite_path}: {err.strerror or err}") from None
    return None


def check_unaltered(model_path: str | os.PathLike, meta: dict | None) -> None:
    """Refuse a .tflite whose bytes differ from the ones its sidecar was written for.

    Damaged or edited weights still load and run, and report nonsense (thousands of faces);
    the sha256 export_tflite.py records catches them. Hashing a few MB takes milliseconds.
    """
    expected = (meta or {}).get(TFLITE_SHA256)
    if not expected:
        return
    actual = sha256_of(model_path)
    if actual != expected:
        raise UserError(f"{model_path} is damaged: its sha256 is {actual[:12]}..., but its sidecar "
                        f"{metadata_path(model_path).name} was written for {expected[:12]}...; "
                        "the file changed after export (copy it again or re-export it)")


def precision_from_name(path: str | os.PathLike) -> str | None:
    """float32 / float16 / dynamic / int8 when the file name says so (scrfd500m_640x640_int8)."""
    match = re.search(r"(float32|float16|fp16|int8|dynamic_range_quant|dynamic|integer_quant)",
                      Path(path).stem)
    return PRECISION_ALIASES.get(match.group(1), match.group(1)) if match else None


def export_family(source_name: str, keypoints: bool = True) -> str:
    """'scrfd500m' from det_500m, 'scrfd2.5g_bnkps' from scrfd_2.5g_bnkps (original naming)."""
    parts = Path(source_name).stem.split("_")
    if parts[-1].count("x") == 1 and parts[-1].replace("x", "").isdigit():
        parts = parts[:-1]  # drop a _HxW suffix
    if parts[0] in ("det", "scrfd"):
        parts = parts[1:]
    name = "scrfd" + "_".join(parts)
    return name if keypoints else name + "_nokps"


def export_name(family: str, input_hw: tuple[int, int], precision: str, kind: str = "raw",
                integer_io: bool = False) -> str:
    """models/<family>_<H>x<W>_<precision>[_<kind>][_integer_io].tflite, as export_tflite.py
    names its outputs (raw, the default kind, has no kind in its name)."""
    tail = ("" if kind == "raw" else "_" + kind.replace("-", "_")) + \
        ("_integer_io" if integer_io else "")
    return f"{family}_{input_hw[0]}x{input_hw[1]}_{precision}{tail}.tflite"


def family_of(path: str | os.PathLike) -> str:
    """The model a file was made from, as the tables name it: det_500m, det_2.5g.

    det_500m.onnx, det_500m_640x640.onnx and every scrfd500m_* export share one family.
    """
    path = Path(path)
    stem = (read_metadata_or_none(path) or {}).get("family") or path.stem
    stem = re.sub(r"_\d+x\d+.*$", "", stem)  # drop _HxW and what follows (precision)
    stem = re.sub(r"_(float32|float16|int8|dynamic)$", "", stem)
    return "det_" + re.sub(r"^(det_|scrfd_?)", "", stem)
