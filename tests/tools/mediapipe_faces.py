"""MediaPipe's own ObjectDetector on an object-detector export, beside the faces scrfd.py found.

Runs in any environment with `mediapipe` (0.10.21 or 1.2.x) and numpy; it imports nothing of
scrfdkit, so the model is read exactly as an app would read it: the file alone, no custom code.

    python tests/tools/mediapipe_faces.py MODEL.tflite FACES.jsonl [--score 0.5] [--pad HxW]

FACES.jsonl: scrfd.py --json output (one line per photo: path, faces with box and score).
--pad HxW: each photo is first padded with black at the bottom or right to the aspect ratio
of the model's HxW input (what scrfd.py's letterbox does), so MediaPipe's resize of the whole image to the
input is the same uniform scale; boxes keep the photo's own coordinates.
Prints one line per photo and a JSON summary as the last line; exit code 0.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x1, y1 = np.maximum(a[:, None, 0], b[:, 0]), np.maximum(a[:, None, 1], b[:, 1])
    x2, y2 = np.minimum(a[:, None, 2], b[:, 2]), np.minimum(a[:, None, 3], b[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda c: (c[:, 2] - c[:, 0]) * (c[:, 3] - c[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b) - inter)


def match(found: np.ndarray, expected: np.ndarray) -> list[tuple[int, int, float]]:
    """Greedy one-to-one pairs (found, expected, IoU), best IoU first."""
    if not len(found) or not len(expected):
        return []
    overlaps = iou(found, expected)
    pairs = []
    while overlaps.size and overlaps.max() > 0:
        i, j = np.unravel_index(overlaps.argmax(), overlaps.shape)
        pairs.append((int(i), int(j), float(overlaps[i, j])))
        overlaps[i, :] = -1
        overlaps[:, j] = -1
    return pairs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("faces")
    parser.add_argument("--score", type=float, default=0.5)
    parser.add_argument("--pad", default=None, metavar="HxW")
    parser.add_argument("--dump", default=None, metavar="JSONL",
                        help="write MediaPipe's faces (box x1 y1 x2 y2 in photo pixels, score) here")
    args = parser.parse_args()

    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    options = vision.ObjectDetectorOptions(base_options=BaseOptions(model_asset_path=args.model),
                                           score_threshold=args.score, max_results=-1)
    summary = {"mediapipe": mp.__version__, "photos": 0, "same_count": 0, "faces": 0,
               "matched": 0, "min_iou": 1.0, "max_score_diff": 0.0}
    dump = open(args.dump, "w") if args.dump else None
    with vision.ObjectDetector.create_from_options(options) as detector:
        height, width = map(int, args.pad.split("x")) if args.pad else (None, None)
        for line in open(args.faces):
            record = json.loads(line)
            image = mp.Image.create_from_file(record["path"])
            if args.pad:
                pixels = image.numpy_view()
                rows = max(pixels.shape[0], int(np.ceil(pixels.shape[1] * height / width)))
                cols = max(pixels.shape[1], int(np.ceil(pixels.shape[0] * width / height)))
                canvas = np.zeros((rows, cols, 3), np.uint8)
                canvas[:pixels.shape[0], :pixels.shape[1]] = pixels[..., :3]
                image = mp.Image(image_format=mp.ImageFormat.SRGB, data=canvas)
            result = detector.detect(image)
            found = np.array([[d.bounding_box.origin_x, d.bounding_box.origin_y,
                               d.bounding_box.origin_x + d.bounding_box.width,
                               d.bounding_box.origin_y + d.bounding_box.height]
                              for d in result.detections], np.float64).reshape(-1, 4)
            scores = np.array([d.categories[0].score for d in result.detections])
            labels = {d.categories[0].category_name for d in result.detections}
            if dump:
                dump.write(json.dumps({"path": record["path"], "faces": [
                    {"box": box.tolist(), "score": float(score)}
                    for box, score in zip(found, scores)]}) + "\n")
            expected = np.array([f["box"] for f in record["faces"]], np.float64).reshape(-1, 4)
            expected_scores = np.array([f["score"] for f in record["faces"]])
            pairs = match(found, expected)
            ious = [p[2] for p in pairs]
            diffs = [abs(scores[i] - expected_scores[j]) for i, j, _ in pairs]
            summary["photos"] += 1
            summary["same_count"] += len(found) == len(expected)
            summary["faces"] += len(expected)
            summary["matched"] += sum(v >= 0.9 for v in ious)
            summary["min_iou"] = min([summary["min_iou"], *ious])
            summary["max_score_diff"] = max([summary["max_score_diff"], *diffs])
            print(f"{record['path'].rsplit('/', 1)[-1]}: mediapipe {len(found)} scrfd.py "
                  f"{len(expected)} labels {sorted(labels)} min IoU "
                  f"{min(ious) if ious else float('nan'):.3f} max |score diff| "
                  f"{max(diffs) if diffs else float('nan'):.4f}")
    if dump:
        dump.close()
    print(json.dumps(summary))
    return 0



if __name__ == "__main__":
    sys.exit(main())
