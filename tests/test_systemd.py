"""systemd: sd_notify over NOTIFY_SOCKET, socket activation (LISTEN_FDS), --fd, the unit files."""
from __future__ import annotations

import configparser
import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from helpers import echo_roundtrip, fastecho_command, start_server

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "systemd"


def notifications(sock: socket.socket, until: str, timeout: float = 20.0) -> list[str]:
    """Datagrams received on sock until one contains `until` (bounded by timeout)."""
    sock.settimeout(timeout)
    received = []
    while not any(until in m for m in received):
        received.append(sock.recv(4096).decode())
    return received


@pytest.fixture
def notify_socket(tmp_path):
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        yield sock, str(path)


def test_ready_and_stopping_are_sent_to_notify_socket(serve, notify_socket):
    sock, path = notify_socket
    server = serve("--threads", "1", env={"NOTIFY_SOCKET": path})
    ready = notifications(sock, "READY=1")[-1].split("\n")
    assert "READY=1" in ready
    assert f"MAINPID={server.pid}" in ready
    assert f"STATUS=listening on 127.0.0.1:{server.port}" in ready
    server.proc.send_signal(signal.SIGTERM)
    assert "STOPPING=1" in notifications(sock, "STOPPING=1")[-1].split("\n")
    assert server.stop() == 0


def test_abstract_notify_socket_is_supported(serve):
    name = f"fastecho-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        server = serve("--threads", "1", env={"NOTIFY_SOCKET": "@" + name})
        assert "READY=1" in notifications(sock, "READY=1")[-1]
        assert server.stop() == 0


def test_unreachable_notify_socket_is_a_warning_not_a_failure(serve, tmp_path):
    server = serve("--threads", "1", env={"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    with server.connect() as sock:
        assert echo_roundtrip(sock, b"ok") == b"ok"
    assert server.stop() == 0
    assert "[WARNING]" in server.stderr() and "cannot notify systemd" in server.stderr()


# A stand-in for systemd: put the socket on fd 3, set LISTEN_PID to the pid
# that exec keeps, and exec the command that follows.
ACTIVATE = (
    "import os, sys\n"
    "fd, pid = int(sys.argv[1]), sys.argv[2]\n"
    "if fd != 3:\n"
    "    os.dup2(fd, 3)\n"
    "    os.close(fd)\n"
    "os.environ['LISTEN_FDS'] = '1'\n"
    "os.environ['LISTEN_FDNAMES'] = 'fastecho.socket'\n"
    "os.environ['LISTEN_PID'] = str(os.getpid()) if pid == 'self' else pid\n"
    "os.execv(sys.argv[3], sys.argv[3:])\n"
)


def activated_prefix(fd: int, pid: str = "self") -> list[str]:
    return [sys.executable, "-c", ACTIVATE, str(fd), pid]


@pytest.fixture
def activated_server(tmp_path):
    started = []

    def start(listener: socket.socket, *args: str, pid: str = "self"):
        # start_server runs prefix + [python, -m, fastecho, serve, ...]: the
        # launcher execs that command with the socket on fd 3.
        server = start_server(tmp_path, *args, port=None, pass_fds=(listener.fileno(),),
                              prefix=activated_prefix(listener.fileno(), pid))
        started.append(server)
        return server

    yield start
    for server in started:
        if not server._stopped:
            server.stop()


def test_socket_activation_serves_the_inherited_socket(activated_server):
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        server = activated_server(listener, "--threads", "2")
        assert server.port == port  # it did not bind a port of its own
        listener.close()  # only the server holds it now
        with server.connect() as sock:
            assert echo_roundtrip(sock, b"activated") == b"activated"
        assert server.stop() == 0


def test_socket_activation_for_another_pid_is_ignored(activated_server):
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        server = activated_server(listener, "--threads", "1", "--port", "0", pid="1")
        assert server.port != port
        assert server.stop() == 0


def test_fd_option_serves_any_inherited_listening_socket(serve):
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        fd = listener.fileno()
        server = serve("--threads", "1", "--fd", str(fd), port=None, pass_fds=(fd,))
        assert server.port == port
    with server.connect() as sock:
        assert echo_roundtrip(sock, b"by fd") == b"by fd"
    assert server.stop() == 0


def _fd_error(fd: int, pass_fds=()) -> str:
    result = subprocess.run(fastecho_command("serve", "--fd", str(fd)), capture_output=True,
                            stdin=subprocess.DEVNULL, pass_fds=pass_fds, timeout=30)
    err = result.stderr.decode()
    assert result.returncode == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_fd_that_is_not_open_is_one_line_exit_1():
    assert _fd_error(987) == "fastecho: error: cannot serve fd 987 (from --fd): not an open file descriptor"


def test_fd_that_is_a_file_is_one_line_exit_1(tmp_path):
    with open(tmp_path / "plain", "w") as f:
        fd = f.fileno()
        line = _fd_error(fd, pass_fds=(fd,))
    assert line.startswith(f"fastecho: error: cannot serve fd {fd} (from --fd): not a socket")


def test_fd_that_is_not_listening_is_one_line_exit_1():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        fd = sock.fileno()
        line = _fd_error(fd, pass_fds=(fd,))
    assert line == f"fastecho: error: cannot serve fd {fd} (from --fd): the socket is not listening"


def test_fd_that_is_not_tcp_is_one_line_exit_1():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fd = sock.fileno()
        line = _fd_error(fd, pass_fds=(fd,))
    assert line == f"fastecho: error: cannot serve fd {fd} (from --fd): not a TCP socket"


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # keys are case-sensitive
    parser.read_string((DEPLOY / name).read_text())
    return parser


def test_service_unit_is_type_notify_and_runs_fastecho_serve():
    unit = _unit("fastecho.service")
    assert unit["Service"]["Type"] == "notify"
    assert " serve" in unit["Service"]["ExecStart"]
    assert "fastecho" in unit["Service"]["ExecStart"]
    assert "HUP" in unit["Service"]["ExecReload"]
    assert "fastecho.socket" in unit["Unit"]["Requires"]


def test_socket_unit_listens_on_tcp():
    unit = _unit("fastecho.socket")
    assert unit["Socket"]["ListenStream"]
    assert unit["Socket"].get("Accept", "no") == "no"  # one server, one listening socket
    assert unit["Install"]["WantedBy"] == "sockets.target"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_unit_files_pass_systemd_analyze_verify(tmp_path):
    fastecho = shutil.which("fastecho", path=os.path.dirname(sys.executable)) or shutil.which("fastecho")
    if fastecho is None:
        pytest.skip("no fastecho script to point ExecStart at")
    for name in ("fastecho.service", "fastecho.socket"):
        text = (DEPLOY / name).read_text().replace("/usr/local/bin/fastecho", fastecho)
        (tmp_path / name).write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", "--man=no",
                             str(tmp_path / "fastecho.socket"), str(tmp_path / "fastecho.service")],
                            capture_output=True, timeout=60)
    output = (result.stdout + result.stderr).decode()
    if result.returncode != 0 and ("Failed to" in output and "bus" in output.lower()):
        pytest.skip(f"systemd-analyze cannot run here: {output.strip()[:200]}")
    assert result.returncode == 0, output
    # verify exits 0 even for unknown keys and bad values; it only warns.
    assert "ignoring" not in output and "Failed" not in output and "Unknown" not in output, output
