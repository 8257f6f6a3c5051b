"""speed_test.py: graph analysis numbers, the timing run's outputs, and bad input. No timing is asserted."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from conftest import SAMPLES, TEST_HW, run_script
import speed_test

# det_500m at 128x160: multiply-adds of its 60 convolutions (sum over convs of output elements x
# Cin/group x kh x kw), the same in ONNX and TFLite, 1/20 of the 640x640 count (FLOPs of a fully
# convolutional net scale with the pixels) and 1.1% under the original's 74.189 M FLOPs, which
# also counted the bias adds (2 x MACs + conv outputs = 74.128 M).
DET500M_MACS_128x160 = 36_677_280
ORIGINAL_FLOPS_128x160 = 74.189e6  # the original project's README


def float_initializer_count(path: Path) -> int:
    model = onnx.load(str(path))
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer
               if numpy_helper.to_array(t).dtype.kind == "f")


def test_onnx_analysis_counts(fixed_onnx):
    graph = speed_test.load_graph(fixed_onnx, None)
    stem = next(op for op in graph.ops if op[0] == "Conv")  # 3x3/2, 3 -> 16 channels
    assert speed_test.op_macs(graph, *stem) == (TEST_HW[0] // 2) * (TEST_HW[1] // 2) * 16 * 27
    info = speed_test.analyze(graph)
    assert info["input_shape"] == [1, 3, *TEST_HW]
    assert info["macs"] == DET500M_MACS_128x160 and info["flops"] == 2 * DET500M_MACS_128x160
    assert abs(info["flops"] / ORIGINAL_FLOPS_128x160 - 1) < 0.012  # see the report: bias adds
    assert info["params"] == float_initializer_count(fixed_onnx)
    assert info["op_histogram"]["Conv"] == 60
    assert set(info["weight_bytes"]) >= {"float32"}
    # The liveness peak holds at least the input and the stem's output, and less than all tensors.
    assert info["peak_activation_bytes"] >= 4 * (3 + 16 / 4) * TEST_HW[0] * TEST_HW[1]
    assert info["peak_activation_bytes"] < 50e6


def test_dynamic_onnx_scales_with_pixels(det500m_onnx):
    """The dynamic model needs a run to see its shapes; MACs grow exactly with the pixel count."""
    small = speed_test.analyze(speed_test.load_graph(det500m_onnx, TEST_HW))
    large = speed_test.analyze(speed_test.load_graph(det500m_onnx, (2 * TEST_HW[0], 2 * TEST_HW[1])))
    assert small["macs"] == DET500M_MACS_128x160 and large["macs"] == 4 * small["macs"]


def test_tflite_analysis_agrees_with_onnx(tflite_float32, tflite_int8, fixed_onnx):
    reference = speed_test.analyze(speed_test.load_graph(fixed_onnx, None))
    for path in (tflite_float32, tflite_int8):
        info = speed_test.analyze(speed_test.load_graph(path, None))
        assert info["macs"] == reference["macs"]
        assert abs(info["params"] / reference["params"] - 1) < 1e-3, path  # int8 shares no biases
        coverage = speed_test.xnnpack_coverage(path, None)
        assert 0 < coverage["delegated"] <= coverage["ops"] == info["ops"]
        assert sum(coverage["fallback"].values()) == coverage["ops"] - coverage["delegated"]
        assert coverage["partitions"] >= 1
    int8 = speed_test.analyze(speed_test.load_graph(tflite_int8, None))
    assert "int8" in int8["weight_bytes"] and int8["file_bytes"] < reference["file_bytes"]


def test_analyze_cli_prints_flops_and_memory(fixed_onnx, tflite_float32, tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not a protobuf at all")
    proc = run_script("speed_test.py", "--analyze", fixed_onnx, bad, tflite_float32)
    out = proc.stdout
    assert "FLOPs = 2 x MACs    73.355 M" in out and "multiply-adds       36.677 M" in out
    assert "peak activations" in out and "measured            fresh process" in out
    assert "XNNPACK             takes" in out
    assert "cannot analyse: cannot read" in out and str(bad) in out  # and the others still ran
    assert out.count("peak RSS") == 2


def test_timing_run_writes_every_field(fixed_onnx, tflite_float32, tflite_int8, tmp_path):
    paths = {k: tmp_path / f"speed.{k}" for k in ("json", "csv", "md")}
    proc = run_script("speed_test.py", "--models", fixed_onnx, tflite_float32, tflite_int8,
                      "--threads", "1", "--repeat", "3", "--iters", "2",
                      "--image", SAMPLES / "crowd_selfie.jpg", "--rss-command", "none",
                      "--eval-results", tmp_path / "none", "--json", paths["json"],
                      "--csv", paths["csv"], "--markdown", paths["md"])
    result = json.loads(paths["json"].read_text())
    rows = result["rows"]
    assert {r["backend"] for r in rows} == {"onnxruntime", "litert"} and len(rows) == 3
    required = ["median_ms", "p90_ms", "p99_ms", "round_median_min_ms", "round_median_max_ms",
                "cpu_median_ms", "throughput_fps", "e2e_read_ms", "e2e_preprocess_ms",
                "e2e_inference_ms", "e2e_decode_ms", "e2e_nms_ms", "e2e_total_ms", "prepost_ratio",
                "peak_rss_mb", "flops", "params", "env_cpu", "env_logical_cores", "env_versions"]
    for row in rows:
        missing = [k for k in required if row.get(k) is None]
        assert not missing, (row["model"], missing)
        assert row["samples"] == 6 and row["rounds"] == 3 and row["device"] == "CPU"
        assert row["tensorflow_imported"] is False
        assert "onnxruntime" in row["env_versions"] and "ai-edge-litert" in row["env_versions"]
    assert {r["precision"] for r in rows} == {"float32", "int8"}
    names = {r["ratio"] for r in result["ratios"]}
    assert names == {"LiteRT float32 / ONNX Runtime float32", "LiteRT int8 / LiteRT float32"}
    with open(paths["csv"]) as handle:
        assert len(list(csv.DictReader(handle))) == 3
    table = paths["md"].read_text()
    assert "| Model | Input | Precision | Backend |" in table and "LiteRT float32 / ONNX" in table
    assert "no speed-accuracy plot" in proc.stdout
    assert "GPU: none usable here" in proc.stdout  # this machine has none; say so


def test_missing_backend_and_bad_model_leave_other_rows(tflite_float32, fixed_onnx, tmp_path,
                                                        monkeypatch):
    fake = tmp_path / "fake"  # an onnxruntime that is not installed
    (fake / "onnxruntime").mkdir(parents=True)
    (fake / "onnxruntime" / "__init__.py").write_text("raise ImportError('no onnxruntime here')\n")
    monkeypatch.setenv("PYTHONPATH", str(fake))
    bad = tmp_path / "broken.tflite"
    bad.write_bytes(b"\0" * 64)
    proc = run_script("speed_test.py", "--models", fixed_onnx, tflite_float32, bad, "--threads", "1",
                      "--backends", "litert,onnxruntime", "--repeat", "1", "--iters", "1",
                      "--no-rss", "--rss-command", "none", "--json", tmp_path / "r.json",
                      "--image", SAMPLES / "friends.jpg")
    assert "ONNX Runtime is not installed" in proc.stdout
    assert "cannot analyse" in proc.stdout and "broken.tflite" in proc.stdout
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert [Path(r["model"]).name for r in rows if "median_ms" in r] == [tflite_float32.name]
    assert any(r["backend"] == "onnxruntime" and "not installed" in r["error"] for r in rows)


def test_gpu_backend_absent_is_reported_not_faked(tflite_float32, fixed_onnx, tmp_path):
    proc = run_script("speed_test.py", "--models", fixed_onnx, tflite_float32, "--threads", "1",
                      "--backends", "onnxruntime,onnxruntime-cuda,litert-gpu,litert",
                      "--repeat", "1", "--iters", "1", "--no-rss", "--rss-command", "none",
                      "--json", tmp_path / "r.json", "--image", SAMPLES / "friends.jpg")
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    gpu_rows = [r for r in rows if r["backend"] in speed_test.GPU_BACKENDS]
    if speed_test.gpu_status()["onnxruntime-cuda"] is None:
        pytest.skip("this machine has a CUDA provider")
    assert gpu_rows and all("median_ms" not in r and r["error"] for r in gpu_rows)
    assert "skipped det_500m_128x160.onnx [onnxruntime-cuda" in proc.stdout
    assert {r["backend"] for r in rows if "median_ms" in r} == {"onnxruntime", "litert"}


def test_speed_accuracy_plot_from_results_json(tflite_float32, tmp_path):
    from detector import sha256_of

    for name, digest in (("m", sha256_of(tflite_float32)), ("other_export", "0" * 64)):
        evaluation = tmp_path / "eval" / name  # same model, size and precision; only m is this file
        evaluation.mkdir(parents=True)
        (evaluation / "results.json").write_text(json.dumps({
            "easy": 0.8, "medium": 0.7, "hard": 0.4, "images": 10, "protocol": "official",
            "model": {"path": str(tflite_float32), "precision": "float32", "sha256": digest},
            "settings": {"input_size": list(TEST_HW)}}))
    (tmp_path / "eval" / "junk").mkdir()
    (tmp_path / "eval" / "junk" / "results.json").write_text("{}")
    plot = tmp_path / "plot.png"
    proc = run_script("speed_test.py", "--models", tflite_float32, "--threads", "1", "--repeat", "1",
                      "--iters", "1", "--no-rss", "--rss-command", "none", "--json", tmp_path / "r.json",
                      "--eval-results", tmp_path / "eval", "--plot", plot)
    assert f"wrote the speed-accuracy plot {plot} (1 points)" in proc.stdout
    assert plot.stat().st_size > 1000 and "has no model path" in proc.stderr


def test_command_memory_sees_tensorflow(tmp_path, monkeypatch):
    """The scrfd.py check: peak RSS of any command and whether it imported TensorFlow."""
    clean = speed_test.command_memory(f"{sys.executable} -c 'import numpy'")
    assert clean["exit_code"] == 0 and not clean["tensorflow_imported"]
    assert 5e6 < clean["peak_rss"] < 150e6  # the child alone, not this (large) test process
    (tmp_path / "tensorflow").mkdir()
    (tmp_path / "tensorflow" / "__init__.py").write_text("")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    dirty = speed_test.command_memory(f"{sys.executable} -c 'import tensorflow'")
    assert dirty["tensorflow_imported"]


def test_pareto_front_marks_undominated_detectors():
    rows = [{"detector": "fast", "median_ms": 5.0, "hard": 20.0},
            {"detector": "slow_bad", "median_ms": 50.0, "hard": 15.0},
            {"detector": "mid", "median_ms": 20.0, "hard": 60.0},
            {"detector": "slow_good", "median_ms": 90.0, "hard": 75.0},
            {"detector": "tie_slower", "median_ms": 25.0, "hard": 60.0},
            {"detector": "no_eval", "median_ms": 1.0, "hard": None}]
    speed_test.mark_pareto(rows)
    front = {r["detector"]: r.get("pareto") for r in rows}
    assert front == {"fast": True, "slow_bad": False, "mid": True, "slow_good": True,
                     "tie_slower": False, "no_eval": None}
    assert rows[1]["beaten_by"] in ("fast", "mid") and rows[4]["beaten_by"] == "mid"


def test_profile_ops_times_every_op_by_kind(tflite_float32, tflite_int8, fixed_onnx, tmp_path):
    """--profile-ops: each op alone, summed by kind; both exports have the same convolutions,
    the int8 one adds the 9 DEQUANTIZE ops in front of its float outputs."""
    out = tmp_path / "ops.md"
    proc = run_script("speed_test.py", "--profile-ops", tflite_float32, tflite_int8, "--threads", "1",
                      "--repeat", "1", "--iters", "2", "--markdown", out)
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")[1:] for line in out.read_text().splitlines()
            if line.startswith("| ") and not line.startswith("| Op") and not line.startswith("| ---")}
    assert rows["CONV_2D 1x1"][:2] == ["23 x, " + rows["CONV_2D 1x1"][0].split(", ")[1],
                                       "23 x, " + rows["CONV_2D 1x1"][1].split(", ")[1]]
    assert rows["DEPTHWISE_CONV_2D"][0].startswith("20 x") and rows["DEPTHWISE_CONV_2D"][1].startswith("20 x")
    assert rows["DEQUANTIZE"][0].startswith("0 x") and rows["DEQUANTIZE"][1].startswith("9 x")
    total = rows["all ops, one by one"]
    assert total[0].startswith("85 x") and total[1].startswith("94 x") and float(total[2].strip(" |")) > 0
    assert f"wrote {out}" in proc.stdout
    bad = run_script("speed_test.py", "--profile-ops", fixed_onnx, check=False)
    assert bad.returncode == 2 and "takes .tflite files" in bad.stderr
