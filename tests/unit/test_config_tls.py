"""server.tls and server.http3: certificate files are checked when the config loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from control_plane import resources as res
from control_plane.config import ConfigError, load_config, parse_config
from control_plane.snapshot import LISTENER, ROUTE, SECRET, build_snapshot
from tests.certificates import PROVIDERS, config_text, make_certificates
from tests.snapshots import EXT_PROC


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    return make_certificates(tmp_path_factory.mktemp("certs"))


def errors(text: str) -> dict[str, str]:
    with pytest.raises(ConfigError) as err:
        parse_config(text, env={})
    return {issue.path: issue.message for issue in err.value.issues}


def test_tls_and_http3_share_a_checked_certificate(certs):
    config = parse_config(config_text(certs, f"  tls: {{cert_file: {certs}/gateway.pem, key_file: {certs}/gateway.key}}"
                                             "\n  http3: {enabled: true, port: 8443}"), env={})
    assert config.server.tls is not None and config.server.tls.cert_pem.startswith(b"-----BEGIN CERTIFICATE")
    assert config.server.http3.enabled and config.server.http3_port == 8443
    assert config.server.http3.certificate == config.server.tls
    assert b"PRIVATE KEY" not in repr(config).encode()  # the key never shows in a repr (nor in logs)


def test_http3_takes_its_own_certificate_and_the_tcp_port_number_by_default(certs):
    config = parse_config(config_text(certs, f"  http3: {{tls_cert_file: {certs}/gateway.pem, "
                                             f"tls_key_file: {certs}/gateway.key}}"), env={})
    assert config.server.tls is None and config.server.http3.enabled
    assert config.server.http3_port == config.server.port


@pytest.mark.parametrize("server,path,message", [
    ("  tls: {cert_file: CERTS/missing.pem, key_file: CERTS/gateway.key}", "server.tls.cert_file", "cannot read"),
    ("  tls: {cert_file: CERTS/gateway.pem, key_file: CERTS/other.key}", "server.tls.key_file",
     "does not match the certificate"),
    ("  tls: {cert_file: CERTS/garbage.pem, key_file: CERTS/gateway.key}", "server.tls.cert_file",
     "is not a PEM certificate"),
    ("  tls: {cert_file: CERTS/gateway.pem, key_file: CERTS/gateway.pem}", "server.tls.key_file",
     "is not a PEM private key"),
    ("  tls: {cert_file: CERTS/gateway.pem}", "server.tls", "missing: key_file"),
    ("  http3: {enabled: true}", "server.http3", "HTTP/3 needs a certificate"),
    ("  http3: {tls_cert_file: CERTS/gateway.pem}", "server.http3.tls_key_file", "expected a string"),
    ("  http3: {enabled: maybe, tls_cert_file: CERTS/gateway.pem}", "server.http3.enabled", "true or false"),
])
def test_certificate_problems_are_config_errors_at_their_key(certs, server, path, message):
    found = errors(config_text(certs, server.replace("CERTS", str(certs))))
    assert path in found and message in found[path], found


def test_relative_certificate_paths_are_relative_to_the_config_file(certs, tmp_path):
    config_file = certs / "hapax.yaml"
    config_file.write_text("server:\n  tls: {cert_file: gateway.pem, key_file: gateway.key}\n" + PROVIDERS)
    assert load_config(config_file, env={}).server.tls.cert_file == str(certs / "gateway.pem")


def test_tls_and_http3_listeners_share_one_secret_that_only_it_holds_the_key_of(certs):
    config = parse_config(config_text(certs, f"  tls: {{cert_file: {certs}/gateway.pem, key_file: {certs}/gateway.key}}"
                                             "\n  http3: {enabled: true, port: 8443}"), env={})
    snapshot = build_snapshot(config, "v1", EXT_PROC)
    assert set(snapshot.of_type(SECRET)) == {res.TLS_SECRET}  # one certificate, shared
    listeners = snapshot.of_type(LISTENER)
    assert res.HTTP3_LISTENER_NAME in listeners
    secret_text = str(snapshot.of_type(SECRET)[res.TLS_SECRET])
    assert all("PRIVATE KEY" not in str(listener) for listener in listeners.values())  # only in the secret
    assert "PRIVATE KEY" in secret_text
    alt_svc = snapshot.of_type(ROUTE)[res.ROUTE_CONFIG_NAME].virtual_hosts[0].response_headers_to_add
    assert [(h.header.key, h.header.value) for h in alt_svc] == [("alt-svc", 'h3=":8443"; ma=86400')]


def test_a_separate_http3_certificate_is_its_own_secret(certs):
    config = parse_config(config_text(certs, f"  tls: {{cert_file: {certs}/gateway.pem, key_file: {certs}/gateway.key}}"
                                             f"\n  http3: {{tls_cert_file: {certs}/other.pem, "
                                             f"tls_key_file: {certs}/other.key}}"), env={})
    snapshot = build_snapshot(config, "v1", EXT_PROC)
    assert set(snapshot.of_type(SECRET)) == {res.TLS_SECRET, res.HTTP3_TLS_SECRET}


# ---------------------------------------------------------------- control_plane: a fleet's mutual TLS


def fleet(certs: Path, body: str) -> str:
    return PROVIDERS + "control_plane:\n" + body


def test_a_fleet_control_plane_gets_its_certificate_and_the_clients_ca(certs):
    config = parse_config(fleet(certs, f"  listen: 0.0.0.0:18000\n  tls: {{cert_file: {certs}/gateway.pem, "
                                       f"key_file: {certs}/gateway.key, client_ca_file: {certs}/other.pem}}\n"),
                          env={})
    tls = config.control_plane.tls
    assert config.control_plane.listen == "0.0.0.0:18000"
    assert tls is not None and tls.client_ca_pem.startswith(b"-----BEGIN CERTIFICATE")
    assert tls.certificate.key_pem.decode() not in repr(config)


def test_a_control_plane_beyond_loopback_needs_mutual_tls(certs):
    assert errors(fleet(certs, "  listen: 0.0.0.0:18000\n")) == {
        "control_plane.tls": "a control plane that listens beyond loopback (0.0.0.0:18000) needs mutual TLS: "
                             "set cert_file, key_file and client_ca_file"}
    assert parse_config(fleet(certs, "  listen: 127.0.0.1:18000\n"), env={}).control_plane.tls is None


def test_control_plane_tls_is_checked_file_by_file(certs):
    found = errors(fleet(certs, f"  tls: {{cert_file: {certs}/gateway.pem, key_file: {certs}/gateway.key, "
                                f"client_ca_file: {certs}/garbage.pem}}\n"))
    assert found == {"control_plane.tls.client_ca_file": "is not a PEM certificate (no BEGIN CERTIFICATE block)"}
    found = errors(fleet(certs, f"  tls: {{cert_file: {certs}/gateway.pem}}\n"))
    assert found == {"control_plane.tls": "needs cert_file, key_file and client_ca_file; missing: key_file, "
                                          "client_ca_file"}
    assert errors(fleet(certs, "  listen: somewhere:18000\n")) == {
        "control_plane.listen": "expected an IP address and a port such as 0.0.0.0:18000, got 'somewhere:18000'"}
