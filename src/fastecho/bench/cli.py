"""``python -m fastecho.bench`` (also ``fastecho bench``): compare servers.

Bad input prints one line, ``fastecho bench: error: ...``, and exits 2 before
anything starts. A run where some server failed still prints every row and
exits 1; a clean run exits 0; Ctrl-C exits 130 after stopping the servers.
"""
from __future__ import annotations

import errno
import os
import re
import resource
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import click

from fastecho.bench import certs
from fastecho.bench.harness import Plan, Workload, run_plan
from fastecho.bench.servers import HOST, IO_BACKEND_SERVERS, SERVERS, ServerSpec

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
MAX_SIZE = 16 * 2**20  # the load generator's LG_MAX_MESSAGE_SIZE
MAX_UDP_SIZE = 65507  # LG_UDP_MAX_DATAGRAM_SIZE: the largest UDP payload over IPv4
MAX_UDP_SOCKETS = 65536  # LG_UDP_MAX_SOCKETS
MAX_UDP_IN_FLIGHT = 2**20  # sockets x depth, LG_UDP_MAX_SLOTS
MAX_DEPTH = 4096
FD_HEADROOM = 64  # descriptors a process needs beyond its connections

# Defaults: the two workloads of docs/benchmarks.md (1 KiB ping-pong at 64 and
# 1000 connections), 3 rounds of 3 s for every server: about 2 minutes. The
# full matrix is --conns 1,64,1000 --sizes 64,1024,65536 (about 9 minutes).
DEFAULT_SERVERS = ("fastecho", "python", "asyncio", "uvloop", "reference")
# --transport tls: fastecho's own TLS, its plain listener (what TLS adds to),
# HAProxy terminating TLS in front of that listener, and the Python loops.
DEFAULT_TLS_SERVERS = ("fastecho", "fastecho-plain", "haproxy", "asyncio", "uvloop")
# --transport udp: fastecho's UDP listener, the two bare C loops (per datagram
# and batched) and a DatagramProtocol on either Python loop.
DEFAULT_UDP_SERVERS = ("fastecho", "reference-udp", "reference-udp-mmsg", "asyncio", "uvloop")
# --transport ws: fastecho's ws listener, its plain TCP listener (what the
# framing adds to), and the two Python WebSocket libraries.
DEFAULT_WS_SERVERS = ("fastecho", "fastecho-plain", "websockets", "picows")
TRANSPORTS = ("tcp", "tls", "udp", "ws")
TLS_VERSIONS = ("1.2", "1.3")


@dataclass(frozen=True)
class RunDefaults:
    conns: str
    sizes: str
    duration: float
    warmup: float
    rounds: int


DEFAULTS = RunDefaults(conns="64,1000", sizes="1024", duration=3.0, warmup=0.5, rounds=3)
# --quick: a ~20 s smoke run of every server; explicit flags still win.
QUICK = RunDefaults(conns="64,1000", sizes="1024", duration=1.5, warmup=0.25, rounds=1)
# --handshakes: 64 handshakes in flight, each echoing one small message.
HANDSHAKE_DEFAULTS = RunDefaults(conns="64", sizes="64", duration=3.0, warmup=0.5, rounds=3)
HANDSHAKE_QUICK = RunDefaults(conns="64", sizes="64", duration=1.5, warmup=0.25, rounds=1)
# --transport udp: 64 sockets x depth 8 at 64 B and 1 KiB. At one datagram in
# flight per socket the client's kernel work per datagram equals the server's
# and the client saturates first.
UDP_DEFAULTS = RunDefaults(conns="64", sizes="64,1024", duration=3.0, warmup=0.5, rounds=3)
UDP_QUICK = RunDefaults(conns="64", sizes="64,1024", duration=1.5, warmup=0.25, rounds=1)
# --transport ws: 64 connections x 1 KiB binary messages, ping-pong.
WS_DEFAULTS = RunDefaults(conns="64", sizes="1024", duration=3.0, warmup=0.5, rounds=3)
WS_QUICK = RunDefaults(conns="64", sizes="1024", duration=1.5, warmup=0.25, rounds=1)
DEFAULT_DEPTH, DEFAULT_UDP_DEPTH = 1, 8


