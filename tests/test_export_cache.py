"""The test exports' cache (conftest.py): an export is reused only while the source model, the
exporter code and the converter packages are those that made it."""
from __future__ import annotations

import json
import os
import time

import conftest
import pytest
from conftest import REPO, export_folder, export_key, exporter_sources


def test_the_exporter_code_is_every_module_the_export_scripts_import():
    names = {str(p.relative_to(REPO)) for p in exporter_sources()}
    assert {"export_tflite.py", "export_modified_onnx.py", "scrfdkit/__init__.py",
            "scrfdkit/export/__init__.py", "scrfdkit/export/int8.py",
            "scrfdkit/export/onnx_edit.py", "scrfdkit/export/parity.py",
            "scrfdkit/export/model_files.py", "scrfdkit/decode.py", "scrfdkit/runners.py",
            "scrfdkit/metadata.py", "scrfdkit/files.py"} <= names
    assert not {n for n in names if n.startswith(("scrfd.py", "scrfdkit/wider/",
                                                  "scrfdkit/bench/", "tests/"))}


def test_the_key_changes_with_the_model_the_code_and_the_versions(tmp_path, monkeypatch):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"model one")
    first = export_key(model)
    assert export_key(model) == first  # the same inputs, the same key
    model.write_bytes(b"model two")
    second = export_key(model)
    assert second["key"] != first["key"] and second["code"] == first["code"]
    real = conftest._version
    monkeypatch.setattr(conftest, "_version",
                        lambda name: "9.9.9" if name == "onnx2tf" else real(name))
    third = export_key(model)
    assert third["key"] != second["key"] and third["versions"]["onnx2tf"] == "9.9.9"
    monkeypatch.setattr(conftest, "_version", real)
    source = tmp_path / "repo"  # a copy of the exporter code with one byte changed
    for path in exporter_sources():
        target = source / path.relative_to(REPO)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    parity = source / "scrfdkit" / "export" / "parity.py"
    parity.write_text(parity.read_text().replace("FLOAT32_TOLERANCE = 1e-3",
                                                 "FLOAT32_TOLERANCE = 1e-2"))
    monkeypatch.setattr(conftest, "REPO", source)
    fourth = export_key(model)
    assert fourth["code"] != second["code"] and fourth["key"] != second["key"]


def test_folders_by_key_and_what_an_environment_without_a_converter_takes(tmp_path):
    root = tmp_path / "cache"
    (root).mkdir()
    (root / "scrfd500m_128x160_float32.tflite").write_bytes(b"cached by name alone")
    key = {"model": "m", "code": "c", "versions": {"onnx2tf": "1"}, "key": "a" * 64}
    made = export_folder(root, key, converting=True)
    assert made == root / ("a" * 16) and json.loads((made / "key.json").read_text()) == key
    assert not (root / "scrfd500m_128x160_float32.tflite").exists()  # the old, unkeyed cache
    # another converter version: another folder, and the newest is what the other environment takes
    time.sleep(0.01)
    newer = export_folder(root, {**key, "versions": {"onnx2tf": "2"}, "key": "b" * 64}, True)
    assert newer != made
    os.utime(made, (time.time() - 60, time.time() - 60))
    inference_env = {**key, "versions": {"onnx2tf": None}, "key": "c" * 64}
    assert export_folder(root, inference_env, converting=False) == newer
    with pytest.raises(RuntimeError, match="make test"):  # changed code: nothing to reuse
        export_folder(root, {**inference_env, "code": "changed"}, converting=False)
    for n in range(conftest.KEPT_EXPORT_SETS + 2):  # old key folders are pruned
        export_folder(root, {**key, "key": f"{n}" * 64}, converting=True)
    assert len([p for p in root.iterdir() if p.is_dir()]) == conftest.KEPT_EXPORT_SETS + 1
