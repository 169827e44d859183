"""TLS listeners (tls://, tls+proxy://) with real certificates from trustme: byte-exact echo,
TLS 1.2 and 1.3, mutual TLS, the handshake timeout, plaintext and garbage on a TLS port,
certificate rotation by SIGHUP, backpressure, a graceful stop with close_notify, the client's
--tls, and every certificate error as one line and exit 2.

Every socket is closed, every server stopped and reaped, every wait bounded.
"""
from __future__ import annotations

import asyncio
import os
import re
import resource
import selectors
import signal
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
import trustme
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastecho import _core
from helpers import (assert_one_line_error, listeners, needs_haproxy, proc_cpu_seconds,
                     proxy_v1, run_cli, scrape, start_server, wait_until)
from pki import Pki, tls_args

pytestmark = [pytest.mark.skipif(not _core.TLS_AVAILABLE, reason="this build has no TLS"),
              pytest.mark.usefixtures("io_backend")]  # each test runs on epoll and io_uring

TLS = "tls://127.0.0.1:0"
METRICS_URL = r"metrics at (http://\S+/metrics)"


def address(server, scheme: str = "tls") -> tuple[str, int]:
    for listener_scheme, host, port in listeners(server):
        if listener_scheme == scheme:
            return host, port
    raise AssertionError(f"no {scheme} listener in {server.listening_line!r}")


def tls_connect(pki: Pki, addr: tuple[str, int], context: ssl.SSLContext | None = None,
                timeout: float = 10.0, **wrap) -> ssl.SSLSocket:
    raw = socket.create_connection(addr, timeout=timeout)
    try:
        return (context or pki.client_context()).wrap_socket(raw, server_hostname="localhost", **wrap)
    except BaseException:
        raw.close()
        raise


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(min(n - len(out), 1 << 16))
        if not chunk:
            break
        out += chunk
    return bytes(out)


def closed_after_any_alert(sock: socket.socket, timeout: float = 10.0) -> bool:
    """True once the server closes sock, after whatever it sent first (a TLS alert)."""
    sock.settimeout(timeout)
    try:
        for _ in range(64):  # an alert is 7 bytes; a server that keeps talking fails the test
            if sock.recv(4096) == b"":
                return True
    except ConnectionResetError:
        return True
    return False


def metric(server, name: str) -> float:
    return scrape(server.wait_for_stderr(METRICS_URL)[1]).get(name, 0)


def wait_for_metric(server, name: str, expected: float, timeout: float = 10.0) -> None:
    seen: list[float] = []
    ok = wait_until(lambda: seen.append(metric(server, name)) or seen[-1] == expected, timeout)
    assert ok, f"{name}: expected {expected}, last saw {seen[-1] if seen else None}"


@pytest.fixture(scope="module")
def tls_server(pki, tmp_path_factory, io_backend):
    """One TLS server for the tests that only need echo."""
    server = start_server(tmp_path_factory.mktemp("tls"), "--listen", TLS, *tls_args(pki),
                          "--threads", "2", "--max-pending-output", "65536", port=None)
    yield server
    assert server.stop() == 0


# ---------------------------------------------------------------- echo

@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.binary(min_size=1, max_size=200_000), cuts=st.lists(st.integers(1, 50_000), max_size=8))
def test_tls_echo_is_byte_exact_for_any_payload_and_split(pki, tls_server, payload, cuts):
    with tls_connect(pki, address(tls_server)) as s:
        pieces, rest = [], payload
        for cut in cuts:
            pieces.append(rest[:cut])
            rest = rest[cut:]
        pieces.append(rest)
        got = bytearray()
        for piece in pieces:  # each piece is read back before the next: no deadlock on big ones
            s.sendall(piece)
            got += recv_exactly(s, len(piece))
        assert bytes(got) == payload


def pump(s: ssl.SSLSocket, payload: bytes, timeout: float = 60.0) -> bytes:
    """Send payload while reading it back (more than any buffer holds); what came back.

    One thread, non-blocking: an SSL object must not be used from two threads at once.
    """
    s.setblocking(False)
    sent, got = 0, bytearray()
    deadline = time.monotonic() + timeout
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE)
            while len(got) < len(payload) and time.monotonic() < deadline:
                if not s.pending():  # bytes OpenSSL holds are no longer in the socket
                    sel.select(0.5)
                if sent < len(payload):
                    try:
                        sent += s.send(payload[sent:sent + 65536])  # the same bytes again on a retry
                    except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                        pass
                    if sent == len(payload):
                        sel.modify(s, selectors.EVENT_READ)
                try:
                    chunk = s.recv(65536)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    continue
                if not chunk:
                    break
                got += chunk
    finally:
        s.settimeout(timeout)
    return bytes(got)


