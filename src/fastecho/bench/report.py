"""Present benchmark rows: a rich table, a JSON file, a PNG plot."""
from __future__ import annotations

import json
import os
import platform
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fastecho.bench.certs import TlsFiles
from fastecho.bench.harness import Plan, Row, Workload, baseline_row, find_row, format_size
from fastecho.bench.servers import SERVERS, haproxy_binary


def _haproxy_version() -> str | None:
    """'2.6.12-1+deb12u4' from `haproxy -v`, or None without one."""
    binary = haproxy_binary()
    if binary is None:
        return None
    try:
        first = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10,
                               stdin=subprocess.DEVNULL).stdout.partition("\n")[0]
    except (OSError, subprocess.TimeoutExpired):
        return None
    words = first.split()
    return words[2] if len(words) > 2 and words[:2] == ["HAProxy", "version"] else first or None


def _load_generator_tls() -> str | None:
    from fastecho.bench._loadgen import TLS_LIBRARY

    return TLS_LIBRARY


def _udp_default_timeout() -> float:
    from fastecho.bench._loadgen import UDP_DEFAULT_TIMEOUT

    return UDP_DEFAULT_TIMEOUT


def machine_info(plan: Plan, argv: Sequence[str], tls: TlsFiles | None = None) -> dict:
    """What a reader needs to judge and rerun the figures."""
    from importlib.metadata import PackageNotFoundError, version

    def package_version(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    cpu_model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "hostname": platform.node(),
        "cpu_model": cpu_model,
        "cpus_available": sorted(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "fastecho": package_version("fastecho"),
        "uvloop": package_version("uvloop"),
        "server_cpus": sorted(plan.server_cpus) if plan.server_cpus else None,
        "client_cpus": sorted(plan.client_cpus) if plan.client_cpus else None,
        "threads": plan.threads,
        "baseline_threads": plan.baseline_threads,
        "rounds": plan.rounds,
        "duration_s": plan.duration,
        "warmup_s": plan.warmup,
        "command": "python -m fastecho.bench " + " ".join(argv),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "transport": plan.transport,
        "tls_version": plan.tls_version,
        "handshakes": plan.handshakes,
        "udp_timeout_s": (plan.udp_timeout or _udp_default_timeout()) if plan.udp else None,
        "certificate": tls.description if tls else None,
        # Not always the same library: wheels bundle the load generator's.
        "load_generator_tls": _load_generator_tls(),
        "python_ssl": ssl.OPENSSL_VERSION,  # asyncio's and uvloop's
        "haproxy": _haproxy_version() if "haproxy" in plan.servers else None,
    }


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _negotiated(row: Row) -> str | None:
    """What TLS the row's handshakes settled on ('a; b' if rounds differed)."""
    seen = list(dict.fromkeys(s.tls for s in row.samples.values() if s.tls))
    return "; ".join(seen) if seen else None


def row_record(row: Row, rows: Sequence[Row]) -> dict:
    """One JSON row: medians over rounds; metrics are null when it failed.
    In handshake mode the per-message keys are named per handshake (one
    handshake echoes one message), and MiB/s is left out; TLS rows add
    "tls", what was negotiated. UDP rows name them per datagram and add what
    became of the datagrams sent in the window (medians over rounds):
    "sent", "lost", "loss_pct", "late", "duplicates", "reordered"; their
    "conns" are sockets."""
    baseline = baseline_row(rows, row.workload)
    w = row.workload
    record = {
        "server": row.server,
        "conns": w.conns,
        "size": w.size,
        "depth": w.depth,
        "status": "ok" if row.ok else f"failed: {row.error}",
        "rounds": len(row.samples),
        "msgs_per_s": _rounded(row.median("msgs_per_s"), 1),
        "mib_per_s": _rounded(row.median("mib_per_s"), 3),
        "p50_us": _rounded(row.median("p50_us"), 3),
        "p99_us": _rounded(row.median("p99_us"), 3),
        "p999_us": _rounded(row.median("p999_us"), 3),
        "server_cpu_us_per_msg": _rounded(row.median("cpu_us_per_msg"), 4),
        "server_user_us_per_msg": _rounded(row.median("user_us_per_msg"), 4),
        "server_sys_us_per_msg": _rounded(row.median("sys_us_per_msg"), 4),
        "starved_conns": row.median("starved_conns"),
        "min_conn_msgs": row.median("min_conn_msgs"),
        "max_conn_msgs": row.median("max_conn_msgs"),
        "rss_kib": row.median("rss_kib"),
        "client_cpu_busy": _rounded(row.median("client_cpu_busy"), 3),
        "msgs_per_s_vs_fastecho": _rounded(row.ratio_to(baseline, "msgs_per_s"), 4),
        "cpu_per_msg_vs_fastecho": _rounded(row.ratio_to(baseline, "cpu_us_per_msg"), 4),
    }
    if w.handshakes:
        del record["mib_per_s"]
        record = {key.replace("msgs", "handshakes").replace("_msg", "_handshake"): value
                  for key, value in record.items()}
    if w.udp:
        record |= {"sent": row.median("sent"), "lost": row.median("lost"),
                   "loss_pct": _rounded(row.median("loss_percent"), 4), "late": row.median("late"),
                   "duplicates": row.median("duplicates"), "reordered": row.median("reordered")}
        record = {key.replace("msgs", "datagrams").replace("_msg", "_datagram"): value
                  for key, value in record.items()}
    if (negotiated := _negotiated(row)) is not None:
        record["tls"] = negotiated
    return record


def write_json(path: Path, machine: dict, rows: Sequence[Row]) -> None:
    """`machine` is machine_info(), taken when the run started."""
    document = {"machine": machine, "runs": [row_record(r, rows) for r in rows]}
    path.write_text(json.dumps(document, indent=2) + "\n")


def _number(value: float | None, digits: int = 1, thousands: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}" if thousands else f"{value:.{digits}f}"


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def _loss(percent: float | None) -> str:
    if percent is None:
        return "–"
    return "0" if percent == 0 else f"[red]{percent:.3g}[/red]"


def _count_cell(count: int | None) -> str:
    return "–" if count is None else f"[red]{count:,}[/red]" if count else "0"


def render_tables(console: Console, plan: Plan, rows: Sequence[Row], tls: TlsFiles | None = None) -> None:
    """One table per workload, one row per server, medians over rounds."""
    if plan.udp:
        _render_udp_tables(console, plan, rows)
        return
    unit = "handshake" if plan.handshakes else "msg"
    for workload in plan.workloads:
        baseline = baseline_row(rows, workload)
        table = _workload_table(plan, workload)
        table.add_column("server", style="bold")
        headings = [f"{unit}s/s", "MiB/s", "p50 µs", "p99 µs", "p99.9 µs", f"CPU µs/{unit}\n(user + sys)",
                    "starved\nconns", "RSS\nMiB", f"{unit}s/s\nvs fastecho", f"CPU/{unit}\nvs fastecho"]
        if plan.handshakes:
            headings.remove("MiB/s")  # one small message per handshake: not a throughput
        for heading in headings:
            table.add_column(heading, justify="right")
        for server, row in _rows_that_ran(table, plan, rows, workload, len(headings)):
            cells = [
                _number(row.median("msgs_per_s"), 0, thousands=True),
                _number(row.median("mib_per_s"), 1),
                _number(row.median("p50_us"), 1),
                _number(row.median("p99_us"), 1),
                _number(row.median("p999_us"), 1),
                _cpu_cell(row),
                _starved_cell(row),
                _rss_cell(row),
                _ratio(row.ratio_to(baseline, "msgs_per_s")),
                _ratio(row.ratio_to(baseline, "cpu_us_per_msg")),
            ]
            if plan.handshakes:
                del cells[1]
            table.add_row(server, *cells)
        console.print(table)
    cpus = f"server on CPU {_cpus(plan.server_cpus)}, load generator on CPU {_cpus(plan.client_cpus)}"
    if plan.handshakes:
        what = ("CPU µs/handshake is the server's user+sys time in the window divided by the cycles of connect, "
                "full handshake, one echo and close completed; latency is connect() to verified echo; starved = "
                "connections that completed no cycle.")
    else:
        what = ("CPU µs/msg is the server's user+sys time in the window divided by messages echoed; starved = "
                "connections that completed no message.")
    console.print(f"[dim]{cpus}; {what}[/dim]")
    if tls is not None:
        negotiated = {row.server: n for row in rows if (n := _negotiated(row))}
        settled = sorted(set(negotiated.values()))
        if len(settled) == 1:
            agreed = f"every TLS server negotiated {settled[0]}"
        else:
            agreed = "negotiated: " + "; ".join(f"{server}: {n}" for server, n in negotiated.items())
        plain = [n for n in plan.servers if n in SERVERS and not SERVERS[n].client_tls]
        console.print(f"[dim]TLS: {tls.description}, verified by the load generator; {agreed}. Server CPU of "
                      f"a proxy in front counts both processes (proxy + backend)"
                      + (f"; {', '.join(plain)}: plain TCP, for comparison" if plain else "") + ".[/dim]")
    if plan.ws:
        plain = [n for n in plan.servers if n in SERVERS and not SERVERS[n].client_ws]
        console.print("[dim]WebSocket: each message is one masked binary frame, every echoed byte, frame and "
                      "message boundary checked; upgrades happen before the window"
                      + (f"; {', '.join(plain)}: plain TCP, for comparison" if plain else "") + ".[/dim]")


def _render_udp_tables(console: Console, plan: Plan, rows: Sequence[Row]) -> None:
    """The UDP tables: per datagram, with loss, duplicates, reordering, late
    echoes and how busy the load generator was (on UDP the client's kernel
    work per datagram is about the server's, so it can be the limit)."""
    headings = ["dgrams/s", "p50 µs", "p99 µs", "CPU µs/dgram\n(user + sys)", "loss\n%", "dups",
                "reord.", "late", "starved\nsockets", "RSS\nMiB", "load gen\nbusy", "dgrams/s\nvs fastecho",
                "CPU/dgram\nvs fastecho"]
    for workload in plan.workloads:
        baseline = baseline_row(rows, workload)
        table = _workload_table(plan, workload)
        # Fourteen columns in 160 (MiB/s is in the JSON): the names and the CPU figure stay whole.
        table.add_column("server", style="bold", no_wrap=True)
        for heading in headings:
            table.add_column(heading, justify="right", no_wrap=heading.startswith("CPU µs"))
        for server, row in _rows_that_ran(table, plan, rows, workload, len(headings)):
            busy = row.median("client_cpu_busy")
            table.add_row(
                server,
                _number(row.median("msgs_per_s"), 0, thousands=True),
                _number(row.median("p50_us"), 1),
                _number(row.median("p99_us"), 1),
                _cpu_cell(row),
                _loss(row.median("loss_percent")),
                _count_cell(row.median("duplicates")),
                _count_cell(row.median("reordered")),
                _count_cell(row.median("late")),
                _starved_cell(row),
                _rss_cell(row),
                "–" if busy is None else f"{100 * busy:.0f}%",
                _ratio(row.ratio_to(baseline, "msgs_per_s")),
                _ratio(row.ratio_to(baseline, "cpu_us_per_msg")),
            )
        console.print(table)
    timeout = plan.udp_timeout or _udp_default_timeout()
    console.print(f"[dim]server on CPU {_cpus(plan.server_cpus)}, load generator on CPU {_cpus(plan.client_cpus)}; "
                  f"CPU µs/dgram is the server's user+sys time in the window divided by the datagrams echoed in "
                  f"time; loss = datagrams sent in the window not echoed within {timeout:g} s (late ones "
                  f"included); dups = extra echoes of a datagram; reord. = echoes that came back after those of "
                  f"datagrams sent later on their socket; late = echoes after their datagram was counted lost; "
                  f"starved = sockets with no echo in the window; load gen busy near 100% means the client, not "
                  f"the server, was the limit.[/dim]")


def _workload_table(plan: Plan, workload: Workload) -> Table:
    """An empty table titled with the workload, the transport and the number
    of rounds its medians are over; the caller adds the columns."""
    title = f"{workload.label} · {plan.transport_label} · median of {plan.rounds} round{'s' * (plan.rounds > 1)}"
    return Table(title=title, title_justify="left", title_style="bold")


def _rows_that_ran(table: Table, plan: Plan, rows: Sequence[Row], workload: Workload,
                   columns: int) -> Iterator[tuple[str, Row]]:
    """(server, row) for each server of the plan, in its order, whose row for
    `workload` ran. A failed row is added to `table` here as its error in the
    first of the `columns` figure columns, so that it keeps its place among
    the others; a server with no row is left out."""
    for server in plan.servers:
        row = find_row(rows, server, workload)
        if row is None:
            continue
        if not row.ok:
            table.add_row(server, f"[red]failed: {row.error}[/red]", *[""] * (columns - 1))
            continue
        yield server, row


def _cpu_cell(row: Row) -> str:
    """Server CPU per message, with its user and system parts; – without it."""
    cpu, user, system = (row.median(m) for m in ("cpu_us_per_msg", "user_us_per_msg", "sys_us_per_msg"))
    return "–" if cpu is None else f"{cpu:.2f} ({user:.2f} + {system:.2f})"


def _starved_cell(row: Row) -> str:
    """Connections (sockets) that completed nothing: red when any did."""
    starved = row.median("starved_conns")
    return f"[red]{starved}[/red]" if starved else "0"


def _rss_cell(row: Row) -> str:
    rss = row.median("rss_kib")
    return _number(rss / 1024 if rss is not None else None, 1)


def _cpus(cpus: frozenset[int] | None) -> str:
    return ",".join(map(str, sorted(cpus))) if cpus else "any"


def check_plot_support() -> str | None:
    """None if --plot can work, else the one-line reason it cannot."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "--plot needs matplotlib: pip install 'fastecho[plot]'"
    return None


def write_plot(path: Path, plan: Plan, rows: Sequence[Row]) -> None:
    """msgs/s and server CPU µs/msg (per handshake in handshake mode)
    against connection count, one line per server, one pair of panels per
    (size, depth)."""
    unit = "handshake" if plan.handshakes else "datagram" if plan.udp else "message"
    conns_label = "sockets" if plan.udp else "connections"
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    shapes = sorted({(w.size, w.depth) for w in plan.workloads})
    figure, axes = plt.subplots(len(shapes), 2, figsize=(11, 4 * len(shapes)), squeeze=False)
    for (size, depth), (throughput_axis, cpu_axis) in zip(shapes, axes, strict=True):
        for server in plan.servers:
            points = sorted((r.workload.conns, r.median("msgs_per_s"), r.median("cpu_us_per_msg"))
                            for r in rows if r.server == server and r.ok
                            and (r.workload.size, r.workload.depth) == (size, depth))
            if not points:
                continue
            conns = [p[0] for p in points]
            throughput_axis.plot(conns, [p[1] for p in points], marker="o", label=server)
            cpu_axis.plot(conns, [p[2] for p in points], marker="o", label=server)
        shape = f"{format_size(size)} {'datagrams' if plan.udp else 'messages'}, depth {depth}, {plan.transport_label}"
        throughput_axis.set(title=f"throughput · {shape}", xlabel=conns_label, ylabel=f"{unit}s/s", xscale="log")
        cpu_axis.set(title=f"server CPU per {unit} · {shape}", xlabel=conns_label,
                     ylabel=f"µs per {unit} (user + sys)", xscale="log")
        for axis in (throughput_axis, cpu_axis):
            axis.set_ylim(bottom=0)  # ratios read true only from a zero baseline
            axis.grid(True, alpha=0.3)
            axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def describe_servers(names: Sequence[str]) -> str:
    return "; ".join(f"{n}: {SERVERS[n].description}" for n in names)


def stdout_console() -> Console:
    console = Console()
    if not console.is_terminal:
        # Piped or captured: rich would assume 80 columns and squeeze the table.
        console = Console(width=160)
    return console


def stderr_console() -> Console:
    return Console(file=sys.stderr)
