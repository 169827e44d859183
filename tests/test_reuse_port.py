"""--reuse-port: a restart on one machine that refuses and loses nothing.

The new server starts on the old one's port, the old one gets SIGTERM, and
loads that check every echoed byte keep running across the switch: 1000
concurrent connections (600 long-lived, 400 that connect, echo and close in a
loop) and a second process that connects back to back in a tight loop, the
load that finds the moment the old listener closes. See fastecho.reuseport for
why that moment needs the kernel's request migration.

Every process is stopped and reaped, every wait is bounded.
"""
from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from fastecho import EchoServer, reuseport, server as server_module
from helpers import free_port, read_line, reap, run_cli, start_server

LOAD = os.path.join(os.path.dirname(__file__), "churn_load.py")
STEADY, CHURN, TIGHT = 600, 400, 6  # 1000 concurrent connections, and 6 tight-loop threads
LOAD_SECONDS = 8.0  # from "ready": ~1.5 s before the switch, the rest after it


def migration_unavailable() -> str | None:
    """Why the kernel would not migrate a closing listener's queue here, or None if it will."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        why = reuseport.attach_migration(sock)
    if why is None or reuseport.migrate_sysctl():
        return None
    return (f"{why}, and net.ipv4.tcp_migrate_req is not 1: a listener that closes resets its queue "
            "(run as root, or sysctl -w net.ipv4.tcp_migrate_req=1)")


needs_migration = pytest.mark.skipif(migration_unavailable() is not None,
                                     reason=str(migration_unavailable()))


def fixed_port_server(tmp_path, port: int, *args: str, prefix: list[str] | None = None):
    return start_server(tmp_path, "--reuse-port", "--threads", "4", *args, port=str(port), prefix=prefix)


def migrated_requests() -> int:
    """TcpExt TCPMigrateReqSuccess: connections moved from a closing listener (this network
    namespace, every process)."""
    with open("/proc/net/netstat") as f:
        lines = f.read().splitlines()
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:]))
            return int(table.get("TCPMigrateReqSuccess", 0))
    return 0


class LoadProcess:
    def __init__(self, port: int, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, LOAD, "127.0.0.1", str(port),
                                      "--seconds", str(LOAD_SECONDS), *args],
                                     stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        line = read_line(self.proc, 60)
        if line.strip() != b"ready":
            reap(self.proc)
            raise AssertionError(f"the load did not start: {line!r}")

    def result(self) -> dict:
        line = read_line(self.proc, LOAD_SECONDS + 60)
        assert self.proc.wait(30) == 0
        self.proc.stdout.close()
        return json.loads(line)


def assert_clean(result: dict, what: str) -> None:
    for failure in ("refused", "reset", "eof", "timeouts", "mismatches", "connect_errors"):
        assert result.get(failure, 0) == 0, f"{what}: {failure}: {result}"


@needs_migration
def test_restart_under_load_refuses_nothing_and_loses_no_byte(tmp_path):
    port = free_port()
    old = fixed_port_server(tmp_path, port, "--grace", "30")
    new = None
    loads: list[LoadProcess] = []
    try:
        loads.append(LoadProcess(port, "--steady", str(STEADY), "--churn", str(CHURN)))
        loads.append(LoadProcess(port, "--steady", "0", "--churn", "0", "--tight", str(TIGHT)))
        time.sleep(1.5)  # both loads at full speed on the old server alone
        migrated_before = migrated_requests()
        new = fixed_port_server(tmp_path, port, "--grace", "30")
        switch = time.monotonic()
        old.proc.send_signal(signal.SIGTERM)
        stopping = old.wait_for_stderr(r"stopping: no new connections; (\d+) open connection")
        in_flight = int(stopping[1])
        # The old one serves its open connections until the load closes them, then exits.
        main, tight = (load.result() for load in loads)
        after_switch = time.monotonic() - switch
        assert old.proc.wait(30) == 0  # on its own: no second signal
        old.stop()  # (reaps it; it has exited, so nothing is sent)
        migrated = migrated_requests() - migrated_before
        print(f"\nswitch: {in_flight} connections open on the old server at SIGTERM, "
              f"{migrated} queued connection(s) migrated to the new one at its close; "
              f"load ran {after_switch:.1f}s after the switch; main load {main}; tight loop {tight}")
        assert_clean(main, "1000-connection load")
        assert_clean(tight, "tight-loop connects")
        assert after_switch >= 2.0, "the load must run on after the switch"
        assert in_flight >= STEADY, "the long-lived connections were all on the old server"
        assert main["steady_exchanges"] > STEADY and main["churn_cycles"] > CHURN
        assert tight["tight_cycles"] > 1000
        # The new one took over: it serves, and the old one's log shows its drain ended well.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"after the switch")
            assert s.recv(100) == b"after the switch"
        assert "stopped" in old.stderr()
        assert new.stop() == 0
    finally:
        for load in loads:
            reap(load.proc)
        for server in (old, new):
            if server is not None and not server._stopped:
                server.stop(signal.SIGKILL)


@needs_migration
def test_tight_loop_connects_see_no_refusal_across_two_restarts(tmp_path):
    """blue -> green -> blue again: the group's program outlives the server that attached it."""
    port = free_port()
    servers = [fixed_port_server(tmp_path, port, "--grace", "5")]
    load = None
    try:
        load = LoadProcess(port, "--steady", "0", "--churn", "0", "--tight", str(TIGHT))
        for _ in range(2):
            time.sleep(1.0)
            servers.append(fixed_port_server(tmp_path, port, "--grace", "5"))
            assert servers[-2].stop() == 0
        result = load.result()
        assert_clean(result, "tight-loop connects")
        assert result["tight_cycles"] > 1000
        assert servers[-1].stop() == 0
    finally:
        if load is not None:
            reap(load.proc)
        for server in servers:
            if not server._stopped:
                server.stop(signal.SIGKILL)


