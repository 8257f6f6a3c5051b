"""Model files and their names: the .tflite.json sidecar (writer and reader), precision
labels, family names and export names, where an export may write, and whether a .tflite is
whole. Every script asks here instead of guessing."""
from __future__ import annotations

import contextlib
import json
import mmap
import os
import re
import signal
import struct
import tempfile
import threading
from pathlib import Path
from typing import Iterator, Sequence

from .cli import UserError
from .files import atomic_write, sha256_of

METADATA_FORMAT = "scrfd-tflite/1"
PRECISIONS = ("float32", "float16", "dynamic", "int8")  # export_tflite.py's --fp16/--dynamic/--int8
PRECISION_ALIASES = {"fp16": "float16", "integer_quant": "int8", "dynamic_range_quant": "dynamic",
                     "dynamic-range": "dynamic"}
MODEL_SUFFIXES = (".onnx", ".tflite")
TFLITE_SHA256 = "tflite_sha256"  # sidecar key: the .tflite's own sha256 when it was exported
EMBEDDED_NAME = "scrfd_metadata"  # the .tflite's own metadata entry holding the same JSON


# ----------------------------------------------------------------------------- sidecar
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


def write_metadata(model_path: str | os.PathLike, meta: dict) -> Path:
    """Write the sidecar whole (temporary file, then rename); returns its path."""
    path = metadata_path(model_path)
    with atomic_write(path) as handle:
        json.dump({"format": METADATA_FORMAT, **meta}, handle, indent=1)
    return path


def embed_metadata(tflite_path: Path, meta: dict) -> None:
    """Store the metadata's JSON inside the .tflite (its flatbuffer `metadata` list, entry
    "scrfd_metadata"), rewriting the file in place. Export only: needs TensorFlow's schema."""
    import numpy as np
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(tflite_path.read_bytes()))
    payload = json.dumps({"format": METADATA_FORMAT, **meta}, indent=1).encode()
    entries = [m for m in (model.metadata or []) if m.name not in (EMBEDDED_NAME.encode(),
                                                                   EMBEDDED_NAME)]
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(payload, np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = EMBEDDED_NAME, len(model.buffers) - 1
    model.metadata = entries + [entry]
    tflite_path.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))


def read_embedded_metadata(tflite_path: str | os.PathLike) -> str | None:
    """The JSON export_tflite.py embedded in a .tflite, or None; pure Python, no TensorFlow.
    Every read is bounds-checked, so a damaged file is a UserError, never a crash."""
    try:
        data = Path(tflite_path).read_bytes()
        buffer = _FlatBuffer(data)
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
    except _Damaged as err:
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


# ----------------------------------------------------------------------------- exports
def check_output_path(path: Path, suffix: str, inputs: Sequence[Path] = (),
                      option: str = "--out") -> None:
    """Refuse an export's output before any work: an input, a folder, wrong suffix, unwritable."""
    for source in inputs:
        if path.resolve() == source.resolve() or (
                path.exists() and source.exists() and os.path.samefile(path, source)):
            raise UserError(f"{option} {path} is the input {source}; choose another file name")
    for destination in (path, metadata_path(path)) if suffix == ".tflite" else (path,):
        if destination.is_dir():
            raise UserError(f"{option} {path}: {destination} is a folder; give a file name "
                            f"(for example {path / ('model' + suffix)})")
    if path.suffix.lower() != suffix:
        raise UserError(f"{option} {path}: the file name must end in {suffix}")
    check_writable_folder(path.parent, f"{option} {path}")


