"""`fastecho probe URL`: one echo through a listener, for health checks.

It resolves the URL's host, connects (tcp, tls, ws, wss) or sends a datagram
(udp), echoes a random payload, checks that every byte came back, closes
cleanly (FIN; close_notify first over TLS; close 1000 over WebSocket) and
returns one line:

    ok tcp://127.0.0.1:7000 32 bytes echoed in 0.061 ms (0.342 ms in all)

The first figure is the round trip, from sending the payload to the last byte
of its echo (udp: from the datagram that was answered); the second is the
whole probe up to the verified echo: resolving, connecting, handshakes, the
echo. A failed probe is a ClientError (the CLI: exit 1) whose message is
`probe URL: REASON`; a URL that cannot be probed, or a --size it cannot carry,
is a ConfigError (exit 2). Everything, the name lookup included, is bounded by
one total timeout.

A container HEALTHCHECK runs this every few seconds, so it imports only what
the URL needs: ssl for tls and wss, websockets for ws and wss.
"""
from __future__ import annotations

import os
import select
import socket
import time
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastecho.addresses import format_address
from fastecho.errors import ClientError, ConfigError

if TYPE_CHECKING:
    import ssl

SCHEMES = ("tcp", "udp", "tls", "ws", "wss")
DEFAULT_PORTS = {"ws": 80, "wss": 443}  # a URL without a port: as browsers do
MAX_SIZE = 1 << 20  # payload bytes over a stream or WebSocket
MAX_UDP_SIZE = 65_507  # the largest UDP payload over IPv4
UDP_TRIES = 3  # one datagram and two retries, each in its share of the timeout
CLOSE_WAIT = 1.0  # at most this long for the server's side of a clean close
TLS_OPTIONS = "--ca, --insecure, --cert and --key"


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    resource: str = ""  # ws, wss: path and query ("/" at least)

    @property
    def url(self) -> str:
        return f"{self.scheme}://{format_address(self.host, self.port)}{self.resource}"

    @property
    def tls(self) -> bool:
        return self.scheme in ("tls", "wss")


def _shown(text: str) -> str:
    """text as a message shows it: as given if printable and unspaced, else quoted."""
    return text if text.isprintable() and text and not any(c.isspace() for c in text) else repr(text)


