"""TLS for the server: the certificate, key and client CA named in the config, loaded
into the engine's form (a _core.TlsContext), at start and again on SIGHUP.

The files are read here, with the same care as a config file (userfiles), and
handed to the C core as PEM text; OpenSSL checks them (a certificate that
parses, a key that matches it). Every problem is a ConfigError with one line
that names the option and the file.
"""
from __future__ import annotations

from fastecho import _core
from fastecho.config import ServeConfig, option_name
from fastecho.errors import ConfigError
from fastecho.userfiles import MIB, UserFileError, read_small_file

MAX_PEM_FILE = 1 * MIB  # a chain is a few KiB; a CA bundle (Mozilla's) about 220 KiB

# --tls-min-version -> the core's number for it
MIN_VERSIONS = {"1.2": 12, "1.3": 13}


def _read(option: str, path: str) -> bytes:
    try:
        return read_small_file(path, MAX_PEM_FILE)
    except UserFileError as e:
        raise ConfigError(f"{option_name(option)} {path}: {e}") from None


def load_context(cfg: ServeConfig) -> _core.TlsContext:
    """The engine's TLS context for cfg (which must name a certificate); ConfigError if unusable."""
    if not _core.TLS_AVAILABLE:
        raise ConfigError("this fastecho was built without TLS (OpenSSL was not found when it "
                          "was built); reinstall it with OpenSSL's headers present")
    assert cfg.tls_cert is not None
    key_path = cfg.tls_key or cfg.tls_cert
    cert = _read("tls_cert", cfg.tls_cert)
    key = cert if key_path == cfg.tls_cert else _read("tls_key", key_path)
    client_ca = None if cfg.tls_client_ca is None else _read("tls_client_ca", cfg.tls_client_ca)
    try:
        return _core.TlsContext(cert, key, client_ca, MIN_VERSIONS[cfg.tls_min_version])
    except ConfigError as e:
        where = [f"{option_name('tls_cert')} {cfg.tls_cert}"]
        if cfg.tls_key:
            where.append(f"{option_name('tls_key')} {cfg.tls_key}")
        if cfg.tls_client_ca:
            where.append(f"{option_name('tls_client_ca')} {cfg.tls_client_ca}")
        hint = ""
        if b"ENCRYPTED" in key:
            hint = " (the key is encrypted: fastecho needs it unencrypted, e.g. `openssl pkey -in KEY -out KEY.plain`)"
        raise ConfigError(f"{', '.join(where)}: {e}{hint}") from None
