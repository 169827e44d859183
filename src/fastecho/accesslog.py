"""--access-log: a Python thread that drains the engine's event rings and logs them.

C workers never wait for this thread: each has a bounded ring, and an event
that does not fit is dropped and counted (stats()["events_dropped"]). This
thread takes events in batches every INTERVAL seconds, writes one NORMAL line
per event, and logs a WARNING whenever the drop count has grown.
"""
from __future__ import annotations

import threading
from collections.abc import Sequence

from fastecho.addresses import format_address
from fastecho.logs import access_log, log

INTERVAL = 0.05  # seconds between drains when the rings are quiet
BATCH = 4096  # events per drain_events() call
FINAL_BATCHES = 10_000  # bound on the last drain after the engine has stopped


def format_event(event: Sequence) -> str:
    """`open 127.0.0.1:53422` or `close 127.0.0.1:53422 in=10 out=10 duration=0.012s reason=eof`.

    A client that came through a proxy (PROXY protocol) is named with the
    proxy after it: `open 203.0.113.7:51000 via 127.0.0.1:40112`. A TLS
    client's certificate subject follows its open:
    `open 127.0.0.1:53422 subject="CN=client,O=Example"` (escaped to
    printable ASCII by the core, so it cannot forge a line).
    """
    if event[0] == "udp":
        return format_udp(event)
    kind, host, port, bytes_in, bytes_out, duration, reason, via, subject = event
    who = format_address(host, port)
    if via is not None:
        who += f" via {format_address(*via)}"
    if kind == "open":
        return f'open {who} subject="{subject}"' if subject else f"open {who}"
    return (f"{kind} {who} in={bytes_in} out={bytes_out} "
            f"duration={duration:.3f}s reason={reason or '-'}")


def format_udp(event: Sequence) -> str:
    """`udp 127.0.0.1 in=12 out=12 bytes_in=1200 bytes_out=1200 over=60.000s`: one UDP source's
    totals over about a minute; `udp (3000 other sources) ...` for those a worker's table
    could not hold apart."""
    _, host, sources, bytes_in, bytes_out, window, datagrams_in, datagrams_out = event
    who = host if host is not None else f"({sources} other sources)"
    return (f"udp {who} in={datagrams_in} out={datagrams_out} bytes_in={bytes_in} "
            f"bytes_out={bytes_out} over={window:.3f}s")


class AccessLogDrainer:
    """Drains engine.drain_events() on a daemon thread until stop()."""

    def __init__(self, engine, interval: float = INTERVAL, batch: int = BATCH) -> None:
        self.engine = engine
        self.interval = interval
        self.batch = batch
        self.logged = 0
        self.dropped_reported = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fastecho-access-log", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _drain_once(self) -> int:
        events = self.engine.drain_events(self.batch)
        for event in events:
            access_log.info("%s", format_event(event))
        self.logged += len(events)
        return len(events)

    def _report_drops(self) -> None:
        dropped = self.engine.stats().get("events_dropped", 0)
        if dropped > self.dropped_reported:
            log.warning("access log: %d event(s) dropped because an event ring was full "
                        "(%d in total); consider a larger --access-log-ring",
                        dropped - self.dropped_reported, dropped)
            self.dropped_reported = dropped

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                full = self._drain_once() == self.batch
                self._report_drops()
            except Exception:  # never let logging take the server down
                log.exception("access log: draining events failed")
                full = False
            if not full:
                self._stop.wait(self.interval)

    def stop(self) -> None:
        """Stop the thread, then drain what is left (call once the engine's threads are joined)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        try:
            for _ in range(FINAL_BATCHES):
                if self._drain_once() < self.batch:
                    break
            self._report_drops()
        except Exception:
            log.exception("access log: draining events failed")