def _fail(message: str) -> None:
    raise click.UsageError(message)


def _int_list(option: str, text: str) -> list[int]:
    values = []
    for item in text.split(","):
        try:
            values.append(int(item.strip()))
        except ValueError:
            _fail(f"{option}: {item.strip()!r} is not a whole number (expected e.g. 64,1000)")
    return list(dict.fromkeys(values))


CPU_ITEM = re.compile(r"([0-9]+)(?: *- *([0-9]+))?")  # ASCII digits only: int() takes "+1", "1_0", "٣"


def _cpu_set(option: str, text: str) -> frozenset[int]:
    """'0', '0,2' or '0-3' -> CPUs, each checked against what this process may use.

    A range's ends are checked before it is expanded: '0-1000000000' would
    otherwise build a billion-element set before being refused."""
    available = os.sched_getaffinity(0)

    def unavailable(cpu: int) -> None:
        _fail(f"{option}: CPU {cpu} does not exist or is not available to this process "
              f"(available: {','.join(map(str, sorted(available)))})")

    cpus: set[int] = set()
    for item in (part.strip() for part in text.split(",")):
        if not item:
            _fail(f"{option}: empty item in {text!r} (expected e.g. 0,2 or 0-3)")
        match = CPU_ITEM.fullmatch(item)
        # No match: a negative number, a range with an end missing, ... The
        # length cap keeps int() from refusing thousands of digits with a traceback.
        if match is None or len(item) > 64:
            _fail(f"{option}: {item!r} is not a CPU number or range (expected e.g. 0 or 0-3)")
        first, last = int(match[1]), int(match[2] or match[1])
        if first > last:
            _fail(f"{option}: {item!r} is a reversed range (did you mean {last}-{first}?)")
        if last > max(available):
            unavailable(last)
        cpus.update(range(first, last + 1))  # now at most max(available) + 1 of them
    missing = sorted(cpus - available)  # CPUs this process may not use, below the highest it may
    if missing:
        unavailable(missing[0])
    return frozenset(cpus)


def _runnable(names: Sequence[str], why_not: Callable[[ServerSpec], str | None], notes: list[str]) -> list[str]:
    """Those of the default `names` that can run here, in order: a server for
    which `why_not` gives a reason is skipped with a note in `notes`
    rather than failing the run."""
    runnable = []
    for name in names:
        reason = why_not(SERVERS[name])
        if reason:
            notes.append(f"skipping {name}: {reason}")
        else:
            runnable.append(name)
    return runnable


def _named_servers(text: str, check_usable: Callable[[str, ServerSpec], None]) -> list[str]:
    """The servers --servers names, in order, each once; none, or a name
    that is no server, is a usage error. `check_usable` fails the run for a
    server that cannot run over the transport; it is called on each name in
    turn, right after that name is known to be a server, so that of several
    bad names the first is the one reported."""
    names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if not names:
        _fail("--servers: give at least one server")
    for name in names:
        if name not in SERVERS:
            _fail(f"--servers: unknown server {name!r} (choose from {', '.join(SERVERS)})")
        check_usable(name, SERVERS[name])
    return names


def _udp_servers(text: str | None, notes: list[str]) -> list[str]:
    """_servers() for --transport udp: by default every server that echoes
    UDP here, the others skipped with a note; one named that cannot is a
    usage error."""
    if text is None:
        names = _runnable(DEFAULT_UDP_SERVERS, ServerSpec.udp_reason, notes)
        without = [n for n in dict.fromkeys(DEFAULT_SERVERS + DEFAULT_TLS_SERVERS) if SERVERS[n].udp_command is None]
        if without:
            notes.append(f"skipping {', '.join(without)}: {'they have' if len(without) > 1 else 'it has'} no UDP")
        return names
    return _named_servers(text, _usable_over("udp", "UDP", lambda s: s.udp_command, ServerSpec.udp_reason))


