"""Holds many TCP connections open on one server, and reports what each one costs.

    python bench/conn_scale.py --conns 1000000 [--threads 1] [--server fastecho] [--json FILE]

Starts the server (`fastecho serve` by default; any TCP server of
`python -m fastecho.bench --servers`) pinned to one CPU, and client processes
(bench/conn_scale_client.py) pinned to another. The clients open --conns
connections from many source addresses in 127.0.0.0/8, echo 16 bytes once on
each and hold them all open; then echo 16 bytes more on each, check both
echoes byte for byte, and close everything, a batch at a time.

Reported: the server's RSS idle and with every connection open, and the
growth per connection; the server's CPU (user + sys, /proc/PID/stat) per
connection opened and per final echo; /proc/net/sockstat's TCP sockets and
memory pages, and the kernel's slab, before and at the peak; the rate at
which connections opened; errors by kind.

Limits are raised as far as the machine allows (conn_scale_limits.py). When
one stops the run, the table shows what was reached, and the last line says
which limit and at what count; the exit status is then 1. Every process and
socket is gone when it exits, also on failure, --timeout and Ctrl-C.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import conn_scale_limits as limits
from conn_scale_limits import LimitReached

from fastecho.bench.errors import ServerStartError
from fastecho.bench.procstat import cpu_seconds, rss_kib
from fastecho.bench.servers import HOST, SERVERS, running_server

CLIENT = Path(__file__).with_name("conn_scale_client.py")
SOURCE_BASE = "127.1.0.0"  # the clients' addresses: 127.1.0.0 and up, apart from 127.0.0.1's own traffic
SETTLE_S = 0.5  # lets the server's RSS and the kernel's counters settle before a reading
WATCH_S = 0.5  # how often the server's life and the free memory are checked while clients work
CLIENT_GRACE_S = 15.0  # clients outlive the run's deadline by this much, so the run's own timeout speaks first
MIN_AVAILABLE_FRACTION = 0.05  # stop before MemAvailable falls under this share of MemTotal


@dataclass
class Snapshot:
    rss_kib: int
    cpu_s: float
    tcp: dict[str, int]  # /proc/net/sockstat's TCP line
    slab_kib: int  # the kernel's slab, system-wide: where sockets live
    available_kib: int


def snapshot(pid: int) -> Snapshot:
    return Snapshot(rss_kib(pid), cpu_seconds(pid), limits.sockstat(), limits.meminfo_kib("Slab"),
                    limits.meminfo_kib("MemAvailable"))


class Clients:
    """The client processes: started pinned, told what to do in lines on
    stdin, heard from in JSON lines on stdout (one thread each reads them into
    a queue, so that every wait here is bounded)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.reports: queue.Queue[tuple[int, dict | None]] = queue.Queue()
        self.processes: list[subprocess.Popen[str]] = []
        self.readers: list[threading.Thread] = []
        self.stderr_paths: list[Path] = []

    def start(self, argvs: list[list[str]]) -> None:
        for i, argv in enumerate(argvs):
            self.stderr_paths.append(self.log_dir / f"client{i}.stderr")
            with open(self.stderr_paths[i], "w") as stderr:
                process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                                           text=True)
            self.processes.append(process)
            self.readers.append(threading.Thread(target=self._read, args=(i, process), daemon=True))
            self.readers[-1].start()

    def _read(self, i: int, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        with process.stdout:
            for line in process.stdout:
                self.reports.put((i, json.loads(line)))
        self.reports.put((i, None))  # it exited

    def send(self, word: str) -> None:
        for process in self.processes:
            assert process.stdin is not None
            process.stdin.write(word + "\n")
            process.stdin.flush()

    def collect(self, phase: str, deadline: float, watch) -> list[dict]:
        """One report of phase from every client, in client order; calls
        watch() every WATCH_S meanwhile (it raises to stop the run)."""
        got: dict[int, dict] = {}
        while len(got) < len(self.processes):
            if time.monotonic() > deadline:
                raise LimitReached(f"--timeout: still waiting for the clients' '{phase}' reports")
            watch()
            try:
                i, report = self.reports.get(timeout=WATCH_S)
            except queue.Empty:
                continue
            if report is None and i in got:  # it exited after its last report
                continue
            if report is None or report["phase"] != phase:
                self.processes[i].wait(5)
                raise LimitReached(f"client {i} {self._ended(i, report)} before its '{phase}' report")
            got[i] = report
        return [got[i] for i in range(len(self.processes))]

    def _ended(self, i: int, report: dict | None) -> str:
        if report is not None:
            return f"reported '{report['phase']}'"
        lines = self.stderr_paths[i].read_text(errors="replace").strip().splitlines()
        status = self.processes[i].poll()
        return f"exited with status {status}" + (f": {lines[-1]}" if lines else "")

    def stop(self) -> None:
        """Ends every client still running (the kernel closes its sockets) and reaps it."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdin is not None:
                try:
                    process.stdin.close()
                except OSError:  # BrokenPipeError: it had exited with a line unread
                    pass
        for reader in self.readers:  # each ends at its client's EOF, which exit guarantees
            reader.join(5)


def client_argvs(args: argparse.Namespace, port: int, clients: int, window: int, close_batch: int,
                 deadline: float) -> list[list[str]]:
    share = math.ceil(args.conns / clients)
    return [[sys.executable, str(CLIENT), "--host", HOST, "--port", str(port), "--first", str(first),
             "--count", str(min(share, args.conns - first)), "--source-base", SOURCE_BASE,
             "--per-source", str(args.per_source), "--window", str(window), "--conn-timeout",
             str(args.conn_timeout), "--close-batch", str(close_batch), "--deadline",
             str(deadline + CLIENT_GRACE_S)]
            for first in range(0, args.conns, share)]


def run(args: argparse.Namespace) -> dict:
    """The whole run; returns the figures. LimitReached when a limit stops it
    before the peak (the figures are then the one line that says why)."""
    deadline = time.monotonic() + args.timeout
    cpus = sorted(os.sched_getaffinity(0))
    server_cpus, load_cpus = ({cpus[0]}, {cpus[1]}) if len(cpus) > 1 else (None, None)
    if load_cpus:
        os.sched_setaffinity(0, load_cpus)  # the clients inherit it
    backlog = limits.sysctl("net.core.somaxconn")[0]  # listen() caps any backlog at this
    with limits.prepared(args.conns, 1) as machine:
        clients = args.clients or math.ceil(args.conns / (machine.nofile - limits.FD_HEADROOM))
        # Connects and echoes in flight stay within half the listen backlog,
        # so that a SYN is never dropped for a full accept queue (its retry
        # would stall a connection for a second).
        window = max(1, backlog // (2 * clients))
        close_batch = max(1, limits.sysctl("net.ipv4.tcp_max_orphans")[0] // (4 * clients))
        extra = ()
        if args.server == "fastecho":
            extra = ("--backlog", str(backlog), "--max-connections", str(args.server_max_connections))
        spec = SERVERS[args.server]
        with tempfile.TemporaryDirectory(prefix="conn-scale-") as log_dir, \
                running_server(spec, threads=args.threads, baseline_threads=args.threads, cpus=server_cpus,
                               extra_args=extra) as server:
            pid = server.pid
            memory_floor = limits.meminfo_kib("MemTotal") * MIN_AVAILABLE_FRACTION

            def watch() -> None:
                if (ended := server.exit_description()) is not None:
                    raise LimitReached(f"the server {ended}")
                if limits.meminfo_kib("MemAvailable") < memory_floor:
                    raise LimitReached(f"memory: MemAvailable fell under {memory_floor / 1024:.0f} MiB with "
                                       f"about {limits.sockstat().get('inuse', 0) // 2} connections open "
                                       "(sockstat TCP inuse / 2)")

            time.sleep(SETTLE_S)
            idle = snapshot(pid)
            group = Clients(Path(log_dir))
            try:
                group.start(client_argvs(args, server.port, clients, window, close_batch, deadline))
                group.collect("ready", deadline, watch)
                group.send("open")
                opened = group.collect("open", deadline, watch)
                held = sum(r["held"] for r in opened)
                stopped_by = ""
                if held < args.conns:  # named now, while the server still holds what it reached
                    kind = next(r["first_error"] for r in opened if r["first_error"]).split()[0]
                    stopped_by = limits.diagnose(kind, held, pid, args.server_max_connections)
                time.sleep(SETTLE_S)
                peak = snapshot(pid)
                group.send("end")
                ended = group.collect("end", deadline, watch)
                after_end = snapshot(pid)
                group.send("close")
                group.collect("closed", deadline, watch)
            finally:
                group.stop()
            errors = sum((Counter(r["errors"]) for r in opened + ended), Counter())
            first_error = next((r["first_error"] for r in opened + ended if r["first_error"]), "")
        open_s = max(r["finished"] for r in opened) - min(r["started"] for r in opened)
        per_conn = max(held, 1)
        return {
            "server": args.server, "threads": args.threads, "conns": args.conns, "held": held,
            "echoed_at_end": sum(r["echoed"] for r in ended), "clients": clients,
            "source_addresses": math.ceil(args.conns / args.per_source), "window": window,
            "server_cpu": sorted(server_cpus) if server_cpus else None,
            "load_cpu": sorted(load_cpus) if load_cpus else None,
            "idle": asdict(idle), "peak": asdict(peak), "after_end": asdict(after_end),
            "rss_kib_per_conn": (peak.rss_kib - idle.rss_kib) / per_conn,
            "cpu_us_per_open": (peak.cpu_s - idle.cpu_s) * 1e6 / per_conn,
            "cpu_us_per_end_echo": (after_end.cpu_s - peak.cpu_s) * 1e6 / per_conn,
            "slab_kib_per_conn": (peak.slab_kib - idle.slab_kib) / per_conn,
            "open_seconds": open_s, "accept_rate": held / open_s if open_s > 0 else 0.0,
            "errors": dict(errors), "first_error": first_error, "stopped_by": stopped_by,
            "notes": machine.notes,
        }


def print_table(r: dict) -> None:
    idle, peak = r["idle"], r["peak"]
    cpus = f"CPU {r['server_cpu'][0]}; clients on CPU {r['load_cpu'][0]}" if r["server_cpu"] else "unpinned"
    print(f"conn_scale: {r['held']:,} of {r['conns']:,} connections held by {r['server']} "
          f"({r['threads']} worker thread{'s' if r['threads'] != 1 else ''}, {cpus}); {r['clients']} client processes, "
          f"{r['source_addresses']} source addresses, {r['window']} in flight each")
    for note in r["notes"]:
        print(f"  note: {note}")
    rows = [
        ("", "idle", "all open", "per connection"),
        ("server RSS (KiB)", f"{idle['rss_kib']:,}", f"{peak['rss_kib']:,}", f"{r['rss_kib_per_conn']:.3f} KiB"),
        ("server CPU user+sys (s)", f"{idle['cpu_s']:.2f}", f"{peak['cpu_s']:.2f}",
         f"{r['cpu_us_per_open']:.1f} µs to open, {r['cpu_us_per_end_echo']:.1f} µs per last echo"),
        ("TCP sockets (sockstat inuse)", f"{idle['tcp'].get('inuse', 0):,}", f"{peak['tcp'].get('inuse', 0):,}", ""),
        ("TCP memory (sockstat mem, pages)", f"{idle['tcp'].get('mem', 0):,}", f"{peak['tcp'].get('mem', 0):,}",
         f"tcp_mem {' '.join(map(str, limits.sysctl('net.ipv4.tcp_mem')))}"),
        ("kernel slab, system-wide (KiB)", f"{idle['slab_kib']:,}", f"{peak['slab_kib']:,}",
         f"{r['slab_kib_per_conn']:.2f} KiB (both ends)"),
        ("MemAvailable (KiB)", f"{idle['available_kib']:,}", f"{peak['available_kib']:,}", ""),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print(f"  {row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]}")
    print(f"  accept rate: {r['accept_rate']:,.0f} connections/s ({r['held']:,} opened and echoed in "
          f"{r['open_seconds']:.1f} s)")
    print(f"  second echo: {r['echoed_at_end']:,} of {r['held']:,} came back right")
    errors = ", ".join(f"{kind} {count}" for kind, count in sorted(r["errors"].items())) or "none"
    print(f"  errors: {sum(r['errors'].values())} ({errors})" + (f"; first: {r['first_error']}"
                                                                  if r["first_error"] else ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conns", type=int, default=10000, help="connections to open and hold")
    parser.add_argument("--threads", type=int, default=1, help="server worker threads")
    parser.add_argument("--server", default="fastecho",
                        choices=[name for name, spec in SERVERS.items() if spec.command is not None])
    parser.add_argument("--server-max-connections", type=int, default=None,
                        help="fastecho's --max-connections (default: --conns; 0: no limit)")
    parser.add_argument("--clients", type=int, default=0,
                        help="client processes (default: as few as the fd limit allows)")
    parser.add_argument("--per-source", type=int, default=limits.ephemeral_ports() // 2,
                        help="connections per source address (default: half the ephemeral port range, "
                             "so that the kernel finds a free port at once)")
    parser.add_argument("--conn-timeout", type=float, default=10.0, help="seconds one connect or echo may take")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds the whole run may take")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    if args.conns < 1 or args.threads < 1 or args.per_source < 1 or args.clients < 0:
        parser.error("--conns, --threads and --per-source must be at least 1")
    if args.server_max_connections is None:
        args.server_max_connections = args.conns
    # Ctrl-C (the server stops on it too) and SIGTERM unwind through the
    # same cleanup: the clients are stopped, the server stopped and reaped.
    def interrupted(*_) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    try:
        result = run(args)
    except (LimitReached, ServerStartError) as e:
        print(f"conn_scale: stopped: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("conn_scale: interrupted; every process and socket is gone", file=sys.stderr)
        return 130
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if result["stopped_by"]:
        print(f"conn_scale: stopped at {result['held']:,} connections by {result['stopped_by']}",
              file=sys.stderr)
        return 1
    if result["errors"] or result["echoed_at_end"] < result["held"]:
        print(f"conn_scale: {sum(result['errors'].values())} errors ({result['first_error']})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
