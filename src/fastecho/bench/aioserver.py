"""Echo with an asyncio Protocol, on the stdlib loop or on uvloop.

    python -m fastecho.bench.aioserver [--host 127.0.0.1] [--port 0] [--uvloop]
                                       [--tls-cert FILE --tls-key FILE]

The idiomatic single-threaded Python echo server: the benchmark's yardstick
for "what a good event loop costs in user space". With --tls-cert and
--tls-key it serves TLS 1.2 and 1.3 through the stdlib ssl module, as an
asyncio or uvloop application would.
"""
from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import ssl


class EchoProtocol(asyncio.Protocol):
    """Write back what arrives; stop reading while the peer is not reading,
    so a slow client cannot make the server buffer without bound."""

    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; don't check
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()


def tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server context as an application would make one: the stdlib's
    defaults (tickets, ciphers, groups), TLS 1.2 at the least."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context


async def serve(host: str, port: int, loop_name: str, tls: ssl.SSLContext | None = None) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(EchoProtocol, host, port, backlog=socket.SOMAXCONN, ssl=tls)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    bound_host, bound_port = server.sockets[0].getsockname()[:2]
    transport = " (tls)" if tls else ""
    print(f"{loop_name} listening on {bound_host}:{bound_port}{transport} (1 thread)", flush=True)
    await stop.wait()
    server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastecho.bench.aioserver", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop instead of the stdlib loop")
    parser.add_argument("--tls-cert", metavar="FILE", help="serve TLS with this PEM certificate chain")
    parser.add_argument("--tls-key", metavar="FILE", help="the PEM private key of --tls-cert")
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    tls = None
    if args.tls_cert:
        try:
            tls = tls_context(args.tls_cert, args.tls_key)
        except (OSError, ssl.SSLError) as e:
            parser.exit(1, f"{parser.prog}: error: cannot load --tls-cert/--tls-key: {e}\n")
    if args.uvloop:
        import uvloop

        uvloop.run(serve(args.host, args.port, "uvloop", tls))
    else:
        asyncio.run(serve(args.host, args.port, "asyncio", tls))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
