"""Users' own habits (issue 27): a photo archive processed folder by folder into one output
folder, two runs at once into it, result files a second run would replace, lists given as
pipes, --help of every script, and messages that give the real reason.

Each case runs a script as a user would (in this process through its cli() contract, or as a
process where two must run at once) on small copies of the sample photos, with the dynamic
det_500m ONNX model at 128x160, and judges the files left behind: every photo's JSON line
present, the earlier ones byte for byte where this run did not touch them.
"""
from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import MODELS, REPO, SAMPLES, run_main

SIZE = "128,160"
SCRIPTS = sorted(p.name for p in REPO.glob("*.py"))  # every top-level script


def scrfd(*args, cwd: Path | None = None):
    return run_main("scrfd.py", "--model", MODELS / "det_500m.onnx", "--size", SIZE, *args,
                    cwd=cwd)


def photo(path: Path, flip: int | None = None, scale: float = 1 / 3) -> Path:
    """friends.jpg (six faces) made small, optionally flipped: each copy its own photo."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = cv2.imread(str(SAMPLES / "friends.jpg"))
    image = cv2.resize(image, None, fx=scale, fy=scale)
    if flip is not None:
        image = cv2.flip(image, flip)
    assert cv2.imwrite(str(path), image)
    return path


def lines_by_path(path: Path) -> dict[str, dict]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    by_path = {record["path"]: record for record in records}
    assert len(by_path) == len(records), "a photo has two lines"
    return by_path


def help_text(script: str) -> str:
    return " ".join(run_main(script, "--help").stdout.split())


# ----------------------------------------------------------------------------- faces.jsonl
def test_runs_into_one_folder_keep_every_photos_line(tmp_path):
    for name in ("p1", "p2"):
        photo(tmp_path / "a" / f"{name}.jpg")
    photo(tmp_path / "b" / "q1.jpg", flip=1)
    assert scrfd("--image", "a", "--out", "o", cwd=tmp_path).returncode == 0
    first = lines_by_path(tmp_path / "o" / "faces.jsonl")
    assert scrfd("--image", "b", "--out", "o", cwd=tmp_path).returncode == 0
    merged = lines_by_path(tmp_path / "o" / "faces.jsonl")
    assert list(merged) == ["a/p1.jpg", "a/p2.jpg", "b/q1.jpg"]  # the first run's lines kept
    assert {k: merged[k] for k in first} == first
    assert len(merged["b/q1.jpg"]["faces"]) >= 4
    # the same photo again: this run's line replaces its earlier one, the others stay
    run = scrfd("--image", "a/p1.jpg", "--out", "o", "--max-faces", "1", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    again = lines_by_path(tmp_path / "o" / "faces.jsonl")
    assert list(again) == ["a/p1.jpg", "a/p2.jpg", "b/q1.jpg"]
    assert len(again["a/p1.jpg"]["faces"]) == 1 and again["a/p2.jpg"] == first["a/p2.jpg"]
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        "faces.jsonl", "p1.jpg", "p2.jpg", "q1.jpg"]  # no lock or temporary file left
    assert "merged into, never replaced" in help_text("scrfd.py")


def test_a_photo_unreadable_in_a_rerun_keeps_its_earlier_good_line(tmp_path):
    photo(tmp_path / "a" / "p1.jpg")
    photo(tmp_path / "a" / "p2.jpg", flip=0)
    assert scrfd("--image", "a", "--out", "o", cwd=tmp_path).returncode == 0
    first = lines_by_path(tmp_path / "o" / "faces.jsonl")
    annotated = (tmp_path / "o" / "p2.jpg").read_bytes()
    (tmp_path / "a" / "p2.jpg").write_bytes(b"damaged since")
    run = scrfd("--image", "a", "--out", "o", "--max-faces", "1", cwd=tmp_path)
    assert run.returncode == 0 and "cannot decode image a/p2.jpg" in run.stderr, run.stderr
    kept = lines_by_path(tmp_path / "o" / "faces.jsonl")
    assert kept["a/p2.jpg"] == first["a/p2.jpg"]  # its result is still there: so is its line
    assert (tmp_path / "o" / "p2.jpg").read_bytes() == annotated
    assert len(kept["a/p1.jpg"]["faces"]) == 1


def test_a_photo_done_again_keeps_only_the_crops_its_new_line_names(tmp_path):
    photo(tmp_path / "a" / "p.jpg")
    photo(tmp_path / "b" / "q.jpg", flip=1)
    for folder in ("a", "b"):
        run = scrfd("--image", folder, "--out", "o", "--crops", "c", cwd=tmp_path)
        assert run.returncode == 0, run.stderr
    crops = sorted(p.name for p in (tmp_path / "c").iterdir())
    assert sum(name.startswith("p_face") for name in crops) >= 4
    q_crops = {n: (tmp_path / "c" / n).read_bytes() for n in crops if n.startswith("q_")}
    run = scrfd("--image", "a", "--out", "o", "--crops", "c", "--max-faces", "2", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    records = lines_by_path(tmp_path / "o" / "faces.jsonl")
    named = sorted(Path(face["crop"]).name for record in records.values()
                   for face in record["faces"])
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == named  # none stale, none lost
    assert [n for n in named if n.startswith("p_")] == ["p_face0.png", "p_face1.png"]
    assert {n: (tmp_path / "c" / n).read_bytes() for n in q_crops} == q_crops


def start(args: list, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "scrfd.py"), "--model",
                             str(MODELS / "det_500m.onnx"), "--size", SIZE, *map(str, args)],
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_runs_at_once_into_one_folder_keep_every_line_of_both(tmp_path):
    for folder, flip in (("a", None), ("b", 1)):
        for index in range(3):
            photo(tmp_path / folder / f"{folder}{index}.jpg", flip=flip, scale=0.3 + 0.02 * index)
    runs = [start(["--image", folder, "--out", "o"], tmp_path) for folder in ("a", "b")]
    for run in runs:
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
    records = lines_by_path(tmp_path / "o" / "faces.jsonl")
    assert sorted(records) == [f"{f}/{f}{i}.jpg" for f in "ab" for i in range(3)]
    assert all(record["faces"] for record in records.values())
    assert len(list((tmp_path / "o").glob("*.jpg"))) == 6


def test_a_run_ending_while_another_commits_merges_into_what_that_one_wrote(tmp_path):
    """Another run holds the folder's lock while it replaces faces.jsonl: this run waits for
    it, then reads the file again, so neither run's lines are lost."""
    photo(tmp_path / "a" / "a0.jpg")
    photo(tmp_path / "b" / "b0.jpg", flip=1)
    assert scrfd("--image", "a", "--out", "o", cwd=tmp_path).returncode == 0
    out = tmp_path / "o"
    other = json.dumps({"path": "c/c0.jpg", "size": {"width": 1, "height": 1}, "faces": []})
    lock = os.open(out, os.O_RDONLY)
    fcntl.flock(lock, fcntl.LOCK_EX)  # as the other run's commit holds it
    try:
        run = start(["--image", "b", "--out", "o"], tmp_path)
        deadline = time.monotonic() + 120
        while not list(out.glob(".b0.*")) and time.monotonic() < deadline:
            time.sleep(0.1)  # this run has staged its image: it is at its commit
        time.sleep(1.0)
        assert run.poll() is None, run.communicate()  # waiting for the lock
        earlier = (out / "faces.jsonl").read_text()
        (out / ".other").write_text(earlier + other + "\n")
        os.replace(out / ".other", out / "faces.jsonl")  # the other run's commit
    finally:
        os.close(lock)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 0, err
    assert sorted(lines_by_path(out / "faces.jsonl")) == ["a/a0.jpg", "b/b0.jpg", "c/c0.jpg"]


