"""Envoy's cluster for the control plane: by IP address or socket as given, by name resolved."""

from __future__ import annotations

import pytest

from hapax.envoy_process import XdsClientTls, xds_cluster


@pytest.mark.parametrize("xds", ["unix:/run/hapax/xds.sock", "127.0.0.1:18000", "[::1]:18000", "10.0.0.7:18000"])
def test_an_address_is_a_static_endpoint(xds):
    cluster = xds_cluster(xds)

    assert cluster["type"] == "STATIC"
    assert "dns_lookup_family" not in cluster


@pytest.mark.parametrize("xds", ["control-plane:18000", "hapax-control-plane.hapax.svc.cluster.local:18000"])
def test_a_host_name_is_resolved_by_envoy_ipv4_first(xds):
    cluster = xds_cluster(xds, XdsClientTls("member.pem", "member.key", "ca.pem"))
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    san = cluster["transport_socket"]["typed_config"]["common_tls_context"]["validation_context"][
        "match_typed_subject_alt_names"]

    assert cluster["type"] == "LOGICAL_DNS"
    assert cluster["dns_lookup_family"] == "V4_PREFERRED"
    assert endpoint["socket_address"] == {"address": xds.rsplit(":", 1)[0], "port_value": 18000}
    assert san == [{"san_type": "DNS", "matcher": {"exact": xds.rsplit(":", 1)[0]}}]
