"""`fastecho probe URL`: against real `fastecho serve` listeners of every scheme (tcp, udp, tls,
ws, wss; IPv6 where the machine has it; mutual TLS), and against faults: a dead port, a server
that echoes a wrong byte or closes early, an untrusted certificate, a WebSocket path that 404s,
servers that never answer (the timeout bounds the whole probe), bad URLs and options. Each
outcome is one line: `ok ...` on stdout and exit 0, or `fastecho: error: probe URL: REASON`
on stderr and exit 1 (2 for a bad URL or option).

Real sockets on 127.0.0.1 and ::1 only; every wait bounded (each probe runs under a subprocess
timeout), every socket closed, every server and thread stopped.
"""
from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator

import pytest

import fastecho.probe
from fastecho import _core
from fastecho.errors import ClientError
from helpers import (assert_one_line_error, free_port, ipv6_loopback, listeners, run_cli, scrape, start_server,
                     wait_until)
from pki import tls_args

OK = re.compile(r"ok (?P<url>\S+) (?P<size>\d+) bytes echoed in \d+\.\d{3} ms \(\d+\.\d{3} ms in all\)")
RUN_TIMEOUT = 30.0  # no probe here may take longer; a hung one fails the test
SHORT = "0.5"  # --timeout for the probes that are meant to time out

needs_tls = pytest.mark.skipif(not _core.TLS_AVAILABLE, reason="this build has no TLS")
needs_ws = pytest.mark.skipif(not _core.WS_AVAILABLE, reason="this build has no WebSocket")
needs_ipv6 = pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")


def probe(*args: str, timeout: float = RUN_TIMEOUT):
    return run_cli("probe", *args, timeout=timeout)


def assert_ok(result, url: str, size: int = 32) -> None:
    """Exit 0, nothing on stderr, and exactly the one `ok` line, naming url and size."""
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr == b""
    lines = result.stdout.decode().splitlines()
    assert len(lines) == 1, result.stdout
    match = OK.fullmatch(lines[0])
    assert match, lines[0]
    assert (match["url"], int(match["size"])) == (url, size)


def assert_fails(result, url: str, *fragments: str, code: int = 1) -> str:
    """Exit code, nothing on stdout, one `fastecho: error: probe URL: ...` line holding fragments."""
    line = assert_one_line_error(result, code, *fragments)
    assert line.startswith(f"fastecho: error: probe {url}: "), line
    assert result.stdout == b""
    return line


def url_of(server, scheme: str, host: str | None = None, path: str = "") -> str:
    """The URL of server's listener of that scheme (with host instead of its address if given)."""
    for listener_scheme, address, port in listeners(server):
        if listener_scheme == scheme:
            host = host or address
            return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}{path}"
    raise AssertionError(f"no {scheme} listener in {server.listening_line!r}")


@pytest.fixture(scope="module")
def every_scheme(pki, tmp_path_factory):
    """One server with a listener of each scheme this build serves, on 127.0.0.1."""
    urls = ["tcp://127.0.0.1:0", "udp://127.0.0.1:0"]
    urls += ["tls://127.0.0.1:0"] if _core.TLS_AVAILABLE else []
    urls += ["ws://127.0.0.1:0"] if _core.WS_AVAILABLE else []
    urls += ["wss://127.0.0.1:0"] if _core.TLS_AVAILABLE and _core.WS_AVAILABLE else []
    server = start_server(tmp_path_factory.mktemp("probe"), *(a for u in urls for a in ("--listen", u)),
                          *(tls_args(pki) if _core.TLS_AVAILABLE else ()), "--threads", "2", port=None)
    yield server
    assert server.stop() == 0
    assert "Traceback" not in server.stderr()


# ---------------------------------------------------------------- each scheme, healthy

@pytest.mark.parametrize("scheme, path, tls", [
    ("tcp", "", False),
    ("udp", "", False),
    pytest.param("tls", "", True, marks=needs_tls),
    pytest.param("ws", "/", False, marks=needs_ws),
    pytest.param("wss", "/", True, marks=[needs_tls, needs_ws]),
])
def test_each_scheme_echoes_and_prints_one_ok_line(pki, every_scheme, scheme, path, tls):
    url = url_of(every_scheme, scheme, path=path)
    assert_ok(probe(url, *(("--ca", pki.path("ca.pem")) if tls else ())), url)


