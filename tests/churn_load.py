"""A load for restart tests: long-lived and short-lived echo connections that check every byte.

    python churn_load.py HOST PORT --steady N --churn M --seconds S

Keeps N connections open, each sending chunks (1 to 4096 bytes of a pattern
that differs per connection and per chunk) and reading each echo back whole,
and M slots that each connect, echo one message, close, and connect again, as
fast as they can. Prints "ready" once the N connections are open, then, after
S seconds (every open exchange finishes first), one JSON line of counts:
connects, refused, reset, eof (the server closed early), timeouts,
mismatches (an echoed byte differs), bytes_checked, and the first few errors.
Exit 0 whatever it counted: the caller judges. Every wait is bounded.
"""
from __future__ import annotations

import argparse
import asyncio
import errno
import json
import random
import resource
import socket
import sys
import threading
import time
from collections import Counter

TIMEOUT = 10.0  # any single connect or echo
MAX_CHUNK = 4096


def payload(rng: random.Random, size: int) -> bytes:
    return rng.randbytes(size)


class Load:
    def __init__(self, host: str, port: int, seconds: float) -> None:
        self.host, self.port, self.seconds = host, port, seconds
        self.counts: Counter[str] = Counter()
        self.errors: list[str] = []
        self.stop_at = 0.0
        self.lock = threading.Lock()

    def fail(self, kind: str, what: str) -> None:
        with self.lock:
            self.counts[kind] += 1
            if len(self.errors) < 10:
                self.errors.append(f"{kind}: {what}")

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        try:
            pair = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), TIMEOUT)
        except ConnectionRefusedError as e:
            self.fail("refused", repr(e))
            return None
        except (ConnectionResetError, BrokenPipeError) as e:
            self.fail("reset", f"connect: {e!r}")
            return None
        except (asyncio.TimeoutError, TimeoutError):
            self.fail("timeouts", "connect")
            return None
        except OSError as e:
            self.fail("connect_errors", repr(e))
            return None
        self.counts["connects"] += 1
        return pair

    async def exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       data: bytes) -> bool:
        try:
            writer.write(data)
            await asyncio.wait_for(writer.drain(), TIMEOUT)
            echoed = await asyncio.wait_for(reader.readexactly(len(data)), TIMEOUT)
        except (ConnectionResetError, BrokenPipeError) as e:
            self.fail("reset", repr(e))
            return False
        except asyncio.IncompleteReadError as e:
            self.fail("eof", f"{len(e.partial)} of {len(data)} bytes, then EOF")
            return False
        except (asyncio.TimeoutError, TimeoutError):
            self.fail("timeouts", "echo")
            return False
        if echoed != data:
            self.fail("mismatches", f"{len(data)} bytes sent, echo differs")
            return False
        self.counts["bytes_checked"] += len(data)
        return True

    @staticmethod
    async def close(writer: asyncio.StreamWriter) -> None:
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), TIMEOUT)
        except (OSError, asyncio.TimeoutError, TimeoutError):
            pass

    async def steady(self, index: int, ready: asyncio.Event, opened: list[int], total: int) -> None:
        rng = random.Random(index)
        pair = await self.connect()
        opened[0] += 1
        if opened[0] == total:
            ready.set()
        if pair is None:
            return
        reader, writer = pair
        await ready.wait()
        while time.monotonic() < self.stop_at:
            if not await self.exchange(reader, writer, payload(rng, rng.randint(1, MAX_CHUNK))):
                break
            self.counts["steady_exchanges"] += 1
            await asyncio.sleep(rng.uniform(0, 0.02))
        await self.close(writer)

    async def churn(self, index: int, ready: asyncio.Event) -> None:
        rng = random.Random(1_000_000 + index)
        await ready.wait()
        while time.monotonic() < self.stop_at:
            pair = await self.connect()
            if pair is None:
                await asyncio.sleep(0.01)
                continue
            reader, writer = pair
            if await self.exchange(reader, writer, payload(rng, rng.randint(1, 1024))):
                self.counts["churn_cycles"] += 1
            await self.close(writer)

    def tight(self, index: int) -> None:
        """A thread that connects, echoes a few bytes and closes, back to back, with blocking
        sockets (faster than the event loop, to hit the moment a listener closes)."""
        rng = random.Random(2_000_000 + index)
        counts: Counter[str] = Counter()
        while time.monotonic() < self.stop_at:
            data = payload(rng, rng.randint(1, 64))
            try:
                sock = socket.create_connection((self.host, self.port), timeout=TIMEOUT)
            except ConnectionRefusedError as e:
                self.fail("refused", f"tight: {e!r}")
                continue
            except OSError as e:
                if e.errno == errno.EADDRNOTAVAIL:
                    # This client ran out of ephemeral ports (TIME_WAIT after
                    # tens of thousands of connects): not the server's doing.
                    counts["client_ports_exhausted"] += 1
                    time.sleep(0.01)
                    continue
                self.fail("reset" if isinstance(e, ConnectionResetError) else "connect_errors", f"tight connect: {e!r}")
                continue
            counts["connects"] += 1
            try:
                with sock:
                    sock.sendall(data)
                    echoed = b""
                    while len(echoed) < len(data):
                        chunk = sock.recv(len(data) - len(echoed))
                        if not chunk:
                            break
                        echoed += chunk
            except (ConnectionResetError, BrokenPipeError) as e:
                self.fail("reset", f"tight: {e!r}")
                continue
            except TimeoutError:
                self.fail("timeouts", "tight echo")
                continue
            if len(echoed) < len(data):
                self.fail("eof", f"tight: {len(echoed)} of {len(data)} bytes, then EOF")
            elif echoed != data:
                self.fail("mismatches", "tight: echo differs")
            else:
                counts["bytes_checked"] += len(data)
                counts["tight_cycles"] += 1
        with self.lock:
            self.counts.update(counts)

    async def run(self, steady: int, churn: int, tight: int = 0) -> None:
        ready = asyncio.Event()
        opened = [0]
        self.stop_at = time.monotonic() + 3600  # set for real once the steady ones are open
        tasks = [asyncio.create_task(self.steady(i, ready, opened, steady)) for i in range(steady)]
        tasks += [asyncio.create_task(self.churn(i, ready)) for i in range(churn)]
        if steady == 0:
            ready.set()
        await asyncio.wait_for(ready.wait(), 60)
        self.stop_at = time.monotonic() + self.seconds
        threads = [threading.Thread(target=self.tight, args=(i,), daemon=True) for i in range(tight)]
        for thread in threads:
            thread.start()
        print("ready", flush=True)
        await asyncio.wait_for(asyncio.gather(*tasks), self.seconds + 4 * TIMEOUT)
        for thread in threads:
            await asyncio.to_thread(thread.join, self.seconds + 4 * TIMEOUT)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--steady", type=int, default=500)
    parser.add_argument("--churn", type=int, default=500)
    parser.add_argument("--tight", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.steady + args.churn + args.tight + 256
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    load = Load(args.host, args.port, args.seconds)
    try:
        asyncio.run(load.run(args.steady, args.churn, args.tight))
    except (asyncio.TimeoutError, TimeoutError):
        load.fail("timeouts", "the load as a whole")
    print(json.dumps({**load.counts, "errors": load.errors}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
