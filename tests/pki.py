"""A test PKI from trustme: a CA, server certificates for localhost/127.0.0.1/::1, and client
certificates; shared by the TLS and WebSocket (wss) tests through the `pki` fixture (conftest)."""
from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass
class Pki:
    """A CA, a server certificate for localhost/127.0.0.1/::1, and client certificates."""
    dir: Path
    ca: trustme.CA

    def path(self, name: str) -> str:
        return str(self.dir / name)

    def client_context(self, *, cert: str | None = None, version: ssl.TLSVersion | None = None,
                       session_tickets: bool = True) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.path("ca.pem"))
        if cert:
            context.load_cert_chain(self.path(cert))
        if version:
            context.minimum_version = context.maximum_version = version
        return context


def write_pair(ca: trustme.CA, directory: Path, stem: str, *names: str, **kwargs) -> None:
    """stem.pem (leaf then chain) and stem.key for a certificate ca issues for names."""
    issued = ca.issue_cert(*names, **kwargs)
    (directory / f"{stem}.pem").write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(directory / f"{stem}.key"))


def make_pki(directory: Path) -> Pki:
    """Writes the CA, server, server2 (for rotation), client-ca, client and stranger files."""
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    write_pair(ca, directory, "server", "localhost", "127.0.0.1", "::1")
    write_pair(ca, directory, "server2", "localhost", "127.0.0.1", "::1")  # for rotation
    client_ca = trustme.CA()
    client_ca.cert_pem.write_to_path(str(directory / "client-ca.pem"))
    client = client_ca.issue_cert("client@example.org", common_name="client one")
    client.private_key_and_cert_chain_pem.write_to_path(str(directory / "client.pem"))
    stranger = trustme.CA().issue_cert("stranger@example.org", common_name="stranger")
    stranger.private_key_and_cert_chain_pem.write_to_path(str(directory / "stranger.pem"))
    return Pki(directory, ca)


def tls_args(pki: Pki, *extra: str, cert: str = "server") -> tuple[str, ...]:
    return ("--tls-cert", pki.path(f"{cert}.pem"), "--tls-key", pki.path(f"{cert}.key"), *extra)