def test_without_reuse_port_a_second_server_is_refused(tmp_path):
    port = free_port()
    first = start_server(tmp_path, "--threads", "1", port=str(port))
    try:
        for args in ((), ("--reuse-port",)):  # both must ask for it
            result = run_cli("serve", "--port", str(port), *args)
            assert result.returncode == 1
            assert f"cannot listen on 127.0.0.1:{port}: address already in use" in result.stderr.decode()
    finally:
        assert first.stop() == 0
    shared = fixed_port_server(tmp_path, port)
    try:
        result = run_cli("serve", "--port", str(port))
        assert result.returncode == 1 and b"address already in use" in result.stderr
    finally:
        assert shared.stop() == 0


def test_udp_port_is_shared_only_with_reuse_port(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"udp://127.0.0.1:{port}"
    first = start_server(tmp_path, "--listen", url, "--threads", "2", port=None)
    try:
        # The workers' sockets use SO_REUSEPORT among themselves: without --reuse-port
        # another server must not quietly join them and take a share of the datagrams.
        # (One started with --reuse-port still can: the kernel cannot tell the old one's
        # workers from a server that opted in. docs/operations.md says so.)
        result = run_cli("serve", "--listen", url)
        assert result.returncode == 1 and b"address already in use" in result.stderr
    finally:
        assert first.stop() == 0
    a = start_server(tmp_path, "--listen", url, "--threads", "2", "--reuse-port", port=None)
    b = start_server(tmp_path, "--listen", url, "--threads", "2", "--reuse-port", port=None)
    try:
        assert a.stop() == 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(5)
            client.sendto(b"to the one left", ("127.0.0.1", port))
            assert client.recvfrom(100)[0] == b"to the one left"
    finally:
        for server in (a, b):
            if not server._stopped:
                server.stop()


def test_embedded_servers_share_a_port_and_hand_over():
    with EchoServer(reuse_port=True, threads=1) as first:
        port = first.address()[1]
        with EchoServer(f"tcp://127.0.0.1:{port}", reuse_port=True, threads=1) as second:
            first.stop()
            for _ in range(20):  # every connection now goes to the second
                with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                    s.sendall(b"x")
                    assert s.recv(1) == b"x"
            assert second.stats()["connections_accepted"] == 20


def test_option_from_every_source(tmp_path):
    config = tmp_path / "fastecho.toml"
    config.write_text("reuse_port = true\n")
    for args, env in ((["--reuse-port"], {}), ([], {"FASTECHO_REUSE_PORT": "1"}),
                      (["--config", str(config)], {})):
        result = run_cli("serve", *args, "--print-config", env=env)
        assert result.returncode == 0 and "reuse_port = true" in result.stdout.decode().splitlines()
    result = run_cli("serve", "--config", str(config), "--no-reuse-port", "--print-config")
    assert "reuse_port = false" in result.stdout.decode().splitlines()


def test_warns_when_queued_connections_would_be_reset(monkeypatch, caplog):
    monkeypatch.setattr(reuseport, "attach_migration", lambda sock: "cannot load the BPF program: "
                                                                     "Operation not permitted")
    monkeypatch.setattr(reuseport, "migrate_sysctl", lambda: False)
    with caplog.at_level(logging.INFO, logger="fastecho"):
        with socket.socket() as sock:
            server_module.enable_migration([sock])
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1 and re.search(r"will be reset.*tcp_migrate_req is 0 and cannot load "
                                           r"the BPF program: Operation not permitted", warning[0])
    caplog.clear()
    monkeypatch.setattr(reuseport, "migrate_sysctl", lambda: True)
    with caplog.at_level(logging.INFO, logger="fastecho"):
        with socket.socket() as sock:
            server_module.enable_migration([sock])
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert "tcp_migrate_req = 1" in caplog.records[0].getMessage()


def test_inherited_socket_ignores_reuse_port_with_a_warning(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        server = start_server(tmp_path, "--fd", str(sock.fileno()), "--reuse-port", port=None,
                              pass_fds=(sock.fileno(),))
        try:
            server.wait_for_stderr("--reuse-port does not apply to an inherited socket")
        finally:
            assert server.stop() == 0


@needs_migration
def test_connections_queued_on_the_old_server_move_to_the_new_one(tmp_path):
    """The race the load above may or may not hit, made certain: the old server is out of fds,
    so most clients wait in its accept queue (handshake done, not accepted) when it closes. The
    kernel must hand them to the new server, not reset them."""
    port = free_port()
    old = fixed_port_server(tmp_path, port, "--threads", "2", "--grace", "10",
                            prefix=["prlimit", "--nofile=64:64"])
    new = None
    clients: list[socket.socket] = []
    try:
        clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(120)]
        old.wait_for_stderr("out of file descriptors: accepting paused")
        migrated_before = migrated_requests()
        new = fixed_port_server(tmp_path, port)
        old.proc.send_signal(signal.SIGTERM)
        served_by_old = int(old.wait_for_stderr(r"stopping: no new connections; (\d+) open")[1])
        assert served_by_old < 100  # the rest were queued
        for i, sock in enumerate(clients):
            message = f"client {i}".encode()
            sock.sendall(message)
            assert sock.recv(100) == message, f"client {i} of 120 (old served {served_by_old})"
        migrated = migrated_requests() - migrated_before
        assert migrated >= 120 - served_by_old
        for sock in clients:
            sock.close()
        assert old.proc.wait(20) == 0
        old.stop()
        assert new.stop() == 0
    finally:
        for sock in clients:
            sock.close()
        for server in (old, new):
            if server is not None and not server._stopped:
                server.stop(signal.SIGKILL)
