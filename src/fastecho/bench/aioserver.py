"""Echo with an asyncio Protocol, on the stdlib loop or on uvloop.

    python -m fastecho.bench.aioserver [--host 127.0.0.1] [--port 0] [--uvloop]

The idiomatic single-threaded Python echo server: the benchmark's yardstick
for "what a good event loop costs in user space".
"""
from __future__ import annotations

import argparse
import asyncio
import signal
import socket


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


async def serve(host: str, port: int, loop_name: str) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(EchoProtocol, host, port, backlog=socket.SOMAXCONN)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    bound_host, bound_port = server.sockets[0].getsockname()[:2]
    print(f"{loop_name} listening on {bound_host}:{bound_port} (1 thread)", flush=True)
    await stop.wait()
    server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastecho.bench.aioserver", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop instead of the stdlib loop")
    args = parser.parse_args(argv)
    if args.uvloop:
        import uvloop

        uvloop.run(serve(args.host, args.port, "uvloop"))
    else:
        asyncio.run(serve(args.host, args.port, "asyncio"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