def _usable_over(transport: str, label: str, command: Callable[[ServerSpec], object],
                 why_not: Callable[[ServerSpec], str | None]) -> Callable[[str, ServerSpec], None]:
    """The check_usable of _named_servers() for a transport that only some
    servers have (`command` None for the others), and that may be
    unavailable here (`why_not`)."""
    def check_usable(name: str, spec: ServerSpec) -> None:
        if command(spec) is None:
            _fail(f"--servers: {name} has no {label} (with --transport {transport} choose from "
                  f"{', '.join(n for n, s in SERVERS.items() if command(s) is not None)})")
        reason = why_not(spec)
        if reason:
            _fail(f"--servers: {name} is not available with {label}: {reason}")

    return check_usable


def _ws_servers(text: str | None, notes: list[str]) -> list[str]:
    """_servers() for --transport ws: by default every server that serves
    WebSocket here, the others skipped with a note; one named that cannot is
    a usage error."""
    if text is None:
        return _runnable(DEFAULT_WS_SERVERS, ServerSpec.ws_reason, notes)
    return _named_servers(text, _usable_over("ws", "WebSocket", lambda s: s.ws_command, ServerSpec.ws_reason))


def _servers(text: str | None, transport: str, notes: list[str]) -> list[str]:
    """The servers to run. By default every one that can run here: over TCP
    uvloop is an optional extra; over TLS each server that cannot serve TLS
    here is skipped with a note (appended to `notes`). A server named
    explicitly that cannot run is a usage error."""
    if transport == "udp":
        return _udp_servers(text, notes)
    if transport == "ws":
        return _ws_servers(text, notes)
    tls = transport == "tls"
    if text is None:
        if tls:
            names = _runnable(DEFAULT_TLS_SERVERS, ServerSpec.tls_reason, notes)
            for name in DEFAULT_SERVERS:
                if name not in DEFAULT_TLS_SERVERS and SERVERS[name].tls_command is None:
                    notes.append(f"skipping {name}: it has no TLS")
            return names
        return [n for n in DEFAULT_SERVERS if n != "uvloop" or SERVERS[n].unavailable_reason() is None]

    def check_usable(name: str, spec: ServerSpec) -> None:
        if spec.command is None:
            only = spec.serves_only
            _fail(f"--servers: {name} serves only {only} (add --transport {'udp' if only == 'UDP' else 'ws'})")
        if tls and spec.tls_command is None:
            _fail(f"--servers: {name} has no TLS (with --transport tls choose from "
                  f"{', '.join(n for n, s in SERVERS.items() if s.tls_command is not None)})")
        reason = spec.tls_reason() if tls else spec.unavailable_reason()
        if reason:
            _fail(f"--servers: {name} is not available{' with TLS' if tls else ''}: {reason}")

    return _named_servers(text, check_usable)


def _servers_per_io_backend(servers: str | None, io_backends: str, transport: str) -> str:
    """--servers with fastecho replaced by one server per backend --io-backend names
    (every default server when --servers is not given)."""
    backends = list(dict.fromkeys(b.strip() for b in io_backends.split(",") if b.strip()))
    unknown = [b for b in backends if b not in IO_BACKEND_SERVERS]
    if not backends or unknown:
        _fail(f"--io-backend: give backends from {', '.join(IO_BACKEND_SERVERS)}"
              + (f", not {unknown[0]!r}" if unknown else ""))
    if transport != "tcp":
        _fail("--io-backend applies to --transport tcp (its side-by-side servers are TCP ones)")
    names = [n.strip() for n in (servers or ",".join(DEFAULT_SERVERS)).split(",") if n.strip()]
    if "fastecho" not in names:
        names.insert(0, "fastecho")
    at = names.index("fastecho")
    names[at:at + 1] = [IO_BACKEND_SERVERS[b] for b in backends]
    return ",".join(names)


def _check_tls_support() -> None:
    """--transport tls needs trustme (the certificate) and a load generator
    built with OpenSSL."""
    reason = certs.trustme_missing()
    if reason:
        _fail(f"--transport tls needs a certificate, and {reason}")
    from fastecho.bench._loadgen import TLS_SUPPORTED

    if not TLS_SUPPORTED:
        _fail("--transport tls: this fastecho's load generator was built without TLS (FASTECHO_WITH_TLS=OFF, "
              "or OpenSSL >= 1.1.1 was not found at build time: install libssl-dev and reinstall fastecho)")


