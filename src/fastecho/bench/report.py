"""Present benchmark rows: a rich table, a JSON file, a PNG plot."""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fastecho.bench.harness import BASELINE_SERVER, Plan, Row, find_row, format_size
from fastecho.bench.servers import SERVERS


def machine_info(plan: Plan, argv: Sequence[str]) -> dict:
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
    }


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def row_record(row: Row, rows: Sequence[Row]) -> dict:
    """One JSON row: medians over rounds; metrics are null when it failed."""
    baseline = find_row(rows, BASELINE_SERVER, row.workload)
    w = row.workload
    return {
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


def render_tables(console: Console, plan: Plan, rows: Sequence[Row]) -> None:
    """One table per workload, one row per server, medians over rounds."""
    for workload in plan.workloads:
        baseline = find_row(rows, BASELINE_SERVER, workload)
        table = Table(title=f"{workload.label} · median of {plan.rounds} round{'s' * (plan.rounds > 1)}",
                      title_justify="left", title_style="bold")
        table.add_column("server", style="bold")
        for heading in ("msgs/s", "MiB/s", "p50 µs", "p99 µs", "p99.9 µs", "CPU µs/msg\n(user + sys)",
                        "starved\nconns", "RSS\nMiB", "msgs/s\nvs fastecho", "CPU/msg\nvs fastecho"):
            table.add_column(heading, justify="right")
        for server in plan.servers:
            row = find_row(rows, server, workload)
            if row is None:
                continue
            if not row.ok:
                table.add_row(server, f"[red]failed: {row.error}[/red]", *[""] * 9)
                continue
            cpu, user, system = (row.median(m) for m in ("cpu_us_per_msg", "user_us_per_msg", "sys_us_per_msg"))
            cpu_cell = "–" if cpu is None else f"{cpu:.2f} ({user:.2f} + {system:.2f})"
            starved = row.median("starved_conns")
            table.add_row(
                server,
                _number(row.median("msgs_per_s"), 0, thousands=True),
                _number(row.median("mib_per_s"), 1),
                _number(row.median("p50_us"), 1),
                _number(row.median("p99_us"), 1),
                _number(row.median("p999_us"), 1),
                cpu_cell,
                f"[red]{starved}[/red]" if starved else "0",
                _number(rss / 1024 if (rss := row.median("rss_kib")) is not None else None, 1),
                _ratio(row.ratio_to(baseline, "msgs_per_s")),
                _ratio(row.ratio_to(baseline, "cpu_us_per_msg")),
            )
        console.print(table)
    cpus = f"server on CPU {_cpus(plan.server_cpus)}, load generator on CPU {_cpus(plan.client_cpus)}"
    console.print(f"[dim]{cpus}; CPU µs/msg is the server's user+sys time in the window divided by messages "
                  f"echoed; starved = connections that completed no message.[/dim]")


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
    """msgs/s and server CPU µs/msg against connection count, one line per
    server, one pair of panels per (size, depth)."""
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
        shape = f"{format_size(size)} messages, depth {depth}"
        throughput_axis.set(title=f"throughput · {shape}", xlabel="connections", ylabel="messages/s", xscale="log")
        cpu_axis.set(title=f"server CPU per message · {shape}", xlabel="connections",
                     ylabel="µs per message (user + sys)", xscale="log")
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
