"""fastecho: a fast, well-behaved TCP echo server with its hot path in C."""
from fastecho._version import __version__

__all__ = ["__version__"]
