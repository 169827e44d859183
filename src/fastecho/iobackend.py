"""Which I/O backend the engine's workers run: --io-backend auto|epoll|io_uring.

Both serve every listener kind. io_uring runs plain connections on
completions (multishot receives into provided buffers, one send in flight per
connection) and the rest (TLS, line mode, ws, a PROXY header, near a limit)
on readiness from the ring. `auto` takes io_uring when this build and kernel
allow it, else epoll, saying why in one log line; an explicit io_uring that
cannot be had is refused with one line. The choice is made once, for the
whole server: never per listener.
"""
from __future__ import annotations

import logging

from fastecho import _core
from fastecho.errors import ServeError

log = logging.getLogger("fastecho")

CHOICES = ("auto", "epoll", "io_uring")


def choose(asked: str) -> str:
    """The backend to run for --io-backend `asked`. ServeError (one line) when
    io_uring was asked for and cannot be had."""
    if asked == "epoll":
        return "epoll"
    why = _core.io_uring_unavailable()
    if why is None:
        return "io_uring"
    if asked == "io_uring":
        raise ServeError(f"--io-backend io_uring: {why}; use --io-backend epoll (or auto)")
    log.info("io backend: epoll (%s)", why)
    return "epoll"
