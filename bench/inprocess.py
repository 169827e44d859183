"""A Python client against fastecho in its own process and in a separate one.

The issue's bar: a Python client using EchoServer (the pytest plugin's
echo_server) in the same process reaches at least 0.9x the messages per second
it reaches against a separate `fastecho serve`. The engine's threads never take
the GIL, so the client's thread keeps it to itself either way.

Both servers run on CPU 0 and the client on CPU 1: the in-process engine's
threads are pinned by starting it while this thread is on CPU 0 (threads
inherit the creator's affinity), and the separate server is started under
`taskset -c 0`. Rounds interleave the two; medians and the median of the
per-round ratios are printed.

    python bench/inprocess.py [--rounds 5] [--seconds 3] [--size 64] [--busy]

--busy adds a Python thread that spins (it competes for the GIL with the
client, in both cases alike).
"""
from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time

from fastecho import EchoServer

SERVER_CPU, CLIENT_CPU = {0}, {1}


def ping_pong(address: tuple[str, int], size: int, seconds: float) -> float:
    """Messages per second of one blocking connection, one message in flight."""
    payload = b"m" * size
    with socket.create_connection(address, timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        count, deadline = 0, time.perf_counter() + seconds
        start = time.perf_counter()
        while time.perf_counter() < deadline:
            sock.sendall(payload)
            got = 0
            while got < size:
                got += len(sock.recv(size - got))
            count += 1
        return count / (time.perf_counter() - start)


def in_process(size: int, seconds: float) -> float:
    os.sched_setaffinity(0, SERVER_CPU)  # the engine's threads inherit it
    server = EchoServer(threads=1).start()
    os.sched_setaffinity(0, CLIENT_CPU)
    try:
        return ping_pong(server.address(), size, seconds)
    finally:
        server.stop(grace=0)


def separate(size: int, seconds: float) -> float:
    proc = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-m", "fastecho", "serve", "--port", "0",
                             "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        line = proc.stdout.readline().decode()
        port = int(re.search(r":(\d+) ", line).group(1))
        return ping_pong(("127.0.0.1", port), size, seconds)
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--busy", action="store_true", help="a Python thread spins meanwhile")
    args = parser.parse_args()
    os.sched_setaffinity(0, CLIENT_CPU)
    stop = threading.Event()
    if args.busy:
        def spin() -> None:
            while not stop.is_set():
                pass
        threading.Thread(target=spin, daemon=True).start()
    inside, outside, ratios = [], [], []
    try:
        for r in range(args.rounds):
            a = in_process(args.size, args.seconds)
            b = separate(args.size, args.seconds)
            inside.append(a)
            outside.append(b)
            ratios.append(a / b)
            print(f"round {r + 1}: in process {a:,.0f} msgs/s, separate process {b:,.0f} msgs/s, "
                  f"ratio {a / b:.2f}", flush=True)
    finally:
        stop.set()
    print(f"median: in process {statistics.median(inside):,.0f} msgs/s, separate {statistics.median(outside):,.0f} "
          f"msgs/s; median per-round ratio {statistics.median(ratios):.2f} (bar: at least 0.90)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
