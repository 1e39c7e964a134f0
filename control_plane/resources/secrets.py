"""Secrets Envoy gets over SDS, and the downstream TLS contexts that name them.

Two kinds: the listeners' certificates (``server.tls``, ``server.http3``) and
the passthrough lane providers' keys (the only way a key reaches Envoy).
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2

from control_plane.config.model import HapaxConfig, ProviderConfig
from control_plane.plan import Plan
from control_plane.protobuf import ads
from control_plane.tls import Certificate

# Certificates reach Envoy only as SDS secrets over ADS (checked by the config
# loader first, see control_plane/tls.py); a renewed certificate is a new
# secret version, taken by Envoy without touching the listeners.
TLS_SECRET = "hapax_tls"
HTTP3_TLS_SECRET = "hapax_http3_tls"


def tls_secrets(config: HapaxConfig) -> list[secret_pb2.Secret]:
    secrets = []
    if config.server.tls is not None:
        secrets.append(_secret(TLS_SECRET, config.server.tls))
    http3 = config.server.http3
    if http3.enabled and http3.certificate is not None and http3.certificate != config.server.tls:
        secrets.append(_secret(HTTP3_TLS_SECRET, http3.certificate))
    return secrets


def _secret(name: str, certificate: Certificate) -> secret_pb2.Secret:
    return secret_pb2.Secret(name=name, tls_certificate=common_pb2.TlsCertificate(
        certificate_chain=base_pb2.DataSource(inline_bytes=certificate.cert_pem),
        private_key=base_pb2.DataSource(inline_bytes=certificate.key_pem),
    ))


def downstream_tls(secret: str, alpn: list[str]) -> tls_pb2.DownstreamTlsContext:
    return tls_pb2.DownstreamTlsContext(common_tls_context=tls_pb2.CommonTlsContext(
        tls_certificate_sds_secret_configs=[secret_pb2.SdsSecretConfig(name=secret, sds_config=ads())],
        alpn_protocols=alpn,
    ))


# The passthrough lane providers' keys, which its per-attempt filter injects
# (passthrough.upstream_filter).
def key_secret_name(provider: str) -> str:
    return f"hapax_key.{provider}"


def key_secrets(plan: Plan) -> list[secret_pb2.Secret]:
    """The lane providers' keys: the only way a key reaches Envoy."""
    config = plan.config
    return [
        secret_pb2.Secret(name=key_secret_name(name), generic_secret=secret_pb2.GenericSecret(
            secret=base_pb2.DataSource(inline_string=key_header_value(config.providers[name]))))
        for name in sorted(plan.lane_providers) if config.providers[name].api_key
    ]


def key_header_value(provider: ProviderConfig) -> str:
    """What its key header carries: ``Bearer <key>`` in OpenAI's Authorization, the key alone in
    Anthropic's x-api-key (passthrough.py: key_header)."""
    return provider.api_key if provider.type == "anthropic" else f"Bearer {provider.api_key}"
