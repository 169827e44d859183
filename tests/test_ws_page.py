"""The built-in WebSocket page (src/fastecho/csrc/fe_ws_page.html) in a real
browser, against a stand-in server: the `websockets` library serving the
page on a plain GET and echoing every message, over ws and over wss.

This checks the page and the browser harness (tests/browser.py) on their
own, independent of fastecho's ws listener (tests/test_ws_browser.py runs
the same page from fastecho itself). A stand-in that corrupts one echo
shows that the page's checks catch it. Skipped without chromium or
websockets, or without the source tree (an installed-wheel run elsewhere).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from browser import chromium_missing, evaluate_until, page_result

websockets = pytest.importorskip("websockets", reason="the stand-in server needs the websockets library")
from websockets.asyncio.server import serve  # noqa: E402
from websockets.datastructures import Headers  # noqa: E402
from websockets.http11 import Response  # noqa: E402

PAGE_SOURCE = Path(__file__).resolve().parents[1] / "src" / "fastecho" / "csrc" / "fe_ws_page.html"
MARKER = b"__FE_WS_PATH__"
TIMEOUT = 60.0

pytestmark = [
    pytest.mark.skipif(chromium_missing() is not None, reason=chromium_missing() or ""),
    pytest.mark.skipif(not PAGE_SOURCE.exists(), reason=f"{PAGE_SOURCE} is not here (not a source checkout)"),
]

# What the page shows once its live loop has ended: its state, the verdict,
# then messages/s, p50, p99 and the count.
LIVE_EXPRESSION = """(() => {
  const live = document.getElementById("live");
  if (live.dataset.state !== "done" && live.dataset.state !== "failed") return null;
  return [live.dataset.state, document.getElementById("result").textContent,
          ...["rate", "p50", "p99", "count"].map((id) => document.getElementById(id).textContent)];
})()"""


def page_bytes(path: str = "/") -> bytes:
    """The page as a server sends it: the marker replaced by the upgrade
    path, escaped for a JSON string (as fastecho does)."""
    return PAGE_SOURCE.read_bytes().replace(MARKER, json.dumps(path)[1:-1].encode())


@contextlib.contextmanager
def stand_in(tls: ssl.SSLContext | None = None, corrupt_size: int | None = None) -> Iterator[int]:
    """A websockets server on a thread: the page for a plain GET, an echo
    for a WebSocket. With corrupt_size, the echo of the message of that many
    bytes comes back with its last byte flipped. Yields the port; stopped
    and joined on the way out."""
    page = page_bytes()
    ready: list[int] = []
    started = threading.Event()
    loop = asyncio.new_event_loop()
    stop = loop.create_future()

    def process_request(connection, request):
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return None
        return Response(200, "OK", Headers([("Content-Type", "text/html; charset=utf-8"),
                                            ("Content-Length", str(len(page))), ("Connection", "close")]), page)

    async def echo(connection) -> None:
        async for message in connection:
            if corrupt_size is not None and isinstance(message, bytes) and len(message) == corrupt_size:
                message = message[:-1] + bytes([message[-1] ^ 0x01])
            await connection.send(message)

    async def main() -> None:
        async with serve(echo, "127.0.0.1", 0, process_request=process_request, ssl=tls, compression=None,
                         max_size=None, ping_interval=None) as server:
            ready.append(server.sockets[0].getsockname()[1])
            started.set()
            await stop

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    try:
        assert started.wait(10), "the stand-in server did not start"
        yield ready[0]
    finally:
        loop.call_soon_threadsafe(lambda: stop.done() or stop.set_result(None))
        thread.join(10)
        loop.close()


@pytest.fixture(scope="module")
def tls_context(tmp_path_factory) -> ssl.SSLContext:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return context


def test_the_page_passes_its_checks_over_ws():
    with stand_in() as port:
        assert page_result(f"http://127.0.0.1:{port}/?checks-only", TIMEOUT) == "PASS 9 messages checked"


def test_the_page_passes_its_checks_over_wss(tls_context):
    with stand_in(tls_context) as port:
        result = page_result(f"https://127.0.0.1:{port}/?checks-only", TIMEOUT, ignore_certificate_errors=True)
    assert result == "PASS 9 messages checked"


def test_the_live_loop_shows_rate_and_latency_quantiles():
    with stand_in() as port:
        state, verdict, rate, p50, p99, count = evaluate_until(f"http://127.0.0.1:{port}/?duration=1",
                                                               LIVE_EXPRESSION, lambda v: v is not None, TIMEOUT)
    assert (state, verdict) == ("done", "PASS 9 messages checked")
    assert int(count.replace(",", "")) > 0 and int(rate.replace(",", "")) > 0
    assert p50.endswith(("µs", "ms")) and p99.endswith(("µs", "ms"))


@pytest.mark.parametrize("size, name", [(125, "125 B binary"), (1048576, "1 MiB binary")])
def test_a_corrupted_echo_fails_the_page_naming_message_and_byte(size, name):
    with stand_in(corrupt_size=size) as port:
        result = page_result(f"http://127.0.0.1:{port}/?checks-only", TIMEOUT)
    assert result.startswith(f"FAIL {name}: byte {size - 1} is "), result
