"""The server's settings: one frozen value, validated once, whatever its source.

Every option is defined once, in OPTIONS: its name, type, default, limits and
help. The command line (cli.py), the environment (FASTECHO_<NAME>) and a TOML
file (--config) all go through the same parsing and checks here, and a bad
value always gives one line that names the key and where it came from:

    threads = 0 (from FASTECHO_THREADS): must be between 1 and 4096

Precedence is command line > environment > config file > defaults.
"""
from __future__ import annotations

import decimal
import difflib
import ipaddress
import os
import pwd
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from fastecho._core import LOOPBACK, WS_AVAILABLE, _defaults
from fastecho.addresses import format_address
from fastecho.errors import ConfigError
from fastecho.iobackend import CHOICES as IO_BACKEND_CHOICES
from fastecho.listeners import (SCHEMES, STREAM_SCHEMES, Listener, ListenerError, check_distinct, speaks_tls,
                                speaks_ws)
from fastecho.listeners import parse_url as parse_listener_url
from fastecho.userfiles import UserFileError, read_small_file

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

KIB = 1024
MIB = 1024 * KIB

# The C core's own defaults (fe_config_init): one source, not written twice.
ENGINE: dict[str, int] = _defaults()
# PROXY headers are trusted from the engine's default: loopback.
TRUSTED_PROXIES: tuple[Network, ...] = tuple(ipaddress.ip_network(n) for n in LOOPBACK)

MAX_CONFIG_FILE = 1 * MIB  # a config file is a few hundred bytes; more is a mistake (or /dev/zero)
SHOWN_MAX = 200  # characters of a bad value an error line repeats

ENV_PREFIX = "FASTECHO_"
CONFIG_ENV = ENV_PREFIX + "CONFIG"  # the config file, when --config is not given

LOG_LEVELS = ("debug", "normal", "warning", "error", "fatal")
_LEVEL_ALIASES = {"info": "normal", "warn": "warning", "critical": "fatal"}
LOG_TIME_FORMATS = ("unix", "iso")
SWITCHES = ("on", "off")
# The engine's own default, as --splice spells it.
SPLICE_DEFAULT = "on" if ENGINE["splice"] else "off"

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
    # Strings: control characters (NUL, ESC, DEL...) are refused unless the value
    # is only ever handled with its length (never as a C string, path or name).
    controls_ok: bool = False
    # Floats: the engine's step (seconds); values round up to it so that a tiny
    # positive value never becomes 0, which the engine reads as "off" or "at once".
    resolution: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


def _check_host(value: str) -> str:
    if not value:
        raise Invalid("must be a non-empty host name or address")
    # getaddrinfo() encodes a name with the idna codec, which raises (a traceback
    # at bind time) for a label over 63 characters or an empty one ("a..b").
    try:
        value.encode("idna")
    except UnicodeError:
        raise Invalid("must be a host name or address "
                      "(dot-separated labels of 1 to 63 characters)") from None
    return value


def _check_text(value: str, *, controls_ok: bool = False, bytes_ok: bool = False) -> None:
    """What every string option holds: UTF-8 text, and no control characters unless allowed.

    Text from argv or the environment that is not UTF-8 arrives with its bytes
    as surrogate escapes; a TOML file cannot hold those, so --print-config could
    not write the value back. NUL would be cut off by the C side (a host name
    "127.0.0.1\\0x" would quietly listen on 127.0.0.1) or make os calls raise.
    """
    for char in value:
        code = ord(char)
        if 0xD800 <= code <= 0xDFFF and not bytes_ok:
            shown = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"U+{code:04X}"
            raise Invalid(f"must be UTF-8 text ({shown} is not)")
        if not controls_ok and (code < 0x20 or 0x7F <= code <= 0x9F):
            raise Invalid(f"must not contain a control character (U+{code:04X})")


