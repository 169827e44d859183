"""deploy/haproxy/haproxy.cfg, as shipped, in front of three fastecho instances on loopback.

The file is not rendered: it reads its ports and check timing from ECHO_LB_* environment
variables (HAProxy's own "${NAME-default}" expansion), and the tests set them: free ports,
checks every 200 ms, DOWN after 2 failures, UP after 1. What they show:

- leastconn spreads held clients evenly over the three, and each instance sees the client's
  own address through the PROXY v2 header (the access log's `open CLIENT via HAPROXY` line);
  the echo health checks speak PROXY too (LOCAL), or no instance would be UP;
- a SIGKILLed instance is marked DOWN within a few check intervals and new connections keep
  echoing, none failing, also in the moment before HAProxy notices; its own sessions break,
  as they must: the data they had in flight died with the process;
- a SIGTERMed instance drains: its clients, sending all along, get every byte back and a clean
  close, also after HAProxy has marked it DOWN; new connections go elsewhere;
- the documented drain (the stats socket's `set server ... state drain`, then SIGTERM).

Clients connect from 127.0.0.5, so the address an instance logs is the client's, not
HAProxy's (127.0.0.1). Every wait is bounded; every socket is closed, every process (HAProxy,
fastecho) stopped and reaped, also when a test fails.
"""
from __future__ import annotations

import csv
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from helpers import (HAPROXY, ServerProcess, closed_by_server, connect_from, echo_roundtrip, free_port,
                     listeners, listening, needs_haproxy, scrape, wait_until)

pytestmark = needs_haproxy

CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "haproxy" / "haproxy.cfg"
NAMES = ("fe1", "fe2", "fe3")   # the server lines of the shipped file
CLIENT = "127.0.0.5"            # clients' source address; HAProxy reaches the instances from 127.0.0.1
INTER_S, FALL = 0.2, 2
CHECKS = {"ECHO_LB_INTER": "200ms", "ECHO_LB_FASTINTER": "200ms", "ECHO_LB_DOWNINTER": "200ms",
          "ECHO_LB_FALL": str(FALL), "ECHO_LB_RISE": "1"}
METRICS_URL = r"metrics at (http://\S+/metrics)"


# ---------------------------------------------------------------- the cluster

@dataclass
class Cluster:
    haproxy: subprocess.Popen
    front: tuple[str, int]
    stats_socket: str
    log_path: str
    instances: dict[str, ServerProcess]      # server name in haproxy.cfg -> its fastecho
    metrics: dict[str, str] = field(default_factory=dict)

    def command(self, line: str, timeout: float = 5.0) -> str:
        """One command on HAProxy's admin socket; its whole answer."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(timeout)
            s.connect(self.stats_socket)
            s.sendall(line.encode() + b"\n")
            answer = bytearray()
            while chunk := s.recv(65536):
                answer += chunk
        return answer.decode()

    def servers(self) -> dict[str, dict[str, str]]:
        """`show stat` rows of backend fastecho's servers, by name (status, scur, check_status...)."""
        text = self.command("show stat").lstrip("# ")
        return {row["svname"]: row for row in csv.DictReader(io.StringIO(text))
                if row["pxname"] == "fastecho" and row["svname"] in NAMES}

    def status(self, name: str) -> str:
        return self.servers()[name]["status"]

    def wait_status(self, name: str, status: str, timeout: float = 5.0) -> float:
        """Seconds until HAProxy shows server name in status (fails past timeout)."""
        start = time.monotonic()
        seen: list[str] = []
        ok = wait_until(lambda: seen.append(self.status(name)) or seen[-1] == status, timeout, 0.02)
        assert ok, f"{name} still {seen[-1]!r}, not {status!r}, after {timeout}s\n{self.log()}"
        return time.monotonic() - start

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def connect(self, timeout: float = 10.0) -> socket.socket:
        return connect_from(CLIENT, self.front, timeout=timeout)

    def owner(self, client_port: int, timeout: float = 5.0) -> str:
        """The instance that served the client with this source port, from the access logs.

        Its open line must name the client's own address, with HAProxy's connection after
        `via`: the PROXY v2 header carried it."""
        pattern = re.compile(rf"\] open {re.escape(CLIENT)}:{client_port} via 127\.0\.0\.1:(\d+)$",
                             re.MULTILINE)
        found: list[str] = []

        def look() -> bool:
            found.extend(name for name, server in self.instances.items()
                         if pattern.search(server.stderr()))
            return bool(found)

        assert wait_until(look, timeout), f"no instance logged client port {client_port}"
        assert len(found) == 1, f"client port {client_port} logged by {found}"
        return found[0]

    def opened(self, name: str) -> set[int]:
        """Client source ports of the proxied connections instance name has logged (checks excluded)."""
        return {int(port) for port in re.findall(rf"\] open {re.escape(CLIENT)}:(\d+) via ",
                                                 self.instances[name].stderr())}


