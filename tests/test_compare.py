"""compare_detectors.py: peers and SCRFD exports timed side by side, APs joined from
evaluate_widerface.py results, the Pareto front, the settings table, the peer list, and bad
input. Small settings (one thread, one photo, two rounds); no timing is asserted."""
from __future__ import annotations

import csv
import json
import re

import pytest
from conftest import run_main, run_script, run_script_without

from scrfdkit.compare import comparison, peers
from scrfdkit.files import sha256_of

pytestmark = pytest.mark.inference  # runs without TensorFlow (CI: make test-inference)

QUICK = ("--threads", "1", "--repeat", "2", "--no-rss")


@pytest.fixture(scope="module")
def yunet_only(models_dir, tmp_path_factory):
    """A peers folder holding YuNet's model alone: seed_tflite's is missing, so it is skipped."""
    status = dict(peers.available_peers(models_dir / "peers"))
    if status["yunet"]:
        pytest.skip(status["yunet"])
    folder = tmp_path_factory.mktemp("peers")
    model = peers.model_path("yunet", models_dir / "peers")
    (folder / model.name).symlink_to(model)
    return folder


def write_results(folder, name: str, model: dict, hard: float) -> None:
    (folder / name).mkdir(parents=True)
    (folder / name / "results.json").write_text(json.dumps({
        "easy": 0.5, "medium": 0.4, "hard": hard, "model": model,
        "rough": {"rough-iou": {"32px": {"ap": 0.9}}}}))


def test_comparison_table_joins_aps_and_marks_the_front(tflite_float32, yunet_only, samples_dir,
                                                        tmp_path):
    """Peers by name, exports by sha256; a peer whose model is missing is skipped, the rest run."""
    evals = tmp_path / "eval"
    write_results(evals, "yunet", {"name": "yunet", "sha256": "x"}, 0.76)
    write_results(evals, "ours", {"name": tflite_float32.name, "sha256": sha256_of(tflite_float32)}, 0.10)
    out = tmp_path / "out"
    proc = run_script("compare_detectors.py", "--detectors", "yunet", "seed_tflite",
                      "--models", tflite_float32, "--image", samples_dir / "friends.jpg", *QUICK,
                      "--peers-dir", yunet_only, "--eval-results", f"{evals}/**/results.json",
                      "--out", out)
    assert "skipped seed_tflite:" in proc.stdout and "model not found" in proc.stdout
    table = (out / "compare.md").read_text()
    assert table.startswith("| Detector | Input | Easy | Medium | Hard | Rough AP | Median ms |")
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()
            if line.startswith(f"| {tflite_float32.stem} ") or line.startswith("| yunet ")}
    assert set(rows) == {"yunet", tflite_float32.stem}
    assert "| 76.00 | 90.00 |" in rows["yunet"] and "| 10.00 | 90.00 |" in rows[tflite_float32.stem]
    assert rows[tflite_float32.stem].endswith("| yes |")  # the fastest is always on the front
    with open(out / "compare.csv") as handle:
        csv_rows = list(csv.DictReader(handle))
    measured = {row["detector"]: float(row["median_ms"]) for row in csv_rows}
    assert set(measured) == {"yunet", tflite_float32.stem} and min(measured.values()) > 0
    assert {row["precision"] for row in csv_rows if row["kind"] == "scrfd"} == {"float32"}
    assert (out / "compare.png").stat().st_size > 1000
    assert f"wrote {out / 'compare.md'} and {out / 'compare.csv'}" in proc.stdout


def test_peak_rss_of_each_detector(tflite_float32, samples_dir, tmp_path):
    """Without --no-rss every detector gets the peak RSS of a fresh process running it."""
    from scrfdkit.compare.peers import available_peers

    usable = [name for name, reason in available_peers() if reason is None]
    peer = next((name for name in ("haar", "yunet") if name in usable), None)
    if peer is None:  # OpenCV 5 ships no Haar cascades; YuNet needs its model file
        pytest.skip("neither the Haar cascade nor the YuNet model is available here")
    out = tmp_path / "out"
    run_script("compare_detectors.py", "--detectors", peer, "--models", tflite_float32,
               "--image", samples_dir / "friends.jpg", "--threads", "1", "--repeat", "1",
               "--eval-results", tmp_path / "none", "--out", out)
    with open(out / "compare.csv") as handle:
        peaks = {row["detector"]: row["peak_rss_mb"] for row in csv.DictReader(handle)}
    assert set(peaks) == {peer, tflite_float32.stem}
    assert all(20 < float(mb) < 1000 for mb in peaks.values()), peaks
    assert not (out / "compare.png").exists()  # no AP, nothing to plot


