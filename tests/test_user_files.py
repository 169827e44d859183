"""--user and the files the server must reopen or remove after dropping root: logs and pid file."""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import tempfile
from pathlib import Path

import pytest

from helpers import file_text, wait_until

try:
    NOBODY = pwd.getpwnam("nobody")
except KeyError:
    NOBODY = None

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or NOBODY is None,
                                reason="dropping privileges needs root and a user 'nobody'")


@pytest.fixture
def open_dir():
    """A root-owned 0755 directory under /tmp: nobody can enter it (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="fastecho-user-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def all_logs(log_dir: Path) -> str:
    return file_text(log_dir / "fastecho.log") + file_text(log_dir / "fastecho.error.log")


def test_user_can_reopen_its_log_files_and_remove_its_pid_file(serve, open_dir):
    log_dir = open_dir / "logs"  # created by the server, as root
    run_dir = open_dir / "run"  # prepared by the operator: the user's own, like /run/fastecho
    run_dir.mkdir()
    os.chown(run_dir, NOBODY.pw_uid, NOBODY.pw_gid)
    pidfile = run_dir / "fastecho.pid"
    server = serve("--threads", "1", "--user", "nobody", "--log-dir", str(log_dir),
                   "--pidfile", str(pidfile))
    assert file_text(pidfile) == f"{server.pid}\n"
    for name in ("fastecho.log", "fastecho.error.log"):
        st = (log_dir / name).stat()
        assert (st.st_uid, st.st_gid) == (NOBODY.pw_uid, NOBODY.pw_gid), name
    assert (pidfile.stat().st_uid, pidfile.stat().st_mode & 0o777) == (0, 0o644)  # stays root's

    server.proc.send_signal(signal.SIGHUP)  # as root, this reopen failed: "Permission denied"
    assert wait_until(lambda: "reopened the log files" in file_text(log_dir / "fastecho.log"), 10), \
        all_logs(log_dir)
    assert server.stop() == 0
    text = all_logs(log_dir)
    assert "cannot reopen" not in text and "Permission denied" not in text, text
    assert text.index("reopened the log files") < text.index("stopped")  # written after the reopen
    assert file_text(log_dir / "fastecho.error.log") == ""
    assert not pidfile.exists()


def test_pid_file_the_user_cannot_remove_is_warned_about_and_emptied(serve, open_dir):
    pidfile = open_dir / "fastecho.pid"  # in a directory only root may write
    log_dir = open_dir / "logs"
    server = serve("--threads", "1", "--user", "nobody", "--log-dir", str(log_dir),
                   "--pidfile", str(pidfile))
    warning = (f"user nobody cannot remove the pid file {pidfile} at exit (that needs write "
               f"access to {open_dir}); it will be emptied instead")
    assert wait_until(lambda: warning in file_text(log_dir / "fastecho.log"), 10), all_logs(log_dir)
    assert file_text(pidfile) == f"{server.pid}\n"
    assert server.stop() == 0
    # Left behind, but naming no process: a stale pid could by now be another program's.
    assert pidfile.exists() and file_text(pidfile) == ""
    assert (f"cannot remove the pid file {pidfile} (Permission denied); emptied it instead"
            in file_text(log_dir / "fastecho.log"))
