"""WebSocket listeners (ws://, wss://, and +proxy): the `websockets` library as a real client
(text, binary, fragmented, ping, close codes, 1 MiB messages, 1000 clients at once, wss with
trustme certificates), raw-socket frames for every protocol violation with its close code, the
HTTP side (the page, 400/403/404/405/426, --max-header, --ws-path, --ws-allow-origin, the
handshake timeout), the close handshake and a drain's 1001, metrics, and fastecho client --ws.

Every socket is closed, every server stopped and reaped, every wait bounded.
"""
from __future__ import annotations

import asyncio
import base64
import os
import resource
import signal
import socket
import struct
import time

import pytest
import websockets
from websockets.sync.client import connect

from fastecho import _core
from helpers import (assert_one_line_error, listeners, proxy_v1, recv_exactly, run_cli, scrape, start_server,
                     wait_until)
from pki import tls_args

pytestmark = [pytest.mark.skipif(not _core.WS_AVAILABLE, reason="this build has no WebSocket (no libcrypto)"),
              pytest.mark.usefixtures("io_backend")]  # each test runs on epoll and io_uring

WS = "ws://127.0.0.1:0"
METRICS_URL = r"metrics at (http://\S+/metrics)"
KEY = base64.b64encode(b"0123456789abcdef").decode()
UPGRADE = (f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
TEXT, BINARY, CLOSE, PING, PONG, CONTINUATION = 1, 2, 8, 9, 10, 0


def address(server, scheme: str = "ws") -> tuple[str, int]:
    for listener_scheme, host, port in listeners(server):
        if listener_scheme == scheme:
            return host, port
    raise AssertionError(f"no {scheme} listener in {server.listening_line!r}")


def url(server, scheme: str = "ws", path: str = "/") -> str:
    host, port = address(server, scheme)
    return f"{'wss' if scheme.startswith('wss') else 'ws'}://{'localhost' if scheme.startswith('wss') else host}:{port}{path}"


def ws_metrics(server) -> dict[str, float]:
    metrics = scrape(server.wait_for_stderr(METRICS_URL)[1])
    return {name: value for name, value in metrics.items()
            if name.startswith(("fastecho_ws_", "fastecho_closes_total"))}


# ---------------------------------------------------------------- raw frames

def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0, masked: bool = True,
          length_form: int | None = None) -> bytes:
    """A client frame; length_form 126 or 127 forces that length encoding."""
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    n = len(payload)
    mask_bit = 0x80 if masked else 0
    form = length_form or (n if n < 126 else 126 if n < 65536 else 127)
    if form < 126:
        head += bytes([mask_bit | n])
    elif form == 126:
        head += bytes([mask_bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def read_frame(sock: socket.socket) -> tuple[bool, int, bytes]:
    """(fin, opcode, payload) of one server frame, which must be unmasked."""
    b0, b1 = recv_exactly(sock, 2)
    assert not b1 & 0x80, "a server frame must not be masked"
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", recv_exactly(sock, 2))[0]
    elif n == 127:
        n = struct.unpack("!Q", recv_exactly(sock, 8))[0]
    return bool(b0 & 0x80), b0 & 0x0F, recv_exactly(sock, n)


def read_head(sock: socket.socket) -> bytes:
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            break
        head += chunk
    return head


def upgraded(server, *, request: bytes = UPGRADE, prefix: bytes = b"") -> socket.socket:
    sock = socket.create_connection(address(server, "ws+proxy" if prefix else "ws"), timeout=10)
    sock.sendall(prefix + request)
    head = read_head(sock)
    assert head.startswith(b"HTTP/1.1 101 "), head
    return sock


def close_code(payload: bytes) -> int | None:
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None


def expect_close(sock: socket.socket, code: int) -> None:
    """The server's next frame is a close with code, and then it shuts the connection down."""
    fin, opcode, payload = read_frame(sock)
    assert (opcode, close_code(payload)) == (CLOSE, code), (opcode, payload)
    assert sock.recv(1) == b"", "the server should send FIN after its close frame"


def http(server, request: bytes, scheme: str = "ws") -> tuple[int, dict[str, str], bytes]:
    """Send a raw request, read the answer until the server closes: (status, headers, body)."""
    with socket.create_connection(address(server, scheme), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


@pytest.fixture(scope="module")
def ws_server(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("ws"), "--listen", WS, "--listen", "ws+proxy://127.0.0.1:0",
                          "--threads", "2", "--max-message", str(2 << 20), "--metrics-port", "0", port=None)
    yield server
    assert server.stop() == 0
    assert "Traceback" not in server.stderr()


# ---------------------------------------------------------------- the websockets library as client

def test_text_binary_and_fragmented_messages_come_back_whole(ws_server):
    with connect(url(ws_server), compression=None) as ws:
        ws.send("hello, wörld ✓")
        assert ws.recv(timeout=10) == "hello, wörld ✓"
        ws.send(b"\x00\xffbinary")
        assert ws.recv(timeout=10) == b"\x00\xffbinary"
        ws.send(["frag", "mented ", "téxt"])  # three frames, one message
        assert ws.recv(timeout=10) == "fragmented téxt"
        ws.send([b"a" * 1000, b"b" * 70000, b"c"])
        assert ws.recv(timeout=10) == b"a" * 1000 + b"b" * 70000 + b"c"
        ws.send("")
        assert ws.recv(timeout=10) == ""


def test_one_mebibyte_messages_both_types(ws_server):
    payload = os.urandom(1 << 20)
    with connect(url(ws_server), compression=None, max_size=None) as ws:
        for _ in range(3):
            ws.send(payload)
            assert ws.recv(timeout=30) == payload
        text = "é" * (1 << 19)  # 1 MiB of UTF-8
        ws.send(text)
        assert ws.recv(timeout=30) == text


def test_ping_gets_its_pong(ws_server):
    with connect(url(ws_server), compression=None) as ws:
        pong = ws.ping(b"are you there")
        assert pong.wait(10)


@pytest.mark.parametrize("code, reason", [(1000, ""), (1001, "bye"), (4000, "app"), (3999, "")])
def test_the_close_code_is_echoed(ws_server, code, reason):
    with connect(url(ws_server), compression=None) as ws:
        ws.close(code, reason)
        assert ws.protocol.close_rcvd is not None
        assert ws.protocol.close_rcvd.code == code


def test_permessage_deflate_is_declined_and_the_connection_works(ws_server):
    with connect(url(ws_server)) as ws:  # the library offers permessage-deflate by default
        assert ws.protocol.extensions == []
        ws.send("plain")
        assert ws.recv(timeout=10) == "plain"


def test_a_thousand_concurrent_clients(ws_server):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))

    async def one(i: int, ready: asyncio.Barrier) -> bytes:
        async with websockets.connect(url(ws_server), compression=None, open_timeout=30) as ws:
            await ready.wait()  # all 1000 are open at once
            message = f"client {i} ".encode() * (1 + i % 50)
            await ws.send(message)
            return await asyncio.wait_for(ws.recv(), 30) == message

    async def all_of_them() -> list[bool]:
        ready = asyncio.Barrier(1000)
        return await asyncio.wait_for(asyncio.gather(*(one(i, ready) for i in range(1000))), 120)

    try:
        assert all(asyncio.run(all_of_them()))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_wss_with_trustme_certificates(serve, pki):
    server = serve("--listen", "wss://127.0.0.1:0", *tls_args(pki), port=None)
    with connect(url(server, "wss"), ssl=pki.client_context(), compression=None) as ws:
        ws.send("over TLS")
        assert ws.recv(timeout=10) == "over TLS"
        ws.send(os.urandom(300_000))
        assert len(ws.recv(timeout=10)) == 300_000


# ---------------------------------------------------------------- protocol violations, raw

@pytest.mark.parametrize("violation, code", [
    (frame(TEXT, b"not masked", masked=False), 1002),
    (frame(TEXT, b"rsv1", rsv=4), 1002),
    (frame(BINARY, b"rsv3", rsv=1), 1002),
    (frame(3, b"reserved opcode"), 1002),
    (frame(11, b"reserved control opcode"), 1002),
    (frame(PING, b"x" * 126), 1002),
    (frame(PING, b"fragmented ping", fin=False), 1002),
    (frame(CONTINUATION, b"nothing to continue"), 1002),
    (frame(TEXT, b"start", fin=False) + frame(TEXT, b"a new message mid-message"), 1002),
    (frame(TEXT, b"\xff\xfe invalid UTF-8"), 1007),
    (frame(TEXT, b"\xed\xa0\x80 a surrogate"), 1007),
    (frame(TEXT, b"fine so far \xe2\x82", fin=False) + frame(CONTINUATION, b"\x28 broken across fragments"), 1007),
    (frame(TEXT, b"ends mid-character \xe2\x82"), 1007),
    (frame(CLOSE, b"\x03"), 1002),  # a 1-byte close payload
    (frame(CLOSE, struct.pack("!H", 999)), 1002),
    (frame(CLOSE, struct.pack("!H", 1005)), 1002),
    (frame(CLOSE, struct.pack("!H", 2000)), 1002),
    (frame(CLOSE, struct.pack("!H", 1000) + b"\xff"), 1007),
    (frame(BINARY, b"x" * 10, length_form=126), 1002),  # a length not in its shortest form
    (frame(BINARY, b"", length_form=127)[:2] + struct.pack("!Q", 1 << 63) + os.urandom(4), 1002),
    (frame(BINARY, b"", length_form=127)[:2] + struct.pack("!Q", (2 << 20) + 1) + os.urandom(4), 1009),
])
def test_each_protocol_violation_gets_its_close_code(ws_server, violation, code):
    with upgraded(ws_server) as sock:
        sock.sendall(violation)
        expect_close(sock, code)


def test_a_fragmented_message_past_max_message_gets_1009_before_it_is_whole(ws_server):
    with upgraded(ws_server) as sock:
        sock.sendall(frame(BINARY, b"x" * (1 << 20), fin=False))
        sock.sendall(frame(CONTINUATION, b"y" * (1 << 20), fin=False))
        sock.sendall(frame(CONTINUATION, b"z" * 100, fin=False))  # past 2 MiB
        expect_close(sock, 1009)


def test_raw_echo_pong_and_close_handshake(ws_server):
    with upgraded(ws_server) as sock:
        sock.sendall(frame(BINARY, b"one") + frame(PING, b"p") + frame(TEXT, b"two"))
        assert read_frame(sock) == (True, BINARY, b"one")
        assert read_frame(sock) == (True, PONG, b"p")
        assert read_frame(sock) == (True, TEXT, b"two")
        # A ping between fragments is answered at once; the message comes whole after.
        sock.sendall(frame(TEXT, b"frag", fin=False) + frame(PING, b"mid") + frame(CONTINUATION, b"ment"))
        assert read_frame(sock) == (True, PONG, b"mid")
        assert read_frame(sock) == (True, TEXT, b"fragment")
        sock.sendall(frame(CLOSE, struct.pack("!H", 1000) + b"done") + frame(TEXT, b"ignored after close"))
        expect_close(sock, 1000)


def test_frames_pipelined_behind_the_upgrade_request_are_echoed(ws_server):
    with upgraded(ws_server, request=UPGRADE + frame(TEXT, b"early")) as sock:
        assert read_frame(sock) == (True, TEXT, b"early")


def test_ws_over_the_proxy_protocol(ws_server):
    header = proxy_v1(("203.0.113.7", 5555), ("127.0.0.1", 80))
    with upgraded(ws_server, prefix=header) as sock:
        sock.sendall(frame(TEXT, b"via a proxy"))
        assert read_frame(sock) == (True, TEXT, b"via a proxy")


# ---------------------------------------------------------------- the HTTP side

def test_get_slash_gives_the_page_and_head_its_headers(ws_server):
    status, headers, body = http(ws_server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert int(headers["content-length"]) == len(body)
    assert b'id="result"' in body and b"__FE_WS_PATH__" not in body
    assert b"http://" not in body and b"https://" not in body  # no external resources
    status, headers, body = http(ws_server, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0


@pytest.mark.parametrize("request_bytes, status", [
    (b"GET /elsewhere HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 405),
    (b"GARBAGE\r\n\r\n", 400),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64), 400),  # a TLS ClientHello
    (UPGRADE.replace(b"Sec-WebSocket-Key: ", b"X-Nothing: "), 400),
    (UPGRADE.replace(b"Host: 127.0.0.1\r\n", b""), 400),
    (UPGRADE.replace(KEY.encode(), b"c2hvcnQ="), 400),  # not 16 bytes
    (UPGRADE.replace(b"Version: 13", b"Version: 8"), 426),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 400),
])
def test_other_requests_get_their_status_and_a_close(ws_server, request_bytes, status):
    got, headers, body = http(ws_server, request_bytes)
    assert got == status
    assert "close" in [token.strip() for token in headers.get("connection", "").lower().split(",")]
    if status == 426:
        assert headers["sec-websocket-version"] == "13"


def test_ws_path_and_allowed_origins(serve):
    server = serve("--listen", WS, "--ws-path", "/echo", "--ws-allow-origin", "https://good.example",
                   port=None)
    with connect(url(server, path="/echo"), origin="https://good.example", compression=None) as ws:
        ws.send("at the path")
        assert ws.recv(timeout=10) == "at the path"
    with pytest.raises(websockets.InvalidStatus) as refused:
        connect(url(server, path="/echo"), origin="https://evil.example", compression=None)
    assert refused.value.response.status_code == 403
    with pytest.raises(websockets.InvalidStatus) as elsewhere:
        connect(url(server, path="/other"), origin="https://good.example", compression=None)
    assert elsewhere.value.response.status_code == 404
    status, _, page = http(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200 and b'"/echo"' in page  # the page opens its socket at the path


def test_a_request_that_never_arrives_is_closed_and_counted(serve):
    server = serve("--listen", WS, "--ws-handshake-timeout", "0.3", "--metrics-port", "0", port=None)
    with socket.create_connection(address(server), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n")  # and nothing more
        assert sock.recv(100) == b""
    assert wait_until(lambda: ws_metrics(server).get('fastecho_closes_total{reason="ws-handshake-timeout"}') == 1, 10)


# ---------------------------------------------------------------- stop, metrics, client

def test_a_drain_sends_1001_then_fin_and_exits_0(serve):
    server = serve("--listen", WS, "--grace", "5", port=None)
    sock = upgraded(server)
    try:
        sock.sendall(frame(TEXT, b"before the stop"))
        assert read_frame(sock) == (True, TEXT, b"before the stop")
        os.kill(server.pid, signal.SIGTERM)
        fin, opcode, payload = read_frame(sock)
        assert (opcode, close_code(payload)) == (CLOSE, 1001)
        sock.sendall(frame(CLOSE, payload[:2]))  # the client completes the handshake
        assert sock.recv(1) == b""
    finally:
        sock.close()
    assert server.proc.wait(10) == 0


def test_a_drain_in_the_middle_of_a_streamed_frame_finishes_it_then_sends_1001(serve):
    server = serve("--listen", WS, "--grace", "5", port=None)
    sock = upgraded(server)
    try:
        whole = os.urandom(1 << 20)
        sent = frame(BINARY, whole)
        sock.sendall(sent[:100_014])  # the header and 100,000 payload bytes
        head = recv_exactly(sock, 10)  # the echo's header comes at once, with what arrived
        assert head[0] == 0x82 and struct.unpack("!Q", head[2:10])[0] == len(whole)
        got = recv_exactly(sock, 100_000)
        os.kill(server.pid, signal.SIGTERM)
        sock.sendall(sent[100_014:])  # the frame goes on after the stop began
        got += recv_exactly(sock, len(whole) - 100_000)
        assert got == whole
        fin, opcode, payload = read_frame(sock)
        assert (opcode, close_code(payload)) == (CLOSE, 1001)
        sock.sendall(frame(CLOSE, payload[:2]))
        assert sock.recv(1) == b""
    finally:
        sock.close()
    assert server.proc.wait(10) == 0


def test_held_messages_stay_within_the_memory_budget(serve):
    budget, message = 8 << 20, 2 << 20
    server = serve("--listen", WS, "--max-memory", str(budget), "--max-message", str(message),
                   "--threads", "1", "--metrics-port", "0", port=None)
    clients = []
    try:
        for _ in range(12):  # each holds a text message that never ends: 12 x 2 MiB if unbounded
            sock = upgraded(server)
            sock.setblocking(False)
            clients.append([sock, memoryview(frame(TEXT, b"x" * (message - 1000))[:-2000])])  # never whole
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(len(rest) > 0 for _, rest in clients):
            for entry in clients:
                try:
                    entry[1] = entry[1][entry[0].send(entry[1][:65536]):]
                except BlockingIOError:
                    pass
            time.sleep(0.005)
        # Wait until the server has read all it will: what it takes stops changing.
        seen: list[float] = []
        metrics_url = server.wait_for_stderr(METRICS_URL)[1]
        settled = wait_until(lambda: seen.append(scrape(metrics_url)["fastecho_bytes_received_total"])
                             or (len(seen) > 5 and seen[-1] == seen[-6]), 15, interval=0.1)
        assert settled, seen[-3:]
        metrics = scrape(metrics_url)
        held = metrics["fastecho_memory_held_bytes"]
        assert held <= budget + 2 * message, (held, seen[-1])  # the budget, and one read's growth past it
        assert metrics["fastecho_memory_budget_waits_total"] > 0, (held, seen[-1])
        # Someone else is still served: a binary frame is streamed, holding nothing.
        with connect(url(server), compression=None) as ws:
            ws.send(b"still served")
            assert ws.recv(timeout=10) == b"still served"
    finally:
        for sock, _ in clients:
            sock.close()


def test_an_idle_connection_gets_close_1001_then_fin(serve):
    server = serve("--listen", WS, "--idle-timeout", "0.5", "--metrics-port", "0", port=None)
    with upgraded(server) as sock:
        sock.sendall(frame(TEXT, b"then silence"))
        assert read_frame(sock) == (True, TEXT, b"then silence")
        fin, opcode, payload = read_frame(sock)  # within the idle timeout and a tick
        assert (opcode, close_code(payload), payload[2:]) == (CLOSE, 1001, b"idle timeout")
        assert sock.recv(1) == b""
    assert wait_until(lambda: ws_metrics(server).get('fastecho_closes_total{reason="idle"}') == 1, 10)


def test_metrics_count_answers_messages_and_closes(serve):
    server = serve("--listen", WS, "--metrics-port", "0", port=None)
    with connect(url(server), compression=None) as ws:
        for i in range(5):
            ws.send(f"m{i}")
            ws.recv(timeout=10)
        ws.ping().wait(10)
    http(server, b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
    with upgraded(server) as sock:
        sock.sendall(frame(TEXT, b"\xff"))
        expect_close(sock, 1007)

    def settled() -> bool:
        m = ws_metrics(server)
        return (m.get("fastecho_ws_messages_total") == 5 and m.get("fastecho_ws_pings_total") == 1
                and m.get('fastecho_ws_http_responses_total{status="101"}') == 2
                and m.get('fastecho_ws_http_responses_total{status="404"}') == 1
                and m.get('fastecho_ws_closes_total{code="1000"}') == 1
                and m.get('fastecho_ws_closes_total{code="1007"}') == 1
                and m.get('fastecho_closes_total{reason="ws-close"}') == 1
                and m.get('fastecho_closes_total{reason="ws-protocol"}') == 1
                and m.get('fastecho_closes_total{reason="http"}') == 1)
    assert wait_until(settled, 10), ws_metrics(server)


def test_client_ws_sends_each_line_as_a_message(ws_server):
    result = run_cli("client", "--ws", url(ws_server), input=b"first line\nsecond, \xc3\xa9\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "first line\nsecond, é\n".encode()


def test_client_ws_refused_upgrade_is_one_line(ws_server):
    result = run_cli("client", "--ws", url(ws_server).replace("ws://", "wss://"), input=b"x\n")
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize("args, fragment", [
    (("--listen", WS, "--suffix", " x"), "does not apply"),
    (("--listen", WS, "--ws-path", "no-slash"), "must start with '/'"),
    (("--listen", WS, "--ws-path", "/a b"), "printable ASCII"),
    (("--listen", WS, "--ws-allow-origin", "example.com"), "is not an origin"),
    (("--listen", "wss://127.0.0.1:0"), "needs a certificate"),
    (("--listen", WS, "--max-header", "10"), "max_header"),
])
def test_ws_option_errors_are_one_line(args, fragment):
    result = run_cli("serve", *args)
    assert_one_line_error(result, 2, fragment)