def test_a_run_terminated_while_it_waits_to_merge_leaves_the_folder_as_it_was(tmp_path):
    photo(tmp_path / "a" / "a0.jpg")
    photo(tmp_path / "b" / "b0.jpg", flip=1)
    assert scrfd("--image", "a", "--out", "o", cwd=tmp_path).returncode == 0
    out = tmp_path / "o"
    before = digests(out)
    lock = os.open(out, os.O_RDONLY)
    fcntl.flock(lock, fcntl.LOCK_EX)  # another run's commit
    try:
        run = start(["--image", "b", "--out", "o"], tmp_path)
        deadline = time.monotonic() + 120
        while not list(out.glob(".b0.*")) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        run.terminate()  # SIGTERM while it waits for the lock
        _, err = run.communicate(timeout=60)
    finally:
        os.close(lock)
    assert run.returncode == 143 and "terminated" in err, err
    assert digests(out) == before and sorted(p.name for p in out.iterdir()) == [
        "a0.jpg", "faces.jsonl"]  # nothing of the stopped run, no temporary file


def test_a_json_file_that_is_not_scrfds_is_refused_before_any_work(tmp_path):
    photo(tmp_path / "p.jpg")
    (tmp_path / "notes.txt").write_text("my own notes\n")
    run = scrfd("--image", "p.jpg", "--out", "o", "--json", "notes.txt", cwd=tmp_path)
    assert run.returncode == 2
    assert run.stderr.startswith("error: --json notes.txt: line 1 is not a JSON line of "
                                 "scrfd.py"), run.stderr
    assert (tmp_path / "notes.txt").read_text() == "my own notes\n"
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- --help
@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_explains_itself_with_help(script):
    run = run_main(script, "--help")
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("usage: ") and "--help" in run.stdout and not run.stderr


