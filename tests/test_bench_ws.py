"""The benchmark over WebSocket: the load generator's ws mode, the websockets
and picows echo servers (bench/wsserver.py), and
`python -m fastecho.bench --transport ws`.

Real sockets on 127.0.0.1 and real processes, each stopped and reaped. The
faulty servers are small WebSocket servers in threads of this process,
written here from RFC 6455: each answers the upgrade (or botches it) and
then sends back frames built by a `reply` function, so a test can flip a
byte, mask a frame, send a close, split or merge messages. Runs are short
and nothing asserts on timing. Tests that need fastecho's own ws listener
skip until it lands.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import struct
import subprocess
import sys
from collections.abc import Callable

import pytest

from fastecho.bench import LoadError, cli, run_load
from fastecho.bench._loadgen import WS_SUPPORTED
from fastecho.bench.errors import ServerStartError
from fastecho.bench.servers import HOST, SERVERS, running_server
from helpers import read_line
from test_bench_cli import FAST, assert_one_line_usage_error, bench, our_children
from test_bench_loadgen import SHORT, recv_exactly_or_eof, thread_server

pytestmark = pytest.mark.skipif(not WS_SUPPORTED, reason="this load generator was built without OpenSSL")

WS = {"ws": True, **SHORT}
PEERS = ["websockets", "picows", "fastecho"]
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


@pytest.fixture(scope="module", params=PEERS)
def ws_server(request):
    """Each WebSocket peer of the benchmark, started once for the module."""
    reason = SERVERS[request.param].ws_reason()
    if reason:
        pytest.skip(reason)
    with running_server(SERVERS[request.param], threads=1, baseline_threads=1, ws=True) as server:
        yield server


# --- a WebSocket server in a thread, faults included ----------------------------------------------


def frame(payload: bytes, opcode: int = 0x2, fin: bool = True, mask: bytes | None = None, first: int = 0,
          length_bytes: int | None = None) -> bytes:
    """One frame as a server (mask None) or anyone else would send it;
    `first` ORs extra bits (RSV) into the first byte, `length_bytes` forces
    a 2- or 8-byte length."""
    head = bytes([(0x80 if fin else 0) | first | opcode])
    n = len(payload)
    mask_bit = 0x80 if mask else 0
    if length_bytes == 8 or (length_bytes is None and n > 0xFFFF):
        head += bytes([mask_bit | 127]) + struct.pack(">Q", n)
    elif length_bytes == 2 or (length_bytes is None and n >= 126):
        head += bytes([mask_bit | 126]) + struct.pack(">H", n)
    else:
        head += bytes([mask_bit | n])
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        head += mask
    return head + payload


def read_client_frame(conn) -> tuple[int, bytes] | None:
    """(opcode, unmasked payload) of the client's next frame; None at EOF."""
    head = recv_exactly_or_eof(conn, 2)
    if len(head) < 2:
        return None
    assert head[1] & 0x80, "a client frame must be masked"
    n = head[1] & 0x7F
    if n == 126:
        n = struct.unpack(">H", recv_exactly_or_eof(conn, 2))[0]
    elif n == 127:
        n = struct.unpack(">Q", recv_exactly_or_eof(conn, 8))[0]
    mask = recv_exactly_or_eof(conn, 4)
    data = recv_exactly_or_eof(conn, n)
    return head[0] & 0x0F, bytes(b ^ mask[i % 4] for i, b in enumerate(data))


def accept_key(request: bytes) -> bytes:
    key = re.search(rb"(?im)^Sec-WebSocket-Key: *(\S+)", request)[1]
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def ws_handler(reply: Callable[[int, bytes], bytes], answer: Callable[[bytes], bytes] | None = None):
    """A connection handler: read the upgrade request, send answer(request)
    (default: a proper 101), then for message i of payload p send reply(i, p)."""
    def handle(conn) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = conn.recv(4096)
            if not chunk:
                return
            request += chunk
        if answer is not None:
            conn.sendall(answer(request))
        else:
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Accept: " + accept_key(request) + b"\r\n\r\n")
        index = 0
        while (got := read_client_frame(conn)) is not None:
            opcode, payload = got
            assert opcode == 0x2, f"the generator sent opcode {opcode}"
            conn.sendall(reply(index, payload))
            index += 1

    return handle


