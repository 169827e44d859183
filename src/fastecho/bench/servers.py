"""The servers the benchmark compares, and how to run one as a subprocess.

Every server prints one line, ``... listening on HOST:PORT ...``, once it
accepts connections (UDP: datagrams), and exits on SIGTERM. That is all the
harness relies on. A server serves TCP, TLS, UDP, WebSocket, or several of
them; a transport it lacks has no command.

A server may also have a *front*: a proxy started after it, in front of it
(HAProxy). A front cannot report a port, so it is given a free one, and it is
ready once that port accepts a connection. The server side is then both
processes: both are pinned to the server CPUs, both have their CPU counted,
and both are stopped at the end.
"""
from __future__ import annotations

import importlib.util
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from fastecho.bench.certs import TlsFiles
from fastecho.bench.errors import ServerStartError

HOST = "127.0.0.1"  # benchmarks only ever talk to loopback
LISTENING_LINE = re.compile(r"listening on (?P<host>\S+):(?P<port>\d+)")
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
_POLL_INTERVAL_S = 0.01


def reference_binary(name: str = "fastecho-reference-echo") -> Path:
    """A bare C reference loop, installed next to this file by CMake: the
    TCP epoll loop by default, or fastecho-reference-udp[-mmsg]."""
    return Path(__file__).with_name(name)


@dataclass(frozen=True)
class FrontLaunch:
    """What a front is told when it is started."""

    port: int  # where it must listen (free when chosen; it cannot report one itself)
    backend_port: int  # where the server behind it listens
    threads: int  # as many as the C servers get
    tls: TlsFiles | None  # terminate TLS with these, or forward plain TCP
    workdir: Path  # a private directory for its config files, removed afterwards


@dataclass(frozen=True)
class ServerSpec:
    name: str
    description: str
    # (threads, baseline_threads) -> argv. `threads` sizes the C servers,
    # `baseline_threads` the Python thread pool; the event loops ignore both.
    # None when it has no TCP (a UDP-only server).
    command: Callable[[int, int], list[str]] | None
    # None when the server can run here, else why not.
    unavailable_reason: Callable[[], str | None]
    # How it serves TLS: (threads, baseline_threads, tls) -> argv; None when
    # it has no TLS. With a front, this starts the plain backend behind it.
    tls_command: Callable[[int, int, TlsFiles], list[str]] | None = None
    # None when it can serve TLS here, else why not (asked only for TLS runs).
    tls_unavailable_reason: Callable[[], str | None] = lambda: None
    # A proxy in front: argv of the front's process; None for none.
    front: Callable[[FrontLaunch], list[str]] | None = None
    front_name: str = ""
    # False: in a TLS run the load generator still speaks plain TCP to it
    # (fastecho-plain: the baseline that TLS adds its cost to).
    client_tls: bool = True
    # How it echoes UDP: (threads, baseline_threads) -> argv; None when it
    # has no UDP.
    udp_command: Callable[[int, int], list[str]] | None = None
    # None when it can echo UDP here, else why not (asked only for UDP runs).
    udp_unavailable_reason: Callable[[], str | None] = lambda: None
    # How it echoes WebSocket messages: (threads, baseline_threads) -> argv;
    # None when it has no WebSocket.
    ws_command: Callable[[int, int], list[str]] | None = None
    # None when it can serve WebSocket here, else why not (asked only for ws runs).
    ws_unavailable_reason: Callable[[], str | None] = lambda: None
    # False: in a WebSocket run the load generator speaks plain TCP to it
    # (fastecho-plain: the baseline that the framing adds to).
    client_ws: bool = True

    @property
    def serves_only(self) -> str:
        """What a server without a TCP command serves instead: 'UDP' or 'WebSocket'."""
        return "UDP" if self.udp_command is not None else "WebSocket"

    def tls_reason(self) -> str | None:
        """None when it can be run with --transport tls, else why not."""
        if self.tls_command is None:
            return "it has no TLS"
        return self.unavailable_reason() or self.tls_unavailable_reason()

    def udp_reason(self) -> str | None:
        """None when it can be run with --transport udp, else why not."""
        if self.udp_command is None:
            return "it has no UDP"
        return self.unavailable_reason() or self.udp_unavailable_reason()

    def ws_reason(self) -> str | None:
        """None when it can be run with --transport ws, else why not."""
        if self.ws_command is None:
            return "it has no WebSocket"
        return self.unavailable_reason() or self.ws_unavailable_reason()


