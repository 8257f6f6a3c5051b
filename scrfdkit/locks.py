"""Exclusive locks on output folders, so runs at once into one folder never lose each other's
results: a lock on the folder itself (flock on its descriptor), which leaves no file behind
and is released by the kernel when the process ends, however it ends.
"""
from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Iterator

from .errors import UserError

try:
    import fcntl
except ImportError:  # Windows: no flock; runs at once into one folder are then not guarded
    fcntl = None  # type: ignore[assignment]


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, busy: str | None = None, create: bool = True
                ) -> Iterator[None]:
    """Hold an exclusive lock on `folder` for the `with` block (create False: none when the
    folder does not exist, where there is nothing to guard; else it is created).

    busy None: wait for another holder to finish (a short merge-and-replace). Else refuse at
    once with UserError(busy) while another process holds it (a long run)."""
    path = Path(folder)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    if fcntl is None or not path.is_dir():
        yield
        return
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | (fcntl.LOCK_NB if busy else 0))
        except OSError as err:
            if busy and err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise UserError(busy) from None
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                raise  # a filesystem without flock (some network mounts) is not guarded
        yield
    finally:
        os.close(descriptor)  # closing the last descriptor releases the lock
