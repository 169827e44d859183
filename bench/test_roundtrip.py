"""Time a fixed batch of echo round trips per workload and implementation.

Each benchmark round connects, sends until `messages` have been echoed and
verified by the C load generator (GIL released), and disconnects. Results are
grouped by workload, so pytest-benchmark's table compares implementations
side by side.
"""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from fastecho.bench import run_load
from fastecho.bench.harness import format_size
from fastecho.bench.servers import HOST

TIME_CAP_S = 30.0  # a batch that is not done by then is cut short (and fails below)


@dataclass(frozen=True)
class Batch:
    conns: int
    size: int
    messages: int

    @property
    def label(self) -> str:
        return f"{self.conns} conns × {format_size(self.size)}, {self.messages} round trips"

    @property
    def id(self) -> str:
        return f"c{self.conns}-{self.size}B"


BATCHES = [
    Batch(conns=1, size=64, messages=2_000),  # latency-bound ping-pong
    Batch(conns=32, size=1024, messages=20_000),  # the common case; within the baseline's 32 threads
    Batch(conns=8, size=65536, messages=2_000),  # copy-bound
]


@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: b.id)
def test_roundtrips(benchmark, echo_server, batch):
    benchmark.group = batch.label
    result = benchmark.pedantic(
        run_load,
        kwargs={"host": HOST, "port": echo_server.port, "conns": batch.conns, "size": batch.size,
                "warmup": 0.0, "duration": TIME_CAP_S, "max_messages": batch.messages,
                "server_pid": echo_server.pid},
        rounds=5, warmup_rounds=1, iterations=1,
    )
    assert result["messages"] >= batch.messages, "the batch was cut short by the time cap"
    assert result["starved_conns"] == 0
    benchmark.extra_info.update(
        p50_us=result["p50_ns"] / 1000,
        p99_us=result["p99_ns"] / 1000,
        server_cpu_us_per_msg=(result["server_user_us"] + result["server_sys_us"]) / result["messages"],
    )
