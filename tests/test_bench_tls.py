"""The benchmark over TLS: the load generator's TLS client and handshake mode,
the TLS servers it compares (asyncio/uvloop ssl, HAProxy in front of
fastecho), and `python -m fastecho.bench --transport tls`.

Real sockets on 127.0.0.1, real certificates (trustme), real processes, each
stopped and reaped. Small faulty TLS servers run in threads of this process.
Runs are short and bounded by duration or max_messages; nothing asserts on
timing."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable

import pytest
import trustme

from fastecho.bench import LoadError, run_load
from fastecho.bench._loadgen import MAX_SERVER_PIDS, TLS_SUPPORTED
from fastecho.bench.certs import temporary_certificate
from fastecho.bench.errors import ServerStartError
from fastecho.bench.servers import HOST, SERVERS, _fastecho_tls_missing, haproxy_binary, running_server
from test_bench_cli import FAST, assert_one_line_usage_error, bench
from test_bench_loadgen import (JOIN_TIMEOUT, SHORT, close_now, echo, echo_then, failing_on_an_exited_pid,
                                flip_first_byte, thread_server)

pytestmark = pytest.mark.skipif(not TLS_SUPPORTED, reason="the load generator was built without TLS (no OpenSSL)")
needs_haproxy = pytest.mark.skipif(haproxy_binary() is None, reason="haproxy is not installed")


@pytest.fixture(scope="module")
def tls_files():
    with temporary_certificate(HOST) as files:
        yield files


@pytest.fixture(scope="module")
def server_context(tls_files) -> ssl.SSLContext:
    """For the thread servers below: the run's certificate, stdlib defaults."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls_files.cert, tls_files.key)
    return context


def over_tls(context: ssl.SSLContext, handle: Callable[[ssl.SSLSocket], None]) -> Callable[[socket.socket], None]:
    """A thread_server handler that handshakes, then runs handle on the TLS socket."""

    def serve(conn: socket.socket) -> None:
        with context.wrap_socket(conn, server_side=True) as tls_conn:
            handle(tls_conn)

    return serve


@pytest.fixture(scope="module")
def asyncio_tls(tls_files):
    with running_server(SERVERS["asyncio"], threads=1, baseline_threads=1, tls=tls_files) as server:
        yield server


@pytest.fixture(scope="module")
def reference_server():
    with running_server(SERVERS["reference"], threads=1, baseline_threads=1) as server:
        yield server


def verified(tls_files, **overrides) -> dict:
    return {"tls": True, "tls_ca_file": tls_files.ca, **SHORT, **overrides}


# --- echo mode ---------------------------------------------------------------


@pytest.mark.parametrize(
    "conns, size, depth",
    [
        (1, 1, 1),  # one byte ping-pong
        (16, 1024, 4),  # several messages, each its own TLS write
        (3, 300_000, 2),  # messages of many 16 KiB records
    ],
)
def test_tls_echo_is_verified_and_measured(asyncio_tls, tls_files, conns, size, depth):
    result = run_load(HOST, asyncio_tls.port, conns, size, depth, server_pid=asyncio_tls.pid, **verified(tls_files))
    assert result["messages"] > 0 and result["starved_conns"] == 0
    assert result["handshakes"] is None  # echo mode: every handshake was before the window
    assert result["tls"].startswith("TLSv1.3 ")  # nothing pinned: the newest both speak
    assert 0 < result["p50_ns"] <= result["p99_ns"] <= result["max_ns"]
    assert result["server_user_us"] + result["server_sys_us"] > 0


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_tls_version_can_be_pinned(asyncio_tls, tls_files, version):
    result = run_load(HOST, asyncio_tls.port, 2, 64, **verified(tls_files, tls_version=version))
    assert result["messages"] > 0
    assert result["tls"].startswith(f"TLSv{version} ")


