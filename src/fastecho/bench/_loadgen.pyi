import os
from collections.abc import Iterable, Sequence
from typing import Literal, TypedDict

MAX_MESSAGE_SIZE: int
MAX_SERVER_PIDS: int  # most processes whose CPU one run sums
UDP_MAX_DATAGRAM_SIZE: int  # 65507: the largest UDP payload over IPv4
UDP_MAX_SOCKETS: int  # most UDP sockets one run opens
UDP_DEFAULT_TIMEOUT: float  # seconds after which an unanswered datagram is lost, when udp_timeout is 0
TLS_SUPPORTED: bool  # whether this build speaks TLS (FASTECHO_WITH_TLS)
TLS_LIBRARY: str | None  # the TLS library it runs with, e.g. "OpenSSL 3.0.19 27 Jan 2026"
WS_SUPPORTED: bool  # whether this build speaks WebSocket (it needs OpenSSL too)

class LoadResult(TypedDict):
    messages: int  # messages echoed and verified in the window
    handshakes: int | None  # handshake mode: connect + handshake + one echo cycles in the window
    #                         (equal to messages); None in echo mode
    elapsed_s: float  # actual window length
    connect_s: float  # time to establish every connection (TLS handshakes included)
    msgs_per_s: float
    p50_ns: int  # latency per message; in handshake mode from connect() to the verified echo
    p99_ns: int
    p999_ns: int
    max_ns: int
    conns: int
    starved_conns: int  # connections (handshake mode: slots) with nothing completed in the window
    min_conn_messages: int
    max_conn_messages: int
    client_cpu_us: int  # CPU the generator used in the window; ~elapsed means it was the limit
    server_user_us: int | None  # server CPU in the window, summed over its processes; None without pids
    server_sys_us: int | None
    server_rss_kib: int | None  # server VmRSS at the end of the window, summed
    tls: str | None  # with tls: what was negotiated, e.g. "TLSv1.3 TLS_AES_256_GCM_SHA384 X25519"
    # With udp (else None): what became of the datagrams sent in the window, followed past its end
    # until each was echoed or given up.
    sent: int | None  # datagrams sent in the window
    lost: int | None  # of those, not echoed within udp_timeout (late ones included)
    late: int | None  # of those, echoed only after they were counted lost
    duplicates: int | None  # extra echoes of a datagram already echoed
    reordered: int | None  # echoed after a datagram sent later on the same socket was

def run_load(
    host: str,
    port: int,
    conns: int,
    size: int,
    depth: int = 1,
    warmup: float = 0.5,
    duration: float = 3.0,
    server_pid: int = 0,
    seed: int = 1,
    connect_timeout: float = 5.0,
    max_messages: int = 0,
    *,
    server_pids: Sequence[int] = (),
    tls: bool = False,
    tls_version: Literal["1.2", "1.3"] | None = None,
    tls_ca_file: str | os.PathLike[str] | None = None,
    handshakes: bool = False,
    udp: bool = False,
    udp_timeout: float = 0.0,
    ws: bool = False,
    ws_path: str | None = None,
) -> LoadResult:
    """Open `conns` connections to host:port (IPv4), keep `depth` messages of
    `size` bytes in flight on each, warm up for `warmup` s, then measure for
    `duration` s (or until `max_messages` are echoed, when > 0). Runs in C
    with the GIL released.

    Server CPU and RSS are read from `server_pid` and every pid in
    `server_pids` (all the server side's processes: a TLS proxy and its
    backend together), summed.

    tls: speak TLS; `tls_version` pins "1.2" or "1.3" (None: either), and
    `tls_ca_file` (PEM) makes the generator verify the server's certificate,
    which must then name `host`. Every handshake is full (never resumed) and
    happens before the window, within `connect_timeout`.

    handshakes: instead of keeping connections open, each of the `conns`
    slots repeatedly connects, handshakes, echoes one message of `size`
    bytes, checks it, and closes (close_notify or FIN, then waits for the
    server's); `depth` must be 1. The result's `handshakes` counts the cycles
    completed in the window. Each connect + handshake, and each close, must
    finish within `connect_timeout`.

    udp: `conns` UDP sockets, each connect()ed to host:port, keep `depth`
    datagrams of `size` bytes (0 to UDP_MAX_DATAGRAM_SIZE) in flight. Each
    datagram carries a header (sequence number, socket, length, check) and a
    pattern; every echo must match it byte for byte and in length. A
    datagram not echoed within `udp_timeout` s (0: UDP_DEFAULT_TIMEOUT) is
    counted lost and its slot reused; duplicates, late echoes and reordering
    are counted (`sent`, `lost`, `late`, `duplicates`, `reordered`), never an
    error. `messages` counts the echoes that arrived in time in the window;
    `starved_conns` the sockets with none. Not with tls or handshakes.

    ws: speak WebSocket (RFC 6455; with tls, wss): each connection
    upgrades with a GET of `ws_path` (None: "/") before the window, then
    sends each message as one masked binary frame (a random mask per frame)
    and checks every echoed payload byte, the server's framing and the
    message boundaries; a close frame, ping, text frame or malformed frame
    fails the run. Not with udp or handshakes; needs WS_SUPPORTED.

    Raises ValueError for an out-of-range argument, a CA file that cannot be
    loaded, or TLS asked of a build without it (see TLS_SUPPORTED), and
    fastecho.bench.errors.LoadError when a connection cannot be established
    within `connect_timeout` s, a handshake fails, an echoed byte differs
    from what was sent, or the server closes or resets a connection (UDP:
    an echo that differs from its datagram in any byte or its length, or
    comes back to the wrong socket, and a port that refuses datagrams).
    Connections the server never answers are not an error: they are counted
    in `starved_conns`.
    """

def histogram_quantiles(values: Iterable[int], quantiles: Iterable[float]) -> list[int]: ...
