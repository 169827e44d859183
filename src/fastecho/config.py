"""The server's settings: one frozen value, validated once, whatever its source.

Every option is defined once, in OPTIONS: its name, type, default, limits and
help. The command line (cli.py), the environment (FASTECHO_<NAME>) and a TOML
file (--config) all go through the same parsing and checks here, and a bad
value always gives one line that names the key and where it came from:

    threads = 0 (from FASTECHO_THREADS): must be between 1 and 4096

Precedence is command line > environment > config file > defaults.
"""
from __future__ import annotations

import difflib
import ipaddress
import json
import math
import os
import pwd
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from fastecho.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

KIB = 1024
MIB = 1024 * KIB

ENV_PREFIX = "FASTECHO_"
CONFIG_ENV = ENV_PREFIX + "CONFIG"  # the config file, when --config is not given

LOG_LEVELS = ("debug", "normal", "warning", "error", "fatal")
_LEVEL_ALIASES = {"info": "normal", "warn": "warning", "critical": "fatal"}
LOG_TIME_FORMATS = ("unix", "iso")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def default_threads() -> int:
    """One worker per CPU this process may run on (respects taskset/cgroups)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def physical_memory() -> int:
    """Bytes of memory this process may use: RAM, or a smaller cgroup (container) limit."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def default_max_memory() -> int:
    """A quarter of usable memory (at least 16 MiB) for all buffered echo together."""
    return max(16 * MIB, physical_memory() // 4)


# Options whose default is computed for this machine when they are not set.
COMPUTED_DEFAULTS: dict[str, Callable[[], Any]] = {
    "threads": default_threads,
    "max_memory": default_max_memory,
}


class Invalid(ValueError):
    """A value's problem, without the key or source (format_error adds those)."""


@dataclass(frozen=True)
class Option:
    """One setting: how it is spelled, parsed, limited and documented."""

    name: str
    kind: str  # int, float, str, bool, path, choice, networks
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    optional: bool = False  # None (unset) is a valid value
    check: Callable[[Any], Any] | None = None  # extra check; may return a normalized value
    metavar: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


def _check_host(value: str) -> str:
    if not value:
        raise Invalid("must be a non-empty host name or address")
    return value


def _check_suffix(value: str) -> str:
    if "\n" in value:
        raise Invalid("must not contain a newline (it is inserted before each line's newline)")
    if len(value.encode("utf-8", "surrogateescape")) > 4096:
        raise Invalid("must be at most 4096 bytes")
    return value


def _check_user(value: str) -> str:
    if not value:
        raise Invalid("must be a user name")
    try:
        if value.isdigit():
            pwd.getpwuid(int(value))
        else:
            pwd.getpwnam(value)
    except KeyError:
        raise Invalid("no such user") from None
    return value


def _parse_network(text: str) -> Network:
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as e:
        raise Invalid(f"{text.strip()!r} is not a CIDR network ({e})") from None


OPTIONS: tuple[Option, ...] = (
    Option("host", "str", "127.0.0.1", check=_check_host, metavar="HOST",
           help="Address to listen on. Loopback by default; use 0.0.0.0 or :: to serve other hosts."),
    Option("port", "int", 7000, low=0, high=65535, metavar="PORT",
           help="TCP port; 0 picks a free one."),
    Option("threads", "int", None, low=1, high=4096, metavar="N",
           help="Worker threads (default: one per usable CPU). Connections are not capped by this."),
    Option("backlog", "int", 1024, low=1, high=65535, metavar="N", help="listen() backlog."),
    Option("grace", "float", 10.0, low=0.0, high=24 * 3600.0, metavar="SECONDS",
           help="Seconds open connections may finish after SIGTERM/SIGINT."),
    Option("max_pending_output", "int", 1 * MIB, low=4 * KIB, high=1024 * MIB, metavar="BYTES",
           help="Per-connection cap (bytes) on unsent output; above it the client is not read."),
    Option("max_memory", "int", None, low=1 * MIB, high=2**62, metavar="BYTES",
           help="Budget (bytes) for all connections' buffered output and partial lines together; "
                "a connection that would pass it is not read until memory frees "
                "(default: a quarter of RAM or of the container's memory limit)."),
    # Logging
    Option("log_level", "choice", "normal", choices=LOG_LEVELS, metavar="LEVEL",
           help="Lowest level logged: debug, normal, warning, error or fatal."),
    Option("log_dir", "path", None, optional=True, metavar="DIR",
           help="Write fastecho.log (debug..warning) and fastecho.error.log (error, fatal) "
                "in DIR instead of logging to stderr. SIGHUP reopens them."),
    Option("log_time", "choice", "unix", choices=LOG_TIME_FORMATS, metavar="FORMAT",
           help="Time in log lines: unix (seconds) or iso (ISO-8601, local time)."),
    Option("access_log", "bool", False,
           help="Log each connection's open and close (peer, bytes in/out, duration)."),
    Option("access_log_ring", "int", 4096, low=1, high=1 << 24, metavar="EVENTS",
           help="Access events each worker buffers before dropping (and counting) them."),
    # Process
    Option("daemon", "bool", False,
           help="Detach: fork, setsid, stdio to /dev/null, chdir to --workdir. "
                "The command returns once the server is listening."),
    Option("workdir", "path", "/", metavar="DIR", help="Working directory with --daemon."),
    Option("pidfile", "path", None, optional=True, metavar="PATH",
           help="Write the pid here and lock it; a second instance is refused."),
    Option("fd", "int", None, optional=True, low=0, high=2**31 - 1, metavar="N",
           help="Serve the inherited listening socket N instead of binding "
                "(systemd socket activation, LISTEN_FDS, is used automatically)."),
    Option("user", "str", None, optional=True, check=_check_user, metavar="NAME",
           help="Drop root privileges to this user after binding."),
    # Metrics
    Option("metrics_port", "int", None, optional=True, low=0, high=65535, metavar="PORT",
           help="Serve Prometheus metrics at http://METRICS_HOST:PORT/metrics (0 picks a free port)."),
    Option("metrics_host", "str", "127.0.0.1", check=_check_host, metavar="HOST",
           help="Address for the metrics endpoint."),
    # Line mode
    Option("suffix", "str", None, optional=True, check=_check_suffix, metavar="TEXT",
           help='Line mode: reply to each line with TEXT inserted before its newline '
                '(--suffix " server[echo]" answers like the original server).'),
    Option("max_line", "int", 64 * KIB, low=1, high=64 * MIB, metavar="BYTES",
           help="Line mode: a longer line gets an error line and the connection closes."),
    # Limits
    Option("max_connections", "int", 0, low=0, high=10_000_000, metavar="N",
           help="Refuse connections beyond N open ones (0: no limit)."),
    Option("max_connections_per_ip", "int", 0, low=0, high=10_000_000, metavar="N",
           help="Refuse a peer address's connections beyond N open ones (0: no limit)."),
    Option("idle_timeout", "float", 0.0, low=0.0, high=24 * 3600.0, metavar="SECONDS",
           help="Close a connection idle this long (0: never)."),
    Option("allow", "networks", (), metavar="CIDR",
           help="Accept only peers in this network; repeat for more (default: everyone)."),
)

OPTION_BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}


