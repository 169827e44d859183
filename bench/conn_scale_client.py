"""One client process of bench/conn_scale.py: opens its share of the
connections, holds them, echoes on each once more when told, then closes them.

    python bench/conn_scale_client.py --port P --first I --count N [--source-base 127.1.0.0]
                                      --per-source K --window W --close-batch B --deadline T

Connection i (a global index, I <= i < I+N) binds to source address
127.1.0.0 + i // K with IP_BIND_ADDRESS_NO_PORT, so that the kernel picks its
port at connect time and each source address has its own ephemeral range.
It sends "<i>-open" (16 bytes) and must get exactly those bytes back; at the
end, "<i>-end." likewise. Each payload names its connection, so an echo that
went to the wrong socket is a mismatch, not a pass.

It talks to its parent in lines. Once started it prints one JSON line
{"phase": "ready"} and waits for "open" on stdin; after opening it prints
{"phase": "open", ...} and waits for "end"; after the second echo it
prints {"phase": "end", ...} and waits for "close"; after closing everything
it prints {"phase": "closed"} and exits 0. EOF on stdin, SIGTERM, its
parent's death or the deadline (CLOCK_MONOTONIC, the same clock in every
process) end it early; the kernel then closes whatever it held. SIGINT is
ignored: on Ctrl-C the parent stops every client.

Opening stops at the first connection that fails: a failure here is a limit
being reached (fds, ports, the server's cap, memory), and going on would only
repeat it. Each failure is counted by kind, with the errno's name.

Held connections are plain ints in an array, not socket objects: at a
million connections a Python object each would be the client's largest cost.
"""
from __future__ import annotations

import argparse
import errno
import ipaddress
import json
import os
import select
import signal
import socket
import sys
import time
from array import array
from collections import Counter

PAYLOAD_SIZE = 16
PAYLOAD_OPEN, PAYLOAD_END = "open", "end."
EXPIRY_CHECK_S = 0.5  # how often in-flight connections are checked for their timeout


def payload(index: int, phase: str) -> bytes:
    data = f"{index:010d}-{phase}\n".encode()
    assert len(data) == PAYLOAD_SIZE
    return data


def error_kind(step: str, e: OSError) -> str:
    """'connect:EADDRNOTAVAIL' and the like: what failed, and how."""
    return f"{step}:{errno.errorcode.get(e.errno or 0, str(e.errno))}"


class Exchanges:
    """Echoes one payload on many fds, at most `window` at a time, on one
    epoll set (EPOLLONESHOT: a connection that got its echo stays in the
    set, disarmed, until the next phase re-arms it)."""

    def __init__(self, epoll: select.epoll, window: int, timeout_s: float, deadline: float,
                 close_failed: bool) -> None:
        self.epoll, self.window, self.timeout_s, self.deadline = epoll, window, timeout_s, deadline
        # Opening: a failed fd is closed at once. Later: it stays in `held`
        # and is closed with the rest, so that no fd is closed twice.
        self.close_failed = close_failed
        # fd -> [index, expected echo, bytes so far, started at, waiting to write]
        self.inflight: dict[int, list] = {}
        self.errors: Counter[str] = Counter()
        self.first_error = ""
        self.parent = os.getppid()
        self.last_done = time.monotonic()  # when the last echo came back whole
        self._next_expiry_check = 0.0

    def record(self, kind: str, detail: str = "") -> None:
        self.errors[kind] += 1
        if not self.first_error:
            self.first_error = f"{kind} {detail}".strip()

    def fail(self, fd: int, kind: str, detail: str = "") -> None:
        self.record(kind, detail or f"(connection {self.inflight[fd][0]})")
        del self.inflight[fd]
        if self.close_failed:
            os.close(fd)

    def start(self, fd: int, index: int, data: bytes, registered: bool) -> None:
        """Send data on fd (or wait until it can be sent: a connect still under way)."""
        entry = [index, data, b"", time.monotonic(), False]
        self.inflight[fd] = entry
        try:
            os.write(fd, data)  # 16 bytes into an empty socket buffer: all or nothing
            events = select.EPOLLIN
        except BlockingIOError:
            entry[4] = True
            events = select.EPOLLOUT
        except OSError as e:
            self.fail(fd, error_kind("send", e))
            return
        (self.epoll.modify if registered else self.epoll.register)(fd, events | select.EPOLLONESHOT)

    def room(self) -> bool:
        return len(self.inflight) < self.window

    def poll(self, done: array) -> None:
        """Waits a little for events, and appends each fd whose echo came back whole to done."""
        now = time.monotonic()
        if now > self.deadline:
            raise TimeoutError
        if os.getppid() != self.parent:  # the parent died (SIGKILL): nobody will ever stop us
            os._exit(1)
        for fd, _ in self.epoll.poll(0.05, self.window):
            entry = self.inflight.get(fd)
            if entry is None:
                continue
            if entry[4]:  # connected (or failed): send now
                entry[4] = False
                try:
                    os.write(fd, entry[1])
                except OSError as e:
                    self.fail(fd, error_kind("connect", e))
                    continue
                self.epoll.modify(fd, select.EPOLLIN | select.EPOLLONESHOT)
                continue
            try:
                got = os.read(fd, PAYLOAD_SIZE - len(entry[2]))
            except BlockingIOError:
                got = None
            except OSError as e:
                self.fail(fd, error_kind("recv", e))
                continue
            if got == b"":
                self.fail(fd, "recv:EOF", f"(the server closed connection {entry[0]})")
                continue
            entry[2] += got or b""
            if len(entry[2]) < PAYLOAD_SIZE:
                self.epoll.modify(fd, select.EPOLLIN | select.EPOLLONESHOT)
                continue
            if entry[2] != entry[1]:
                self.fail(fd, "mismatch", f"(connection {entry[0]}: sent {entry[1]!r}, got {entry[2]!r})")
                continue
            del self.inflight[fd]
            done.append(fd)
            self.last_done = time.monotonic()
        if now >= self._next_expiry_check:
            self._next_expiry_check = now + EXPIRY_CHECK_S
            for fd, entry in list(self.inflight.items()):
                if now - entry[3] > self.timeout_s:
                    self.fail(fd, "timeout:connect" if entry[4] else "timeout:echo",
                              f"(connection {entry[0]}: nothing for {self.timeout_s:g} s)")


