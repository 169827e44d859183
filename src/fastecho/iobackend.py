"""Which I/O backend the engine's workers run: --io-backend auto|epoll|io_uring.

epoll serves every listener kind. io_uring (completions: multishot receives
into provided buffers, one send in flight per connection) serves tcp and
tcp+proxy listeners, raw or line mode. `auto` takes io_uring when this build
and kernel allow it and every listener is one it serves, else epoll, saying
why in one log line; an explicit io_uring that cannot be had is refused with
one line. The choice is made once, for the whole server: never per listener.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable

from fastecho import _core
from fastecho.errors import ServeError
from fastecho.listeners import Listener

log = logging.getLogger("fastecho")

CHOICES = ("auto", "epoll", "io_uring")


def unserved_by_io_uring(listeners: Iterable[Listener]) -> str | None:
    """The first listener the io_uring backend does not serve (its URL), or None."""
    for listener in listeners:
        if listener.tls:
            return listener.url
    return None


def choose(asked: str, listeners: Iterable[Listener]) -> str:
    """The backend to run for --io-backend `asked` over these listeners. ServeError
    (one line) when io_uring was asked for and cannot serve them."""
    if asked == "epoll":
        return "epoll"
    why = _core.io_uring_unavailable()
    if why is None:
        unserved = unserved_by_io_uring(listeners)
        if unserved is not None:
            why = f"io_uring does not serve TLS listeners ({unserved})"
    if why is None:
        return "io_uring"
    if asked == "io_uring":
        raise ServeError(f"--io-backend io_uring: {why}; use --io-backend epoll (or auto)")
    log.info("io backend: epoll (%s)", why)
    return "epoll"
