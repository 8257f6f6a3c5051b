"""What deface users have, judged by outcome: every way of hiding a face leaves none that
det_500m finds; an anonymised photo carries no GPS position unless asked; --device runs where
it says or stops with one line; the default 1080p video is no larger than deface's.
"""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import run_main

from scrfdkit import SCRFD, read_image
from scrfdkit import faces
from scrfdkit.devices import DEVICE_PROVIDERS, check_started
from scrfdkit.errors import UserError
from scrfdkit.runners import OnnxRunner

pytestmark = pytest.mark.inference

SIZE = "480,640"  # det_500m at the demo model's input
JUDGE_SCORE = 0.5  # the photo default: a face an ordinary scrfd.py run reports
PHOTOS = ("friends.jpg", "multiface.jpg", "fans_crowd.jpg")


def judges(model: Path, shape: tuple[int, ...]) -> list[SCRFD]:
    """det_500m as the tests' own judge: at 480x640 and at the photo's full resolution."""
    full = (math.ceil(shape[0] / 32) * 32, math.ceil(shape[1] / 32) * 32)
    return [SCRFD(model, hw, score_threshold=JUDGE_SCORE, threads=2) for hw in ((480, 640), full)]


def picture(path: Path) -> Path:
    """A replacement picture with no face in it: stripes and a transparent hole."""
    image = np.zeros((60, 80, 4), np.uint8)
    image[..., 0] = np.linspace(0, 255, 80, dtype=np.uint8)[None, :]
    image[::6, :, 1] = 255
    image[..., 3] = 255
    image[20:40, 30:50, 3] = 0  # transparent: must come out black, not the face
    cv2.imwrite(str(path), image)
    return path


def photos_folder(samples_dir: Path, folder: Path) -> Path:
    folder.mkdir()
    for name in PHOTOS:
        (folder / name).symlink_to(samples_dir / name)
    return folder


def hide(det500m_onnx: Path, images: Path, out: Path, *options) -> tuple:
    proc = run_main("scrfd.py", "--model", det500m_onnx, "--size", SIZE, "--image", images,
                    "--out", out, "--threads", "2", *options)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = [json.loads(line) for line in (out / "faces.jsonl").read_text().splitlines()]
    return proc, {Path(r["path"]).name: r for r in records}


@pytest.mark.parametrize("mode", ["solid", "pixelate", "image"])
def test_each_replacement_leaves_no_face_that_det_500m_finds(mode, det500m_onnx, samples_dir,
                                                             tmp_path):
    extra = ["--blur-image", picture(tmp_path / "hide.png")] if mode == "image" else []
    images = photos_folder(samples_dir, tmp_path / "in")
    _, records = hide(det500m_onnx, images, tmp_path / "out", "--blur", mode, *extra)
    for name in PHOTOS:
        original, output = read_image(samples_dir / name), read_image(tmp_path / "out" / name)
        for judge in judges(det500m_onnx, original.shape):
            assert len(judge.detect(original)) >= 6, (name, judge.input_hw)  # faces to hide
            left = judge.detect(output)
            assert len(left) == 0, (mode, name, judge.input_hw, left.boxes.round().tolist())
        if mode == "solid":  # each face's centre is black
            for face in records[name]["faces"]:
                x1, y1, x2, y2 = face["box"]
                centre = output[round((y1 + y2) / 2), round((x1 + x2) / 2)]
                assert centre.max() <= 8, (name, face["box"], centre)  # JPEG's ringing aside


def test_a_finer_mosaic_than_allowed_shows_faces_again(det500m_onnx, samples_dir, tmp_path,
                                                       monkeypatch):
    """Why --blur-blocks stops at MAX_PIXELATE_BLOCKS: with the limit raised, 16 blocks across
    a face give det_500m most of friends.jpg's faces back; 8 (the default) none."""
    monkeypatch.setattr(faces, "MAX_PIXELATE_BLOCKS", 16)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "friends.jpg").symlink_to(samples_dir / "friends.jpg")
    found = {}
    for blocks in (8, 16):
        out = tmp_path / f"out{blocks}"
        hide(det500m_onnx, tmp_path / "in", out, "--blur", "pixelate", "--blur-blocks",
             str(blocks))
        output = read_image(out / "friends.jpg")
        found[blocks] = len(judges(det500m_onnx, output.shape)[0].detect(output))
    assert found[8] == 0 and found[16] >= 4, found


