"""Target B: bare Envoy proxying to the fake, with Hapax's listener settings and no ext_proc.

This is the limit of the architecture: everything Hapax does on top of it
(two ext_proc round trips, the body crossing into Python) shows as C - B. The
listener and HTTP connection manager settings copy control_plane/resources/listeners.py
(codec AUTO, the 8 MiB per-connection buffer, timeouts, use_remote_address);
the provider clusters copy the HTTP/1.1 upstream options of
control_plane/resources/clusters.py. A route's prefix_rewrite does what
ext_proc's path rewrite does in Hapax.

Bare Envoy cannot read the body, so the kind of answer is chosen by path:

- ``/v1/...``        -> fake ``/json/v1/...``
- ``/stream/v1/...`` -> fake ``/sse/v1/...``
- ``/paced/v1/...``  -> paced SSE fake ``/v1/...``
- ``/anthropic/v1/...`` -> fake ``/anthropic/v1/...`` (an Anthropic message, passed through untranslated)
"""

from __future__ import annotations

from typing import Any

from bench.envoy_static import http_connection_manager, listener, loopback, static_bootstrap

HAPAX_MAX_REQUEST_BYTES = 8 * 1024 * 1024  # control_plane/resources/names.py MAX_REQUEST_BYTES
ENTRY_PREFIXES = {"json": "/v1/", "sse": "/stream/v1/", "paced": "/paced/v1/", "anthropic": "/anthropic/v1/"}
FAKE_PREFIXES = {"json": "/json/v1/", "sse": "/sse/v1/", "paced": "/v1/", "anthropic": "/anthropic/v1/"}


def _cluster(name: str, port: int) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "10s",
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http_protocol_options": {}},
            "common_http_protocol_options": {"idle_timeout": "60s"},
        }},
        "circuit_breakers": {"thresholds": [{"max_connections": 1024, "max_requests": 1024,
                                             "max_pending_requests": 1024, "max_retries": 1024}]},
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": loopback(port)}}]}]},
    }


def bare_proxy_config(fake_port: int, paced_port: int) -> dict[str, Any]:
    cluster_for = {"json": "fake", "sse": "fake", "paced": "paced", "anthropic": "fake"}
    # Longest entry prefix first: "/v1/" must not swallow the others (it cannot
    # here, but the order states the intent).
    routes = [{
        "match": {"prefix": ENTRY_PREFIXES[kind]},
        "route": {"cluster": cluster_for[kind], "prefix_rewrite": FAKE_PREFIXES[kind],
                  "timeout": "0s", "idle_timeout": "300s"},
    } for kind in ("paced", "sse", "anthropic", "json")]
    route_config = {"name": "bare", "virtual_hosts": [{"name": "bare", "domains": ["*"], "routes": routes}]}
    hcm = http_connection_manager(
        "bare", route_config,
        stream_idle_timeout="300s", request_timeout="0s",
        common_http_protocol_options={"idle_timeout": "300s"}, use_remote_address=True,
    )
    return static_bootstrap([listener("bare_proxy", hcm, HAPAX_MAX_REQUEST_BYTES)],
                            [_cluster("fake", fake_port), _cluster("paced", paced_port)])
