"""pytest fixtures that serve echo from fastecho's C engine, in the test process.

Installed with fastecho (the `pytest11` entry point), so any test may ask for:

- `echo_server`: a TCP echo on an ephemeral loopback port, for one test:
  `socket.create_connection(echo_server.address())`.
- `echo_server_factory(**options)`: any `fastecho serve` options as keyword
  arguments (listen=[...], suffix=..., max_connections=..., tls_cert=...),
  started at once and stopped after the test; several per test if needed.
  tls="trustme" makes a throwaway CA and a certificate for localhost,
  127.0.0.1 and ::1 (trustme), serves it, and sets the server's
  `client_ssl_context` to an ssl.SSLContext that trusts it.

Until a test asks for one of them, the plugin costs an import of this small
module: the engine, the TLS code and trustme are loaded only by a fixture.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from fastecho.api import EchoServer

TEST_THREADS = 1  # a test's server needs no more unless it says so


@pytest.fixture
def echo_server() -> Iterator[EchoServer]:
    """A TCP echo server on 127.0.0.1, an ephemeral port, for this test."""
    from fastecho.api import EchoServer

    with EchoServer(listen=["tcp://127.0.0.1:0"], threads=TEST_THREADS) as server:
        yield server


def _trustme_files(directory) -> tuple[dict[str, str], Any]:
    """Certificate options for a fresh trustme CA's localhost certificate, and a client
    SSLContext that trusts that CA."""
    import ssl

    try:
        import trustme
    except ImportError:
        raise pytest.UsageError("echo_server_factory(tls='trustme') needs trustme: "
                                "pip install trustme (or 'fastecho[tls]')") from None
    ca = trustme.CA()
    issued = ca.issue_cert("localhost", "127.0.0.1", "::1")
    cert, key = directory / "server.pem", directory / "server.key"
    cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(key))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return {"tls_cert": str(cert), "tls_key": str(key)}, context


@pytest.fixture
def echo_server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., EchoServer]]:
    """Starts EchoServer(**options) on demand (tls="trustme" for throwaway certificates);
    every server it started is stopped after the test."""
    from fastecho.api import EchoServer

    started: list[EchoServer] = []

    def make(*, tls: str | None = None, **options: Any) -> EchoServer:
        options.setdefault("threads", TEST_THREADS)
        context = None
        if tls == "trustme":
            files, context = _trustme_files(tmp_path_factory.mktemp("fastecho-tls"))
            options = {**files, **options}
        elif tls is not None:
            raise ValueError(f"tls={tls!r}: only 'trustme' (or give tls_cert and tls_key)")
        server = EchoServer(**options)
        server.client_ssl_context = context
        started.append(server.start())
        return server

    yield make
    for server in reversed(started):
        server.stop(grace=0)
