from ipaddress import IPv4Network, IPv6Network
from typing import Any, Iterable

CLOSE_REASONS: tuple[str, ...]
UDP_DROP_REASONS: tuple[str, ...]
WS_HTTP_STATUSES: tuple[int, ...]
WS_CLOSE_CODES: tuple[str, ...]
LOOPBACK: tuple[str, ...]

IO_BACKENDS: tuple[str, ...]
TLS_AVAILABLE: bool
TLS_LIBRARY: str
WS_AVAILABLE: bool

def _defaults() -> dict[str, int | float | bool]: ...
def io_uring_unavailable() -> str | None: ...

class TlsContext:
    def __init__(
        self, cert_pem: bytes, key_pem: bytes, client_ca_pem: bytes | None = None, min_version: int = 12
    ) -> None: ...
    def describe(self) -> str: ...

class Engine:
    def __init__(
        self,
        threads: int,
        max_pending_output: int = 0,
        read_buffer_size: int = 0,
        queue_capacity: int = 0,
        *,
        suffix: bytes | None = None,
        max_line: int = 0,
        event_ring_size: int = 0,
        max_connections: int = 0,
        max_connections_per_ip: int = 0,
        idle_timeout: float = 0.0,
        allow: Iterable[str | IPv4Network | IPv6Network] | None = None,
        max_memory: int = 0,
        fd_reserve: int = 0,
        proxy_from: Iterable[str | IPv4Network | IPv6Network] | None = ...,
        proxy_timeout: float = 0.0,
        tls_handshake_timeout: float = 0.0,
        udp_allow_low_ports: bool = False,
        udp_rate: int = 0,
        udp_max_datagram: int = 0,
        ws_path: bytes | None = None,
        ws_allow_origins: Iterable[bytes] = (),
        ws_max_message: int = 0,
        ws_max_header: int = 0,
        ws_handshake_timeout: float = 0.0,
        io_backend: str = "epoll",
        splice: bool | None = None,
    ) -> None: ...
    def set_tls(self, context: TlsContext) -> None: ...
    def start(
        self,
        *listen_fds: int,
        proxy: Iterable[bool] = (),
        tls: Iterable[bool] = (),
        udp: Iterable[bool] = (),
        ws: Iterable[bool] = (),
    ) -> None: ...
    def shutdown(self, drain_seconds: float, linger_seconds: float = 1.0) -> None: ...
    def wait(self, timeout: float) -> bool: ...
    def stats(self) -> dict[str, Any]: ...
    def drain_events(
        self, max_events: int = 4096
    ) -> list[tuple[Any, ...]]: ...
    @property
    def acceptor_error(self) -> int: ...
    def close(self) -> None: ...
