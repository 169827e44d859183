"""Compare fastecho builds side by side: python -m fastecho.bench with extra servers.

Each extra server is another build's Python (its own virtualenv), run as
``PYTHON -m fastecho serve``; the rounds interleave with the others, so a
change to the C core is measured against the build before it in one run:

    python bench/compare_builds.py --build before=/path/to/old/.venv/bin/python \\
        --servers fastecho,before,reference --conns 64,1000 --rounds 7 --duration 5

Every other option is python -m fastecho.bench's.
"""
from __future__ import annotations

import sys

from fastecho.bench import cli, servers


def add_build(name: str, python: str) -> None:
    """Another build, served as fastecho is on each transport (the build must
    know the transport's scheme)."""
    servers.SERVERS[name] = servers.ServerSpec(
        name, f"fastecho built in {python}",
        lambda threads, _: servers._fastecho_plain(threads, python),
        lambda: None,
        tls_command=lambda threads, _, tls: servers._fastecho_tls(threads, tls, python),
        udp_command=lambda threads, _: servers._fastecho_udp(threads, python))


def main(argv: list[str]) -> int:
    rest: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg == "--build":
            name, _, python = next(args, "").partition("=")
            if not name or not python:
                print("compare_builds: --build NAME=PYTHON", file=sys.stderr)
                return 2
            add_build(name, python)
        else:
            rest.append(arg)
    return cli.main(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