def test_tls_echoes_a_mebibyte(pki, tls_server):
    payload = os.urandom(1 << 20)
    with tls_connect(pki, address(tls_server)) as s:
        assert pump(s, payload) == payload


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["1.2", "1.3"])
def test_tls_1_2_and_1_3_are_served(pki, tls_server, version):
    with tls_connect(pki, address(tls_server), pki.client_context(version=version)) as s:
        assert s.version() == {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]
        s.sendall(b"hello over " + s.version().encode())
        assert recv_exactly(s, 18) == b"hello over " + s.version().encode()


def test_tls_min_version_1_3_refuses_1_2_clients(pki, serve):
    server = serve("--listen", TLS, *tls_args(pki, "--tls-min-version", "1.3", "--metrics-port", "0"), port=None)
    with pytest.raises(ssl.SSLError):
        tls_connect(pki, address(server), pki.client_context(version=ssl.TLSVersion.TLSv1_2))
    with tls_connect(pki, address(server)) as s:
        assert s.version() == "TLSv1.3"
    wait_for_metric(server, "fastecho_tls_handshake_failures_total", 1)


def test_a_thousand_concurrent_tls_clients_all_echo(pki, serve):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2200:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is too low for 1000 clients")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    server = serve("--listen", TLS, *tls_args(pki), "--threads", "2", "--backlog", "2048", port=None)
    host, port = address(server)
    context = pki.client_context()

    async def client(i: int) -> bool:
        reader, writer = await asyncio.open_connection(host, port, ssl=context, server_hostname="localhost")
        try:
            payload = f"client {i} ".encode() * (1 + i % 50)
            writer.write(payload)
            await writer.drain()
            return await reader.readexactly(len(payload)) == payload
        finally:
            writer.close()

    async def all_clients() -> list[bool]:
        return await asyncio.wait_for(asyncio.gather(*(client(i) for i in range(1000))), 120)

    try:
        assert all(asyncio.run(all_clients()))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_line_mode_works_over_tls(pki, serve):
    server = serve("--listen", TLS, *tls_args(pki), "--suffix", " [tls]", port=None)
    with tls_connect(pki, address(server)) as s:
        s.sendall(b"one\r\ntwo\n")
        assert recv_exactly(s, len(b"one [tls]\r\ntwo [tls]\n")) == b"one [tls]\r\ntwo [tls]\n"


def test_tls_and_tcp_listeners_share_one_server(pki, serve):
    server = serve("--listen", TLS, "--listen", "tcp://127.0.0.1:0", *tls_args(pki), port=None)
    with tls_connect(pki, address(server)) as secure, socket.create_connection(address(server, "tcp"), 10) as plain:
        secure.sendall(b"secure")
        plain.sendall(b"plain")
        assert recv_exactly(secure, 6) == b"secure" and recv_exactly(plain, 5) == b"plain"


def test_sessions_resume_with_tickets_and_are_counted(pki, serve):
    server = serve("--listen", TLS, *tls_args(pki, "--metrics-port", "0"), port=None)
    context = pki.client_context()
    with tls_connect(pki, address(server), context) as first:
        first.sendall(b"x")
        assert recv_exactly(first, 1) == b"x"  # TLS 1.3 tickets arrive after the handshake
        session = first.session
    with tls_connect(pki, address(server), context, session=session) as second:
        assert second.session_reused
        second.sendall(b"y")
        assert recv_exactly(second, 1) == b"y"
    wait_for_metric(server, "fastecho_tls_handshakes_total", 2)
    wait_for_metric(server, "fastecho_tls_resumed_total", 1)


# ---------------------------------------------------------------- mutual TLS

@pytest.fixture
def mtls_server(pki, serve):
    return serve("--listen", TLS, *tls_args(pki, "--tls-client-ca", pki.path("client-ca.pem"),
                                            "--access-log", "--metrics-port", "0"), port=None)


