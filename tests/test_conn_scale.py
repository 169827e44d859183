"""bench/conn_scale.py at a small scale: real fastecho servers and real
sockets on 127.0.0.0/8, run as the command a person runs. Each run is bounded
(--timeout, and a kill of its whole process group past that), and every test
checks that no process is left behind. Nothing asserts on timing.
"""
from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path

from test_bench_cli import our_children

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "conn_scale.py"
RUN_LIMIT_S = 120


def conn_scale(*args: str, nofile: int | None = None) -> subprocess.CompletedProcess[str]:
    """Runs the script to its end; its server and clients are in its
    process group, which is killed whole if it overruns."""
    def lower_nofile() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    process = subprocess.Popen([sys.executable, str(SCRIPT), "--timeout", str(RUN_LIMIT_S // 2), *args],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                               preexec_fn=lower_nofile if nofile else None)
    try:
        out, err = process.communicate(timeout=RUN_LIMIT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def test_holds_every_connection_with_sane_figures_and_no_error(tmp_path):
    before = our_children()
    result = conn_scale("--conns", "2000", "--json", str(tmp_path / "run.json"))
    assert result.returncode == 0, result.stderr
    figures = json.loads((tmp_path / "run.json").read_text())
    assert figures["held"] == figures["echoed_at_end"] == 2000
    assert figures["errors"] == {} and figures["stopped_by"] == ""
    # Our 4000 sockets (both ends) are open at the peak, whatever else the machine does.
    assert figures["peak"]["tcp"]["inuse"] >= 4000
    # An fe_conn is a few hundred bytes: the growth is positive and far from KiBs each.
    assert 0 < figures["rss_kib_per_conn"] < 16
    assert figures["cpu_us_per_open"] >= 0 and figures["accept_rate"] > 0
    assert "errors: 0 (none)" in result.stdout and "2,000 of 2,000 connections held" in result.stdout
    assert our_children() <= before


def test_the_servers_connection_cap_is_named_in_one_line():
    result = conn_scale("--conns", "2000", "--server-max-connections", "500")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "conn_scale: stopped at 500 connections by the server's --max-connections 500"]
    assert "500 of 2,000 connections held" in result.stdout


def test_the_servers_fd_limit_is_named_in_one_line():
    # A fd limit that every process inherits, as a hard limit nobody may raise
    # without CAP_SYS_RESOURCE: the server stops accepting below --conns.
    before = our_children()
    result = conn_scale("--conns", "3000", "--conn-timeout", "1", nofile=1500)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    match = re.fullmatch(r"conn_scale: stopped at ([\d,]+) connections by the server's fds "
                         r"\((\d+) open of its RLIMIT_NOFILE 1500\)", lines[0])
    assert match, lines[0]
    assert 0 < int(match[1].replace(",", "")) < 1500
    assert our_children() <= before


def test_more_connections_than_any_process_may_hold_is_refused_before_starting():
    nr_open = int(Path("/proc/sys/fs/nr_open").read_text())
    result = conn_scale("--conns", str(nr_open))
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert re.fullmatch(rf"conn_scale: stopped: the server's fds: one process may have at most fs.nr_open "
                        rf"{nr_open}, and {nr_open} connections need \d+", lines[0]), lines[0]
