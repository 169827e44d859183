"""The `fastecho` command. Parses arguments into a frozen config and runs it.

Errors a user can cause print one line, `fastecho: error: ...`, and exit 2
(usage or configuration) or 1 (runtime failure); never a traceback.
"""
from __future__ import annotations

import click

from fastecho import __version__
from fastecho.config import ServeConfig, default_threads
from fastecho.errors import ConfigError, ServeError

# click < 8.2 prints the help itself for a bare `fastecho`; newer ones raise this.
_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())

EXIT_RUNTIME = 1
EXIT_USAGE = 2


def _error(message: str) -> None:
    click.echo(f"fastecho: error: {message}", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="fastecho",
                      message="%(prog)s %(version)s")
def cli() -> None:
    """fastecho: a fast TCP echo server (RFC 862) with its hot path in C."""


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Loopback by default; use 0.0.0.0 or :: to serve other hosts.")
@click.option("--port", type=int, default=7000, show_default=True, help="TCP port; 0 picks a free one.")
@click.option("--threads", type=int, default=None,
              help="Worker threads (default: one per usable CPU). Connections are not capped by this.")
@click.option("--backlog", type=int, default=1024, show_default=True, help="listen() backlog.")
@click.option("--grace", type=float, default=10.0, show_default=True,
              help="Seconds open connections may finish after SIGTERM/SIGINT.")
@click.option("--max-pending-output", type=int, default=ServeConfig.max_pending_output,
              show_default=True,
              help="Per-connection cap (bytes) on unsent output; above it the client is not read.")
def serve(host: str, port: int, threads: int | None, backlog: int, grace: float,
          max_pending_output: int) -> None:
    """Serve until SIGTERM or SIGINT (a second SIGINT stops at once)."""
    from fastecho import logs
    from fastecho.server import Server

    config = ServeConfig(host=host, port=port,
                         threads=default_threads() if threads is None else threads,
                         backlog=backlog, grace=grace, max_pending_output=max_pending_output)
    logs.setup()
    Server(config).run()


@cli.command(context_settings={"ignore_unknown_options": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(args: tuple[str, ...]) -> int:
    """Benchmark fastecho against other servers (same as python -m fastecho.bench)."""
    from fastecho.bench.cli import main as bench_main

    return bench_main(list(args))


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
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
        return 130
    except ConfigError as e:
        _error(str(e))
        return EXIT_USAGE
    except ServeError as e:
        _error(str(e))
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        return 130
    return result if isinstance(result, int) else 0
