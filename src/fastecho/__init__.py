"""fastecho: a fast, well-behaved TCP echo server with its hot path in C."""
# The first code of ours that runs when the `fastecho` command starts, so the
# place for its Ctrl-C guard: the imports that follow take tens of
# milliseconds, and a SIGINT during them would end in a KeyboardInterrupt
# traceback from inside one. The guard goes in before anything else (a signal
# is handled at the next Python instruction, so every one before it is a
# window), with _signal and os, which are loaded already: importing signal
# would itself take milliseconds.
import _signal
import os as _os

EXIT_INTERRUPTED = 130  # what a shell reports for a command stopped by SIGINT (128 + 2)


def _interrupted_while_loading(signum, frame):
    # Nothing to clean up yet, so leave at once. Not by raising: Python drops an
    # exception raised where it runs a weakref callback (importlib's module
    # locks have one), and the command would go on to serve.
    _os._exit(EXIT_INTERRUPTED)


if _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler:  # never over a program's own
    _signal.signal(_signal.SIGINT, _interrupted_while_loading)


def _loading_the_command() -> bool:
    """True when this import starts the `fastecho` command, not a program importing a library."""
    import sys

    program = sys.modules.get("__main__")
    if _os.path.basename(getattr(program, "__file__", None) or "") == "fastecho":
        return True  # the console script
    # python -m fastecho: runpy imports this package with argv[0] still "-m".
    return sys.argv[:1] == ["-m"] and any(
        arg in ("fastecho", "-mfastecho") for arg in getattr(sys, "orig_argv", ()))


# A program that imports fastecho as a library gets Python's default back at
# once; the command keeps the guard until fastecho.cli.main() replaces it.
if _signal.getsignal(_signal.SIGINT) is _interrupted_while_loading and not _loading_the_command():
    _signal.signal(_signal.SIGINT, _signal.default_int_handler)

from typing import TYPE_CHECKING  # noqa: E402

from fastecho._version import __version__  # noqa: E402  (after the guard, on purpose)

if TYPE_CHECKING:
    from fastecho.api import EchoServer

__all__ = ["EchoServer", "__version__"]


def __getattr__(name: str):
    # Loaded when first asked for: the command and the pytest plugin pay
    # nothing for the embedding API until it is used.
    if name == "EchoServer":
        from fastecho.api import EchoServer

        return EchoServer
    raise AttributeError(f"module 'fastecho' has no attribute {name!r}")
