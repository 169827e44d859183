"""Exceptions a user of fastecho can meet. The CLI maps them to exit codes."""


class FastechoError(Exception):
    """Base class for fastecho's own errors (the CLI exits 1 unless a subclass says otherwise)."""


class ConfigError(FastechoError, ValueError):
    """A bad option or configuration value (the CLI exits 2)."""


class ServeError(FastechoError):
    """The server could not start or keep running (the CLI exits 1)."""


class ClientError(FastechoError):
    """The client could not connect, or lost its connection (the CLI exits 1)."""
