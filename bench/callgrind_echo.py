"""Instructions per echoed message in fastecho's worker, counted by callgrind.

CPU time on a shared 2-CPU VM is noisy; an instruction count is not. This
runs ``PYTHON -m fastecho serve --threads 1`` under
``valgrind --tool=callgrind --toggle-collect=fe_worker_main*`` (only the
worker loop and what it calls are counted: libc's recv/send wrappers, not
the kernel), drives it with the C load generator until MESSAGES echoes are
verified, stops it with SIGTERM, and divides the worker's instructions by
the messages the server echoed (bytes received / size: warm-up included,
since the worker counted those too):

    python bench/callgrind_echo.py --conns 64 --size 1024 --messages 200000
    python bench/callgrind_echo.py --python /other/.venv/bin/python -- --splice off

Arguments after ``--`` go to ``fastecho serve``. Needs valgrind.
"""
from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from fastecho.bench._loadgen import run_load

HOST = "127.0.0.1"
LISTENING = re.compile(rb"listening on \S+:(\d+)")
START_TIMEOUT_S = 120.0  # Python starts slowly under valgrind
STOP_TIMEOUT_S = 120.0


def start(python: str, out: Path, serve_args: list[str]) -> tuple[subprocess.Popen[bytes], int, Path]:
    """The server under callgrind, and its port once it listens."""
    stderr_path = out.with_suffix(".stderr")
    command = ["valgrind", "--tool=callgrind", "--toggle-collect=fe_worker_main*",
               f"--callgrind-out-file={out}", python, "-m", "fastecho", "serve", "--host", HOST,
               "--port", "0", "--threads", "1", "--metrics-port", "0", *serve_args]
    stderr = stderr_path.open("wb")
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        match = LISTENING.search(stderr_path.read_bytes())
        if match:
            return process, int(match.group(1)), stderr_path
        if process.poll() is not None:
            break
        time.sleep(0.2)
    process.kill()
    process.wait()
    sys.exit(f"callgrind_echo: the server did not start:\n{stderr_path.read_text(errors='replace')[-2000:]}")


def counted_instructions(out: Path) -> int:
    """The Ir total of every callgrind dump of the run (one per thread that ran)."""
    total = 0
    for dump in out.parent.glob(out.name + "*"):
        for line in dump.read_text(errors="replace").splitlines():
            if line.startswith("totals:") or line.startswith("summary:"):
                total += int(line.split()[1])
                break
    return total


def bytes_received(stderr_path: Path) -> int:
    """The server's own count of the bytes it received, from its metrics."""
    url = re.search(rb"metrics at (\S+)", stderr_path.read_bytes())
    if url is None:
        return 0
    with urllib.request.urlopen(url.group(1).decode(), timeout=60) as response:
        text = response.read().decode()
    found = re.search(r"^fastecho_bytes_received_total (\S+)$", text, re.MULTILINE)
    return int(float(found.group(1))) if found else 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default=sys.executable, help="the build to measure (its Python)")
    parser.add_argument("--conns", type=int, default=64)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--depth", type=int, default=1)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("serve_args", nargs="*", help="after --: more fastecho serve options")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        sys.exit("callgrind_echo: valgrind is not installed")
    with tempfile.TemporaryDirectory(prefix="callgrind-echo-") as tmp:
        out = Path(tmp) / "callgrind.out"
        process, port, stderr_path = start(args.python, out, args.serve_args)
        try:
            result = run_load(HOST, port, args.conns, args.size, args.depth, warmup=0.0, duration=600.0,
                              max_messages=args.messages, connect_timeout=60.0)
            received = bytes_received(stderr_path)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        instructions = counted_instructions(out)
    # The server echoed what it received; connections still had a message in
    # flight when the load generator stopped counting.
    messages = received / args.size if received else result["messages"]
    print(f"{args.conns} conns x {args.size} B, depth {args.depth}: {instructions} instructions in "
          f"the worker loop (fe_worker_main*) for {messages:.0f} messages = "
          f"{instructions / messages:.1f} per message ({' '.join([args.python, *args.serve_args])})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