def parse(url: str) -> Target:
    """The Target of SCHEME://HOST:PORT (ws, wss: [:PORT][/PATH][?QUERY]); ConfigError if not one."""
    def bad(reason: str) -> ConfigError:
        return ConfigError(f"probe {_shown(url)}: {reason}")

    if "://" not in url:
        raise bad("not a URL (expected SCHEME://HOST:PORT, e.g. tcp://127.0.0.1:7000)")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as e:  # a port that is not a number or out of range, a bad [v6] host
        raise bad(f"bad URL: {e}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        if scheme.endswith("+proxy"):
            raise bad(f"the probe sends no PROXY header: probe a {scheme[:-6]}:// listener, "
                      f"or through the proxy")
        raise bad(f"unknown scheme {scheme!r} (probes {', '.join(SCHEMES)})")
    if parts.username is not None or parts.password is not None:
        raise bad("bad URL: a user or password has no meaning here")
    if not parts.hostname:
        raise bad("bad URL: no host")
    if _shown(parts.hostname) != parts.hostname:
        raise bad(f"bad URL: host {parts.hostname!r}")
    if parts.fragment or url.endswith("#"):
        raise bad("bad URL: a fragment has no meaning here")
    if scheme in DEFAULT_PORTS:
        port = DEFAULT_PORTS[scheme] if port is None else port
        resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    else:
        if parts.path not in ("", "/") or parts.query:
            raise bad(f"bad URL: a {scheme}:// URL is only {scheme}://HOST:PORT")
        resource = ""
    if not port:
        raise bad("bad URL: no port" if port is None else "bad URL: port 0")
    return Target(scheme, parts.hostname, port, resource)


class _Clock:
    """The probe's one deadline, and what it measures."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.start = time.monotonic()
        self.end = self.start + timeout

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def left(self, doing: str) -> float:
        """Seconds left, > 0; the timed-out ClientError once there are none."""
        left = self.remaining()
        if left <= 0:
            raise self.expired(doing)
        return left

    def expired(self, doing: str) -> ClientError:
        return ClientError(f"timed out after {self.timeout:g}s {doing}")


def probe(url: str, timeout: float = 5.0, size: int = 32, *, ca: str | None = None,
          insecure: bool = False, cert: str | None = None, key: str | None = None) -> str:
    """Echo size random bytes through the listener at url; the `ok ...` line.

    ConfigError for a URL, size or TLS option that cannot be probed; ClientError
    (`probe URL: REASON`) for a probe that failed. ca, insecure, cert and key
    are TlsOptions' (tls and wss only; the system's CAs by default).
    """
    target = parse(url)
    limit = MAX_UDP_SIZE if target.scheme == "udp" else MAX_SIZE
    if not 1 <= size <= limit:
        raise ConfigError(f"probe {target.url}: --size must be 1 to {limit} bytes"
                          + (" (a UDP datagram over IPv4)" if target.scheme == "udp" else ""))
    if (ca or insecure or cert or key) and not target.tls:
        raise ConfigError(f"probe {target.url}: {TLS_OPTIONS} need a tls:// or wss:// URL")
    payload = os.urandom(size)
    try:
        context = _prepare(target, ca, insecure, cert, key)
        clock = _Clock(timeout)
        rtt = _PROBES[target.scheme](target, payload, clock, context)
        elapsed = time.monotonic() - clock.start
    except ClientError as e:
        raise ClientError(f"probe {target.url}: {e}") from None
    except OSError as e:  # whatever the helpers did not name
        raise ClientError(f"probe {target.url}: {e.strerror or e}") from None
    except Exception as e:  # noqa: BLE001 (a health check answers in one line, whatever happens)
        raise ClientError(f"probe {target.url}: unexpected error: {type(e).__name__}: {e}") from None
    return f"ok {target.url} {size} bytes echoed in {rtt * 1e3:.3f} ms ({elapsed * 1e3:.3f} ms in all)"


def _prepare(target: Target, ca: str | None, insecure: bool, cert: str | None,
             key: str | None) -> ssl.SSLContext | None:
    """What the probe needs before its clock starts: the modules its scheme imports (tens of
    milliseconds for websockets) and the TLS context (ClientError if a file is unusable)."""
    if target.scheme in ("ws", "wss"):
        import websockets.sync.client  # noqa: F401

        import fastecho.client_ws  # noqa: F401
    if not target.tls:
        return None
    from fastecho.client import TlsOptions

    return TlsOptions(ca, insecure, cert, key).context()


# ---------------------------------------------------------------- resolving and connecting

def _resolve(target: Target, kind: int, clock: _Clock) -> list[tuple]:
    """getaddrinfo for the target, within the clock: a name is looked up in a thread,
    since the resolver may take longer (resolv.conf's timeouts) than a probe may."""
    try:
        return socket.getaddrinfo(target.host, target.port, type=kind, flags=socket.AI_NUMERICHOST)
    except socket.gaierror:
        pass  # a name, not an address
    import threading

    found: list = []

    def lookup() -> None:
        try:
            found.append(socket.getaddrinfo(target.host, target.port, type=kind))
        except OSError as e:
            found.append(e)

    thread = threading.Thread(target=lookup, name="probe-resolve", daemon=True)
    thread.start()
    thread.join(clock.left(f"resolving {target.host}"))
    if not found:  # the thread is left to the resolver: the process exits without it
        raise clock.expired(f"resolving {target.host}")
    if isinstance(found[0], OSError):
        raise ClientError(f"cannot resolve {target.host}: {found[0].strerror or found[0]}")
    return found[0]


def _connect(target: Target, clock: _Clock) -> socket.socket:
    """A TCP connection to the first of the target's addresses that accepts one (TCP_NODELAY)."""
    failure: OSError | None = None
    for family, kind, proto, _, address in _resolve(target, socket.SOCK_STREAM, clock):
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(clock.left("connecting"))
            sock.connect(address)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except TimeoutError:
            sock.close()
            raise clock.expired("connecting") from None
        except OSError as e:
            sock.close()
            failure = e
        except BaseException:
            sock.close()
            raise
    if isinstance(failure, ConnectionRefusedError):
        raise ClientError("connection refused")
    raise ClientError(f"cannot connect: {failure.strerror or failure}")


def _start_tls(sock: socket.socket, target: Target, context: ssl.SSLContext, clock: _Clock) -> ssl.SSLSocket:
    from fastecho.client import tls_failure

    sock.settimeout(clock.left("in the TLS handshake"))
    try:
        return context.wrap_socket(sock, server_hostname=target.host)
    except TimeoutError:
        raise clock.expired("in the TLS handshake") from None
    except OSError as e:
        raise ClientError(f"TLS handshake failed: {tls_failure(e)}") from None


def _compare(sent: bytes, got: bytes) -> str | None:
    """How got differs from sent, in words; None if it does not."""
    if got == sent:
        return None
    at = next((i for i, (a, b) in enumerate(zip(sent, got)) if a != b), None)
    if at is not None:
        return f"echo differs at byte {at + 1} of {len(sent)} (sent 0x{sent[at]:02x}, got 0x{got[at]:02x})"
    return f"echo is {len(got)} bytes, {len(sent)} were sent"


# ---------------------------------------------------------------- tcp and tls

def _stream(target: Target, payload: bytes, clock: _Clock, context: ssl.SSLContext | None) -> float:
    sock = _connect(target, clock)
    try:
        if context is not None:
            sock = _start_tls(sock, target, context, clock)
        rtt = _stream_echo(sock, payload, clock)
    except BaseException:
        sock.close()  # a reset, if data is unread: the probe failed anyway
        raise
    _close_stream(sock, clock)
    return rtt


def _stream_echo(sock: socket.socket, payload: bytes, clock: _Clock) -> float:
    """Send payload while reading its echo (so that a payload larger than the socket
    buffers cannot deadlock against the server's backpressure); the round trip."""
    retry: tuple[type[BaseException], ...] = (BlockingIOError, InterruptedError)
    tls_pending = getattr(sock, "pending", None)  # TLS: bytes decrypted already, which poll cannot see
    if tls_pending is not None:
        import ssl

        retry += (ssl.SSLWantReadError, ssl.SSLWantWriteError)
    sock.setblocking(False)
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLOUT)
    out, got, n = memoryview(payload), bytearray(), len(payload)
    start = time.monotonic()
    while len(got) < n:
        if not out:
            poller.modify(sock, select.POLLIN)
        if tls_pending is not None and tls_pending():
            events = [(0, select.POLLIN)]
        else:
            left = clock.left(f"waiting for the echo ({len(got)} of {n} bytes back)")
            events = poller.poll(int(left * 1000) + 1)
        for _, mask in events:
            try:
                if mask & select.POLLOUT and out:
                    out = out[sock.send(out):]
                if mask & (select.POLLIN | select.POLLHUP | select.POLLERR):
                    data = sock.recv(n - len(got))
                    if not data:
                        raise ClientError(f"connection closed after {len(got)} of {n} bytes")
                    got += data
            except retry:
                continue
            except (ConnectionResetError, BrokenPipeError) as e:
                how = "reset" if isinstance(e, ConnectionResetError) else "closed"
                raise ClientError(f"connection {how} after {len(got)} of {n} bytes") from None
            except OSError as e:
                raise ClientError(f"connection failed after {len(got)} of {n} bytes: {e.strerror or e}") from None
    rtt = time.monotonic() - start
    if problem := _compare(payload, bytes(got)):
        raise ClientError(problem)
    return rtt