def _check_ws_support() -> None:
    """--transport ws needs a load generator built with OpenSSL (SHA-1 for
    the upgrade, randomness for the masks)."""
    from fastecho.bench._loadgen import WS_SUPPORTED

    if not WS_SUPPORTED:
        _fail("--transport ws: this fastecho's load generator was built without OpenSSL (FASTECHO_WITH_TLS=OFF, "
              "or OpenSSL >= 1.1.1 was not found at build time), which its WebSocket mode needs")


def _local_port_count() -> int | None:
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return None
    return high - low + 1


def _check_conns(conns: list[int]) -> None:
    for n in conns:
        if n < 1:
            _fail(f"--conns: {n} is not a valid connection count (at least 1)")
    needed = max(conns) + FD_HEADROOM
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and needed > hard:
        _fail(f"--conns: {max(conns)} connections need about {needed} open files but RLIMIT_NOFILE allows "
              f"{hard}; raise the limit (ulimit -n) or use fewer connections")
    ports = _local_port_count()
    if ports is not None and max(conns) > ports:
        _fail(f"--conns: {max(conns)} connections need more local ports than the {ports} in "
              f"net.ipv4.ip_local_port_range")


def _raise_fd_limit(conns: int) -> None:
    """Lift the soft RLIMIT_NOFILE to what the run needs (checked against the
    hard limit already); the servers inherit it."""
    needed = conns + FD_HEADROOM
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed if hard == resource.RLIM_INFINITY else min(needed, hard),
                                                    hard))


def _check_output_path(option: str, path: Path | None) -> None:
    """Refuse, before anything runs, a report file that cannot be written.

    The report is written after the whole run, so finding out then wastes it.
    Opening the file for writing is the check that meets what the write will
    meet: root passes every permission bit, but not /proc, /sys or a read-only
    mount. Nothing the user had is changed: an existing file is opened without
    truncating, and a file the check creates is removed again."""
    if path is None:
        return
    # The file a write would reach: with O_EXCL a symlink, even a dangling
    # one the write would create the target of, counts as existing.
    target = Path(os.path.realpath(path))
    if not target.parent.is_dir():
        _fail(f"{option}: directory {target.parent} does not exist")
    try:
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            created = True
        except FileExistsError:
            # O_NONBLOCK: a FIFO with no reader yet must not hang the check.
            fd = os.open(target, os.O_WRONLY | os.O_NONBLOCK)
            created = False
    except OSError as e:
        if e.errno == errno.ENXIO:
            return  # a FIFO with no reader yet: writable once one opens it
        _fail(f"{option}: cannot write {path}: {e.strerror}")
    os.close(fd)
    if created:
        os.unlink(target)


def _in_range(option: str, value: float, low: float, high: float, low_inclusive: bool = True) -> None:
    if not ((value >= low if low_inclusive else value > low) and value <= high):
        bound = "at least" if low_inclusive else "more than"
        _fail(f"{option}: {value:g} is out of range ({bound} {low:g}, at most {high:g})")