def _module_missing(module: str, hint: str) -> Callable[[], str | None]:
    def reason() -> str | None:
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError:
            found = False
        return None if found else f"{module} is not importable ({hint})"

    return reason


def _binary_missing(name: str) -> Callable[[], str | None]:
    def reason() -> str | None:
        path = reference_binary(name)
        if os.access(path, os.X_OK):
            return None
        return f"{path} is missing; reinstall fastecho (pip install .) to build it"

    return reason


_reference_missing = _binary_missing("fastecho-reference-echo")
_FASTECHO_MISSING = _module_missing("fastecho._core", "the engine is not built; pip install .")


def _fastecho_udp_missing() -> str | None:
    """Why this fastecho cannot serve a udp:// listener, or None when it can.
    The listener's schemes say so without starting anything."""
    from fastecho.listeners import SCHEMES

    if "udp" not in SCHEMES:
        return "this fastecho has no UDP listener yet ('udp' is not among fastecho.listeners.SCHEMES)"
    return None


def _fastecho_ws_missing() -> str | None:
    """Why this fastecho cannot serve a ws:// listener, or None when it can."""
    from fastecho.listeners import SCHEMES

    if "ws" not in SCHEMES:
        return "this fastecho has no ws listener yet ('ws' is not among fastecho.listeners.SCHEMES)"
    return None


def _fastecho_tls_missing() -> str | None:
    """Why this fastecho cannot serve TLS listeners, or None when it can."""
    missing = _FASTECHO_MISSING()
    if missing:
        return missing
    from fastecho import _core

    if not _core.TLS_AVAILABLE:
        return "this fastecho was built without TLS (OpenSSL's headers were missing at build time)"
    return None


def _fastecho_plain(threads: int, python: str = sys.executable, io_backend: str | None = None) -> list[str]:
    """fastecho's plain TCP listener; io_backend None: --io-backend's default (auto)."""
    backend = ["--io-backend", io_backend] if io_backend else []
    return [python, "-m", "fastecho", "serve", "--host", HOST, "--port", "0", "--threads", str(threads), *backend]


def _fastecho_io_uring_missing() -> str | None:
    """Why this fastecho cannot run its io_uring backend here, or None when it can."""
    reason = _FASTECHO_MISSING()
    if reason:
        return reason
    from fastecho import _core

    return _core.io_uring_unavailable()


# Server names that pin fastecho to one I/O backend (--io-backend LIST puts them side by side).
IO_BACKEND_SERVERS = {"epoll": "fastecho-epoll", "io_uring": "fastecho-io_uring"}


def _fastecho_tls(threads: int, tls: TlsFiles, python: str = sys.executable) -> list[str]:
    return [python, "-m", "fastecho", "serve", "--listen", f"tls://{HOST}:0", "--tls-cert", str(tls.cert),
            "--tls-key", str(tls.key), "--threads", str(threads)]


def _fastecho_udp(threads: int, python: str = sys.executable) -> list[str]:
    return [python, "-m", "fastecho", "serve", "--listen", f"udp://{HOST}:0", "--threads", str(threads)]


def _fastecho_ws(threads: int, python: str = sys.executable) -> list[str]:
    return [python, "-m", "fastecho", "serve", "--listen", f"ws://{HOST}:0", "--threads", str(threads)]


def _wsserver(library: str) -> list[str]:
    """A Python WebSocket library's echo (bench/wsserver.py); on uvloop
    when it is installed, as those libraries are run for speed."""
    loop = ["--uvloop"] if _module_missing("uvloop", "")() is None else []
    return [sys.executable, "-m", "fastecho.bench.wsserver", "--library", library, "--host", HOST, "--port", "0",
            *loop]


def _reference_udp(name: str, threads: int) -> list[str]:
    return [str(reference_binary(name)), "--host", HOST, "--port", "0", "--threads", str(threads)]


def _aioserver(*options: str) -> list[str]:
    return [sys.executable, "-m", "fastecho.bench.aioserver", "--host", HOST, "--port", "0", *options]


def _aioserver_tls(tls: TlsFiles, *options: str) -> list[str]:
    return _aioserver("--tls-cert", str(tls.cert), "--tls-key", str(tls.key), *options)


def haproxy_binary() -> str | None:
    """HAProxy's path: on PATH, or in the sbin directories distributions use."""
    return shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")


def _haproxy_missing() -> str | None:
    if haproxy_binary() is None:
        return "haproxy is not installed (apt-get install haproxy)"
    return _FASTECHO_MISSING()