def _close_stream(sock: socket.socket, clock: _Clock) -> None:
    """Our FIN (close_notify first over TLS), then the server's, waited for within what is
    left of the timeout (CLOSE_WAIT at most), so that neither side sees a reset. The echo
    has been verified: nothing here can fail the probe."""
    try:
        wait = min(clock.remaining(), CLOSE_WAIT)
        if wait > 0:
            sock.settimeout(wait)
            if hasattr(sock, "unwrap"):
                sock = sock.unwrap()  # sends close_notify, reads the server's
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(4096):
                pass
    except OSError:
        pass
    finally:
        sock.close()


# ---------------------------------------------------------------- udp

def _udp(target: Target, payload: bytes, clock: _Clock, context: ssl.SSLContext | None) -> float:
    """The echo from the first of the target's addresses that does not refuse it (ICMP port
    unreachable: a name such as localhost may have ::1 first, where nothing listens)."""
    infos = _resolve(target, socket.SOCK_DGRAM, clock)
    for i, (family, kind, proto, _, address) in enumerate(infos, 1):
        with socket.socket(family, kind, proto) as sock:
            sock.connect(address)  # only the server's datagrams come back, and ICMP errors are seen
            try:
                return _udp_echo(sock, payload, clock)
            except ConnectionRefusedError:
                if i == len(infos):
                    raise ClientError("refused (ICMP port unreachable: nothing listens there)") from None
    raise AssertionError("getaddrinfo returned no address")