def _absolute(path: str) -> str:
    """os.path.abspath(path), or Invalid where a relative path has no directory to start from."""
    try:
        return os.path.abspath(path)
    except OSError:  # getcwd() fails once the directory the command runs in is removed
        raise Invalid("is relative, and the current directory no longer exists") from None


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
        if value.isascii() and value.isdigit():  # "²" is a digit to isdigit(), not to int()
            pwd.getpwuid(int(value))
        else:
            pwd.getpwnam(value)
    except (KeyError, ValueError, OverflowError):  # ValueError, OverflowError: a uid too long or large
        raise Invalid("no such user") from None
    return value


def _parse_network(text: str) -> Network:
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as e:
        raise Invalid(_clip(f"{text.strip()!r} is not a CIDR network ({e})")) from None


def _parse_listener(text: str) -> Listener:
    _check_text(text)
    try:
        listener = parse_listener_url(text)
        _check_host(listener.host)
    except ListenerError as e:
        raise Invalid(_clip(str(e))) from None
    return listener


# What a WebSocket path may hold: the page carries it inside a JavaScript
# string as it is, and it is matched byte for byte (no query, no fragment).
WS_PATH_FORBIDDEN = set('?#"\'\\<>')


def _check_ws_path(value: str) -> str:
    if not value.startswith("/"):
        raise Invalid("must start with '/'")
    if len(value) > 1024:
        raise Invalid("must be at most 1024 characters")
    bad = next((ch for ch in value if not ("!" <= ch <= "~") or ch in WS_PATH_FORBIDDEN), None)
    if bad is not None:
        raise Invalid(f"must be printable ASCII without spaces or any of ? # \" ' \\ < > (not {bad!r})")
    return value


def _parse_origin(text: str) -> str:
    """An Origin header value as browsers send it: SCHEME://HOST[:PORT], or "null"."""
    origin = text.strip()
    if origin == "null":
        return origin
    if len(origin) > 1024 or not origin.isascii() or not origin.isprintable() or " " in origin:
        raise Invalid(_clip(f"{origin!r} is not an origin (printable ASCII, at most 1024 characters)"))
    scheme, sep, rest = origin.partition("://")
    if not sep or not scheme or not rest or any(ch in rest for ch in "/?#@"):
        raise Invalid(_clip(f"{origin!r} is not an origin (SCHEME://HOST[:PORT], e.g. https://example.com)"))
    return origin


def _check_listeners(value: tuple[Listener, ...]) -> tuple[Listener, ...]:
    try:
        check_distinct(value)
    except ListenerError as e:
        raise Invalid(str(e)) from None
    return value


@dataclass(frozen=True)
class ListKind:
    """An option that holds a list: how one item is parsed, and its type once parsed."""

    parse: Callable[[str], Any]
    item_type: type | tuple[type, ...]
    what: str  # the items, in words
    example: str


# Options of these kinds repeat on the command line, split on "," in the
# environment, and are arrays (or a single string) in TOML.
LIST_KINDS: dict[str, ListKind] = {
    "networks": ListKind(_parse_network, (ipaddress.IPv4Network, ipaddress.IPv6Network),
                         "CIDR strings", '["10.0.0.0/8"]'),
    "listeners": ListKind(_parse_listener, Listener, "listener URLs", '["tcp://127.0.0.1:7000"]'),
    "origins": ListKind(_parse_origin, str, "origins", '["https://example.com"]'),
}