def build_plan(*, servers: str | None, conns: str, sizes: str, depth: int, duration: float, warmup: float,
               rounds: int, threads: int | None, baseline_threads: int, server_cpus: str | None,
               client_cpus: str | None, transport: str = "tcp", tls_version: str | None = None,
               handshakes: bool = False, notes: list[str] | None = None,
               udp_timeout: float | None = None) -> Plan:
    """Check every input and return the plan; raises click.UsageError.
    Servers skipped by default (no TLS or no UDP here) are explained in
    `notes`."""
    if transport not in TRANSPORTS:
        _fail(f"--transport: {transport!r} is not one of {', '.join(TRANSPORTS)}")
    udp = transport == "udp"
    if udp and handshakes:
        _fail("--handshakes applies only to TCP and TLS (UDP has no connections to set up)")
    if transport == "ws":
        if handshakes:
            _fail("--handshakes applies only to TCP and TLS (WebSocket connections upgrade once, before the window)")
        _check_ws_support()
    if udp_timeout is not None:
        if not udp:
            _fail("--udp-timeout applies only with --transport udp")
        _in_range("--udp-timeout", udp_timeout, 0, 60, low_inclusive=False)
    if transport == "tls":
        _check_tls_support()
        tls_version = tls_version or "1.3"
        if tls_version not in TLS_VERSIONS:
            _fail(f"--tls-version: {tls_version!r} is not one of {', '.join(TLS_VERSIONS)}")
    elif tls_version is not None:
        _fail("--tls-version applies only with --transport tls")
    if handshakes and depth != 1:
        _fail(f"--depth {depth}: with --handshakes each connection echoes one message, so depth is 1")
    server_names = _servers(servers, transport, notes if notes is not None else [])
    conn_counts = _int_list("--conns", conns)
    _check_conns(conn_counts)
    message_sizes = _int_list("--sizes", sizes)
    for size in message_sizes:
        if udp and not 0 <= size <= MAX_UDP_SIZE:
            _fail(f"--sizes: {size} is not a valid datagram size (0 to {MAX_UDP_SIZE} bytes)")
        if not udp and not 1 <= size <= MAX_SIZE:
            _fail(f"--sizes: {size} is not a valid message size (1 to {MAX_SIZE} bytes)")
    _in_range("--depth", depth, 1, MAX_DEPTH)
    if udp and max(conn_counts) > MAX_UDP_SOCKETS:
        _fail(f"--conns: {max(conn_counts)} UDP sockets are more than the load generator opens ({MAX_UDP_SOCKETS})")
    if udp and max(conn_counts) * depth > MAX_UDP_IN_FLIGHT:
        _fail(f"--conns {max(conn_counts)} × --depth {depth} is more than the {MAX_UDP_IN_FLIGHT} datagrams the "
              f"load generator keeps in flight")
    _in_range("--duration", duration, 0, 3600, low_inclusive=False)
    _in_range("--warmup", warmup, 0, 3600)
    _in_range("--rounds", rounds, 1, 1000)
    _in_range("--baseline-threads", baseline_threads, 1, 10000)
    available = sorted(os.sched_getaffinity(0))
    server_set = _cpu_set("--server-cpus", server_cpus) if server_cpus is not None else frozenset(available[:1])
    default_client = available[1:2] or available[:1]  # a single-CPU box shares it
    client_set = _cpu_set("--client-cpus", client_cpus) if client_cpus is not None else frozenset(default_client)
    if threads is None:
        threads = len(server_set)  # more threads than CPUs only adds context switches
    _in_range("--threads", threads, 1, 1024)
    return Plan(
        servers=server_names,
        workloads=[Workload(c, s, depth, handshakes, udp) for s in message_sizes for c in conn_counts],
        rounds=rounds, duration=duration, warmup=warmup, threads=threads, baseline_threads=baseline_threads,
        server_cpus=server_set, client_cpus=client_set, transport=transport, tls_version=tls_version,
        handshakes=handshakes, udp_timeout=udp_timeout,
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def _run(plan: Plan, json_path: Path | None, plot_path: Path | None, argv: Sequence[str],
         notes: Sequence[str] = ()) -> int:
    from fastecho.bench import report

    _raise_fd_limit(max(w.conns for w in plan.workloads))
    err = report.stderr_console()
    for note in notes:
        err.print(f"fastecho bench: {note}", markup=False, highlight=False)
    if plan.transport != "tls":
        return _run_with(plan, json_path, plot_path, argv, None)
    # One certificate for every server of the run, removed once it is over.
    with certs.temporary_certificate(HOST) as tls:
        return _run_with(plan, json_path, plot_path, argv, tls)


def _run_with(plan: Plan, json_path: Path | None, plot_path: Path | None, argv: Sequence[str],
              tls: certs.TlsFiles | None) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from fastecho.bench import report

    machine = report.machine_info(plan, argv, tls)
    err = report.stderr_console()
    seconds = plan.estimated_seconds()
    err.print(f"[bold]fastecho bench[/bold]: {_count(plan.run_count, 'run')} ({_count(len(plan.servers), 'server')}"
              f" × {_count(len(plan.workloads), 'workload')} × {_count(plan.rounds, 'round')}, "
              f"{plan.transport_label}{', handshakes' if plan.handshakes else ''}), about "
              + (f"{seconds:.0f} s" if seconds < 100 else f"{seconds / 60:.1f} min"))
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True) as progress:
        task = progress.add_task("starting", total=plan.run_count)
        done = 0

        def on_run(round_index: int, server: str, workload: Workload) -> None:
            nonlocal done
            progress.update(task, completed=done,
                            description=f"round {round_index + 1}/{plan.rounds} · {workload.label} · {server}")
            done += 1

        rows = run_plan(plan, on_run=on_run, tls=tls)
        progress.update(task, completed=done)

    report.render_tables(report.stdout_console(), plan, rows, tls)
    if json_path is not None:
        report.write_json(json_path, machine, rows)
        err.print(f"wrote {json_path}")
    if plot_path is not None:
        report.write_plot(plot_path, plan, rows)
        err.print(f"wrote {plot_path}")
    return EXIT_OK if all(r.ok for r in rows) else EXIT_SOME_FAILED


