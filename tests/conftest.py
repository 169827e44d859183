"""Fixtures that start servers and always stop them."""

from __future__ import annotations

import functools
import signal
from collections.abc import Iterator
import subprocess

import pytest

from fastecho import _core
from helpers import HAPROXY, ServerProcess, free_port, listening, start_server, wait_until
from pki import Pki, make_pki

pytest_plugins = ["pytester"]  # tests/test_pytest_plugin.py tests fastecho's own plugin with it

_NO_IO_URING = _core.io_uring_unavailable()


@pytest.fixture(scope="module", params=["epoll", pytest.param("io_uring", marks=pytest.mark.skipif(
    _NO_IO_URING is not None, reason=f"io_uring: {_NO_IO_URING}"))])
def io_backend(request) -> Iterator[str]:
    """Runs a module's tests once per I/O backend (as uvloop runs its suite on two
    loops). A module opts in with `pytestmark = pytest.mark.usefixtures("io_backend")`:
    servers it starts (`fastecho serve`, also a module's shared_server, which this
    comes before) take the backend from FASTECHO_IO_BACKEND, and engines it makes
    with its own `Engine` name get it too."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FASTECHO_IO_BACKEND", request.param)
        if hasattr(request.module, "Engine"):
            patch.setattr(request.module, "Engine", functools.partial(_core.Engine, io_backend=request.param))
        yield request.param


@pytest.fixture
def serve(tmp_path):
    """Factory: serve(*cli_args) starts a server; all are stopped at teardown."""
    started: list[ServerProcess] = []

    def factory(*args: str, prefix: list[str] | None = None, **options) -> ServerProcess:
        server = start_server(tmp_path, *args, prefix=prefix, **options)
        started.append(server)
        return server

    yield factory
    for server in started:
        if not server._stopped:
            server.stop(signal.SIGTERM)


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory, io_backend):
    """One server for tests that only need echo, to keep the suite fast; one per
    I/O backend, so the tests that use it run on each."""
    server = start_server(tmp_path_factory.mktemp("shared"), "--threads", "4")
    assert server.listening_line.endswith(f", {io_backend})"), server.listening_line
    yield server
    assert server.stop() == 0


@pytest.fixture
def haproxy(tmp_path):
    """Factory: haproxy(backend_port, server_options) runs HAProxy in front; returns its port."""
    started: list[tuple[subprocess.Popen, str]] = []

    def start(backend_port: int, server_options: str) -> int:
        port = free_port()
        config = tmp_path / f"haproxy-{port}.cfg"
        config.write_text(f"""\
global
    maxconn 100

defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s

frontend front
    bind 127.0.0.1:{port}
    default_backend fastecho

backend fastecho
    server s1 127.0.0.1:{backend_port} {server_options}
""")
        log_path = str(tmp_path / f"haproxy-{port}.log")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([HAPROXY, "-f", str(config), "-db"], stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT)
        started.append((proc, log_path))
        ready = wait_until(lambda: proc.poll() is not None or listening(port), 10)
        with open(log_path, errors="replace") as f:
            assert ready and proc.poll() is None, f"haproxy did not start: {f.read()}"
        return port

    yield start
    for proc, _ in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    """Certificates from a throwaway trustme CA (see tests/pki.py)."""
    return make_pki(tmp_path_factory.mktemp("pki"))
