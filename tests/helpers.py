"""Test helpers: real `fastecho serve` subprocesses on 127.0.0.1 ephemeral ports.

Every wait here is bounded, and every process started is stopped and reaped.
"""
from __future__ import annotations

import contextlib
import os
import re
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from fastecho.bench import procstat

# Runs a test with bulk echo through pipes (--splice) on and off, where the same must hold.
SPLICE = pytest.mark.parametrize("splice", ["on", "off"])

START_TIMEOUT = 15.0
STOP_TIMEOUT = 20.0
LISTENING = re.compile(rb"listening on (?:\[(?P<v6>[^\]]+)\]|(?P<v4>[^\s:]+)):(?P<port>\d+)")


def fastecho_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "fastecho", *args]


def child_env(changes: dict[str, str | None] | None) -> dict[str, str] | None:
    """This process's environment with changes applied (a None value removes the name)."""
    if not changes:
        return None
    env = dict(os.environ)
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def run_cli(*args: str, timeout: float = 30.0, env: dict[str, str | None] | None = None,
            input: bytes | None = None, cwd=None,
            prefix: list[str] | None = None) -> subprocess.CompletedProcess:
    """Run `fastecho ARGS` (after a prefix command such as prlimit) to completion, capturing output."""
    return subprocess.run((prefix or []) + fastecho_command(*args), capture_output=True, timeout=timeout,
                          stdin=subprocess.DEVNULL if input is None else None, input=input,
                          env=child_env(env), cwd=cwd)


def reap(proc: subprocess.Popen) -> None:
    """Kill proc if it still runs, wait for it, and close the pipes the test opened."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def read_line(proc: subprocess.Popen, timeout: float) -> bytes:
    """One line of proc's stdout, or b'' if none arrives within timeout."""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            return b""
    return proc.stdout.readline()


