"""Detect faces in photos with an SCRFD model (TFLite through LiteRT, or ONNX through ONNX Runtime).

Writes each photo with its faces drawn (box, score, five landmarks in distinct colours) and
one JSON line per photo with the boxes, scores and landmarks in original-image pixels.

    python scrfd.py                                   # data/friends.jpg -> results/friends.jpg
    python scrfd.py --image photos/ "more/*.png" --out /tmp/o --json /tmp/o/faces.jsonl
    python scrfd.py --model models/det_500m.onnx --size 640,640 --image group.jpg

Unreadable images are skipped with a warning and counted in the summary; the exit code is 0
as long as at least one image was read (2, with a one-line error, when none could be).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import cv2

from detector import (DEFAULT_MODEL, REPO, SCRFD, UserError, atomic_write,
                      add_detector_arguments, check_model, cli, display, draw_detections, find_images, jsonl_writer,
                      read_image)

# Defaults are relative to this project folder, so the script runs from anywhere.
DEFAULT_IMAGE = REPO / "data" / "friends.jpg"
DEFAULT_OUT = REPO / "results"
JSON_NAME = "faces.jsonl"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                        help=".tflite or .onnx SCRFD model (default: "
                             "models/scrfd500m_480x640_float32.tflite, made by the export scripts)")
    parser.add_argument("--image", nargs="+", default=[DEFAULT_IMAGE], metavar="PATH",
                        help="image files, folders (searched recursively) or glob patterns "
                             "(default: data/friends.jpg)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="folder for the annotated images, named like the inputs "
                             "(default: results/)")
    parser.add_argument("--format", default=None, metavar="EXT",
                        help="write annotated images in this format, e.g. png (default: the "
                             "input's own format)")
    parser.add_argument("--json", type=Path, default=None,
                        help=f"JSON lines file: one line per image with path, size and faces "
                             f"(default: <out>/{JSON_NAME})")
    add_detector_arguments(parser, per="image")
    return parser.parse_args(argv)


def output_paths(images: list[Path], out_dir: Path, suffix: str | None = None) -> list[Path]:
    """results/<image name>; inputs that share a name keep their sub-folders to stay apart."""
    names = [p.name.lower() for p in images]
    if len(set(names)) == len(names):
        outputs = [out_dir / p.name for p in images]
    else:
        resolved = [Path(os.path.abspath(p)) for p in images]  # not resolve(): keep symlinked names
        root = Path(os.path.commonpath([p.parent for p in resolved]))
        outputs = [out_dir / p.relative_to(root) for p in resolved]
    if suffix:
        outputs = [p.with_suffix(suffix) for p in outputs]
    for image, output in zip(images, outputs):
        if output.resolve() == image.resolve():
            raise UserError(f"--out {display(out_dir)} would overwrite the input {display(image)}; "
                            "choose another folder")
    return outputs


def write_image(path: Path, image) -> None:
    """Encode in the input's format (PNG when OpenCV cannot write it), renamed into place whole."""
    ok, data = cv2.imencode(path.suffix or ".png", image)
    if not ok:
        ok, data = cv2.imencode(".png", image)
    with atomic_write(path, "wb") as handle:
        handle.write(data.tobytes())


def main() -> int:
    args = parse_args()
    model_path = check_model(args.model)
    if args.image == [DEFAULT_IMAGE] and not DEFAULT_IMAGE.exists():
        raise UserError(f"example photo {display(DEFAULT_IMAGE)} not found; pass --image with "
                        "image files, folders or glob patterns")
    images = find_images(args.image)
    if not images:
        raise UserError(f"no images found in {' '.join(map(str, args.image))}")
    outputs = output_paths(images, args.out, args.format and f".{args.format.lstrip('.')}")
    json_path = args.json or args.out / JSON_NAME
    if json_path.is_dir():
        raise UserError(f"--json {json_path} is a folder; give a file name such as faces.jsonl")

    detector = SCRFD(model_path, args.size, score_threshold=args.score,
                     nms_threshold=args.nms, max_faces=args.max_faces, threads=args.threads)
    print(f"model {display(model_path)}: {detector.runner.backend}, input "
          f"{detector.input_hw[0]}x{detector.input_hw[1]}, {len(images)} image(s)")

    done = faces = 0
    failed: list[Path] = []
    totals = {"read": 0.0, "preprocess": 0.0, "inference": 0.0, "postprocess": 0.0, "write": 0.0}
    with jsonl_writer(json_path) as write_json:
        for image_path, out_path in zip(images, outputs):
            t0 = time.perf_counter()
            try:
                image = read_image(image_path)
            except UserError as err:
                print(f"warning: {err}; skipped", file=sys.stderr)
                write_json({"path": str(image_path), "error": str(err)})
                failed.append(image_path)
                continue
            t1 = time.perf_counter()
            dets = detector.detect(image)
            t2 = time.perf_counter()
            write_image(out_path, draw_detections(image, dets))
            write_json({"path": str(image_path),
                        "size": {"width": image.shape[1], "height": image.shape[0]},
                        "faces": dets.to_list()})
            t3 = time.perf_counter()
            totals["read"] += t1 - t0
            totals["write"] += t3 - t2
            for key, seconds in detector.timings.items():
                totals[key] += seconds
            done += 1
            faces += len(dets)
            print(f"{display(image_path)}: {len(dets)} face{'s' * (len(dets) != 1)} "
                  f"({(t2 - t1) * 1000:.0f} ms)")

    if not done:
        raise UserError(f"none of the {len(images)} image(s) could be read")
    per_image = ", ".join(f"{key} {spent / done * 1000:.1f} ms" for key, spent in totals.items())
    unreadable = f", {len(failed)} unreadable (skipped)" if failed else ""
    print(f"summary: {len(images)} image(s): {done} annotated{unreadable}; {faces} face(s)")
    print(f"mean per image: {per_image}")
    print(f"annotated images: {display(args.out)}/")
    print(f"faces (JSON lines): {display(json_path)}")
    return 0


if __name__ == "__main__":
    cli(main)