def _haproxy_maxconn() -> int:
    """As many connections as the fd limit lets HAProxy hold, front and back
    (two descriptors each). Left to itself it would size from the soft limit,
    which the harness raises only as far as the client needs."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        return 100_000
    return max(64, min(100_000, (hard - 128) // 2))


def _haproxy_front(launch: FrontLaunch) -> list[str]:
    """HAProxy in TCP mode: it terminates TLS (or only forwards, without
    tls) and relays the bytes to the backend. No logging: nothing runs per
    connection but the proxying."""
    bind = f"bind {HOST}:{launch.port}"
    if launch.tls is not None:
        bind += f" ssl crt {launch.tls.combined} ssl-min-ver TLSv1.2 ssl-max-ver TLSv1.3"
    config = launch.workdir / "haproxy.cfg"
    config.write_text(f"""\
global
    nbthread {launch.threads}
    maxconn {_haproxy_maxconn()}

defaults
    mode tcp
    timeout connect 5s
    timeout client 1m
    timeout server 1m

frontend echo
    {bind}
    default_backend fastecho

backend fastecho
    server fastecho {HOST}:{launch.backend_port}
""")
    # -db: stay in the foreground as one process (no master-worker, no daemon)
    return [haproxy_binary() or "haproxy", "-f", str(config), "-db"]


SERVERS: dict[str, ServerSpec] = {
    spec.name: spec
    for spec in (
        ServerSpec(
            "fastecho",
            "fastecho engine: C pthread pool, epoll or io_uring (--io-backend auto)",
            lambda threads, _: _fastecho_plain(threads),
            _FASTECHO_MISSING,
            tls_command=lambda threads, _, tls: _fastecho_tls(threads, tls),
            tls_unavailable_reason=_fastecho_tls_missing,
            udp_command=lambda threads, _: _fastecho_udp(threads),
            udp_unavailable_reason=_fastecho_udp_missing,
            ws_command=lambda threads, _: _fastecho_ws(threads),
            ws_unavailable_reason=_fastecho_ws_missing,
        ),
        ServerSpec(
            "fastecho-plain",
            "fastecho's plain TCP listener; in a TLS or WebSocket run the load generator speaks plain TCP "
            "to it, as the baseline TLS or the framing adds to",
            lambda threads, _: _fastecho_plain(threads),
            _FASTECHO_MISSING,
            tls_command=lambda threads, _, __: _fastecho_plain(threads),
            client_tls=False,
            ws_command=lambda threads, _: _fastecho_plain(threads),
            client_ws=False,
        ),
        ServerSpec(
            IO_BACKEND_SERVERS["epoll"],
            "fastecho's TCP listener on its epoll backend (--io-backend epoll)",
            lambda threads, _: _fastecho_plain(threads, io_backend="epoll"),
            _FASTECHO_MISSING,
        ),
        ServerSpec(
            IO_BACKEND_SERVERS["io_uring"],
            "fastecho's TCP listener on its io_uring backend (--io-backend io_uring)",
            lambda threads, _: _fastecho_plain(threads, io_backend="io_uring"),
            _fastecho_io_uring_missing,
        ),
        ServerSpec(
            "fastecho-copy",
            "fastecho's epoll backend with --splice off: bulk copied through user space as small "
            "messages are, to set against fastecho-epoll's splice",
            lambda threads, _: [*_fastecho_plain(threads, io_backend="epoll"), "--splice", "off"],
            _FASTECHO_MISSING,
        ),
        ServerSpec(
            "haproxy",
            "HAProxy (mode tcp) in front of fastecho's plain listener; with TLS, HAProxy terminates it",
            lambda threads, _: _fastecho_plain(threads),
            _haproxy_missing,
            tls_command=lambda threads, _, __: _fastecho_plain(threads),
            front=_haproxy_front,
            front_name="haproxy",
        ),
        ServerSpec(
            "python",
            "seed design in Python: thread pool + queue.Queue, one thread per client",
            lambda _, baseline_threads: [sys.executable, "-m", "fastecho.bench.baseline",
                                         "--host", HOST, "--port", "0", "--threads", str(baseline_threads)],
            lambda: None,
        ),
        ServerSpec(
            "asyncio",
            "stdlib asyncio Protocol, one thread (TLS: the stdlib ssl module; UDP: a DatagramProtocol)",
            lambda _, __: _aioserver(),
            lambda: None,
            tls_command=lambda _, __, tls: _aioserver_tls(tls),
            udp_command=lambda _, __: _aioserver("--udp"),
        ),
        ServerSpec(
            "uvloop",
            "asyncio Protocol on uvloop, one thread (TLS: uvloop's, over the stdlib ssl module; "
            "UDP: a DatagramProtocol)",
            lambda _, __: _aioserver("--uvloop"),
            _module_missing("uvloop", "pip install 'fastecho[uvloop]'"),
            tls_command=lambda _, __, tls: _aioserver_tls(tls, "--uvloop"),
            udp_command=lambda _, __: _aioserver("--udp", "--uvloop"),
        ),
        ServerSpec(
            "reference",
            "bare C epoll loop: read then write, nothing else",
            lambda threads, _: [str(reference_binary()), "--host", HOST, "--port", "0", "--threads", str(threads)],
            _reference_missing,
        ),
        ServerSpec(
            "websockets",
            "the websockets library's asyncio server echoing each message, one thread (on uvloop when "
            "installed)",
            None,
            _module_missing("websockets", "pip install 'fastecho[ws]'"),
            ws_command=lambda _, __: _wsserver("websockets"),
        ),
        ServerSpec(
            "picows",
            "picows (Cython) echoing each frame's payload with its type and FIN bit, one thread (on uvloop "
            "when installed)",
            None,
            _module_missing("picows", "pip install 'fastecho[ws]'"),
            ws_command=lambda _, __: _wsserver("picows"),
        ),
        ServerSpec(
            "reference-udp",
            "bare C UDP loop: recvfrom then sendto, one datagram at a time, nothing else",
            None,
            _binary_missing("fastecho-reference-udp"),
            udp_command=lambda threads, _: _reference_udp("fastecho-reference-udp", threads),
        ),
        ServerSpec(
            "reference-udp-mmsg",
            "bare C UDP loop: recvmmsg then sendmmsg, up to 64 datagrams a call, nothing else",
            None,
            _binary_missing("fastecho-reference-udp-mmsg"),
            udp_command=lambda threads, _: _reference_udp("fastecho-reference-udp-mmsg", threads),
        ),
    )
}


@dataclass
class ServerProcess:
    """One process of the server side, with where its stderr went."""

    name: str
    process: subprocess.Popen[bytes]
    stderr_path: Path

    def exit_description(self) -> str | None:
        """'exited with status N: <last stderr line>' if it has exited."""
        status = self.process.poll()
        if status is None:
            return None
        return _describe_exit(status, self.stderr_path)


@dataclass
class RunningServer:
    name: str
    process: subprocess.Popen[bytes]  # the server; with a front, the backend behind it
    port: int  # where clients connect: with a front, the front's port
    stderr_path: Path
    front: ServerProcess | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def pids(self) -> tuple[int, ...]:
        """Every process of the server side, whose CPU counts together."""
        return (self.process.pid,) + ((self.front.process.pid,) if self.front else ())

    def exit_description(self) -> str | None:
        """'exited with status N: <last stderr line>' if the server has
        exited, or the same prefixed with the front's name if the front has."""
        if self.front is not None and (front_exit := self.front.exit_description()):
            return f"{self.front.name} {front_exit}"
        return ServerProcess(self.name, self.process, self.stderr_path).exit_description()


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