class OpenFailed(Exception):
    """A connection could not be started; args[0] is its error kind."""


def open_one(host: str, port: int, source: str) -> int:
    """A non-blocking socket bound to source, its connect started; the raw fd."""
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    except OSError as e:
        raise OpenFailed(error_kind("socket", e)) from None
    with sock:
        try:
            # The port is chosen at connect(), per source address and
            # destination, so every source address has the whole ephemeral
            # range to itself.
            sock.setsockopt(socket.SOL_IP, socket.IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source, 0))
        except OSError as e:
            raise OpenFailed(error_kind("bind", e)) from None
        code = sock.connect_ex((host, port))
        if code not in (0, errno.EINPROGRESS):
            raise OpenFailed(error_kind("connect", OSError(code, os.strerror(code))))
        return sock.detach()


def open_all(args: argparse.Namespace, ex: Exchanges) -> tuple[array, float, float]:
    """Opens and echoes on connections first..first+count-1 until one fails; returns the held fds."""
    held = array("i")
    base = int(ipaddress.IPv4Address(args.source_base))
    started = time.monotonic()
    next_index, stop_at = args.first, args.first + args.count
    while (next_index < stop_at and not ex.errors) or ex.inflight:
        while next_index < stop_at and not ex.errors and ex.room():
            source = str(ipaddress.IPv4Address(base + next_index // args.per_source))
            try:
                fd = open_one(args.host, args.port, source)
            except OpenFailed as e:
                ex.record(e.args[0], f"(connection {next_index}, source {source}, {len(held)} held)")
                break
            ex.start(fd, next_index, payload(next_index, PAYLOAD_OPEN), registered=False)
            next_index += 1
        ex.poll(held)
    return held, started, ex.last_done  # not the end of the loop: that may be a timeout's wait


def echo_again(args: argparse.Namespace, ex: Exchanges, held: array) -> int:
    """Echoes PAYLOAD_END once more on every held connection; returns how many came back right."""
    done = array("i")
    position = 0  # held[position] is connection first + position
    while position < len(held) or ex.inflight:
        while position < len(held) and ex.room():
            fd = held[position]
            ex.start(fd, args.first + position, payload(args.first + position, PAYLOAD_END), registered=True)
            position += 1
        ex.poll(done)
    return len(done)


def close_all(held: array, batch: int, deadline: float) -> None:
    """Closes every held fd, a batch at a time, letting the kernel's orphaned
    sockets (closed, FIN not yet answered) drain between batches: past
    net.ipv4.tcp_max_orphans it would reset connections instead."""
    max_orphans = int(open("/proc/sys/net/ipv4/tcp_max_orphans").read())
    for start in range(0, len(held), batch):
        for fd in held[start:start + batch]:
            os.close(fd)
        while orphans() > max_orphans // 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    del held[:]


def orphans() -> int:
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                fields = line.split()
                return int(fields[fields.index("orphan") + 1])
    return 0


def report(**fields) -> None:
    print(json.dumps(fields), flush=True)


def wait_for(word: str, deadline: float) -> bool:
    """True once the parent writes word on stdin; False on EOF or at the deadline."""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([sys.stdin], [], [], min(1.0, max(0.0, deadline - time.monotonic())))
        if ready:
            line = sys.stdin.readline()
            if not line:
                return False
            if line.strip() == word:
                return True
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--first", type=int, required=True, help="global index of this process's first connection")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--source-base", default="127.1.0.0")
    parser.add_argument("--per-source", type=int, required=True, help="connections per source address")
    parser.add_argument("--window", type=int, required=True, help="connects and echoes in flight at once")
    parser.add_argument("--conn-timeout", type=float, default=10.0, help="seconds one connect or echo may take")
    parser.add_argument("--close-batch", type=int, required=True)
    parser.add_argument("--deadline", type=float, required=True, help="time.monotonic() by which to be gone")
    args = parser.parse_args()
    # SIGTERM ends it at once, without a traceback; the kernel closes the
    # fds. Ctrl-C is the parent's to handle: it stops every client itself.
    signal.signal(signal.SIGTERM, lambda *_: os._exit(143))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    epoll = select.epoll()
    try:
        # Every client starts opening at once, when told, so that the
        # accept rate does not include the others' start-up.
        report(phase="ready")
        if not wait_for("open", args.deadline):
            return 1
        ex = Exchanges(epoll, args.window, args.conn_timeout, args.deadline, close_failed=True)
        held, started, finished = open_all(args, ex)
        report(phase="open", held=len(held), errors=ex.errors, first_error=ex.first_error,
               started=started, finished=finished)
        if not wait_for("end", args.deadline):
            return 1
        ex = Exchanges(epoll, args.window, args.conn_timeout, args.deadline, close_failed=False)
        echoed = echo_again(args, ex, held)
        report(phase="end", echoed=echoed, errors=ex.errors, first_error=ex.first_error)
        if not wait_for("close", args.deadline):
            return 1
        close_all(held, args.close_batch, args.deadline)
        report(phase="closed")
        return 0
    except TimeoutError:
        report(phase="timeout")
        return 1
    finally:
        epoll.close()


if __name__ == "__main__":
    sys.exit(main())
