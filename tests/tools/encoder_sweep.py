"""The measurement behind video_inference_fdlm.py's encoder defaults (scrfdkit/video_sink.py
AUTO_PRESETS, DEFAULT_CRF): file size, encode time and quality of x264's presets and CRFs on
the frames a --blur run hands the encoder.

The frames are rebuilt from the video and a --blur run's JSON lines (every blurred region, as
the script blurs it), held in memory, then encoded once per setting by one thread, as on two
cores (scrfdkit.video_sink.spare_threads). Reported per setting: the video stream's size, CPU and
wall milliseconds per frame, and the PSNR of the decoded result against the frames encoded
(luma, and all three planes), so settings compare at equal quality. Settings run interleaved
(round robin over --repeat rounds) and the median time is kept: the machine is shared.

    python video_inference_fdlm.py --video ../shared/samples/walking_1080p.mp4 --blur \\
        --out /tmp/walk.mp4
    python tests/tools/encoder_sweep.py --video ../shared/samples/walking_1080p.mp4 \\
        --jsonl /tmp/walk.mp4.jsonl --presets ultrafast superfast veryfast faster medium \\
        --crf 23 25 28
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from scrfdkit.faces import Replacement, anonymize_regions  # noqa: E402
from scrfdkit.video import VideoSource  # noqa: E402
from scrfdkit.video_sink import patch_yuv  # noqa: E402


def blurred_frames(video: Path, jsonl: Path) -> tuple[list[np.ndarray], float]:
    """The I420 planes of every frame as the --blur run encoded them, with the source's fps."""
    import json

    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    frames = []
    with VideoSource(video) as source:
        for frame, record in zip(source.frames(), records):
            regions = [r["box"] for r in record.get("blurred", [])]
            shape = record["blurred"][0]["shape"] if regions else "ellipse"
            grown = np.array(regions, np.float64).reshape(-1, 4)
            shown = anonymize_regions(frame.image, grown, Replacement("gaussian"), shape)
            frames.append(patch_yuv(frame.yuv, shown, grown) if frame.yuv is not None else
                          shown)
        fps = source.fps
    return frames, fps


def encode(frames: list[np.ndarray], size: tuple[int, int], fps: float, preset: str, crf: int,
           path: Path) -> tuple[float, float]:
    """Encode to `path` with one thread; (CPU seconds, wall seconds) spent in the encoder."""
    cpu = wall = 0.0
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=round(fps))
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.options = {"crf": str(crf), "preset": preset}
        stream.codec_context.thread_count = 1
        for index, planes in enumerate(frames + [None]):
            frame = None
            if planes is not None:
                frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
                frame.pts = index
            started, started_cpu = time.perf_counter(), time.process_time()
            packets = stream.encode(frame)
            cpu += time.process_time() - started_cpu
            wall += time.perf_counter() - started
            container.mux(packets)
    return cpu, wall


def psnr(frames: list[np.ndarray], path: Path) -> tuple[float, float]:
    """Mean PSNR (dB) of the decoded file against the frames: luma, and all planes."""
    height = frames[0].shape[0] * 2 // 3
    luma, whole = [], []
    with av.open(str(path)) as container:
        for original, decoded in zip(frames, container.decode(video=0)):
            planes = decoded.to_ndarray(format="yuv420p").astype(np.float64)
            error = (planes - original) ** 2
            for out, part in ((luma, error[:height]), (whole, error)):
                mse = max(part.mean(), 1e-10)
                out.append(10 * np.log10(255 ** 2 / mse))
    return float(np.mean(luma)), float(np.mean(whole))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--video", type=Path, required=True)
    parser.add_argument("--jsonl", type=Path, required=True, help="a --blur run's JSON lines")
    parser.add_argument("--presets", nargs="+", default=["ultrafast", "superfast", "veryfast",
                                                         "faster", "fast", "medium"])
    parser.add_argument("--crf", type=int, nargs="+", default=[23, 25, 28])
    parser.add_argument("--repeat", type=int, default=1, help="timing rounds (median kept)")
    args = parser.parse_args()
    frames, fps = blurred_frames(args.video, args.jsonl)
    size = (frames[0].shape[1], frames[0].shape[0] * 2 // 3)
    settings = [(p, c) for c in args.crf for p in args.presets]
    times: dict[tuple, list[tuple[float, float]]] = {s: [] for s in settings}
    results: dict[tuple, tuple] = {}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.repeat):
            for preset, crf in settings:
                path = Path(folder) / f"{preset}_{crf}.mp4"
                times[preset, crf].append(encode(frames, size, fps, preset, crf, path))
                results[preset, crf] = (path.stat().st_size, *psnr(frames, path))
    print(f"{len(frames)} frames {size[0]}x{size[1]} of {args.video.name}, x264 with one "
          "thread; time: median of", args.repeat, "round(s)")
    print("| preset | crf | video MB | CPU ms/frame | wall ms/frame | PSNR Y dB | PSNR YUV dB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for preset, crf in settings:
        cpu = statistics.median(t[0] for t in times[preset, crf]) / len(frames) * 1000
        wall = statistics.median(t[1] for t in times[preset, crf]) / len(frames) * 1000
        size_bytes, luma, whole = results[preset, crf]
        print(f"| {preset} | {crf} | {size_bytes / 1e6:.2f} | {cpu:.0f} | {wall:.0f} | "
              f"{luma:.2f} | {whole:.2f} |", flush=True)


if __name__ == "__main__":
    main()