def option_name(key: str) -> str:
    """The command-line spelling of a config key: max_pending_output -> --max-pending-output."""
    return "--" + key.replace("_", "-")


# ---------------------------------------------------------------- values

def _shown(value: Any, text: bool) -> str:
    """A value as the user wrote it: command-line and environment text as is, others as TOML."""
    if text and isinstance(value, str) and value.isprintable():
        return value
    try:
        return toml_value(value)
    except TypeError:
        return repr(value)


def format_error(key: str, value: Any, source: str | None, problem: str, *, text: bool = False) -> str:
    where = f" (from {source})" if source else ""
    return f"{key} = {_shown(value, text)}{where}: {problem}"


def _number_range(opt: Option, value: float) -> None:
    if opt.low is not None and opt.high is not None and not opt.low <= value <= opt.high:
        low, high = opt.low, opt.high
        if opt.kind == "int":
            low, high = int(low), int(high)
        raise Invalid(f"must be between {low:g} and {high:g}" if opt.kind == "float"
                      else f"must be between {low} and {high}")


def _from_text(opt: Option, text: str) -> Any:
    """Parse a command-line or environment string."""
    kind = opt.kind
    if kind == "int":
        try:
            return int(text.strip(), 10)
        except ValueError:
            raise Invalid("must be an integer") from None
    if kind == "float":
        try:
            value = float(text.strip())
        except ValueError:
            raise Invalid("must be a number") from None
        return value
    if kind == "bool":
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise Invalid("must be true or false (1/0, yes/no, on/off)")
    if kind == "networks":
        return tuple(_parse_network(part) for part in text.split(",") if part.strip())
    return text  # str, path, choice


