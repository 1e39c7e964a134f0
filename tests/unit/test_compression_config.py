"""What the control plane tells Envoy about compression: providers answer plain."""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2

from control_plane import resources as res
from control_plane.config import parse_config
from control_plane.plan import make_plan
from tests.unit.test_passthrough import CONFIG


def _plan():
    return make_plan(parse_config(CONFIG))


def test_every_route_to_a_provider_asks_it_for_an_uncompressed_answer():
    routes = [r for r in res.route_configuration(_plan()).virtual_hosts[0].routes
              if r.HasField("route") and r.route.cluster != res.EXT_PROC_HTTP_CLUSTER]
    kinds = {r.name.split(":")[0] for r in routes}
    assert kinds == {"passthrough", "model", "chat", "completion"}  # both lanes and the router step's routes
    for route in routes:
        [asked] = [h for h in route.request_headers_to_add if h.header.key == "accept-encoding"]
        assert asked.header.value == "identity", route.name
        # Replaces the client's value rather than adding to it.
        assert asked.append_action == base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD, route.name
