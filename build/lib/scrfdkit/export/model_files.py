"""The files an export writes: the metadata (sidecar and the copy embedded in the .tflite),
checked output paths, and the staged .tflite and sidecar moved into place as a pair."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from pathlib import Path
from typing import Iterator, Sequence

from ..errors import UserError
from ..files import atomic_write, check_writable_folder
from ..metadata import EMBEDDED_NAME, METADATA_FORMAT, metadata_path


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