def check_writable_folder(folder: Path, what: str) -> None:
    """Refuse a folder that is a file, lies under a file, or may not be written to.

    `what` names the option and value in the message ("--models-dir models").
    """
    existing = folder.resolve()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{what}: {existing} is a file, not a folder")
    try:  # a real attempt: permission bits say little for root or read-only mounts
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as err:
        raise UserError(f"{what}: cannot write in {existing} ({err.strerror or err})") from None


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM for a moment; they take effect when the block ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    saved = {number: signal.signal(number, lambda signum, frame: pending.append(signum))
             for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in saved.items():
            signal.signal(number, handler)
        if pending:
            signal.raise_signal(pending[0])


def replace_model(staged: Path, destination: Path) -> None:
    """Move a staged .tflite and its staged sidecar over `destination` and its sidecar, as a pair.

    Both renames happen back to back with Ctrl-C/SIGTERM held, so an interrupted export
    leaves the earlier pair whole; a destination sidecar with no staged one is removed.
    """
    staged_meta, destination_meta = metadata_path(staged), metadata_path(destination)
    with _signals_held():
        os.replace(staged, destination)
        if staged_meta.exists():
            os.replace(staged_meta, destination_meta)
        elif destination_meta.exists():
            destination_meta.unlink()


# ----------------------------------------------------------------------------- names
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


def export_name(family: str, input_hw: tuple[int, int], precision: str) -> str:
    """models/<family>_<H>x<W>_<precision>.tflite, as export_tflite.py names its outputs."""
    return f"{family}_{input_hw[0]}x{input_hw[1]}_{precision}.tflite"


def family_of(path: str | os.PathLike) -> str:
    """The model a file was made from, as the tables name it: det_500m, det_2.5g.

    det_500m.onnx, det_500m_640x640.onnx and every scrfd500m_* export share one family.
    """
    path = Path(path)
    stem = (read_metadata_or_none(path) or {}).get("family") or path.stem
    stem = re.sub(r"_\d+x\d+.*$", "", stem)  # drop _HxW and what follows (precision)
    stem = re.sub(r"_(float32|float16|int8|dynamic)$", "", stem)
    return "det_" + re.sub(r"^(det_|scrfd_?)", "", stem)


def fixed_input_hw(model_path: Path) -> tuple[int, int] | None:
    """The input size a model file was exported for, or None when it takes any size."""
    if not model_path.is_file():
        raise UserError(f"model not found: {model_path}")
    suffix = model_path.suffix.lower()
    if suffix == ".onnx":
        from .runners import onnx_session

        hw = onnx_session(model_path, threads=1).get_inputs()[0].shape[2:]
        hw = [d if isinstance(d, int) else 0 for d in hw]
    elif suffix == ".tflite":
        from .runners import tflite_interpreter

        shape = list(tflite_interpreter(model_path).get_input_details()[0]["shape_signature"])
        hw = shape[2:] if len(shape) == 4 and shape[1] == 3 else shape[1:3]
    else:
        raise UserError(f"{model_path}: unsupported model type (expected .onnx or .tflite)")
    return (int(hw[0]), int(hw[1])) if len(hw) == 2 and min(hw) > 0 else None


# ----------------------------------------------------------------------------- whole .tflite
# What LiteRT follows through a .tflite (tensorflow/compiler/mlir/lite/schema/schema.fbs):
# table -> {field index: (name, content)}. Content: "string"; ("vector", element bytes);
# ("table", T) or ("tables", T) for one or a vector of T; ("union", type field, {type: T}) for
# a table whose type another field names (other types: checked as tables, no references).
# Scalar fields are checked to lie inside their table.
_OPTIONS = {3: "ConcatEmbeddingsOptions", 17: "ReshapeOptions", 30: "SqueezeOptions",
            111: "VarHandleOptions", 115: "BucketizeOptions"}
_INDEX_VECTORS = {1: "Int32Vector", 2: "Uint16Vector", 3: "Uint8Vector"}
_INTS = ("vector", 4)
_TFLITE_SCHEMA: dict[str, dict[int, tuple]] = {
    "Model": {1: ("operator_codes", ("tables", "OperatorCode")),
              2: ("subgraphs", ("tables", "SubGraph")), 3: ("description", "string"),
              4: ("buffers", ("tables", "Buffer")), 5: ("metadata_buffer", _INTS),
              6: ("metadata", ("tables", "Metadata")),
              7: ("signature_defs", ("tables", "SignatureDef")),
              8: ("external_buffer_groups", ("tables", "ExternalBufferGroup")),
              9: ("external_buffers", ("tables", "ExternalBuffer"))},
    "OperatorCode": {1: ("custom_code", "string")},
    "SubGraph": {0: ("tensors", ("tables", "Tensor")), 1: ("inputs", _INTS),
                 2: ("outputs", _INTS), 3: ("operators", ("tables", "Operator")),
                 4: ("name", "string")},
    "Tensor": {0: ("shape", _INTS), 3: ("name", "string"),
               4: ("quantization", ("table", "QuantizationParameters")),
               6: ("sparsity", ("table", "SparsityParameters")), 7: ("shape_signature", _INTS),
               9: ("variant_tensors", ("tables", "VariantSubType"))},
    "QuantizationParameters": {0: ("min", _INTS), 1: ("max", _INTS), 2: ("scale", _INTS),
                               3: ("zero_point", ("vector", 8)),
                               5: ("details", ("union", 4, {1: "CustomQuantization"}))},
    "CustomQuantization": {0: ("custom", ("vector", 1))},
    "SparsityParameters": {0: ("traversal_order", _INTS), 1: ("block_map", _INTS),
                           2: ("dim_metadata", ("tables", "DimensionMetadata"))},
    "DimensionMetadata": {3: ("array_segments", ("union", 2, _INDEX_VECTORS)),
                          5: ("array_indices", ("union", 4, _INDEX_VECTORS))},
    "Int32Vector": {0: ("values", _INTS)}, "Uint16Vector": {0: ("values", ("vector", 2))},
    "Uint8Vector": {0: ("values", ("vector", 1))},
    "VariantSubType": {0: ("shape", _INTS)},
    "Operator": {1: ("inputs", _INTS), 2: ("outputs", _INTS),
                 4: ("builtin_options", ("union", 3, _OPTIONS)),
                 5: ("custom_options", ("vector", 1)),
                 7: ("mutating_variable_inputs", ("vector", 1)), 8: ("intermediates", _INTS),
                 12: ("builtin_options_2", ("union", 11, {}))},
    "ConcatEmbeddingsOptions": {1: ("num_columns_per_channel", _INTS),
                                2: ("embedding_dim_per_channel", _INTS)},
    "ReshapeOptions": {0: ("new_shape", _INTS)}, "SqueezeOptions": {0: ("squeeze_dims", _INTS)},
    "VarHandleOptions": {0: ("container", "string"), 1: ("shared_name", "string")},
    "BucketizeOptions": {0: ("boundaries", _INTS)},
    "Buffer": {0: ("data", ("vector", 1))},
    "Metadata": {0: ("name", "string")},
    "SignatureDef": {0: ("inputs", ("tables", "TensorMap")),
                     1: ("outputs", ("tables", "TensorMap")), 2: ("signature_key", "string")},
    "TensorMap": {0: ("name", "string")},
    "ExternalBufferGroup": {0: ("name", "string")},
    "ExternalBuffer": {4: ("packing", "string")},
}


class _Damaged(Exception):
    """Where the flatbuffer stops making sense; check_tflite turns it into a UserError."""


class _Table:
    """One checked table: where it is, where its field table (vtable) is, and their sizes."""

    def __init__(self, pos: int, vtable: int, vtable_size: int, size: int, name: str):
        self.pos, self.vtable, self.vtable_size, self.size, self.name = (
            pos, vtable, vtable_size, size, name)


class _FlatBuffer:
    """Bounds-checked reading of a little-endian flatbuffer, as flatc's verifier does it."""

    def __init__(self, data) -> None:
        self.data, self.size = data, len(data)

    def read(self, fmt: str, pos: int, what: str) -> int:
        if pos < 0 or pos + struct.calcsize(fmt) > self.size:
            raise _Damaged(f"{what} at byte {pos} lies past the end of the {self.size}-byte file")
        return struct.unpack_from(fmt, self.data, pos)[0]

    def table(self, pos: int, name: str) -> _Table:
        if pos % 4:
            raise _Damaged(f"{name} starts at unaligned byte {pos}")
        vtable = pos - self.read("<i", pos, name)
        vtable_size = self.read("<H", vtable, f"{name} field table")
        size = self.read("<H", vtable + 2, f"{name} field table")
        if vtable % 2 or vtable_size < 4 or vtable_size % 2 or size < 4:
            raise _Damaged(f"{name} has a malformed field table at byte {vtable}")
        if vtable + vtable_size > self.size or pos + size > self.size:
            raise _Damaged(f"{name} at byte {pos} runs past the end of the {self.size}-byte file")
        return _Table(pos, vtable, vtable_size, size, name)

    def field(self, table: _Table, index: int, width: int) -> int | None:
        """Byte position of field `index` (None when the table leaves it out)."""
        if 4 + 2 * index >= table.vtable_size:
            return None
        offset = struct.unpack_from("<H", self.data, table.vtable + 4 + 2 * index)[0]
        if offset and offset + width > table.size:
            raise _Damaged(f"field {index} of {table.name} lies outside its table")
        return table.pos + offset if offset else None

    def scalar(self, table: _Table, index: int, fmt: str) -> int:
        pos = self.field(table, index, struct.calcsize(fmt))
        return 0 if pos is None else struct.unpack_from(fmt, self.data, pos)[0]

    def pointee(self, table: _Table, index: int, name: str) -> int | None:
        """Where an offset field points (None when absent)."""
        pos = self.field(table, index, 4)
        return None if pos is None else pos + self.read("<I", pos, name)

    def vector(self, pos: int, width: int, name: str) -> tuple[int, int]:
        """(first element, count) of the vector at `pos`, all of it inside the file."""
        if pos % 4:
            raise _Damaged(f"{name} starts at unaligned byte {pos}")
        count = self.read("<I", pos, name)
        if pos + 4 + count * width > self.size:
            raise _Damaged(f"{name} ({count} x {width} bytes from byte {pos + 4}) runs past the "
                           f"end of the {self.size}-byte file")
        return pos + 4, count

    def tables(self, table: _Table, index: int, name: str) -> list[_Table]:
        """The tables of a vector-of-tables field, each checked (not what they refer to)."""
        pos = self.pointee(table, index, name)
        if pos is None:
            return []
        start, count = self.vector(pos, 4, name)
        return [self.table(start + 4 * i + self.read("<I", start + 4 * i, name), f"{name}[{i}]")
                for i in range(count)]

    def ints(self, table: _Table, index: int, name: str) -> list[int]:
        pos = self.pointee(table, index, name)
        if pos is None:
            return []
        start, count = self.vector(pos, 4, name)
        return list(struct.unpack_from(f"<{count}i", self.data, start))

    def walk(self, table: _Table, kind: str) -> None:
        """Check everything `table` refers to, through the schema, depth first."""
        for index, (field, content) in _TFLITE_SCHEMA.get(kind, {}).items():
            name = f"{table.name}.{field}"
            if content[0] == "union":
                union_type, pos = self.scalar(table, content[1], "<B"), self.pointee(table, index, name)
                if pos is not None and union_type:
                    self.walk(self.table(pos, name), content[2].get(union_type, ""))
            elif content[0] == "tables":
                for item in self.tables(table, index, name):
                    self.walk(item, content[1])
            elif (pos := self.pointee(table, index, name)) is None:
                continue
            elif content == "string":
                start, count = self.vector(pos, 1, name)
                if self.read("<B", start + count, name) != 0:
                    raise _Damaged(f"{name} is not a terminated string")
            elif content[0] == "vector":
                self.vector(pos, content[1], name)
            else:
                self.walk(self.table(pos, name), content[1])


def check_tflite(path: str | os.PathLike) -> None:
    """UserError("... is damaged: ...") unless the .tflite's flatbuffer is whole.

    LiteRT trusts the file: a truncated or overwritten model makes it read past the end and
    crash the process. This checks in pure Python what LiteRT will follow: the "TFL3"
    identifier, every table and field table, every offset, vector and string (subgraphs,
    tensors, operators, operator codes, buffers, metadata, signatures), the indices that join
    them, and data stored after the flatbuffer (buffer and custom-option offset/size fields).
    """
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size < 8:
                raise UserError(f"{path} is damaged: {size} bytes, too short for a TFLite model")
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
                if data[4:8] != b"TFL3":
                    raise UserError(f"{path} is damaged: bytes 4-8 are {data[4:8]!r}, not the "
                                    "TFLite file identifier b'TFL3'")
                try:
                    _check_model(_FlatBuffer(data))
                except _Damaged as err:
                    raise UserError(f"{path} is damaged: {err} (copy or export it again)"
                                    ) from None
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror or err}") from None