def faithful(_index: int, payload: bytes) -> bytes:
    return frame(payload)


def on_message(n: int, fault: Callable[[bytes], bytes]) -> Callable[[int, bytes], bytes]:
    """Echo faithfully, but message n's echo is fault(payload)."""
    return lambda index, payload: fault(payload) if index == n else frame(payload)


def run_against(reply, answer=None, conns: int = 1, size: int = 64, depth: int = 1) -> dict:
    with thread_server(ws_handler(reply, answer)) as port:
        return run_load(HOST, port, conns, size, depth, **WS)


# --- the load generator against the real peers ------------------------------------------------


@pytest.mark.parametrize("conns, size, depth", [(1, 1, 1), (4, 125, 1), (2, 126, 4), (2, 1024, 8),
                                                (2, 65535, 2), (1, 65536, 2), (1, 1 << 20, 1)])
def test_every_peer_echoes_verified_messages(ws_server, conns, size, depth):
    result = run_load(HOST, ws_server.port, conns, size, depth, server_pid=ws_server.pid, **WS)
    assert result["messages"] > 0 and result["starved_conns"] == 0
    assert 0 < result["p50_ns"] <= result["p99_ns"] <= result["max_ns"]
    assert result["server_user_us"] + result["server_sys_us"] > 0


def test_max_messages_ends_a_ws_window_early(ws_server):
    result = run_load(HOST, ws_server.port, 2, 64, 4, ws=True, warmup=0, duration=60, max_messages=300)
    assert 300 <= result["messages"] < 300 + 2 * 4
    assert result["elapsed_s"] < 60


def test_wss_is_ws_over_the_tls_mode(tmp_path):
    from fastecho.bench import certs

    if certs.trustme_missing() or SERVERS["websockets"].ws_reason():
        pytest.skip("needs trustme and websockets")
    with certs.temporary_certificate(HOST) as tls:
        argv = [sys.executable, "-m", "fastecho.bench.wsserver", "--library", "websockets", "--port", "0",
                "--tls-cert", str(tls.cert), "--tls-key", str(tls.key)]
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                                   text=True)
        try:
            line = read_line(process, 30)
            assert "(wss)" in line, line
            port = int(re.search(r":(\d+) ", line)[1])
            result = run_load(HOST, port, 2, 1024, 2, tls=True, tls_ca_file=tls.ca, **WS)
        finally:
            process.terminate()
            process.communicate(timeout=10)
    assert result["messages"] > 0 and result["tls"].startswith("TLSv1.3")


# --- faulty servers: every kind of wrong echo fails the run, and says where ------------------


def flip_last(payload: bytes) -> bytes:
    return frame(payload[:-1] + bytes([payload[-1] ^ 0x01]))


def test_a_flipped_payload_byte_names_connection_message_and_offset():
    with pytest.raises(LoadError) as caught:
        run_against(on_message(4, flip_last))
    match = re.fullmatch(r"connection 0: echoed byte 319 of the stream \(message 4, byte 63 of 64\) is "
                         r"0x([0-9a-f]{2}), expected 0x([0-9a-f]{2})", str(caught.value))
    assert match and int(match[1], 16) == int(match[2], 16) ^ 0x01, str(caught.value)


