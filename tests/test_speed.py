"""speed_test.py and its library parts: model statistics, the timing run's outputs, the op
profile, memory probes, and bad input. No timing is asserted."""
from __future__ import annotations

import csv
import gc
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import REPO, SAMPLES, TEST_HW, run_main, run_script
from onnx import numpy_helper

from scrfdkit import timing
from scrfdkit.bench import backends, memory_probe, model_stats, speed
from scrfdkit.files import sha256_of

pytestmark = pytest.mark.inference  # runs without TensorFlow (CI: make test-inference)

# det_500m at 128x160: multiply-adds of its 60 convolutions (sum over convs of output elements x
# Cin/group x kh x kw), the same in ONNX and TFLite, 1/20 of the 640x640 count (FLOPs of a fully
# convolutional net scale with the pixels) and 1.1% under the original's 74.189 M FLOPs, which
# also counted the bias adds (2 x MACs + conv outputs = 74.128 M).
DET500M_MACS_128x160 = 36_677_280
ORIGINAL_FLOPS_128x160 = 74.189e6  # the original project's README
QUICK = ("--threads", "1", "--repeat", "1", "--iters", "1", "--no-rss", "--rss-command", "none")


def float_initializer_count(path: Path) -> int:
    model = onnx.load(str(path))
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer
               if numpy_helper.to_array(t).dtype.kind == "f")


