"""One SCRFD detector shared by many threads (a web server's): every call gets the faces of
its own photo, exactly as a detector used by one thread finds them, on LiteRT (whose
interpreters run one call at a time) and ONNX Runtime, single pass and tiled.

The expected faces come from a second detector of the same model used by this thread alone;
the four photos have different faces, so a call handed another photo's outputs, or a tile of
another photo, differs from them.
"""
from __future__ import annotations

import threading

import cv2
import numpy as np
import pytest

from conftest import SAMPLES, TEST_HW
from scrfdkit import SCRFD
from scrfdkit.files import read_image

pytestmark = pytest.mark.inference

THREADS, CALLS = 4, 25
PHOTOS = ("friends.jpg", "two_people.jpg", "multiface.jpg", "crowd_selfie.jpg")
SCORE = 0.3  # more candidates per photo: a swapped output cannot pass for the right one


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    """Four sample photos, at most 400 px wide: several 128x160 tiles each, fast."""
    images = []
    for name in PHOTOS:
        image = read_image(SAMPLES / name)
        scale = min(1.0, 400 / image.shape[1])
        images.append(cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA))
    return images


@pytest.fixture(scope="module", params=["tflite", "onnx"])
def model(request, tflite_float32, det500m_onnx):
    return tflite_float32 if request.param == "tflite" else det500m_onnx


def same(a, b) -> bool:
    return (np.array_equal(a.boxes, b.boxes) and np.array_equal(a.scores, b.scores)
            and np.array_equal(a.landmarks, b.landmarks))


def shared_calls(detector: SCRFD, photos: list[np.ndarray]) -> tuple[list, list]:
    """THREADS threads, CALLS detect() calls each, all starting together, each thread taking
    the photos in its own order: (photo index, faces, passes, timings) per call, and errors."""
    results, errors = [], []
    start = threading.Barrier(THREADS)

    def work(worker: int) -> None:
        try:
            start.wait()
            for call in range(CALLS):
                index = (worker + call * (1 + worker % 2)) % len(photos)
                faces = detector.detect(photos[index])
                results.append((index, faces, detector.passes, detector.timings))
        except Exception as err:  # the test reports every thread's failure
            errors.append(repr(err))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, errors


@pytest.mark.parametrize("tile, parallel", [(False, False), (True, False), (True, True)],
                         ids=["single-pass", "tiled", "tiled-parallel"])
@pytest.mark.parametrize("workers", [2, 1], ids=["pool", "lock"])
def test_one_detector_shared_by_four_threads_gives_every_call_its_own_photos_faces(
        model, photos, tile, parallel, workers):
    alone = SCRFD(model, TEST_HW, score_threshold=SCORE, threads=1, tile=tile)
    expected = [alone.detect(photo) for photo in photos]
    passes = [alone.detect(photo) and alone.passes for photo in photos]
    assert all(len(faces) for faces in expected)
    assert len({len(faces) for faces in expected}) > 1  # the photos' faces tell them apart
    if tile:
        assert min(passes) > 3

    shared = SCRFD(model, TEST_HW, score_threshold=SCORE, threads=2, tile=tile, workers=workers,
                   parallel_tiles=parallel)
    results, errors = shared_calls(shared, photos)
    assert errors == []
    assert len(results) == THREADS * CALLS
    wrong = [index for index, faces, _, _ in results if not same(faces, expected[index])]
    assert wrong == []
    assert [p for index, _, p, _ in results] == [passes[index] for index, *_ in results]
    assert all(t["inference"] > 0 and "postprocess" in t for *_, t in results)
    assert shared.total_passes == sum(passes[index] for index, *_ in results)
    assert 1 <= len(shared._pool.runners) <= workers


def test_a_tiled_photo_runs_its_passes_on_several_runners_at_once(tflite_float32, photos):
    """The tiles of one photo, from one thread, spread over the detector's one-thread runners:
    a second one is made because two tiles ran at once; the faces are those of passes run
    in turn on one runner."""
    alone = SCRFD(tflite_float32, TEST_HW, threads=1, tile=True, workers=1)
    detector = SCRFD(tflite_float32, TEST_HW, threads=2, tile=True, workers=2,
                     parallel_tiles=True)
    for photo in photos:
        assert same(detector.detect(photo), alone.detect(photo))
    assert len(detector.tile_pool().runners) == 2
    assert {runner.threads for runner in detector.tile_pool().runners} == {1}
    assert alone.tile_pool() is None and len(alone._pool.runners) == 1