def test_mtls_serves_a_client_with_a_certificate_from_the_ca_and_logs_its_subject(pki, mtls_server):
    with tls_connect(pki, address(mtls_server), pki.client_context(cert="client.pem")) as s:
        port = s.getsockname()[1]
        s.sendall(b"trusted")
        assert recv_exactly(s, 7) == b"trusted"
    line = mtls_server.wait_for_stderr(rf"open 127\.0\.0\.1:{port} .*")[0]
    assert 'subject="CN=client one' in line


@pytest.mark.parametrize("cert", [None, "stranger.pem"], ids=["no-certificate", "other-ca"])
def test_mtls_refuses_a_client_without_a_certificate_from_the_ca(pki, mtls_server, cert):
    with pytest.raises((ssl.SSLError, ConnectionError)):
        # TLS 1.3: the client's handshake ends before the server checks its certificate;
        # the refusal arrives as an alert on the first read.
        with tls_connect(pki, address(mtls_server), pki.client_context(cert=cert)) as s:
            s.sendall(b"let me in")
            assert s.recv(100) == b""
    wait_for_metric(mtls_server, "fastecho_tls_handshake_failures_total", 1)
    with tls_connect(pki, address(mtls_server), pki.client_context(cert="client.pem")) as s:
        s.sendall(b"still serving")
        assert recv_exactly(s, 13) == b"still serving"


def test_rotating_the_client_ca_refuses_tickets_issued_under_the_old_one(pki, serve, tmp_path):
    # Tickets keep resuming across a rotation, but not into other trust settings.
    ca = tmp_path / "clients.pem"
    ca.write_bytes(Path(pki.path("client-ca.pem")).read_bytes())
    server = serve("--listen", TLS, *tls_args(pki, "--tls-client-ca", str(ca)), port=None)
    context = pki.client_context(cert="client.pem")
    with tls_connect(pki, address(server), context) as first:
        first.sendall(b"x")
        assert recv_exactly(first, 1) == b"x"
        session = first.session
    ca.write_bytes(trustme.CA().cert_pem.bytes())  # trust another CA from now on
    server.proc.send_signal(signal.SIGHUP)
    server.wait_for_stderr("TLS certificate reloaded")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        with tls_connect(pki, address(server), context, session=session) as again:
            again.sendall(b"resume?")
            assert again.recv(10) == b""


def test_a_partial_record_held_by_openssl_does_not_spin_the_worker(pki, serve):
    server = serve("--listen", TLS, *tls_args(pki, "--threads", "1"), port=None)
    with tls_connect(pki, address(server)) as s:
        s.sendall(b"one whole record")
        assert recv_exactly(s, 16) == b"one whole record"
        before = proc_cpu_seconds(server.pid)
        # Three bytes of a record header, on the raw socket: OpenSSL holds them and
        # waits for the rest, which never comes.
        socket.socket.sendall(s, b"\x17\x03\x03")
        time.sleep(1.0)
        spent = proc_cpu_seconds(server.pid) - before
    assert spent < 0.5, f"the server used {spent:.2f} s of CPU in 1 s while waiting"


# ---------------------------------------------------------------- bad clients

def test_plaintext_and_garbage_to_a_tls_port_close_only_that_connection(pki, serve):
    server = serve("--listen", TLS, *tls_args(pki, "--metrics-port", "0"), port=None)
    with tls_connect(pki, address(server)) as good:
        for junk in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03\x01\x00\x05hello", os.urandom(300)):
            with socket.create_connection(address(server), timeout=10) as bad:
                bad.sendall(junk)
                assert closed_after_any_alert(bad)
            good.sendall(b"unaffected")
            assert recv_exactly(good, 10) == b"unaffected"
    wait_for_metric(server, "fastecho_tls_handshake_failures_total", 3)
    assert metric(server, 'fastecho_closes_total{reason="tls-handshake"}') == 3


def test_a_port_probe_that_connects_and_closes_is_not_a_handshake_failure(pki, serve):
    server = serve("--listen", TLS, *tls_args(pki, "--metrics-port", "0"), port=None)
    socket.create_connection(address(server), timeout=10).close()
    wait_for_metric(server, 'fastecho_closes_total{reason="eof"}', 1)
    assert metric(server, "fastecho_tls_handshake_failures_total") == 0


