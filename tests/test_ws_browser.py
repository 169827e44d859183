"""fastecho's built-in WebSocket page in a real browser: `fastecho serve
--listen ws://...` (and wss://) serves the page on a plain GET of /, and the
page, run by headless Chromium (tests/browser.py), connects back to the same
listener, echoes messages of every size and type it checks, and reports
"PASS 9 messages checked" in its #result element.

Skipped where chromium is not installed (.ci/run installs it).
"""
from __future__ import annotations

import pytest

from browser import chromium_missing, evaluate_until, page_result
from fastecho import _core
from helpers import listeners
from pki import tls_args

TIMEOUT = 60.0
PASS = "PASS 9 messages checked"

pytestmark = [
    pytest.mark.skipif(not _core.WS_AVAILABLE, reason="this build has no WebSocket (no libcrypto)"),
    pytest.mark.skipif(chromium_missing() is not None, reason=chromium_missing() or ""),
]


def only_listener(server) -> int:
    (_, _, port), = listeners(server)
    return port


def test_the_page_served_by_a_ws_listener_passes_its_checks(serve):
    server = serve("--listen", "ws://127.0.0.1:0", port=None)
    port = only_listener(server)
    assert page_result(f"http://127.0.0.1:{port}/?checks-only", TIMEOUT) == PASS


def test_the_page_served_by_a_wss_listener_passes_its_checks(serve, pki):
    server = serve("--listen", "wss://127.0.0.1:0", *tls_args(pki), port=None)
    port = only_listener(server)
    result = page_result(f"https://127.0.0.1:{port}/?checks-only", TIMEOUT, ignore_certificate_errors=True)
    assert result == PASS


def test_the_live_loop_runs_against_fastecho(serve):
    server = serve("--listen", "ws://127.0.0.1:0", port=None)
    port = only_listener(server)
    expression = """(() => {
      const live = document.getElementById("live");
      return live.dataset.state === "done" || live.dataset.state === "failed"
        ? [live.dataset.state, document.getElementById("result").textContent,
           document.getElementById("count").textContent] : null;
    })()"""
    state, verdict, count = evaluate_until(f"http://127.0.0.1:{port}/?duration=1", expression,
                                           lambda v: v is not None, TIMEOUT)
    assert (state, verdict) == ("done", PASS) and int(count.replace(",", "")) > 0
