"""Logging in the original server's line format: [LEVEL][unix-seconds][pid: N] message.

The original's levels map onto Python's: DEBUG, NORMAL (= INFO), WARNING,
ERROR and FATAL (= CRITICAL). Without a log directory, lines go to stderr.
With one, they go to two files, as the original's did: fastecho.log gets
DEBUG..WARNING and fastecho.error.log gets ERROR and FATAL. reopen() closes
and reopens both (the server calls it after SIGHUP, for logrotate). With
--user, the server gives both files (open_files()) to the user before it
drops root, so that the user can open them again.
"""
from __future__ import annotations

import logging
import os
import sys
from datetime import datetime
from typing import TextIO

from fastecho.errors import ServeError

NORMAL = logging.INFO
FATAL = logging.CRITICAL
logging.addLevelName(NORMAL, "NORMAL")
logging.addLevelName(FATAL, "FATAL")

LEVELS = {
    "debug": logging.DEBUG,
    "normal": NORMAL,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "fatal": FATAL,
}

LOG_FILE = "fastecho.log"
ERROR_LOG_FILE = "fastecho.error.log"

log = logging.getLogger("fastecho")
access_log = logging.getLogger("fastecho.access")


class OriginalFormatter(logging.Formatter):
    """[LEVEL][time][pid: N] message, with time in unix seconds or ISO-8601."""

    def __init__(self, time_format: str = "unix") -> None:
        super().__init__()
        self.time_format = time_format

    def stamp(self, created: float) -> str:
        if self.time_format == "iso":
            return datetime.fromtimestamp(created).astimezone().isoformat(timespec="milliseconds")
        return str(int(created))

    def format(self, record: logging.LogRecord) -> str:
        stamp = self.stamp(record.created)
        line = f"[{record.levelname}][{stamp}][pid: {record.process}] {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class _BelowError(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR


class ReopenableFileHandler(logging.FileHandler):
    """A FileHandler whose file can be closed and opened again by name (logrotate)."""

    def reopen(self) -> None:
        """Open the file by name again; if that fails, keep writing to the old one (OSError)."""
        with self.lock:  # type: ignore[union-attr]
            fresh = self._open()
            old, self.stream = self.stream, fresh
            if old is not None:
                try:
                    old.flush()
                finally:
                    old.close()


def _file_handler(path: str) -> ReopenableFileHandler:
    try:
        return ReopenableFileHandler(path, encoding="utf-8")
    except OSError as e:
        raise ServeError(f"cannot open log file {path}: {e.strerror or e}") from None


def setup(level: str | int = "normal", log_dir: str | None = None, time_format: str = "unix",
          stream: TextIO | None = None) -> None:
    """Send fastecho's log lines to log_dir's two files, or to stream (stderr by default)."""
    formatter = OriginalFormatter(time_format)
    handlers: list[logging.Handler] = []
    if log_dir is not None:
        try:
            os.makedirs(log_dir, exist_ok=True)
        except OSError as e:
            raise ServeError(f"cannot create log directory {log_dir}: {e.strerror or e}") from None
        normal = _file_handler(os.path.join(log_dir, LOG_FILE))
        normal.addFilter(_BelowError())
        errors = _file_handler(os.path.join(log_dir, ERROR_LOG_FILE))
        errors.setLevel(logging.ERROR)
        handlers = [normal, errors]
    else:
        handlers = [logging.StreamHandler(stream or sys.stderr)]
    for handler in log.handlers:
        handler.close()
    for handler in handlers:
        handler.setFormatter(formatter)
    log.handlers[:] = handlers
    log.setLevel(LEVELS[level] if isinstance(level, str) else level)
    log.propagate = False


def logs_to_files() -> bool:
    return any(isinstance(h, logging.FileHandler) for h in log.handlers)


def open_files() -> list[tuple[str, int]]:
    """(path, fd) of each log file open now: what --user is given, to reopen them after SIGHUP."""
    return [(h.baseFilename, h.stream.fileno()) for h in log.handlers
            if isinstance(h, ReopenableFileHandler) and h.stream is not None]


def reopen() -> None:
    """Close and reopen the log files, so that a rotated file is let go. No-op for stderr."""
    failed = []
    for handler in log.handlers:
        if isinstance(handler, ReopenableFileHandler):
            try:
                handler.reopen()
            except OSError as e:
                failed.append(f"{handler.baseFilename}: {e.strerror or e}")
    if failed:
        log.error("cannot reopen log file %s", "; ".join(failed))
    elif logs_to_files():
        log.info("reopened the log files")
