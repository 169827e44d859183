"""Run a benchmark plan: servers x workloads x rounds, interleaved.

Each run starts a fresh server pinned to the server CPUs, loads it from this
process (pinned to the client CPUs) with the C load generator, and stops it.
Within a round every workload runs every server back to back (A B C A B C
...), so slow drift of a shared machine hits all servers alike; rows report
the median over rounds and the median of the per-round ratios to fastecho.

With TLS every server serves one certificate made for the run, and the load
generator verifies it. In handshake mode a "message" is one cycle of
connect, full handshake, one echo and close, so every per-message figure
reads per handshake. Over UDP a "message" is a datagram echoed in time, a
"connection" a socket, and each sample also says what became of the
datagrams sent in the window: lost, late, duplicated, reordered. Over
WebSocket a message is one masked binary frame and its echo, every upgrade
done before the window.
"""
from __future__ import annotations

import os
import statistics
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from fastecho.bench.certs import TlsFiles
from fastecho.bench.errors import BenchError, LoadError
from fastecho.bench.servers import HOST, IO_BACKEND_SERVERS, SERVERS, ServerSpec, running_server

BASELINE_SERVER = "fastecho"  # ratios are relative to this server (see baseline_row)
SETUP_ALLOWANCE_S = 0.6  # start + connect + stop of one run, for estimates
UDP_DRAIN_ESTIMATE_S = 0.2  # a UDP run waits up to its loss timeout for the window's last datagrams


@dataclass(frozen=True)
class Workload:
    conns: int
    size: int
    depth: int = 1
    handshakes: bool = False  # each conn: connect, handshake, one echo, close, again
    udp: bool = False  # conns are UDP sockets, messages datagrams

    @property
    def label(self) -> str:
        if self.handshakes:
            return f"{self.conns} conns × handshake + {format_size(self.size)} echo + close"
        if self.udp:
            return f"{self.conns} sockets × {format_size(self.size)} datagrams, depth {self.depth}"
        depth = "ping-pong" if self.depth == 1 else f"depth {self.depth}"
        return f"{self.conns} conns × {format_size(self.size)}, {depth}"


@dataclass(frozen=True)
class Plan:
    servers: Sequence[str]
    workloads: Sequence[Workload]
    rounds: int = 3
    duration: float = 3.0
    warmup: float = 0.5
    threads: int = 1  # threads of the C servers (fastecho, reference)
    baseline_threads: int = 32  # thread pool of the Python baseline
    server_cpus: frozenset[int] | None = None
    client_cpus: frozenset[int] | None = None
    connect_timeout: float = 10.0
    transport: str = "tcp"  # or "tls", "udp" or "ws"
    tls_version: str | None = None  # with tls: "1.2" or "1.3" only; None: either
    handshakes: bool = False  # handshake mode: figures are per handshake
    udp_timeout: float | None = None  # with udp: seconds before a datagram is lost; None: the generator's default

    @property
    def udp(self) -> bool:
        return self.transport == "udp"

    @property
    def ws(self) -> bool:
        return self.transport == "ws"

    @property
    def transport_label(self) -> str:
        if self.transport == "ws":
            return "WebSocket"
        if self.transport == "udp":
            return "UDP"
        if self.transport != "tls":
            return "TCP"
        return f"TLS {self.tls_version}" if self.tls_version else "TLS"

    @property
    def run_count(self) -> int:
        return self.rounds * len(self.workloads) * len(self.servers)

    def estimated_seconds(self) -> float:
        drain = (self.udp_timeout or UDP_DRAIN_ESTIMATE_S) if self.udp else 0.0
        return self.run_count * (self.warmup + self.duration + SETUP_ALLOWANCE_S + drain)


@dataclass(frozen=True)
class Sample:
    """One server under one workload in one round."""

    msgs_per_s: float
    mib_per_s: float
    p50_us: float
    p99_us: float
    p999_us: float
    cpu_us_per_msg: float | None  # None when nothing was echoed
    user_us_per_msg: float | None
    sys_us_per_msg: float | None
    starved_conns: int
    min_conn_msgs: int
    max_conn_msgs: int
    rss_kib: int
    client_cpu_busy: float  # share of one CPU the load generator used; near 1 = it was the limit
    tls: str | None = None  # what the TLS handshake negotiated; None over plain TCP
    # UDP only (else None): the datagrams sent in the window and what became of them.
    sent: int | None = None
    lost: int | None = None  # not echoed within the loss timeout (late ones included)
    loss_percent: float | None = None  # lost / sent; 0 when nothing was sent
    late: int | None = None
    duplicates: int | None = None
    reordered: int | None = None

    @classmethod
    def from_load(cls, result: Mapping, size: int) -> Sample:
        """In handshake mode each handshake echoes one message, so the
        message counts are handshake counts; over UDP they count datagrams."""
        messages, elapsed = result["messages"], result["elapsed_s"]
        user, system = result["server_user_us"], result["server_sys_us"]
        sent, lost = result.get("sent"), result.get("lost")
        udp = {}
        if sent is not None:
            udp = {"sent": sent, "lost": lost, "loss_percent": 100 * lost / sent if sent else 0.0,
                   "late": result["late"], "duplicates": result["duplicates"], "reordered": result["reordered"]}
        return cls(
            msgs_per_s=messages / elapsed,
            mib_per_s=messages * size / elapsed / 2**20,
            p50_us=result["p50_ns"] / 1000,
            p99_us=result["p99_ns"] / 1000,
            p999_us=result["p999_ns"] / 1000,
            cpu_us_per_msg=(user + system) / messages if messages else None,
            user_us_per_msg=user / messages if messages else None,
            sys_us_per_msg=system / messages if messages else None,
            starved_conns=result["starved_conns"],
            min_conn_msgs=result["min_conn_messages"],
            max_conn_msgs=result["max_conn_messages"],
            rss_kib=result["server_rss_kib"],
            client_cpu_busy=result["client_cpu_us"] / 1e6 / elapsed,
            tls=result.get("tls"),
            **udp,
        )


