"""fastecho's built-in WebSocket page in a real browser: `fastecho serve
--listen ws://...` (and wss://) serves the page on a plain GET of /, and the
page, run by headless Chromium (tests/browser.py), connects back to the same
listener, echoes messages of every size and type it checks, and reports
"PASS 9 messages checked" in its #result element.

Skipped until fastecho serves ws listeners ("ws" in
fastecho.listeners.SCHEMES), and where chromium is not installed.
"""
from __future__ import annotations

import pytest

from browser import chromium_missing, evaluate_until, page_result
from fastecho import listeners as fastecho_listeners
from helpers import listeners

TIMEOUT = 60.0
PASS = "PASS 9 messages checked"

pytestmark = [
    pytest.mark.skipif("ws" not in fastecho_listeners.SCHEMES,
                       reason="this fastecho has no ws listener yet ('ws' is not among fastecho.listeners.SCHEMES)"),
    pytest.mark.skipif(chromium_missing() is not None, reason=chromium_missing() or ""),
]


def only_listener(server) -> int:
    (_, _, port), = listeners(server)
    return port


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A server certificate for 127.0.0.1 (the browser is told to accept it)."""
    trustme = pytest.importorskip("trustme")
    directory = tmp_path_factory.mktemp("ws-tls")
    cert = trustme.CA().issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(directory / "server.pem"))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(directory / "server.pem"), append=True)
    cert.private_key_pem.write_to_path(str(directory / "server.key"))
    return directory / "server.pem", directory / "server.key"


def test_the_page_served_by_a_ws_listener_passes_its_checks(serve):
    server = serve("--listen", "ws://127.0.0.1:0", port=None)
    port = only_listener(server)
    assert page_result(f"http://127.0.0.1:{port}/?checks-only", TIMEOUT) == PASS


def test_the_page_served_by_a_wss_listener_passes_its_checks(serve, certificate):
    if "wss" not in fastecho_listeners.SCHEMES:
        pytest.skip("this fastecho has no wss listener yet ('wss' is not among fastecho.listeners.SCHEMES)")
    cert, key = certificate
    server = serve("--listen", "wss://127.0.0.1:0", "--tls-cert", str(cert), "--tls-key", str(key), port=None)
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
