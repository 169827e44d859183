"""UDP: how much of a server's showing is its socket buffer? python -m
fastecho.bench --transport udp with each bare C loop run twice: with the
kernel's default receive buffer (about 208 KiB), and asking for what
fastecho's UDP listener asks for (4 MiB, capped by net.core.rmem_max).

    python bench/udp_buffers.py [--rcvbuf 4194304] [--rounds 3] [any python -m fastecho.bench option]

At 64 sockets x depth 8 a server that falls behind holds up to 512 datagrams
in its socket; a default buffer holds 256 of 64 B or 92 of 1 KiB, and the
rest are lost. The extra servers are `reference-udp-big` and
`reference-udp-mmsg-big`; unless --servers is given, the run compares
fastecho with all four loops. Every other option is python -m
fastecho.bench's, and --transport udp is implied.
"""
from __future__ import annotations

import dataclasses
import sys

from fastecho.bench import cli, servers
from fastecho.server import UDP_BUFFER_BYTES as FASTECHO_UDP_BUFFER  # what fastecho's UDP listener asks for


def add_big_buffer_loops(receive_buffer: int) -> list[str]:
    """Register the two bare loops again, asking for `receive_buffer`; returns their names."""
    names = []
    for base in ("reference-udp", "reference-udp-mmsg"):
        spec = servers.SERVERS[base]
        binary = f"fastecho-{base}"
        name = f"{base}-big"
        servers.SERVERS[name] = dataclasses.replace(
            spec, name=name, description=f"{spec.description}; SO_RCVBUF {receive_buffer}",
            udp_command=lambda threads, _, binary=binary: [
                *servers._reference_udp(binary, threads), "--rcvbuf", str(receive_buffer)])
        names.append(name)
    return names


def main(argv: list[str]) -> int:
    rest: list[str] = []
    receive_buffer = FASTECHO_UDP_BUFFER
    args = iter(argv)
    for arg in args:
        if arg == "--rcvbuf":
            value = next(args, "")
            if not value.isdigit() or not 0 < int(value) <= 2**30:
                print("udp_buffers: --rcvbuf takes a number of bytes, 1 to 1073741824", file=sys.stderr)
                return 2
            receive_buffer = int(value)
        else:
            rest.append(arg)
    big = add_big_buffer_loops(receive_buffer)
    if "--servers" not in rest:
        rest += ["--servers", ",".join(["fastecho", "reference-udp", big[0], "reference-udp-mmsg", big[1]])]
    return cli.main(["--transport", "udp", *rest])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
