"""Overlap reading, inference and writing: one thread reads ahead, one writes behind; and stop
requests (Ctrl-C, SIGTERM) that let a run finish what it holds.

The model keeps the main thread (and its own worker threads); decoding and encoding run
beside it, since OpenCV and the runtimes release the GIL. Queues are bounded, so memory
stays flat, and order is kept, so outputs line up with inputs exactly as in a plain loop.
"""
from __future__ import annotations

import queue
import signal
import threading
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
_DONE = object()
POLL_SECONDS = 0.1  # how often a blocked thread checks whether the run was stopped


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def read_ahead(items: Iterable[T], depth: int = 4) -> Iterator[T]:
    """Yield `items`, produced by a background thread up to `depth` items ahead.

    An exception in the producer is raised here, at the item where it happened. Closing the
    generator early (break, Ctrl-C) stops the producer.
    """
    buffer: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                buffer.put(item, timeout=POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as err:  # handed to the consumer, raised there
            put(_Failure(err))
            return
        put(_DONE)

    thread = threading.Thread(target=produce, name="read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item = buffer.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()


class WriteBehind:
    """Run submitted calls in order on one background thread, at most `depth` waiting.

    Leaving the `with` block waits for every submitted call, also after Ctrl-C, so what
    was handed over is finished whole. The first error in a call is raised in the caller
    at its next submit() or at the end.
    """

    def __init__(self, depth: int = 4) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="write-behind", daemon=True)

    def __enter__(self) -> "WriteBehind":
        self._thread.start()
        return self

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is _DONE:
                return
            if self._error is None:
                try:
                    job()
                except BaseException as err:
                    self._error = err

    def submit(self, function: Callable, *args, **kwargs) -> None:
        self._raise_error()
        self._queue.put(lambda: function(*args, **kwargs))

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def __exit__(self, *exc) -> None:
        self._queue.put(_DONE)
        while self._thread.is_alive():  # join in slices: Ctrl-C must not leave it half-way
            self._thread.join(POLL_SECONDS)
        if exc[0] is None:
            self._raise_error()


class StopRequests:
    """Ctrl-C and SIGTERM, while inside `with`, only ask the job to stop: the frames in hand are
    finished (video and JSON line together), so the outputs hold the same frames and the
    video stays playable. Call it with a reason to ask from elsewhere (a window's q key).
    Handlers are set only in the main thread (the only one Python lets set them)."""

    def __init__(self) -> None:
        self.reasons: list[str] = []
        self._handlers: dict = {}
        self._depth = 0

    def __call__(self, reason: str) -> None:
        self.reasons.append(reason)

    def __bool__(self) -> bool:
        return bool(self.reasons)

    @property
    def reason(self) -> str:
        return self.reasons[0] if self.reasons else ""

    @property
    def terminated(self) -> bool:
        return self.reason.startswith("terminated")

    def _signalled(self, signum: int, _frame) -> None:
        self("interrupted (Ctrl-C)" if signum == signal.SIGINT else "terminated (SIGTERM)")

    def __enter__(self) -> "StopRequests":
        self._depth += 1
        if self._depth == 1 and threading.current_thread() is threading.main_thread():
            self._handlers = {sig: signal.signal(sig, self._signalled)
                              for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        self._depth -= 1
        if self._depth == 0:
            for sig, handler in self._handlers.items():
                signal.signal(sig, handler)
            self._handlers = {}
