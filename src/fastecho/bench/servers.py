"""The servers the benchmark compares, and how to run one as a subprocess.

Every server prints one line, ``... listening on HOST:PORT ...``, once it
accepts connections, and exits on SIGTERM. That is all the harness relies on.
"""
from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fastecho.bench.errors import ServerStartError

HOST = "127.0.0.1"  # benchmarks only ever talk to loopback
LISTENING_LINE = re.compile(r"listening on (?P<host>\S+):(?P<port>\d+)")
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
_POLL_INTERVAL_S = 0.01


def reference_binary() -> Path:
    """The bare C epoll loop, installed next to this file by CMake."""
    return Path(__file__).with_name("fastecho-reference-echo")


@dataclass(frozen=True)
class ServerSpec:
    name: str
    description: str
    # (threads, baseline_threads) -> argv. `threads` sizes the C servers,
    # `baseline_threads` the Python thread pool; the event loops ignore both.
    command: Callable[[int, int], list[str]]
    # None when the server can run here, else why not.
    unavailable_reason: Callable[[], str | None]


def _module_missing(module: str, hint: str) -> Callable[[], str | None]:
    def reason() -> str | None:
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError:
            found = False
        return None if found else f"{module} is not importable ({hint})"

    return reason


def _reference_missing() -> str | None:
    path = reference_binary()
    if os.access(path, os.X_OK):
        return None
    return f"{path} is missing; reinstall fastecho (pip install .) to build it"


SERVERS: dict[str, ServerSpec] = {
    spec.name: spec
    for spec in (
        ServerSpec(
            "fastecho",
            "fastecho engine: C pthread pool + epoll",
            lambda threads, _: [sys.executable, "-m", "fastecho", "serve",
                                "--host", HOST, "--port", "0", "--threads", str(threads)],
            _module_missing("fastecho._core", "the engine is not built; pip install ."),
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
            "stdlib asyncio Protocol, one thread",
            lambda _, __: [sys.executable, "-m", "fastecho.bench.aioserver", "--host", HOST, "--port", "0"],
            lambda: None,
        ),
        ServerSpec(
            "uvloop",
            "asyncio Protocol on uvloop, one thread",
            lambda _, __: [sys.executable, "-m", "fastecho.bench.aioserver", "--host", HOST, "--port", "0",
                           "--uvloop"],
            _module_missing("uvloop", "pip install 'fastecho[uvloop]'"),
        ),
        ServerSpec(
            "reference",
            "bare C epoll loop: read then write, nothing else",
            lambda threads, _: [str(reference_binary()), "--host", HOST, "--port", "0", "--threads", str(threads)],
            _reference_missing,
        ),
    )
}


@dataclass
class RunningServer:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    stderr_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def exit_description(self) -> str | None:
        """'exited with status N: <last stderr line>' if it has exited."""
        status = self.process.poll()
        if status is None:
            return None
        return _describe_exit(status, self.stderr_path)


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


@contextmanager
def running_server(spec: ServerSpec, *, threads: int, baseline_threads: int, cpus: set[int] | None = None,
                   start_timeout: float = START_TIMEOUT_S) -> Iterator[RunningServer]:
    """Start `spec` pinned to `cpus`, wait for its port, yield it, and always
    stop and reap it on the way out (also on error and Ctrl-C).

    Raises ServerStartError if it exits or stays silent before listening.
    stdout and stderr go to files, not pipes, so that a chatty server can
    never block on a full pipe nobody reads.
    """
    argv = spec.command(threads, baseline_threads)
    with tempfile.TemporaryDirectory(prefix=f"fastecho-bench-{spec.name}-") as log_dir:
        stdout_path, stderr_path = Path(log_dir, "stdout"), Path(log_dir, "stderr")
        with open(stdout_path, "wb") as stdout, open(stderr_path, "wb") as stderr:
            try:
                process = _spawn_pinned(argv, cpus, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr)
            except OSError as e:
                raise ServerStartError(f"cannot start {spec.name} ({argv[0]}): {e.strerror or e}") from None
        try:
            port = _wait_for_port(spec.name, process, stdout_path, stderr_path, start_timeout)
            yield RunningServer(spec.name, process, port, stderr_path)
        finally:
            stop_process(process)
