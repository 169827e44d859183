"""Prometheus metrics at /metrics, read from the engine's C counters at scrape time.

Nothing polls: each scrape calls engine.stats() (a lock-free snapshot of the
C atomics) through EngineCollector, so the numbers are exactly the engine's.
prometheus_client writes the exposition; the HTTP side is metrics_http's
bounded server on its own daemon thread (its docstring says why not
prometheus_client's).
"""
from __future__ import annotations

import errno
import os
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector

from fastecho.addresses import format_address
from fastecho.errors import ServeError
from fastecho.metrics_http import LISTEN_BACKLOG, HttpServer

INDEX = b'<html><body><a href="/metrics">/metrics</a></body></html>\n'

# (metric name, help, engine stats key); counters end in _total.
COUNTERS = (
    ("fastecho_connections_total", "Connections accepted.", "connections_accepted"),
    ("fastecho_connections_closed_total", "Connections closed.", "connections_closed"),
    ("fastecho_bytes_received_total", "Bytes read from clients.", "bytes_received"),
    ("fastecho_bytes_sent_total", "Bytes written to clients.", "bytes_sent"),
    ("fastecho_accept_errors_total", "accept() failures other than EAGAIN.", "accept_errors"),
    ("fastecho_log_events_dropped_total",
     "Access log events dropped because a worker's event ring was full.", "events_dropped"),
    ("fastecho_lines_too_long_total",
     "Line mode: connections closed for a line longer than --max-line.", "lines_too_long"),
    ("fastecho_idle_timeouts_total", "Connections closed by --idle-timeout.", "idle_timeouts"),
    ("fastecho_accept_fd_exhausted_total",
     "Accepts put off for want of file descriptors (EMFILE, ENFILE, or the fds kept in reserve).",
     "accept_fd_exhausted"),
    ("fastecho_memory_budget_waits_total",
     "Times a connection stopped being read because --max-memory was reached.",
     "memory_budget_waits"),
    ("fastecho_tls_handshakes_total", "TLS handshakes completed.", "tls_handshakes"),
    ("fastecho_tls_resumed_total", "TLS handshakes that resumed a session (a ticket).", "tls_resumed"),
    ("fastecho_splice_bytes_total",
     "Bytes echoed through a pipe with splice(2), never copied to user space (also in "
     "fastecho_bytes_sent_total).", "splice_bytes"),
    ("fastecho_tls_handshake_failures_total",
     "TLS handshakes that failed: not TLS, no acceptable client certificate, no common version "
     "or cipher (also in fastecho_closes_total{reason=\"tls-handshake\"}).", "tls_handshake_failures"),
)
GAUGES = (
    ("fastecho_connections_active", "Connections open now.", "connections_active"),
    ("fastecho_memory_held_bytes",
     "Bytes of buffered output and partial lines held now, against --max-memory.", "memory_held"),
    ("fastecho_splice_pipes",
     "Pipes open now for splice: held by bulk connections, or kept empty for reuse (2 fds each).",
     "splice_pipes"),
)
# One counter with a reason label for each way a connection is refused.
REJECTED = ("fastecho_connections_rejected_total", "Connections refused by a limit.", {
    "max_connections": "rejected_max_connections",
    "max_connections_per_ip": "rejected_per_ip",
    "not_allowed": "rejected_not_allowed",
    "proxy_untrusted": "rejected_proxy_untrusted",
})
# fastecho_io_backend_info{backend="epoll"|"io_uring"} 1
IO_BACKEND = ("fastecho_io_backend", "The I/O backend the workers run (--io-backend).")
# Closes by reason: the reasons and their names are the C core's own table.
CLOSES = ("fastecho_closes_total", "Connections closed, by reason.", "closes")
# Per listener (label: its URL): connections accepted, and open now.
LISTENER_ACCEPTED = ("fastecho_listener_connections_total", "Connections accepted, by listener.")
LISTENER_ACTIVE = ("fastecho_listener_connections_active", "Connections open now, by listener.")
# Per UDP listener: datagrams and bytes by direction, and drops by reason (the core's table).
UDP_DATAGRAMS = ("fastecho_udp_datagrams_total", "UDP datagrams received (in) and echoed (out), by listener.")
UDP_BYTES = ("fastecho_udp_bytes_total", "UDP payload bytes received (in) and echoed (out), by listener.")
UDP_DROPPED = ("fastecho_udp_dropped_total", "UDP datagrams not echoed, by listener and reason.")
# WebSocket (every ws/wss listener together): the HTTP answers by status, the
# messages echoed, the pings answered, the close frames sent by code.
WS_HTTP = ("fastecho_ws_http_responses_total",
           "HTTP answers on ws listeners, by status: 101 upgrades, 200 the page, 4xx refusals.")
WS_MESSAGES = ("fastecho_ws_messages_total", "WebSocket messages echoed (text and binary, fragments reassembled).")
WS_PINGS = ("fastecho_ws_pings_total", "WebSocket pings answered with a pong.")
WS_CLOSES = ("fastecho_ws_closes_total",
             "WebSocket close frames sent, by code: the client's code echoed, 1001 at a stop, "
             "1002/1007/1009 when the client broke the protocol.")