# ----------------------------------------------------------------------------- model statistics
def test_onnx_statistics_counts(fixed_onnx):
    graph = model_stats.load_graph(fixed_onnx, None)
    stem = next(op for op in graph.ops if op[0] == "Conv")  # 3x3/2, 3 -> 16 channels
    assert model_stats.op_macs(graph, *stem) == (TEST_HW[0] // 2) * (TEST_HW[1] // 2) * 16 * 27
    info = model_stats.model_statistics(graph)
    assert info["input_shape"] == [1, 3, *TEST_HW]
    assert info["macs"] == DET500M_MACS_128x160 and info["flops"] == 2 * DET500M_MACS_128x160
    assert abs(info["flops"] / ORIGINAL_FLOPS_128x160 - 1) < 0.012  # see the report: bias adds
    assert info["params"] == float_initializer_count(fixed_onnx)
    assert info["op_histogram"]["Conv"] == 60
    assert set(info["weight_bytes"]) >= {"float32"}
    # The liveness peak holds at least the input and the stem's output, and less than all tensors.
    assert info["peak_activation_bytes"] >= 4 * (3 + 16 / 4) * TEST_HW[0] * TEST_HW[1]
    assert info["peak_activation_bytes"] < 50e6


def test_dynamic_onnx_flops_scale_with_pixels(det500m_onnx):
    """The dynamic model needs a run to see its shapes; FLOPs grow exactly with the pixel count."""
    small = model_stats.model_flops(det500m_onnx, TEST_HW)
    assert small == 2 * DET500M_MACS_128x160
    assert model_stats.model_flops(det500m_onnx, (2 * TEST_HW[0], 2 * TEST_HW[1])) == 4 * small


def test_model_flops_imports_without_tensorflow(det500m_onnx):
    code = ("import sys; from pathlib import Path; from scrfdkit.bench.model_stats import model_flops; "
            f"print(model_flops(Path({str(det500m_onnx)!r}), (128, 160))); "
            "assert 'tensorflow' not in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout.split()[-1]) == 2 * DET500M_MACS_128x160


def test_damaged_model_is_a_one_line_error(tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not a protobuf at all")
    with pytest.raises(model_stats.ModelStatsError, match="cannot read") as err:
        model_stats.model_flops(bad, TEST_HW)
    assert "\n" not in str(err.value)


def test_tflite_statistics_agree_with_onnx(tflite_float32, tflite_int8, fixed_onnx):
    reference = model_stats.model_statistics(model_stats.load_graph(fixed_onnx, None))
    for path in (tflite_float32, tflite_int8):
        info = model_stats.model_statistics(model_stats.load_graph(path, None))
        assert info["macs"] == reference["macs"]
        assert abs(info["params"] / reference["params"] - 1) < 1e-3, path  # int8 shares no biases
        coverage = model_stats.xnnpack_coverage(path, None)
        assert 0 < coverage["delegated"] <= coverage["ops"] == info["ops"]
        assert sum(coverage["fallback"].values()) == coverage["ops"] - coverage["delegated"]
        assert coverage["partitions"] >= 1
    int8 = model_stats.model_statistics(model_stats.load_graph(tflite_int8, None))
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
    alone = run_script("speed_test.py", "--analyze", bad, check=False)
    assert alone.returncode == 2 and alone.stderr.count("\n") == 1
    assert alone.stderr.startswith("error: no model could be analysed: cannot read ")
    assert "broken.onnx" in alone.stderr


# ----------------------------------------------------------------------------- timing run
def test_timing_run_writes_every_field(fixed_onnx, tflite_float32, tflite_int8, tmp_path):
    paths = {k: tmp_path / f"speed.{k}" for k in ("json", "csv", "md")}
    proc = run_script("speed_test.py", "--models", fixed_onnx, tflite_float32, tflite_int8,
                      "--threads", "1", "--repeat", "3", "--iters", "2",
                      "--image", SAMPLES / "crowd_selfie.jpg", "--rss-command", "none",
                      "--eval-results", tmp_path / "none", "--json", paths["json"],
                      "--csv", paths["csv"], "--markdown", paths["md"])
    result = json.loads(paths["json"].read_text())
    usable = [b for b, why in backends.gpu_status().items() if why is None]
    gpu_rows = [r for r in result["rows"] if r["backend"] in backends.GPU_BACKENDS]
    assert {r["backend"] for r in gpu_rows} <= set(usable)  # auto: a GPU backend only if usable
    rows = [r for r in result["rows"] if r not in gpu_rows]
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
        stages = sum(row[f"e2e_{s}_ms"] for s in ("read", "preprocess", "inference", "decode", "nms"))
        assert stages <= row["e2e_total_ms"] * 1.5  # medians of parts against the median whole
    assert {r["precision"] for r in rows} == {"float32", "int8"}
    names = {r["ratio"] for r in result["ratios"]}
    cpu_ratios = {"LiteRT float32 / ONNX Runtime float32", "LiteRT int8 / LiteRT float32"}
    assert names == cpu_ratios if not gpu_rows else cpu_ratios <= names
    assert result["model_statistics"] and "measurements" in result
    with open(paths["csv"]) as handle:
        assert len(list(csv.DictReader(handle))) == 3 + len(gpu_rows)
    table = paths["md"].read_text()
    assert "| Model | Input | Precision | Backend |" in table and "LiteRT float32 / ONNX" in table
    assert "no speed-accuracy plot" in proc.stdout
    if usable:  # a GPU machine names what it can use, and never claims to have none
        assert "GPU: none usable here" not in proc.stdout
        assert all(f"{b}: available" in proc.stdout for b in usable), proc.stdout
    else:
        assert "GPU: none usable here" in proc.stdout  # this machine has none; say so
    for text in (proc.stdout, table):
        assert "target" not in text.lower() and " met" not in text


def test_key_measurements_are_plain_numbers():
    """The README's numbers: ratio with its per-round range, pre+post share, RSS; no verdicts."""
    ratios = [{"family": "det_500m", "input": "640x640", "threads": 1,
               "ratio": "LiteRT float32 / ONNX Runtime float32", "value": 0.9, "round_min": 0.8,
               "round_max": 1.1, "cpu": {"value": 0.85}}]
    rows = [{"family": "det_500m", "input": "640x640", "precision": "float32", "threads": 1,
             "device": "CPU", "backend_label": "LiteRT", "prepost_ratio": 0.1, "e2e_candidates": 5000,
             "e2e_kept": 40, "e2e_preprocess_ms": 1.0, "e2e_decode_ms": 1.5, "e2e_nms_ms": 0.5,
             "e2e_inference_ms": 30.0, "e2e_read_ms": 4.0}]
    command = {"command": "python scrfd.py", "peak_rss": 111e6, "exit_code": 0,
               "tensorflow_imported": False}
    lines = speed.key_measurements(rows, ratios, command, Path("crowd.jpg"), 0.02)
    assert lines[0].endswith("0.90x (per round 0.80–1.10x; CPU time 0.85x)")
    assert "10.0% = (preprocess 1.0 + decode 1.5 + NMS 0.5 ms) / inference 30.0 ms" in lines[1]
    assert lines[2] == "peak RSS of `python scrfd.py`: 111 MB; TensorFlow imported: no"
    assert not any("target" in line or "met" in line.split() for line in lines)


def test_missing_backend_and_bad_model_leave_other_rows(tflite_float32, fixed_onnx, tmp_path,
                                                        monkeypatch):
    fake = tmp_path / "fake"  # an onnxruntime that is not installed
    (fake / "onnxruntime").mkdir(parents=True)
    (fake / "onnxruntime" / "__init__.py").write_text("raise ImportError('no onnxruntime here')\n")
    monkeypatch.setenv("PYTHONPATH", str(fake))
    bad = tmp_path / "broken.tflite"
    bad.write_bytes(b"\0" * 64)
    proc = run_script("speed_test.py", "--models", fixed_onnx, tflite_float32, bad, *QUICK,
                      "--backends", "litert,onnxruntime", "--json", tmp_path / "r.json",
                      "--image", SAMPLES / "friends.jpg")
    assert "ONNX Runtime is not installed" in proc.stdout
    assert "cannot analyse" in proc.stdout and "broken.tflite" in proc.stdout
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert [Path(r["model"]).name for r in rows if "median_ms" in r] == [tflite_float32.name]
    assert any(r["backend"] == "onnxruntime" and "not installed" in r["error"] for r in rows)


def test_gpu_backend_absent_is_reported_not_faked(tflite_float32, fixed_onnx, tmp_path):
    if backends.gpu_status()["onnxruntime-cuda"] is None:
        pytest.skip("this machine has a CUDA provider")
    proc = run_script("speed_test.py", "--models", fixed_onnx, tflite_float32, *QUICK,
                      "--backends", "onnxruntime,onnxruntime-cuda,litert-gpu,litert",
                      "--json", tmp_path / "r.json", "--image", SAMPLES / "friends.jpg")
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    gpu_rows = [r for r in rows if r["backend"] in backends.GPU_BACKENDS]
    assert gpu_rows and all("median_ms" not in r and r["error"] for r in gpu_rows)
    assert "skipped det_500m_128x160.onnx [onnxruntime-cuda" in proc.stdout
    assert {r["backend"] for r in rows if "median_ms" in r} == {"onnxruntime", "litert"}


def test_speed_accuracy_plot_from_results_json(tflite_float32, tmp_path):
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
    proc = run_script("speed_test.py", "--models", tflite_float32, *QUICK, "--json", tmp_path / "r.json",
                      "--eval-results", tmp_path / "eval", "--plot", plot)
    assert f"wrote the speed-accuracy plot {plot} (1 points)" in proc.stdout
    assert plot.stat().st_size > 1000 and "has no model path" in proc.stderr


# ----------------------------------------------------------------------------- bad options
@pytest.mark.parametrize("args, message", [
    (("--threads", "0"), "--threads"), (("--threads", "1,x"), "--threads"),
    (("--repeat", "0"), "--repeat"), (("--iters", "-2"), "--iters"),
    (("--score", "1.5"), "--score"), (("--backends", "tpu"), "unknown backend 'tpu'"),
])
def test_bad_options_are_one_line_errors(args, message, tflite_float32, tmp_path):
    """In-process through main(argv); test_damaged_model_alone_is_a_one_line_error runs the
    script as a process."""
    proc = run_main("speed_test.py", "--models", tflite_float32, "--json", tmp_path / "r.json",
                    *args)
    assert proc.returncode == 2 and message in proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")
    assert not (tmp_path / "r.json").exists()


def test_unreadable_image_and_unwritable_json_fail_before_timing(tflite_float32, tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo\n")
    for args, message in ((("--image", text), "cannot decode image"),
                          (("--json", "/proc/speed/r.json"), "not writable"),
                          (("--json", tmp_path), "is a folder"),
                          (("--markdown", tflite_float32), "would overwrite the input")):
        proc = run_main("speed_test.py", "--models", tflite_float32, *args)
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)
        assert proc.stderr.count("\n") == 1 and "timing" not in proc.stdout


def test_damaged_model_alone_is_a_one_line_error(tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x08\x01garbage")
    proc = run_script("speed_test.py", "--models", bad, *QUICK, "--json", tmp_path / "r.json",
                      check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("error: nothing could be timed: ") and "broken.onnx" in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr and not (tmp_path / "r.json").exists()


# ----------------------------------------------------------------------------- library parts
def test_interleaved_rounds_alternate_order_with_gc_off():
    seen, gc_enabled = [], []

    def block(name: str) -> None:
        seen.append(name)
        gc_enabled.append(gc.isenabled())

    timing.interleaved_rounds(["a", "b", "c"], 3, block)
    assert seen == ["a", "b", "c", "c", "b", "a", "a", "b", "c"]
    assert not any(gc_enabled) and gc.isenabled()


def test_latency_summary_and_paired_ratio():
    rounds = [[0.010, 0.012], [0.020, 0.022]]
    summary = timing.latency_summary(rounds)
    assert summary["samples"] == 4 and summary["rounds"] == 2
    assert summary["round_median_min_ms"] == pytest.approx(11.0)
    assert summary["round_median_max_ms"] == pytest.approx(21.0)
    assert summary["median_ms"] == pytest.approx(16.0)
    ratio = timing.paired_ratio([[2.0], [3.0]], [[1.0], [2.0]])
    assert ratio == {"value": pytest.approx(1.75), "round_min": 1.5, "round_max": 2.0}


def test_latency_percentiles_mean_and_throughput_of_known_timings():
    """1, 2, ..., 101 ms in three rounds of unequal length, shuffled: the p-th percentile of
    101 evenly spaced samples is sample p + 1 exactly (no interpolation question), the mean
    51 ms, and throughput one image per mean latency."""
    samples = np.random.default_rng(7).permutation(np.arange(1, 102)) / 1e3
    rounds = [samples[:30], samples[30:80], samples[80:]]
    summary = timing.latency_summary(rounds)
    assert summary["samples"] == 101 and summary["rounds"] == 3
    assert summary["median_ms"] == pytest.approx(51.0)
    assert summary["p90_ms"] == pytest.approx(91.0)
    assert summary["p99_ms"] == pytest.approx(100.0)
    assert summary["mean_ms"] == pytest.approx(51.0)
    assert (summary["min_ms"], summary["max_ms"]) == pytest.approx((1.0, 101.0))
    assert summary["throughput_fps"] == pytest.approx(1000 / 51)
    medians = sorted(float(np.median(r)) * 1e3 for r in rounds)
    assert (summary["round_median_min_ms"], summary["round_median_max_ms"]) == pytest.approx(
        (medians[0], medians[-1]))


def test_command_memory_sees_tensorflow(tmp_path, monkeypatch):
    """The scrfd.py check: peak RSS of any command and whether it imported TensorFlow."""
    clean = memory_probe.command_memory(f"{sys.executable} -c 'import numpy'")
    assert clean["exit_code"] == 0 and not clean["tensorflow_imported"]
    assert 5e6 < clean["peak_rss"] < 150e6  # the child alone, not this (large) test process
    (tmp_path / "tensorflow").mkdir()
    (tmp_path / "tensorflow" / "__init__.py").write_text("")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    dirty = memory_probe.command_memory(f"{sys.executable} -c 'import tensorflow'")
    assert dirty["tensorflow_imported"]


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
