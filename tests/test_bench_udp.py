"""The benchmark over UDP: the load generator's UDP mode, the bare C UDP
reference loops, the asyncio/uvloop DatagramProtocol echo, and
`python -m fastecho.bench --transport udp`.

Real sockets on 127.0.0.1 and real processes, each stopped and reaped.
Small faulty UDP servers run in threads of this process: one flips a byte,
one truncates, one drops every Nth datagram, one answers twice, one swaps
neighbours, one answers the wrong client. Runs are short (SHORT) and every
loop is bounded; nothing asserts on timing. Loads stay at a few datagrams in
flight, so that no socket buffer overflows and every loss is the server's
doing."""
from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator

import pytest

from fastecho.bench import LoadError, cli, run_load
from fastecho.bench._loadgen import UDP_DEFAULT_TIMEOUT, UDP_MAX_DATAGRAM_SIZE, UDP_MAX_SOCKETS
from fastecho.bench.errors import ServerStartError
from fastecho.bench.servers import HOST, SERVERS, reference_binary, running_server
from helpers import read_line
from test_bench_cli import FAST, assert_one_line_usage_error, bench, our_children
from test_bench_loadgen import JOIN_TIMEOUT, SHORT, failing_on_an_exited_pid

HEADER = struct.Struct("<QIIII")  # seq, socket, slot, length, check: the generator's datagram header
# A generous loss timeout, so that only what a server drops is lost, even on
# a busy machine; the loss tests set their own.
UDP = {"udp": True, "udp_timeout": 1.0, **SHORT}
UDP_SERVERS = ["fastecho", "reference-udp", "reference-udp-mmsg", "asyncio", "uvloop"]


def _skip_if_unavailable(name: str) -> None:
    reason = SERVERS[name].udp_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module", params=UDP_SERVERS)
def udp_server(request):
    """Each UDP peer of the benchmark, started once for the module."""
    _skip_if_unavailable(request.param)
    with running_server(SERVERS[request.param], threads=1, baseline_threads=1, udp=True) as server:
        yield server


# --- tiny UDP servers in a thread ----------------------------------------------


class Echo:
    """Echo every datagram; subclasses change what goes back. Called from the
    server thread only."""

    def __init__(self) -> None:
        self.received = 0

    def datagram(self, sock: socket.socket, data: bytes, addr: tuple) -> None:
        sock.sendto(data, addr)

    def idle(self, sock: socket.socket) -> None:
        """Nothing arrived for a while."""


