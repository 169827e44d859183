"""The machine's limits for bench/conn_scale.py: reading them, raising the
ones a process may raise, and naming the one that stopped a run.

Raised: RLIMIT_NOFILE (for this process and so for every child, the server
and the clients, up to fs.nr_open; root may raise the hard limit), and
fs.file-max only when the run needs more open files than it allows, written
through /proc/sys and restored at exit. Every other sysctl is only read: the
run is planned around it (ports per source address, the listen backlog, the
close batch), so that nothing else on the machine changes.
"""
from __future__ import annotations

import os
import resource
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

SYSCTL = Path("/proc/sys")
# fds a process needs besides its connections: stdio, the listener or the
# epoll set, Python's own files, the server's per-worker fds and the reserve
# it keeps free (64).
FD_HEADROOM = 256
CAP_SYS_RESOURCE = 24  # linux/capability.h


class LimitReached(Exception):
    """A limit stops the run; str() is the one line that says which, and at what count."""


def sysctl(name: str) -> list[int]:
    """A sysctl's numbers ('net.ipv4.tcp_mem' -> [low, pressure, high]); [] if absent."""
    try:
        return [int(x) for x in (SYSCTL / name.replace(".", "/")).read_text().split()]
    except (OSError, ValueError):
        return []


def sockstat() -> dict[str, int]:
    """/proc/net/sockstat's TCP line: inuse, orphan, tw, alloc, mem (pages)."""
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            words = line.split()[1:]
            return {words[i]: int(words[i + 1]) for i in range(0, len(words), 2)}
    return {}


def meminfo_kib(key: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def ephemeral_ports() -> int:
    low, high = sysctl("net.ipv4.ip_local_port_range")
    return high - low + 1


@dataclass
class Limits:
    nofile: int  # RLIMIT_NOFILE, soft = hard, of this process and its children
    notes: list[str] = field(default_factory=list)  # what was changed, for the report


def has_sys_resource() -> bool:
    """Whether this process holds CAP_SYS_RESOURCE, which raising a hard rlimit needs (root or not)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> CAP_SYS_RESOURCE & 1)
    return False


def raise_nofile(notes: list[str]) -> int:
    """Raises RLIMIT_NOFILE (soft and hard) as far as fs.nr_open allows, if
    this process may, else the soft limit to the hard one; returns it."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = (sysctl("fs.nr_open") or [hard])[0]
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, ceiling))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        why = "" if has_sys_resource() else ": raising it needs CAP_SYS_RESOURCE, which this process lacks"
        notes.append(f"RLIMIT_NOFILE stays at its hard limit {hard} per process, under fs.nr_open {ceiling}{why}")
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@contextmanager
def prepared(conns: int, clients: int) -> Iterator[Limits]:
    """Raises what the run needs, checks what it cannot raise (LimitReached
    before anything starts), and restores every sysctl it changed on the way out."""
    notes: list[str] = []
    limits = Limits(raise_nofile(notes), notes)
    nr_open = sysctl("fs.nr_open")[0]
    if conns + FD_HEADROOM > nr_open:  # no process can pass it, root or not: a run would only show it
        raise LimitReached(f"the server's fds: one process may have at most fs.nr_open {nr_open}, "
                           f"and {conns} connections need {conns + FD_HEADROOM}")
    if conns + FD_HEADROOM > limits.nofile:
        limits.notes.append(f"{conns} connections may not fit one server process under RLIMIT_NOFILE "
                            f"{limits.nofile}: this run will show where it stops")
    restore: list[tuple[Path, str]] = []
    try:
        # Both ends of every connection are open files, system-wide.
        allocated = sysctl("fs.file-nr")[0]
        needed = allocated + 2 * conns + (clients + 1) * FD_HEADROOM
        file_max = sysctl("fs.file-max")[0]
        if needed > file_max:
            path = SYSCTL / "fs/file-max"
            try:
                path.write_text(str(needed))
            except OSError as e:
                raise LimitReached(f"fs.file-max {file_max}: {conns} connections need {needed} open files "
                                   f"system-wide, and it cannot be raised ({e.strerror})") from None
            restore.append((path, str(file_max)))
            limits.notes.append(f"fs.file-max raised from {file_max} to {needed} for this run (restored at exit)")
        yield limits
    finally:
        for path, value in restore:
            path.write_text(value)


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def nofile_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    return 0


def diagnose(kind: str, held: int, server_pid: int | None, server_max_connections: int) -> str:
    """Names the limit behind the first failure of kind (from
    conn_scale_client.py: 'step:ERRNO', 'timeout:connect', ...), with held
    connections open."""
    reason = kind.split(":")[-1]
    if reason == "EMFILE":
        return f"the client's fds (RLIMIT_NOFILE {resource.getrlimit(resource.RLIMIT_NOFILE)[0]} per process)"
    if reason == "ENFILE":
        return f"the system's open files (fs.file-max {sysctl('fs.file-max')[0]})"
    if reason == "EADDRNOTAVAIL":
        return (f"ephemeral ports (net.ipv4.ip_local_port_range: {ephemeral_ports()} ports per source address; "
                "use a smaller --per-source)")
    tcp_mem, mem = sysctl("net.ipv4.tcp_mem"), sockstat().get("mem", 0)
    if reason in ("ENOBUFS", "ENOMEM") or (tcp_mem and mem >= tcp_mem[-1]):
        return f"kernel memory for TCP (sockstat mem {mem} pages, net.ipv4.tcp_mem {tcp_mem})"
    if server_max_connections and held >= server_max_connections and reason in ("EOF", "ECONNRESET", "EPIPE"):
        return f"the server's --max-connections {server_max_connections}"
    if server_pid is not None and kind.startswith("timeout:"):
        fds, nofile = fd_count(server_pid), nofile_of(server_pid)
        if fds + FD_HEADROOM >= nofile:
            return f"the server's fds ({fds} open of its RLIMIT_NOFILE {nofile})"
        conntrack, conntrack_max = sysctl("net.netfilter.nf_conntrack_count"), sysctl(
            "net.netfilter.nf_conntrack_max")
        if conntrack and conntrack_max and conntrack[0] >= conntrack_max[0]:
            return f"connection tracking (net.netfilter.nf_conntrack_max {conntrack_max[0]})"
        return f"the server, which accepts no more ({fds} fds open of its RLIMIT_NOFILE {nofile})"
    return f"a connection failed ({kind})"