@pytest.mark.parametrize(
    "fault, message",
    [
        (lambda p: frame(p, mask=b"\x01\x02\x03\x04"), r"a frame at byte 264 of the server's stream is masked"),
        (lambda p: frame(b"\x03\xe8bye", opcode=0x8), r"the server sent a close frame \(code 1000, \"bye\"\)"),
        (lambda p: frame(b"", opcode=0x8), r"the server sent a close frame \(no status code\)"),
        (lambda p: frame(p, opcode=0x1), r"a text frame \(opcode 0x1\) at byte 264 of the server's stream"),
        (lambda p: frame(b"hi", opcode=0x9), r"the server sent a ping frame \(opcode 0x9\) at byte 264"),
        (lambda p: frame(p, opcode=0x3), r"a reserved frame \(opcode 0x3\) at byte 264"),
        (lambda p: frame(p, first=0x40), r"a frame at byte 264 of the server's stream sets reserved bits 0x40"),
        (lambda p: frame(p, length_bytes=2), r"gives its length 64 in 2 bytes \(not the shortest form\)"),
        (lambda p: frame(p[:32]) + frame(p[32:]), r"makes a 32-byte message out of 64-byte ones"),
        (lambda p: frame(p + p), r"makes a 128-byte message out of 64-byte ones"),
        (lambda p: frame(p[:32], fin=False) + frame(p[32:], opcode=0x2),
         r"a new binary frame at byte 298 of the server's stream interrupts a fragmented message"),
        (lambda p: frame(p, opcode=0x0), r"a continuation frame at byte 264 of the server's stream continues no"),
        (lambda p: frame(b"x" * 126, opcode=0xA), r"a pong frame at byte 264 of the server's stream is longer than 125"),
    ],
    ids=["masked", "close", "close-empty", "text", "ping", "reserved-opcode", "rsv-bit", "long-length-form",
         "split-messages", "merged-messages", "binary-inside-fragments", "stray-continuation", "long-pong"],
)
def test_a_framing_fault_fails_the_run_with_connection_and_offset(fault, message):
    # Message 4 of 64 bytes: each echo before it is 66 bytes, so its frame starts at byte 264.
    with pytest.raises(LoadError, match=rf"^connection 0: .*{message}"):
        run_against(on_message(4, fault))


@pytest.mark.parametrize(
    "reply",
    [
        lambda i, p: frame(p[:10], fin=False) + frame(p[10:40], opcode=0x0, fin=False) + frame(p[40:], opcode=0x0),
        lambda i, p: frame(b"", opcode=0xA) + frame(b"pong", opcode=0xA) + frame(p),
        lambda i, p: frame(p[:1], fin=False) + frame(b"", opcode=0xA) + frame(p[1:], opcode=0x0),
    ],
    ids=["fragmented", "unsolicited-pongs", "pong-between-fragments"],
)
def test_what_rfc_6455_allows_a_server_passes(reply):
    result = run_against(reply, conns=2, size=64, depth=3)
    assert result["messages"] > 0 and result["starved_conns"] == 0


def test_echoes_split_across_reads_and_coalesced_pass():
    def handle(conn) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            request += conn.recv(4096)
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + accept_key(request) + b"\r\n\r\n")
        pending, count = b"", 0
        while (got := read_client_frame(conn)) is not None:
            pending += frame(got[1])
            count += 1
            if count % 3 == 0:  # three echoes in one send, after one byte of them alone
                conn.sendall(pending[:1])
                conn.sendall(pending[1:])
                pending = b""

    with thread_server(handle) as port:
        result = run_load(HOST, port, 1, 300, 3, **WS)
    assert result["messages"] > 0


@pytest.mark.parametrize(
    "answer, message",
    [
        (lambda r: b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
         r"WebSocket upgrade refused: the server answered the upgrade with \"HTTP/1\.1 404 Not Found\", not 101"),
        (lambda r: b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   b"Sec-WebSocket-Accept: " + base64.b64encode(b"x" * 20) + b"\r\n\r\n",
         r"Sec-WebSocket-Accept is \"eHh4.*\", expected \""),
        (lambda r: b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                   b"Sec-WebSocket-Accept: " + accept_key(r) + b"\r\n\r\n", r"lacks \"Upgrade: websocket\""),
        (lambda r: b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   b"Sec-WebSocket-Extensions: permessage-deflate\r\n"
                   b"Sec-WebSocket-Accept: " + accept_key(r) + b"\r\n\r\n",
         r"the server chose \"Sec-WebSocket-Extensions: permessage-deflate\", which the client did not offer"),
        (lambda r: b"HTTP/1.1 101 Switching", r"the server closed the connection during the WebSocket upgrade"),
    ],
    ids=["404", "wrong-accept", "no-upgrade-header", "unasked-extension", "cut-short"],
)
def test_a_bad_upgrade_response_fails_the_run_before_the_window(answer, message):
    def handle(conn) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            request += conn.recv(4096)
        conn.sendall(answer(request))
        conn.shutdown(2)  # SHUT_RDWR: nothing more comes

    with thread_server(handle) as port, pytest.raises(LoadError, match=rf"^connection \d+: .*{message}"):
        run_load(HOST, port, 1, 64, **WS)