def haproxy_env(front: int, ports: dict[str, int], stats_socket: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(CHECKS)
    env.update({"ECHO_LB_BIND": f"127.0.0.1:{front}", "ECHO_LB_STATS_SOCKET": stats_socket,
                "ECHO_LB_MAXCONN": "200",  # ~430 fds: under any hard limit a CI runner has
                "ECHO_LB_USER": "",        # no privilege drop: the test may not be root
                "ECHO_LB_SLOWSTART": "0s"})
    env.update({f"ECHO_LB_{name.upper()}": f"127.0.0.1:{port}" for name, port in ports.items()})
    return env


@pytest.fixture
def cluster(serve, tmp_path):
    """HAProxy with the shipped haproxy.cfg in front of three fastecho instances, all UP."""
    instances, metrics, ports = {}, {}, {}
    for name in NAMES:
        server = serve("--listen", "tcp+proxy://127.0.0.1:0", "--proxy-from", "127.0.0.1/32",
                       "--threads", "2", "--grace", "10", "--access-log", "--metrics-port", "0",
                       port=None)
        instances[name] = server
        metrics[name] = server.wait_for_stderr(METRICS_URL)[1]
        [(scheme, _, port)] = listeners(server)
        assert scheme == "tcp+proxy"
        ports[name] = port
    # A short directory: an AF_UNIX path has room for 107 bytes, pytest's tmp_path may not.
    socket_dir = tempfile.mkdtemp(prefix="fe-haproxy-")
    stats_socket = os.path.join(socket_dir, "admin.sock")
    front = free_port()
    log_path = str(tmp_path / "haproxy.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([HAPROXY, "-f", str(CONFIG), "-db"], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT,
                                env=haproxy_env(front, ports, stats_socket))
    c = Cluster(proc, ("127.0.0.1", front), stats_socket, log_path, instances, metrics)
    try:
        started = wait_until(lambda: proc.poll() is not None
                             or (listening(front) and os.path.exists(stats_socket)), 10)
        assert started and proc.poll() is None, f"haproxy did not start: {c.log()}"
        # Up, and checked: L7OK is the echo check passing (PROXY header included).
        assert wait_until(lambda: all(row["status"] == "UP" and row["check_status"] == "L7OK"
                                      for row in c.servers().values()), 10), c.servers()
        yield c
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        shutil.rmtree(socket_dir, ignore_errors=True)
        # The instances are the serve fixture's to stop (SIGTERM), after this.


def closes(url: str, reason: str) -> float:
    return scrape(url).get(f'fastecho_closes_total{{reason="{reason}"}}', 0)


def echo_once(c: Cluster, payload: bytes) -> int:
    """A new connection through HAProxy: payload echoed, a clean close both ways; its source port."""
    with c.connect() as s:
        port = s.getsockname()[1]
        assert echo_roundtrip(s, payload) == payload
        s.shutdown(socket.SHUT_WR)
        assert closed_by_server(s), "no FIN after the echo"
    return port


def hold(c: Cluster, count: int) -> list[tuple[socket.socket, str]]:
    """count clients held open, each checked by an echo, with the instance that serves it."""
    held = []
    try:
        for i in range(count):
            s = c.connect()
            held.append(s)
            assert echo_roundtrip(s, b"hello %d\n" % i) == b"hello %d\n" % i
    except BaseException:
        for s in held:
            s.close()
        raise
    return [(s, c.owner(s.getsockname()[1])) for s in held]


# ---------------------------------------------------------------- spread, real addresses

def test_leastconn_spreads_clients_over_all_three_and_each_sees_the_real_client_address(cluster):
    c = cluster
    held = hold(c, 30)
    try:
        counts = {name: sum(owner == name for _, owner in held) for name in NAMES}
        # leastconn with held sessions: each new one goes to an instance holding the fewest.
        assert max(counts.values()) - min(counts.values()) <= 1, counts
        # HAProxy's own count of sessions per server agrees.
        assert {name: int(row["scur"]) for name, row in c.servers().items()} == counts
        payloads = {}
        for s, _ in held:
            payloads[s] = os.urandom(5000)
            assert echo_roundtrip(s, payloads[s]) == payloads[s]
        for s, _ in held:
            s.shutdown(socket.SHUT_WR)
            assert closed_by_server(s)
        for i, (s, owner) in enumerate(held):
            port = s.getsockname()[1]
            expected = len(b"hello %d\n" % i) + len(payloads[s])
            # The instance logs the client's own address and port, and HAProxy's connection as via.
            line = c.instances[owner].wait_for_stderr(
                rf"\] close {re.escape(CLIENT)}:{port} via 127\.0\.0\.1:(\d+) in=(\d+) out=(\d+) "
                rf"duration=\S+ reason=eof$")
            assert int(line[1]) != port
            assert int(line[3]) == expected, line[0]
            # HAProxy's own log names the same instance for this client (option tcplog).
            haproxy_line = rf"^{re.escape(CLIENT)}:{port} \[[^\]]+\] echo fastecho/{owner} "
            assert wait_until(lambda: re.search(haproxy_line, c.log(), re.MULTILINE), 5), c.log()
    finally:
        for s, _ in held:
            s.close()
    for name in NAMES:
        # The checks spoke PROXY (none was a malformed header) and closed with FIN, not RST.
        assert closes(c.metrics[name], "proxy-invalid") == 0
        assert closes(c.metrics[name], "reset") == 0
        assert re.search(r"\] open 127\.0\.0\.1:\d+$", c.instances[name].stderr(), re.MULTILINE), \
            "no health check (PROXY LOCAL: the socket's own address) in the access log"


# ---------------------------------------------------------------- SIGKILL

def test_sigkilled_instance_is_marked_down_and_new_connections_keep_echoing(cluster):
    c = cluster
    held = hold(c, 9)
    try:
        victim = held[0][1]
        survivors = [name for name in NAMES if name != victim]
        on_victim = [s for s, owner in held if owner == victim]
        elsewhere = [s for s, owner in held if owner != victim]
        assert on_victim and elsewhere

        killed_at = time.monotonic()
        c.instances[victim].proc.kill()
        c.instances[victim].proc.wait(5)
        # New connections from the moment of the kill: until the checks see it, the dead instance
        # is still in leastconn's choice, and a connection sent there is refused by the kernel;
        # HAProxy retries it on another instance (retries 3, option redispatch 1).
        before_down = []
        while c.status(victim) != "DOWN":
            assert time.monotonic() - killed_at < 5, f"{victim} not DOWN within 5s\n{c.log()}"
            before_down.append(echo_once(c, b"during %d\n" % len(before_down)))
        down_after = time.monotonic() - killed_at
        # fall checks, the first within one inter of the kill: generously bounded.
        assert down_after < FALL * INTER_S + 1.5, down_after
        assert "Server fastecho/%s is DOWN" % victim in c.log()
        # The window was real: HAProxy tried the dead instance and redispatched ("+N" retries in
        # its log line, where N counts the retries).
        redispatched = rf"^{re.escape(CLIENT)}:(\d+) \[[^\]]+\] echo fastecho/\S+ \S+ \d+ \S+ \S+/\+\d+ "
        assert wait_until(lambda: set(map(int, re.findall(redispatched, c.log(), re.MULTILINE)))
                          & set(before_down), 5), c.log()

        after_down = [echo_once(c, os.urandom(2000)) for _ in range(30)]
        for port in before_down + after_down:
            assert c.owner(port) in survivors
        assert all(c.opened(name) for name in survivors)

        # The victim's sessions break (expected: what they had in flight died with the
        # process); HAProxy passes the close on at once.
        for s in on_victim:
            assert closed_by_server(s, timeout=5)
        # The others are untouched.
        for s in elsewhere:
            assert echo_roundtrip(s, b"still here\n") == b"still here\n"
        assert c.status(victim) == "DOWN"
        assert all(c.status(name) == "UP" for name in survivors)
    finally:
        for s, _ in held:
            s.close()


# ---------------------------------------------------------------- SIGTERM: drain

class Stream:
    """A client that sends random data in chunks, with a reader thread taking the echo, until told
    to finish: then a few more chunks, a half-close, and the echo read to EOF."""

    CHUNK = 32 * 1024

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.sent = bytearray()
        self.received = bytearray()
        self.finish = threading.Event()
        self.errors: list[BaseException] = []
        self.eof = False
        self.sock.settimeout(10)
        self.sender = threading.Thread(target=self._send, daemon=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.sender.start()
        self.reader.start()

    def _send(self) -> None:
        try:
            after_finish = 0
            while after_finish < 16:
                chunk = os.urandom(self.CHUNK)
                self.sock.sendall(chunk)
                self.sent += chunk
                if self.finish.is_set():
                    after_finish += 1
                time.sleep(0.005)
            self.sock.shutdown(socket.SHUT_WR)
        except BaseException as e:  # reported by join()
            self.errors.append(e)

    def _read(self) -> None:
        try:
            while data := self.sock.recv(1 << 20):
                self.received += data
            self.eof = True
        except BaseException as e:
            self.errors.append(e)

    def chunks_sent(self) -> int:
        return len(self.sent) // self.CHUNK

    def join(self, timeout: float = 15.0) -> None:
        self.sender.join(timeout)
        self.reader.join(timeout)
        assert not self.sender.is_alive() and not self.reader.is_alive(), "stream stuck"
        assert not self.errors, self.errors


def test_sigtermed_instance_drains_every_byte_and_gets_no_new_connections(cluster):
    c = cluster
    held = hold(c, 6)
    streams: list[Stream] = []
    try:
        victim = held[0][1]
        survivors = [name for name in NAMES if name != victim]
        server = c.instances[victim]
        [(_, _, victim_port)] = listeners(server)
        greeted = {s: len(b"hello %d\n" % i) for i, (s, _) in enumerate(held)}
        streams = [Stream(s) for s, owner in held if owner == victim]
        assert len(streams) == 2
        assert wait_until(lambda: all(st.chunks_sent() >= 16 for st in streams), 10)
        server.proc.send_signal(signal.SIGTERM)
        at_sigterm = [len(st.sent) for st in streams]
        # The drain closes the listener: HAProxy's checks are refused from then on.
        assert wait_until(lambda: not listening(victim_port), 5), "listener still open"
        # New connections meanwhile (before HAProxy notices, too) go to the others.
        new_ports = [echo_once(c, b"new %d\n" % i) for i in range(6)]
        c.wait_status(victim, "DOWN", timeout=5)
        at_down = [len(st.sent) for st in streams]
        new_ports += [echo_once(c, b"new %d\n" % i) for i in range(6, 12)]
        assert all(not st.finish.is_set() and not st.errors for st in streams), \
            "the streams must still be sending when the instance is DOWN"
        # Only now the clients finish: they have kept sending through the drain and after
        # HAProxy marked the instance DOWN (no on-marked-down shutdown-sessions).
        for st in streams:
            st.finish.set()
        for st in streams:
            st.join()
            assert st.eof, "no clean close"
            assert len(st.received) == len(st.sent), (len(st.received), len(st.sent))
            assert st.received == st.sent
        assert server.proc.wait(15) == 0  # exits once its last connection closed, within --grace
        for st in streams:
            port = st.sock.getsockname()[1]
            line = server.wait_for_stderr(rf"\] close {re.escape(CLIENT)}:{port} via \S+ in=(\d+) "
                                          rf"out=(\d+) duration=\S+ reason=eof$")
            assert int(line[2]) == greeted[st.sock] + len(st.sent), line[0]
        for port in new_ports:
            assert c.owner(port) in survivors
        assert not c.opened(victim) & set(new_ports)
        # Data went through the instance all along: between the SIGTERM and the DOWN, and after.
        for st, sigterm, down in zip(streams, at_sigterm, at_down):
            assert sigterm < down < len(st.sent), (sigterm, down, len(st.sent))
    finally:
        for st in streams:
            st.finish.set()
        for s, _ in held:
            s.close()
        for st in streams:
            st.sender.join(5)
            st.reader.join(5)


# ---------------------------------------------------------------- the documented drain

def test_drain_through_the_stats_socket_then_sigterm_loses_nothing(cluster):
    c = cluster
    held = hold(c, 6)
    try:
        victim = held[0][1]
        survivors = [name for name in NAMES if name != victim]
        mine = [s for s, owner in held if owner == victim]
        # 1. HAProxy sends the instance no new session; its open ones carry on.
        assert c.command(f"set server fastecho/{victim} state drain").strip() == ""
        assert c.status(victim) == "DRAIN"
        new_ports = [echo_once(c, b"new %d\n" % i) for i in range(12)]
        assert {c.owner(port) for port in new_ports} == set(survivors)
        for s in mine:
            assert echo_roundtrip(s, b"still served\n") == b"still served\n"
        # 2. Its sessions end (here: the clients leave); scur shows when none is left.
        for s in mine:
            s.shutdown(socket.SHUT_WR)
            assert closed_by_server(s)
        assert wait_until(lambda: c.servers()[victim]["scur"] == "0", 5), c.servers()[victim]
        # 3. SIGTERM: nothing left to wait for, so it exits at once, 0.
        started = time.monotonic()
        assert c.instances[victim].stop(signal.SIGTERM, timeout=10) == 0
        assert time.monotonic() - started < 5
        c.wait_status(victim, "DOWN")  # in drain and checked: its checks now fail
        assert echo_once(c, b"after\n")
    finally:
        for s, _ in held:
            s.close()
