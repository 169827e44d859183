"""Memory held per idle connection: RSS growth of a server holding N
connections, each of which has been served once.

    python bench/conn_memory.py [--conns 10000] [--threads 32] [--servers fastecho,reference]

For each server: start it (pinned to CPU 0), read its RSS, open N connections
from this process (pinned to CPU 1), echo 16 bytes on each and keep them all
open, read its RSS again, and report (after - before) / N. Every socket is
closed and every server stopped before the script exits.
"""
from __future__ import annotations

import argparse
import os
import resource
import selectors
import socket
import sys
import time

from fastecho.bench.servers import HOST, SERVERS, running_server

PAYLOAD = b"0123456789abcdef"


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def hold_connections(host: str, port: int, count: int, timeout: float = 60.0) -> list[socket.socket]:
    """Open count connections, echo PAYLOAD once on each, and return them open."""
    socks: list[socket.socket] = []
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        for _ in range(count):
            s = socket.create_connection((host, port), timeout=10)
            s.sendall(PAYLOAD)
            s.setblocking(False)
            socks.append(s)
            sel.register(s, selectors.EVENT_READ, bytearray())
        pending = count
        while pending and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=1):
                key.data.extend(key.fileobj.recv(64))
                if len(key.data) >= len(PAYLOAD):
                    if bytes(key.data) != PAYLOAD:
                        raise RuntimeError("echo mismatch")
                    sel.unregister(key.fileobj)
                    pending -= 1
        if pending:
            raise RuntimeError(f"{pending} of {count} connections were never echoed")
    return socks


def measure(name: str, conns: int, threads: int) -> float:
    socks: list[socket.socket] = []
    with running_server(SERVERS[name], threads=threads, baseline_threads=threads, cpus={0}) as server:
        try:
            time.sleep(0.5)
            before = rss_kib(server.pid)
            socks = hold_connections(HOST, server.port, conns)
            time.sleep(0.5)
            after = rss_kib(server.pid)
        finally:
            for s in socks:
                s.close()
    per_conn = (after - before) / conns
    print(f"{name:10s} {conns} conns, {threads} threads: RSS {before} -> {after} KiB, "
          f"{per_conn:.3f} KiB per connection", flush=True)
    return per_conn


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conns", type=int, default=10000)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--servers", default="fastecho,reference")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if args.conns + 64 > hard:
        print(f"conn_memory: --conns {args.conns} needs more fds than the hard limit {hard}",
              file=sys.stderr)
        return 2
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {1})
    for name in args.servers.split(","):
        measure(name.strip(), args.conns, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