@click.command(name="bench", context_settings={"help_option_names": ["-h", "--help"]},
               epilog="Defaults: 1 KiB ping-pong at 64 and 1000 connections, 3 rounds of 3 s, every server "
                      "(about 2 minutes). Full matrix: --conns 1,64,1000 --sizes 64,1024,65536. "
                      "--transport tls: " + ", ".join(DEFAULT_TLS_SERVERS) + " on one throwaway ECDSA P-256 "
                      "certificate (needs trustme). --handshakes: 64 connections × 64 B. --transport udp: "
                      + ", ".join(DEFAULT_UDP_SERVERS) + ", 64 sockets × depth 8 at 64 B and 1 KiB. --transport ws: "
                      + ", ".join(DEFAULT_WS_SERVERS) + ", 64 connections × 1 KiB binary messages.")
@click.option("--servers", metavar="LIST", help="Servers to compare, comma-separated: "
              + ", ".join(SERVERS) + " (default: all that are installed; with --transport tls, udp or ws, "
              "all that serve TLS, UDP or WebSocket here).")
@click.option("--transport", type=click.Choice(TRANSPORTS), default="tcp", show_default=True,
              help="Plain TCP, TLS (every byte encrypted, every handshake before the window), UDP (every "
                   "datagram checked; loss, duplicates and reordering counted), or WebSocket (masked binary "
                   "frames, every echoed byte and frame checked, every upgrade before the window).")
@click.option("--tls-version", type=click.Choice(TLS_VERSIONS),
              help="With --transport tls: the one TLS version the load generator offers (default 1.3).")
@click.option("--handshakes", is_flag=True,
              help="Handshake mode: each connection connects, handshakes (full, never resumed), echoes one "
                   "message and closes, over and over; figures are per handshake.")
@click.option("--conns", metavar="LIST", help=f"Connection counts (UDP: sockets; default {DEFAULTS.conns}; with "
              f"--handshakes {HANDSHAKE_DEFAULTS.conns}; with --transport udp {UDP_DEFAULTS.conns}).")
@click.option("--sizes", metavar="LIST", help=f"Message sizes in bytes (default {DEFAULTS.sizes}; with --handshakes "
              f"{HANDSHAKE_DEFAULTS.sizes}; with --transport udp {UDP_DEFAULTS.sizes}, 0 to {MAX_UDP_SIZE}).")
@click.option("--depth", type=int, help=f"Messages in flight per connection (default {DEFAULT_DEPTH}; with "
              f"--transport udp {DEFAULT_UDP_DEPTH} datagrams per socket).")
@click.option("--udp-timeout", type=float, metavar="SECONDS",
              help="With --transport udp: a datagram not echoed within this is counted lost and its slot reused "
                   "(default 0.2).")
@click.option("--duration", type=float, help=f"Seconds measured per run (default {DEFAULTS.duration:g}).")
@click.option("--warmup", type=float, help=f"Seconds of traffic before each window (default {DEFAULTS.warmup:g}).")
@click.option("--rounds", type=int, help=f"Interleaved rounds; medians are reported (default {DEFAULTS.rounds}).")
@click.option("--threads", type=int, help="Threads of fastecho and the reference loop (default: one per server CPU).")
@click.option("--baseline-threads", type=int, default=32, show_default=True,
              help="Thread pool of the Python baseline (the seed design had 32).")
