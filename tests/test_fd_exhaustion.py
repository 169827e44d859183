"""At the fd limit the server neither spins nor dies, and serves again once fds free up."""
from __future__ import annotations

import time

import pytest

from helpers import echo_roundtrip, fd_starved_server, proc_cpu_seconds, proc_fd_count

pytestmark = pytest.mark.usefixtures("io_backend")  # each test runs on epoll and io_uring


def test_emfile_on_accept_backs_off_and_recovers(serve):
    with fd_starved_server(serve) as (server, clients):
        time.sleep(0.5)  # let the acceptor reach its limit
        # It stops a quarter short of 64 (the reserve it keeps for metrics
        # scrapes and log files), and never passes the limit.
        assert 44 <= proc_fd_count(server.pid) <= 64, "the server never reached its fd limit"
        cpu_before = proc_cpu_seconds(server.pid)
        time.sleep(2.0)
        cpu_used = proc_cpu_seconds(server.pid) - cpu_before
        # A spinning accept loop would burn ~2 s of CPU here; backing off costs ~0.
        assert cpu_used < 0.5, f"server used {cpu_used:.2f}s of CPU in 2s at the fd limit"

        served_early = clients[0]
        assert echo_roundtrip(served_early, b"early") == b"early"

        # Free fds on the server side: close most clients, then the last one,
        # which waited in the backlog, must be served.
        for s in clients[1:100]:
            s.close()
        last = clients[-1]
        assert echo_roundtrip(last, b"late", timeout=10) == b"late"
    assert server.proc.poll() is None