def test_handshake_timeout_closes_silent_and_stalled_clients_while_others_are_served(pki, serve):
    server = serve("--listen", TLS, *tls_args(pki, "--tls-handshake-timeout", "0.5", "--metrics-port", "0"),
                   port=None)
    silent = [socket.create_connection(address(server), timeout=10) for _ in range(200)]
    stalled = socket.create_connection(address(server), timeout=10)
    try:
        stalled.sendall(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello, never finished
        with tls_connect(pki, address(server)) as good:  # served meanwhile
            good.sendall(b"served")
            assert recv_exactly(good, 6) == b"served"
        for s in silent + [stalled]:
            assert closed_after_any_alert(s)
    finally:
        for s in silent + [stalled]:
            s.close()
    wait_for_metric(server, 'fastecho_closes_total{reason="tls-handshake-timeout"}', 201)


def test_a_server_idle_past_the_handshake_timeout_still_completes_the_next_handshake(pki, serve):
    # The timeout runs from each connection's accept, not from the worker's last wake-up.
    server = serve("--listen", TLS, *tls_args(pki, "--tls-handshake-timeout", "0.3"), port=None)
    for _ in range(2):
        time.sleep(0.6)
        with tls_connect(pki, address(server)) as s:
            s.sendall(b"late")
            assert recv_exactly(s, 4) == b"late"


# ---------------------------------------------------------------- flow control and stop

def test_a_tls_client_that_does_not_read_is_held_to_the_output_cap(pki, serve):
    cap = 65536
    server = serve("--listen", TLS, *tls_args(pki, "--max-pending-output", str(cap), "--metrics-port", "0"),
                   port=None)
    payload = os.urandom(64 << 20)
    with tls_connect(pki, address(server)) as s:
        s.setblocking(False)
        sent = 0
        # Push until the kernel refuses for a whole second: the server has stopped
        # reading, so both sockets' buffers are full.
        stalled_since = None
        deadline = time.monotonic() + 30
        while sent < len(payload) and time.monotonic() < deadline:
            try:
                sent += s.send(payload[sent:sent + 65536])  # the same bytes again on a retry
                stalled_since = None
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                stalled_since = stalled_since or time.monotonic()
                if time.monotonic() - stalled_since > 1.0:
                    break
                time.sleep(0.01)
        assert sent < len(payload), "the server never pushed back"
        held = metric(server, "fastecho_memory_held_bytes")
        # The cap, rounded up to the buffer's power of two; OpenSSL's own record buffers are
        # not counted (they are a few KiB per connection and do not grow).
        assert 0 < held <= 2 * cap, held
        s.setblocking(True)
        s.settimeout(10)
        got = recv_exactly(s, sent)  # everything sent comes back, in order, once it is read
        assert got == payload[:sent]


def test_tls_clients_that_never_read_stay_within_the_memory_budget_while_a_reader_is_served(pki, serve):
    budget, overshoot = 4 << 20, 2 * 128 * 1024  # see test_memory_budget: one read per worker
    server = serve("--listen", TLS, *tls_args(pki, "--threads", "2", "--max-memory", str(budget),
                                              "--metrics-port", "0"), port=None)
    hogs: list[ssl.SSLSocket] = []
    try:
        for _ in range(60):
            raw = socket.socket()
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the server's buffers fill, not the kernel's
            raw.settimeout(10)
            raw.connect(address(server))
            hogs.append(pki.client_context().wrap_socket(raw, server_hostname="localhost"))
        chunk, stalled = os.urandom(16384), 0
        sent = dict.fromkeys(hogs, 0)
        deadline = time.monotonic() + 60
        for s in hogs:
            s.setblocking(False)
        while stalled < 20 and time.monotonic() < deadline:
            progress = False
            for s in hogs:
                try:
                    sent[s] += s.send(chunk)  # a retry after WANT_WRITE sends the same bytes
                    progress = True
                except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                    pass
            stalled = 0 if progress else stalled + 1
            if not progress:
                time.sleep(0.05)
        pushed = sum(sent.values())
        assert pushed > 2 * budget, f"only {pushed} bytes pushed: the budget was never filled"
        held = metric(server, "fastecho_memory_held_bytes")
        assert budget // 2 < held <= budget + overshoot, held
        assert metric(server, "fastecho_memory_budget_waits_total") > 0
        payload = os.urandom(2 << 20)
        with tls_connect(pki, address(server)) as reader:
            assert pump(reader, payload) == payload
        assert metric(server, "fastecho_memory_held_bytes") <= budget + overshoot
        # Nothing received was dropped: a hoarder that starts reading gets all of it back.
        first = hogs[0]
        first.settimeout(20)
        assert recv_exactly(first, sent[first]) == chunk * (sent[first] // len(chunk))
    finally:
        for s in hogs:
            s.close()


def test_sigterm_under_tls_load_loses_no_byte_and_ends_with_close_notify(pki, serve):
    server = serve("--listen", TLS, *tls_args(pki, "--grace", "5"), port=None)
    payloads = [os.urandom(256 * 1024) for _ in range(8)]
    conns = [tls_connect(pki, address(server), suppress_ragged_eofs=False) for _ in payloads]
    results: dict[int, bytes | BaseException] = {}

    def run(i: int) -> None:
        s, payload = conns[i], payloads[i]
        try:
            got = pump(s, payload)
            tail = s.recv(1)  # the server's close_notify: b"" (a bare FIN would raise SSLEOFError)
            results[i] = got if tail == b"" else AssertionError(f"{tail!r} after the echo")
        except BaseException as e:  # noqa: BLE001 - checked below
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(conns))]
    try:
        for t in threads:
            t.start()
        server.proc.send_signal(signal.SIGTERM)  # mid-stream: the grace lets them finish
        for t in threads:
            t.join(60)
    finally:
        for s in conns:
            s.close()
    assert server.proc.wait(30) == 0  # signalled once: a second SIGTERM could land during its exit
    for i, payload in enumerate(payloads):
        assert results.get(i) == payload, f"client {i}: {results.get(i)!r:.200}"