def test_records_openssl_already_holds_are_read_without_an_epoll_event(server_context, tls_files):
    # Each echoed byte is its own TLS record, and the seven of a message leave
    # corked into one segment: OpenSSL reads them all off the socket at once,
    # more than the generator reads per event. The rest then sit in OpenSSL
    # with nothing in the kernel, and the server waits for the next message:
    # unless the generator reads them unprompted, the run stalls at message 0.
    def byte_per_record(conn: ssl.SSLSocket) -> None:
        while data := conn.recv(65536):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
            for byte in data:
                conn.sendall(bytes([byte]))
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)

    with thread_server(over_tls(server_context, byte_per_record)) as port:
        result = run_load(HOST, port, 1, 7, **verified(tls_files, warmup=0, duration=30, max_messages=200))
    assert result["messages"] >= 200


def test_without_a_ca_file_any_certificate_is_accepted(tmp_path):
    other = trustme.CA()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    other.issue_cert("127.0.0.2").configure_cert(context)  # neither our CA nor our address
    with thread_server(over_tls(context, echo)) as port:
        result = run_load(HOST, port, 2, 64, tls=True, **SHORT)
    assert result["messages"] > 0


# --- faults: each fails the run and says why ---------------------------------


def test_a_flipped_byte_under_tls_is_reported_like_over_tcp(server_context, tls_files):
    with thread_server(over_tls(server_context, echo_then(100, flip_first_byte))) as port:
        with pytest.raises(LoadError) as caught:
            run_load(HOST, port, 1, 64, **verified(tls_files))
    match = re.fullmatch(r"connection 0: echoed byte 100 of the stream \(message 1, byte 36 of 64\) "
                         r"is 0x([0-9a-f]{2}), expected 0x([0-9a-f]{2})", str(caught.value))
    assert match, str(caught.value)
    got, expected = (int(h, 16) for h in match.groups())
    assert got == expected ^ 0x01


def test_a_tls_server_closing_without_close_notify_fails_with_eof(server_context, tls_files):
    with thread_server(over_tls(server_context, echo_then(64 * 3 + 10, close_now))) as port:
        with pytest.raises(LoadError, match=r"^connection 0: server closed the connection \(EOF\) "
                                            r"after echoing 202 of \d+ bytes sent$"):
            run_load(HOST, port, 1, 64, **verified(tls_files))


def test_a_tls_server_sending_close_notify_mid_stream_fails_naming_it(server_context, tls_files):
    def close_notify(conn: ssl.SSLSocket, _rest: bytes) -> bool:
        conn.unwrap()  # sends close_notify; the client's answer never comes
        return False

    with thread_server(over_tls(server_context, echo_then(202, close_notify))) as port:
        with pytest.raises(LoadError, match=r"^connection 0: server closed the TLS session \(close_notify\) "
                                            r"after echoing 202 of \d+ bytes sent$"):
            run_load(HOST, port, 1, 64, **verified(tls_files))


def test_a_server_that_does_not_speak_tls_fails_the_handshake(reference_server, tls_files):
    # The plain echo sends the ClientHello back, which no server would say.
    with pytest.raises(LoadError, match=r"^connection \d+: TLS handshake failed: "):
        run_load(HOST, reference_server.port, 2, 64, **verified(tls_files))


@pytest.mark.parametrize(
    "issue, reason",
    [
        (lambda ours, other: ours.issue_cert("127.0.0.2"), "IP address mismatch"),
        (lambda ours, other: other.issue_cert(HOST), "unable to get local issuer certificate"),
    ],
    ids=["another-address", "another-ca"],
)
def test_a_certificate_that_does_not_verify_fails_the_handshake(tmp_path, issue, reason):
    ours, other = trustme.CA(), trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ours.cert_pem.write_to_path(str(ca_file))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    issue(ours, other).configure_cert(context)
    with thread_server(over_tls(context, echo)) as port:
        with pytest.raises(LoadError, match=rf"^connection \d+: TLS handshake failed: certificate verify failed "
                                            rf"\({reason}\)"):
            run_load(HOST, port, 1, 64, tls=True, tls_ca_file=ca_file, **SHORT)


# --- handshake mode -------------------------------------------------------------


