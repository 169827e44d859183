"""Logging in the original server's line format: [LEVEL][unix-seconds][pid: N] message."""
from __future__ import annotations

import logging
import sys

NORMAL = logging.INFO
FATAL = logging.CRITICAL
logging.addLevelName(NORMAL, "NORMAL")
logging.addLevelName(FATAL, "FATAL")

log = logging.getLogger("fastecho")


class OriginalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"[{record.levelname}][{int(record.created)}][pid: {record.process}] {record.getMessage()}"


def setup(level: int = NORMAL, stream=None) -> None:
    """Send fastecho's log lines to stream (stderr by default), once."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(OriginalFormatter())
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False
