"""The command line: every error path prints one clear line and exits non-zero."""
from __future__ import annotations

import re
import signal
import socket
import subprocess
from importlib.metadata import version

import pytest

from helpers import assert_one_line_error, fastecho_command, read_line, reap, run_cli


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--threads", "0"], "--threads"),
        (["--threads", "many"], "--threads"),
        (["--threads", "100000"], "--threads"),
        (["--port", "70000"], "--port"),
        (["--port", "-1"], "--port"),
        (["--port", "http"], "--port"),
        (["--backlog", "0"], "--backlog"),
        (["--grace", "-1"], "--grace"),
        (["--grace", "soon"], "--grace"),
        (["--max-pending-output", "10"], "--max-pending-output"),
        (["--no-such-option"], "--no-such-option"),
        (["--threads"], "--threads"),
    ],
)
def test_bad_serve_argument_exits_2_with_one_line(args, fragment):
    assert_one_line_error(run_cli("serve", *args), 2, fragment)


def test_unknown_command_exits_2():
    assert_one_line_error(run_cli("sever"), 2, "sever")


def test_port_in_use_exits_1_with_one_line():
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        assert_one_line_error(run_cli("serve", "--port", str(port)), 1, "already in use", str(port))


def test_address_not_on_this_machine_exits_1():
    # 192.0.2.1 is TEST-NET-1: binding to it fails locally, no packet is sent.
    assert_one_line_error(run_cli("serve", "--host", "192.0.2.1", "--port", "0"), 1, "192.0.2.1")


def test_version_matches_package_metadata():
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.decode().strip() == f"fastecho {version('fastecho')}"


def test_help_lists_the_commands():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "serve" in result.stdout.decode()


def test_listening_line_reports_real_port_and_threads():
    proc = subprocess.Popen(fastecho_command("serve", "--port", "0", "--threads", "3"),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        line = read_line(proc, 15).decode()
        match = re.fullmatch(r"fastecho listening on 127\.0\.0\.1:(\d+) \(3 threads, (epoll|io_uring)\)\n", line)
        assert match, line
        port = int(match[1])
        assert port != 0
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"x")
            assert s.recv(1) == b"x"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        reap(proc)