@click.option("--server-cpus", metavar="CPUS", help="CPUs the servers are pinned to, e.g. 0 or 0-1 (default: first).")
@click.option("--client-cpus", metavar="CPUS", help="CPUs the load generator is pinned to (default: second).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write medians as JSON.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a PNG of msgs/s and CPU/msg against connections (needs matplotlib).")
@click.option("--io-backend", "io_backends", metavar="LIST",
              help="fastecho's I/O backends to put side by side, comma-separated: epoll, io_uring "
                   "(fastecho in the server list becomes " + ", ".join(IO_BACKEND_SERVERS.values())
                   + "; --transport tcp only).")
@click.option("--quick", is_flag=True, help="Smoke run, about 20 s: one short round of the default workloads.")
def command(servers: str | None, transport: str, tls_version: str | None, handshakes: bool, conns: str | None,
            sizes: str | None, depth: int | None, udp_timeout: float | None, duration: float | None,
            warmup: float | None, rounds: int | None, threads: int | None, baseline_threads: int,
            server_cpus: str | None, client_cpus: str | None, json_path: Path | None, plot_path: Path | None,
            io_backends: str | None, quick: bool) -> int:
    """Compare fastecho with a Python baseline, asyncio, uvloop and a bare C
    epoll loop on loopback (with --transport tls: fastecho's TLS, HAProxy
    terminating TLS in front of fastecho, asyncio and uvloop; with
    --transport udp: fastecho's UDP listener, bare C recvfrom/sendto and
    recvmmsg/sendmmsg loops, and asyncio's and uvloop's DatagramProtocol;
    with --transport ws: fastecho's ws listener, its plain TCP listener, and
    the websockets and picows libraries), servers and load generator pinned
    to separate CPUs."""
    if transport == "udp" and not handshakes:
        base = UDP_QUICK if quick else UDP_DEFAULTS
    elif transport == "ws" and not handshakes:
        base = WS_QUICK if quick else WS_DEFAULTS
    elif handshakes:
        base = HANDSHAKE_QUICK if quick else HANDSHAKE_DEFAULTS
    else:
        base = QUICK if quick else DEFAULTS
    if depth is None:
        depth = DEFAULT_UDP_DEPTH if transport == "udp" else DEFAULT_DEPTH
    notes: list[str] = []
    if io_backends is not None:
        servers = _servers_per_io_backend(servers, io_backends, transport)
    plan = build_plan(
        servers=servers,
        conns=conns if conns is not None else base.conns,
        sizes=sizes if sizes is not None else base.sizes,
        depth=depth,
        duration=duration if duration is not None else base.duration,
        warmup=warmup if warmup is not None else base.warmup,
        rounds=rounds if rounds is not None else base.rounds,
        threads=threads, baseline_threads=baseline_threads, server_cpus=server_cpus, client_cpus=client_cpus,
        transport=transport, tls_version=tls_version, handshakes=handshakes, notes=notes, udp_timeout=udp_timeout,
    )
    _check_output_path("--json", json_path)
    _check_output_path("--plot", plot_path)
    if plot_path is not None:
        from fastecho.bench.report import check_plot_support

        reason = check_plot_support()
        if reason:
            _fail(reason)
    return _run(plan, json_path, plot_path, click.get_current_context().obj or [], notes)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m fastecho.bench`` and ``fastecho bench``;
    returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        # obj carries the raw arguments to the JSON report, so it can say how to rerun
        result = command.main(args=args, prog_name="python -m fastecho.bench", standalone_mode=False, obj=args)
    except click.ClickException as e:  # UsageError, BadParameter, NoSuchOption, ...
        click.echo(f"fastecho bench: error: {e.format_message()}", err=True)
        return EXIT_USAGE if isinstance(e, click.UsageError) else e.exit_code
    except click.Abort:  # Ctrl-C; the servers were stopped on the way out
        click.echo("fastecho bench: interrupted", err=True)
        return EXIT_INTERRUPTED
    return EXIT_OK if result is None else int(result)