def _udp_echo(sock: socket.socket, payload: bytes, clock: _Clock) -> float:
    """One datagram, sent again twice (UDP_TRIES in all) in equal shares of the time left,
    until the same datagram comes back; other datagrams are passed over."""
    share = clock.left("sending") / UDP_TRIES
    others: list[str] = []
    for attempt in range(1, UDP_TRIES + 1):
        try_end = clock.end - share * (UDP_TRIES - attempt)
        sent_at = time.monotonic()
        sock.send(payload)
        while (wait := try_end - time.monotonic()) > 0:
            sock.settimeout(wait)
            try:
                reply = sock.recv(MAX_UDP_SIZE + 1)
            except TimeoutError:
                break
            if (problem := _compare(payload, reply)) is None:
                return time.monotonic() - sent_at
            others.append(problem)
    came = f"{len(others)} came back differing, the last: {others[-1]}" if others else "none came back"
    raise clock.expired(f"waiting for the echo ({UDP_TRIES} datagrams sent, {came})")


# ---------------------------------------------------------------- ws and wss

def _ws(target: Target, payload: bytes, clock: _Clock, context: ssl.SSLContext | None) -> float:
    """The upgrade (over TLS for wss) by the websockets library, on a socket connected here
    so that the name lookup keeps to the clock; then one binary message, and close 1000."""
    from websockets.exceptions import ConnectionClosed

    from fastecho.client_ws import closed_why

    sock = _connect(target, clock)
    try:
        ws = _ws_open(target, sock, len(payload), clock, context)
    except BaseException:
        sock.close()  # the library may have closed it already
        raise
    with ws:  # on the way out: close 1000 (1011 after an error) and the server's close
        try:
            start = time.monotonic()
            ws.send(payload)
            reply = ws.recv(timeout=clock.left("waiting for the echo"))
            rtt = time.monotonic() - start
        except TimeoutError:
            raise clock.expired("waiting for the echo") from None
        except ConnectionClosed as e:
            if e.sent is not None and e.sent.code == 1009:  # max_size
                raise ClientError(f"echo is larger than the {len(payload)} bytes sent") from None
            raise ClientError(f"connection closed before the echo: {closed_why(e)}") from None
        finally:  # the close handshake in what time is left
            ws.close_timeout = max(0.001, min(clock.remaining(), CLOSE_WAIT))
        if isinstance(reply, str):
            raise ClientError("echo came back as a text message, not binary")
        if problem := _compare(payload, reply):
            raise ClientError(problem)
    return rtt


def _ws_open(target: Target, sock: socket.socket, size: int, clock: _Clock, context: ssl.SSLContext | None):
    """The websockets ClientConnection over sock; ClientError naming what failed if none."""
    from websockets.exceptions import InvalidHandshake, InvalidStatus
    from websockets.sync.client import connect

    handshake = "in the TLS or WebSocket handshake" if context is not None else "in the WebSocket handshake"
    try:
        return connect(target.url, sock=sock, ssl=context, open_timeout=clock.left(handshake),
                       close_timeout=CLOSE_WAIT, ping_interval=None, compression=None,
                       max_size=size, user_agent_header="fastecho-probe")
    except InvalidStatus as e:
        raise ClientError(f"upgrade refused: HTTP {e.response.status_code}") from None
    except TimeoutError:
        raise clock.expired(handshake) from None
    except OSError as e:  # ssl.SSLError among them (a certificate error is a ValueError too)
        if context is not None:
            from fastecho.client import tls_failure

            raise ClientError(f"TLS or WebSocket handshake failed: {tls_failure(e)}") from None
        raise ClientError(f"WebSocket handshake failed: {e.strerror or 'connection closed'}") from None
    except InvalidHandshake as e:
        raise ClientError(f"WebSocket handshake failed: {e}") from None
    except ValueError as e:  # a redirect, which a probe does not follow (nor can, on its own socket)
        if isinstance(e.__cause__, InvalidStatus):
            raise ClientError(f"upgrade refused: HTTP {e.__cause__.response.status_code}") from None
        raise ClientError(f"WebSocket handshake failed: {e}") from None


_PROBES = {"tcp": _stream, "tls": _stream, "udp": _udp, "ws": _ws, "wss": _ws}
