"""Fixtures that start servers and always stop them."""
from __future__ import annotations

import signal

import pytest

from helpers import ServerProcess, start_server


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
def shared_server(tmp_path_factory):
    """One server for tests that only need echo, to keep the suite fast."""
    server = start_server(tmp_path_factory.mktemp("shared"), "--threads", "4")
    yield server
    assert server.stop() == 0