# ---------------------------------------------------------------- rotation

def test_sighup_rotates_the_certificate_for_new_handshakes_and_keeps_open_connections(pki, serve, tmp_path):
    cert, key = tmp_path / "live.pem", tmp_path / "live.key"
    cert.write_bytes(Path(pki.path("server.pem")).read_bytes())
    key.write_bytes(Path(pki.path("server.key")).read_bytes())
    server = serve("--listen", TLS, "--tls-cert", str(cert), "--tls-key", str(key), port=None)

    def served_certificate() -> bytes:
        with tls_connect(pki, address(server)) as s:
            return s.getpeercert(binary_form=True)

    first = served_certificate()
    with tls_connect(pki, address(server)) as old:
        old.sendall(b"before")
        assert recv_exactly(old, 6) == b"before"
        # certbot's way: the new files are written, then the server is told.
        cert.write_bytes(Path(pki.path("server2.pem")).read_bytes())
        key.write_bytes(Path(pki.path("server2.key")).read_bytes())
        server.proc.send_signal(signal.SIGHUP)
        server.wait_for_stderr("TLS certificate reloaded")
        second = served_certificate()
        assert second != first
        old.sendall(b"after")  # the open connection is untouched
        assert recv_exactly(old, 5) == b"after"
        assert old.getpeercert(binary_form=True) == first

        # A bad new pair (the key of another certificate) is logged; the last good one stays.
        key.write_bytes(Path(pki.path("server.key")).read_bytes())
        server.proc.send_signal(signal.SIGHUP)
        server.wait_for_stderr("keeping the TLS certificate in use: .*does not belong")
        assert served_certificate() == second
        old.sendall(b"still")
        assert recv_exactly(old, 5) == b"still"
    assert server.stop() == 0


# ---------------------------------------------------------------- PROXY protocol before TLS

def test_tls_proxy_reads_the_header_then_the_handshake_and_logs_the_original_client(pki, serve):
    server = serve("--listen", "tls+proxy://127.0.0.1:0", *tls_args(pki, "--access-log"), port=None)
    raw = socket.create_connection(address(server, "tls+proxy"), timeout=10)
    raw.sendall(proxy_v1(("203.0.113.7", 51000), ("198.51.100.1", 443)))
    with pki.client_context().wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(b"behind a proxy")
        assert recv_exactly(s, 14) == b"behind a proxy"
    server.wait_for_stderr(r"open 203\.0\.113\.7:51000 via 127\.0\.0\.1:\d+")


@needs_haproxy
def test_haproxy_passes_tls_through_with_send_proxy_v2(pki, serve, haproxy):
    server = serve("--listen", "tls+proxy://127.0.0.1:0", *tls_args(pki, "--access-log"), port=None)
    front = haproxy(address(server, "tls+proxy")[1], "send-proxy-v2")
    payload = os.urandom(100_000)
    with tls_connect(pki, ("127.0.0.1", front)) as s:
        port = s.getsockname()[1]
        assert pump(s, payload) == payload
    server.wait_for_stderr(rf"open 127\.0\.0\.1:{port} via 127\.0\.0\.1:\d+")


