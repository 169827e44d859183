"""Does a crowd of connections that never finish their TLS handshake slow everyone else?

    python bench/tls_idle_handshakes.py [IDLE]      # default 10000

Starts `fastecho serve` with one TLS listener (one worker, pinned to CPU 0) and
measures 64 TLS clients echoing 1 KiB (the C load generator, on CPU 1): five
rounds before, then five while IDLE more connections sit in their handshake
(connected, silent, under a long --tls-handshake-timeout). Prints server CPU
µs per message, messages/s and latency for each round. Loopback only; the
server is stopped at the end, and every round stops by itself.
"""
from __future__ import annotations

import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time

from fastecho.bench._loadgen import run_load
from fastecho.bench.certs import temporary_certificate  # trustme, ECDSA P-256

ROUNDS = 5


def main() -> int:
    idle_count = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < idle_count + 1000:
        print(f"RLIMIT_NOFILE's hard limit ({hard}) is too low for {idle_count} connections", file=sys.stderr)
        return 2
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with temporary_certificate("127.0.0.1") as tls:
        server = subprocess.Popen(
            ["taskset", "-c", "0", sys.executable, "-m", "fastecho", "serve", "--threads", "1",
             "--listen", "tls://127.0.0.1:0", "--tls-cert", str(tls.cert), "--tls-key", str(tls.key),
             "--tls-handshake-timeout", "600", "--backlog", "4096"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        idle: list[socket.socket] = []
        try:
            port = int(re.search(r":(\d+) \(tls\)", server.stdout.readline()).group(1))
            os.sched_setaffinity(0, {1})

            def measure(label: str) -> None:
                for _ in range(ROUNDS):
                    r = run_load("127.0.0.1", port, 64, 1024, duration=3, warmup=0.5, server_pid=server.pid,
                                 tls=True, tls_version="1.3", tls_ca_file=str(tls.ca))
                    cpu = (r["server_user_us"] + r["server_sys_us"]) / r["messages"]
                    print(f"{label}: {cpu:.2f} µs/msg  {r['msgs_per_s']:.0f} msg/s  "
                          f"p50 {r['p50_ns'] / 1000:.0f} µs  p99 {r['p99_ns'] / 1000:.0f} µs", flush=True)

            measure("no idle handshakes")
            for i in range(idle_count):
                s = socket.socket()
                s.setblocking(False)
                try:
                    s.connect(("127.0.0.1", port))
                except BlockingIOError:
                    pass
                idle.append(s)
                if i % 1000 == 999:
                    time.sleep(0.2)  # within the listen backlog
            time.sleep(2)
            measure(f"{idle_count} idle handshakes")
        finally:
            for s in idle:
                s.close()
            server.send_signal(signal.SIGTERM)
            server.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
