"""--daemon and --pidfile, met the way an operator meets them: real processes and files."""
from __future__ import annotations

import os
import signal
import socket
import subprocess

import pytest

from helpers import (LISTENING, echo_roundtrip, fastecho_command, file_text, pid_alive, reap,
                     read_line, run_cli, wait_until)


@pytest.fixture
def daemons():
    """pids of daemons a test started; any still alive at teardown are killed."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda pid=pid: not pid_alive(pid), 10)


def start_daemon(daemons, tmp_path, *args: str, cwd=None):
    pidfile = tmp_path / "fastecho.pid"
    result = run_cli("serve", "--daemon", "--port", "0", "--threads", "2",
                     "--pidfile", str(pidfile), *args, cwd=cwd)
    if pidfile.exists() and file_text(pidfile).strip().isdigit():
        daemons.append(int(file_text(pidfile)))
    return result, pidfile


def stop_daemon(pid: int) -> None:
    os.kill(pid, signal.SIGTERM)
    assert wait_until(lambda: not pid_alive(pid), 20), f"daemon {pid} did not exit"


def test_daemon_detaches_once_listening_and_serves(daemons, tmp_path):
    result, pidfile = start_daemon(daemons, tmp_path, "--log-dir", str(tmp_path / "logs"))
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    match = LISTENING.search(result.stdout)
    assert match, result.stdout
    pid = int(file_text(pidfile))
    assert pid_alive(pid)
    # A new session without a terminal, stdio on /dev/null, cwd /.
    assert os.getsid(pid) != os.getsid(0)
    assert os.getsid(pid) != pid  # not a session leader either: it can never get a terminal
    for fd in (0, 1, 2):
        assert os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/null"
    assert os.readlink(f"/proc/{pid}/cwd") == "/"
    with open(f"/proc/{pid}/stat") as f:
        tty_nr = int(f.read().rsplit(")", 1)[1].split()[4])
    assert tty_nr == 0  # no controlling terminal
    with socket.create_connection(("127.0.0.1", int(match["port"])), timeout=5) as sock:
        assert echo_roundtrip(sock, b"from the daemon") == b"from the daemon"
    log = file_text(tmp_path / "logs" / "fastecho.log")
    assert f"[pid: {pid}] listening on" in log
    stop_daemon(pid)
    assert not pidfile.exists()  # removed on exit
    assert "stopped" in file_text(tmp_path / "logs" / "fastecho.log")


def test_daemon_changes_to_workdir_and_resolves_relative_paths_first(daemons, tmp_path):
    workdir = tmp_path / "work"
    workdir.mkdir()
    result = run_cli("serve", "--daemon", "--port", "0", "--threads", "1", "--pidfile", "run.pid",
                     "--log-dir", "logs", "--workdir", str(workdir), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    pidfile = tmp_path / "run.pid"  # relative to where the command ran, not to --workdir
    pid = int(file_text(pidfile))
    daemons.append(pid)
    assert os.readlink(f"/proc/{pid}/cwd") == str(workdir)
    assert "listening on" in file_text(tmp_path / "logs" / "fastecho.log")
    stop_daemon(pid)
    assert not pidfile.exists()


def test_daemon_that_cannot_listen_makes_the_command_fail_with_its_error(daemons, tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        result, pidfile = start_daemon(daemons, tmp_path, "--port", str(port))
    assert result.returncode == 1
    lines = result.stderr.decode().strip().splitlines()
    assert lines == [f"fastecho: error: cannot listen on 127.0.0.1:{port}: address already in use"]
    assert result.stdout == b""
    assert not pidfile.exists()


def test_daemon_with_missing_workdir_fails_before_forking(tmp_path):
    result = run_cli("serve", "--daemon", "--port", "0", "--workdir", str(tmp_path / "absent"))
    assert result.returncode == 1
    assert result.stderr.decode().strip().splitlines() == [
        f"fastecho: error: cannot daemonize: workdir {tmp_path / 'absent'} is not a directory"]


def test_second_instance_with_the_same_pidfile_is_refused(serve, tmp_path):
    pidfile = tmp_path / "fastecho.pid"
    first = serve("--threads", "1", "--pidfile", str(pidfile))
    assert file_text(pidfile).strip() == str(first.pid)
    second = run_cli("serve", "--port", "0", "--threads", "1", "--pidfile", str(pidfile))
    assert second.returncode == 1
    lines = second.stderr.decode().strip().splitlines()
    assert len(lines) == 1
    assert lines[0] == f"fastecho: error: already running: pid {first.pid} holds the pid file {pidfile}"
    assert file_text(pidfile).strip() == str(first.pid)  # untouched
    assert first.stop() == 0
    assert not pidfile.exists()


def test_second_daemon_with_the_same_pidfile_is_refused(daemons, tmp_path):
    result, pidfile = start_daemon(daemons, tmp_path)
    assert result.returncode == 0, result.stderr
    pid = int(file_text(pidfile))
    again, _ = start_daemon(daemons, tmp_path)
    assert again.returncode == 1
    assert again.stderr.decode().strip() == (
        f"fastecho: error: already running: pid {pid} holds the pid file {pidfile}")
    assert pid_alive(pid) and int(file_text(pidfile)) == pid
    stop_daemon(pid)


def test_stale_pidfile_is_replaced(serve, tmp_path):
    pidfile = tmp_path / "fastecho.pid"
    dead = subprocess.Popen(["true"])
    dead.wait()
    pidfile.write_text(f"{dead.pid}\n")  # its process is gone and nobody holds the lock
    server = serve("--threads", "1", "--pidfile", str(pidfile))
    assert file_text(pidfile) == f"{server.pid}\n"
    assert server.stop() == 0
    assert not pidfile.exists()


def test_pidfile_in_a_missing_directory_is_one_line_exit_1(tmp_path):
    path = tmp_path / "absent" / "fastecho.pid"
    result = run_cli("serve", "--port", "0", "--pidfile", str(path))
    assert result.returncode == 1
    assert result.stderr.decode().strip().splitlines() == [
        f"fastecho: error: cannot open pid file {path}: No such file or directory"]


def test_pidfile_is_removed_when_the_server_stops_on_sigint(tmp_path):
    pidfile = tmp_path / "fastecho.pid"
    proc = subprocess.Popen(fastecho_command("serve", "--port", "0", "--threads", "1",
                                             "--pidfile", str(pidfile)),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        assert LISTENING.search(read_line(proc, 15))
        assert file_text(pidfile) == f"{proc.pid}\n"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
    finally:
        reap(proc)
    assert not pidfile.exists()
