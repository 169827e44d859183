"""The embedding API, fastecho.EchoServer: the engine in the test process, every listener kind,
options checked exactly as the command line checks them, start/stop in any order with no thread
or fd left behind, async with, TLS rotation, and a busy Python thread that does not stall it.

Every socket is closed, every server stopped, every wait bounded.
"""
from __future__ import annotations

import asyncio
import os
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest

from fastecho import EchoServer, _core
from fastecho.errors import ConfigError, ServeError
from helpers import assert_one_line_error, run_cli, wait_until
from pki import Pki


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def thread_count() -> int:
    return len(os.listdir("/proc/self/task"))


def echo(address: tuple[str, int], payload: bytes) -> bytes:
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
    return got


def test_every_listener_kind_in_one_server():
    listen = ["tcp://127.0.0.1:0", "udp://127.0.0.1:0", "ws://127.0.0.1:0"]
    with EchoServer(listen=listen, threads=2) as server:
        assert [l.scheme for l in server.listeners] == ["tcp", "udp", "ws"]
        assert all(l.port > 0 for l in server.listeners)
        assert echo(server.address("tcp"), b"x" * 100_000) == b"x" * 100_000
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.settimeout(10)
            udp.sendto(b"datagram", server.address("udp"))
            assert udp.recv(100) == b"datagram"
        from websockets.sync.client import connect
        with connect(server.url("ws"), compression=None) as ws:
            ws.send("message")
            assert ws.recv(timeout=10) == "message"
        stats = server.stats()
        assert stats["connections_accepted"] == 2 and stats["udp"][1]["out"] == 1
        with pytest.raises(LookupError, match="no tls listener"):
            server.address("tls")


def test_line_mode_and_limits_as_keywords():
    with EchoServer(suffix=" [echo]", max_connections=1, threads=1) as server:
        assert echo(server.address(), b"hello\n") == b"hello [echo]\n"


@pytest.mark.parametrize("options, cli_args", [
    ({"threads": 0}, ["--threads", "0"]),
    ({"max_line": -1}, ["--max-line", "-1"]),
    ({"listen": ["sctp://127.0.0.1:0"]}, ["--listen", "sctp://127.0.0.1:0"]),
    ({"listen": ["tls://127.0.0.1:0"]}, ["--listen", "tls://127.0.0.1:0"]),
    ({"ws_path": "no-slash", "listen": ["ws://127.0.0.1:0"]}, ["--ws-path", "no-slash", "--listen", "ws://127.0.0.1:0"]),
])
def test_options_are_checked_as_the_command_line_checks_them(options, cli_args):
    with pytest.raises(ConfigError) as raised:
        EchoServer(**options)
    line = assert_one_line_error(run_cli("serve", *cli_args), 2)
    # The same problem in the same words; only the "(from --option)" source differs.
    problem = str(raised.value).split(": ", 1)[-1]
    assert problem in line, (str(raised.value), line)


def test_unknown_and_process_wide_options_are_refused():
    with pytest.raises(ConfigError, match="did you mean threads"):
        EchoServer(treads=2)
    for option in ("daemon", "pidfile", "user", "fd", "metrics_port", "access_log"):
        with pytest.raises(ConfigError, match="belongs to the fastecho command"):
            EchoServer(**{option: None})


def test_a_port_in_use_is_a_serve_error_and_leaves_nothing_open():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        fds = fd_count()
        with pytest.raises(ServeError, match="address already in use"):
            EchoServer(listen=[f"tcp://127.0.0.1:{taken.getsockname()[1]}"]).start()
        assert fd_count() == fds


def test_several_servers_started_and_stopped_in_any_order_leave_nothing_behind():
    fds, threads = fd_count(), thread_count()
    servers = [EchoServer(threads=n).start() for n in (1, 2, 3)]
    fourth = EchoServer()
    try:
        assert thread_count() == threads + sum(n + 1 for n in (1, 2, 3))  # workers and an acceptor each
        for server in servers:
            assert echo(server.address(), b"ping") == b"ping"
        servers[1].stop()
        assert echo(servers[2].address(), b"still") == b"still"
        fourth.start()
        servers[0].stop()
        fourth.stop()
        servers[2].stop()
        servers[2].stop()  # idempotent
        assert wait_until(lambda: (fd_count(), thread_count()) == (fds, threads), 10), \
            (fd_count(), fds, thread_count(), threads)
    finally:  # a failed assert must not leave engines running in the test process
        for server in (*servers, fourth):
            server.stop()
    with pytest.raises(ServeError, match="starts once"):
        servers[0].start()
    with pytest.raises(ServeError, match="not running"):
        servers[0].stats()


def test_stop_drains_a_connection_within_grace():
    server = EchoServer().start()
    sock = socket.create_connection(server.address(), timeout=10)
    try:
        sock.sendall(b"before")
        assert sock.recv(100) == b"before"
        stopper = threading.Thread(target=server.stop, kwargs={"grace": 5})
        stopper.start()
        time.sleep(0.2)  # the drain has begun: new clients are refused, this one is served
        sock.sendall(b"during")
        assert sock.recv(100) == b"during"
        sock.close()  # the drain ends as soon as the last client is gone
        stopper.join(10)
        assert not stopper.is_alive()
    finally:
        sock.close()
        server.stop(grace=0)  # a no-op once the stopper has run


def test_async_with_leaves_the_event_loop_free():
    async def main() -> bytes:
        async with EchoServer() as server:
            reader, writer = await asyncio.open_connection(*server.address())
            writer.write(b"from asyncio")
            data = await reader.readexactly(12)
            writer.close()
            await writer.wait_closed()
            return data

    assert asyncio.run(main()) == b"from asyncio"


@pytest.mark.skipif(not _core.TLS_AVAILABLE, reason="this build has no TLS")
def test_tls_and_its_rotation(pki: Pki, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(open(pki.path("server.pem"), "rb").read())
    key.write_bytes(open(pki.path("server.key"), "rb").read())
    with EchoServer(listen=["tls://127.0.0.1:0"], tls_cert=str(cert), tls_key=str(key)) as server:
        def handshake() -> bytes:
            with pki.client_context().wrap_socket(socket.create_connection(server.address("tls"), timeout=10),
                                                   server_hostname="localhost") as tls:
                tls.sendall(b"secret")
                return tls.recv(100)
        assert handshake() == b"secret"
        key.write_bytes(b"not a key")
        with pytest.raises(ConfigError):
            server.reload_tls()
        assert handshake() == b"secret"  # the old pair stays


def test_a_busy_python_thread_does_not_stall_the_engine():
    # The engine's threads never take the GIL: a client in another process
    # completes its round trips while a thread here spins in pure Python.
    stop = threading.Event()

    def spin() -> None:
        n = 0
        while not stop.is_set():
            n += 1

    with EchoServer() as server:
        spinner = threading.Thread(target=spin)
        spinner.start()
        try:
            client = subprocess.run(
                [sys.executable, "-c",
                 "import socket, sys\n"
                 "s = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=10)\n"
                 "for i in range(5000):\n"
                 "    s.sendall(b'x' * 64)\n"
                 "    got = b''\n"
                 "    while len(got) < 64:\n"
                 "        got += s.recv(64 - len(got))\n"
                 "print('done')\n", str(server.address()[1])],
                capture_output=True, timeout=60)
        finally:
            stop.set()
            spinner.join(10)
    assert client.stdout == b"done\n", client.stderr
