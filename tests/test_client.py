"""`fastecho client HOST PORT`: the original's line client, in pipes and against failures."""
from __future__ import annotations

import os
import socket
import struct
import subprocess
import threading

import pytest

from helpers import fastecho_command, reap, run_cli


def one_error_line(result, code: int = 1) -> str:
    err = result.stderr.decode()
    assert result.returncode == code, (result.returncode, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("fastecho: error: ")
    return lines[0]


def test_pipe_prints_each_reply_and_exits_0_at_eof(shared_server):
    result = run_cli("client", shared_server.host, str(shared_server.port), input=b"a\nb\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"a\nb\n"
    assert result.stderr == b""  # no prompt when stdin is not a terminal


def test_replies_from_a_suffix_server_are_read_to_their_newline(serve):
    server = serve("--threads", "1", "--suffix", " server[echo]")
    result = run_cli("client", server.host, str(server.port), input=b"hello\nworld\n\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hello server[echo]\nworld server[echo]\n server[echo]\n"


def test_last_line_without_a_newline_is_still_sent(shared_server):
    result = run_cli("client", shared_server.host, str(shared_server.port), input=b"one\ntwo")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"one\ntwo\n"


def test_empty_input_exits_0(shared_server):
    result = run_cli("client", shared_server.host, str(shared_server.port), input=b"")
    assert result.returncode == 0 and result.stdout == b""


def test_line_bigger_than_the_socket_buffers_does_not_deadlock(shared_server):
    line = os.urandom(3 << 20).replace(b"\n", b"-") + b"\n"
    result = run_cli("client", shared_server.host, str(shared_server.port), input=line + b"end\n",
                     timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == line + b"end\n"


def test_replies_come_back_one_line_at_a_time(shared_server):
    proc = subprocess.Popen(fastecho_command("client", shared_server.host, str(shared_server.port)),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for word in (b"first", b"second"):
            proc.stdin.write(word + b"\n")
            proc.stdin.flush()
            assert proc.stdout.readline() == word + b"\n"  # before the next line is typed
        proc.stdin.close()
        assert proc.wait(20) == 0
    finally:
        reap(proc)


def test_connection_refused_is_one_line_exit_1():
    with socket.socket() as placeholder:  # bound but not listening: connect is refused
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
        line = one_error_line(run_cli("client", "127.0.0.1", str(port), input=b"a\n"))
    assert line == f"fastecho: error: cannot connect to 127.0.0.1:{port}: connection refused"


@pytest.fixture
def resetting_server():
    """A listener that reads one line, then resets the connection (SO_LINGER 0)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(20)

    def run():
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(20)
            conn.recv(100)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    listener.close()
    thread.join(20)


def test_connection_reset_is_one_line_exit_1(resetting_server):
    line = one_error_line(run_cli("client", "127.0.0.1", str(resetting_server), input=b"a\nb\n"))
    assert line == f"fastecho: error: connection to 127.0.0.1:{resetting_server} reset by the server"


def test_server_closing_after_the_error_line_is_one_line_exit_1(serve):
    server = serve("--threads", "1", "--suffix", "!", "--max-line", "8")
    result = run_cli("client", server.host, str(server.port), input=b"ok\nwaytoolongline\nmore\n")
    line = one_error_line(result)
    assert result.stdout.startswith(b"ok!\nerror: line longer than 8 bytes\n")
    assert line in (f"fastecho: error: connection closed by {server.host}:{server.port}",
                    f"fastecho: error: connection to {server.host}:{server.port} reset by the server")


@pytest.mark.parametrize("args", [["127.0.0.1"], ["127.0.0.1", "0"], ["127.0.0.1", "http"]])
def test_bad_client_arguments_exit_2(args):
    result = run_cli("client", *args, input=b"")
    one_error_line(result, code=2)
