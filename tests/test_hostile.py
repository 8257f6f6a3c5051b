"""Hostile input, round three (issue 20): outputs that would land on inputs or on each other,
stopped re-runs, waits without end, special files and names, unexpected exceptions, limits.

Each case runs a script's main() in this process (argv set, stdout and stderr captured, exit
code from SystemExit), on small generated files in a pytest tmp dir, and asserts the exit
code, the one `error:` or `warning:` line, and that inputs and earlier results are byte for
byte what they were (sha256 before and after). The numbers in the test names are the issue's.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import http.server
import importlib.util
import io
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import MODELS, REPO, SAMPLES

from scrfdkit import SCRFD

SIZE = "128,160"  # the dynamic ONNX model at a small input: fast, still finds the faces


# ----------------------------------------------------------------------------- running scripts
@dataclass
class Run:
    code: int
    out: str
    err: str

    def lines(self, prefix: str) -> list[str]:
        return [line for line in self.err.splitlines() if line.startswith(prefix)]

    def one(self, prefix: str, *fragments: str) -> str:
        """The run's only `prefix` line (error:, warning:), holding every fragment."""
        found = self.lines(prefix)
        assert len(found) == 1, self.err
        assert "Traceback" not in self.err and "unexpected" not in found[0], self.err
        for fragment in fragments:
            assert fragment in found[0], found[0]
        return found[0]


_SCRIPTS: dict[str, object] = {}


def script(name: str):
    """An entry script loaded as a module, once per test session."""
    if name not in _SCRIPTS:
        spec = importlib.util.spec_from_file_location(f"hostile_{Path(name).stem}", REPO / name)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _SCRIPTS[name] = module
    return _SCRIPTS[name]


def run_main(name: str, *args) -> Run:
    """Run a script's main() under its exit-code contract (cli), as `python name args` would."""
    module = script(name)
    out, err = io.StringIO(), io.StringIO()
    saved_argv, saved_term = sys.argv, signal.getsignal(signal.SIGTERM)
    sys.argv = [name, *map(str, args)]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            module.cli(module.main)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        sys.argv = saved_argv
        signal.signal(signal.SIGTERM, saved_term)
    return Run(code, out.getvalue(), err.getvalue())


def scrfd(*args) -> Run:
    return run_main("scrfd.py", "--model", MODELS / "det_500m.onnx", "--size", SIZE, *args)


