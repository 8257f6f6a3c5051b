"""Leaked faces in an anonymised video, measured against a stronger detector.

Reference faces: det_2.5g (ONNX) on every frame at the frame's own resolution, padded to a
multiple of 32, score >= 0.5. A reference face at least 12 px tall LEAKS in a frame when no
blurred region of that frame covers at least 70% of it. A region is what the video script's
JSON lines say was blurred: its "box" (the grown box, which may reach past the frame) or, with
"shape": "ellipse", the ellipse inscribed in it, clipped to the frame; lines without "blurred"
(older runs) are read as their "faces" boxes grown by --legacy-margin. The COST is the
regions per frame that cover less than half of every reference face, of any size: blurred
patches that are not faces; and the share of the picture blurred (union of the regions).

    python tests/tools/leaks.py --video ../shared/samples/walking_1080p.mp4 \\
        --jsonl results/walking_1080p_fdlm.jsonl

The references are slow (det_2.5g at 1920x1088 on a CPU), so they are cached under
.cache/leaks/, keyed by the video's and the model's sha256. This file judges the script's
output on its own terms: it decodes the video itself and shares no geometry with the code
it measures.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import av
import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from scrfdkit import SCRFD  # noqa: E402
from scrfdkit.files import atomic_write, sha256_of  # noqa: E402

SHARED = Path(os.environ.get("SCRFD_SHARED", REPO.parent / "shared"))  # as the tests read it
REFERENCE_MODEL = SHARED / "models" / "det_2.5g.onnx"
CACHE = REPO / ".cache" / "leaks"
REFERENCE_SCORE = 0.5  # reference faces: det_2.5g's usual operating point
MIN_HEIGHT = 12  # px: smaller reference faces are not counted as leaks (too small to know)
COVER = 0.7  # a face is hidden when one region covers at least this fraction of it
COST_COVER = 0.5  # a region covering at least this much of some reference face is on a face
GRID = 32  # coverage is measured on GRID x GRID points spread over the face (1% off at most)
STORED_SCORE = 0.3  # the cache keeps faces from this score, so --score can go lower than 0.5


def decoded_frames(video: Path):
    """Every frame in display order, BGR, as a player shows them (PyAV, first video): turned
    upright by its display matrix (a phone's portrait video), as the video script's are."""
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            yield np.ascontiguousarray(np.rot90(frame.to_ndarray(format="bgr24"),
                                                round(frame.rotation / 90) % 4))


def reference_faces(video: Path, model: Path = REFERENCE_MODEL, cache: Path = CACHE,
                    quiet: bool = False) -> list[np.ndarray]:
    """Per frame, an (N, 5) array of reference faces: x1 y1 x2 y2 score (score >= 0.3)."""
    key = f"{video.stem}-{sha256_of(video)[:16]}-{model.stem}-{sha256_of(model)[:8]}"
    path = cache / f"{key}.npz"
    if path.exists():
        stored = np.load(path)
        return np.split(stored["faces"], stored["splits"])
    detector, faces = None, []
    for index, image in enumerate(decoded_frames(video)):
        height, width = image.shape[:2]
        padded = (-(-height // 32) * 32, -(-width // 32) * 32)
        if detector is None:
            detector = SCRFD(model, padded, score_threshold=STORED_SCORE)
        canvas = np.zeros((*padded, 3), np.uint8)
        canvas[:height, :width] = image  # scale 1: the frame's own pixels
        dets = detector.detect(canvas)
        faces.append(np.hstack([dets.boxes, dets.scores[:, None]]).astype(np.float32))
        if not quiet and index % 50 == 0:
            print(f"  references {video.name}: frame {index}", file=sys.stderr)
    cache.mkdir(parents=True, exist_ok=True)
    splits = np.cumsum([len(f) for f in faces])[:-1]
    with atomic_write(path, "wb") as handle:
        np.savez(handle, faces=np.concatenate(faces).reshape(-1, 5), splits=splits)
    return faces


def read_regions(jsonl: Path, legacy_margin: float = 0.25) -> list[list[dict]]:
    """Each frame's blurred regions, in frame order: {"box": [...], "shape": ...}."""
    frames = []
    for line in jsonl.read_text().splitlines():
        record = json.loads(line)
        if "blurred" in record:
            frames.append(record["blurred"])
            continue
        regions = []
        for face in record["faces"]:
            x1, y1, x2, y2 = face["box"]
            gx, gy = (x2 - x1) * legacy_margin, (y2 - y1) * legacy_margin
            regions.append({"box": [x1 - gx, y1 - gy, x2 + gx, y2 + gy], "shape": "box"})
        frames.append(regions)
    return frames


def coverage(faces: np.ndarray, regions: list[dict], width: int, height: int) -> np.ndarray:
    """(faces, regions) fractions of each face's visible part inside each region."""
    if not len(faces) or not regions:
        return np.zeros((len(faces), len(regions)))
    boxes = np.clip(np.asarray(faces, np.float64)[:, :4], 0, [width, height, width, height])
    steps = (np.arange(GRID) + 0.5) / GRID
    xs = boxes[:, 0, None] + steps * (boxes[:, 2] - boxes[:, 0])[:, None]  # (F, G)
    ys = boxes[:, 1, None] + steps * (boxes[:, 3] - boxes[:, 1])[:, None]
    px = np.repeat(xs, GRID, axis=1)[:, None, :]  # (F, 1, G*G)
    py = np.tile(ys, GRID)[:, None, :]
    r = np.array([region["box"] for region in regions], np.float64)
    x1, y1, x2, y2 = (r[:, i, None][None] for i in range(4))  # (1, R, 1)
    inside_frame = (px >= 0) & (px <= width) & (py >= 0) & (py <= height)
    in_box = (px >= x1) & (px <= x2) & (py >= y1) & (py <= y2)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    ax, ay = np.maximum((x2 - x1) / 2, 1e-9), np.maximum((y2 - y1) / 2, 1e-9)
    in_ellipse = ((px - cx) / ax) ** 2 + ((py - cy) / ay) ** 2 <= 1
    ellipse = np.array([region.get("shape", "box") == "ellipse" for region in regions])
    inside = np.where(ellipse[None, :, None], in_ellipse, in_box) & inside_frame
    return inside.mean(axis=2)


@dataclass
class Report:
    video: str
    frames: int
    face_frames: int  # reference faces >= MIN_HEIGHT px, counted once per frame they are in
    leaked: int
    regions_per_frame: float
    references_per_frame: float  # reference faces of any size per frame
    unmatched_per_frame: float  # the cost: regions on no reference face
    blurred_percent: float  # mean share of each frame's area inside some region
    leaked_at: list  # [frame, face height px] of each leak

    @property
    def leaked_percent(self) -> float:
        return 100.0 * self.leaked / max(1, self.face_frames)


def measure(references: list[np.ndarray], regions: list[list[dict]], width: int, height: int,
            name: str = "", score: float = REFERENCE_SCORE, min_height: float = MIN_HEIGHT,
            cover: float = COVER) -> Report:
    """Leaks and cost of one video's regions against its references (frame by frame)."""
    if len(regions) != len(references):
        raise ValueError(f"{name}: {len(regions)} frames of regions for {len(references)} "
                         "frames of video (a run stopped early, or another video?)")
    face_frames = leaked = unmatched = region_count = reference_count = 0
    blurred_area = 0.0
    leaked_at = []
    for index, (faces, frame_regions) in enumerate(zip(references, regions)):
        faces = faces[faces[:, 4] >= score]
        reference_count += len(faces)
        region_count += len(frame_regions)
        covered = coverage(faces, frame_regions, width, height)
        counted = (faces[:, 3] - faces[:, 1]) >= min_height
        face_frames += int(counted.sum())
        best = covered.max(axis=1) if frame_regions else np.zeros(len(faces))
        for f in np.flatnonzero(counted & (best < cover)):
            leaked += 1
            leaked_at.append([index, round(float(faces[f, 3] - faces[f, 1]))])
        blurred_area += blurred_share(frame_regions, width, height)
        if frame_regions:
            on_face = (covered >= COST_COVER).any(axis=0) if len(faces) else \
                np.zeros(len(frame_regions), bool)
            unmatched += int((~on_face).sum())
    frames = max(1, len(regions))
    return Report(name, len(regions), face_frames, leaked, region_count / frames,
                  reference_count / frames, unmatched / frames, 100 * blurred_area / frames,
                  leaked_at)


def blurred_share(regions: list[dict], width: int, height: int) -> float:
    """The fraction of the frame's pixels inside at least one region."""
    if not regions:
        return 0.0
    mask = np.zeros((height, width), np.uint8)
    for region in regions:
        x1, y1, x2, y2 = region["box"]
        if region.get("shape", "box") == "ellipse":
            cv2.ellipse(mask, (((x1 + x2) / 2, (y1 + y2) / 2), (x2 - x1, y2 - y1), 0), 255, -1)
        else:  # pixels whose centres lie inside the box
            left, top = max(0, round(x1)), max(0, round(y1))
            mask[top:max(top, round(y2)), left:max(left, round(x2))] = 255
    return float(np.count_nonzero(mask)) / mask.size


def frame_size(video: Path) -> tuple[int, int]:
    """(width, height) as a player shows the frames (a display matrix may turn them)."""
    with av.open(str(video)) as container:
        frame = next(container.decode(video=0))
        turned = round(frame.rotation / 90) % 2
        return (frame.height, frame.width) if turned else (frame.width, frame.height)


def table(reports: list[Report]) -> str:
    lines = ["| video | face-frames | leaked | regions / frame | reference faces / frame | "
             "regions on no face / frame | picture blurred |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in reports:
        lines.append(f"| {r.video} | {r.face_frames} | {r.leaked} ({r.leaked_percent:.1f}%) | "
                     f"{r.regions_per_frame:.2f} | {r.references_per_frame:.2f} | "
                     f"{r.unmatched_per_frame:.2f} | {r.blurred_percent:.1f}% |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--video", type=Path, nargs="+", required=True,
                        help="source videos (as given to video_inference_fdlm.py)")
    parser.add_argument("--jsonl", type=Path, nargs="+", required=True,
                        help="the script's JSON lines, one per --video, in the same order")
    parser.add_argument("--reference-model", type=Path, default=REFERENCE_MODEL,
                        help=f"dynamic-shape ONNX model for the references (default "
                             f"{REFERENCE_MODEL})")
    parser.add_argument("--score", type=float, default=REFERENCE_SCORE,
                        help=f"reference faces from this score (default {REFERENCE_SCORE}, "
                             f"at least {STORED_SCORE})")
    parser.add_argument("--min-height", type=float, default=MIN_HEIGHT,
                        help=f"reference faces shorter than this (px) never leak (default "
                             f"{MIN_HEIGHT})")
    parser.add_argument("--cover", type=float, default=COVER,
                        help=f"fraction of a face one region must cover (default {COVER})")
    parser.add_argument("--legacy-margin", type=float, default=0.25,
                        help="JSON lines without 'blurred': faces grown by this much each side")
    parser.add_argument("--show-leaks", type=int, default=10, metavar="N",
                        help="list the first N leaks of each video as frame:height")
    parser.add_argument("--json", type=Path, default=None, help="also write the reports here")
    args = parser.parse_args()
    if len(args.video) != len(args.jsonl):
        parser.error("give one --jsonl per --video")
    if args.score < STORED_SCORE:
        parser.error(f"--score below {STORED_SCORE} is not cached")
    reports = []
    for video, jsonl in zip(args.video, args.jsonl):
        width, height = frame_size(video)
        report = measure(reference_faces(video, args.reference_model),
                         read_regions(jsonl, args.legacy_margin), width, height, video.name,
                         args.score, args.min_height, args.cover)
        reports.append(report)
    print(table(reports))
    for report in reports:
        if report.leaked_at and args.show_leaks:
            shown = " ".join(f"{f}:{h}px" for f, h in report.leaked_at[:args.show_leaks])
            print(f"{report.video} leaks (frame:face height): {shown}"
                  + (" ..." if len(report.leaked_at) > args.show_leaks else ""))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) | {"leaked_percent": r.leaked_percent}
                                         for r in reports], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
