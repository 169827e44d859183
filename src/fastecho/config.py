"""The server's settings: one frozen value, validated once, whatever its source."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields

from fastecho.errors import ConfigError

KIB = 1024
MIB = 1024 * KIB


def default_threads() -> int:
    """One worker per CPU this process may run on (respects taskset/cgroups)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


# name -> (lowest, highest) accepted value; the message names the option.
_RANGES = {
    "port": (0, 65535),
    "threads": (1, 4096),
    "backlog": (1, 65535),
    "grace": (0.0, 24 * 3600.0),
    "max_pending_output": (4 * KIB, 1024 * MIB),
}


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"  # loopback unless the operator says otherwise
    port: int = 7000
    threads: int = field(default_factory=default_threads)
    backlog: int = 1024
    grace: float = 10.0  # seconds open connections may finish after a stop signal
    max_pending_output: int = 1 * MIB  # per-connection unsent bytes before reading pauses

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise ConfigError("host must be a non-empty host name or address")
        for f in fields(self):
            if f.name not in _RANGES:
                continue
            value = getattr(self, f.name)
            low, high = _RANGES[f.name]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{option_name(f.name)} must be a number, not {value!r}")
            if not low <= value <= high:
                raise ConfigError(f"{option_name(f.name)} must be between {low} and {high}, not {value}")


def option_name(key: str) -> str:
    """The command-line spelling of a config key: max_pending_output -> --max-pending-output."""
    return "--" + key.replace("_", "-")
