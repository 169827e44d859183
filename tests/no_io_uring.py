"""Runs a command under a seccomp filter that refuses an io_uring system call,
as a container runtime's default profile does (Docker's, since 25.0, refuses
io_uring_setup with EPERM):

    python tests/no_io_uring.py [--call setup|register] [--errno EPERM|ENOSYS] COMMAND [ARG...]

--call register refuses io_uring_register instead, which is how a kernel
without provided buffer rings looks to the engine's check. The filter is
installed in this process and survives the exec (with no_new_privs set, as
the kernel requires of an unprivileged filter), so the command and
everything it starts see the call refused; every other system call is
allowed. The program is four classic-BPF instructions, built here because
nothing in the test dependencies installs one.
"""
from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
import sys

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
# The io_uring calls have the same numbers on every architecture Linux added
# them to after the syscall tables were unified (x86_64, aarch64, ...).
CALLS = {"setup": 425, "register": 427}
BPF_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
BPF_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
BPF_RET_K = 0x06  # BPF_RET | BPF_K
SECCOMP_DATA_NR = 0  # offsetof(struct seccomp_data, nr)


def instruction(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def refuse(call: int, errno_value: int) -> None:
    program = b"".join([
        instruction(BPF_LD_W_ABS, 0, 0, SECCOMP_DATA_NR),
        instruction(BPF_JEQ_K, 0, 1, call),
        instruction(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | errno_value),
        instruction(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
    ])
    filters = ctypes.create_string_buffer(program)

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    prog = SockFprog(len(program) // 8, ctypes.addressof(filters))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, None, 0, 0) != 0 or \
            libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "installing the seccomp filter")


if __name__ == "__main__":
    args = sys.argv[1:]
    options = {"--call": "setup", "--errno": "EPERM"}
    while args and args[0] in options and len(args) > 1:
        options[args[0]] = args[1]
        args = args[2:]
    if platform.system() != "Linux" or not args or options["--call"] not in CALLS \
            or options["--errno"] not in ("EPERM", "ENOSYS"):
        sys.exit("usage (Linux): python tests/no_io_uring.py [--call setup|register] "
                 "[--errno EPERM|ENOSYS] COMMAND [ARG...]")
    refuse(CALLS[options["--call"]], getattr(errno, options["--errno"]))
    os.execvp(args[0], args)