@dataclass
class Row:
    """One server under one workload: its samples by round, or why it failed."""

    server: str
    workload: Workload
    samples: dict[int, Sample] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.samples)

    def median(self, metric: str) -> float | None:
        values = [v for s in self.samples.values() if (v := getattr(s, metric)) is not None]
        if not values:
            return None
        # median_low keeps counts (starved connections, KiB) whole numbers
        return statistics.median_low(values) if isinstance(values[0], int) else statistics.median(values)

    def ratio_to(self, other: Row | None, metric: str) -> float | None:
        """Median over rounds of self[metric] / other[metric] in the same round."""
        if other is None or not self.ok or not other.ok:
            return None
        ratios = []
        for round_index, sample in self.samples.items():
            theirs = other.samples.get(round_index)
            mine = getattr(sample, metric)
            base = getattr(theirs, metric) if theirs else None
            if mine is not None and base:
                ratios.append(mine / base)
        return statistics.median(ratios) if ratios else None


def format_size(size: int) -> str:
    for unit, scale in (("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} B"


@contextmanager
def pinned_to(cpus: frozenset[int] | None) -> Iterator[None]:
    """Pin the calling thread (which runs the load generator) for a while."""
    if not cpus:
        yield
        return
    own = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, own)


def measure(spec: ServerSpec, workload: Workload, plan: Plan, seed: int, tls: TlsFiles | None = None) -> Sample:
    """Start `spec` (serving TLS with `tls`, when given, or UDP or WebSocket
    in such a plan), load it with `workload`, stop it. Server CPU counts every process
    of the server side. Raises BenchError."""
    from fastecho.bench._loadgen import run_load

    client_tls = tls is not None and spec.client_tls
    with running_server(spec, threads=plan.threads, baseline_threads=plan.baseline_threads,
                        cpus=set(plan.server_cpus) if plan.server_cpus else None, tls=tls,
                        udp=plan.udp, ws=plan.ws) as server:
        try:
            result = run_load(HOST, server.port, workload.conns, workload.size, workload.depth,
                              warmup=plan.warmup, duration=plan.duration, server_pids=server.pids,
                              seed=seed, connect_timeout=plan.connect_timeout, handshakes=workload.handshakes,
                              tls=client_tls, tls_version=plan.tls_version if client_tls else None,
                              tls_ca_file=tls.ca if client_tls else None, udp=plan.udp,
                              udp_timeout=plan.udp_timeout or 0.0, ws=plan.ws and spec.client_ws)
        except LoadError as e:
            exited = server.exit_description()
            raise LoadError(f"{e} (server {exited})" if exited else str(e)) from None
        return Sample.from_load(result, workload.size)


ProgressCallback = Callable[[int, str, Workload], None]  # (round, server, workload) before each run


def run_plan(plan: Plan, specs: Mapping[str, ServerSpec] = SERVERS,
             on_run: ProgressCallback | None = None, tls: TlsFiles | None = None) -> list[Row]:
    """Run every server under every workload for plan.rounds interleaved
    rounds; a TLS plan needs `tls`, the certificate every server serves. A
    failure of one server under one workload is recorded in its row (and
    that pair is not run again); everything else carries on.
    KeyboardInterrupt propagates after the running server is stopped."""
    if (plan.transport == "tls") != (tls is not None):
        raise ValueError("a TLS plan needs a certificate (tls=...), and only a TLS plan takes one")
    rows = {(server, w): Row(server, w) for w in plan.workloads for server in plan.servers}
    with pinned_to(plan.client_cpus):
        for round_index in range(plan.rounds):
            for workload in plan.workloads:
                for server in plan.servers:
                    if on_run:
                        on_run(round_index, server, workload)
                    row = rows[server, workload]
                    if row.error is not None:
                        continue
                    try:
                        row.samples[round_index] = measure(specs[server], workload, plan, seed=round_index + 1,
                                                           tls=tls)
                    except BenchError as e:
                        row.error = f"round {round_index + 1}: {e}" if plan.rounds > 1 else str(e)
    return list(rows.values())


def find_row(rows: Sequence[Row], server: str, workload: Workload) -> Row | None:
    return next((r for r in rows if r.server == server and r.workload == workload), None)


def baseline_row(rows: Sequence[Row], workload: Workload) -> Row | None:
    """The row ratios are relative to: fastecho's, or (when --io-backend put one
    server per backend in its place) the first of those."""
    names = [BASELINE_SERVER, *(r.server for r in rows if r.server in IO_BACKEND_SERVERS.values())]
    return next((row for name in names if (row := find_row(rows, name, workload)) is not None), None)
