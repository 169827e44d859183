"""`python -m fastecho.bench`: bad input is one line and exit 2 before anything
starts; the JSON has the documented shape; a failing server gets a "failed"
row while the others still report; no server process outlives a run. These
runs are shortened with flags; nothing here asserts on timing."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from fastecho import _core
from rich.console import Console

from fastecho.bench import cli, report
from fastecho.bench.harness import Plan, Workload, run_plan
from fastecho.bench.servers import SERVERS, ServerSpec

FAST = ["--duration", "0.3", "--warmup", "0.05", "--rounds", "1"]
RUN_TIMEOUT = 60.0


def bench(*args: str, prelude: str = "", timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess:
    """Run the harness in a fresh interpreter, optionally after `prelude`."""
    code = f"import sys\n{prelude}\nfrom fastecho.bench.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def assert_one_line_usage_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("fastecho bench: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert result.stdout == ""  # nothing ran


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--servers", "fastecho,nginx"], ["unknown server 'nginx'"]),
        (["--servers", ","], ["--servers"]),
        (["--sizes", "0"], ["--sizes", "0 is not a valid message size"]),
        (["--sizes", "-64"], ["--sizes", "-64"]),
        (["--sizes", str(16 * 2**20 + 1)], ["--sizes", str(16 * 2**20 + 1)]),
        (["--sizes", "1k"], ["--sizes", "'1k'"]),
        (["--conns", "0"], ["--conns", "0"]),
        (["--conns", "64,many"], ["--conns", "'many'"]),
        (["--conns", "100000000"], ["--conns", "RLIMIT_NOFILE"]),
        (["--server-cpus", "4096"], ["--server-cpus", "CPU 4096 does not exist"]),
        (["--client-cpus", "0-4096"], ["--client-cpus", "does not exist"]),
        (["--client-cpus", "one"], ["--client-cpus", "'one'"]),
        (["--depth", "0"], ["--depth"]),
        (["--duration", "0"], ["--duration"]),
        (["--rounds", "0"], ["--rounds"]),
        (["--threads", "0"], ["--threads"]),
        (["--rounds", "three"], ["--rounds"]),
        (["--no-such-flag"], ["--no-such-flag"]),
        (["--io-backend", "kqueue"], ["--io-backend", "'kqueue'"]),
        (["--io-backend", ","], ["--io-backend"]),
        (["--io-backend", "epoll", "--transport", "udp"], ["--io-backend", "--transport tcp"]),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, fragments):
    assert_one_line_usage_error(bench(*args), *fragments)


# Input that must be refused before anything starts, in a child capped at 1 GiB
# of address space and 20 s: a billion-CPU range once grew to 3.9 GB in 15 s,
# and a bad --json path once failed with a traceback after the whole run. With
# the cap, a regression fails fast instead of exhausting the test machine.
FAST_FAIL_TIMEOUT = 20.0
CAP_MEMORY = "import resource; resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))"
# A workload that would really run if the input were let through.
SMALL_RUN = ["--servers", "fastecho", "--conns", "1", "--sizes", "64", *FAST]


def refused_fast(*args: str, prelude: str = CAP_MEMORY) -> subprocess.CompletedProcess:
    return bench(*args, *SMALL_RUN, prelude=prelude, timeout=FAST_FAIL_TIMEOUT)


@pytest.mark.parametrize("option", ["--server-cpus", "--client-cpus"])
@pytest.mark.parametrize(
    "value, fragments",
    [
        ("0-1000000000", ["CPU 1000000000 does not exist"]),  # checked before it is expanded
        ("0-" + "9" * 5000, ["is not a CPU number or range"]),  # int() would refuse the digits
        ("5-2", ["'5-2' is a reversed range"]),
        ("-1", ["'-1' is not a CPU number or range"]),
        ("0--1", ["'0--1' is not a CPU number or range"]),
        ("0-", ["'0-' is not a CPU number or range"]),
        ("+1", ["'+1' is not a CPU number or range"]),  # int() would take it
        ("0,,1", ["empty item in '0,,1'"]),
        ("", ["empty item in ''"]),
    ],
)
def test_bad_cpu_lists_are_refused_before_being_expanded(option, value, fragments):
    assert_one_line_usage_error(refused_fast(option, value), option, *fragments)


def test_cpu_lists_take_numbers_ranges_and_spaces():
    cpu = min(os.sched_getaffinity(0))
    assert cli._cpu_set("--server-cpus", f" {cpu} , {cpu} - {cpu}") == {cpu}


@pytest.mark.parametrize("option", ["--json", "--plot"])
@pytest.mark.parametrize(
    "path, fragments",
    [
        ("/nonexistent-dir/out", ["directory /nonexistent-dir does not exist"]),
        ("{tmp_path}", ["is a directory"]),
        # Tests run as root, which passes every permission bit, so the
        # unwritable paths are ones the kernel refuses even to root.
        ("/proc/fastecho-bench-out", ["cannot write /proc/fastecho-bench-out"]),
        ("/sys/fastecho-bench-out", ["cannot write /sys/fastecho-bench-out", "Permission denied"]),
    ],
)
def test_an_unwritable_report_path_is_refused_before_anything_runs(option, path, fragments, tmp_path):
    result = refused_fast(option, path.format(tmp_path=tmp_path))
    assert_one_line_usage_error(result, option, *fragments)


def test_checking_report_paths_leaves_the_files_as_they_were(tmp_path):
    existing, new = tmp_path / "existing.json", tmp_path / "new.png"
    existing.write_text("the user's\n")
    # Both paths pass the check; the missing matplotlib then stops the run.
    result = refused_fast("--json", str(existing), "--plot", str(new),
                          prelude=f"{CAP_MEMORY}\nsys.modules['matplotlib'] = None")
    assert_one_line_usage_error(result, "--plot needs matplotlib")
    assert existing.read_text() == "the user's\n"  # not truncated
    assert not new.exists()  # created by the check, then removed


def test_uvloop_asked_but_not_installed_is_a_usage_error():
    result = bench("--servers", "fastecho,uvloop", prelude="sys.modules['uvloop'] = None  # as if not installed")
    assert_one_line_usage_error(result, "uvloop is not available", "fastecho[uvloop]")


def test_plot_without_matplotlib_is_a_usage_error(tmp_path):
    result = bench("--plot", str(tmp_path / "out.png"), prelude="sys.modules['matplotlib'] = None")
    assert_one_line_usage_error(result, "--plot needs matplotlib")


def test_python_dash_m_entry_point_reports_errors_the_same_way():
    result = subprocess.run([sys.executable, "-m", "fastecho.bench", "--servers", "nginx"], capture_output=True,
                            text=True, timeout=RUN_TIMEOUT, stdin=subprocess.DEVNULL)
    assert_one_line_usage_error(result, "unknown server 'nginx'")


EXPECTED_RUN_KEYS = {
    "server", "conns", "size", "depth", "msgs_per_s", "mib_per_s", "p50_us", "p99_us", "p999_us",
    "server_cpu_us_per_msg", "server_user_us_per_msg", "server_sys_us_per_msg", "starved_conns", "rss_kib",
    # beyond the minimum: how the row came about and how it compares
    "status", "rounds", "min_conn_msgs", "max_conn_msgs", "msgs_per_s_vs_fastecho", "cpu_per_msg_vs_fastecho",
    "client_cpu_busy",
}


def test_json_has_one_row_per_server_and_workload_with_medians(tmp_path):
    out = tmp_path / "bench.json"
    result = bench("--servers", "fastecho,reference", "--conns", "1,3", "--sizes", "64", "--rounds", "2",
                   "--duration", "0.3", "--warmup", "0.05", "--json", str(out))
    assert result.returncode == 0, result.stderr
    document = json.loads(out.read_text())
    assert set(document) == {"machine", "runs"}
    machine = document["machine"]
    assert machine["server_cpus"] and machine["client_cpus"] and machine["kernel"] and machine["python"]
    assert machine["command"].startswith("python -m fastecho.bench --servers fastecho,reference")
    runs = document["runs"]
    assert sorted((r["server"], r["conns"]) for r in runs) == [
        ("fastecho", 1), ("fastecho", 3), ("reference", 1), ("reference", 3)]
    for run in runs:
        assert set(run) == EXPECTED_RUN_KEYS
        assert run["status"] == "ok" and run["rounds"] == 2
        assert run["size"] == 64 and run["depth"] == 1
        assert run["msgs_per_s"] > 0 and run["mib_per_s"] > 0
        assert 0 < run["p50_us"] <= run["p99_us"] <= run["p999_us"]
        cpu, user, system = run["server_cpu_us_per_msg"], run["server_user_us_per_msg"], run["server_sys_us_per_msg"]
        assert cpu > 0 and user >= 0 and system >= 0
        assert cpu == pytest.approx(user + system, abs=1e-3)
        assert run["starved_conns"] == 0 and run["min_conn_msgs"] > 0
        assert isinstance(run["rss_kib"], int) and run["rss_kib"] > 0
        assert 0 < run["client_cpu_busy"] <= 1.5  # a share of one CPU, with tick rounding
        if run["server"] == "fastecho":
            assert run["msgs_per_s_vs_fastecho"] == run["cpu_per_msg_vs_fastecho"] == 1.0
        else:
            assert run["msgs_per_s_vs_fastecho"] > 0 and run["cpu_per_msg_vs_fastecho"] > 0


def test_io_backend_puts_each_backend_of_fastecho_side_by_side(tmp_path):
    out = tmp_path / "bench.json"
    backends = "epoll" if _core.io_uring_unavailable() else "epoll,io_uring"
    result = bench("--io-backend", backends, "--servers", "fastecho,reference", "--conns", "2", "--sizes", "64",
                   "--rounds", "1", "--duration", "0.3", "--warmup", "0.05", "--json", str(out))
    assert result.returncode == 0, result.stderr
    runs = json.loads(out.read_text())["runs"]
    expected = [f"fastecho-{b}" for b in backends.split(",")] + ["reference"]
    assert [r["server"] for r in runs] == expected
    assert all(r["status"] == "ok" and r["msgs_per_s"] > 0 for r in runs)
    # The first backend's row stands in for fastecho's in the ratios.
    assert runs[0]["msgs_per_s_vs_fastecho"] == runs[0]["cpu_per_msg_vs_fastecho"] == 1.0
    assert all(r["msgs_per_s_vs_fastecho"] > 0 and r["cpu_per_msg_vs_fastecho"] > 0 for r in runs[1:])


def our_children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def test_quick_against_fastecho_runs_end_to_end_and_leaves_no_process(capsys):
    # The real --quick (about 20 s, every server) shortened to fastecho only.
    before = our_children()
    code = cli.main(["--quick", "--servers", "fastecho", "--duration", "0.4"])
    out = capsys.readouterr().out
    assert code == 0
    assert "64 conns × 1 KiB, ping-pong" in out and "1000 conns × 1 KiB, ping-pong" in out
    assert out.count("fastecho ") >= 2 and "failed" not in out
    assert our_children() <= before


# A server that announces itself, accepts one connection and dies at once.
DIES_AFTER_ACCEPT = """
import os, socket
listener = socket.create_server(("127.0.0.1", 0))
print(f"dying listening on 127.0.0.1:{listener.getsockname()[1]}", flush=True)
listener.accept()
os._exit(3)
"""


@pytest.fixture
def dying_server(monkeypatch):
    spec = ServerSpec("dying", "exits after its first accept", lambda _, __: [sys.executable, "-c", DIES_AFTER_ACCEPT],
                      lambda: None)
    monkeypatch.setitem(SERVERS, "dying", spec)
    return spec


def test_a_server_failing_mid_run_gets_a_failed_row_and_the_others_still_report(dying_server, capsys, tmp_path):
    out_json = tmp_path / "out.json"
    before = our_children()
    code = cli.main(["--servers", "dying,reference", "--conns", "2", "--sizes", "64", *FAST, "--json", str(out_json)])
    out = capsys.readouterr().out
    assert code == 1  # some server failed
    assert "failed:" in out
    runs = {r["server"]: r for r in json.loads(out_json.read_text())["runs"]}
    assert runs["dying"]["status"].startswith("failed: connection")
    assert runs["dying"]["msgs_per_s"] is None
    assert runs["reference"]["status"] == "ok" and runs["reference"]["msgs_per_s"] > 0
    assert our_children() <= before


def test_a_failed_server_is_not_run_again_in_later_rounds(dying_server):
    starts = []
    plan = Plan(servers=["dying"], workloads=[Workload(1, 64)], rounds=3, duration=0.2, warmup=0)
    rows = run_plan(plan, on_run=lambda r, server, w: starts.append(r))
    assert starts == [0, 1, 2]  # progress still advances for every slot
    (row,) = rows
    assert not row.ok and row.samples == {}
    assert row.error.startswith("round 1: ")
    console = Console(record=True, width=200)
    report.render_tables(console, plan, rows)
    assert "failed: round 1: connection 0" in console.export_text()


def test_sigint_stops_the_harness_and_reaps_its_server():
    harness = subprocess.Popen([sys.executable, "-m", "fastecho.bench", "--servers", "python", "--conns", "2",
                                "--sizes", "64", "--duration", "2", "--warmup", "0", "--rounds", "5"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        deadline = time.monotonic() + 30
        children: list[psutil.Process] = []
        while not children and time.monotonic() < deadline:
            children = psutil.Process(harness.pid).children()
            time.sleep(0.05)
        assert children, "the harness never started a server"
        harness.send_signal(signal.SIGINT)  # only the harness, not its process group
        _, err = harness.communicate(timeout=30)
    finally:
        if harness.poll() is None:
            harness.kill()
            harness.wait()
    assert harness.returncode == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == "fastecho bench: interrupted"
    for child in children:
        assert not child.is_running()  # stopped and reaped (is_running is safe against pid reuse)