def test_handshake_mode_completes_handshakes_against_the_asyncio_server(asyncio_tls, tls_files):
    result = run_load(HOST, asyncio_tls.port, 4, 64, server_pid=asyncio_tls.pid, **verified(tls_files))
    handshakes = run_load(HOST, asyncio_tls.port, 4, 64, server_pid=asyncio_tls.pid,
                          **verified(tls_files, handshakes=True))
    assert handshakes["handshakes"] == handshakes["messages"] > 0
    assert handshakes["starved_conns"] == 0
    assert handshakes["tls"] == result["tls"]
    assert handshakes["server_user_us"] + handshakes["server_sys_us"] > 0


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_every_handshake_is_a_full_one(server_context, tls_files, version):
    # The server issues session tickets (the stdlib's default) and keeps a
    # session cache; a client that resumed would show as session_reused.
    reused: list[bool] = []

    def record_and_echo(conn: ssl.SSLSocket) -> None:
        reused.append(conn.session_reused)
        echo(conn)  # until the client's close_notify; closing then answers it with EOF

    with thread_server(over_tls(server_context, record_and_echo)) as port:
        result = run_load(HOST, port, 2, 64, **verified(tls_files, tls_version=version, handshakes=True, warmup=0,
                                                        duration=30, max_messages=20))
    assert result["handshakes"] >= 20
    assert len(reused) >= 20 and not any(reused)


def test_handshake_mode_over_plain_tcp_cycles_connections(reference_server):
    result = run_load(HOST, reference_server.port, 4, 64, server_pid=reference_server.pid, handshakes=True, **SHORT)
    assert result["handshakes"] == result["messages"] > 0
    assert result["tls"] is None


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "tcp"])
def test_a_server_that_never_closes_after_the_client_fails_the_handshake_run(server_context, tls_files, tls):
    release = threading.Event()

    def echo_then_hold(conn: socket.socket) -> None:
        echo(conn)  # returns at the client's close_notify or FIN
        release.wait(JOIN_TIMEOUT)  # but never closes back

    handler = over_tls(server_context, echo_then_hold) if tls else echo_then_hold
    with thread_server(handler) as port:
        try:
            with pytest.raises(LoadError, match=r"^connection \d+: server did not close within 0\.3 s of the "
                                                + ("client's close_notify" if tls else "client's FIN")):
                run_load(HOST, port, 1, 64, tls=tls, tls_ca_file=tls_files.ca if tls else None,
                         handshakes=True, connect_timeout=0.3, warmup=0, duration=10)
        finally:
            release.set()


# --- arguments and the server side's processes ----------------------------------


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"tls": True, "tls_version": "1.1"}, "tls_version '1.1' is not"),
        ({"tls_version": "1.3"}, "tls_version and tls_ca_file apply only with tls"),
        ({"tls_ca_file": "/etc/hostname"}, "tls_version and tls_ca_file apply only with tls"),
        ({"tls": True, "tls_ca_file": "/nonexistent/ca.pem"}, "loading the CA file /nonexistent/ca.pem failed"),
        ({"handshakes": True, "depth": 2}, "depth 2: handshake mode echoes one message per connection"),
        ({"server_pids": [os.getpid()] * (MAX_SERVER_PIDS + 1)}, f"at most {MAX_SERVER_PIDS}"),
        ({"server_pids": [-5]}, "server pid -5 is not a process id"),
    ],
)
def test_bad_tls_and_handshake_arguments_raise_value_error(overrides, fragment):
    # port 9 (discard) is never reached: arguments are checked first
    args = {"host": HOST, "port": 9, "conns": 1, "size": 64, "warmup": 0, "duration": 1} | overrides
    with pytest.raises(ValueError, match=re.escape(fragment)):
        run_load(**args)


def test_every_server_pid_is_read(asyncio_tls, tls_files):
    with failing_on_an_exited_pid() as gone_pid:
        run_load(HOST, asyncio_tls.port, 1, 64, server_pids=[asyncio_tls.pid, gone_pid], **verified(tls_files))


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def test_server_memory_is_summed_over_every_server_pid(asyncio_tls, tls_files):
    # A process holding 64 MiB of touched memory, more than the asyncio
    # server's own: only a sum exceeds it by the server's share.
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nheld = b'x' * (64 << 20)\n"
                               "print('ready', flush=True)\nsys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "ready\n"
        held = rss_kib(holder.pid)
        result = run_load(HOST, asyncio_tls.port, 1, 64, server_pids=[asyncio_tls.pid, holder.pid],
                          **verified(tls_files))
        assert result["server_rss_kib"] >= held + rss_kib(asyncio_tls.pid) // 2
    finally:
        holder.communicate(timeout=JOIN_TIMEOUT)  # EOF on stdin ends it


