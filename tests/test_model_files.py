"""Damaged .tflite files: refused with one error line, never a crash.

Every damage is made from a real export (the 128x160 `tflite_float32` fixture): truncated at
several lengths, bytes overwritten in the header and in the tables LiteRT follows, and weights
altered while the sidecar (with the export's sha256) sits beside the file. scrfd.py runs as a
subprocess, since before these checks LiteRT crashed the whole process (segmentation fault).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import struct
from pathlib import Path

import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema
from conftest import SAMPLES, run_main, run_script

from scrfdkit import SCRFD, UserError
from scrfdkit.export.model_files import replace_model, write_metadata
from scrfdkit.metadata import metadata_path, read_metadata
from scrfdkit.runners import LiteRTRunner
from scrfdkit.tflite_check import check_tflite

pytestmark = pytest.mark.inference  # runs without TensorFlow (CI: make test-inference)


def assert_refused(model: Path, tmp_path: Path, *phrases: str, process: bool = False) -> None:
    """scrfd.py on the model: exit code 2, one `error:` line naming the damage, no traceback.
    In-process through main(argv) (the checks run before LiteRT sees the file), or with
    process=True as its own process, the way LiteRT's crashes used to take it down."""
    args = ("--model", model, "--image", SAMPLES / "friends.jpg", "--out", tmp_path / "out")
    proc = run_script("scrfd.py", *args, check=False) if process else run_main("scrfd.py", *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and proc.stderr.rstrip().endswith(errors[0]), proc.stderr
    for phrase in (str(model), *phrases):
        assert phrase in errors[0], errors[0]


def damaged_copy(source: Path, folder: Path, data: bytes, with_sidecar: bool = False) -> Path:
    path = folder / "damaged.tflite"
    path.write_bytes(data)
    if with_sidecar:
        shutil.copyfile(metadata_path(source), metadata_path(path))
    return path


def layout(data: bytes):
    """The export's flatbuffer, read with LiteRT's own schema module (to find where to damage)."""
    return schema.Model.GetRootAs(bytearray(data), 0)


def weight_ranges(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of every non-empty buffer's bytes: the weights and constants."""
    model, ranges = layout(data), []
    for index in range(model.BuffersLength()):
        buffer = model.Buffers(index)
        if buffer.DataLength():
            start = buffer._tab.Vector(buffer._tab.Offset(4))
            ranges.append((start, start + buffer.DataLength()))
    return ranges


# ----------------------------------------------------------------------------- whole files pass
def test_a_whole_export_passes(tflite_float32):
    check_tflite(tflite_float32)
    meta = read_metadata(tflite_float32)
    assert meta["tflite_sha256"] == hashlib.sha256(tflite_float32.read_bytes()).hexdigest()
    assert len(SCRFD(tflite_float32, threads=1).detect(np.zeros((64, 64, 3), np.uint8))) == 0


def test_a_sidecar_without_the_sha256_still_loads(tflite_float32, tmp_path):
    """Sidecars from exports made before the sha256 was recorded keep working."""
    model = damaged_copy(tflite_float32, tmp_path, tflite_float32.read_bytes())
    meta = read_metadata(tflite_float32)
    del meta["tflite_sha256"]
    write_metadata(model, meta)
    assert LiteRTRunner(model, threads=1).precision == "float32"


# ----------------------------------------------------------------------------- truncated
@pytest.mark.parametrize("keep", [0, 7, 64, 0.25, 0.5, 0.99, -1])
def test_truncated(tflite_float32, tmp_path, keep):
    """Cut anywhere, down to the last byte; the first of these used to crash LiteRT."""
    data = tflite_float32.read_bytes()
    length = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    model = damaged_copy(tflite_float32, tmp_path, data[:length])
    with pytest.raises(UserError, match="is damaged"):
        check_tflite(model)
    with pytest.raises(UserError, match="is damaged"):
        SCRFD(model, threads=1)
    assert_refused(model, tmp_path, "is damaged")


# ----------------------------------------------------------------------------- overwritten
def _overwrite(data: bytes, where: str) -> bytearray:
    """Overwrite one field that LiteRT follows without checking."""
    damaged, model = bytearray(data), layout(data)
    graph = model.Subgraphs(0)
    if where == "identifier":
        damaged[4:8] = b"XXXX"
    elif where == "root offset":
        damaged[0:4] = struct.pack("<I", len(data) + 1000)
    elif where == "subgraph field table":  # soffset from the table to its vtable
        damaged[graph._tab.Pos: graph._tab.Pos + 4] = struct.pack("<i", -(len(data) * 2))
    elif where == "buffer count":
        count = model._tab.Vector(model._tab.Offset(12)) - 4
        damaged[count: count + 4] = struct.pack("<I", 0x7FFFFFF)
    elif where == "tensor name":
        tensor = graph.Tensors(3)
        name = tensor._tab.Offset(10) + tensor._tab.Pos
        damaged[name: name + 4] = struct.pack("<I", len(data))
    elif where == "tensor buffer index":
        tensor = graph.Tensors(graph.TensorsLength() - 1)
        field = tensor._tab.Offset(8) + tensor._tab.Pos
        damaged[field: field + 4] = struct.pack("<I", 50_000)
    elif where == "operator code index":
        op = graph.Operators(0)
        field = op._tab.Offset(4) + op._tab.Pos
        damaged[field: field + 4] = struct.pack("<I", 9_999)
    elif where == "operator input":
        op = graph.Operators(0)
        first = op._tab.Vector(op._tab.Offset(6))
        damaged[first: first + 4] = struct.pack("<i", 1_000_000)
    return damaged


@pytest.mark.parametrize("where", ["identifier", "root offset", "subgraph field table",
                                   "buffer count", "tensor name", "tensor buffer index",
                                   "operator code index", "operator input"])
def test_overwritten_header_and_tables(tflite_float32, tmp_path, where):
    """Structural damage is refused before LiteRT sees the file, sidecar or not."""
    model = damaged_copy(tflite_float32, tmp_path, _overwrite(tflite_float32.read_bytes(), where))
    with pytest.raises(UserError, match="is damaged"):
        check_tflite(model)
    assert_refused(model, tmp_path, "is damaged")


# ----------------------------------------------------------------------------- altered weights
def test_altered_weights_refused_through_the_sidecar(tflite_float32, tmp_path):
    """Weights overwritten in place keep the structure whole (check_tflite passes), but the
    sha256 the export recorded no longer matches: refused instead of 10,000 faces."""
    data = bytearray(tflite_float32.read_bytes())
    start, end = max(weight_ranges(data), key=lambda r: r[1] - r[0])
    data[start: start + (end - start) // 2] = b"\x7f" * ((end - start) // 2)
    model = damaged_copy(tflite_float32, tmp_path, data, with_sidecar=True)
    check_tflite(model)  # still a well-formed flatbuffer
    with pytest.raises(UserError, match="sha256"):
        LiteRTRunner(model, threads=1)
    assert_refused(model, tmp_path, "is damaged", "sha256", metadata_path(model).name)


def test_one_flipped_weight_byte_is_enough(tflite_float32, tmp_path):
    data = bytearray(tflite_float32.read_bytes())
    start, _ = weight_ranges(data)[0]
    data[start] ^= 0x01
    model = damaged_copy(tflite_float32, tmp_path, data, with_sidecar=True)
    with pytest.raises(UserError, match="is damaged"):
        SCRFD(model, threads=1)


def test_not_a_tflite_file(det500m_onnx, tmp_path):
    model = tmp_path / "renamed.tflite"
    shutil.copyfile(det500m_onnx, model)
    assert_refused(model, tmp_path, "is damaged", "TFL3", process=True)


# ----------------------------------------------------------------------------- replacing a pair
def _pair(folder: Path, text: str, sidecar: bool = True) -> Path:
    folder.mkdir(exist_ok=True)
    model = folder / "model.tflite"
    model.write_text(f"model {text}")
    if sidecar:
        metadata_path(model).write_text(f"sidecar {text}")
    return model


def test_replace_model_moves_the_pair(tmp_path):
    destination = _pair(tmp_path / "models", "old")
    replace_model(_pair(tmp_path / "stage", "new"), destination)
    assert destination.read_text() == "model new" and metadata_path(destination).read_text() == "sidecar new"
    assert not any((tmp_path / "stage").iterdir())


def test_replace_model_drops_a_stale_sidecar(tmp_path):
    destination = _pair(tmp_path / "models", "old")
    replace_model(_pair(tmp_path / "stage", "new", sidecar=False), destination)
    assert destination.read_text() == "model new" and not metadata_path(destination).exists()


def test_ctrl_c_between_the_two_renames_waits_for_the_second(tmp_path, monkeypatch):
    """An interrupt landing after the model's rename still lets the sidecar follow it."""
    destination = _pair(tmp_path / "models", "old")
    staged = _pair(tmp_path / "stage", "new")
    real_replace, renamed = os.replace, []

    def replace_then_interrupt(source, target):
        real_replace(source, target)
        renamed.append(Path(target))
        if Path(target) == destination:  # the model is in place, its sidecar not yet
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(os, "replace", replace_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        replace_model(staged, destination)
    assert renamed == [destination, metadata_path(destination)]  # the interrupt came in between
    assert destination.read_text() == "model new"
    assert metadata_path(destination).read_text() == "sidecar new"


def test_a_lone_tflite_describes_itself(tflite_float32, samples_dir, tmp_path):
    """Copied without its sidecar, the export still runs with its own embedded metadata and
    finds exactly the same faces."""
    from scrfdkit.metadata import read_embedded_metadata, read_metadata

    alone = tmp_path / "only" / tflite_float32.name
    alone.parent.mkdir()
    shutil.copyfile(tflite_float32, alone)
    embedded = read_metadata(alone)
    sidecar = read_metadata(tflite_float32)
    assert read_embedded_metadata(alone) is not None
    assert embedded == {k: v for k, v in sidecar.items() if k != "tflite_sha256"}
    faces = []
    for model, out in ((tflite_float32, tmp_path / "with"), (alone, tmp_path / "alone")):
        run_script("scrfd.py", "--model", model, "--image", samples_dir / "friends.jpg",
                   "--out", out)
        faces.append((out / "faces.jsonl").read_text())
    assert faces[0] == faces[1] and json.loads(faces[0])["faces"]