OPTIONS: tuple[Option, ...] = (
    Option("host", "str", "127.0.0.1", check=_check_host, metavar="HOST",
           help="Address to listen on. Loopback by default; use 0.0.0.0 or :: to serve other hosts."),
    Option("port", "int", 7000, low=0, high=65535, metavar="PORT",
           help="TCP port; 0 picks a free one."),
    Option("listen", "listeners", (), metavar="URL", check=_check_listeners,
           help="Listen on URL, SCHEME://HOST:PORT; repeat for more. Schemes: "
                + ", ".join(SCHEMES) + ". Replaces --host/--port "
                "(which are the shorthand for one tcp listener)."),
    Option("threads", "int", None, low=1, high=4096, metavar="N",
           help="Worker threads (default: one per usable CPU). Connections are not capped by this."),
    Option("backlog", "int", 1024, low=1, high=65535, metavar="N", help="listen() backlog."),
    Option("io_backend", "choice", "epoll", choices=IO_BACKEND_CHOICES, metavar="BACKEND",
           help="How workers move bytes: epoll (readiness), io_uring (completions, where the "
                "kernel allows it), or auto: io_uring when the kernel allows it, else epoll (with "
                "one log line). Both serve every listener and splice bulk. See docs/benchmarks.md "
                "for which costs less where."),
    Option("reuse_port", "bool", False,
           help="Let other processes of the same user listen on the same addresses (SO_REUSEPORT), "
                "for restarts that refuse nothing: start the new server with --reuse-port beside "
                "the old one (started with it too), then SIGTERM the old one. See docs/operations.md."),
    Option("grace", "float", 10.0, low=0.0, high=24 * 3600.0, resolution="0.001", metavar="SECONDS",
           help="Seconds open connections may finish after SIGTERM/SIGINT "
                "(rounded up to whole milliseconds)."),
    Option("max_pending_output", "int", ENGINE["max_pending_output"], low=4 * KIB, high=1024 * MIB, metavar="BYTES",
           help="Per-connection cap (bytes) on unsent output; above it the client is not read."),
    Option("max_memory", "int", None, low=1 * MIB, high=2**62, metavar="BYTES",
           help="Budget (bytes) for all connections' buffered output and partial lines together; "
                "a connection that would pass it is not read until memory frees "
                "(default: a quarter of RAM or of the container's memory limit; "
                "in line mode at least 4 x --max-line)."),
    Option("splice", "choice", SPLICE_DEFAULT, choices=SWITCHES, metavar="on|off",
           help="Echo bulk transfers on plain TCP listeners through a pipe with splice(2), so their "
                "bytes never enter user space: a connection switches after a read that fills the "
                "read buffer, and back to copying once its reads are small again. Each such "
                "connection holds two more fds and a pipe of up to --max-pending-output "
                "(at most 1 MiB), counted against --max-memory. off: always copy."),
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
    Option("fd_scheme", "choice", "tcp", choices=STREAM_SCHEMES, metavar="SCHEME",
           help="What the inherited socket (--fd, socket activation) speaks: "
                + ", ".join(STREAM_SCHEMES) + "."),
    Option("user", "str", None, optional=True, check=_check_user, metavar="NAME",
           help="Drop root privileges to this user after binding."),
    # Metrics
    Option("metrics_port", "int", None, optional=True, low=0, high=65535, metavar="PORT",
           help="Serve Prometheus metrics at http://METRICS_HOST:PORT/metrics (0 picks a free port)."),
    Option("metrics_host", "str", "127.0.0.1", check=_check_host, metavar="HOST",
           help="Address for the metrics endpoint."),
    # Line mode
    Option("suffix", "str", None, optional=True, check=_check_suffix, controls_ok=True, metavar="TEXT",
           help='Line mode: reply to each line with TEXT inserted before its newline '
                '(--suffix " server[echo]" answers like the original server). '
                'TEXT is UTF-8, at most 4096 bytes, without a newline; other control '
                'characters, NUL included, are sent as they are.'),
    Option("max_line", "int", ENGINE["max_line"], low=1, high=64 * MIB, metavar="BYTES",
           help="Line mode: a longer line gets an error line and the connection closes."),
    # Limits
    Option("max_connections", "int", 0, low=0, high=10_000_000, metavar="N",
           help="Refuse connections beyond N open ones (0: no limit)."),
    Option("max_connections_per_ip", "int", 0, low=0, high=10_000_000, metavar="N",
           help="Refuse a peer address's connections beyond N open ones (0: no limit)."),
    Option("idle_timeout", "float", 0.0, low=0.0, high=24 * 3600.0, resolution="0.001",
           metavar="SECONDS",
           help="Close a connection idle this long (0: never; others round up to whole "
                "milliseconds, so 0.0004 is 0.001, not never)."),
    Option("allow", "networks", (), metavar="CIDR",
           help="Accept only peers in this network; repeat for more (default: everyone)."),
    # PROXY protocol
    Option("proxy_from", "networks", TRUSTED_PROXIES, metavar="CIDR",
           help="On +proxy listeners, trust PROXY headers only from peers in this network; "
                "repeat for more (default: loopback). Other peers are closed and counted."),
    Option("proxy_timeout", "float", ENGINE["proxy_timeout"], low=0.001, high=3600.0, resolution="0.001",
           metavar="SECONDS",
           help="On +proxy listeners, close a connection whose PROXY header is not complete "
                "in this long."),
    # TLS
    Option("tls_cert", "path", None, optional=True, metavar="PEM",
           help="For tls listeners: the certificate, PEM, leaf first then its chain. "
                "SIGHUP reads it (and the key) again."),
    Option("tls_key", "path", None, optional=True, metavar="PEM",
           help="The certificate's private key, PEM, unencrypted (default: in --tls-cert's file)."),
    Option("tls_client_ca", "path", None, optional=True, metavar="PEM",
           help="Mutual TLS: clients must present a certificate issued by a CA in this PEM file."),
    Option("tls_min_version", "choice", "1.2", choices=("1.2", "1.3"), metavar="VERSION",
           help="Oldest TLS version served: 1.2 (with Mozilla's intermediate ciphers) or 1.3."),
    Option("tls_handshake_timeout", "float", ENGINE["tls_handshake_timeout"], low=0.001, high=3600.0, resolution="0.001",
           metavar="SECONDS",
           help="Close a TLS connection whose handshake has not finished in this long."),
    # UDP
    Option("udp_allow_low_ports", "bool", False,
           help="On udp listeners, echo datagrams from source ports below 1024 too (dropped by "
                "default: two echo services aimed at each other loop for ever)."),
    Option("udp_rate", "int", 0, low=0, high=1_000_000_000, metavar="N",
           help="On udp listeners, answer at most N datagrams per second per source address "
                "(0: no limit); the rest are dropped and counted."),
    Option("udp_max_datagram", "int", ENGINE["udp_max_datagram"], low=1, high=65535, metavar="BYTES",
           help="On udp listeners, the largest datagram echoed; a larger one is dropped and "
                "counted, never echoed short (each worker holds 32 buffers of this size)."),
    # WebSocket
    Option("ws_path", "str", None, optional=True, check=_check_ws_path, metavar="PATH",
           help="On ws/wss listeners, accept the WebSocket upgrade only at this path (default: "
                "any path); the test page stays at /."),
    Option("ws_allow_origin", "origins", (), metavar="ORIGIN",
           help="On ws/wss listeners, accept only browsers from this origin (e.g. "
                "https://example.com); repeat for more (default: any)."),
    Option("max_message", "int", ENGINE["ws_max_message"], low=1, high=1 << 40, metavar="BYTES",
           help="On ws/wss listeners, the largest message (fragments together); a larger one "
                "gets close 1009."),
    Option("max_header", "int", ENGINE["ws_max_header"], low=256, high=1 * MIB, metavar="BYTES",
           help="On ws/wss listeners, the largest HTTP request head; a larger one gets 400."),
    Option("ws_handshake_timeout", "float", ENGINE["ws_handshake_timeout"], low=0.001, high=3600.0,
           resolution="0.001", metavar="SECONDS",
           help="On ws/wss listeners, close a connection whose HTTP request has not all arrived "
                "in this long (after the TLS handshake, for wss)."),
)