def _from_toml(opt: Option, value: Any) -> Any:
    """Check a TOML value's type (no string-to-number guessing)."""
    kind = opt.kind
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid("must be an integer")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Invalid("must be a number")
        return float(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise Invalid("must be true or false")
        return value
    if kind == "networks":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise Invalid('must be a list of CIDR strings, e.g. ["10.0.0.0/8"]')
        return tuple(_parse_network(v) for v in value)
    if not isinstance(value, str):
        raise Invalid("must be a string")
    return value


def _validate(opt: Option, value: Any) -> Any:
    """Limits and checks shared by every source; returns the normalized value."""
    if value is None:
        if opt.optional or opt.name in COMPUTED_DEFAULTS:
            return value
        raise Invalid("must be set")
    kind = opt.kind
    if kind in ("int", "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Invalid("must be a number")
        if kind == "int" and not isinstance(value, int):
            raise Invalid("must be an integer")
        if kind == "float":
            value = float(value)
            if math.isnan(value):
                raise Invalid("must be a number")
        _number_range(opt, value)
    elif kind == "choice":
        lowered = _LEVEL_ALIASES.get(str(value).lower(), str(value).lower())
        if lowered not in opt.choices:
            raise Invalid("must be one of " + ", ".join(opt.choices))
        value = lowered
    elif kind == "bool":
        if not isinstance(value, bool):
            raise Invalid("must be true or false")
    elif kind == "networks":
        value = tuple(n if isinstance(n, (ipaddress.IPv4Network, ipaddress.IPv6Network))
                      else _parse_network(str(n)) for n in value)
    elif kind == "path":
        if not isinstance(value, str) or not value:
            raise Invalid("must be a non-empty path")
        value = os.path.abspath(value)
    elif not isinstance(value, str):
        raise Invalid("must be a string")
    if opt.check is not None:
        checked = opt.check(value)
        if checked is not None:
            value = checked
    return value


def parse_value(name: str, raw: Any, source: str, *, text: bool) -> Any:
    """Parse and validate one value; ConfigError names the key and source."""
    opt = OPTION_BY_NAME[name]
    try:
        value = _from_text(opt, raw) if text else _from_toml(opt, raw)
        return _validate(opt, value)
    except Invalid as e:
        raise ConfigError(format_error(name, raw, source, str(e), text=text)) from None


# ---------------------------------------------------------------- the config

@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"  # loopback unless the operator says otherwise
    port: int = 7000
    threads: int = field(default_factory=default_threads)
    backlog: int = 1024
    grace: float = 10.0  # seconds open connections may finish after a stop signal
    max_pending_output: int = 1 * MIB  # per-connection unsent bytes before reading pauses
    max_memory: int = field(default_factory=default_max_memory)  # all connections' buffers
    log_level: str = "normal"
    log_dir: str | None = None
    log_time: str = "unix"
    access_log: bool = False
    access_log_ring: int = 4096
    daemon: bool = False
    workdir: str = "/"
    pidfile: str | None = None
    fd: int | None = None
    user: str | None = None
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    suffix: str | None = None
    max_line: int = 64 * KIB
    max_connections: int = 0
    max_connections_per_ip: int = 0
    idle_timeout: float = 0.0
    allow: tuple[Network, ...] = ()

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            opt = OPTION_BY_NAME[f.name]
            if value is None and f.name in COMPUTED_DEFAULTS:
                value = COMPUTED_DEFAULTS[f.name]()
            try:
                value = _validate(opt, value)
            except Invalid as e:
                raise ConfigError(format_error(f.name, value, None, str(e))) from None
            object.__setattr__(self, f.name, value)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _check_table_matches_dataclass() -> None:
    names = [f.name for f in fields(ServeConfig)]
    assert names == [o.name for o in OPTIONS], "OPTIONS and ServeConfig fields differ"
    for o in OPTIONS:
        default = ServeConfig.__dataclass_fields__[o.name].default
        if o.name not in COMPUTED_DEFAULTS:
            assert default == o.default, o.name


_check_table_matches_dataclass()


# ---------------------------------------------------------------- sources

def read_config_file(path: str, source: str) -> dict[str, Any]:
    """The TOML file's keys, type-checked; ConfigError for a missing file, bad TOML or key."""
    shown = os.path.abspath(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {shown} (from {source}): no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {shown} (from {source}): is a directory") from None
    except OSError as e:
        raise ConfigError(f"config file {shown} (from {source}): {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        message = " ".join(str(e).split())
        raise ConfigError(f"config file {shown}: invalid TOML: {message}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {shown}: invalid TOML: not UTF-8") from None
    values: dict[str, Any] = {}
    for key, raw in data.items():
        if key not in OPTION_BY_NAME:
            hint = difflib.get_close_matches(key, OPTION_BY_NAME, n=1)
            did_you_mean = f" (did you mean {hint[0]}?)" if hint else ""
            raise ConfigError(f"unknown key {key!r} (from {shown}){did_you_mean}")
        values[key] = parse_value(key, raw, shown, text=False)
    return values


def read_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    """FASTECHO_<OPTION> variables for known options; an empty one counts as unset.

    Other FASTECHO_* variables are left alone: they may belong to other tools
    (FASTECHO_WHEELS_OUT is the wheel build's, for one).
    """
    values: dict[str, Any] = {}
    for opt in OPTIONS:
        text = environ.get(opt.env)
        if text is None or text == "":
            continue
        values[opt.name] = parse_value(opt.name, text, opt.env, text=True)
    return values


def read_command_line(given: Mapping[str, Any]) -> dict[str, Any]:
    """Values from the command line: strings (parsed here), bools, or tuples of strings."""
    values: dict[str, Any] = {}
    for name, raw in given.items():
        opt = OPTION_BY_NAME[name]
        if opt.kind == "bool":
            values[name] = parse_value(name, raw, opt.flag, text=False)
        elif opt.kind == "networks":
            nets: list[Network] = []
            for item in raw:
                nets.extend(parse_value(name, item, opt.flag, text=True))
            values[name] = tuple(nets)
        else:
            values[name] = parse_value(name, raw, opt.flag, text=True)
    return values


def resolve(command_line: Mapping[str, Any], environ: Mapping[str, str] | None = None,
            config_file: str | None = None) -> ServeConfig:
    """The effective config: command line > environment > config file > defaults.

    config_file is --config's value; without it, FASTECHO_CONFIG names the file.
    """
    environ = os.environ if environ is None else environ
    layers: list[dict[str, Any]] = []
    if config_file is not None:
        layers.append(read_config_file(config_file, "--config"))
    elif environ.get(CONFIG_ENV):
        layers.append(read_config_file(environ[CONFIG_ENV], CONFIG_ENV))
    layers.append(read_environment(environ))
    layers.append(read_command_line(command_line))
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(layer)
    return ServeConfig(**merged)


# ---------------------------------------------------------------- printing

def toml_value(value: Any) -> str:
    """A TOML literal for the values a config holds."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON strings are TOML basic strings
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return json.dumps(str(value))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def to_toml(config: ServeConfig) -> str:
    """The effective config as a TOML file that --config reads back unchanged."""
    lines = ["# fastecho serve: effective configuration (command line > FASTECHO_* > --config > defaults)"]
    for opt in OPTIONS:
        value = getattr(config, opt.name)
        if value is None:
            lines.append(f"# {opt.name} is not set")
        else:
            lines.append(f"{opt.name} = {toml_value(value)}")
    return "\n".join(lines) + "\n"

