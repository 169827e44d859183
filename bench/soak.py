"""Soak test: a mixed workload against one fastecho server for N minutes.

    python bench/soak.py --minutes 10 [--threads 4] [--interval 60] [--json soak.json]

Four loads run at once, every echoed byte checked:
  ping-pong  --pingpong connections doing 1 KiB round trips (latency measured)
  bulk       connections echoing 1 MiB payloads back to back
  churn      connect / echo 64 bytes / close, as fast as it goes
  slow       clients that send 4 MiB and read it back in small sips

Every --interval seconds it prints one row: server RSS, fds and threads,
ping-pong p99 latency, messages, churn cycles, and errors. It exits 1 if any
error happened or the server's RSS or fd count trends upward (last third of
the rows against the first third), else 0. Server pinned to CPU 0, load to
CPU 1. Every thread and socket stops by itself at the deadline.
"""
from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field

from fastecho.bench.servers import HOST, SERVERS, running_server

MIB = 1 << 20


@dataclass
class Tally:
    """Counters the load threads add to; read and reset once per interval."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    latencies_us: list[float] = field(default_factory=list)
    messages: int = 0
    churn_cycles: int = 0
    bulk_bytes: int = 0
    slow_bytes: int = 0
    errors: list[str] = field(default_factory=list)

    def error(self, what: str) -> None:
        with self.lock:
            self.errors.append(what)

    def take(self) -> dict:
        with self.lock:
            lat = sorted(self.latencies_us)
            row = {
                "messages": self.messages,
                "p99_us": lat[int(len(lat) * 0.99)] if lat else None,
                "churn_cycles": self.churn_cycles,
                "bulk_mib": self.bulk_bytes / MIB,
                "slow_mib": self.slow_bytes / MIB,
                "errors": len(self.errors),
                "first_error": self.errors[0] if self.errors else "",
            }
            self.latencies_us.clear()
            self.messages = self.churn_cycles = self.bulk_bytes = self.slow_bytes = 0
            self.errors.clear()
        return row


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), MIB))
        if not chunk:
            raise ConnectionError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def pingpong(port: int, conns: int, deadline: float, tally: Tally) -> None:
    payload = os.urandom(1024)
    socks = [socket.create_connection((HOST, port), timeout=10) for _ in range(conns)]
    try:
        with selectors.DefaultSelector() as sel:
            for s in socks:
                s.setblocking(False)
                s.send(payload)
                sel.register(s, selectors.EVENT_READ, [bytearray(), time.perf_counter()])
            while time.monotonic() < deadline:
                for key, _ in sel.select(timeout=0.5):
                    state = key.data
                    try:
                        chunk = key.fileobj.recv(4096)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        raise ConnectionError("server closed a ping-pong connection")
                    state[0] += chunk
                    if len(state[0]) >= len(payload):
                        if bytes(state[0]) != payload:
                            raise ValueError("ping-pong echo mismatch")
                        now = time.perf_counter()
                        with tally.lock:
                            tally.latencies_us.append((now - state[1]) * 1e6)
                            tally.messages += 1
                        state[0].clear()
                        state[1] = now
                        key.fileobj.send(payload)
    except (OSError, ValueError) as e:
        tally.error(f"ping-pong: {e!r}")
    finally:
        for s in socks:
            s.close()


def bulk(port: int, deadline: float, tally: Tally) -> None:
    payload = os.urandom(MIB)
    try:
        with socket.create_connection((HOST, port), timeout=10) as s:
            while time.monotonic() < deadline:
                sender = threading.Thread(target=s.sendall, args=(payload,))
                sender.start()
                echoed = recv_exactly(s, len(payload))
                sender.join(10)
                if echoed != payload:
                    raise ValueError("bulk echo mismatch")
                with tally.lock:
                    tally.bulk_bytes += len(payload)
    except (OSError, ValueError) as e:
        tally.error(f"bulk: {e!r}")


def churn(port: int, deadline: float, tally: Tally) -> None:
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=10) as s:
                msg = os.urandom(64)
                s.sendall(msg)
                if recv_exactly(s, len(msg)) != msg:
                    raise ValueError("churn echo mismatch")
            with tally.lock:
                tally.churn_cycles += 1
        except (OSError, ValueError) as e:
            tally.error(f"churn: {e!r}")
            time.sleep(0.1)


def slow_reader(port: int, deadline: float, tally: Tally) -> None:
    payload = os.urandom(4 * MIB)
    try:
        while time.monotonic() < deadline:
            with socket.create_connection((HOST, port), timeout=30) as s:
                sender = threading.Thread(target=s.sendall, args=(payload,))
                sender.start()
                got = bytearray()
                while len(got) < len(payload) and time.monotonic() < deadline + 30:
                    got += s.recv(16 * 1024)
                    time.sleep(0.005)  # a client that reads slowly
                sender.join(30)
                if bytes(got) != payload:
                    raise ValueError(f"slow reader got {len(got)} of {len(payload)} bytes, or wrong ones")
                with tally.lock:
                    tally.slow_bytes += len(payload)
    except (OSError, ValueError) as e:
        tally.error(f"slow reader: {e!r}")


def proc_sample(pid: int) -> dict:
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return {"rss_kib": rss, "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "threads": len(os.listdir(f"/proc/{pid}/task"))}


def trending_up(values: list[float], slack: float) -> bool:
    """True if the last third's median exceeds the first third's by more than slack."""
    if len(values) < 3:
        return False
    third = max(1, len(values) // 3)
    return statistics.median(values[-third:]) > statistics.median(values[:third]) + slack


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=60.0, help="seconds per report row")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--pingpong", type=int, default=100, help="ping-pong connections")
    parser.add_argument("--json", help="write the rows to this file")
    args = parser.parse_args()
    if args.minutes <= 0 or args.interval <= 0:
        print("soak: --minutes and --interval must be positive", file=sys.stderr)
        return 2
    if len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {1})

    rows: list[dict] = []
    with running_server(SERVERS["fastecho"], threads=args.threads, baseline_threads=args.threads,
                        cpus={0}) as server:
        tally = Tally()
        deadline = time.monotonic() + args.minutes * 60
        loads = [threading.Thread(target=pingpong, args=(server.port, args.pingpong, deadline, tally)),
                 threading.Thread(target=bulk, args=(server.port, deadline, tally)),
                 threading.Thread(target=churn, args=(server.port, deadline, tally))]
        loads += [threading.Thread(target=slow_reader, args=(server.port, deadline, tally)) for _ in range(2)]
        for t in loads:
            t.daemon = True
            t.start()
        print(f"{'min':>5} {'rss KiB':>8} {'fds':>5} {'thr':>4} {'p99 µs':>8} {'msgs':>8} "
              f"{'churn':>6} {'bulk MiB':>8} {'slow MiB':>8} {'errors':>6}", flush=True)
        start = time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(min(args.interval, max(0.0, deadline - time.monotonic())))
            row = {"minute": (time.monotonic() - start) / 60, **proc_sample(server.pid), **tally.take()}
            rows.append(row)
            p99 = f"{row['p99_us']:.0f}" if row["p99_us"] is not None else "-"
            print(f"{row['minute']:5.1f} {row['rss_kib']:8d} {row['fds']:5d} {row['threads']:4d} {p99:>8} "
                  f"{row['messages']:8d} {row['churn_cycles']:6d} {row['bulk_mib']:8.0f} "
                  f"{row['slow_mib']:8.0f} {row['errors']:6d} {row['first_error']}", flush=True)
        for t in loads:
            t.join(60)

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=2)
    problems = []
    if any(r["errors"] for r in rows):
        problems.append("errors")
    if trending_up([r["rss_kib"] for r in rows], slack=2048):
        problems.append("RSS grows")
    if trending_up([r["fds"] for r in rows], slack=8):
        problems.append("fds grow")
    if any(t.is_alive() for t in loads):
        problems.append("a load thread did not stop")
    print("soak: " + ("FAILED: " + ", ".join(problems) if problems else "flat, no errors"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
