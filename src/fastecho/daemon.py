"""--daemon and --pidfile.

daemonize() detaches the way the original server did (ignore SIGPIPE, fork,
setsid, stdio to /dev/null, chdir), with a second fork so that the daemon can
never reacquire a controlling terminal. It must run before any thread starts:
fork() copies only the calling thread. The command's process waits on a pipe
until the daemon reports that it is listening (exit 0, printing the listening
line) or that it failed (exit non-zero, printing its error line).

PidFile holds an flock(2) on the pid file for the server's life, so a second
instance is refused while the first lives, and a stale file (nobody holds the
lock) is simply taken over. The file stays root's under --user (tools that
trust a pid file want it so); the user removes it at exit, which needs write
access to its directory; without that it is emptied instead, with a warning
at start and at exit.
"""
from __future__ import annotations

import errno
import fcntl
import os
import select
import signal
import stat
import sys
import threading
import time

from fastecho.errors import ServeError
from fastecho.logs import log

READY_TIMEOUT = 120.0  # the parent's bound on waiting for the daemon to listen


class Readiness:
    """The daemon's end of the pipe to the waiting command: one message, then closed."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def _send(self, message: str) -> None:
        if self._fd is None:
            return
        data = (message.replace("\n", " ") + "\n").encode("utf-8", "replace")
        try:
            while data:
                data = data[os.write(self._fd, data):]
        except OSError:
            pass  # the command was killed; nobody is waiting
        finally:
            os.close(self._fd)
            self._fd = None

    def ready(self, listening_line: str) -> None:
        self._send("R" + listening_line)

    def failed(self, exit_code: int, error_line: str) -> None:
        self._send(f"E{exit_code} {error_line}")


def _wait_for_daemon(read_fd: int, out, err) -> int:
    """In the command's process: relay the daemon's report; the exit code."""
    data = b""
    deadline = time.monotonic() + READY_TIMEOUT
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            err.write(f"fastecho: error: the daemon did not report listening within {READY_TIMEOUT:g}s\n")
            return 1
        ready, _, _ = select.select([read_fd], [], [], left)
        if not ready:
            continue
        try:
            chunk = os.read(read_fd, 4096)
        except InterruptedError:
            continue
        if not chunk:
            break
        data += chunk
    message = data.decode("utf-8", "replace").strip()
    if message.startswith("R"):
        out.write(message[1:] + "\n")
        return 0
    if message.startswith("E"):
        code, _, line = message[1:].partition(" ")
        err.write(line + "\n")
        return int(code) if code.isdigit() else 1
    err.write("fastecho: error: the daemon exited before it was listening\n")
    return 1


def daemonize(workdir: str) -> Readiness:
    """Detach into the background. Returns in the daemon only; the caller's process exits.

    Raises ServeError (before forking) if workdir is not a directory.
    """
    if threading.active_count() > 1:  # fork would leave the other threads behind
        raise ServeError("cannot daemonize: threads are already running")
    if not os.path.isdir(workdir):
        raise ServeError(f"cannot daemonize: workdir {workdir} is not a directory")
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        read_fd, write_fd = os.pipe()
    except OSError as e:
        raise ServeError(f"cannot daemonize: pipe: {e.strerror or e}") from None
    try:
        pid = os.fork()
    except OSError as e:
        os.close(read_fd)
        os.close(write_fd)
        raise ServeError(f"cannot daemonize: fork: {e.strerror or e}") from None
    if pid > 0:  # the command: wait for the daemon's word, then exit with it
        os.close(write_fd)
        os.waitpid(pid, 0)  # the intermediate child exits at once
        code = _wait_for_daemon(read_fd, sys.stdout, sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    os.close(read_fd)
    try:
        os.setsid()  # a new session without a controlling terminal
        if os.fork() > 0:
            os._exit(0)  # the session leader goes; the daemon can never get a terminal back
        os.chdir(workdir)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        if devnull > 2:
            os.close(devnull)
    except OSError as e:  # the command waits for one line: send it, not a second one of our own
        Readiness(write_fd).failed(1, f"fastecho: error: cannot daemonize: {e.strerror or e}")
        os._exit(1)
    return Readiness(write_fd)


class PidFileError(ServeError):
    """Another live instance holds the pid file, or it cannot be written."""


class PidFile:
    """A locked pid file: `with PidFile(path):` for the server's life."""

    ATTEMPTS = 5  # to lock a file that is not being replaced under us

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    def _holder(self, fd: int) -> str:
        try:
            text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
        except OSError:
            text = ""
        return f"pid {text}" if text.isdigit() else "another process"

    def acquire(self) -> None:
        for _ in range(self.ATTEMPTS):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as e:
                raise PidFileError(f"cannot open pid file {self.path}: {e.strerror or e}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = self._holder(fd)
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise PidFileError(f"already running: {holder} holds the pid file {self.path}") from None
                raise PidFileError(f"cannot lock pid file {self.path}: {e.strerror or e}") from None
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:  # the previous owner removed it between our open and lock
                os.close(fd)
                continue
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            except OSError as e:
                os.close(fd)
                raise PidFileError(f"cannot write pid file {self.path}: {e.strerror or e}") from None
            self._fd = fd
            return
        raise PidFileError(f"cannot lock pid file {self.path}: it keeps being replaced")

    def check_removable(self, user: str) -> None:
        """After --user dropped root: warn now if the file cannot be removed at exit."""
        directory = os.path.dirname(os.path.abspath(self.path))
        if not self._removable(directory):
            log.warning("user %s cannot remove the pid file %s at exit (that needs write access "
                        "to %s); it will be emptied instead", user, self.path, directory)

    def _removable(self, directory: str) -> bool:
        if self._fd is None or not os.access(directory, os.W_OK | os.X_OK):
            return False
        try:
            st = os.stat(directory)
        except OSError:
            return False
        # In a sticky directory (/tmp) only the owner of the file or of the directory may remove it.
        return not st.st_mode & stat.S_ISVTX or os.geteuid() in (st.st_uid, os.fstat(self._fd).st_uid)

    def release(self) -> None:
        """Remove the file (while still holding the lock), then unlock.

        If it cannot be removed (--user left the server without write access
        to its directory), empty it: a file that names no pid is safer than one
        naming a pid the system may give to another process.
        """
        if self._fd is None:
            return
        failure = None
        try:
            if os.path.samestat(os.fstat(self._fd), os.stat(self.path)):
                os.unlink(self.path)
            # else: replaced by someone else, no longer ours to remove
        except FileNotFoundError:
            pass  # already gone
        except OSError as e:
            failure = e.strerror or str(e)
        if failure is not None:
            try:
                os.ftruncate(self._fd, 0)  # the fd was opened for writing before --user
                log.warning("cannot remove the pid file %s (%s); emptied it instead", self.path, failure)
            except OSError as e:
                log.warning("cannot remove or empty the pid file %s (%s)", self.path, e.strerror or e)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> PidFile:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
