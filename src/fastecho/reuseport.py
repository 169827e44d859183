"""--reuse-port: several fastecho processes on one address, so that a restart refuses nothing.

With SO_REUSEPORT, every TCP listener bound to the same address by processes
of the same effective user joins one group, and the kernel hashes each new
connection to one of the group's listeners. A new fastecho can so start beside
the old one, and the old one is then stopped (SIGTERM): it stops accepting and
closes its listener at once, and drains the connections it already serves.

The catch is that close. By default Linux resets what the closed listener
still holds: connections in its accept queue (handshake done, not yet
accepted) and handshakes in flight that the hash sent to it. That is exactly a
restart's refused connection, and no user-space drain can close the window:
the kernel keeps routing to the listener until the very close(). Since Linux
5.14 the kernel can instead *migrate* them to another listener of the group
("request migration"), which it does when either

- the network namespace's sysctl net.ipv4.tcp_migrate_req is 1, or
- the group has a BPF_PROG_TYPE_SK_REUSEPORT program attached with the
  expected attach type BPF_SK_REUSEPORT_SELECT_OR_MIGRATE.

fastecho attaches the smallest such program (two instructions: return
SK_PASS, which selects nothing, so the kernel's own hash still picks the
listener for new connections and for migration) to each TCP listener group it
joins, when it may: loading it needs CAP_BPF (root has it; --user drops it only
after the bind). The program belongs to the group, not the process, so the new
process's program also covers the old one's close. Otherwise the sysctl must
be set (docs/operations.md), and the server warns at start when it is not.
"""
from __future__ import annotations

import ctypes
import errno
import os
import platform
import socket
import struct

SYSCTL = "/proc/sys/net/ipv4/tcp_migrate_req"

# From linux/bpf.h and asm-generic/socket.h (the same on every architecture
# that has SO_REUSEPORT at 15, checked in attach_migration).
_SYS_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "ppc64le": 361, "s390x": 351}
_BPF_PROG_LOAD = 5
_BPF_PROG_TYPE_SK_REUSEPORT = 21
_BPF_SK_REUSEPORT_SELECT_OR_MIGRATE = 40
_SO_ATTACH_REUSEPORT_EBPF = 52
_SK_PASS = 1
_PROGRAM = (struct.pack("<BBhi", 0xB7, 0, 0, _SK_PASS)  # BPF_MOV64_IMM(R0, SK_PASS)
            + struct.pack("<BBhi", 0x95, 0, 0, 0))  # BPF_EXIT
_ATTR_SIZE = 128  # of union bpf_attr as passed: the kernel wants the unused tail zeroed


def migrate_sysctl() -> bool | None:
    """Whether net.ipv4.tcp_migrate_req is on; None where the kernel has no such setting (< 5.14)."""
    try:
        with open(SYSCTL) as f:
            return f.read().strip() not in ("", "0")
    except OSError:
        return None


def _load_program() -> int:
    """The migration-enabling program's fd; OSError if the kernel will not load it."""
    number = _SYS_BPF.get(platform.machine())
    if number is None or socket.SO_REUSEPORT != 15:
        raise OSError(errno.ENOSYS, f"no bpf() syscall number for {platform.machine()}")
    libc = ctypes.CDLL(None, use_errno=True)
    insns = ctypes.create_string_buffer(_PROGRAM, len(_PROGRAM))
    license = ctypes.create_string_buffer(b"GPL")
    attr = bytearray(_ATTR_SIZE)
    # prog_type, insn_cnt, insns, license; expected_attach_type is at offset 68.
    struct.pack_into("<IIQQ", attr, 0, _BPF_PROG_TYPE_SK_REUSEPORT, len(_PROGRAM) // 8,
                     ctypes.addressof(insns), ctypes.addressof(license))
    struct.pack_into("<I", attr, 68, _BPF_SK_REUSEPORT_SELECT_OR_MIGRATE)
    buffer = (ctypes.c_char * _ATTR_SIZE).from_buffer(attr)
    fd = libc.syscall(ctypes.c_long(number), ctypes.c_long(_BPF_PROG_LOAD), buffer,
                      ctypes.c_uint(_ATTR_SIZE))
    if fd < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return fd


def attach_migration(sock: socket.socket) -> str | None:
    """Make sock's SO_REUSEPORT group migrate queued connections when one of its listeners
    closes. Call after listen() (before it, the program would go to a group of sock's own that
    listen() then leaves). None if done; else why not, in a few words (never raises)."""
    try:
        fd = _load_program()
    except OSError as e:
        return f"cannot load the BPF program: {e.strerror or e}"
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_REUSEPORT_EBPF, fd)
    except OSError as e:
        return f"cannot attach the BPF program: {e.strerror or e}"
    finally:
        os.close(fd)  # the group holds its own reference
    return None
