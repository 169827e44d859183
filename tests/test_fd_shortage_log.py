"""Running out of fds is logged: one warning when accepting pauses, one when it resumes."""
from __future__ import annotations

import re
import time

from fastecho.server import FD_SHORTAGE_QUIET_SECONDS, FdShortage, FdShortageEvent
from helpers import fd_starved_server, wait_until

TICK = 0.1  # the server samples the counter once per tick
STARTED = re.compile(r"\] out of file descriptors: accepting paused \(limit (\d+); (\d+) connections open")
ENDED = re.compile(r"\] file descriptors available again: accepting resumed after (\d+\.\d)s; "
                   r"(\d+) accept attempts put off$", re.MULTILINE)


def feed(shortage: FdShortage, samples) -> list[tuple[float, FdShortageEvent]]:
    return [(t, e) for t, count in samples if (e := shortage.update(t, count)) is not None]


def test_a_flat_counter_is_no_shortage():
    assert feed(FdShortage(), [(i * TICK, 0) for i in range(100)]) == []


def test_a_long_shortage_gives_one_start_and_one_end():
    # The counter rises on every tick for a minute, then stops.
    samples = [(i * TICK, i) for i in range(1, 601)]
    samples += [(60 + i * TICK, 600) for i in range(1, 31)]
    events = feed(FdShortage(), samples)
    assert len(events) == 2
    (t_start, start), (t_end, end) = events
    assert t_start == TICK and start.started
    assert not end.started
    assert end.put_off == 600  # every increase, from the one that started it
    assert abs(end.seconds - (60.0 - TICK)) < 1e-9  # first increase to last increase
    assert abs(t_end - (60.0 + FD_SHORTAGE_QUIET_SECONDS)) < 1e-9


def test_the_end_needs_a_whole_quiet_period():
    shortage = FdShortage(quiet_seconds=1.0)
    assert shortage.update(0.0, 5).started
    assert shortage.update(0.5, 6) is None
    assert shortage.update(1.49, 6) is None  # 0.99 s without an increase: still short
    end = shortage.update(1.5, 6)
    assert end is not None and not end.started and end.put_off == 6 and end.seconds == 0.5


def test_increases_slower_than_the_quiet_period_are_separate_shortages():
    # The acceptor retries at least every 500 ms while short, so gaps of 2 s mean it recovered.
    samples = [(t / 10, count) for t, count in [(0, 0), (10, 1), (30, 1), (31, 2), (60, 2)]]
    events = feed(FdShortage(quiet_seconds=1.0), samples)
    assert [e.started for _, e in events] == [True, False, True, False]


def test_exhausted_fds_log_one_warning_each_way(serve):
    with fd_starved_server(serve) as (server, _):
        match = server.wait_for_stderr(STARTED.pattern, timeout=10)
        assert int(match[1]) == 64 and 0 < int(match[2]) < 64, match[0]
        time.sleep(2.5)  # the acceptor keeps retrying, and being refused, all this time
        assert len(STARTED.findall(server.stderr())) == 1, server.stderr()
        assert not ENDED.search(server.stderr())
    assert wait_until(lambda: ENDED.search(server.stderr()), 10), server.stderr()
    time.sleep(1.5)  # nothing more is logged once it has recovered
    text = server.stderr()
    assert len(STARTED.findall(text)) == 1 and len(ENDED.findall(text)) == 1, text
    seconds, put_off = ENDED.search(text).groups()
    assert float(seconds) >= 2.0 and int(put_off) > 0
    with server.connect() as sock:  # and it serves again
        sock.sendall(b"back")
        assert sock.recv(4) == b"back"
    assert server.stop() == 0