class EngineCollector:
    """Turns one engine.stats() snapshot into metric families, per scrape.

    After the engine is closed, the last snapshot is served.
    """

    def __init__(self, stats: Callable[[], dict[str, Any]], listeners: Sequence[str] = (),
                 io_backend: str = "epoll") -> None:
        self._stats = stats
        self._listeners = list(listeners)  # URLs, in the engine's order
        self._io_backend = io_backend
        self._last: dict[str, Any] = {}
        self._lock = threading.Lock()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            try:
                self._last = dict(self._stats())
            except ValueError:  # the engine is closed
                pass
            return self._last

    def collect(self) -> Iterator[Metric]:
        stats = self.snapshot()
        if not stats:  # never scraped while the engine was up
            return
        yield InfoMetricFamily(*IO_BACKEND, value={"backend": self._io_backend})
        for name, help_text, key in COUNTERS:
            yield CounterMetricFamily(name, help_text, value=stats[key])
        for name, help_text, key in GAUGES:
            yield GaugeMetricFamily(name, help_text, value=stats[key])
        name, help_text, reasons = REJECTED
        family = CounterMetricFamily(name, help_text, labels=["reason"])
        for reason, key in reasons.items():
            family.add_metric([reason], stats[key])
        yield family
        name, help_text, key = CLOSES
        family = CounterMetricFamily(name, help_text, labels=["reason"])
        for reason, count in stats[key].items():
            family.add_metric([reason], count)
        yield family
        accepted = CounterMetricFamily(*LISTENER_ACCEPTED, labels=["listener"])
        active = GaugeMetricFamily(*LISTENER_ACTIVE, labels=["listener"])
        for url, (opened, closed) in zip(self._listeners, stats["listeners"]):
            if url.startswith("udp://"):
                continue  # no connections: fastecho_udp_* below
            accepted.add_metric([url], opened)
            active.add_metric([url], max(opened - closed, 0))
        yield accepted
        yield active
        yield from self._udp(stats)
        yield from self._ws(stats["ws"])

    def _udp(self, stats: dict[str, Any]) -> Iterator[Metric]:
        datagrams = CounterMetricFamily(*UDP_DATAGRAMS, labels=["listener", "direction"])
        payload = CounterMetricFamily(*UDP_BYTES, labels=["listener", "direction"])
        dropped = CounterMetricFamily(*UDP_DROPPED, labels=["listener", "reason"])
        for url, udp in zip(self._listeners, stats["udp"]):
            if not url.startswith("udp://"):
                continue
            for direction in ("in", "out"):
                datagrams.add_metric([url, direction], udp[direction])
                payload.add_metric([url, direction], udp[f"bytes_{direction}"])
            for reason, count in udp["dropped"].items():
                dropped.add_metric([url, reason], count)
        yield datagrams
        yield payload
        yield dropped

    @staticmethod
    def _ws(ws: dict[str, Any]) -> Iterator[Metric]:
        http = CounterMetricFamily(*WS_HTTP, labels=["status"])
        for status, count in ws["http"].items():
            http.add_metric([str(status)], count)
        yield http
        yield CounterMetricFamily(*WS_MESSAGES, value=ws["messages"])
        yield CounterMetricFamily(*WS_PINGS, value=ws["pings"])
        closes = CounterMetricFamily(*WS_CLOSES, labels=["code"])
        for code, count in ws["closes"].items():
            closes.add_metric([code], count)
        yield closes

    def describe(self) -> Iterator[Metric]:
        return iter(())  # nothing to check at registration: names are fixed above


@dataclass
class MetricsServer:
    host: str
    port: int
    _httpd: HttpServer

    @property
    def url(self) -> str:
        return f"http://{format_address(self.host, self.port)}/metrics"

    def stop(self) -> None:
        self._httpd.stop()


def listen(host: str, port: int) -> socket.socket:
    """The metrics listener on host:port; ServeError with one clear line if not."""
    try:
        family, _, _, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        # Dual stack on "::", as the echo listener (and the old server) had.
        return socket.create_server(address, family=family, backlog=LISTEN_BACKLOG,
                                    dualstack_ipv6=family == socket.AF_INET6)
    except socket.gaierror as e:
        reason = e.strerror
    except OSError as e:
        # create_server writes the address into strerror; the errno says it all.
        reason = "address already in use" if e.errno == errno.EADDRINUSE else os.strerror(e.errno)
    raise ServeError(f"cannot serve metrics on {format_address(host, port)}: {reason}")


def start(host: str, port: int, stats: Callable[[], dict[str, Any]],
          listeners: Sequence[str] = (), io_backend: str = "epoll") -> MetricsServer:
    """Serve the engine's counters (plus process_* metrics) on host:port. ServeError if it cannot.

    listeners: the engine's listener URLs, in its order, for the listener label;
    io_backend: the backend its workers run.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(stats, listeners, io_backend))
    ProcessCollector(registry=registry)
    httpd = HttpServer(listen(host, port), {
        "/metrics": lambda: (CONTENT_TYPE_LATEST, generate_latest(registry)),
        "/": lambda: ("text/html; charset=utf-8", INDEX),
    })
    httpd.start()
    return MetricsServer(host, httpd.port, httpd)