@contextlib.contextmanager
def udp_thread_server(behaviour: Echo) -> Iterator[int]:
    """Serve datagrams with `behaviour` on a thread; yields the port. The
    socket is closed and the thread joined on the way out."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))
    sock.settimeout(0.02)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, addr = sock.recvfrom(65536)
            except TimeoutError:
                behaviour.idle(sock)
                continue
            except OSError:
                return
            behaviour.received += 1
            with contextlib.suppress(OSError):  # a client gone away: drop, as UDP does
                behaviour.datagram(sock, data, addr)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        stop.set()
        thread.join(JOIN_TIMEOUT)
        sock.close()


class ChangeOne(Echo):
    """Echo faithfully, but hand the `nth` datagram to change(data) first."""

    def __init__(self, nth: int, change: Callable[[bytes], bytes]) -> None:
        super().__init__()
        self.nth, self.change = nth, change

    def datagram(self, sock, data, addr):
        sock.sendto(self.change(data) if self.received == self.nth else data, addr)


def flip(offset: int) -> Callable[[bytes], bytes]:
    return lambda data: data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1:]


class DropEveryNth(Echo):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def datagram(self, sock, data, addr):
        if self.received % self.n:
            sock.sendto(data, addr)


class Twice(Echo):
    def datagram(self, sock, data, addr):
        sock.sendto(data, addr)
        sock.sendto(data, addr)


class SwapNeighbours(Echo):
    """Hold a datagram until the next arrives, send that one first, then it."""

    def __init__(self) -> None:
        super().__init__()
        self.held: tuple[bytes, tuple] | None = None

    def datagram(self, sock, data, addr):
        if self.held is None:
            self.held = data, addr
            return
        sock.sendto(data, addr)
        sock.sendto(*self.held)
        self.held = None

    def idle(self, sock):
        if self.held is not None:
            sock.sendto(*self.held)
            self.held = None


class WrongClient(Echo):
    """Once two clients are known, answer each datagram to the other one."""

    def __init__(self) -> None:
        super().__init__()
        self.clients: list[tuple] = []

    def datagram(self, sock, data, addr):
        if addr not in self.clients:
            self.clients.append(addr)
        others = [c for c in self.clients if c != addr]
        sock.sendto(data, others[0] if others else addr)


# --- the load generator against the real peers -----------------------------------


@pytest.mark.parametrize("conns, size, depth", [(1, 64, 1), (4, 1024, 4), (2, 100, 8)])
def test_every_peer_echoes_verified_datagrams(udp_server, conns, size, depth):
    result = run_load(HOST, udp_server.port, conns, size, depth, server_pid=udp_server.pid, **UDP)
    assert result["messages"] > 0 and result["starved_conns"] == 0
    assert result["sent"] > 0
    assert result["lost"] == result["late"] == result["duplicates"] == result["reordered"] == 0
    assert 0 < result["p50_ns"] <= result["p99_ns"] <= result["max_ns"]
    assert result["server_user_us"] + result["server_sys_us"] > 0 and result["server_rss_kib"] > 0
    assert result["tls"] is None and result["handshakes"] is None


def test_max_messages_ends_a_udp_window_early(udp_server):
    result = run_load(HOST, udp_server.port, 2, 64, 4, udp=True, warmup=0, duration=60, max_messages=300)
    assert 300 <= result["messages"] < 300 + 2 * 4  # the last batch of each socket may finish
    assert result["elapsed_s"] < 60


@pytest.mark.parametrize("size", [0, 1, 7, 23, 24, 25])
def test_datagrams_shorter_than_or_as_long_as_the_header_are_echoed(udp_server, size):
    # 0: an empty datagram gets an empty echo; below 24 bytes the datagram is
    # a prefix of its header, matched to the oldest datagram in flight it equals.
    result = run_load(HOST, udp_server.port, 2, size, 4, server_pid=udp_server.pid, **UDP)
    assert result["messages"] > 0 and result["starved_conns"] == 0
    assert result["lost"] == result["late"] == 0


def test_the_largest_udp_datagram_is_echoed_whole(udp_server):
    result = run_load(HOST, udp_server.port, 1, UDP_MAX_DATAGRAM_SIZE, 2, **UDP)
    assert UDP_MAX_DATAGRAM_SIZE == 65507
    assert result["messages"] > 0 and result["lost"] == 0


def test_without_a_server_pid_udp_reports_no_server_figures(udp_server):
    result = run_load(HOST, udp_server.port, 1, 64, **UDP)
    assert result["messages"] > 0 and result["server_user_us"] is None and result["server_rss_kib"] is None


# --- faulty servers: corruption fails the run and says where ------------------------


@pytest.mark.parametrize("offset, where", [(40, ""), (3, r" \(in its header\)")], ids=["body", "header"])
def test_a_flipped_byte_is_reported_with_socket_datagram_and_offset(offset, where):
    # One socket, so the server's 5th datagram is datagram 4 (each is answered before the next is sent).
    with udp_thread_server(ChangeOne(5, flip(offset))) as port:
        with pytest.raises(LoadError) as caught:
            run_load(HOST, port, 1, 64, **UDP)
    match = re.fullmatch(rf"socket 0: the echo of datagram 4 differs at byte {offset} of 64{where}: "
                         r"0x([0-9a-f]{2}), expected 0x([0-9a-f]{2})", str(caught.value))
    assert match, str(caught.value)
    got, expected = (int(h, 16) for h in match.groups())
    assert got == expected ^ 0x01


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d[:-10], r"socket 0: the echo of datagram 4 is 54 bytes long, 64 were sent \(truncated\)"),
        (lambda d: d + b"!", r"socket 0: the echo of datagram 4 is 65 bytes long, 64 were sent \(longer than sent\)"),
        (lambda d: d[:10], r"socket 0: an echo is 10 bytes long, but every datagram sent is 64 \(truncated\)"),
        (lambda d: b"", r"socket 0: an echo is 0 bytes long, but every datagram sent is 64 \(truncated\)"),
    ],
    ids=["truncated", "longer", "truncated-into-the-header", "emptied"],
)
def test_an_echo_of_the_wrong_length_fails_the_run(change, message):
    with udp_thread_server(ChangeOne(5, change)) as port:
        with pytest.raises(LoadError, match=f"^{message}$"):
            run_load(HOST, port, 1, 64, **UDP)


def test_a_non_empty_echo_of_an_empty_datagram_fails_the_run():
    with udp_thread_server(ChangeOne(3, lambda d: b"x")) as port:
        with pytest.raises(LoadError, match=r"^socket 0: an echo is 1 bytes long, but every datagram sent is 0 "
                                            r"\(longer than sent\)$"):
            run_load(HOST, port, 1, 0, **UDP)


def test_an_echo_sent_to_the_wrong_client_fails_the_run_naming_both_sockets():
    with udp_thread_server(WrongClient()) as port:
        with pytest.raises(LoadError) as caught:
            run_load(HOST, port, 2, 64, **UDP)
    match = re.fullmatch(r"socket (\d) received the echo of datagram \d+ of socket (\d) "
                         r"\(the server answered the wrong client\)", str(caught.value))
    assert match and match[1] != match[2], str(caught.value)


def test_a_port_nobody_listens_on_fails_the_run_with_econnrefused():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    with pytest.raises(LoadError, match=r"^socket \d+: (send|receive): nothing listens on 127\.0\.0\.1:\d+ "
                                        r"\(ECONNREFUSED"):
        run_load(HOST, port, 2, 64, **UDP)


def test_an_unreadable_server_pid_fails_a_udp_run(udp_server):
    with failing_on_an_exited_pid() as gone_pid:
        run_load(HOST, udp_server.port, 1, 64, server_pid=gone_pid, **UDP)


# --- faulty servers: loss, duplicates and reordering are counted, not errors ---------


def test_dropped_datagrams_are_counted_lost_and_free_their_slots():
    n = 10
    behaviour = DropEveryNth(n)
    with udp_thread_server(behaviour) as port:
        result = run_load(HOST, port, 2, 64, 4, udp=True, warmup=0.05, duration=1.0, udp_timeout=0.25)
    sent, lost, late = result["sent"], result["lost"], result["late"]
    # Every socket went on after its losses, so far more than depth x
    # sockets datagrams went out.
    assert sent > 4 * 2 * 4 and result["starved_conns"] == 0
    # The server dropped every 10th it received; the window's datagrams reach
    # it as one run, give or take those in flight at either end (8).
    never_answered = lost - late
    assert abs(never_answered - sent / n) <= 3, result
    assert result["duplicates"] == 0 and result["reordered"] == 0


def test_a_server_that_never_answers_loses_everything_without_failing():
    class Silent(Echo):
        def datagram(self, sock, data, addr):
            pass

    with udp_thread_server(Silent()) as port:
        result = run_load(HOST, port, 3, 64, 2, udp=True, warmup=0, duration=0.5, udp_timeout=0.1)
    assert result["messages"] == 0 and result["starved_conns"] == 3
    assert result["sent"] > 3 * 2  # each loss freed its slot for another datagram
    assert result["lost"] == result["sent"] and result["late"] == 0
    assert result["min_conn_messages"] == result["max_conn_messages"] == 0


def test_every_second_echo_of_a_datagram_counts_as_a_duplicate():
    with udp_thread_server(Twice()) as port:
        result = run_load(HOST, port, 2, 64, 4, **UDP)
    assert result["messages"] > 0
    # Each datagram of the window came back twice: the second copy is a
    # duplicate (also for a first copy that came late on a stalled machine).
    assert result["duplicates"] == result["sent"], result
    assert result["lost"] == result["late"] and result["reordered"] == 0


def test_echoes_that_overtake_each_other_count_as_reordered():
    with udp_thread_server(SwapNeighbours()) as port:
        result = run_load(HOST, port, 1, 64, 4, **UDP)
    assert result["messages"] > 0 and result["reordered"] > 0
    assert result["reordered"] <= result["sent"] // 2 + 1  # one of each swapped pair
    assert result["lost"] == result["late"] and result["duplicates"] == 0


# --- arguments ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"size": UDP_MAX_DATAGRAM_SIZE + 1}, "size 65508 is outside 0..65507"),
        ({"size": -1}, "size -1 is negative"),
        ({"conns": 0}, "conns 0 is outside 1..65536"),
        ({"conns": UDP_MAX_SOCKETS + 1}, "conns 65537 is outside 1..65536"),
        ({"conns": 1024, "depth": 2048}, "1024 sockets x depth 2048 is more than 1048576 datagrams in flight"),
        ({"depth": 0}, "depth 0"),
        ({"udp_timeout": -1}, "udp timeout -1 s is outside (0, 60]"),
        ({"udp_timeout": 61}, "udp timeout 61 s is outside (0, 60]"),
        ({"tls": True}, "udp and tls exclude each other"),
        ({"handshakes": True}, "udp has no handshake mode"),
        ({"udp": False, "udp_timeout": 1}, "udp_timeout applies only with udp"),
        ({"host": "::1"}, "host ::1 is not an IPv4 address"),
        ({"port": 0}, "port 0"),
    ],
)
def test_bad_udp_arguments_raise_value_error(overrides, fragment):
    args = {"host": HOST, "port": 9, "conns": 1, "size": 64, "depth": 1, "warmup": 0, "duration": 1,
            "udp": True} | overrides
    with pytest.raises(ValueError, match=re.escape(fragment)):
        run_load(**args)


# --- the servers ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fastecho-reference-udp", "fastecho-reference-udp-mmsg"])
def test_reference_loops_share_a_port_over_threads_and_stop_on_sigterm(name):
    # --rcvbuf: bigger than the default, within what net.core.rmem_max lets anyone ask for
    process = subprocess.Popen([str(reference_binary(name)), "--host", HOST, "--port", "0", "--threads", "3",
                                "--rcvbuf", "262144"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        line = read_line(process, 30)
        match = re.fullmatch(rf"{name.removeprefix('fastecho-')} listening on 127\.0\.0\.1:(\d+) \(udp\) "
                             r"\(3 threads\)\n", line)
        assert match, line
        # Enough clients that SO_REUSEPORT spreads them over the threads' sockets.
        clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(8)]
        try:
            for i, client in enumerate(clients):
                client.settimeout(JOIN_TIMEOUT)
                client.connect((HOST, int(match[1])))
                client.send(b"datagram %d" % i)
                assert client.recv(100) == b"datagram %d" % i
            clients[0].send(b"")
            assert clients[0].recv(100) == b""  # an empty datagram gets an empty echo
        finally:
            for client in clients:
                client.close()
        process.send_signal(signal.SIGTERM)
        assert process.wait(JOIN_TIMEOUT) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=JOIN_TIMEOUT)


@pytest.mark.parametrize("args, fragment", [(["--threads", "0"], "--threads must be a number in 1..1024"),
                                             (["--host", "localhost"], "--host must be an IPv4 address"),
                                             (["--rcvbuf", "-5"], "--rcvbuf must be a number in 0..1073741824"),
                                             (["extra"], "unexpected argument")])
def test_reference_loops_refuse_bad_options_with_exit_2(args, fragment):
    result = subprocess.run([str(reference_binary("fastecho-reference-udp")), *args], capture_output=True, text=True,
                            timeout=JOIN_TIMEOUT, stdin=subprocess.DEVNULL)
    assert result.returncode == 2 and fragment in result.stderr


def test_a_tcp_only_server_refuses_udp_and_a_udp_only_one_tcp():
    with pytest.raises(ServerStartError, match="^reference has no UDP$"):
        with running_server(SERVERS["reference"], threads=1, baseline_threads=1, udp=True):
            pass
    with pytest.raises(ServerStartError, match="^reference-udp serves only UDP$"):
        with running_server(SERVERS["reference-udp"], threads=1, baseline_threads=1):
            pass


def test_aioserver_refuses_udp_with_tls():
    result = subprocess.run([sys.executable, "-m", "fastecho.bench.aioserver", "--udp", "--tls-cert", "c.pem",
                             "--tls-key", "k.pem"], capture_output=True, text=True, timeout=30,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 2 and "--udp and --tls-cert exclude each other" in result.stderr


def test_fastecho_udp_is_offered_exactly_when_its_listeners_serve_udp(monkeypatch):
    from fastecho import listeners

    if "udp" in listeners.SCHEMES:
        assert SERVERS["fastecho"].udp_reason() is None
        monkeypatch.delitem(listeners.SCHEMES, "udp")
        assert "no UDP listener" in SERVERS["fastecho"].udp_reason()
    else:
        assert "no UDP listener" in SERVERS["fastecho"].udp_reason()
        monkeypatch.setitem(listeners.SCHEMES, "udp", "UDP datagrams")
        assert SERVERS["fastecho"].udp_reason() is None
    assert SERVERS["fastecho"].udp_command(2, 32)[-5:] == ["serve", "--listen", "udp://127.0.0.1:0", "--threads", "2"]


# --- python -m fastecho.bench --transport udp -------------------------------------------


EXPECTED_UDP_RUN_KEYS = {
    "server", "conns", "size", "depth", "status", "rounds", "datagrams_per_s", "mib_per_s", "p50_us", "p99_us",
    "p999_us", "server_cpu_us_per_datagram", "server_user_us_per_datagram", "server_sys_us_per_datagram",
    "starved_conns", "min_conn_datagrams", "max_conn_datagrams", "rss_kib", "client_cpu_busy",
    "datagrams_per_s_vs_fastecho", "cpu_per_datagram_vs_fastecho",
    "sent", "lost", "loss_pct", "late", "duplicates", "reordered",
}


def test_transport_udp_runs_end_to_end_and_reports_per_datagram(tmp_path):
    out = tmp_path / "bench.json"
    before = our_children()
    result = subprocess.run([sys.executable, "-m", "fastecho.bench", "--transport", "udp", "--servers",
                             "asyncio,reference-udp", "--conns", "4", "--sizes", "0,1024", "--depth", "4", *FAST,
                             "--json", str(out)],
                            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert "4 sockets × 1 KiB datagrams, depth 4 · UDP" in result.stdout and "CPU µs/dgram" in result.stdout
    document = json.loads(out.read_text())
    assert document["machine"]["transport"] == "udp"
    assert document["machine"]["udp_timeout_s"] == UDP_DEFAULT_TIMEOUT
    runs = document["runs"]
    assert sorted((r["server"], r["size"]) for r in runs) == [
        ("asyncio", 0), ("asyncio", 1024), ("reference-udp", 0), ("reference-udp", 1024)]
    for run in runs:
        assert set(run) == EXPECTED_UDP_RUN_KEYS, run
        assert run["status"] == "ok", run
        assert run["depth"] == 4 and run["datagrams_per_s"] > 0 and run["server_cpu_us_per_datagram"] > 0
        assert run["sent"] > 0 and run["loss_pct"] is not None and run["duplicates"] == 0
        assert run["datagrams_per_s_vs_fastecho"] is None  # fastecho was not in the run
    assert our_children() <= before


def test_udp_defaults_are_64_sockets_depth_8_at_64_b_and_1_kib():
    plan = cli.build_plan(servers="reference-udp", conns=cli.UDP_DEFAULTS.conns, sizes=cli.UDP_DEFAULTS.sizes,
                          depth=cli.DEFAULT_UDP_DEPTH, duration=1, warmup=0, rounds=1, threads=None,
                          baseline_threads=1, server_cpus=None, client_cpus=None, transport="udp")
    assert [(w.conns, w.size, w.depth, w.udp) for w in plan.workloads] == [(64, 64, 8, True), (64, 1024, 8, True)]
    assert plan.udp and plan.transport_label == "UDP"


def test_default_udp_servers_skip_what_cannot_echo_udp_with_notes(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if not installed
    notes: list[str] = []
    names = cli._servers(None, "udp", notes)
    fastecho_has_udp = SERVERS["fastecho"].udp_reason() is None
    assert names == ["fastecho"] * fastecho_has_udp + ["reference-udp", "reference-udp-mmsg", "asyncio"]
    assert any(n.startswith("skipping uvloop: uvloop is not importable") for n in notes)
    assert "skipping python, reference, fastecho-plain, haproxy: they have no UDP" in notes
    assert fastecho_has_udp or any(n.startswith("skipping fastecho: this fastecho has no UDP listener yet")
                                   for n in notes)


def test_the_cli_limits_match_the_load_generator():
    assert cli.MAX_UDP_SIZE == UDP_MAX_DATAGRAM_SIZE and cli.MAX_UDP_SOCKETS == UDP_MAX_SOCKETS
    assert f"(default {UDP_DEFAULT_TIMEOUT:g})" in " ".join(
        p.help for p in cli.command.params if p.name == "udp_timeout")


@pytest.mark.parametrize(
    "args, prelude, fragments",
    [
        (["--transport", "udp", "--servers", "asyncio,python"], "", ["python has no UDP", "reference-udp"]),
        (["--servers", "reference-udp"], "", ["reference-udp serves only UDP (add --transport udp)"]),
        (["--transport", "tls", "--servers", "reference-udp-mmsg"], "", ["reference-udp-mmsg serves only UDP"]),
        (["--transport", "udp", "--sizes", "65508"], "", ["--sizes", "0 to 65507"]),
        (["--transport", "udp", "--sizes", "-1"], "", ["--sizes", "-1"]),
        (["--transport", "udp", "--handshakes"], "", ["--handshakes applies only to TCP and TLS"]),
        (["--transport", "udp", "--tls-version", "1.3"], "", ["--tls-version applies only with --transport tls"]),
        (["--udp-timeout", "1"], "", ["--udp-timeout applies only with --transport udp"]),
        (["--transport", "udp", "--udp-timeout", "0"], "", ["--udp-timeout", "0 is out of range"]),
        (["--transport", "udp", "--conns", "1024", "--depth", "2048"], "", ["1048576 datagrams"]),
        (["--transport", "udp", "--servers", "fastecho"],
         "from fastecho import listeners\nlisteners.SCHEMES.pop('udp', None)",
         ["fastecho is not available with UDP: this fastecho has no UDP listener yet"]),
    ],
    ids=["tcp-only-server", "udp-only-over-tcp", "udp-only-over-tls", "too-big", "negative", "handshakes",
         "tls-version", "timeout-without-udp", "zero-timeout", "too-many-in-flight", "fastecho-without-udp"],
)
def test_bad_udp_input_is_one_line_and_exit_2(args, prelude, fragments):
    base = ["--conns", "1", "--sizes", "64", *FAST]
    # later flags win: the case's own --conns/--sizes come after the defaults
    assert_one_line_usage_error(bench(*base, *args, prelude=prelude), *fragments)
