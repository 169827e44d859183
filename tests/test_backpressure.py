"""A client that sends without reading cannot grow server memory past the cap."""
from __future__ import annotations

import time

import pytest

from helpers import echo_roundtrip, proc_rss_kib, wait_until

pytestmark = pytest.mark.usefixtures("io_backend")  # each test runs on epoll and io_uring

MIB = 1 << 20


@pytest.mark.parametrize("splice", ["on", "off"])
def test_client_sending_64_mib_without_reading_is_throttled_and_others_still_served(serve, splice):
    server = serve("--threads", "2", "--max-pending-output", str(1 * MIB), "--splice", splice)
    baseline_kib = proc_rss_kib(server.pid)
    chunk = b"x" * (256 * 1024)
    total = 64 * MIB
    sent = 0
    with server.connect() as hog:
        hog.setblocking(False)
        # Push until the kernel refuses for a full second: the server has
        # stopped reading, so both sockets' buffers are full.
        stalled_since = None
        deadline = time.monotonic() + 30
        while sent < total and time.monotonic() < deadline:
            try:
                sent += hog.send(chunk[: total - sent])
                stalled_since = None
            except BlockingIOError:
                stalled_since = stalled_since or time.monotonic()
                if time.monotonic() - stalled_since > 1.0:
                    break
                time.sleep(0.01)
        assert sent < total, "the server kept reading from a client that never reads"

        growth_kib = proc_rss_kib(server.pid) - baseline_kib
        # Cap (1 MiB) + one read buffer per worker, with room for allocator slack.
        assert growth_kib < 8 * 1024, f"server RSS grew by {growth_kib} KiB"

        with server.connect() as other:
            assert echo_roundtrip(other, b"still here?") == b"still here?"

        # Draining the hog's echo lets the server read again: nothing is lost.
        hog.setblocking(True)
        hog.settimeout(10)
        received = 0
        while received < sent:
            data = hog.recv(MIB)
            assert data, f"EOF after {received} of {sent} bytes"
            assert data == b"x" * len(data)
            received += len(data)
        assert received == sent
    assert wait_until(lambda: proc_rss_kib(server.pid) - baseline_kib < 8 * 1024, timeout=5)