# ---------------------------------------------------------------- the client

def test_client_tls_echoes_lines_and_presents_a_client_certificate(pki, mtls_server):
    host, port = address(mtls_server)
    result = run_cli("client", "--tls", "--ca", pki.path("ca.pem"), "--cert", pki.path("client.pem"),
                     host, str(port), input=b"one\ntwo\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"one\ntwo\n"


def test_client_tls_refuses_a_server_it_cannot_verify(pki, tls_server):
    host, port = address(tls_server)
    result = run_cli("client", "--tls", host, str(port), input=b"x\n")  # system CAs only
    assert_one_line_error(result, 1, "TLS handshake with", "unable to get local issuer certificate")
    result = run_cli("client", "--tls", "--insecure", host, str(port), input=b"x\n")
    assert result.returncode == 0 and result.stdout == b"x\n", result.stderr


@pytest.mark.parametrize("args, message", [
    (["--ca", "ca.pem"], "--ca needs --tls"),
    (["--tls", "--ca", "ca.pem", "--insecure"], "contradict"),
    (["--tls", "--key", "k.pem"], "--key needs --cert"),
])
def test_client_tls_option_errors(args, message):
    result = run_cli("client", *args, "127.0.0.1", "9", input=b"")
    assert result.returncode == 2 and message in result.stderr.decode()


# ---------------------------------------------------------------- start-up errors

@pytest.fixture
def occupied_port():
    """A port something else listens on: a server that tried to bind it first would say so."""
    with socket.create_server(("127.0.0.1", 0)) as s:
        yield s.getsockname()[1]


def fifo(tmp_path) -> str:
    path = tmp_path / "fifo.pem"
    os.mkfifo(path)
    return str(path)


@pytest.mark.parametrize("case, fragments", [
    ("no-cert", ["needs a certificate", "--tls-cert"]),
    ("missing", ["--tls-cert", "no such file"]),
    ("garbage", ["no PEM certificate"]),
    ("mismatch", ["does not belong to the certificate"]),
    ("encrypted", ["key", "encrypted"]),
    ("fifo", ["is a FIFO"]),
    ("key-alone", ["--tls-key needs --tls-cert"]),
    ("bad-ca", ["--tls-client-ca", "no PEM certificate"]),
])
def test_certificate_problems_are_one_line_and_exit_2_before_binding(pki, tmp_path, occupied_port, case,
                                                                     fragments):
    listen = ["--listen", f"tls://127.0.0.1:{occupied_port}"]
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_text("-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIBvTBXBgkqhkiG9w0BBQ0w\n"
                         "-----END ENCRYPTED PRIVATE KEY-----\n")
    args = {
        "no-cert": listen,
        "missing": listen + ["--tls-cert", str(tmp_path / "nope.pem")],
        "garbage": listen + ["--tls-cert", str(garbage), "--tls-key", pki.path("server.key")],
        "mismatch": listen + ["--tls-cert", pki.path("server.pem"), "--tls-key", pki.path("server2.key")],
        "encrypted": listen + ["--tls-cert", pki.path("server.pem"), "--tls-key", str(encrypted)],
        "fifo": listen + ["--tls-cert", fifo(tmp_path)],
        "key-alone": ["--listen", f"tcp://127.0.0.1:{occupied_port}", "--tls-key", pki.path("server.key")],
        "bad-ca": listen + [*tls_args(pki), "--tls-client-ca", str(garbage)],
    }[case]
    result = run_cli("serve", *args, timeout=20)
    assert_one_line_error(result, 2, *fragments)


def test_fd_scheme_tls_needs_a_certificate():
    result = run_cli("serve", "--fd-scheme", "tls", "--print-config")
    assert_one_line_error(result, 2, "--fd-scheme tls needs a certificate")


def test_key_in_the_certificate_file_is_found_without_tls_key(pki, serve, tmp_path):
    combined = tmp_path / "combined.pem"
    combined.write_bytes(Path(pki.path("server.key")).read_bytes() + Path(pki.path("server.pem")).read_bytes())
    server = serve("--listen", TLS, "--tls-cert", str(combined), port=None)
    with tls_connect(pki, address(server)) as s:
        s.sendall(b"one file")
        assert recv_exactly(s, 8) == b"one file"
    assert re.search(r"TLS certificate: .*valid until", server.stderr())