OPTION_BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}


def option_name(key: str) -> str:
    """The command-line spelling of a config key: max_pending_output -> --max-pending-output."""
    return "--" + key.replace("_", "-")


# ---------------------------------------------------------------- values

def _clip(shown: str) -> str:
    """A shown value cut to SHOWN_MAX characters: an error line stays short, whatever the input."""
    return shown if len(shown) <= SHOWN_MAX else shown[:SHOWN_MAX] + "..."


def _display(text: str) -> str:
    """Text as is, or quoted and escaped where a terminal would act on (or not show) a character."""
    return text if text.isprintable() else _toml_string(text)


def _shown(value: Any, text: bool) -> str:
    """A value as the user wrote it: command-line and environment text as is, others as TOML.

    Either way an error stays one printable line (see _display, _clip).
    """
    if text and isinstance(value, str):
        return _clip(_display(value))
    try:
        return _clip(toml_value(value))
    except TypeError:
        return _clip(repr(value))


def format_error(key: str, value: Any, source: str | None, problem: str, *, text: bool = False) -> str:
    where = f" (from {source})" if source else ""
    return f"{key} = {_shown(value, text)}{where}: {problem}"


def _number_range(opt: Option, value: float | decimal.Decimal) -> None:
    if opt.low is None or opt.high is None:
        return
    low_limit, high_limit = opt.low, opt.high
    if isinstance(value, decimal.Decimal):  # limits as written (0.001), not as binary floats
        low_limit, high_limit = decimal.Decimal(repr(low_limit)), decimal.Decimal(repr(high_limit))
    if not low_limit <= value <= high_limit:
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
        # Decimal, not float: "1e-400" must not underflow to 0 (which means "off")
        # before _validate rounds it up.
        try:
            return decimal.Decimal(text.strip())
        except decimal.InvalidOperation:
            raise Invalid("must be a number") from None
    if kind == "bool":
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise Invalid("must be true or false (1/0, yes/no, on/off)")
    if kind in LIST_KINDS:
        if kind == "listeners" and not text.strip():
            raise Invalid("must be a listener URL, e.g. tcp://127.0.0.1:7000")
        return tuple(LIST_KINDS[kind].parse(part) for part in text.split(",") if part.strip())
    return text  # str, path, choice


