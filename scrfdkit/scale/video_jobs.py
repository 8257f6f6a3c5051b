"""video_inference_fdlm.py --ray: a video archive on a Ray cluster, one video per task.

Each task opens its video and runs the library's video job (videos.run_video) with the
driver's options and a detector made from the driver's recipe, so it writes the frames and
JSON lines a local run writes. As in a local batch, a video's outputs are staged and renamed
into place together when that video is done (by its task), a video that cannot be read is
counted and skipped, and a stop request (Ctrl-C, SIGTERM) ends the run with every finished
video kept and earlier results of the others as they were.

The videos, the model, the output folders and the driver's working folder must be at the same
path on every node (a shared filesystem), as for scrfd.py --ray.
"""
from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Callable, Sequence

from ..errors import UserError, one_line
from ..pipeline import StopRequests
from ..video import VideoUnreadable, open_video
from ..videos import (BatchSummary, VideoOptions, VideoPaths, VideoSummary, frame_step,
                      run_video)
from .ray_jobs import connect, ray

POLL_SECONDS = 0.5  # how often the driver looks for a stop request while tasks run
CANCEL_SECONDS = 30.0  # how long stopped tasks get to finish their frames in hand


def one_video(make_detector: Callable, video: Path | str, where: VideoPaths,
              options: VideoOptions, workdir: str) -> VideoSummary | VideoUnreadable:
    """One task: the video through run_video, in the driver's working folder (relative paths
    in the JSON lines stay as a local run writes them); an unreadable video is returned."""
    os.chdir(workdir)
    step = frame_step(make_detector(), options)
    try:
        return run_video(step, open_video(video, options.timeout), where.video, where.json,
                         options, progress=False, crop_name=where.name)
    except VideoUnreadable as err:
        return err


def run_videos_on_ray(make_detector: Callable, videos: Sequence[Path | str],
                      paths: Sequence[VideoPaths], options: VideoOptions, stop: StopRequests,
                      address: str | None, cpus: int,
                      done: Callable[[VideoSummary | VideoUnreadable], None] = lambda r: None
                      ) -> BatchSummary:
    """Every video as a Ray task of `cpus` CPUs (`make_detector()` makes its detector: a
    picklable recipe such as functools.partial(cli.open_detector, ...)); `done(result)` as each
    ends. Returns the summaries in input order, as run_videos does."""
    if any(isinstance(video, int) for video in videos):
        raise UserError("--ray runs video files and streams, not a camera")
    connecting = time.perf_counter()
    cluster = connect(address)
    batch, began = BatchSummary(len(videos)), time.perf_counter()  # the work, from here
    try:
        print(f"ray: cluster at {cluster.address} with {cluster.cpus} CPU(s), ready in "
              f"{began - connecting:.1f} s; {len(videos)} video(s), one task each of {cpus} "
              "CPU(s)", flush=True)
        task = ray.remote(one_video).options(num_cpus=cpus, max_retries=0)
        pending = {task.remote(make_detector, video, where, options, os.getcwd()): index
                   for index, (video, where) in enumerate(zip(videos, paths))}
        results = collect(pending, videos, stop, done)
    finally:
        ray.shutdown()
    for result in results:
        if isinstance(result, VideoUnreadable):
            if len(videos) == 1:
                raise result
            batch.skipped.append(str(result))
        elif result is not None:
            batch.runs.append(result)
    batch.seconds = time.perf_counter() - began
    if batch.skipped and not batch.runs:
        raise UserError(f"none of the {len(videos)} videos could be read (see the warnings)")
    return batch


def collect(pending: dict, videos: Sequence, stop: StopRequests, done: Callable) -> list:
    """Each task's result as it ends, in input order; a stop request cancels what is left (a
    task stopped mid-video leaves that video's earlier results as they were)."""
    results: list = [None] * len(videos)
    with stop:
        while pending and not stop:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_SECONDS)
            for ref in ready:
                index = pending.pop(ref)
                try:
                    results[index] = ray.get(ref)
                except ray.exceptions.RayError as err:
                    for other in pending:
                        ray.cancel(other, force=True)
                    cause = getattr(err, "cause", None)  # what the task raised, as raised
                    if isinstance(cause, UserError):
                        raise cause from None
                    raise UserError(f"the Ray task for {videos[index]} failed: "
                                    f"{one_line(err)}") from None
                done(results[index])
        for ref in pending:  # a KeyboardInterrupt in the task: it finishes or removes its
            ray.cancel(ref)  # staged files, as a local run does on Ctrl-C
        if pending:  # ...before the cluster goes; what they wrote is reported
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=CANCEL_SECONDS)
            for ref in ready:
                index = pending.pop(ref)
                with contextlib.suppress(ray.exceptions.RayError):  # cancelled before it began
                    results[index] = ray.get(ref)
                    done(results[index])
    return results
