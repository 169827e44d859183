"""Reading a small file a user named (a config file, a certificate) without trusting the name.

Anything but a regular file is refused without reading it: /dev/zero would
be read until memory runs out, and a FIFO with no writer would block for
ever. A device is not even opened (opening some, a tape or a serial line,
has effects); the opened file is checked again in case the name was swapped
in between. The file is read once, and a file past the limit is refused.
"""
from __future__ import annotations

import errno
import os
import stat

MIB = 1024 * 1024

_FILE_TYPES = ((stat.S_ISDIR, "is a directory"), (stat.S_ISFIFO, "is a FIFO"),
               (stat.S_ISCHR, "is a character device"), (stat.S_ISBLK, "is a block device"),
               (stat.S_ISSOCK, "is a socket"))


class UserFileError(ValueError):
    """Why the file cannot be used, in words for the user (no file name: the caller adds it)."""


def _not_regular(mode: int) -> str:
    for test, problem in _FILE_TYPES:
        if test(mode):
            return f"{problem}, not a regular file"
    return "not a regular file"


def read_small_file(path: str, limit: int) -> bytes:
    """The bytes of the regular file at path, at most limit of them; UserFileError if not."""
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            raise UserFileError(_not_regular(mode))
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UserFileError("no such file") from None
    except OSError as e:
        raise UserFileError("not a regular file" if e.errno == errno.ENXIO else (e.strerror or str(e))) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UserFileError(_not_regular(mode))
        chunks: list[bytes] = []
        size = 0
        while size <= limit:  # one byte past the limit tells "too large" from "full"
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as e:
        raise UserFileError(e.strerror or str(e)) from None
    finally:
        os.close(fd)
    if size > limit:
        shown = f"{limit // MIB} MiB" if limit % MIB == 0 else f"{limit} bytes"
        raise UserFileError(f"larger than {shown}")
    return b"".join(chunks)