@pytest.mark.parametrize("scheme, size", [
    ("tcp", 1), ("tcp", 1 << 20), ("udp", 1), ("udp", 65_507),
    pytest.param("tls", 1 << 20, marks=needs_tls),
    pytest.param("ws", 1 << 20, marks=needs_ws),
])
def test_sizes_up_to_the_limits(pki, every_scheme, scheme, size):
    url = url_of(every_scheme, scheme, path="/" if scheme == "ws" else "")
    tls = ("--ca", pki.path("ca.pem")) if scheme == "tls" else ()
    assert_ok(probe(url, "--size", str(size), *tls), url, size)


def test_a_host_name_is_resolved_and_each_address_tried(every_scheme):
    # localhost may resolve to ::1 first, where nothing listens: the probe goes on to 127.0.0.1.
    url = url_of(every_scheme, "tcp", host="localhost")
    assert_ok(probe(url), url)


@needs_tls
def test_the_certificate_name_is_checked_against_a_host_name(pki, every_scheme):
    url = url_of(every_scheme, "tls", host="localhost")
    assert_ok(probe(url, "--ca", pki.path("ca.pem")), url)


@needs_ws
def test_a_ws_url_without_a_path_probes_slash_and_a_query_is_kept(every_scheme):
    url = url_of(every_scheme, "ws")
    assert_ok(probe(url), url + "/")
    assert_ok(probe(url + "/?probe=1"), url + "/?probe=1")


@needs_ipv6
def test_ipv6_listeners(serve):
    schemes = ["tcp", "udp"] + (["ws"] if _core.WS_AVAILABLE else [])
    server = serve(*(a for s in schemes for a in ("--listen", f"{s}://[::1]:0")), port=None)
    for scheme in schemes:
        url = url_of(server, scheme, path="/" if scheme == "ws" else "")
        assert url.startswith(f"{scheme}://[::1]:")
        assert_ok(probe(url), url)


@needs_tls
def test_mutual_tls_presents_the_client_certificate(pki, serve):
    server = serve("--listen", "tls://127.0.0.1:0",
                   *tls_args(pki, "--tls-client-ca", pki.path("client-ca.pem")), port=None)
    url = url_of(server, "tls")
    assert_ok(probe(url, "--ca", pki.path("ca.pem"), "--cert", pki.path("client.pem")), url)


def test_the_probe_closes_cleanly(pki, serve):
    # FIN after FIN (close_notify first over TLS), close 1000 over WebSocket: the server counts no reset.
    streams = ["tcp"] + (["tls"] if _core.TLS_AVAILABLE else [])
    ws_schemes = [s for s in ("ws", "wss") if _core.WS_AVAILABLE and (s == "ws" or _core.TLS_AVAILABLE)]
    server = serve(*(a for s in streams + ws_schemes for a in ("--listen", f"{s}://127.0.0.1:0")),
                   *(tls_args(pki) if _core.TLS_AVAILABLE else ()), "--metrics-port", "0", port=None)
    for scheme in streams + ws_schemes:
        url = url_of(server, scheme, path="/" if scheme in ws_schemes else "")
        assert_ok(probe(url, *(("--ca", pki.path("ca.pem")) if scheme in ("tls", "wss") else ())), url)
    metrics_url = server.wait_for_stderr(r"metrics at (http://\S+/metrics)")[1]
    expected = {'fastecho_closes_total{reason="eof"}': len(streams),
                'fastecho_closes_total{reason="ws-close"}': len(ws_schemes),
                'fastecho_closes_total{reason="reset"}': 0,
                'fastecho_closes_total{reason="tls-error"}': 0}
    if ws_schemes:
        expected['fastecho_ws_closes_total{code="1000"}'] = len(ws_schemes)
    seen: list[dict] = []
    assert wait_until(lambda: seen.append(scrape(metrics_url)) or all(
        seen[-1].get(name, 0) == value for name, value in expected.items()), 10), \
        {name: seen[-1].get(name) for name in expected}


def test_a_slow_name_lookup_counts_against_the_timeout(monkeypatch):
    # In this process: a resolver that hangs for "slow.invalid" (until the test releases it).
    real, release = socket.getaddrinfo, threading.Event()

    def getaddrinfo(host, *args, flags=0, **kwargs):
        if host != "slow.invalid":
            return real(host, *args, flags=flags, **kwargs)
        if flags & socket.AI_NUMERICHOST:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        release.wait(RUN_TIMEOUT)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    try:
        with pytest.raises(ClientError) as failed:
            fastecho.probe.probe("tcp://slow.invalid:7", timeout=0.2)
        assert str(failed.value) == "probe tcp://slow.invalid:7: timed out after 0.2s resolving slow.invalid"
    finally:
        release.set()


