"""systemd integration without libsystemd: sd_notify and socket activation.

notify() is sd_notify(3): one datagram on the AF_UNIX socket named by
$NOTIFY_SOCKET ('@' at the start means Linux's abstract namespace).
activated_fd() is sd_listen_fds(3) for the one socket fastecho serves:
LISTEN_PID must be this process and LISTEN_FDS at least 1; the socket is fd 3.
"""
from __future__ import annotations

import os
import socket

from fastecho.errors import ServeError
from fastecho.logs import log

SD_LISTEN_FDS_START = 3


def notify(state: str, environ: dict[str, str] | None = None) -> bool:
    """Send state (e.g. "READY=1") to systemd; False if not under systemd or it failed.

    A failure is logged, never raised: the server works without its supervisor.
    """
    address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET")
    if not address:
        return False
    if address[0] == "@":
        target: str | bytes = b"\0" + address[1:].encode()
    elif address[0] == "/":
        target = address
    else:
        log.warning("NOTIFY_SOCKET=%s is neither a path nor an abstract socket; not notifying", address)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), target)
    except OSError as e:
        log.warning("cannot notify systemd at %s: %s", address, e.strerror or e)
        return False
    return True


def activated_fd() -> int | None:
    """fd 3 if systemd passed this process a socket (LISTEN_PID/LISTEN_FDS), else None.

    The variables are removed either way, so that nothing started later
    believes the sockets are its own.
    """
    pid = os.environ.pop("LISTEN_PID", None)
    count = os.environ.pop("LISTEN_FDS", None)
    names = os.environ.pop("LISTEN_FDNAMES", None)
    if pid is None or count is None:
        return None
    try:
        if int(pid) != os.getpid():
            return None
        fds = int(count)
    except ValueError:
        raise ServeError(f"bad socket activation variables LISTEN_PID={pid} LISTEN_FDS={count}") from None
    if fds < 1:
        return None
    if fds > 1:
        log.warning("systemd passed %d sockets (%s); serving only the first, fd %d",
                    fds, names or "unnamed", SD_LISTEN_FDS_START)
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + fds):
        try:
            os.set_inheritable(fd, False)
        except OSError:
            pass
    return SD_LISTEN_FDS_START


def adopt_listener(fd: int, source: str) -> socket.socket:
    """The inherited fd as a socket object, if it is a listening TCP socket.

    ServeError (one line naming fd and source) if it is not open, not a
    socket, not TCP, or not listening.
    """
    where = f"fd {fd} (from {source})"
    try:
        os.fstat(fd)
    except OSError:
        raise ServeError(f"cannot serve {where}: not an open file descriptor") from None
    try:
        sock = socket.socket(fileno=fd)
    except OSError as e:
        raise ServeError(f"cannot serve {where}: not a socket ({e.strerror or e})") from None
    try:
        if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
            raise ServeError(f"cannot serve {where}: not a TCP socket")
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise ServeError(f"cannot serve {where}: the socket is not listening")
        sock.setblocking(False)
        os.set_inheritable(fd, False)
    except ServeError:
        sock.detach()  # not ours to close: the caller may still use it
        raise
    return sock


def inherited_listener(fd: int | None) -> socket.socket | None:
    """The listening socket handed in by --fd or by socket activation, if any.

    Call before daemonizing: LISTEN_PID names this process, not a child.
    """
    activated = activated_fd()
    if fd is not None:
        return adopt_listener(fd, "--fd")
    if activated is not None:
        return adopt_listener(activated, "systemd socket activation")
    return None
