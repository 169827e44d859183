"""Exceptions of the benchmark tooling."""


class BenchError(Exception):
    """Base class of every error raised by fastecho.bench."""


class LoadError(BenchError):
    """The load generator saw a failure: a connection that could not be
    established, an echoed byte that differs from what was sent, or a
    connection the server closed or reset. The message names the connection
    and, for a mismatch, the offset and the expected and received bytes."""


class ServerStartError(BenchError):
    """A benchmark server did not start or did not announce its port."""
