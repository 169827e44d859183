"""Echo with an asyncio Protocol, on the stdlib loop or on uvloop.

    python -m fastecho.bench.aioserver [--host 127.0.0.1] [--port 0] [--uvloop]
                                       [--tls-cert FILE --tls-key FILE | --udp]

The idiomatic single-threaded Python echo server: the benchmark's yardstick
for "what a good event loop costs in user space". With --tls-cert and
--tls-key it serves TLS 1.2 and 1.3 through the stdlib ssl module, as an
asyncio or uvloop application would. With --udp it echoes UDP datagrams
with a DatagramProtocol instead.
"""
from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import ssl
from collections.abc import Coroutine


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


class EchoDatagramProtocol(asyncio.DatagramProtocol):
    """Send every datagram back to where it came from.

    Both loops' sendto() silently drops an empty datagram (asyncio up to at
    least 3.11, uvloop 0.23), so an empty one is answered through the socket
    itself; every other datagram takes the transport's path, which is what
    is measured."""

    transport: asyncio.DatagramTransport

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        if data:
            self.transport.sendto(data, addr)
            return
        try:
            self.sock.sendto(data, addr)
        except OSError:
            pass  # a full buffer drops this echo, as UDP may

    def error_received(self, exc: Exception) -> None:
        pass  # an ICMP error about one client; keep serving the others


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
    stop = stop_on_signals(loop)
    bound_host, bound_port = server.sockets[0].getsockname()[:2]
    transport = " (tls)" if tls else ""
    print(f"{loop_name} listening on {bound_host}:{bound_port}{transport} (1 thread)", flush=True)
    await stop.wait()
    server.close()


async def serve_udp(host: str, port: int, loop_name: str) -> None:
    """One UDP socket, bound here so the protocol can answer empty datagrams
    through it (see EchoDatagramProtocol); the loop owns it from then on."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    transport, _ = await loop.create_datagram_endpoint(lambda: EchoDatagramProtocol(sock), sock=sock)
    stop = stop_on_signals(loop)
    bound_host, bound_port = sock.getsockname()[:2]
    print(f"{loop_name} listening on {bound_host}:{bound_port} (udp) (1 thread)", flush=True)
    await stop.wait()
    transport.close()


def stop_on_signals(loop: asyncio.AbstractEventLoop) -> asyncio.Event:
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return stop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastecho.bench.aioserver", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop instead of the stdlib loop")
    parser.add_argument("--tls-cert", metavar="FILE", help="serve TLS with this PEM certificate chain")
    parser.add_argument("--tls-key", metavar="FILE", help="the PEM private key of --tls-cert")
    parser.add_argument("--udp", action="store_true", help="echo UDP datagrams (a DatagramProtocol) instead of TCP")
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    if args.udp and args.tls_cert:
        parser.error("--udp and --tls-cert exclude each other")
    tls = tls_from_arguments(parser, args)
    loop_name = "uvloop" if args.uvloop else "asyncio"
    run_on(args.uvloop, serve_udp(args.host, args.port, loop_name) if args.udp
           else serve(args.host, args.port, loop_name, tls))
    return 0


def tls_from_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> ssl.SSLContext | None:
    """The server context of --tls-cert/--tls-key (None without them);
    exits with status 1 and one line when they cannot be loaded."""
    if not args.tls_cert:
        return None
    try:
        return tls_context(args.tls_cert, args.tls_key)
    except (OSError, ssl.SSLError) as e:
        parser.exit(1, f"{parser.prog}: error: cannot load --tls-cert/--tls-key: {e}\n")


def run_on(uvloop_wanted: bool, main_coroutine: Coroutine[object, object, None]) -> None:
    """Run the server's main coroutine on uvloop or on the stdlib loop."""
    if uvloop_wanted:
        import uvloop

        uvloop.run(main_coroutine)
    else:
        asyncio.run(main_coroutine)


if __name__ == "__main__":
    raise SystemExit(main())