def test_only_the_modules_the_scheme_needs_are_imported(every_scheme):
    # A HEALTHCHECK runs the probe every few seconds: no ssl, websockets, rich or metrics for tcp.
    code = ("import sys; from fastecho.cli import main; rc = main(['probe', sys.argv[1]]); "
            "print(sorted(m for m in ('ssl', 'websockets', 'rich', 'prometheus_client') if m in sys.modules)); "
            "sys.exit(rc)")
    result = subprocess.run([sys.executable, "-c", code, url_of(every_scheme, "tcp")],
                            capture_output=True, timeout=RUN_TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().splitlines()[-1] == "[]"


# ---------------------------------------------------------------- faults

def test_a_dead_tcp_port_is_refused():
    url = f"tcp://127.0.0.1:{free_port()}"
    assert_fails(probe(url), url, "connection refused")


def test_a_dead_udp_port_is_refused_or_times_out():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"udp://127.0.0.1:{port}"
    line = assert_fails(probe(url, "--timeout", "2"), url)
    # Linux answers with ICMP port unreachable on loopback; a filtered path would only time out.
    assert "refused (ICMP port unreachable" in line or "timed out after 2s" in line, line


@contextlib.contextmanager
def tcp_server_once(reply: Callable[[bytes], bytes]) -> Iterator[int]:
    """A TCP server on 127.0.0.1 for one connection: it reads 32 bytes, sends reply(them) and
    closes. Yields the port; the thread is joined and the sockets closed on the way out."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(RUN_TIMEOUT)

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return  # the test is over
        with conn:
            conn.settimeout(RUN_TIMEOUT)
            data = b""
            while len(data) < 32 and (chunk := conn.recv(32 - len(data))):
                data += chunk
            conn.sendall(reply(data))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)  # wakes a pending accept
        listener.close()
        thread.join(RUN_TIMEOUT)
        assert not thread.is_alive()


def flip_sixth_byte(data: bytes) -> bytes:
    return data[:5] + bytes([data[5] ^ 0x40]) + data[6:]


def test_a_wrong_byte_names_its_place():
    with tcp_server_once(flip_sixth_byte) as port:
        url = f"tcp://127.0.0.1:{port}"
        line = assert_fails(probe(url), url, "echo differs at byte 6 of 32")
    sent, got = re.search(r"\(sent 0x([0-9a-f]{2}), got 0x([0-9a-f]{2})\)$", line).groups()
    assert int(sent, 16) ^ int(got, 16) == 0x40


def test_a_connection_closed_early_says_how_far_it_got():
    with tcp_server_once(lambda data: data[:10]) as port:
        url = f"tcp://127.0.0.1:{port}"
        assert_fails(probe(url), url, "connection closed after 10 of 32 bytes")


def test_udp_passes_over_wrong_datagrams_and_says_so_when_none_is_right():
    stop = threading.Event()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.settimeout(0.05)

        def flip() -> None:
            while not stop.is_set():
                try:
                    data, peer = server.recvfrom(70_000)
                except TimeoutError:
                    continue
                server.sendto(flip_sixth_byte(data), peer)

        thread = threading.Thread(target=flip, daemon=True)
        thread.start()
        try:
            url = f"udp://127.0.0.1:{server.getsockname()[1]}"
            assert_fails(probe(url, "--timeout", SHORT), url, f"timed out after {SHORT}s waiting for the echo",
                         "3 datagrams sent, 3 came back differing", "echo differs at byte 6 of 32")
        finally:
            stop.set()
            thread.join(RUN_TIMEOUT)


@needs_tls
@pytest.mark.parametrize("scheme, path", [("tls", ""), pytest.param("wss", "/", marks=needs_ws)])
def test_an_untrusted_certificate_fails_unless_insecure(every_scheme, scheme, path):
    url = url_of(every_scheme, scheme, path=path)  # the test CA is not among the system's
    assert_fails(probe(url), url, "handshake failed: certificate verify failed",
                 "unable to get local issuer certificate")
    assert_ok(probe(url, "--insecure"), url)


@needs_tls
def test_tls_to_a_plain_listener_fails_the_handshake(every_scheme):
    url = url_of(every_scheme, "tcp").replace("tcp://", "tls://")
    assert_fails(probe(url, "--insecure"), url, "TLS handshake failed: ")


@needs_ws
def test_a_ws_path_the_server_does_not_serve_is_a_404(serve):
    server = serve("--listen", "ws://127.0.0.1:0", "--ws-path", "/echo", port=None)
    url = url_of(server, "ws", path="/other")
    assert_fails(probe(url), url, "upgrade refused: HTTP 404")
    good = url_of(server, "ws", path="/echo")
    assert_ok(probe(good), good)


@pytest.mark.parametrize("scheme, doing", [
    ("tcp", "waiting for the echo (0 of 32 bytes back)"),
    ("udp", "waiting for the echo (3 datagrams sent, none came back)"),
    pytest.param("tls", "in the TLS handshake", marks=needs_tls),
    pytest.param("ws", "in the WebSocket handshake", marks=needs_ws),
    pytest.param("wss", "in the TLS or WebSocket handshake", marks=[needs_tls, needs_ws]),
])
def test_a_server_that_never_answers_times_out_within_the_total_timeout(scheme, doing):
    # A stream listener that never accepts: the kernel completes the connection from its backlog,
    # and nothing is ever read or sent. A UDP socket that never reads.
    kind = socket.SOCK_DGRAM if scheme == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as silent:
        silent.bind(("127.0.0.1", 0))
        if kind == socket.SOCK_STREAM:
            silent.listen(8)
        url = f"{scheme}://127.0.0.1:{silent.getsockname()[1]}" + ("/" if scheme.startswith("ws") else "")
        # Bounded by the subprocess timeout: a probe that outlived its own by seconds fails here.
        insecure = ("--insecure",) if scheme in ("tls", "wss") else ()
        result = probe(url, "--timeout", SHORT, *insecure, timeout=10)
        assert_fails(result, url, f"timed out after {SHORT}s {doing}")


# ---------------------------------------------------------------- bad URLs and options: exit 2

@pytest.mark.parametrize("url, reason", [
    ("127.0.0.1:7000", "not a URL"),
    ("http://127.0.0.1:80", "unknown scheme 'http'"),
    ("tcp+proxy://127.0.0.1:7000", "sends no PROXY header"),
    ("tcp://127.0.0.1", "no port"),
    ("tcp://127.0.0.1:0", "port 0"),
    ("tcp://127.0.0.1:99999", "bad URL"),
    ("tcp://127.0.0.1:x", "bad URL"),
    ("tcp://:7000", "no host"),
    ("tcp://127.0.0.1:7000/echo", "only tcp://HOST:PORT"),
    ("udp://127.0.0.1:7000?x=1", "only udp://HOST:PORT"),
    ("ws://user@127.0.0.1:8080/", "user or password"),
    ("ws://127.0.0.1:8080/#top", "fragment"),
])
def test_a_bad_url_is_one_line_and_exit_2(url, reason):
    assert_fails(probe(url), url, reason, code=2)


def test_a_url_with_spaces_is_quoted():
    assert_fails(probe("tcp://a b:1"), "'tcp://a b:1'", "bad URL: host 'a b'", code=2)


@pytest.mark.parametrize("args, message", [
    (("--size", "0", "tcp://127.0.0.1:7"), "'--size'"),
    (("--size", "65508", "udp://127.0.0.1:7"), "--size must be 1 to 65507 bytes"),
    (("--size", str((1 << 20) + 1), "tcp://127.0.0.1:7"), "--size must be 1 to 1048576 bytes"),
    (("--timeout", "0", "tcp://127.0.0.1:7"), "'--timeout'"),
    (("--ca", "ca.pem", "tcp://127.0.0.1:7"), "need a tls:// or wss:// URL"),
    (("--insecure", "ws://127.0.0.1:7/"), "need a tls:// or wss:// URL"),
    (("--ca", "ca.pem", "--insecure", "tls://127.0.0.1:7"), "contradict"),
    (("--key", "k.pem", "tls://127.0.0.1:7"), "--key needs --cert"),
    ((), "Missing argument 'URL'"),
])
def test_bad_options_are_one_line_and_exit_2(args, message):
    result = probe(*args)
    assert_one_line_error(result, 2, message)
    assert result.stdout == b""


@needs_tls
def test_an_unreadable_ca_file_is_one_line_and_exit_1(tmp_path):
    url = "tls://127.0.0.1:7"
    assert_fails(probe(url, "--ca", str(tmp_path / "missing.pem")), url, "missing.pem: no such file")
