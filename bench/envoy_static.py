"""Building blocks of the static Envoy configs the harness runs (the fake provider, bare Envoy).

Plain dicts, dumped as JSON (which Envoy reads as YAML): these configs never
go through the control plane, they are what the harness compares it against.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}


def loopback(port: int = 0) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def http_connection_manager(stat_prefix: str, route_config: dict[str, Any],
                            filters: Sequence[dict[str, Any]] = (), **settings: Any) -> dict[str, Any]:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": HCM_TYPE,
            "stat_prefix": stat_prefix,
            "codec_type": "AUTO",
            "route_config": route_config,
            "http_filters": [*filters, ROUTER],
            **settings,
        },
    }


def listener(name: str, hcm: dict[str, Any], buffer_limit: int) -> dict[str, Any]:
    return {
        "name": name,
        "address": loopback(0),  # any free port; read back from the admin API
        "per_connection_buffer_limit_bytes": buffer_limit,
        "filter_chains": [{"filters": [hcm]}],
    }


def static_bootstrap(listeners: list[dict[str, Any]], clusters: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """A complete static Envoy config; admin and every listener on loopback."""
    return {
        "admin": {"address": loopback(0)},
        "static_resources": {"listeners": listeners, "clusters": list(clusters)},
    }