def _describe_exit(status: int, stderr_path: Path) -> str:
    how = f"was killed by signal {-status}" if status < 0 else f"exited with status {status}"
    last = _last_line(stderr_path)
    return f"{how}: {last}" if last else how


def _spawn_pinned(argv: list[str], cpus: set[int] | None, **popen_kwargs) -> subprocess.Popen[bytes]:
    """Start argv with its CPU affinity already set to `cpus`.

    Affinity is inherited across fork and exec, so the calling thread pins
    itself, forks, and restores its own mask: every thread the server ever
    starts is pinned. (preexec_fn would do the same in the child, but it is
    unsafe while other threads run, and rich's progress bar runs one.)
    """
    if not cpus:
        return subprocess.Popen(argv, **popen_kwargs)
    own = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        return subprocess.Popen(argv, **popen_kwargs)
    finally:
        os.sched_setaffinity(0, own)


def _wait_for_port(name: str, process: subprocess.Popen[bytes], stdout_path: Path, stderr_path: Path,
                   timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        first_line = stdout_path.read_text(errors="replace").partition("\n")
        if first_line[1]:  # a complete line
            match = LISTENING_LINE.search(first_line[0])
            if not match:
                raise ServerStartError(f"{name} printed {first_line[0]!r} instead of 'listening on HOST:PORT'")
            return int(match["port"])
        status = process.poll()
        if status is not None:
            raise ServerStartError(f"{name} {_describe_exit(status, stderr_path)} before listening")
        time.sleep(_POLL_INTERVAL_S)
    raise ServerStartError(f"{name} did not print 'listening on HOST:PORT' within {timeout:g} s")


def stop_process(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM, wait up to `timeout`, then SIGKILL; always reaps the child."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait()


def _start(stack: ExitStack, name: str, argv: list[str], cpus: set[int] | None, log_dir: Path,
           stem: str) -> tuple[subprocess.Popen[bytes], Path, Path]:
    """Spawn argv pinned to `cpus`, its output in files under log_dir, and
    have `stack` stop and reap it. Returns it with its stdout and stderr paths.

    Files, not pipes: a chatty server can never block on a full pipe nobody
    reads."""
    stdout_path, stderr_path = log_dir / f"{stem}.stdout", log_dir / f"{stem}.stderr"
    with open(stdout_path, "wb") as stdout, open(stderr_path, "wb") as stderr:
        try:
            process = _spawn_pinned(argv, cpus, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr)
        except OSError as e:
            raise ServerStartError(f"cannot start {name} ({argv[0]}): {e.strerror or e}") from None
    stack.callback(stop_process, process)
    return process, stdout_path, stderr_path


def _free_port() -> int:
    """A port free on HOST right now. Another program could take it before
    the front binds it; the front then fails to start, and says so."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def _wait_until_accepting(name: str, process: subprocess.Popen[bytes], port: int, stderr_path: Path,
                          timeout: float) -> None:
    """Wait until HOST:port accepts a TCP connection (closed at once, before
    any measurement), failing early if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = process.poll()
        if status is not None:
            raise ServerStartError(f"{name} {_describe_exit(status, stderr_path)} before listening")
        try:
            with socket.create_connection((HOST, port), timeout=_POLL_INTERVAL_S * 10):
                return
        except OSError:
            time.sleep(_POLL_INTERVAL_S)
    raise ServerStartError(f"{name} did not accept connections on {HOST}:{port} within {timeout:g} s")


@contextmanager
def running_server(spec: ServerSpec, *, threads: int, baseline_threads: int, cpus: set[int] | None = None,
                   start_timeout: float = START_TIMEOUT_S, tls: TlsFiles | None = None,
                   udp: bool = False, ws: bool = False, extra_args: tuple[str, ...] = ()) -> Iterator[RunningServer]:
    """Start `spec` pinned to `cpus` (serving TLS with `tls`, when given,
    echoing UDP with `udp`, or WebSocket with `ws`; `extra_args` appended to
    its command line), wait for its port, then start its front, if any,
    pinned the same and wait until it accepts; yield it, and always stop and
    reap every process on the way out (also on error and Ctrl-C), the front
    first.

    Raises ServerStartError if a process exits or stays silent before
    listening, or if `spec` lacks the transport asked for.
    """
    if (tls is not None) + udp + ws > 1:
        raise ServerStartError("TLS, UDP and WebSocket exclude each other")
    if ws:
        if spec.ws_command is None:
            raise ServerStartError(f"{spec.name} has no WebSocket")
        argv = spec.ws_command(threads, baseline_threads)
    elif tls is not None:
        if spec.tls_command is None:
            raise ServerStartError(f"{spec.name} has no TLS")
        argv = spec.tls_command(threads, baseline_threads, tls)
    elif udp:
        if spec.udp_command is None:
            raise ServerStartError(f"{spec.name} has no UDP")
        argv = spec.udp_command(threads, baseline_threads)
    else:
        if spec.command is None:
            raise ServerStartError(f"{spec.name} serves only {spec.serves_only}")
        argv = spec.command(threads, baseline_threads)
    argv = [*argv, *extra_args]
    # The directory outlives the processes: the stack stops them first.
    with tempfile.TemporaryDirectory(prefix=f"fastecho-bench-{spec.name}-") as log_dir, ExitStack() as stack:
        process, stdout_path, stderr_path = _start(stack, spec.name, argv, cpus, Path(log_dir), "server")
        port = _wait_for_port(spec.name, process, stdout_path, stderr_path, start_timeout)
        front = None
        if spec.front is not None:
            front_port = _free_port()
            front_argv = spec.front(FrontLaunch(front_port, port, threads, tls, Path(log_dir)))
            front_process, _, front_stderr = _start(stack, spec.front_name, front_argv, cpus, Path(log_dir), "front")
            _wait_until_accepting(spec.front_name, front_process, front_port, front_stderr, start_timeout)
            front = ServerProcess(spec.front_name, front_process, front_stderr)
            port = front_port
        yield RunningServer(spec.name, process, port, stderr_path, front)
