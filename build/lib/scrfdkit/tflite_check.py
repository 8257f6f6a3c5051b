"""Whether a .tflite is whole, checked in pure Python before LiteRT loads it: LiteRT trusts
the file, and a truncated or overwritten model makes it read past the end and crash."""
from __future__ import annotations

import mmap
import os
import struct

from .errors import UserError

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


class Damaged(Exception):
    """Where the flatbuffer stops making sense; check_tflite turns it into a UserError."""


class _Table:
    """One checked table: where it is, where its field table (vtable) is, and their sizes."""

    def __init__(self, pos: int, vtable: int, vtable_size: int, size: int, name: str):
        self.pos, self.vtable, self.vtable_size, self.size, self.name = (
            pos, vtable, vtable_size, size, name)


class FlatBuffer:
    """Bounds-checked reading of a little-endian flatbuffer, as flatc's verifier does it."""

    def __init__(self, data) -> None:
        self.data, self.size = data, len(data)

    def read(self, fmt: str, pos: int, what: str) -> int:
        if pos < 0 or pos + struct.calcsize(fmt) > self.size:
            raise Damaged(f"{what} at byte {pos} lies past the end of the {self.size}-byte file")
        return struct.unpack_from(fmt, self.data, pos)[0]

    def table(self, pos: int, name: str) -> _Table:
        if pos % 4:
            raise Damaged(f"{name} starts at unaligned byte {pos}")
        vtable = pos - self.read("<i", pos, name)
        vtable_size = self.read("<H", vtable, f"{name} field table")
        size = self.read("<H", vtable + 2, f"{name} field table")
        if vtable % 2 or vtable_size < 4 or vtable_size % 2 or size < 4:
            raise Damaged(f"{name} has a malformed field table at byte {vtable}")
        if vtable + vtable_size > self.size or pos + size > self.size:
            raise Damaged(f"{name} at byte {pos} runs past the end of the {self.size}-byte file")
        return _Table(pos, vtable, vtable_size, size, name)

    def field(self, table: _Table, index: int, width: int) -> int | None:
        """Byte position of field `index` (None when the table leaves it out)."""
        if 4 + 2 * index >= table.vtable_size:
            return None
        offset = struct.unpack_from("<H", self.data, table.vtable + 4 + 2 * index)[0]
        if offset and offset + width > table.size:
            raise Damaged(f"field {index} of {table.name} lies outside its table")
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
            raise Damaged(f"{name} starts at unaligned byte {pos}")
        count = self.read("<I", pos, name)
        if pos + 4 + count * width > self.size:
            raise Damaged(f"{name} ({count} x {width} bytes from byte {pos + 4}) runs past the "
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
                    raise Damaged(f"{name} is not a terminated string")
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
                    _check_model(FlatBuffer(data))
                except Damaged as err:
                    raise UserError(f"{path} is damaged: {err} (copy or export it again)"
                                    ) from None
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror or err}") from None


def _check_model(buffer: FlatBuffer) -> None:
    """The structure (walk), then the indices between tables and data after the flatbuffer."""
    model = buffer.table(buffer.read("<I", 0, "the root offset"), "model")
    buffer.walk(model, "Model")
    codes = buffer.tables(model, 1, "model.operator_codes")
    subgraphs = buffer.tables(model, 2, "model.subgraphs")
    buffers = buffer.tables(model, 4, "model.buffers")
    if not subgraphs:
        raise Damaged("the model has no subgraph")

    def outside(offset: int, size: int) -> bool:  # data stored after the flatbuffer (> 2 GB)
        return offset > 1 and offset + size > buffer.size

    for item in buffers:
        if outside(buffer.scalar(item, 1, "<Q"), buffer.scalar(item, 2, "<Q")):
            raise Damaged(f"{item.name} data lies past the end of the {buffer.size}-byte file")
    tensor_counts = []
    for graph in subgraphs:
        tensors = buffer.tables(graph, 0, f"{graph.name}.tensors")
        tensor_counts.append(len(tensors))
        for tensor in tensors:
            if buffer.scalar(tensor, 2, "<I") >= len(buffers):
                raise Damaged(f"{tensor.name} names buffer {buffer.scalar(tensor, 2, '<I')} of "
                               f"{len(buffers)}")
        for index, field in ((1, "inputs"), (2, "outputs")):
            if any(not 0 <= i < len(tensors) for i in buffer.ints(graph, index, field)):
                raise Damaged(f"{graph.name}.{field} name a tensor it does not have")
        for op in buffer.tables(graph, 3, f"{graph.name}.operators"):
            if buffer.scalar(op, 0, "<I") >= len(codes):
                raise Damaged(f"{op.name} has operator code {buffer.scalar(op, 0, '<I')} of "
                               f"{len(codes)}")
            for index, field in ((1, "inputs"), (2, "outputs"), (8, "intermediates")):
                if any(not -1 <= i < len(tensors) for i in buffer.ints(op, index, field)):
                    raise Damaged(f"{op.name}.{field} name a tensor its subgraph does not have")
            if outside(buffer.scalar(op, 9, "<Q"), buffer.scalar(op, 10, "<Q")):
                raise Damaged(f"{op.name} custom options lie past the end of the file")
    for item in buffer.tables(model, 6, "model.metadata"):
        if buffer.scalar(item, 1, "<I") >= len(buffers):
            raise Damaged(f"{item.name} names buffer {buffer.scalar(item, 1, '<I')} of "
                           f"{len(buffers)}")
    for signature in buffer.tables(model, 7, "model.signature_defs"):
        graph = buffer.scalar(signature, 4, "<I")
        if graph >= len(subgraphs):
            raise Damaged(f"{signature.name} names subgraph {graph} of {len(subgraphs)}")
        for index in (0, 1):
            for entry in buffer.tables(signature, index, signature.name):
                if buffer.scalar(entry, 1, "<I") >= tensor_counts[graph]:
                    raise Damaged(f"{signature.name} names a tensor its subgraph does not have")
