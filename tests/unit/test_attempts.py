"""Each attempt is held to its own provider's timeout (control_plane/resources/attempts.py);
a route's idle limit follows its chain."""

from __future__ import annotations

import json

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_pb
from google.protobuf import struct_pb2, text_format

from control_plane import resources as res
from control_plane.rollout import stages
from control_plane.snapshot import CLUSTER, LISTENER, ROUTE, InconsistentSnapshot, make_snapshot
from ext_proc.runtime import RuntimeView
from ext_proc.steps.upstream import UpstreamStep
from hapax import wire
from hapax.v1 import runtime_pb2
from tests.seed import SEED_YAML
from tests.snapshots import CAPPED, effective_routes, lane_route, seed_snapshot, snapshot_of


def _routes(text: str) -> list:
    return effective_routes(seed_snapshot(text).of_type(ROUTE)[res.ROUTE_CONFIG_NAME].virtual_hosts[0])


def _ordinary(text: str, path: str = "/v1/chat/completions"):
    return next(r for r in _routes(text) if r.match.path == path and r.HasField("route")
                and not r.match.dynamic_metadata)


def _attempt_route(listener):
    hcm = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    return hcm, hcm.route_config.virtual_hosts[0].routes[0]


def test_the_routes_limit_is_the_longest_timeout_and_a_shorter_one_gets_its_own_listener():
    snap = seed_snapshot(CAPPED)
    clusters, listeners = snap.of_type(CLUSTER), snap.of_type(LISTENER)
    assert _ordinary(CAPPED).route.retry_policy.per_try_idle_timeout.ToSeconds() == 60  # openai's
    # The chains try provider.anthropic as before; its endpoint is its attempt listener.
    member = clusters["provider.anthropic"]
    endpoint = member.load_assignment.endpoints[0].lb_endpoints[0]
    assert endpoint.endpoint.address.envoy_internal_address.server_listener_name == "attempt.anthropic"
    assert endpoint.metadata.filter_metadata["hapax"]["provider"] == "anthropic"
    assert endpoint.endpoint.hostname == "api.anthropic.com"  # a lane's auto_host_rewrite reads it
    assert member.health_checks and member.HasField("outlier_detection")
    # The listener holds each attempt to anthropic's 5 s, and leaves retrying to the chain.
    hcm, route = _attempt_route(listeners["attempt.anthropic"])
    assert listeners["attempt.anthropic"].HasField("internal_listener")
    assert route.route.cluster == "direct.anthropic"
    assert route.route.retry_policy.per_try_idle_timeout.ToSeconds() == 5
    assert route.route.retry_policy.retry_on == "" and route.route.timeout.ToSeconds() == 0
    # What reaches the provider is what the chain's allow-list let through, nothing the hop adds.
    assert list(route.request_headers_to_remove) == ["x-forwarded-proto"]
    assert all(m.headers_to_add[0].header.key == wire.GATEWAY_ANSWER_HEADER for m in hcm.local_reply_config.mappers)
    # Then the provider itself, over TLS; its health is its member cluster's to judge.
    direct = clusters["direct.anthropic"]
    tls = tls_pb2.UpstreamTlsContext()
    direct.transport_socket.typed_config.Unpack(tls)
    assert tls.sni == "api.anthropic.com"
    assert not direct.health_checks and not direct.HasField("outlier_detection")
    # openai has the longest timeout: the route's limit is its own, it is reached directly.
    assert clusters["provider.openai"].load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.HasField(
        "socket_address")
    assert {"attempt.openai", "direct.openai"}.isdisjoint({*clusters, *listeners})


def test_providers_sharing_one_timeout_are_all_reached_directly():
    snap = seed_snapshot()
    names = {*snap.of_type(CLUSTER), *snap.of_type(LISTENER)}
    assert not [n for n in names if n.startswith(("attempt.", "direct."))]
    assert _ordinary(SEED_YAML, "/v1/marketing/completions").route.retry_policy.per_try_idle_timeout.ToSeconds() == 60


SHORT_CHAINS = """\
providers:
  a: {type: openai, model: a-model, base_url: "http://127.0.0.1:8001/v1", timeout: 2s}
  b: {type: openai, model: b-model, base_url: "http://127.0.0.1:8002/v1", timeout: 3s}
  slow: {type: ollama, model: llama3.2, timeout: 2m}
provider_preference: [a, b]
routes:
  - path: /v1/chat/completions
    handler: chat
"""