def _from_toml(opt: Option, value: Any) -> Any:
    """Check a TOML value's type (no string-to-number guessing).

    read_config_file parses TOML floats as Decimal; in-process callers may pass floats.
    """
    kind = opt.kind
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid("must be an integer")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float, decimal.Decimal)):
            raise Invalid("must be a number")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise Invalid("must be true or false")
        return value
    if kind in LIST_KINDS:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            items = LIST_KINDS[kind]
            raise Invalid(f"must be a list of {items.what}, e.g. {items.example}")
        return tuple(LIST_KINDS[kind].parse(v) for v in value)
    if not isinstance(value, str):
        raise Invalid("must be a string")
    return value


def _float_value(opt: Option, value: int | float | decimal.Decimal) -> float:
    """A float option's value: in range, rounded up to opt.resolution, never -0.0."""
    # The shortest repr is the decimal the user wrote (0.07, not 0.0700000000000000067).
    exact = decimal.Decimal(repr(value) if isinstance(value, float) else value)
    if exact.is_nan():
        raise Invalid("must be a number")
    if opt.resolution is None or not 0 <= exact <= decimal.Decimal(repr(opt.high)):
        _number_range(opt, exact)
    else:  # rounded before the range check: 1e-400 is 0.001 where 0.001 is the least

        with decimal.localcontext() as ctx:
            ctx.prec = 60  # ample for the ranges in OPTIONS; quantize never fails
            exact = exact.quantize(decimal.Decimal(opt.resolution), rounding=decimal.ROUND_CEILING)
        _number_range(opt, exact)  # 86400.0004 rounds to 86400.001, past the limit
    return float(exact) + 0.0  # + 0.0 turns -0.0 into 0.0