def test_an_image_replacement_is_the_picture_and_its_transparent_parts_black(tmp_path):
    image = np.full((100, 120, 3), 200, np.uint8)
    raw = cv2.imread(str(picture(tmp_path / "p.png")), cv2.IMREAD_UNCHANGED)
    pic = faces.replacement_image(raw[:, :, :3], raw[:, :, 3] / 255.0)
    out = faces.anonymize_regions(image, np.array([[20, 10, 100, 70]]),
                                  faces.Replacement("image", image=pic))
    assert np.array_equal(out[10:70, 20:100], pic)  # 80x60: the picture's own size
    assert out[30:50, 50:70].max() == 0  # the transparent hole is black
    assert np.array_equal(out[75:], image[75:])  # nothing outside the region changed
    # cut by the left edge: the part of the stretched picture that lies inside
    edge = faces.anonymize_regions(image, np.array([[-40, 10, 40, 70]]),
                                   faces.Replacement("image", image=pic))
    assert np.array_equal(edge[10:70, 0:40], pic[:, 40:])


@pytest.mark.parametrize("args, message", [
    (["--blur", "image"], "--blur image needs --blur-image FILE"),
    (["--blur", "--blur-image", "x.png"], "--blur-image is the picture of --blur image"),
    (["--blur", "--blur-blocks", "4"], "--blur-blocks sets the mosaic of --blur pixelate"),
    (["--blur", "pixelate", "--blur-blocks", "9"], "--blur-blocks must be 1 to 8"),
    (["--blur", "image", "--blur-image", "missing.png"], "missing.png"),
    (["--blur", "mosaic"], "invalid choice: 'mosaic'"),
])
def test_replacement_options_are_checked_before_any_work(args, message, det500m_onnx, samples_dir,
                                                         tmp_path):
    for script, source in (("scrfd.py", ["--image", samples_dir / "friends.jpg"]),
                           ("video_inference_fdlm.py", ["--video", samples_dir /
                                                        "hamilton_360p.mp4"])):
        proc = run_main(script, "--model", det500m_onnx, *source, "--out", tmp_path / "out",
                        *args, cwd=tmp_path)
        assert proc.returncode == 2, (script, proc.stdout, proc.stderr)
        assert proc.stderr.startswith("error: ") and message in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("mode", ["solid", "image"])
