"""The `fastecho` command. Parses arguments into a frozen config and runs it.

Errors a user can cause print one line, `fastecho: error: ...`, and exit 2
(usage or configuration) or 1 (runtime failure); never a traceback.
Ctrl-C before the server has installed its signal handlers exits 130, quietly.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys

import click
from click.core import ParameterSource

from fastecho import EXIT_INTERRUPTED, __version__, _interrupted_while_loading
from fastecho.config import CONFIG_ENV, LIST_KINDS, OPTIONS, Option, ServeConfig, resolve, to_toml
from fastecho.errors import ConfigError, FastechoError

# click < 8.2 prints the help itself for a bare `fastecho`; newer ones raise this.
_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())

EXIT_RUNTIME = 1
EXIT_USAGE = 2


def _error(message: str) -> None:
    click.echo(f"fastecho: error: {message}", err=True)


def _failure(e: BaseException) -> tuple[int, str] | None:
    """Exit code and message for an error the user or the system caused; None for a bug.

    OSError and MemoryError are here because start-up opens fds, sockets and
    threads, any of which the system can refuse; the server names the step
    that failed where it can (ServeError), and this is the last resort.
    """
    if isinstance(e, ConfigError):
        return EXIT_USAGE, str(e)
    if isinstance(e, FastechoError):
        return EXIT_RUNTIME, str(e)
    if isinstance(e, MemoryError):
        return EXIT_RUNTIME, "out of memory"
    if isinstance(e, OSError):
        where = f" ({e.filename})" if e.filename else ""
        return EXIT_RUNTIME, f"{e.strerror or e}{where}"
    return None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="fastecho",
                      message="%(prog)s %(version)s")
def cli() -> None:
    """fastecho: a fast TCP echo server (RFC 862) with its hot path in C."""


def _help(opt: Option) -> str:
    if opt.default is None or opt.default == () or opt.kind == "bool":
        return opt.help
    return f"{opt.help}  [default: {opt.default}]"


def _serve_options(command):
    """One click option per config option: parsed and checked by config.py, not by click."""
    for opt in reversed(OPTIONS):
        if opt.kind == "bool":
            decl = f"{opt.flag}/--no-{opt.flag[2:]}"
            option = click.option(decl, opt.name, default=opt.default, help=_help(opt))
        else:
            option = click.option(opt.flag, opt.name, metavar=opt.metavar, default=None,
                                  multiple=opt.kind in LIST_KINDS, help=_help(opt))
        command = option(command)
    return command


@cli.command()
@click.option("--config", "config_file", metavar="FILE",
              help=f"TOML file of settings (keys as the long options, with _); else ${CONFIG_ENV}. "
                   "A regular file of at most 1 MiB. "
                   "Precedence: command line > FASTECHO_<OPTION> > file > defaults.")
@click.option("--print-config", is_flag=True, help="Print the effective settings as TOML and exit.")
@_serve_options
@click.pass_context
def serve(ctx: click.Context, config_file: str | None, print_config: bool, **values) -> int:
    """Serve until SIGTERM or SIGINT (a second SIGINT stops at once)."""
    given = {name: value for name, value in values.items()
             if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE}
    config = resolve(given, os.environ, config_file)
    if print_config:
        # TOML is UTF-8 whatever the locale says (with LANG=...ISO-8859-1, text
        # output would write a file --config cannot read, or fail on a character).
        click.echo(to_toml(config).encode("utf-8"), nl=False)
        return 0
    return _run_server(config)


def _run_server(config: ServeConfig) -> int:
    """Serve config; 130 for a Ctrl-C before the server installed its signal handlers."""
    try:
        _start_and_serve(config)
    except KeyboardInterrupt:
        # Nothing was served yet (after the handlers are installed, SIGINT is a
        # graceful stop instead): leave quietly, as an interrupted command does.
        return EXIT_INTERRUPTED
    return 0


def _start_and_serve(config: ServeConfig) -> None:
    """Logging, inherited socket, daemon, pid file, then the server: in that order."""
    from fastecho import logs, systemd
    from fastecho.daemon import PidFile, Readiness, daemonize
    from fastecho.server import Server, check_can_switch_user

    logs.setup(config.log_level, config.log_dir, config.log_time)
    readiness: Readiness | None = None
    try:
        check_can_switch_user(config.user)
        listener = systemd.inherited_listener(config.fd)  # before fork: LISTEN_PID is ours
        if config.daemon:
            if _SIGINT.interrupted():  # dropped by Python, see _StartupSigint
                raise KeyboardInterrupt
            readiness = daemonize(config.workdir)  # only the daemon returns
        with PidFile(config.pidfile) if config.pidfile else contextlib.nullcontext() as pidfile:
            Server(config, listener=listener, pidfile=pidfile, interrupted=_SIGINT.interrupted,
                   on_ready=readiness.ready if readiness else None).run()
    except KeyboardInterrupt:
        if readiness is not None:  # the daemon was sent SIGINT: the waiting command says so
            readiness.failed(EXIT_INTERRUPTED, "fastecho: error: interrupted before listening")
        raise
    except BaseException as e:
        failure = _failure(e)
        if failure is None:  # a bug: keep its traceback
            if logs.logs_to_files():
                logs.log.critical("unexpected error", exc_info=True)
            if readiness is not None:
                readiness.failed(EXIT_RUNTIME, f"fastecho: error: unexpected error: {e!r}")
            raise
        code, message = failure
        if logs.logs_to_files():
            logs.log.critical("%s", message)
        if readiness is not None:  # the waiting command prints the same line main() would
            readiness.failed(code, f"fastecho: error: {message}")
        raise


def _tls_options(applies_to: str):
    """--ca, --insecure, --cert and --key (client.TlsOptions), for a command that speaks TLS
    where applies_to says."""
    def add(command):
        for option in reversed((
            click.option("--ca", metavar="PEM", help=f"{applies_to}: trust this CA file instead of the system's."),
            click.option("--insecure", is_flag=True,
                         help=f"{applies_to}: check neither the certificate nor the name."),
            click.option("--cert", metavar="PEM",
                         help=f"{applies_to}: present this client certificate (mutual TLS)."),
            click.option("--key", metavar="PEM",
                         help=f"{applies_to}: the client certificate's key (default: in --cert)."),
        )):
            command = option(command)
        return command
    return add


def _check_tls_options(ca: str | None, insecure: bool, cert: str | None, key: str | None) -> None:
    if ca and insecure:
        raise click.UsageError("--ca and --insecure contradict each other")
    if key and not cert:
        raise click.UsageError("--key needs --cert")


@cli.command()
@click.argument("host", required=False)
@click.argument("port", type=click.IntRange(1, 65535), required=False)
@click.option("--timeout", type=click.FloatRange(0.1, 3600.0), default=10.0, show_default=True,
              help="Seconds to wait to connect, and for each reply.")
@click.option("--udp", is_flag=True, help="Send each line as a UDP datagram (to a udp:// listener).")
@click.option("--retries", type=click.IntRange(0, 100), default=2, show_default=True,
              help="--udp: ask again this many times when a reply does not come.")
@click.option("--tls", is_flag=True, help="Speak TLS (to a tls:// listener).")
@click.option("--ws", "ws_url", metavar="URL",
              help="Send each line as a WebSocket text message to URL (ws://HOST:PORT/ or wss://...), "
                   "instead of HOST PORT.")
@_tls_options("--tls")
def client(host: str | None, port: int | None, timeout: float, udp: bool, retries: int, tls: bool,
           ws_url: str | None, ca: str | None, insecure: bool, cert: str | None, key: str | None) -> int:
    """Send each line of stdin to HOST PORT (or --ws URL) and print each reply (exit 0 at EOF)."""
    from fastecho.client import TlsOptions, run, run_udp

    if ws_url is not None:
        if host is not None:
            raise click.UsageError("--ws URL takes the place of HOST PORT")
        if udp or tls:
            raise click.UsageError(f"--ws and {'--udp' if udp else '--tls'} contradict each other "
                                   f"(a wss:// URL speaks TLS)")
    elif host is None or port is None:
        raise click.UsageError("give HOST and PORT (or --ws URL)")
    if udp and tls:
        raise click.UsageError("--udp and --tls contradict each other")
    if udp:
        return run_udp(host, port, timeout, retries)

    given = [flag for flag, value in (("--ca", ca), ("--insecure", insecure), ("--cert", cert),
                                      ("--key", key)) if value]
    if given and not tls and ws_url is None:
        raise click.UsageError(f"{given[0]} needs --tls")
    _check_tls_options(ca, insecure, cert, key)
    if ws_url is not None:
        from fastecho.client_ws import run_ws

        return run_ws(ws_url, timeout, TlsOptions(ca, insecure, cert, key) if given else None)
    return run(host, port, timeout, tls=TlsOptions(ca, insecure, cert, key) if tls else None)


@cli.command()
@click.argument("url")
@click.option("--timeout", type=click.FloatRange(0, 3600, min_open=True), default=5.0, show_default=True,
              help="Seconds for the whole probe: resolving, connecting, handshakes and the echo.")
@click.option("--size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Random bytes to echo (at most 1 MiB; udp: 65507).")
@_tls_options("tls, wss")
def probe(url: str, timeout: float, size: int, ca: str | None, insecure: bool, cert: str | None,
          key: str | None) -> int:
    """Health probe: echo random bytes once through URL, print the round trip.

    URL is tcp://, udp:// or tls://HOST:PORT, or ws:// or wss://HOST[:PORT][/PATH].
    Prints `ok URL N bytes echoed in R ms (T ms in all)` and exits 0, or one
    error line with the reason and exits 1 (2 for a bad URL or option).
    """
    from fastecho.probe import probe as run_probe  # lazily: health checks run this every few seconds

    _check_tls_options(ca, insecure, cert, key)
    click.echo(run_probe(url, timeout, size, ca=ca, insecure=insecure, cert=cert, key=key))
    return 0


@cli.command(context_settings={"ignore_unknown_options": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(args: tuple[str, ...]) -> int:
    """Benchmark fastecho against other servers (same as python -m fastecho.bench)."""
    from fastecho.bench.cli import main as bench_main

    return bench_main(list(args))


class _StartupSigint:
    """The SIGINT handler while the command runs, until the server installs its own.

    It raises KeyboardInterrupt, which every path turns into exit 130, and
    notes the signal: Python drops an exception raised in a weakref callback
    or __del__ (it only prints it), and a handler can run inside one
    (importlib's module locks have weakref callbacks), so a Ctrl-C during an
    import could be lost and the server would start anyway. The unraisable
    hook keeps such a drop quiet, and the start-up raises it again where it
    can propagate: before detaching, and once the server has installed its
    handlers (Server's interrupted=).
    """

    def __init__(self) -> None:
        self.seen = False

    def __call__(self, signum, frame) -> None:
        self.seen = True
        raise KeyboardInterrupt

    def interrupted(self) -> bool:
        return self.seen

    def unraisable_hook(self, previous):
        def hook(unraisable) -> None:
            if not (self.seen and issubclass(unraisable.exc_type, KeyboardInterrupt)):
                previous(unraisable)
        return hook


_SIGINT = _StartupSigint()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    _SIGINT.seen = False
    if signal.getsignal(signal.SIGINT) in (_interrupted_while_loading, signal.default_int_handler):
        # Loaded (see fastecho/__init__.py): from here on Ctrl-C is a KeyboardInterrupt again.
        signal.signal(signal.SIGINT, _SIGINT)
    previous_hook = sys.unraisablehook
    sys.unraisablehook = _SIGINT.unraisable_hook(previous_hook)
    try:
        return _main(argv)
    finally:
        sys.unraisablehook = previous_hook


def _main(argv: list[str] | None) -> int:
    try:
        result = cli.main(args=argv, prog_name="fastecho", standalone_mode=False)
    except _NO_ARGS_IS_HELP as e:  # type: ignore[misc]
        click.echo(e.ctx.get_help())
        return 0
    except click.UsageError as e:
        _error(e.format_message())
        return EXIT_USAGE
    except click.ClickException as e:
        _error(e.format_message())
        return e.exit_code
    except click.Abort:
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except (FastechoError, OSError, MemoryError) as e:  # ConfigError, ServeError, ClientError, ...
        failure = _failure(e)
        assert failure is not None
        _error(failure[1])
        return failure[0]
    return result if isinstance(result, int) else 0