def _check_model(buffer: _FlatBuffer) -> None:
    """The structure (walk), then the indices between tables and data after the flatbuffer."""
    model = buffer.table(buffer.read("<I", 0, "the root offset"), "model")
    buffer.walk(model, "Model")
    codes = buffer.tables(model, 1, "model.operator_codes")
    subgraphs = buffer.tables(model, 2, "model.subgraphs")
    buffers = buffer.tables(model, 4, "model.buffers")
    if not subgraphs:
        raise _Damaged("the model has no subgraph")

    def outside(offset: int, size: int) -> bool:  # data stored after the flatbuffer (> 2 GB)
        return offset > 1 and offset + size > buffer.size

    for item in buffers:
        if outside(buffer.scalar(item, 1, "<Q"), buffer.scalar(item, 2, "<Q")):
            raise _Damaged(f"{item.name} data lies past the end of the {buffer.size}-byte file")
    tensor_counts = []
    for graph in subgraphs:
        tensors = buffer.tables(graph, 0, f"{graph.name}.tensors")
        tensor_counts.append(len(tensors))
        for tensor in tensors:
            if buffer.scalar(tensor, 2, "<I") >= len(buffers):
                raise _Damaged(f"{tensor.name} names buffer {buffer.scalar(tensor, 2, '<I')} of "
                               f"{len(buffers)}")
        for index, field in ((1, "inputs"), (2, "outputs")):
            if any(not 0 <= i < len(tensors) for i in buffer.ints(graph, index, field)):
                raise _Damaged(f"{graph.name}.{field} name a tensor it does not have")
        for op in buffer.tables(graph, 3, f"{graph.name}.operators"):
            if buffer.scalar(op, 0, "<I") >= len(codes):
                raise _Damaged(f"{op.name} has operator code {buffer.scalar(op, 0, '<I')} of "
                               f"{len(codes)}")
            for index, field in ((1, "inputs"), (2, "outputs"), (8, "intermediates")):
                if any(not -1 <= i < len(tensors) for i in buffer.ints(op, index, field)):
                    raise _Damaged(f"{op.name}.{field} name a tensor its subgraph does not have")
            if outside(buffer.scalar(op, 9, "<Q"), buffer.scalar(op, 10, "<Q")):
                raise _Damaged(f"{op.name} custom options lie past the end of the file")
    for item in buffer.tables(model, 6, "model.metadata"):
        if buffer.scalar(item, 1, "<I") >= len(buffers):
            raise _Damaged(f"{item.name} names buffer {buffer.scalar(item, 1, '<I')} of "
                           f"{len(buffers)}")
    for signature in buffer.tables(model, 7, "model.signature_defs"):
        graph = buffer.scalar(signature, 4, "<I")
        if graph >= len(subgraphs):
            raise _Damaged(f"{signature.name} names subgraph {graph} of {len(subgraphs)}")
        for index in (0, 1):
            for entry in buffer.tables(signature, index, signature.name):
                if buffer.scalar(entry, 1, "<I") >= tensor_counts[graph]:
                    raise _Damaged(f"{signature.name} names a tensor its subgraph does not have")
