"""Whether a named Ray cluster answers at all, found out in a stated time and without Ray.

ray.init retries an address where nothing listens for minutes, printing only its own retry
lines, and holds Ctrl-C and SIGTERM meanwhile; a plain TCP connection says in seconds.
"""
from __future__ import annotations

import os
import socket

from ..errors import UserError

CONNECT_TIMEOUT = 15.0  # seconds for a named cluster's address to answer before giving up


def check_reachable(address: str | None, timeout: float = CONNECT_TIMEOUT) -> None:
    """One-line UserError, within `timeout` seconds, when the cluster named by `address` (or
    by $RAY_ADDRESS when address is empty) takes no TCP connection. 'auto', 'local' and no
    address at all are left to Ray: they name no host to try."""
    named = address or os.environ.get("RAY_ADDRESS", "")
    where = f"--ray {named}" if address else f"RAY_ADDRESS {named}"
    text = named.removeprefix("ray://").rstrip("/")
    if not named or text in ("auto", "local"):
        return
    host, _, port_text = text.rpartition(":")
    try:
        port = int(port_text)
        if not host or not 0 < port < 65536:
            raise ValueError
    except ValueError:
        raise UserError(f"{where}: expected HOST:PORT (for example 127.0.0.1:6379, or "
                        "ray://HOST:10001), 'auto' or 'local'") from None
    try:
        socket.create_connection((host.strip("[]"), port), timeout=timeout).close()
    except TimeoutError:
        raise UserError(f"{where}: no Ray cluster answered there within {timeout:g} s; is "
                        "`ray start --head` running there, and the port open?") from None
    except OSError as err:
        reason = (err.strerror or str(err)).lower()
        raise UserError(f"{where}: cannot reach a Ray cluster there ({reason}); is `ray start "
                        "--head` running there?") from None