# --- the servers -------------------------------------------------------------


@pytest.mark.parametrize("name", ["asyncio", "uvloop"])
def test_the_event_loop_servers_announce_tls_and_echo(tls_files, name):
    if SERVERS[name].unavailable_reason():
        pytest.skip(SERVERS[name].unavailable_reason())
    with running_server(SERVERS[name], threads=1, baseline_threads=1, tls=tls_files) as server:
        result = run_load(HOST, server.port, 2, 1024, **verified(tls_files))
    assert result["messages"] > 0 and result["tls"].startswith("TLSv1.3")
    assert server.process.poll() is not None  # stopped and reaped


@pytest.mark.parametrize(
    "options, status, fragment",
    [
        (["--tls-cert", "cert.pem"], 2, "--tls-cert and --tls-key go together"),
        (["--tls-cert", "/nonexistent/cert.pem", "--tls-key", "/nonexistent/key.pem"], 1,
         "cannot load --tls-cert/--tls-key"),
    ],
)
def test_aioserver_refuses_bad_tls_options_in_one_line(options, status, fragment):
    result = subprocess.run([sys.executable, "-m", "fastecho.bench.aioserver", "--port", "0", *options],
                            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert result.returncode == status
    assert fragment in result.stderr and "Traceback" not in result.stderr


@needs_haproxy
@pytest.mark.parametrize("tls", [True, False], ids=["tls", "tcp"])
def test_haproxy_front_serves_in_front_of_fastecho_and_both_count(tls_files, tls):
    cpus = {min(os.sched_getaffinity(0))}
    with running_server(SERVERS["haproxy"], threads=1, baseline_threads=1, cpus=cpus,
                        tls=tls_files if tls else None) as server:
        assert server.front is not None and server.front.name == "haproxy"
        assert len(set(server.pids)) == 2
        for pid in server.pids:
            assert os.sched_getaffinity(pid) == cpus  # both pinned as the harness pins servers
        result = run_load(HOST, server.port, 4, 1024, server_pids=server.pids,
                          **(verified(tls_files) if tls else SHORT))
        handshakes = run_load(HOST, server.port, 4, 64, server_pids=server.pids, handshakes=True,
                              **(verified(tls_files) if tls else SHORT))
    assert result["messages"] > 0 and handshakes["handshakes"] > 0
    assert (result["tls"] or "").startswith("TLSv1.3" if tls else "")
    assert result["server_user_us"] + result["server_sys_us"] > 0
    assert server.process.poll() is not None and server.front.process.poll() is not None  # both reaped


def test_a_front_that_exits_at_start_is_a_start_error_naming_it(tls_files):
    spec = dataclasses.replace(SERVERS["asyncio"], name="fronted",
                               front=lambda launch: [sys.executable, "-c", "import sys; sys.exit('bad config')"],
                               front_name="fakeproxy")
    with pytest.raises(ServerStartError, match=r"^fakeproxy exited with status 1: bad config before listening$"):
        with running_server(spec, threads=1, baseline_threads=1, tls=tls_files):
            pass


def test_a_server_without_tls_refuses_a_certificate(tls_files):
    with pytest.raises(ServerStartError, match="reference has no TLS"):
        with running_server(SERVERS["reference"], threads=1, baseline_threads=1, tls=tls_files):
            pass


def test_fastecho_tls_is_offered_exactly_when_the_engine_has_tls():
    from fastecho import _core

    assert (_fastecho_tls_missing() is None) == _core.TLS_AVAILABLE


# --- python -m fastecho.bench --transport tls ---------------------------------------


def test_transport_tls_runs_end_to_end_and_removes_its_certificate(tmp_path):
    out = tmp_path / "bench.json"
    servers = "asyncio,haproxy" if haproxy_binary() else "asyncio"
    result = subprocess.run([sys.executable, "-m", "fastecho.bench", "--transport", "tls", "--servers", servers,
                             "--conns", "2", "--sizes", "1024", *FAST, "--json", str(out)],
                            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                            env=os.environ | {"TMPDIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert "TLS 1.3" in result.stdout and "ECDSA P-256" in result.stdout
    document = json.loads(out.read_text())
    machine = document["machine"]
    assert machine["transport"] == "tls" and machine["tls_version"] == "1.3" and machine["handshakes"] is False
    assert "ECDSA P-256" in machine["certificate"] and machine["load_generator_tls"]
    for run in document["runs"]:
        assert run["status"] == "ok", run
        assert run["tls"].startswith("TLSv1.3 ")
        assert run["server_cpu_us_per_msg"] > 0 and run["starved_conns"] == 0
    assert sorted(r["server"] for r in document["runs"]) == sorted(servers.split(","))
    assert not list(tmp_path.glob("fastecho-bench-*"))  # certificate and logs removed


def test_handshakes_run_end_to_end_reports_per_handshake(tmp_path):
    out = tmp_path / "bench.json"
    result = bench("--transport", "tls", "--tls-version", "1.2", "--handshakes", "--servers",
                   "asyncio,fastecho-plain", "--conns", "2", *FAST, "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert "handshakes/s" in result.stdout and "CPU µs/handshake" in result.stdout
    runs = {r["server"]: r for r in json.loads(out.read_text())["runs"]}
    for run in runs.values():
        assert run["status"] == "ok", run
        assert run["handshakes_per_s"] > 0 and run["server_cpu_us_per_handshake"] > 0
        assert "msgs_per_s" not in run and "mib_per_s" not in run
        assert run["size"] == 64  # handshake mode's default message
    assert runs["asyncio"]["tls"].startswith("TLSv1.2 ")
    assert "tls" not in runs["fastecho-plain"]  # spoken to in plain TCP, for comparison


def test_default_tls_servers_that_cannot_serve_tls_are_skipped_with_a_note():
    prelude = ("import fastecho.bench.cli as cli\ncli.DEFAULT_TLS_SERVERS = ('asyncio', 'uvloop')\n"
               "sys.modules['uvloop'] = None  # as if not installed")
    result = bench("--transport", "tls", "--conns", "1", "--sizes", "64", *FAST, prelude=prelude)
    assert result.returncode == 0, result.stderr
    assert "fastecho bench: skipping uvloop: uvloop is not importable" in result.stderr
    assert "fastecho bench: skipping reference: it has no TLS" in result.stderr
    assert "asyncio" in result.stdout and "uvloop" not in result.stdout


@pytest.mark.parametrize(
    "args, prelude, fragments",
    [
        (["--transport", "tls", "--servers", "asyncio,reference"], "", ["reference has no TLS"]),
        (["--tls-version", "1.2"], "", ["--tls-version applies only with --transport tls"]),
        (["--transport", "tls", "--tls-version", "1.1"], "", ["--tls-version", "'1.1'"]),
        (["--transport", "quic"], "", ["--transport", "'quic'"]),
        (["--handshakes", "--depth", "2"], "", ["--depth 2", "depth is 1"]),
        (["--transport", "tls", "--servers", "asyncio"], "sys.modules['trustme'] = None",
         ["--transport tls", "pip install trustme"]),
        (["--transport", "tls", "--servers", "fastecho"],
         "import dataclasses\nfrom fastecho.bench import servers\n"
         "servers.SERVERS['fastecho'] = dataclasses.replace(servers.SERVERS['fastecho'], "
         "tls_unavailable_reason=lambda: 'no TLS in this build')",
         ["fastecho is not available with TLS: no TLS in this build"]),
    ],
    ids=["no-tls-server", "version-without-tls", "bad-version", "bad-transport", "handshake-depth",
         "no-trustme", "fastecho-without-tls"],
)
def test_bad_tls_input_is_one_line_and_exit_2(args, prelude, fragments):
    assert_one_line_usage_error(bench(*args, "--conns", "1", "--sizes", "64", *FAST, prelude=prelude), *fragments)


def test_a_server_without_a_front_is_one_process(asyncio_tls):
    assert asyncio_tls.front is None and asyncio_tls.pids == (asyncio_tls.pid,)
