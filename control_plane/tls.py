"""Certificates for the gateway's own listeners (HTTPS on TCP, HTTP/3 on UDP).

The files are read and checked here, when the config is loaded, so that a
missing, unreadable or mismatched pair is a config error with its key path
and never reaches Envoy (which would refuse the listener, or worse, loop).
What was checked is exactly what Envoy gets, as an SDS secret over xDS.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path

PEM_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"
PEM_PRIVATE_KEY_END = b"PRIVATE KEY-----"


class CertificateError(Exception):
    """``which`` is "cert" or "key": the file the problem is in."""

    def __init__(self, which: str, reason: str) -> None:
        super().__init__(reason)
        self.which = which
        self.reason = reason


@dataclass(frozen=True)
class Certificate:
    cert_file: str
    key_file: str
    cert_pem: bytes = field(repr=False)
    key_pem: bytes = field(repr=False)  # secret: never logged, never in a listener


def load_certificate(cert_file: Path, key_file: Path) -> Certificate:
    cert_pem = _read(cert_file, "cert")
    key_pem = _read(key_file, "key")
    if PEM_CERTIFICATE not in cert_pem:
        raise CertificateError("cert", "is not a PEM certificate (no BEGIN CERTIFICATE block)")
    if PEM_PRIVATE_KEY_END not in key_pem:
        raise CertificateError("key", "is not a PEM private key (no PRIVATE KEY block)")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert_file, key_file)
    except ssl.SSLError as err:
        if "KEY_VALUES_MISMATCH" in str(err) or "key values mismatch" in str(err).lower():
            raise CertificateError("key", f"does not match the certificate in {cert_file}") from None
        raise CertificateError("cert", f"is not a usable certificate and key pair ({err.reason or err})") from None
    return Certificate(str(cert_file), str(key_file), cert_pem, key_pem)


def _read(path: Path, which: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise CertificateError(which, f"cannot read {path}: {err.strerror or err}") from None
