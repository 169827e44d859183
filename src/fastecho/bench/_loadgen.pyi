from collections.abc import Iterable
from typing import TypedDict

MAX_MESSAGE_SIZE: int

class LoadResult(TypedDict):
    messages: int  # messages echoed and verified in the window
    elapsed_s: float  # actual window length
    connect_s: float  # time to establish every connection
    msgs_per_s: float
    p50_ns: int
    p99_ns: int
    p999_ns: int
    max_ns: int
    conns: int
    starved_conns: int  # connections with no message completed in the window
    min_conn_messages: int
    max_conn_messages: int
    client_cpu_us: int  # CPU the generator used in the window; ~elapsed means it was the limit
    server_user_us: int | None  # server CPU in the window; None without server_pid
    server_sys_us: int | None
    server_rss_kib: int | None  # server VmRSS at the end of the window

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
) -> LoadResult:
    """Open `conns` connections to host:port (IPv4), keep `depth` messages of
    `size` bytes in flight on each, warm up for `warmup` s, then measure for
    `duration` s (or until `max_messages` are echoed, when > 0). Runs in C
    with the GIL released.

    Raises ValueError for an out-of-range argument and
    fastecho.bench.errors.LoadError when a connection cannot be established
    within `connect_timeout` s, an echoed byte differs from what was sent, or
    the server closes or resets a connection. Connections the server never
    answers are not an error: they are counted in `starved_conns`.
    """

def histogram_quantiles(values: Iterable[int], quantiles: Iterable[float]) -> list[int]: ...
