"""The seed design, ported to Python: the baseline fastecho has to beat.

    python -m fastecho.bench.baseline [--host 127.0.0.1] [--port 0] [--threads 32]

As in the original C++ server: an acceptor thread accepts connections and puts
each socket on a queue (``queue.Queue``: a mutex and a condition variable); a
fixed pool of worker threads takes one socket each and echoes it with
blocking ``recv``/``sendall`` until the client closes. So at most ``--threads``
clients are served at a time and the rest wait in the queue, which is the
starvation the benchmark exposes.

Departures, both so that the same load generator can measure it fairly: the
reply is the bytes received, without the original's " server[echo]" suffix,
and short writes are finished (``sendall``) instead of being ignored.
"""
from __future__ import annotations

import argparse
import queue
import signal
import socket
import threading

RECV_SIZE = 64 * 1024


def serve_connection(conn: socket.socket) -> None:
    """Echo one client until it closes or the connection fails."""
    with conn:
        while True:
            try:
                data = conn.recv(RECV_SIZE)
                if not data:
                    return
                conn.sendall(data)
            except OSError:
                return


def work(tasks: queue.Queue[socket.socket]) -> None:
    while True:
        serve_connection(tasks.get())


def accept_forever(listener: socket.socket, tasks: queue.Queue[socket.socket]) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:  # the listener was closed at shutdown
            return
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        tasks.put(conn)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastecho.bench.baseline", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--threads", type=int, default=32)
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be at least 1")

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    listener = socket.create_server((args.host, args.port), backlog=socket.SOMAXCONN)
    tasks: queue.Queue[socket.socket] = queue.Queue()
    # Daemon threads: a worker blocked in recv() must not keep the process
    # alive after SIGTERM; the original had no graceful stop either.
    for _ in range(args.threads):
        threading.Thread(target=work, args=(tasks,), daemon=True).start()
    threading.Thread(target=accept_forever, args=(listener, tasks), daemon=True).start()

    host, port = listener.getsockname()[:2]
    print(f"python-baseline listening on {host}:{port} ({args.threads} threads)", flush=True)
    while not stop.wait(0.5):  # wakes periodically so the handler's flag is seen
        pass
    listener.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
