"""Logging: the original's line format and levels, two log files, SIGHUP reopen, access log."""
from __future__ import annotations

import re
import signal
import socket

from helpers import echo_roundtrip, file_text, run_cli, scrape, wait_until

UNIX_LINE = re.compile(r"^\[(DEBUG|NORMAL|WARNING|ERROR|FATAL)\]\[(\d+)\]\[pid: (\d+)\] (.*)$")
ISO_LINE = re.compile(
    r"^\[(DEBUG|NORMAL|WARNING|ERROR|FATAL)\]"
    r"\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d)\]\[pid: (\d+)\] (.*)$")
CLOSE_LINE = re.compile(
    r"\] close 127\.0\.0\.1:(\d+) in=(\d+) out=(\d+) duration=(\d+\.\d{3})s reason=([a-z-]+)$",
    re.MULTILINE)


def log_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line]


def test_default_lines_on_stderr_are_level_unix_seconds_pid_message(serve):
    server = serve("--threads", "1")
    assert server.stop() == 0
    lines = log_lines(server.stderr())
    assert lines
    for line in lines:
        match = UNIX_LINE.match(line)
        assert match, line
        assert int(match[3]) == server.pid
    assert any(UNIX_LINE.match(line)[1] == "NORMAL" and "listening on" in line for line in lines)


def test_iso_time_option_writes_iso_8601_times(serve):
    server = serve("--threads", "1", "--log-time", "iso")
    assert server.stop() == 0
    lines = log_lines(server.stderr())
    assert lines and all(ISO_LINE.match(line) for line in lines), lines


def test_log_level_warning_hides_normal_lines(serve):
    server = serve("--threads", "1", "--log-level", "warning")
    assert server.stop() == 0
    assert server.stderr() == ""


def test_log_dir_splits_normal_and_error_lines_into_two_files(serve, tmp_path):
    log_dir = tmp_path / "logs"  # created by the server
    server = serve("--threads", "1", "--log-dir", str(log_dir))
    assert server.stop() == 0
    assert server.stderr() == ""  # nothing on stderr when logging to files
    normal = file_text(log_dir / "fastecho.log")
    assert "listening on" in normal and "stopped" in normal
    assert all(UNIX_LINE.match(line)[1] in ("DEBUG", "NORMAL", "WARNING") for line in log_lines(normal))
    assert file_text(log_dir / "fastecho.error.log") == ""

    # A failure to start is FATAL: it goes to the error log, and still one line on stderr.
    with socket.create_server(("127.0.0.1", 0)) as busy:
        busy_port = busy.getsockname()[1]
        result = run_cli("serve", "--port", str(busy_port), "--log-dir", str(log_dir))
    assert result.returncode == 1
    assert len(result.stderr.decode().strip().splitlines()) == 1
    errors = log_lines(file_text(log_dir / "fastecho.error.log"))
    assert len(errors) == 1, errors
    assert errors[0].startswith("[FATAL]") and "already in use" in errors[0]
    assert "already in use" not in file_text(log_dir / "fastecho.log")


def test_log_dir_that_cannot_be_created_is_one_line_exit_1(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run_cli("serve", "--port", "0", "--log-dir", str(blocker / "logs"))
    assert result.returncode == 1
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastecho: error: cannot create log directory")


def test_sighup_reopens_the_log_files_for_logrotate(serve, tmp_path):
    log_dir = tmp_path / "logs"
    server = serve("--threads", "1", "--log-dir", str(log_dir))
    current = log_dir / "fastecho.log"
    rotated = log_dir / "fastecho.log.1"
    assert wait_until(lambda: "listening on" in file_text(current), 10)
    current.rename(rotated)  # what logrotate does, before it signals
    server.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: "reopened the log files" in file_text(current), 10)
    assert server.proc.poll() is None  # SIGHUP does not stop the server
    with server.connect() as sock:
        assert echo_roundtrip(sock, b"still here") == b"still here"
    assert server.stop() == 0
    assert "stopped" in file_text(current)
    old = file_text(rotated)
    assert "listening on" in old and "stopped" not in old and "reopened" not in old
    assert (log_dir / "fastecho.error.log").exists()


def test_access_log_records_open_and_close_with_peer_bytes_and_duration(serve):
    server = serve("--threads", "2", "--access-log")
    ports = []
    for payload in (b"a" * 10, b"b" * 2000):
        with server.connect() as sock:
            ports.append(sock.getsockname()[1])
            assert echo_roundtrip(sock, payload) == payload
            sock.shutdown(socket.SHUT_WR)
            assert sock.recv(1) == b""  # the server saw EOF and closed
    assert wait_until(lambda: len(CLOSE_LINE.findall(server.stderr())) == 2, 10), server.stderr()
    assert server.stop() == 0
    text = server.stderr()
    for port in ports:
        assert re.search(rf"^\[NORMAL\]\[\d+\]\[pid: \d+\] open 127\.0\.0\.1:{port}$", text, re.MULTILINE)
    closes = {int(m[0]): m for m in CLOSE_LINE.findall(text)}
    assert sorted(closes) == sorted(ports)
    assert closes[ports[0]][1:3] == ("10", "10")
    assert closes[ports[1]][1:3] == ("2000", "2000")
    assert all(m[4] == "eof" for m in closes.values())


def test_access_log_reports_connections_closed_by_shutdown(serve):
    server = serve("--threads", "1", "--access-log", "--grace", "0.2")
    sock = server.connect()
    try:
        assert echo_roundtrip(sock, b"x") == b"x"
        assert server.stop() == 0
    finally:
        sock.close()
    closes = CLOSE_LINE.findall(server.stderr())
    assert len(closes) == 1 and closes[0][4] == "shutdown"


def test_full_event_ring_drops_are_counted_logged_and_exported_never_blocking(serve):
    connections = 400
    server = serve("--threads", "1", "--access-log", "--access-log-ring", "1", "--metrics-port", "0")
    url = server.wait_for_stderr(r"metrics at (http://\S+)")[1]
    for _ in range(connections):  # far faster than one event per drain interval
        with server.connect() as sock:
            pass
    # Every connection was still served: the worker never waited for the logger.
    with server.connect() as sock:
        assert echo_roundtrip(sock, b"alive") == b"alive"
    connections += 1
    assert wait_until(lambda: scrape(url)["fastecho_connections_closed_total"] == connections, 10)
    dropped = scrape(url)["fastecho_log_events_dropped_total"]
    assert server.stop() == 0
    text = server.stderr()
    logged = len(re.findall(r"\] (?:open|close) 127\.0\.0\.1:\d+", text))
    totals = [int(n) for n in re.findall(r"event\(s\) dropped .*\((\d+) in total\)", text)]
    assert dropped > 0
    assert totals and totals[-1] >= dropped  # the final total is logged
    assert logged + totals[-1] == 2 * connections
