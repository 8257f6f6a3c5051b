"""The errors a user can act on, and the one line every script prints for any exception."""
from __future__ import annotations


class UserError(Exception):
    """A problem with what the user gave us; scripts print it on one line and exit 2."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so every `finally` and temporary-file cleanup runs."""


def one_line(err: BaseException, limit: int = 240) -> str:
    """The reason an exception gives, on one line: OpenCV's messages span lines and start with
    its source file (the reason follows 'error: '); others lead with the reason."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    if any(line.startswith("Traceback (most recent call last)") for line in lines):
        return lines[-1][:limit]  # a remote traceback (Ray): the exception is its last line
    opencv = next((line for line in lines if ") error: " in line or line.startswith("error: ")
                   or " error: (" in line), None)
    text = opencv.split("error: ", 1)[1] if opencv else lines[0]
    return text[:limit]
