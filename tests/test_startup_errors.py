"""Failures between parsing and serving (fd limit, engine creation): one line, exit 1, --daemon too."""
from __future__ import annotations

import os
import re
import signal

import pytest

from helpers import assert_one_line_error, file_text, pid_alive, run_cli, wait_until

FD_LIMIT = 1000
# Hard and soft limit alike, so that the server cannot lift its soft limit past it.
NOFILE = ["prlimit", f"--nofile={FD_LIMIT}:{FD_LIMIT}"]
TOO_MANY = re.compile(
    r"^fastecho: error: --threads 600 needs at least (\d+) file descriptors but the limit "
    rf"\(RLIMIT_NOFILE\) is {FD_LIMIT}; raise it \(ulimit -n\) or use at most (\d+) threads$")
# An address-space cap far above what Python needs, far below the rings asked for:
# 16 Mi access-log events per worker cannot be allocated, so creating the engine fails.
NO_MEMORY = ["prlimit", f"--as={2 << 30}"]
HUGE_RINGS = ("--threads", "4", "--access-log", "--access-log-ring", str(1 << 24))


@pytest.fixture
def daemon_cleanup(tmp_path):
    """The pid file a daemon test passes; a daemon left alive by a failing test is killed."""
    pidfile = tmp_path / "fastecho.pid"
    yield pidfile
    text = file_text(pidfile).strip()
    if text.isdigit() and pid_alive(int(text)):
        os.kill(int(text), signal.SIGKILL)
        wait_until(lambda: not pid_alive(int(text)), 10)


def test_more_threads_than_the_fd_limit_allows_is_refused_before_trying(serve):
    line = assert_one_line_error(run_cli("serve", "--port", "0", "--threads", "600", prefix=NOFILE), 1)
    match = TOO_MANY.match(line)
    assert match, line
    needed, fit = int(match[1]), int(match[2])
    assert needed > FD_LIMIT and 0 < fit < 600
    # The advice holds: the suggested thread count starts under this limit, and
    # 600 threads start under the limit the line asked for.
    assert serve("--threads", str(fit), prefix=NOFILE).stop() == 0
    assert serve("--threads", "600", prefix=["prlimit", f"--nofile={needed}:{needed}"]).stop() == 0


def test_daemon_parent_prints_the_same_fd_limit_line(daemon_cleanup):
    result = run_cli("serve", "--daemon", "--port", "0", "--threads", "600",
                     "--pidfile", str(daemon_cleanup), prefix=NOFILE)
    line = assert_one_line_error(result, 1)
    assert TOO_MANY.match(line), line
    assert "unexpected error" not in line
    assert result.stdout == b""
    assert not daemon_cleanup.exists()  # the daemon removed it as it failed


@pytest.mark.parametrize("daemon", [False, True], ids=["foreground", "daemon"])
def test_engine_that_cannot_be_created_is_one_line_exit_1(daemon, daemon_cleanup):
    args = ["--daemon", "--pidfile", str(daemon_cleanup)] if daemon else []
    result = run_cli("serve", "--port", "0", *HUGE_RINGS, *args, prefix=NO_MEMORY)
    line = assert_one_line_error(result, 1)
    assert line == ("fastecho: error: cannot create the engine: allocating an event ring: "
                    "Cannot allocate memory"), line
