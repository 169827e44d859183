"""One throwaway TLS certificate for a benchmark run, made with trustme.

Every TLS server in a run serves the same certificate (ECDSA P-256, for
127.0.0.1, issued by a CA made for the run), so that handshakes cost every
server the same signature; the load generator verifies against that CA.
The files live in a private temporary directory, removed afterwards.
"""
from __future__ import annotations

import importlib.util
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

TRUSTME_HINT = "pip install trustme (or pip install 'fastecho[tls]')"


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of one server certificate and the CA that issued it."""

    ca: Path  # the CA certificate: what clients verify against
    cert: Path  # the server's certificate chain
    key: Path  # the server's private key
    combined: Path  # chain and key in one file, as HAProxy's `crt` takes them
    description: str  # what the certificate is, for reports


def trustme_missing() -> str | None:
    """None when certificates can be made here, else the one-line reason."""
    try:
        found = importlib.util.find_spec("trustme") is not None
    except ImportError:
        found = False
    return None if found else f"trustme is not installed: {TRUSTME_HINT}"


@contextmanager
def temporary_certificate(host: str) -> Iterator[TlsFiles]:
    """Make a CA and an ECDSA P-256 certificate for `host` (an IP address),
    write them to a fresh private directory, and remove it on the way out."""
    import trustme

    ca = trustme.CA(key_type=trustme.KeyType.ECDSA)
    leaf = ca.issue_cert(host, key_type=trustme.KeyType.ECDSA)  # trustme's ECDSA is P-256
    # TemporaryDirectory is created 0700: the private key is readable only by us.
    with tempfile.TemporaryDirectory(prefix="fastecho-bench-tls-") as directory:
        files = TlsFiles(
            ca=Path(directory, "ca.pem"),
            cert=Path(directory, "cert.pem"),
            key=Path(directory, "key.pem"),
            combined=Path(directory, "cert-and-key.pem"),
            description=f"ECDSA P-256 certificate for {host} from a throwaway trustme CA",
        )
        ca.cert_pem.write_to_path(str(files.ca))
        for blob in leaf.cert_chain_pems:
            blob.write_to_path(str(files.cert), append=True)
        leaf.private_key_pem.write_to_path(str(files.key))
        leaf.private_key_and_cert_chain_pem.write_to_path(str(files.combined))
        yield files