@dataclass
class ServerProcess:
    proc: subprocess.Popen
    host: str
    port: int
    stderr_path: str
    _stopped: bool = field(default=False)
    listening_line: str = ""  # the start-up line on stdout, as printed

    @property
    def pid(self) -> int:
        return self.proc.pid

    def connect(self, timeout: float = 10.0) -> socket.socket:
        s = socket.create_connection((self.host, self.port), timeout=timeout)
        return s

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Send sig and wait for the exit code; kill if it does not exit in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"server did not exit within {timeout}s of signal {sig}")
        finally:
            self._stopped = True
            self.proc.stdout.close()

    def stderr(self) -> str:
        with open(self.stderr_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def wait_for_stderr(self, pattern: str, timeout: float = 10.0) -> re.Match:
        """The first match of pattern in the server's stderr, waiting up to timeout for it."""
        regex = re.compile(pattern, re.MULTILINE)
        found: list[re.Match] = []

        def check() -> bool:
            match = regex.search(self.stderr())
            if match:
                found.append(match)
            return match is not None

        assert wait_until(check, timeout), f"no {pattern!r} in stderr: {self.stderr()}"
        return found[0]


def start_server(tmp_path, *args: str, prefix: list[str] | None = None,
                 env: dict[str, str] | None = None, port: str | None = "0",
                 pass_fds: tuple[int, ...] = ()) -> ServerProcess:
    """Start `fastecho serve --port 0 ARGS` (port=None: no --port) and wait for its listening line.

    env adds to (or, with a None value, removes from) this process's environment.
    """
    stderr_path = str(tmp_path / f"server-{time.monotonic_ns()}.err")
    port_args = ["--port", port] if port is not None else []
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen((prefix or []) + fastecho_command("serve", *port_args, *args),
                                stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL,
                                env=child_env(env), pass_fds=pass_fds)
    line = read_line(proc, START_TIMEOUT)
    match = LISTENING.search(line)
    if not match:
        reap(proc)
        with open(stderr_path, encoding="utf-8", errors="replace") as f:
            raise AssertionError(f"server did not start: {line!r} {f.read()}")
    host = (match["v6"] or match["v4"]).decode()
    server = ServerProcess(proc, host, int(match["port"]), stderr_path,
                           listening_line=line.decode(errors="replace").strip())
    # Under the io_backend fixture the server runs the backend it names: the
    # parametrization tests what it says it tests.
    asked = (child_env(env) or os.environ).get("FASTECHO_IO_BACKEND")
    if asked in ("epoll", "io_uring") and "--io-backend" not in args and prefix is None:
        assert server.listening_line.endswith(f", {asked})"), server.listening_line
    return server


def reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0, which sends RST instead of FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def echo_roundtrip(sock: socket.socket, payload: bytes, timeout: float = 10.0) -> bytes:
    """Send payload and read exactly len(payload) bytes back."""
    sock.settimeout(timeout)
    sock.sendall(payload)
    return recv_exactly(sock, len(payload), timeout)


def stream(sock: socket.socket, pieces: list[bytes], timeout: float, pause: float = 0.0) -> bytes:
    """Sends pieces (pause seconds after each) from a thread while reading the echo here;
    returns what came back once it is as long as what was sent."""
    total = sum(len(p) for p in pieces)
    failed: list[BaseException] = []

    def send() -> None:
        try:
            for piece in pieces:
                sock.sendall(piece)
                if pause:
                    time.sleep(pause)
        except OSError as e:
            failed.append(e)

    sock.settimeout(timeout)
    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        echoed = recv_exactly(sock, total, timeout)
    finally:
        sender.join(timeout)
    assert not failed, failed
    return echoed


def recv_exactly(sock: socket.socket, n: int, timeout: float = 10.0) -> bytes:
    sock.settimeout(timeout)
    chunks = bytearray()
    deadline = time.monotonic() + timeout
    while len(chunks) < n:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out with {len(chunks)} of {n} bytes")
        data = sock.recv(min(1 << 20, n - len(chunks)))
        if not data:
            raise AssertionError(f"EOF after {len(chunks)} of {n} bytes")
        chunks += data
    return bytes(chunks)


def proc_fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def proc_thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


proc_rss_kib = procstat.rss_kib
proc_cpu_seconds = procstat.cpu_seconds


def pid_alive(pid: int) -> bool:
    """True while pid runs (a zombie nobody has reaped yet counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def file_text(path) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def scrape(url: str, timeout: float = 10.0) -> dict[str, float]:
    """GET a Prometheus /metrics page; {sample name with labels: value}."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=timeout) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


METRICS_URL = r"metrics at (http://\S+/metrics)"  # the server's log line (started with --metrics-port)


def metric(server: ServerProcess, name: str) -> float:
    """One sample of the server's /metrics (0 when absent)."""
    return scrape(server.wait_for_stderr(METRICS_URL)[1]).get(name, 0)


def fds_besides_pipes(server: ServerProcess) -> int:
    """The server's open fds less those of its splice pipes (held or pooled; 2 fds each)."""
    fds = proc_fd_count(server.pid)
    return fds - 2 * int(metric(server, "fastecho_splice_pipes"))


def wait_until(predicate, timeout: float, interval: float = 0.05) -> bool:
    """Poll predicate until it is true or timeout passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def assert_one_line_error(result, code: int = 2, *fragments: str) -> str:
    """result failed with exit code and exactly one `fastecho: error:` line holding fragments."""
    err = result.stderr.decode()
    assert result.returncode == code, (result.returncode, err)
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("fastecho: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def closed_by_server(sock: socket.socket, timeout: float = 5.0) -> bool:
    """True once the server closes sock (FIN or RST) within timeout."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def connect_from(source: str, address: tuple[str, int], timeout: float = 5.0) -> socket.socket:
    """A connection to address from the local address source (e.g. 127.0.0.2)."""
    s = socket.socket()
    s.bind((source, 0))
    s.settimeout(timeout)
    s.connect(address)
    return s


# ------------------------------------------------------------- PROXY protocol
# Headers as HAProxy's proxy-protocol.txt defines them, for tcp+proxy:// listeners.

LISTENER = re.compile(r"(\[[^\]]+\]|[^\s,\[\]]+):(\d+) \(([a-z]+(?:\+proxy)?)\)")
PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
PROXY_V2_LOCAL, PROXY_V2_PROXY = 0x0, 0x1
PROXY_V2_UNSPEC, PROXY_V2_INET, PROXY_V2_INET6 = 0x0, 0x1, 0x2
PROXY_V2_STREAM = 0x1


def listeners(server: ServerProcess) -> list[tuple[str, str, int]]:
    """(scheme, host, port) of each listener named in the start-up line, in its order."""
    return [(scheme, host.strip("[]"), int(port))
            for host, port, scheme in LISTENER.findall(server.listening_line)]


def proxy_v1(source: tuple[str, int], dest: tuple[str, int], family: str | None = None) -> bytes:
    """`PROXY TCP4|TCP6 SRC DST SPORT DPORT\r\n` (the family from the source unless given)."""
    family = family or ("TCP6" if ":" in source[0] else "TCP4")
    return f"PROXY {family} {source[0]} {dest[0]} {source[1]} {dest[1]}\r\n".encode()


def proxy_v2_tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("!BH", kind, len(value)) + value


def proxy_v2(source: tuple[str, int] | None = None, dest: tuple[str, int] | None = None, *,
             command: int = PROXY_V2_PROXY, version: int = 2, family: int | None = None,
             protocol: int | None = None, addresses: bytes | None = None, tlvs: bytes = b"",
             length: int | None = None, signature: bytes = PROXY_V2_SIGNATURE) -> bytes:
    """A v2 binary header. The family follows the source (none: AF_UNSPEC) and the transport the
    family, unless given; addresses and length (of addresses + TLVs) are computed unless given,
    to build bad ones."""
    if family is None:
        family = PROXY_V2_UNSPEC if source is None else (
            PROXY_V2_INET6 if ":" in source[0] else PROXY_V2_INET)
    if protocol is None:  # UNSPEC is the whole byte 0x00; an address family is TCP (STREAM)
        protocol = PROXY_V2_UNSPEC if family == PROXY_V2_UNSPEC else PROXY_V2_STREAM
    if addresses is None:
        addresses = b""
        if source is not None:
            af = socket.AF_INET6 if ":" in source[0] else socket.AF_INET
            addresses = (socket.inet_pton(af, source[0]) + socket.inet_pton(af, dest[0])
                         + struct.pack("!HH", source[1], dest[1]))
    body = addresses + tlvs
    if length is None:
        length = len(body)
    return (signature + bytes([(version << 4) | command, (family << 4) | protocol])
            + struct.pack("!H", length) + body)


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as PP2_TYPE_CRC32C uses."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def with_crc32c(header: bytes) -> bytes:
    """header (a v2 one whose first TLV is a zeroed PP2_TYPE_CRC32C) with that CRC filled in."""
    family = header[13] >> 4
    at = 16 + {PROXY_V2_INET: 12, PROXY_V2_INET6: 36}[family]
    assert header[at:at + 7] == b"\x03\x00\x04\x00\x00\x00\x00", "no zeroed CRC32C TLV first"
    return header[:at + 3] + struct.pack("!I", crc32c(header)) + header[at + 7:]


def ipv6_loopback() -> bool:
    """Whether this machine can bind ::1 (containers without IPv6 cannot)."""
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


# ---------------------------------------------------------------- HAProxy

HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
needs_haproxy = pytest.mark.skipif(
    HAPROXY is None, reason="haproxy is not installed (apt-get install haproxy; .ci/run installs it)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    """True if a new server could listen on 127.0.0.1:port (connections may sit in TIME_WAIT)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:
            return False
    return True


def listening(port: int) -> bool:
    """Whether 127.0.0.1:port is in LISTEN state (read from /proc: no connection is made)."""
    local = "%08X:%04X" % (int.from_bytes(socket.inet_aton("127.0.0.1"), sys.byteorder), port)
    with open("/proc/net/tcp") as f:
        return any(fields[1] == local and fields[3] == "0A"
                   for fields in (line.split() for line in list(f)[1:]))


# ---------------------------------------------------------------- running out of fds

@contextlib.contextmanager
def fd_starved_server(serve, *args: str) -> Iterator[tuple[ServerProcess, list[socket.socket]]]:
    """A server whose RLIMIT_NOFILE is 64, soft and hard (so it cannot raise it), and
    120 clients connected to it: far more than it has fds for. The clients are
    closed on the way out; the server is the serve fixture's to stop."""
    server = serve("--threads", "2", *args, prefix=["prlimit", "--nofile=64:64"])
    clients: list[socket.socket] = []
    try:
        for _ in range(120):
            clients.append(socket.create_connection((server.host, server.port), timeout=5))
        yield server, clients
    finally:
        for s in clients:
            s.close()
