"""evaluate_widerface.py --grid --ray and compare_detectors.py --ray: each evaluation a Ray
task, and the tables those of the run here.

Every --ray run joins one local cluster the module starts (conftest's ray_cluster: two CPUs, no
dashboard), so a cluster already running is left alone.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import run_script

pytest.importorskip("ray", reason="Ray is not installed: python -m pip install -r "
                                  "requirements-scale.txt")
from scrfdkit.compare import peers  # noqa: E402
from scrfdkit.wider.evaluation import TASK_LOG  # noqa: E402

pytestmark = pytest.mark.inference
RAY_TIMEOUT = 300  # seconds for a --ray run, Ray's start-up included, on a busy two-core machine
SUBSETS = ("easy", "medium", "hard")


def first_images(wider_dir: Path, folder: Path, count: int) -> Path:
    listing = folder / "images.txt"
    names = (wider_dir / "dev_images.txt").read_text().split()[:count]
    listing.write_text("\n".join(names) + "\n")
    return listing


def predictions(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in out.glob("*/predictions/*/*.txt")}


def test_grid_on_ray_writes_the_tables_of_a_run_here(ray_cluster, det500m_onnx, wider_dir,
                                                     tmp_path):
    listing = first_images(wider_dir, tmp_path, 20)
    common = ("--grid", "--model", det500m_onnx, "--size", "256,256", "--size", "320,320",
              "--wider", wider_dir, "--images-list", listing, "--protocol", "rough",
              "--threads", "1")
    here, on_ray = tmp_path / "here", tmp_path / "ray"
    run_script("evaluate_widerface.py", *common, "--out", here)
    proc = run_script("evaluate_widerface.py", *common, "--out", on_ray, "--ray", ray_cluster,
                      timeout=RAY_TIMEOUT)

    for table in ("metrics.md", "metrics.csv"):
        assert (on_ray / table).read_bytes() == (here / table).read_bytes()
    assert "| det_500m | 256x256 | float32 |" in (on_ray / "metrics.md").read_text()
    assert predictions(on_ray) == predictions(here) and len(predictions(here)) == 40
    done = [line for line in proc.stdout.splitlines() if line.startswith("done ")]
    assert len(done) == 2 and {line.split(": ")[1] for line in done} == {
        "det_500m.onnx at 256x256", "det_500m.onnx at 320x320"}
    assert "images to evaluate" not in proc.stdout  # the tasks' own output is in their logs
    for size in ("256x256", "320x320"):
        ray_results = json.loads((on_ray / f"det_500m_{size}" / "results.json").read_text())
        results = json.loads((here / f"det_500m_{size}" / "results.json").read_text())
        assert {k: ray_results[k] for k in (*SUBSETS, "faces", "rough", "model")} == \
            {k: results[k] for k in (*SUBSETS, "faces", "rough", "model")}
        log = (on_ray / f"det_500m_{size}" / TASK_LOG).read_text()
        assert "20 images to evaluate" in log and "wrote " in log


def test_a_failed_task_is_reported_as_a_run_here_reports_it(ray_cluster, det500m_onnx, wider_dir,
                                                            tmp_path):
    """A WIDER FACE folder whose photos are all damaged: the evaluation itself fails."""
    damaged = tmp_path / "wider"
    damaged.mkdir()
    for folder in ("ground_truth", "wider_face_split"):
        (damaged / folder).symlink_to(wider_dir / folder)
    names = (wider_dir / "dev_images.txt").read_text().split()[:2]
    for name in names:
        photo = damaged / "WIDER_val" / "images" / name
        photo.parent.mkdir(parents=True, exist_ok=True)
        photo.write_bytes(b"\xff\xd8\xff\xe0 not a photo")
    common = ("--grid", "--model", det500m_onnx, "--size", "128,128", "--size", "160,160",
              "--wider", damaged, "--threads", "1")
    here = run_script("evaluate_widerface.py", *common, "--out", tmp_path / "here", check=False)
    on_ray = run_script("evaluate_widerface.py", *common, "--out", tmp_path / "ray",
                        "--ray", ray_cluster, check=False, timeout=RAY_TIMEOUT)
    assert here.returncode == on_ray.returncode == 2
    assert here.stderr.strip().splitlines()[-1] == "error: no image could be read"
    assert on_ray.stderr.strip().splitlines()[-1] == "error: no image could be read"
    assert "ray: cluster at" in on_ray.stdout and "Traceback" not in on_ray.stderr
    logs = [log.read_text() for log in (tmp_path / "ray").glob(f"*/{TASK_LOG}")]
    assert any("skipped: cannot" in log for log in logs)  # the failing task's own warnings
    assert not (tmp_path / "ray" / "metrics.md").exists()


def ap_columns(out: Path) -> dict[str, tuple]:
    with open(out / "compare.csv") as handle:
        return {row["detector"]: tuple(row[k] for k in (*SUBSETS, "rough_ap"))
                for row in csv.DictReader(handle)}


def test_compare_evaluates_what_is_missing_on_ray(ray_cluster, models_dir, det500m_onnx,
                                                  wider_dir, samples_dir, tmp_path):
    """`make compare`'s way (evaluate_widerface.py runs, then compare_detectors.py) and
    compare_detectors.py --ray, which evaluates the two detectors as Ray tasks: same APs."""
    if reason := dict(peers.available_peers(models_dir / "peers"))["yunet"]:
        pytest.skip(reason)
    listing = first_images(wider_dir, tmp_path, 6)
    evaluated = tmp_path / "evaluated"
    common = ("--wider", wider_dir, "--images-list", listing, "--protocol", "rough",
              "--threads", "1")
    run_script("evaluate_widerface.py", "--detector", "yunet", *common, "--out",
               evaluated / "yunet")
    run_script("evaluate_widerface.py", "--grid", "--model", det500m_onnx, *common, "--out",
               evaluated / "scrfd")
    compare = ("--detectors", "yunet", "--models", det500m_onnx, "--peers-dir",
               models_dir / "peers", "--image", samples_dir / "friends.jpg", "--threads", "1",
               "--repeat", "1", "--no-rss")
    run_script("compare_detectors.py", *compare, "--eval-results",
               f"{evaluated}/**/results.json", "--out", tmp_path / "sequential")
    proc = run_script("compare_detectors.py", *compare, "--eval-results", tmp_path / "none",
                      "--wider", wider_dir, "--images-list", listing, "--ray", ray_cluster,
                      "--out", tmp_path / "ray", timeout=RAY_TIMEOUT)

    columns = ap_columns(tmp_path / "ray")
    assert columns == ap_columns(tmp_path / "sequential")
    assert set(columns) == {"yunet", "det_500m"} and all(all(v) for v in columns.values())
    assert "evaluating 2 detector(s) on WIDER FACE val as Ray tasks" in proc.stdout
    assert proc.stdout.index("done 2/2") < proc.stdout.index("timing 2 detectors")
    assert (tmp_path / "ray" / "yunet" / "results.json").is_file()
    assert (tmp_path / "ray" / "scrfd" / "det_500m_640x640" / "results.json").is_file()
