"""`fastecho client --ws URL`: each stdin line as one WebSocket text message.

It connects to a ws:// or wss:// URL with the `websockets` library (its
synchronous client), sends each line of stdin without its newline as a text
message, and prints the reply. At EOF it closes with 1000 and exits 0. A
refused connection, a failed handshake (with the server's HTTP status), a
close from the server, or a reply that does not come within the timeout is
one line and exit 1 (ClientError). wss:// checks the certificate as --tls
does (TlsOptions: --ca, --insecure, --cert/--key).
"""
from __future__ import annotations

import sys
import urllib.parse
from typing import BinaryIO

from fastecho.client import TlsOptions
from fastecho.errors import ClientError


def check_url(url: str) -> str:
    """url if it is a ws:// or wss:// URL with a host; ClientError otherwise."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (raises for a port that is not a number)
    except ValueError as e:
        raise ClientError(f"{url!r} is not a WebSocket URL: {e}") from None
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ClientError(f"{url!r} is not a WebSocket URL (ws://HOST:PORT/PATH or wss://...)")
    return url


def closed_why(e) -> str:
    """The server's close code and reason from a websockets ConnectionClosed (also fastecho probe's)."""
    rcvd = e.rcvd
    return f"code {rcvd.code}" + (f" ({rcvd.reason})" if rcvd.reason else "") if rcvd else "no close frame"


def run_ws(url: str, timeout: float = 10.0, tls: TlsOptions | None = None,
           stdin: BinaryIO | None = None, stdout: BinaryIO | None = None) -> int:
    """Exchange each line of stdin as a text message with the server at url; 0 at EOF."""
    from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
    from websockets.sync.client import connect

    stdin = stdin or sys.stdin.buffer
    stdout = stdout or sys.stdout.buffer
    check_url(url)
    secure = url.startswith("wss:")
    if tls is not None and not secure:
        raise ClientError("--ca, --insecure, --cert and --key need a wss:// URL")
    context = (tls or TlsOptions()).context() if secure else None
    try:
        ws = connect(url, ssl=context, open_timeout=timeout, close_timeout=timeout,
                     compression=None, max_size=None, user_agent_header="fastecho-client")
    except InvalidStatus as e:
        raise ClientError(f"{url} refused the upgrade: HTTP {e.response.status_code}") from None
    except (InvalidHandshake, InvalidURI) as e:
        raise ClientError(f"WebSocket handshake with {url} failed: {e}") from None
    except TimeoutError:
        raise ClientError(f"no WebSocket handshake from {url} within {timeout:g}s") from None
    except OSError as e:
        raise ClientError(f"cannot connect to {url}: {e.strerror or e}") from None
    with ws:
        try:
            while line := stdin.readline():
                text = line.rstrip(b"\r\n").decode("utf-8", "replace")
                ws.send(text)
                try:
                    reply = ws.recv(timeout=timeout)
                except TimeoutError:
                    raise ClientError(f"no reply from {url} within {timeout:g}s") from None
                stdout.write((reply.encode() if isinstance(reply, str) else reply) + b"\n")
                stdout.flush()
        except ConnectionClosed as e:
            raise ClientError(f"{url} closed the connection: {closed_why(e)}") from None
        except OSError as e:
            raise ClientError(f"connection to {url} lost: {e.strerror or e}") from None
    return 0