def test_a_video_replacement_leaves_no_face(mode, det500m_onnx, samples_dir, tmp_path):
    """The video script's ellipses, filled or pictured: no face in the decoded frames."""
    import av

    image = cv2.imread(str(samples_dir / "friends.jpg"))
    image = image[: image.shape[0] // 2 * 2, : image.shape[1] // 2 * 2]
    clip = tmp_path / "clip.mp4"
    with av.open(str(clip), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = image.shape[1], image.shape[0], "yuv420p"
        for _ in range(3):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")))
        container.mux(stream.encode())
    extra = ["--blur-image", picture(tmp_path / "hide.png")] if mode == "image" else []
    out = tmp_path / "out.mp4"
    proc = run_main("video_inference_fdlm.py", "--model", det500m_onnx, "--size", SIZE,
                    "--video", clip, "--out", out, "--threads", "2", "--blur", mode, *extra)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    judge = judges(det500m_onnx, image.shape)[1]
    assert len(judge.detect(image)) == 6
    with av.open(str(out)) as container:
        frames = [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]
    assert len(frames) == 3 and all(len(judge.detect(f)) == 0 for f in frames)


# ---------------------------------------------------------------------------- metadata
GPS = {1: "N", 2: (48.0, 51.0, 24.09), 3: "E", 4: (2.0, 17.0, 40.2)}  # Paris, as a phone writes


def phone_photo(samples_dir: Path, path: Path) -> Path:
    """friends.jpg as a phone stores it: pixels sideways, EXIF orientation 6 (turn 90 degrees
    clockwise to view), a GPS position, camera make and model, the time taken."""
    from PIL import Image

    with Image.open(samples_dir / "friends.jpg") as upright:
        exif = Image.Exif()
        exif[0x010F], exif[0x0110], exif[0x0112], exif[0x0132] = ("Phone", "X1", 6,
                                                                  "2026:07:14 12:00:00")
        exif[0x8825] = GPS
        upright.transpose(Image.Transpose.ROTATE_90).save(path, "JPEG", exif=exif, quality=92)
    return path


def metadata_of(path: Path) -> tuple[dict, dict, tuple[int, int], bytes | None]:
    """(EXIF tags, GPS tags, size as stored, ICC profile) of a written file, read by Pillow."""
    from PIL import Image

    with Image.open(path) as image:
        exif = image.getexif()
        return dict(exif), dict(exif.get_ifd(0x8825)), image.size, image.info.get("icc_profile")


@pytest.mark.parametrize("keep", [False, True])
def test_gps_is_gone_from_an_anonymised_phone_photo_unless_kept(keep, det500m_onnx, samples_dir,
                                                                tmp_path):
    source = phone_photo(samples_dir, tmp_path / "phone.jpg")
    assert metadata_of(source)[1] == GPS
    out = tmp_path / "out"
    proc, records = hide(det500m_onnx, source, out, "--blur", "--no-tile",
                         *(["--keep-metadata"] if keep else []))
    assert len(records["phone.jpg"]["faces"]) == 6
    tags, gps, size, _ = metadata_of(out / "phone.jpg")
    assert size == (600, 400)  # upright, as a viewer shows the source
    if keep:
        assert gps == GPS and tags[0x010F] == "Phone" and tags[0x0110] == "X1"
        assert tags[0x0112] == 1  # the pixels are upright now: no second turn in a viewer
        assert "metadata: EXIF and ICC profiles copied" in proc.stdout
    else:
        assert gps == {} and tags == {}
        line = next(x for x in proc.stdout.splitlines() if x.startswith("metadata: "))
        assert line.startswith("metadata: none written (privacy first); dropped: ")
        for kind in ("GPS position (1 photo)", "camera make and model (1 photo)",
                     "dates and times (1 photo)", "--keep-metadata copies EXIF and ICC"):
            assert kind in line, line


def test_kept_metadata_has_the_colour_profile_and_never_the_thumbnail(det500m_onnx, samples_dir,
                                                                       tmp_path):
    """crowd_5334x2767.jpg has an ICC profile and an EXIF thumbnail (the unblurred photo in
    small): the profile is copied, the thumbnail is not, and neither is the XMP; PNG too."""
    from PIL import Image

    source = samples_dir / "crowd_5334x2767.jpg"
    with Image.open(source) as image:
        assert image.getexif().get_ifd(-1) and image.info["icc_profile"] and image.info["xmp"]
    for fmt in ("jpg", "png"):
        out = tmp_path / fmt
        proc, _ = hide(det500m_onnx, source, out, "--blur", "--no-tile", "--keep-metadata",
                       "--format", fmt)
        written = out / f"crowd_5334x2767.{fmt}"
        tags, _, size, icc = metadata_of(written)
        with Image.open(source) as image:
            assert icc == image.info["icc_profile"] and size == image.size
            assert tags[0x010F] == image.getexif()[0x010F]  # the camera's make is kept
        with Image.open(written) as image:
            assert not image.getexif().get_ifd(-1) and "xmp" not in image.info
        assert "not copied: thumbnail (1 photo), XMP (1 photo), IPTC (1 photo)" in proc.stdout


def test_keep_metadata_refuses_uris(det500m_onnx, tmp_path):
    proc = run_main("scrfd.py", "--model", det500m_onnx, "--image", "s3://bucket/p.jpg",
                    "--keep-metadata", "--ray", "--out", tmp_path / "o")
    assert proc.returncode == 2 and "--keep-metadata reads the metadata of local files" in \
        proc.stderr, proc.stderr


# ---------------------------------------------------------------------------- --device
def test_a_device_this_onnxruntime_lacks_is_one_line_before_any_work(det500m_onnx, samples_dir,
                                                                      tmp_path):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    runs = {"scrfd.py": ["--model", det500m_onnx, "--image", samples_dir / "friends.jpg",
                         "--out", tmp_path / "o"],
            "video_inference_fdlm.py": ["--model", det500m_onnx, "--video",
                                        samples_dir / "hamilton_360p.mp4", "--out", tmp_path / "o"],
            "evaluate_widerface.py": ["--model", det500m_onnx, "--out", tmp_path / "o"],
            "speed_test.py": ["--models", det500m_onnx, "--json", tmp_path / "o" / "s.json"]}
    for script, args in runs.items():
        proc = run_main(script, *args, "--device", "cuda")
        assert proc.returncode == 2, (script, proc.stdout + proc.stderr)
        assert proc.stderr.strip() == (f"error: --device cuda: onnxruntime {ort.__version__} here "
                                       "has no CUDAExecutionProvider (it has "
                                       f"{', '.join(p.removesuffix('ExecutionProvider') for p in ort.get_available_providers())}"
                                       "); install onnxruntime-gpu instead of onnxruntime"), script
        assert not (tmp_path / "o").exists() and proc.stdout == "", script
    tflite = run_main("scrfd.py", "--model", tmp_path / "m.tflite", "--device", "cuda")
    assert tflite.returncode == 2 and "--device cuda runs ONNX models" in tflite.stderr


def test_a_provider_that_does_not_start_is_reported_not_run_on_the_cpu(det500m_onnx):
    """ONNX Runtime given CUDA that it cannot use runs on the CPU without a word (a warning in
    its log at most): the check after the session opened says so."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.warns(UserWarning, match="CUDAExecutionProvider"):  # ONNX Runtime's only word
        runner = OnnxRunner(det500m_onnx, (128, 160), 1, providers=DEVICE_PROVIDERS["cuda"])
    assert runner.providers() == ["CPUExecutionProvider"]
    with pytest.raises(UserError, match="CUDAExecutionProvider did not start"):
        check_started(runner, "cuda")
    check_started(runner, "cpu")  # the CPU is what it asked for: fine


def test_device_cpu_is_the_default_run(det500m_onnx, samples_dir, tmp_path):
    lines = []
    for name, extra in (("default", []), ("cpu", ["--device", "cpu"])):
        proc = run_main("scrfd.py", "--model", det500m_onnx, "--size", SIZE, "--image",
                        samples_dir / "friends.jpg", "--out", tmp_path / name, "--no-tile",
                        "--threads", "1", *extra)
        assert proc.returncode == 0, proc.stderr
        lines.append((tmp_path / name / "faces.jsonl").read_text().replace(name, ""))
    assert lines[0] == lines[1] and len(json.loads(lines[0])["faces"]) == 6


# ---------------------------------------------------------------------------- encoder
# deface 1.5.0 on walking_1080p.mp4 (libx264 medium at crf 23 through imageio-ffmpeg, stretched
# to 1920x1088, AAC copied): `deface walking_1080p.mp4 -o deface.mp4 --keep-audio` in a venv
# of `pip install deface onnxruntime` (docs/video.md). Pinned: deface is not installed in CI.
DEFACE_WALKING_BYTES = 1_926_951


def test_the_default_1080p_output_is_no_larger_than_deface(det500m_onnx, samples_dir, tmp_path):
    """The default --blur run (the demo model's network and size, as ONNX; default tiles and
    encoder settings) writes no more bytes than deface did for the same video."""
    out = tmp_path / "walking.mp4"
    proc = run_main("video_inference_fdlm.py", "--model", det500m_onnx, "--size", SIZE,
                    "--video", samples_dir / "walking_1080p.mp4", "--blur", "--out", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "105 frames" in proc.stdout and "audio AAC copied" in proc.stdout
    assert out.stat().st_size <= DEFACE_WALKING_BYTES, (out.stat().st_size, proc.stdout)