def test_the_upgrade_request_names_host_path_and_a_fresh_key():
    requests: list[bytes] = []

    def remember(request: bytes) -> bytes:
        requests.append(request)
        return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + accept_key(request) + b"\r\n\r\n")

    with thread_server(ws_handler(faithful, remember)) as port:
        run_load(HOST, port, 2, 64, ws=True, ws_path="/echo?x=1", **SHORT)
    assert len(requests) == 2
    for request in requests:
        assert request.startswith(b"GET /echo?x=1 HTTP/1.1\r\n")
        assert f"\r\nHost: {HOST}:{port}\r\n".encode() in request
        assert b"\r\nSec-WebSocket-Version: 13\r\n" in request
    keys = [re.search(rb"Sec-WebSocket-Key: (\S+)", r)[1] for r in requests]
    assert keys[0] != keys[1] and all(len(base64.b64decode(k)) == 16 for k in keys)


def test_every_frame_has_its_own_mask():
    masks: list[bytes] = []

    def handle(conn) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            request += conn.recv(4096)
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + accept_key(request) + b"\r\n\r\n")
        while len(head := recv_exactly_or_eof(conn, 2)) == 2:
            mask = recv_exactly_or_eof(conn, 4)
            masks.append(mask)
            data = recv_exactly_or_eof(conn, head[1] & 0x7F)
            conn.sendall(frame(bytes(b ^ mask[i % 4] for i, b in enumerate(data))))

    with thread_server(handle) as port:
        run_load(HOST, port, 1, 16, max_messages=50, ws=True, warmup=0, duration=5)
    assert len(masks) >= 50 and len(set(masks)) > 45  # 32 random bits each: collisions are rare


# --- arguments ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"udp": True}, "udp and ws exclude each other"),
        ({"handshakes": True}, "ws has no handshake mode"),
        ({"ws": False, "ws_path": "/x"}, "ws_path applies only with ws"),
        ({"ws_path": "echo"}, "ws_path must start with '/'"),
        ({"ws_path": "/a b"}, "ws_path has a space or a control or non-ASCII byte at 2"),
        ({"ws_path": "/" + "a" * 300}, "ws_path is longer than 256 bytes"),
    ],
)
def test_bad_ws_arguments_raise_value_error(overrides, fragment):
    args = {"host": HOST, "port": 9, "conns": 1, "size": 64, "depth": 1, "warmup": 0, "duration": 1,
            "ws": True} | overrides
    with pytest.raises(ValueError, match=re.escape(fragment)):
        run_load(**args)


# --- the servers -------------------------------------------------------------------------------


def test_fastecho_ws_is_offered_exactly_when_its_listeners_serve_ws(monkeypatch):
    from fastecho import listeners

    if "ws" in listeners.SCHEMES:
        assert SERVERS["fastecho"].ws_reason() is None
        monkeypatch.delitem(listeners.SCHEMES, "ws")
        assert "no ws listener yet" in SERVERS["fastecho"].ws_reason()
    else:
        assert SERVERS["fastecho"].ws_reason() == (
            "this fastecho has no ws listener yet ('ws' is not among fastecho.listeners.SCHEMES)")
        monkeypatch.setitem(listeners.SCHEMES, "ws", "WebSocket")
        assert SERVERS["fastecho"].ws_reason() is None
    assert SERVERS["fastecho"].ws_command(2, 32)[-5:] == ["serve", "--listen", "ws://127.0.0.1:0", "--threads", "2"]
    # the baseline: fastecho's plain TCP listener, spoken to in plain TCP
    plain = SERVERS["fastecho-plain"]
    assert "--listen" not in plain.ws_command(1, 1) and not plain.client_ws


def test_ws_only_servers_refuse_tcp_and_tcp_only_servers_refuse_ws():
    with pytest.raises(ServerStartError, match="^websockets serves only WebSocket$"):
        with running_server(SERVERS["websockets"], threads=1, baseline_threads=1):
            pass
    with pytest.raises(ServerStartError, match="^reference has no WebSocket$"):
        with running_server(SERVERS["reference"], threads=1, baseline_threads=1, ws=True):
            pass