def test_a_routes_idle_limit_follows_its_chain():
    # Every attempt may be silent for its chain's longest timeout; plus the back-offs (250 ms)
    # and a second to spare.
    routes = seed_snapshot(SHORT_CHAINS).of_type(ROUTE)[res.ROUTE_CONFIG_NAME]

    def idle(model: str, lane: str, stream: bool = False) -> int:
        found = lane_route(routes, "/v1/chat/completions", model, stream=stream, lane=lane)
        assert found is not None
        return found[0].route.idle_timeout.ToMilliseconds()

    assert idle("a-model", "passthrough") == idle("a-model", "model", stream=True) == 2 * 3000 + 250 + 1000
    assert idle("llama3.2", "model") == 3 * 120_000 + 2 * 250 + 1000  # slow, then a and b
    # The ordinary route serves any chain (the router step names it): the longest wait of all.
    assert _ordinary(SHORT_CHAINS).route.idle_timeout.ToMilliseconds() == 3 * 120_000 + 2 * 250 + 1000


def _without(text: str, type_url: str, name: str) -> dict:
    snap = seed_snapshot(text)
    by_type = {t: list(r.values()) for t, r in snap.resources.items()}
    by_type[type_url] = [m for m in by_type[type_url] if m.name != name]
    return by_type


def test_a_snapshot_whose_attempt_listener_or_its_provider_is_missing_is_refused():
    with pytest.raises(InconsistentSnapshot, match="provider.anthropic names missing internal listener"):
        make_snapshot("v", _without(CAPPED, LISTENER, "attempt.anthropic"))
    with pytest.raises(InconsistentSnapshot, match="attempt.anthropic routes to missing cluster direct.anthropic"):
        make_snapshot("v", _without(CAPPED, CLUSTER, "direct.anthropic"))


def test_attempt_listeners_arrive_and_leave_with_the_clusters_that_name_them():
    seed, capped = snapshot_of(SEED_YAML, "v1"), snapshot_of(CAPPED, "v2")
    arriving = dict(stages({t: dict(r) for t, r in seed.resources.items()}, capped))
    # With the clusters, and before the front listener changes (that is the routes stage's).
    assert "attempt.anthropic" in arriving["connect"][LISTENER]
    assert arriving["connect"][LISTENER]["hapax_http"] == seed.of_type(LISTENER)["hapax_http"]
    leaving = dict(stages({t: dict(r) for t, r in capped.resources.items()}, seed))
    assert "attempt.anthropic" in leaving["routes"][LISTENER]  # provider.anthropic still names it
    assert "attempt.anthropic" not in leaving["prune"][LISTENER]


def _anthropic_step() -> UpstreamStep:
    rt = runtime_pb2.Runtime(config_version="1")
    rt.providers.add(name="c", type="anthropic", model="claude", base_url="https://api.anthropic.com",
                     cluster="provider.c")
    rt.chains.add(cluster="chain.c", providers=["c"], attempts=2)
    rt.models.add(name="claude", provider="c", chain="chain.c")
    host, route = base_pb2.Metadata(), base_pb2.Metadata()
    host.filter_metadata["hapax"].update({"provider": "c"})
    route.filter_metadata["hapax"].update({"handler": "chat"})
    attributes = {wire.EXT_PROC_ATTRIBUTES: struct_pb2.Struct(fields={
        wire.HOST_METADATA_ATTRIBUTE: struct_pb2.Value(string_value=text_format.MessageToString(host)),
        wire.ROUTE_METADATA_ATTRIBUTE: struct_pb2.Value(string_value=text_format.MessageToString(route))})}
    step = UpstreamStep(RuntimeView.from_proto(rt, frozenset({"anthropic"})))
    step.request_headers(ext_pb.HttpHeaders(), attributes)
    body = json.dumps({"model": "claude", "messages": [{"role": "user", "content": "hi"}]}).encode()
    step.request_body(ext_pb.HttpBody(body=body, end_of_stream=True), attributes)
    return step


def _answer_headers(**fields: str) -> ext_pb.HttpHeaders:
    return ext_pb.HttpHeaders(headers=base_pb2.HeaderMap(headers=[
        base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in fields.items()]))


def test_the_upstream_step_leaves_an_attempt_listeners_answer_as_it_is():
    fields = {":status": "504", "content-type": "application/json"}
    # Anthropic's own error is read whole, to become OpenAI's...
    assert _anthropic_step().response_headers(_answer_headers(**fields), {}).HasField("mode_override")
    # ...the gateway's timeout answer already is.
    step = _anthropic_step()
    response = step.response_headers(_answer_headers(**fields, **{wire.GATEWAY_ANSWER_HEADER: "true"}), {})
    assert not response.HasField("mode_override") and step.stage is None and step.done


def test_a_provider_forwarded_x_forwarded_proto_keeps_it_through_its_attempt_listener():
    text = CAPPED.replace("timeout: 5s}", "timeout: 5s, forward_headers: [x-forwarded-proto]}")
    _, route = _attempt_route(seed_snapshot(text).of_type(LISTENER)["attempt.anthropic"])
    assert list(route.request_headers_to_remove) == []
