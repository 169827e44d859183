"""Echo WebSocket messages with a Python library: the benchmark's WebSocket peers.

    python -m fastecho.bench.wsserver --library websockets|picows
                                      [--host 127.0.0.1] [--port 0] [--uvloop]
                                      [--tls-cert FILE --tls-key FILE]

websockets: the `websockets` library's asyncio server, each message sent
back as it came (text as text, binary as binary), no compression, no
keepalive pings, no size limit beyond the load generator's.

picows: picows (Cython), each data frame's payload sent straight back in a
frame of the same type and FIN bit, so a fragmented message comes back
fragmented alike; it answers pings itself and a close with a close.

One process, one thread, as an application would run them; --uvloop runs
either on uvloop. Prints ``<library> listening on HOST:PORT (ws) ...`` once
it accepts connections and exits on SIGTERM or SIGINT.
"""
from __future__ import annotations

import argparse
import asyncio
import socket
import ssl

from fastecho.bench.aioserver import run_on, stop_on_signals, tls_from_arguments

LIBRARIES = ("websockets", "picows")
MAX_MESSAGE = 64 * 2**20  # beyond the load generator's 16 MiB


async def serve_websockets(host: str, port: int, tls: ssl.SSLContext | None) -> asyncio.AbstractServer:
    from websockets.asyncio.server import serve

    async def echo(connection) -> None:
        async for message in connection:
            await connection.send(message)

    server = await serve(echo, host, port, ssl=tls, compression=None, max_size=MAX_MESSAGE, ping_interval=None,
                         backlog=socket.SOMAXCONN)
    return server


async def serve_picows(host: str, port: int, tls: ssl.SSLContext | None) -> asyncio.AbstractServer:
    from picows import WSListener, WSMsgType, ws_create_server

    class Echo(WSListener):
        def on_ws_frame(self, transport, frame) -> None:
            kind = frame.msg_type
            if kind == WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code(), frame.get_close_message())
                transport.disconnect()
            elif kind in (WSMsgType.BINARY, WSMsgType.TEXT, WSMsgType.CONTINUATION):
                transport.send(kind, frame.get_payload_as_memoryview(), frame.fin)
            # pings are answered by picows itself (enable_auto_pong); pongs need nothing

    return await ws_create_server(lambda request: Echo(), host, port, ssl=tls, max_frame_size=MAX_MESSAGE,
                                  backlog=socket.SOMAXCONN)


async def serve(library: str, host: str, port: int, loop_name: str, tls: ssl.SSLContext | None) -> None:
    start = serve_websockets if library == "websockets" else serve_picows
    server = await start(host, port, tls)
    stop = stop_on_signals(asyncio.get_running_loop())
    bound_host, bound_port = server.sockets[0].getsockname()[:2]
    print(f"{library} listening on {bound_host}:{bound_port} ({'wss' if tls else 'ws'}) ({loop_name}, 1 thread)",
          flush=True)
    await stop.wait()
    server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastecho.bench.wsserver", description=__doc__.split("\n")[0])
    parser.add_argument("--library", choices=LIBRARIES, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop instead of the stdlib loop")
    parser.add_argument("--tls-cert", metavar="FILE", help="serve wss with this PEM certificate chain")
    parser.add_argument("--tls-key", metavar="FILE", help="the PEM private key of --tls-cert")
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    tls = tls_from_arguments(parser, args)
    try:
        __import__(args.library)
    except ImportError as e:
        parser.exit(1, f"{parser.prog}: error: {args.library} is not importable ({e}); "
                       f"pip install 'fastecho[ws]'\n")
    run_on(args.uvloop, serve(args.library, args.host, args.port, "uvloop" if args.uvloop else "asyncio", tls))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