# ----------------------------------------------------------------------------- files
def digests(*roots: Path) -> dict[str, str]:
    """sha256 of every regular file under `roots` (links are not followed)."""
    found = {}
    for root in roots:
        paths = [root] if root.is_file() else sorted(p for p in root.rglob("*"))
        for path in paths:
            if path.is_file() and not path.is_symlink():
                found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def photo(path: Path, shade: int | None = None) -> Path:
    """A small real photo with faces (friends.jpg at a third of its size), or a flat image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = cv2.imread(str(SAMPLES / "friends.jpg"))
    image = cv2.resize(image, (image.shape[1] // 3, image.shape[0] // 3))
    if shade is not None:
        image = np.full_like(image, shade)
    assert cv2.imwrite(str(path), image)
    return path


def write_video(path: Path, frames: int = 6, size: tuple[int, int] = (160, 120)) -> Path:
    source = cv2.resize(cv2.imread(str(SAMPLES / "friends.jpg")), size)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, size)
    for _ in range(frames):
        writer.write(source)
    writer.release()
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob(".*")] if folder.exists() else []


def synthetic_onnx(path: Path, score: float) -> Path:
    """A fixed 64x64 SCRFD-shaped ONNX model (scores, boxes and landmarks at strides 8, 16,
    32, two anchors) whose scores are all `score`: NaN makes the broken model of case 5."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    nodes, outputs = [], []
    for kind, channels, value in (("score", 1, score), ("bbox", 4, 1.0), ("kps", 10, 1.0)):
        for stride in (8, 16, 32):
            rows = (64 // stride) ** 2 * 2
            name = f"{kind}_{stride}"
            tensor = helper.make_tensor(f"{name}_value", TensorProto.FLOAT, [rows, channels],
                                        [value] * (rows * channels))
            nodes.append(helper.make_node("Constant", [], [name], value=tensor))
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT,
                                                         [rows, channels]))
    image = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, 64, 64])
    graph = helper.make_graph(nodes, "synthetic_scrfd", [image], outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


# ------------------------------------------------------------ 1. no output on an input
def test_1_crops_never_overwrite_an_input_photo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    photo(tmp_path / "cin" / "x.jpg")
    photo(tmp_path / "cin" / "x_face0.png", shade=90)
    before = digests(tmp_path / "cin")
    run = scrfd("--image", "cin/x.jpg", "cin/x_face0.png", "--crops", "cin", "--out", "o")
    assert run.code == 2
    run.one("error:", "cin/x_face0.png", "--crops")
    assert digests(tmp_path / "cin") == before
    assert not (tmp_path / "o").exists()


def test_1_speed_test_outputs_never_overwrite_the_photo_a_model_or_its_sidecar(tmp_path,
                                                                               monkeypatch):
    monkeypatch.chdir(tmp_path)
    photo(tmp_path / "p.jpg")
    (tmp_path / "m.tflite").write_bytes(b"never opened: the outputs are checked first")
    (tmp_path / "m.tflite.json").write_text(json.dumps({"format": "scrfd-tflite/1"}))
    before = digests(tmp_path)
    for option, target, fragment in (("--csv", "p.jpg", "input p.jpg"),
                                     ("--markdown", "m.tflite.json", "input m.tflite.json"),
                                     ("--json", "m.tflite", "input m.tflite"),
                                     ("--markdown", "r.csv", "same file")):
        extra = ["--csv", "r.csv"] if target == "r.csv" else []
        run = run_main("speed_test.py", "--models", "m.tflite", "--image", "p.jpg", *extra,
                       option, target, "--no-rss", "--repeat", "1")
        assert run.code == 2, (option, run.err)
        run.one("error:", option, fragment)
        assert digests(tmp_path) == before


def test_1_photos_whose_results_share_a_name_get_their_own(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    photo(tmp_path / "p.jpg")
    flipped = cv2.flip(cv2.imread(str(tmp_path / "p.jpg")), 1)
    cv2.imwrite(str(tmp_path / "p.png"), flipped)
    before = digests(tmp_path)
    run = scrfd("--image", "p.jpg", "p.png", "--format", "png", "--crops", "c", "--out", "o")
    assert run.code == 0, run.err
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        "faces.jsonl", "p_jpg.png", "p_png.png"]
    records = read_jsonl(tmp_path / "o" / "faces.jsonl")
    assert [r["path"] for r in records] == ["p.jpg", "p.png"]
    named = []
    for record, tag in zip(records, ("p_jpg", "p_png")):
        assert record["faces"]
        for face in record["faces"]:
            assert Path(face["crop"]).name.startswith(f"{tag}_face")  # its own crops
            named.append(Path(face["crop"]).name)
    assert sorted(named) == sorted(p.name for p in (tmp_path / "c").iterdir())  # none lost
    annotated = [cv2.imread(str(tmp_path / "o" / n)) for n in ("p_jpg.png", "p_png.png")]
    assert not np.array_equal(*annotated)  # each photo's own result, not one written twice
    assert digests(tmp_path / "p.jpg", tmp_path / "p.png") == before
    assert "p_jpg.png" in help_text("scrfd.py")  # the rule is in --help


def help_text(name: str) -> str:
    """--help as a user reads it, on one line (argparse wraps it)."""
    return " ".join(run_main(name, "--help").out.split())


def test_1_json_never_replaces_an_annotated_image_of_the_same_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    photo(tmp_path / "friends.jpg")
    assert scrfd("--image", "friends.jpg", "--out", "o").code == 0
    before = digests(tmp_path)
    run = scrfd("--image", "friends.jpg", "--out", "o", "--json", "o/friends.jpg")
    assert run.code == 2
    run.one("error:", "--json o/friends.jpg", "annotated image o/friends.jpg")
    assert digests(tmp_path) == before and leftovers(tmp_path / "o") == []


def test_1_export_tflite_never_writes_its_input_onnx(tmp_path, monkeypatch):
    """onnx2tf saves over the model it is given: the export hands it a copy."""
    monkeypatch.chdir(tmp_path)
    source = synthetic_onnx(tmp_path / "copy.onnx", score=0.0)
    check = photo(tmp_path / "p.jpg")
    before = digests(tmp_path)
    given: list[Path] = []
    module = script("export_tflite.py")

    def converter(onnx_path, precision, workdir, test_data):  # writes its input, as onnx2tf
        given.append(Path(onnx_path))
        with open(onnx_path, "ab") as handle:
            handle.write(b"\0")
        raise module.UserError("the test's converter stops here")

    monkeypatch.setattr(module, "run_onnx2tf", converter)
    run = run_main("export_tflite.py", "--onnx", source, "--out", "o.tflite",
                   "--check-images", check)
    assert run.code == 2
    run.one("error:", "the test's converter stops here")
    assert len(given) == 1 and given[0].name == source.name and given[0].parent != tmp_path
    assert digests(tmp_path) == before and not (tmp_path / "o.tflite").exists()


def test_1_two_videos_of_one_stem_keep_their_own_json(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_video(tmp_path / "clip.avi")
    common = ["--model", MODELS / "det_500m.onnx", "--size", SIZE, "--video", "clip.avi"]
    first = run_main("video_inference_fdlm.py", *common, "--out", "x.avi")
    assert first.code == 0, first.err
    kept = digests(tmp_path / "x.avi", tmp_path / "x.avi.jsonl")
    second = run_main("video_inference_fdlm.py", *common, "--out", "x.mkv", "--max-frames", "3")
    assert second.code == 0, second.err
    assert digests(tmp_path / "x.avi", tmp_path / "x.avi.jsonl") == kept
    assert len((tmp_path / "x.mkv.jsonl").read_text().splitlines()) == 3
    assert len((tmp_path / "x.avi.jsonl").read_text().splitlines()) == 6
    run = run_main("video_inference_fdlm.py", *common, "--out", "y.avi", "--json", "clip.avi")
    assert run.code == 2
    run.one("error:", "--json clip.avi", "input")


# ------------------------------------------------------------ 2. a stopped re-run
def test_2_a_stopped_rerun_leaves_the_complete_earlier_result(tmp_path, monkeypatch):
    """(The video's stopped re-run belongs to the PyAV rewrite, issue 22.)"""
    monkeypatch.chdir(tmp_path)
    for index in range(5):
        photo(tmp_path / "in" / f"p{index}.jpg")
    assert scrfd("--image", "in", "--out", "o").code == 0
    before = digests(tmp_path)
    calls = {"n": 0}
    detect = SCRFD.detect_prepared

    def stop_at_the_third(self, prepared):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # what Ctrl-C raises there
        return detect(self, prepared)

    monkeypatch.setattr(SCRFD, "detect_prepared", stop_at_the_third)
    run = scrfd("--image", "in", "--out", "o", "--blur")
    assert run.code == 130 and "interrupted" in run.err and "Traceback" not in run.err
    assert digests(tmp_path) == before and leftovers(tmp_path / "o") == []


# ------------------------------------------------------------ 3. no wait without end
def test_3_ray_at_an_address_where_nothing_listens_fails_within_seconds(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    photo(tmp_path / "p.jpg")
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    run = scrfd("--image", "p.jpg", "--out", "o", "--ray", f"127.0.0.1:{port}")
    assert time.monotonic() - started < 10
    assert run.code == 2
    run.one("error:", f"--ray 127.0.0.1:{port}", "connection refused")
    assert not (tmp_path / "o").exists()
    assert "s is an error" in help_text("scrfd.py")  # the stated time


class _Trickle(http.server.BaseHTTPRequestHandler):
    """A mirror that sends one byte every 0.2 s: never a read timeout, never done."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(10 ** 6))
        self.end_headers()
        with contextlib.suppress(OSError):
            for _ in range(200):
                self.wfile.write(b"P")
                self.wfile.flush()
                time.sleep(0.2)

    def log_message(self, *args):
        pass


def test_3_a_trickling_mirror_hits_the_total_download_time_limit(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Trickle)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        started = time.monotonic()
        run = run_main("export_modified_onnx.py", "--download", "buffalo_sc", "--models-dir",
                       "m", "--mirror", f"http://127.0.0.1:{server.server_port}/",
                       "--download-timeout", "2")
        elapsed = time.monotonic() - started
    finally:
        server.shutdown()
        server.server_close()
    assert run.code == 2 and 2 <= elapsed < 8
    run.one("error:", "took more than 2 s", "--download-timeout")
    assert list((tmp_path / "m").iterdir()) == []  # no partial download left
    assert "--download-timeout" in help_text("export_modified_onnx.py")


# ------------------------------------------------------------ 4. special files and names
@pytest.mark.parametrize("kind", ["character device", "FIFO", "symbolic link", "pipe (>(...))"])
def test_4_json_on_a_special_file_is_refused_before_any_work(tmp_path, monkeypatch, kind):
    monkeypatch.chdir(tmp_path)
    photo(tmp_path / "p.jpg")
    (tmp_path / "target.json").write_text("an earlier result\n")
    if kind == "FIFO":
        os.mkfifo(tmp_path / "node")
    elif kind == "symbolic link":
        (tmp_path / "node").symlink_to("target.json")
    before = digests(tmp_path)
    reader, writer = os.pipe()  # what bash hands over for >(wc -c): /dev/fd/N
    node = {"character device": "/dev/null", "FIFO": "node", "symbolic link": "node",
            "pipe (>(...))": f"/dev/fd/{writer}"}[kind]
    try:
        run = scrfd("--image", "p.jpg", "--out", "o", "--json", node)
    finally:
        os.close(reader), os.close(writer)
    assert run.code == 2
    run.one("error:", f"--json {node}", "not a regular file", "- writes to standard output")
    assert not (tmp_path / "o").exists() and digests(tmp_path) == before
    if kind == "FIFO":
        assert stat.S_ISFIFO(os.lstat(tmp_path / "node").st_mode)
    if kind == "symbolic link":
        assert os.readlink(tmp_path / "node") == "target.json"
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_4_json_dash_writes_json_lines_to_stdout_and_messages_to_stderr(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    photo(tmp_path / "p.jpg")
    run = scrfd("--image", "p.jpg", "--out", "o", "--json", "-")
    assert run.code == 0, run.err
    records = [json.loads(line) for line in run.out.splitlines()]  # nothing else on stdout
    assert len(records) == 1 and records[0]["path"] == "p.jpg" and records[0]["faces"]
    assert "summary:" in run.err and not (tmp_path / "o" / "faces.jsonl").exists()
    run = run_main("speed_test.py", "--csv", "-", "--no-rss")
    assert run.code == 2
    run.one("error:", "--csv -", "standard output")


def test_4_a_photo_name_near_the_limit_is_a_counted_warning_not_the_end(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    long_name = "n" * 246 + ".jpg"  # 250 characters: its temporary names must fit too
    photo(tmp_path / "in" / long_name)
    photo(tmp_path / "in" / "short.jpg")
    before = digests(tmp_path / "in")
    run = scrfd("--image", "in", "--out", "o")
    assert run.code == 0, run.err
    assert (tmp_path / "o" / long_name).is_file() and leftovers(tmp_path / "o") == []
    run = scrfd("--image", "in", "--out", "o2", "--crops", "c")  # n..n_face0.png: 256 bytes
    assert run.code == 0, run.err
    run.one("warning:", "is 256 bytes long", "skipped")
    assert "2 image(s): 1 annotated, 1 unreadable (skipped)" in run.out
    assert sorted(p.name for p in (tmp_path / "o2").iterdir()) == ["faces.jsonl", "short.jpg"]
    assert all(p.name.startswith("short_face") for p in (tmp_path / "c").iterdir())
    lines = (tmp_path / "o2" / "faces.jsonl").read_text().splitlines()
    assert "error" in json.loads(lines[0]) and json.loads(lines[1])["faces"]
    assert digests(tmp_path / "in") == before


def test_4_a_video_name_near_the_limit_works(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stem = "v" * 236  # 240 characters with .avi; the output <stem>_fdlm.mp4 has 245
    write_video(tmp_path / f"{stem}.avi", frames=3)
    run = run_main("video_inference_fdlm.py", "--model", MODELS / "det_500m.onnx", "--size",
                   SIZE, "--video", f"{stem}.avi", "--out", "o")
    assert run.code == 0, run.err
    assert (tmp_path / "o" / f"{stem}_fdlm.mp4").is_file() and leftovers(tmp_path / "o") == []


def test_4_a_list_that_names_itself_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.txt").write_text("@b.txt\n")
    (tmp_path / "b.txt").write_text("p.jpg\n@a.txt\n")
    (tmp_path / "self.txt").write_text("@self.txt\n")
    for listed, chain in (("@self.txt", "@self.txt -> @self.txt"),
                          ("@a.txt", "@a.txt -> @b.txt -> @a.txt")):
        run = scrfd("--image", listed, "--out", "o")
        assert run.code == 2
        run.one("error:", chain, "includes itself")


def test_4_broken_links_and_loops_in_a_folder_are_warned_about_and_counted(tmp_path,
                                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    photo(tmp_path / "in" / "a.jpg")
    photo(tmp_path / "in" / "sub" / "b.jpg")
    (tmp_path / "in" / "broken.jpg").symlink_to("gone.jpg")
    (tmp_path / "in" / "self.jpg").symlink_to("self.jpg")
    (tmp_path / "in" / "sub" / "up").symlink_to("..")
    (tmp_path / "linked").mkdir()
    photo(tmp_path / "linked" / "c.jpg")
    (tmp_path / "in" / "more").symlink_to(tmp_path / "linked")  # a linked folder is searched
    run = scrfd("--image", "in", "--out", "o")
    assert run.code == 0, run.err
    warnings = run.lines("warning:")
    assert len(warnings) == 3, run.err
    assert any("broken.jpg is a broken symbolic link" in w for w in warnings)
    assert any("self.jpg is a symbolic link loop" in w for w in warnings)
    assert any("sub/up is a symbolic link" in w and "loop" in w for w in warnings)
    assert "3 image(s): 3 annotated, 3 more passed over in folders" in run.out
    assert len((tmp_path / "o" / "faces.jsonl").read_text().splitlines()) == 3


# ------------------------------------------------------------ 5. no unexpected exception
def _seed_with_sidecar(tmp_path: Path, edit) -> Path:
    """A real .tflite (a peer's conversion of det_500m) with a sidecar written for it, then
    edited by `edit`: the sidecar stays the same file, the model's sha256 still matches."""
    from scrfdkit.runners import LiteRTRunner

    model = tmp_path / "m.tflite"
    model.write_bytes((MODELS / "peers" / "seed_scrfd500m_480x640_float32.tflite").read_bytes())
    runner = LiteRTRunner(model, threads=1)  # no sidecar yet: outputs known from their shapes
    outputs = [{"name": o["name"], "kind": spec.kind, "stride": spec.stride}
               for o, spec in zip(runner.interpreter.get_output_details(), runner.specs)]
    meta = {"format": "scrfd-tflite/1", "anchors_per_location": runner.anchors,
            "outputs": outputs}
    edit(meta)
    (tmp_path / "m.tflite.json").write_text(json.dumps(meta))
    return model


@pytest.mark.parametrize("case", ["as written", "no outputs", "kinds swapped"])
def test_5_a_damaged_sidecar_is_one_line(tmp_path, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    swap = {"score": "bbox", "bbox": "score", "kps": "kps"}
    edit = {"as written": lambda meta: None,
            "no outputs": lambda meta: meta.pop("outputs"),
            "kinds swapped": lambda meta: [o.update(kind=swap[o["kind"]])
                                           for o in meta["outputs"]]}[case]
    model = _seed_with_sidecar(tmp_path, edit)
    photo(tmp_path / "p.jpg")
    run = run_main("scrfd.py", "--model", model, "--image", "p.jpg", "--out", "o")
    if case == "as written":  # the test's sidecar itself is right: the model runs with it
        assert run.code == 0, run.err
        return
    assert run.code == 2
    run.one("error:", "m.tflite.json", "no list of outputs" if case == "no outputs" else
            "does not fit")


def test_5_a_camera_number_too_large_is_one_line():
    run = run_main("video_inference_fdlm.py", "--webcam", "99999999999999999999")
    assert run.code == 2
    run.one("error:", "--webcam", "between 0 and 2147483647")


@contextlib.contextmanager
def small_disk(folder: Path, monkeypatch):
    """A 300 kB tmpfs at `folder` where this machine lets us mount one, else a disk that
    fills after 300 kB of writes under `folder` (ENOSPC from the writes themselves)."""
    folder.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(folder)],
        capture_output=True).returncode == 0
    if not mounted:  # every result is written through Path.write_bytes (StagedOutputs)
        real_write = Path.write_bytes
        budget = {"left": 300_000}

        def filling_write(self, data):
            if str(os.path.abspath(self)).startswith(str(folder)):
                budget["left"] -= len(data)
                if budget["left"] < 0:
                    real_write(self, data[: len(data) // 2])  # a half-written file, then full
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_write(self, data)

        monkeypatch.setattr(Path, "write_bytes", filling_write)
    try:
        yield
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=True)


def test_5_a_full_disk_is_one_line_and_nothing_is_replaced(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for index in range(6):  # noise photos: about 120 kB each as PNG, 300 kB hold two
        path = tmp_path / "in" / f"p{index}.png"
        path.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(path), np.random.default_rng(index).integers(0, 255, (200, 200, 3),
                                                                     dtype=np.uint8))
    with small_disk(tmp_path / "disk", monkeypatch):
        assert scrfd("--image", "in/p0.png", "--out", "disk/o").code == 0
        before = digests(tmp_path / "disk")
        run = scrfd("--image", "in", "--out", "disk/o")
        after, left = digests(tmp_path / "disk"), leftovers(tmp_path / "disk")
    assert run.code == 2
    run.one("error:", "no space left", "disk/o/p", "nothing was replaced")
    assert after == before and left == []


def test_5_a_model_giving_nan_is_reported_as_such(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = synthetic_onnx(tmp_path / "nan.onnx", score=float("nan"))
    photo(tmp_path / "p.jpg")
    run = run_main("scrfd.py", "--model", model, "--image", "p.jpg", "--out", "o")
    assert run.code == 2
    run.one("error:", "nan.onnx gave NaN scores", "p.jpg")
    assert "could be read" not in run.err and not (tmp_path / "o" / "faces.jsonl").exists()
    fine = synthetic_onnx(tmp_path / "zero.onnx", score=0.0)  # the same model, finite: no error
    assert run_main("scrfd.py", "--model", fine, "--image", "p.jpg", "--out", "o").code == 0


# ------------------------------------------------------------ 6. messages and limits
def test_6_size_suggestions_stay_within_the_limit():
    run = run_main("speed_test.py", "--hw", "5000,5000")
    assert run.code == 2
    line = run.one("error:", "5000", "4096")
    assert "4992" not in line and "5024" not in line
    run = run_main("speed_test.py", "--hw", "4090,640")
    run.one("error:", "4064 and 4096")


def test_6_a_missing_check_image_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = synthetic_onnx(tmp_path / "m.onnx", score=0.0)
    photo(tmp_path / "p.jpg")
    run = run_main("export_tflite.py", "--onnx", source, "--out", "o.tflite", "--check-images",
                   "p.jpg", "missing.jpg")
    assert run.code == 2
    run.one("error:", "--check-images missing.jpg")


def test_6_crop_size_has_a_stated_bound(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = scrfd("--image", photo(tmp_path / "p.jpg"), "--crops", "c", "--crop-size", "50000")
    assert run.code == 2
    run.one("error:", "--crop-size", "2048")
    assert "16 to 2048" in help_text("scrfd.py")


def test_6_first_frame_of_animated_and_multi_page_images_is_said_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    face = cv2.imread(str(photo(tmp_path / "face.jpg")))
    frames = [face, np.zeros_like(face), np.full_like(face, 255)]
    animation = cv2.Animation()
    animation.frames, animation.durations = frames, [100] * 3
    (tmp_path / "in").mkdir()
    assert cv2.imwriteanimation(str(tmp_path / "in" / "a.webp"), animation)
    assert cv2.imwriteanimation(str(tmp_path / "in" / "b.png"), animation)
    assert cv2.imwritemulti(str(tmp_path / "in" / "c.tiff"), frames)
    cv2.imwrite(str(tmp_path / "in" / "d.png"), face)  # a still PNG: no word
    run = scrfd("--image", "in", "--out", "o", "--verbose")
    assert run.code == 0, run.err
    warnings = run.lines("warning:")
    assert sorted(w.split()[1] for w in warnings) == ["in/a.webp", "in/b.png", "in/c.tiff"]
    assert all("holds 3 frames" in w and "only the first" in w for w in warnings)
    records = read_jsonl(tmp_path / "o" / "faces.jsonl")
    assert all(r["faces"] for r in records)  # the first frame (the faces) is the one used


def test_6_the_same_file_twice_is_processed_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    photo(tmp_path / "x.jpg")
    (tmp_path / "sub").mkdir()
    (tmp_path / "alias.jpg").symlink_to("x.jpg")
    run = scrfd("--image", "sub/../x.jpg", "x.jpg", "alias.jpg", "--out", "o")
    assert run.code == 0, run.err
    assert "1 image(s)" in run.out
    assert len((tmp_path / "o" / "faces.jsonl").read_text().splitlines()) == 1


def test_6_folder_scans_find_every_format_opencv_reads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    image = cv2.imread(str(photo(tmp_path / "face.jpg")))
    for name in ("a.jfif", "b.jpe", "c.jp2"):
        path = tmp_path / "in" / name
        path.parent.mkdir(exist_ok=True)
        ok, data = cv2.imencode(".jp2" if name.endswith("jp2") else ".jpg", image)
        path.write_bytes(data.tobytes())
    run = scrfd("--image", "in", "--out", "o")
    assert run.code == 0, run.err
    records = read_jsonl(tmp_path / "o" / "faces.jsonl")
    assert sorted(Path(r["path"]).name for r in records) == ["a.jfif", "b.jpe", "c.jp2"]
    assert all(r["faces"] for r in records)


@pytest.mark.parametrize("image, fragment", [(None, "None"), (np.array(3.0), "0-d"),
                                             (np.zeros((0, 0, 3), np.uint8), "no pixels")])
def test_6_python_api_names_what_is_wrong_with_an_image(image, fragment):
    detector = SCRFD(MODELS / "det_500m.onnx", (64, 64), threads=1)
    with pytest.raises(ValueError, match=fragment):
        detector.detect(image)


@pytest.mark.parametrize("options, fragment", [({"score_threshold": -1}, "score_threshold"),
                                               ({"nms_threshold": float("nan")}, "nms_threshold"),
                                               ({"max_faces": -1}, "max_faces")])
def test_6_python_api_refuses_thresholds_out_of_range(options, fragment):
    with pytest.raises(ValueError, match=fragment):
        SCRFD(MODELS / "det_500m.onnx", (64, 64), threads=1, **options)
