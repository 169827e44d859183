"""Listener URLs: what --listen takes, e.g. tcp://127.0.0.1:7000, tls+proxy://[::1]:7443 or ws://0.0.0.0:8080.

A listener is a scheme (how its connections speak) and an address. The
schemes served so far are in SCHEMES; a URL with any other scheme is refused
with one line that names the ones there are.
"""
from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

from fastecho.addresses import format_address

# scheme -> what its connections speak
SCHEMES = {
    "tcp": "plain TCP",
    "tcp+proxy": "plain TCP, after a PROXY protocol header (v1 or v2) from a trusted proxy",
    "tls": "TLS 1.2/1.3 (needs --tls-cert)",
    "tls+proxy": "TLS, after a PROXY protocol header from a trusted proxy",
    "udp": "UDP: each datagram echoed to its sender",
    "ws": "WebSocket (RFC 6455): each message echoed whole; GET / gives a test page",
    "ws+proxy": "WebSocket, after a PROXY protocol header from a trusted proxy",
    "wss": "WebSocket over TLS (needs --tls-cert)",
    "wss+proxy": "WebSocket over TLS, after a PROXY protocol header from a trusted proxy",
}


# What an inherited socket (--fd, socket activation) may speak: a stream.
STREAM_SCHEMES = tuple(scheme for scheme in SCHEMES if scheme != "udp")


def speaks_tls(scheme: str) -> bool:
    """Whether a scheme's connections speak TLS (tls, wss, and their +proxy)."""
    return scheme.split("+")[0] in ("tls", "wss")


def speaks_ws(scheme: str) -> bool:
    """Whether a scheme's connections speak WebSocket (ws, wss, and their +proxy)."""
    return scheme.split("+")[0] in ("ws", "wss")


class ListenerError(ValueError):
    """A listener URL's problem, in words for the user."""


@dataclass(frozen=True)
class Listener:
    scheme: str
    host: str
    port: int

    @property
    def proxy(self) -> bool:
        """Whether each connection starts with a PROXY protocol header."""
        return self.scheme.endswith("+proxy")

    @property
    def udp(self) -> bool:
        """Whether it serves datagrams (a UDP socket) rather than a stream."""
        return self.scheme == "udp"

    @property
    def tls(self) -> bool:
        """Whether its connections speak TLS."""
        return speaks_tls(self.scheme)

    @property
    def ws(self) -> bool:
        """Whether its connections speak WebSocket."""
        return speaks_ws(self.scheme)

    @property
    def url(self) -> str:
        return f"{self.scheme}://{format_address(self.host, self.port)}"

    def __str__(self) -> str:
        return self.url


def check_scheme(scheme: str) -> str:
    scheme = scheme.lower()
    if scheme not in SCHEMES:
        raise ListenerError(f"unknown scheme {scheme!r} (served: {', '.join(SCHEMES)})")
    return scheme


def parse_url(text: str) -> Listener:
    """A Listener from SCHEME://HOST:PORT (an IPv6 host in brackets); ListenerError if not one."""
    text = text.strip()
    if "://" not in text:
        raise ListenerError(f"{text!r} is not a listener URL (expected e.g. tcp://127.0.0.1:7000)")
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError as e:  # a port that is not a number, or out of range
        raise ListenerError(f"{text!r}: {e}") from None
    scheme = check_scheme(parts.scheme)
    if parts.username is not None or parts.password is not None:
        raise ListenerError(f"{text!r}: a listener URL has no user or password")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ListenerError(f"{text!r}: a listener URL is only SCHEME://HOST:PORT")
    host = parts.hostname
    if not host:
        raise ListenerError(f"{text!r}: no host (use 0.0.0.0 or [::] for every address)")
    if port is None:
        raise ListenerError(f"{text!r}: no port (use :0 to pick a free one)")
    return Listener(scheme, host, port)


def check_distinct(listeners: tuple[Listener, ...]) -> None:
    """Two stream (or two UDP) listeners on the same address and port cannot both bind
    (port 0 picks a new one each time); a tcp and a udp one can."""
    seen: dict[tuple[str, int, bool], Listener] = {}
    for listener in listeners:
        key = (listener.host, listener.port, listener.udp)
        if listener.port != 0 and key in seen:
            raise ListenerError(f"{listener.url} and {seen[key].url} are the same address")
        seen[key] = listener