# ----------------------------------------------------------------------------- messages
@pytest.mark.parametrize("image, out", [("d", "d"), ("d/sub", "d"), ("d", "./d/")])
def test_an_input_folder_inside_the_output_folder_is_named_as_the_reason(tmp_path, image,
                                                                         out):
    photo(tmp_path / "d" / "sub" / "p.jpg")
    run = scrfd("--image", image, "--out", out, cwd=tmp_path)
    assert run.returncode == 2
    assert run.stderr.startswith(f"error: --image {image} is") and (
        f"the output folder --out {Path(out)}, which is never searched for photos" in run.stderr)
    assert "no images found" not in run.stderr
    run = scrfd("--image", "d", "--out", "o", "--crops", "d/crops", cwd=tmp_path)
    assert run.returncode == 0, run.stderr  # an output folder inside the input one is fine


def test_a_panorama_without_faces_in_one_pass_hints_at_tile(tmp_path):
    strip = np.hstack([cv2.imread(str(photo(tmp_path / "f.jpg", scale=1.0)))] * 8)
    cv2.imwrite(str(tmp_path / "pano.jpg"), strip)  # 4800x400: 30x the 160 px input's width
    cv2.imwrite(str(tmp_path / "flat.jpg"), np.full((300, 300, 3), 128, np.uint8))
    run = scrfd("--image", "pano.jpg", "flat.jpg", "--out", "o", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    notes = [line for line in run.stderr.splitlines() if line.startswith("note: ")]
    assert notes == ["note: pano.jpg: no face found in one pass of this 4800x400 photo, more "
                     "than 4x the model's 160x128 input on a side, where faces shrink with it; "
                     "--tile also looks at it at its own resolution"], run.stderr
    tiled = scrfd("--image", "pano.jpg", "--out", "t", "--tile", cwd=tmp_path)
    assert tiled.returncode == 0 and "note: " not in tiled.stderr
    faces = lines_by_path(tmp_path / "t" / "faces.jsonl")["pano.jpg"]["faces"]
    assert len(faces) >= 24  # the hint is right: tiles find the eight copies' faces


def hand_case(tmp_path: Path) -> tuple[Path, Path]:
    from test_evaluate import HAND, HAND_PREDS, make_wider, write_preds

    root = make_wider(tmp_path / "wider", HAND)
    write_preds(tmp_path / "preds", "0--Parade/0_Parade_a", HAND_PREDS)
    write_preds(tmp_path / "preds", "0--Parade/0_Parade_b", [])
    return root, tmp_path / "preds"


def test_images_list_may_be_a_pipe(tmp_path):
    """--images-list <(grep ...): a pipe, readable once, is not 'not found'."""
    root, preds = hand_case(tmp_path)
    reader, writer = os.pipe()
    threading.Thread(target=lambda: (os.write(writer, b"0--Parade/0_Parade_a.jpg\n"),
                                     os.close(writer)), daemon=True).start()
    try:
        run = run_main("evaluate_widerface.py", "--predictions", preds, "--wider", root,
                       "--images-list", f"/dev/fd/{reader}", "--out", tmp_path / "out")
    finally:
        os.close(reader)
    assert run.returncode == 0, run.stderr
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["images"] == 1  # the one image the pipe listed
    assert (tmp_path / "out" / "images.txt").read_text() == "0--Parade/0_Parade_a.jpg\n"
    for listing, fragment in ((tmp_path / "absent.txt", "images list not found"),
                              (tmp_path, "is a folder")):
        run = run_main("evaluate_widerface.py", "--predictions", preds, "--wider", root,
                       "--images-list", listing, "--out", tmp_path / "out2")
        assert run.returncode == 2 and fragment in run.stderr, run.stderr


SAID = {"GIF": "a", "PDF": "a", "Photoshop (PSD)": "a", "SVG": "an", "SVG/XML": "an",
        "HEIC": "a", "HEIF": "a", "AVIF": "an"}  # as each is read aloud


def test_format_names_take_the_article_they_are_read_with(tmp_path):
    from scrfdkit.files import UNREADABLE_SUFFIXES
    from scrfdkit.images import ISO_BRANDS, UNSUPPORTED_SIGNATURES, with_article

    names = {*UNREADABLE_SUFFIXES.values(), *ISO_BRANDS.values(), *UNSUPPORTED_SIGNATURES.values()}
    assert names <= set(SAID), names - set(SAID)  # a new format: say how it is read
    assert {name: with_article(name) for name in names} == {
        name: f"{SAID[name]} {name}" for name in names}
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.avif").write_bytes(b"\0\0\0\x1cftypavif" + bytes(20))
    photo(tmp_path / "in" / "p.jpg")
    (tmp_path / "y.jpg").write_bytes(b"\0\0\0\x1cftypavif" + bytes(20))  # named .jpg
    run = scrfd("--image", "in", "y.jpg", "--out", "o", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "in/x.avif is an AVIF file, which OpenCV cannot read" in run.stderr
    assert "y.jpg is an AVIF file, not a supported image format" in run.stderr
    assert " a AVIF" not in run.stderr


# ----------------------------------------------------------------------------- other results
def small_wider(tmp_path: Path) -> Path:
    """The hand-made WIDER root of test_evaluate.py with its two images made real photos."""
    from test_evaluate import HAND, make_wider

    root = make_wider(tmp_path / "wider", {k: v for k, v in HAND.items() if "Parade" in k})
    for name in ("0_Parade_a", "0_Parade_b"):
        photo(root / "WIDER_val" / "images" / "0--Parade" / f"{name}.jpg")
    return root


def digests(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_an_evaluation_of_another_detector_never_replaces_one_in_its_out(tmp_path):
    root = small_wider(tmp_path)
    common = ("--wider", root, "--size", SIZE, "--threads", "1", "--out", tmp_path / "out")
    first = run_main("evaluate_widerface.py", "--model", MODELS / "det_500m.onnx", *common)
    assert first.returncode == 0, first.stderr
    before = digests(tmp_path / "out")
    assert "results.json" in before and any(k.startswith("predictions/") for k in before)
    other = run_main("evaluate_widerface.py", "--model", MODELS / "det_2.5g.onnx", *common)
    assert other.returncode == 2
    assert other.stderr == (f"error: --out {tmp_path / 'out'} holds the evaluation of "
                            "det_500m.onnx, which this run's of det_2.5g.onnx would replace: "
                            "give another --out (an evaluation folder belongs to one "
                            "detector)\n")
    assert digests(tmp_path / "out") == before
    lock = os.open(tmp_path / "out", os.O_RDONLY)
    fcntl.flock(lock, fcntl.LOCK_EX)  # as an evaluation running now into it holds it
    try:
        busy = run_main("evaluate_widerface.py", "--model", MODELS / "det_500m.onnx", *common)
    finally:
        os.close(lock)
    assert busy.returncode == 2 and "is in use by another evaluation running now" in busy.stderr
    assert digests(tmp_path / "out") == before
    again = run_main("evaluate_widerface.py", "--model", MODELS / "det_500m.onnx", *common)
    assert again.returncode == 0 and "reused 2 prediction files" in again.stdout, again.stderr


def test_a_speed_table_that_exists_is_kept_unless_replace_is_given(tflite_float32, tmp_path):
    table = tmp_path / "ops.md"
    table.write_text("an earlier run's table\n")
    args = ("--profile-ops", tflite_float32, "--threads", "1", "--repeat", "1", "--iters", "1")
    timing = ("--models", tflite_float32, "--threads", "1", "--repeat", "1", "--iters", "1")
    for option, given in (("--markdown", args), ("--csv", args), ("--json", timing)):
        run = run_main("speed_test.py", *given, option, table)
        assert run.returncode == 2, run.stderr
        assert run.stderr.startswith(f"error: {option} {table} exists: a table holds one run's "
                                     "measurements") and "--replace to replace it" in run.stderr
        assert table.read_text() == "an earlier run's table\n"
    run = run_main("speed_test.py", *args, "--markdown", table, "--replace")
    assert run.returncode == 0, run.stderr
    assert "CONV_2D" in table.read_text()
    assert "never merged" in help_text("speed_test.py")
    # --profile-ops (like --analyze) writes no --json, so one already there (README step 7 runs
    # --analyze after a timing run wrote the default one) is no reason to refuse, nor touched
    kept = table.read_text()
    run = run_main("speed_test.py", *args, "--json", table)
    assert run.returncode == 0, run.stderr
    assert table.read_text() == kept