def test_pareto_front_marks_undominated_detectors():
    rows = [{"detector": "fast", "median_ms": 5.0, "hard": 20.0},
            {"detector": "slow_bad", "median_ms": 50.0, "hard": 15.0},
            {"detector": "mid", "median_ms": 20.0, "hard": 60.0},
            {"detector": "slow_good", "median_ms": 90.0, "hard": 75.0},
            {"detector": "tie_slower", "median_ms": 25.0, "hard": 60.0},
            {"detector": "no_eval", "median_ms": 1.0, "hard": None}]
    comparison.mark_pareto(rows)
    front = {r["detector"]: r.get("pareto") for r in rows}
    assert front == {"fast": True, "slow_bad": False, "mid": True, "slow_good": True,
                     "tie_slower": False, "no_eval": None}
    assert rows[1]["beaten_by"] in ("fast", "mid") and rows[4]["beaten_by"] == "mid"


def test_settings_table_lists_every_peer():
    out = run_script("compare_detectors.py", "--settings").stdout.splitlines()
    rows = [line.split(" | ") for line in out[2:]]
    assert [r[0].strip("| ") for r in rows] == list(peers.PEERS)
    assert all(len(r) == 7 for r in rows) and rows[0][2] == "128x128"


def test_list_says_which_peers_run_and_times_them(yunet_only, samples_dir):
    proc = run_script("compare_detectors.py", "--list", "--peers-dir", yunet_only, "--image",
                      samples_dir / "friends.jpg", "--repeat", "1", "--threads", "1")
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if line.strip()}
    assert set(lines) == set(peers.PEERS)
    assert "skipped: model not found" in lines["seed_tflite"]
    assert "friends.jpg: 6 faces" in lines["yunet"] and lines["yunet"].endswith(" ms")


@pytest.mark.parametrize("args, message", [
    (("--detectors", "nope"), "unknown detector 'nope'"),
    (("--threads", "0"), "--threads"),
    (("--repeat", "-1"), "--repeat"),
    (("--image", "/nonexistent/photo.jpg"), "no such file or folder"),
    (("--evaluate", "--images-list", "/nonexistent/list.txt"), "images list not found"),
])
def test_bad_options_are_one_line_errors(args, message, tmp_path):
    proc = run_main("compare_detectors.py", *args, "--no-rss", "--out", tmp_path / "out")
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and not (tmp_path / "out").exists()


def test_unreadable_photo_and_file_as_out_folder(tflite_float32, tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo\n")
    proc = run_script("compare_detectors.py", "--detectors", "haar", "--models", tflite_float32,
                      "--image", text, *QUICK, "--out", tmp_path / "out", check=False)
    assert proc.returncode == 2 and "no readable photo" in proc.stderr
    assert "skipped photo: cannot decode image" in proc.stdout
    proc = run_script("compare_detectors.py", "--detectors", "haar", "--out", text, check=False)
    assert proc.returncode == 2 and "is a file" in proc.stderr and text.read_text() == "not a photo\n"


def test_without_ray_a_ray_run_is_a_one_line_error(tmp_path):
    """--ray where Ray is not installed (here: hidden from the import system): refused before
    any detector is loaded."""
    out = tmp_path / "out"
    proc = run_script_without("ray", "compare_detectors.py", "--detectors", "haar", "--ray",
                              "--out", out)
    assert proc.returncode == 2, proc.stderr
    assert re.fullmatch(r"error: --ray needs (ray|pyarrow): python -m pip install -r "
                        r"requirements-scale.txt\n", proc.stderr), proc.stderr
    assert not out.exists()
