"""--io-backend auto|epoll|io_uring: which backend runs, where it shows, and the fallback.

The forced fallback runs the server under a real seccomp filter that refuses
io_uring_setup with EPERM (tests/no_io_uring.py), as a container runtime's
default profile does.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from fastecho import EchoServer, _core
from fastecho.errors import ConfigError
from helpers import assert_one_line_error, echo_roundtrip, run_cli, scrape
from pki import tls_args

NO_IO_URING = [sys.executable, str(Path(__file__).with_name("no_io_uring.py"))]
IO_URING_DISABLED = "/proc/sys/kernel/io_uring_disabled"
WHY_NOT = _core.io_uring_unavailable()
needs_io_uring = pytest.mark.skipif(WHY_NOT is not None, reason=f"io_uring: {WHY_NOT}")


@needs_io_uring
def test_auto_takes_io_uring_and_says_so_everywhere(serve):
    server = serve("--threads", "2", "--metrics-port", "0", "--io-backend", "auto",
                   env={"FASTECHO_IO_BACKEND": None})
    assert server.listening_line.endswith("(2 threads, io_uring)")
    with server.connect() as sock:
        assert echo_roundtrip(sock, b"hello") == b"hello"
    url = server.wait_for_stderr(r"metrics at (http://\S+/metrics)")[1]
    assert scrape(url)['fastecho_io_backend_info{backend="io_uring"}'] == 1


def test_seccomp_refusal_falls_back_to_epoll_with_one_line(serve):
    server = serve("--threads", "1", "--io-backend", "auto", prefix=NO_IO_URING)
    assert server.listening_line.endswith("(1 threads, epoll)")
    line = server.wait_for_stderr(r"^.*io backend: epoll \(io_uring_setup: Operation not permitted.*$")[0]
    assert "seccomp" in line
    assert server.stderr().count("io backend:") == 1
    with server.connect() as sock:
        assert echo_roundtrip(sock, b"x" * 5000) == b"x" * 5000


@pytest.mark.parametrize("refusal, why", [
    (["--errno", "ENOSYS"], r"io_uring_setup: Function not implemented \(this kernel has no io_uring\)"),
    # io_uring_register refused: the engine's probe of the opcodes fails first.
    (["--call", "register"], r"this kernel's io_uring lacks send, receive and cancel operations"),
], ids=["no-io_uring-in-the-kernel", "no-provided-buffer-rings"])
def test_a_kernel_without_io_uring_or_its_features_falls_back_to_epoll(serve, refusal, why):
    server = serve("--threads", "1", "--io-backend", "auto", prefix=[*NO_IO_URING, *refusal])
    assert server.listening_line.endswith("(1 threads, epoll)")
    server.wait_for_stderr(rf"io backend: epoll \({why}")


@pytest.mark.skipif(os.geteuid() != 0 or not os.access(IO_URING_DISABLED, os.W_OK),
                    reason=f"needs root to set {IO_URING_DISABLED}")
def test_kernel_io_uring_disabled_falls_back_to_epoll(serve):
    with open(IO_URING_DISABLED) as f:
        before = f.read().strip()
    try:
        with open(IO_URING_DISABLED, "w") as f:
            f.write("2")  # io_uring refused to every process
        server = serve("--threads", "1", "--io-backend", "auto", env={"FASTECHO_IO_BACKEND": None})
    finally:
        with open(IO_URING_DISABLED, "w") as f:
            f.write(before)
    assert server.listening_line.endswith("(1 threads, epoll)")
    server.wait_for_stderr(r"io backend: epoll \(io_uring_setup: Operation not permitted")
    with server.connect() as sock:
        assert echo_roundtrip(sock, b"still served") == b"still served"


def test_seccomp_refusal_of_an_explicit_io_uring_is_one_line_exit_1():
    result = run_cli("serve", "--port", "0", "--io-backend", "io_uring", prefix=NO_IO_URING)
    line = assert_one_line_error(result, 1, "--io-backend io_uring", "io_uring_setup: Operation not permitted")
    assert "--io-backend epoll" in line


@needs_io_uring
def test_auto_takes_io_uring_for_every_listener_kind(serve, pki):
    server = serve("--threads", "1", "--listen", "tcp://127.0.0.1:0", "--listen", "ws://127.0.0.1:0",
                   "--listen", "udp://127.0.0.1:0", "--listen", "tls://127.0.0.1:0", "--listen", "wss://127.0.0.1:0",
                   *tls_args(pki), "--io-backend", "auto", port=None, env={"FASTECHO_IO_BACKEND": None})
    assert server.listening_line.endswith("(1 threads, io_uring)")


def test_explicit_epoll_is_epoll(serve):
    server = serve("--threads", "2", "--io-backend", "epoll")
    assert server.listening_line.endswith("(2 threads, epoll)")


def test_print_config_and_bad_values():
    result = run_cli("serve", "--print-config", "--io-backend", "epoll")
    assert 'io_backend = "epoll"' in result.stdout.decode()
    result = run_cli("serve", "--print-config", env={"FASTECHO_IO_BACKEND": None})
    assert 'io_backend = "epoll"' in result.stdout.decode()  # the default
    assert_one_line_error(run_cli("serve", "--io-backend", "uring"), 2, "must be one of auto, epoll, io_uring")
    assert_one_line_error(run_cli("serve", env={"FASTECHO_IO_BACKEND": "kqueue"}), 2,
                          "FASTECHO_IO_BACKEND", "must be one of auto, epoll, io_uring")


def test_engine_refuses_an_unknown_backend():
    with pytest.raises(ConfigError, match="unknown io backend 'select'"):
        _core.Engine(1, io_backend="select")


@needs_io_uring
def test_embedded_server_reports_its_backend():
    with EchoServer(threads=1, io_backend="io_uring") as server:
        assert server.io_backend == "io_uring"
    with EchoServer(listen=["udp://127.0.0.1:0"], threads=1, io_backend="auto") as server:
        assert server.io_backend == "io_uring"  # auto: io_uring serves every listener kind