def _validate(opt: Option, value: Any) -> Any:
    """Limits and checks shared by every source; returns the normalized value."""
    if value is None:
        if opt.optional or opt.name in COMPUTED_DEFAULTS:
            return value
        raise Invalid("must be set")
    kind = opt.kind
    if kind in ("int", "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float, decimal.Decimal)):
            raise Invalid("must be a number")
        if kind == "int":
            if not isinstance(value, int):
                raise Invalid("must be an integer")
            _number_range(opt, value)
        else:
            value = _float_value(opt, value)
    elif kind == "choice":
        lowered = _LEVEL_ALIASES.get(str(value).lower(), str(value).lower())
        if lowered not in opt.choices:
            raise Invalid("must be one of " + ", ".join(opt.choices))
        value = lowered
    elif kind == "bool":
        if not isinstance(value, bool):
            raise Invalid("must be true or false")
    elif kind in LIST_KINDS:
        items = LIST_KINDS[kind]
        if isinstance(value, str):
            value = (value,)  # one item, as TOML and EchoServer(listen="...") may give it
        value = tuple(v if isinstance(v, items.item_type) else items.parse(str(v)) for v in value)
    elif not isinstance(value, str):
        raise Invalid("must be a string")
    elif kind == "path":
        if not value:
            raise Invalid("must be a non-empty path")
        _check_text(value, controls_ok=opt.controls_ok)
        value = _absolute(value)
    else:
        _check_text(value, controls_ok=opt.controls_ok)
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
    listen: tuple[Listener, ...] = ()
    threads: int = field(default_factory=default_threads)
    backlog: int = 1024
    io_backend: str = "epoll"  # the default: io_uring is newer, and the machines' kernels vary
    reuse_port: bool = False  # SO_REUSEPORT: another fastecho may serve the same addresses
    grace: float = 10.0  # seconds open connections may finish after a stop signal
    max_pending_output: int = ENGINE["max_pending_output"]  # per-connection unsent bytes before reading pauses
    max_memory: int = field(default_factory=default_max_memory)  # all connections' buffers
    splice: str = SPLICE_DEFAULT  # "on": bulk echo through pipes (splice(2)); "off": always copy
    log_level: str = "normal"
    log_dir: str | None = None
    log_time: str = "unix"
    access_log: bool = False
    access_log_ring: int = 4096
    daemon: bool = False
    workdir: str = "/"
    pidfile: str | None = None
    fd: int | None = None
    fd_scheme: str = "tcp"
    user: str | None = None
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    suffix: str | None = None
    max_line: int = ENGINE["max_line"]
    max_connections: int = 0
    max_connections_per_ip: int = 0
    idle_timeout: float = 0.0
    allow: tuple[Network, ...] = ()
    proxy_from: tuple[Network, ...] = TRUSTED_PROXIES
    proxy_timeout: float = ENGINE["proxy_timeout"]
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    tls_min_version: str = "1.2"
    tls_handshake_timeout: float = ENGINE["tls_handshake_timeout"]
    udp_allow_low_ports: bool = False
    udp_rate: int = 0
    udp_max_datagram: int = ENGINE["udp_max_datagram"]
    ws_path: str | None = None
    ws_allow_origin: tuple[str, ...] = ()
    max_message: int = ENGINE["ws_max_message"]
    max_header: int = ENGINE["ws_max_header"]
    ws_handshake_timeout: float = ENGINE["ws_handshake_timeout"]

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

        if self.listen and (self.host, self.port) != (OPTION_BY_NAME["host"].default,
                                                      OPTION_BY_NAME["port"].default):
            raise ConfigError(f"--listen cannot be combined with --host/--port; add "
                              f"tcp://{format_address(self.host, self.port)} to --listen instead")
        if self.suffix is not None and self.max_memory // 4 < self.max_line:
            raise ConfigError(f"--max-memory {self.max_memory} must be at least 4 x --max-line "
                              f"({4 * self.max_line}) in line mode: a line is held whole until its "
                              f"newline, then copied out whole")
        if self.listen and self.fd is not None:
            raise ConfigError("--listen cannot be combined with --fd (an inherited socket)")
        if self.tls_cert is None and self.serves_tls():
            tls = [l.url for l in self.listeners() if l.tls]
            what = tls[0] if tls else f"--fd-scheme {self.fd_scheme}"
            raise ConfigError(f"{what} needs a certificate: give --tls-cert (and --tls-key)")
        if self.serves_ws():
            ws = [l.url for l in self.listeners() if l.ws]
            what = ws[0] if ws else f"--fd-scheme {self.fd_scheme}"
            if not WS_AVAILABLE:
                raise ConfigError(f"{what}: this fastecho was built without WebSocket (it needs "
                                  f"OpenSSL's libcrypto at build time); reinstall it with OpenSSL's "
                                  f"headers present")
            if self.suffix is not None:
                raise ConfigError(f"--suffix (line mode) does not apply to {what}: WebSocket "
                                  f"messages come back whole")
            if self.max_memory // 4 < self.max_message:
                raise ConfigError(f"--max-memory {self.max_memory} must be at least 4 x --max-message "
                                  f"({4 * self.max_message}) with {what}: a text or fragmented "
                                  f"message is held whole until its last byte, then echoed whole")
        if self.tls_cert is None:
            for name in ("tls_key", "tls_client_ca"):
                if getattr(self, name) is not None:
                    raise ConfigError(f"{option_name(name)} needs --tls-cert")

    def listeners(self) -> tuple[Listener, ...]:
        """Where to listen: --listen, or the one tcp listener --host/--port stand for."""
        return self.listen or (Listener("tcp", self.host, self.port),)

    def serves_tls(self) -> bool:
        """Whether a listener (or an inherited socket, by --fd-scheme) speaks TLS."""
        return any(l.tls for l in self.listeners()) or speaks_tls(self.fd_scheme)

    def serves_ws(self) -> bool:
        """Whether a listener (or an inherited socket, by --fd-scheme) speaks WebSocket."""
        return any(l.ws for l in self.listeners()) or speaks_ws(self.fd_scheme)

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
    """The TOML file's keys, type-checked; ConfigError for a bad file, bad TOML or key.

    Floats are read as Decimal, so that a tiny value is rounded up rather than
    underflowing to 0 (see _float_value).
    """
    # The name is shown in every error about the file: quoted if it holds what a
    # terminal would act on. Such a name (NUL included) is refused outright.
    shown = _display(path) if path else '""'
    if not path:
        raise ConfigError(f"config file {shown} (from {source}): must be a non-empty file name")
    try:
        _check_text(path, bytes_ok=True)  # a non-UTF-8 name is fine: it is never printed as TOML
        shown = _display(_absolute(path))
    except Invalid as e:
        raise ConfigError(f"config file {shown} (from {source}): {e}") from None
    try:
        data = read_small_file(path, MAX_CONFIG_FILE)
    except UserFileError as e:
        raise ConfigError(f"config file {shown} (from {source}): {e}") from None
    try:
        document = tomllib.loads(data.decode("utf-8"), parse_float=decimal.Decimal)
    except UnicodeDecodeError:
        raise ConfigError(f"config file {shown}: invalid TOML: not UTF-8") from None
    except RecursionError:
        raise ConfigError(f"config file {shown}: invalid TOML: nested too deeply") from None
    except tomllib.TOMLDecodeError as e:
        message = _clip(" ".join(str(e).split()))
        raise ConfigError(f"config file {shown}: invalid TOML: {message}") from None
    except ValueError as e:  # int()'s limit: "Exceeds the limit (4300 digits) ...; use sys.set_..."
        message = _clip(" ".join(str(e).split(";")[0].split()))
        raise ConfigError(f"config file {shown}: invalid TOML: {message}") from None
    values: dict[str, Any] = {}
    for key, raw in document.items():
        if key not in OPTION_BY_NAME:
            hint = difflib.get_close_matches(key, OPTION_BY_NAME, n=1)
            did_you_mean = f" (did you mean {hint[0]}?)" if hint else ""
            raise ConfigError(f"unknown key {_clip(repr(key))} (from {shown}){did_you_mean}")
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
        elif opt.kind in LIST_KINDS:
            items: list[Any] = []
            for item in raw:
                items.extend(parse_value(name, item, opt.flag, text=True))
            values[name] = tuple(items)
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

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f",
            "\r": "\\r"}


def _toml_string(text: str) -> str:
    """A TOML basic string: printable characters as they are, every other one escaped.

    TOML forbids raw control characters (DEL included) and has no escape for a
    surrogate. Validated values hold none; an error message may show one, so a
    surrogate-escaped byte is shown as \\xff (which is for reading, not TOML).
    """
    out = ['"']
    for char in text:
        code = ord(char)
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif char.isprintable():
            out.append(char)
        elif 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def toml_value(value: Any) -> str:
    """A TOML literal for the values a config holds (and for showing rejected ones)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, decimal.Decimal):  # a TOML float as read_config_file parses it
        if value.is_finite():
            return str(value)
        return "nan" if value.is_nan() else "-inf" if value.is_signed() else "inf"
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network, Listener)):
        return _toml_string(str(value))
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

