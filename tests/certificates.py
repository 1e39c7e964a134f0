"""Certificates for the TLS and HTTP/3 tests, issued by a throwaway CA (trustme)."""

from __future__ import annotations

from pathlib import Path

import trustme

PROVIDERS = "providers:\n  a: {type: ollama, model: m}\n"


def make_certificates(folder: Path) -> Path:
    """``gateway`` and ``other`` (.pem and .key) for localhost, and a ``garbage.pem``."""
    ca = trustme.CA()
    for name in ("gateway", "other"):
        cert = ca.issue_cert("localhost", "127.0.0.1")
        cert.private_key_pem.write_to_path(folder / f"{name}.key")
        cert.cert_chain_pems[0].write_to_path(folder / f"{name}.pem")
    (folder / "garbage.pem").write_text("not a certificate\n")
    return folder


def config_text(certs: Path, server: str) -> str:
    return f"server:\n{server}\n" + PROVIDERS


def shared_tls_and_http3(certs: Path) -> str:
    """HTTPS and HTTP/3 with one certificate."""
    return config_text(certs, f"  tls: {{cert_file: {certs}/gateway.pem, key_file: {certs}/gateway.key}}"
                              "\n  http3: {enabled: true, port: 8443}")


def separate_http3(certs: Path) -> str:
    """HTTPS with one certificate, HTTP/3 with another."""
    return config_text(certs, f"  tls: {{cert_file: {certs}/gateway.pem, key_file: {certs}/gateway.key}}"
                              f"\n  http3: {{tls_cert_file: {certs}/other.pem, tls_key_file: {certs}/other.key}}")