def test_a_missing_library_is_a_reason_not_a_crash(monkeypatch):
    monkeypatch.setitem(sys.modules, "picows", None)  # as if not installed
    assert SERVERS["picows"].ws_reason() == "picows is not importable (pip install 'fastecho[ws]')"


def test_wsserver_refuses_a_half_tls_configuration():
    result = subprocess.run([sys.executable, "-m", "fastecho.bench.wsserver", "--library", "websockets",
                             "--tls-cert", "c.pem"], capture_output=True, text=True, timeout=30,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 2 and "--tls-cert and --tls-key go together" in result.stderr


# --- python -m fastecho.bench --transport ws ---------------------------------------------------------


def test_transport_ws_runs_end_to_end_with_the_plain_baseline(tmp_path):
    names = [n for n in ("websockets", "picows") if SERVERS[n].ws_reason() is None]
    if not names:
        pytest.skip("neither websockets nor picows is installed")
    out = tmp_path / "bench.json"
    before = our_children()
    result = subprocess.run([sys.executable, "-m", "fastecho.bench", "--transport", "ws", "--servers",
                             ",".join(names + ["fastecho-plain"]), "--conns", "4", "--sizes", "1024", *FAST,
                             "--json", str(out)],
                            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert "4 conns × 1 KiB, ping-pong · WebSocket" in result.stdout
    assert "fastecho-plain: plain TCP, for comparison" in " ".join(result.stdout.split())  # as wrapped
    document = json.loads(out.read_text())
    assert document["machine"]["transport"] == "ws"
    assert sorted(r["server"] for r in document["runs"]) == sorted(names + ["fastecho-plain"])
    assert all(r["status"] == "ok" and r["msgs_per_s"] > 0 for r in document["runs"])
    assert our_children() <= before


def test_ws_defaults_are_64_connections_of_1_kib():
    plan = cli.build_plan(servers="fastecho-plain", conns=cli.WS_DEFAULTS.conns, sizes=cli.WS_DEFAULTS.sizes,
                          depth=1, duration=1, warmup=0, rounds=1, threads=None, baseline_threads=1,
                          server_cpus=None, client_cpus=None, transport="ws")
    assert [(w.conns, w.size, w.depth) for w in plan.workloads] == [(64, 1024, 1)]
    assert plan.ws and plan.transport_label == "WebSocket"


def test_default_ws_servers_skip_what_cannot_run_here_with_notes(monkeypatch):
    monkeypatch.setitem(sys.modules, "picows", None)
    notes: list[str] = []
    names = cli._servers(None, "ws", notes)
    assert "picows" not in names and "fastecho-plain" in names
    assert any(n.startswith("skipping picows: picows is not importable") for n in notes)
    fastecho_has_ws = SERVERS["fastecho"].ws_reason() is None
    assert ("fastecho" in names) == fastecho_has_ws
    if not fastecho_has_ws:
        assert any(n.startswith("skipping fastecho: this fastecho has no ws listener yet") for n in notes)


@pytest.mark.parametrize(
    "args, prelude, fragments",
    [
        (["--transport", "ws", "--servers", "reference"], "", ["reference has no WebSocket", "picows"]),
        (["--servers", "websockets"], "", ["websockets serves only WebSocket (add --transport ws)"]),
        (["--transport", "ws", "--handshakes"], "", ["--handshakes applies only to TCP and TLS"]),
        (["--transport", "ws", "--tls-version", "1.3"], "", ["--tls-version applies only with --transport tls"]),
        (["--transport", "ws", "--servers", "fastecho"],
         "from fastecho import listeners\nlisteners.SCHEMES.pop('ws', None)",
         ["fastecho is not available with WebSocket: this fastecho has no ws listener yet"]),
    ],
    ids=["tcp-only-server", "ws-only-over-tcp", "handshakes", "tls-version", "fastecho-without-ws"],
)
def test_bad_ws_input_is_one_line_and_exit_2(args, prelude, fragments):
    assert_one_line_usage_error(bench("--conns", "1", "--sizes", "64", *FAST, *args, prelude=prelude), *fragments)
