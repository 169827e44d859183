"""Benchmark tooling for fastecho.

- ``python -m fastecho.bench`` (also ``fastecho bench``): side-by-side
  comparison of fastecho with a pure-Python baseline, asyncio, uvloop and a
  bare C epoll loop; see :mod:`fastecho.bench.cli`.
- :func:`run_load`: the C load generator (``_loadgen``), usable on its own.

The servers (:mod:`~fastecho.bench.baseline`, :mod:`~fastecho.bench.aioserver`)
run as ``python -m`` subprocesses and import nothing compiled, which is why
``run_load`` is loaded lazily here.
"""
from fastecho.bench.errors import BenchError, LoadError

__all__ = ["BenchError", "LoadError", "run_load"]


def __getattr__(name: str):  # PEP 562: import the extension on first use
    if name == "run_load":
        from fastecho.bench._loadgen import run_load

        return run_load
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
