"""Fixtures of the pytest-benchmark suite (`pytest bench/`; see README.md).

Each implementation runs as a subprocess pinned to the first CPU while this
process, which drives the C load generator, is pinned to the second, as in
`python -m fastecho.bench`. One server per implementation serves the whole
session and is always stopped at the end.
"""
from __future__ import annotations

import os

import pytest

from fastecho.bench.servers import SERVERS, running_server

IMPLEMENTATIONS = ["fastecho", "python", "asyncio"]
BASELINE_THREADS = 32  # the seed design's pool; the workloads stay within it


def _split_cpus() -> tuple[set[int] | None, set[int] | None]:
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return None, None  # one CPU: nothing to separate
    return {available[0]}, {available[1]}


SERVER_CPUS, CLIENT_CPUS = _split_cpus()


@pytest.fixture(scope="session", autouse=True)
def pin_load_generator():
    if CLIENT_CPUS is None:
        yield
        return
    own = os.sched_getaffinity(0)
    os.sched_setaffinity(0, CLIENT_CPUS)
    yield
    os.sched_setaffinity(0, own)


@pytest.fixture(scope="session", params=IMPLEMENTATIONS)
def echo_server(request):
    spec = SERVERS[request.param]
    reason = spec.unavailable_reason()
    if reason:
        pytest.fail(f"{request.param}: {reason}")
    with running_server(spec, threads=len(SERVER_CPUS or os.sched_getaffinity(0)),
                        baseline_threads=BASELINE_THREADS, cpus=SERVER_CPUS) as server:
        yield server
