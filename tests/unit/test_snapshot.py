"""What the control plane turns a config into: consistent, secret-free, valid for Envoy."""

from __future__ import annotations

import json

import pytest
import yaml
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.router.cluster_specifiers.lua.v3 import lua_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from control_plane import resources as res
from control_plane.config import parse_config
from control_plane.plan import make_plan
from control_plane.resources.routes import ROUTER_CHAIN_PLUGIN, route_configuration
from control_plane.snapshot import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    PUSH_ORDER,
    ROUTE,
    RUNTIME,
    SECRET,
    InconsistentSnapshot,
    _aggregate_members,
    build_snapshot,
    make_snapshot,
)
from hapax import wire
from tests.seed import SEED_YAML
from tests.snapshots import MIXED, SECRETS, effective_routes, seed_snapshot

UNAVAILABLE = "hapax_unavailable"


def test_seed_example_becomes_one_cluster_per_provider_and_a_chain_per_first_provider():
    clusters = seed_snapshot().of_type(CLUSTER)
    # Anthropic serves no embeddings: openai's embeddings chain is openai alone. The standard
    # chat and embeddings routes give openai's own model a lane of each, the Messages route
    # anthropic's its own.
    assert {"provider.anthropic", "provider.openai", "chain.anthropic", "chain.openai",
            "chain.openai.embeddings", "lane.openai", "lane.openai.embeddings", "lane.anthropic",
            res.EXT_PROC_CLUSTER, res.EXT_PROC_HTTP_CLUSTER, UNAVAILABLE} == set(clusters)
    # Every chain ends in the member that says why none of its providers can serve.
    assert _aggregate_members(clusters["chain.anthropic"]) == ["provider.anthropic", "provider.openai", UNAVAILABLE]
    assert _aggregate_members(clusters["chain.openai"]) == ["provider.openai", "provider.anthropic", UNAVAILABLE]
    # ...but one whose attempts outnumber its providers: its retry would go to that member.
    assert _aggregate_members(clusters["chain.openai.embeddings"]) == ["provider.openai"]
    # Dots would split Envoy's cluster tag: stats name the cluster without them.
    assert [clusters[name].alt_stat_name for name in ("provider.openai", "chain.openai.embeddings")] == [
        "provider_openai", "chain_openai_embeddings"]


def test_a_passthrough_lane_is_built_only_for_a_route_that_can_take_it():
    # The seed's own route is a legacy completion, always translated: alone, no lane cluster.
    only_its_routes = SEED_YAML + "default_routes: false\n"
    assert not [name for name in seed_snapshot(only_its_routes).of_type(CLUSTER) if name.startswith("lane.")]
    chat = seed_snapshot(SEED_YAML + "  - {path: /v1/chat/completions, handler: chat}\ndefault_routes: false\n"
                         ).of_type(CLUSTER)
    # openai's model takes the chat route's lane, which has its own copy of openai's chat chain.
    assert [name for name in chat if name.startswith("lane.")] == ["lane.openai"]
    assert _aggregate_members(chat["lane.openai"]) == ["provider.openai", "provider.anthropic", UNAVAILABLE]
    assert chat["lane.openai"].alt_stat_name == "lane_openai"


def test_https_providers_get_tls_with_sni_and_local_ones_plain_http():
    clusters = seed_snapshot(MIXED).of_type(CLUSTER)
    # openai's timeout is shorter than local's: Envoy reaches it from its attempt listener (test_attempts.py).
    openai = clusters["direct.openai"]
    assert openai.transport_socket.name == "envoy.transport_sockets.tls"
    tls = tls_pb2.UpstreamTlsContext()
    openai.transport_socket.typed_config.Unpack(tls)
    assert tls.sni == "api.openai.com"
    assert not clusters["provider.local"].HasField("transport_socket")
    address = clusters["provider.local"].load_assignment.endpoints[0].lb_endpoints[0].endpoint.address
    assert (address.socket_address.address, address.socket_address.port_value) == ("127.0.0.1", 11434)


def test_routes_carry_the_department_route_and_gateway_routes():
    rc = seed_snapshot().of_type(ROUTE)[res.ROUTE_CONFIG_NAME]
    routes = rc.virtual_hosts[0].routes
    paths = [r.match.path or r.match.prefix for r in routes]
    assert paths[0] == "/health"
    assert "/v1/marketing/completions" in paths
    assert paths[-1] == "/"  # the JSON 404 catch-all comes last
    # The ordinary route, after the lanes' variants of it (which Envoy picks from the body).
    marketing = next(r for r in routes if r.match.path == "/v1/marketing/completions" and r.HasField("route")
                     and not r.match.dynamic_metadata)
    assert marketing.route.cluster_specifier_plugin == ROUTER_CHAIN_PLUGIN  # the chain the router step names
    assert marketing.metadata.filter_metadata["hapax"]["department"] == "marketing"


def _provider_paths(snapshot) -> set[str]:
    """The paths whose requests go to a provider (not to a 405, the 404 or /health)."""
    routes = snapshot.of_type(ROUTE)[res.ROUTE_CONFIG_NAME].virtual_hosts[0].routes
    return {r.match.path for r in routes if r.HasField("route") and r.match.path != "/health"}


def test_the_seeds_department_route_leaves_the_standard_openai_routes_to_envoy_and_ext_proc():
    snapshot = seed_snapshot()
    standard = {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models", "/v1/messages",
                "/v1/responses", "/v1/messages/count_tokens"}
    assert _provider_paths(snapshot) == standard | {"/v1/marketing/completions"}
    # ext_proc's router step serves by the same list: a path it lacks would be a 404 there.
    assert {r.path for r in snapshot.of_type(RUNTIME)["hapax"].routes} == standard | {"/v1/marketing/completions"}


def test_default_routes_false_leaves_only_the_department_routes_and_the_404_names_them():
    snapshot = seed_snapshot("default_routes: false\n" + SEED_YAML)
    assert _provider_paths(snapshot) == {"/v1/marketing/completions"}
    [not_found] = [r for r in snapshot.of_type(ROUTE)[res.ROUTE_CONFIG_NAME].virtual_hosts[0].routes
                   if r.name == "404"]
    assert "This gateway serves: /health, /v1/marketing/completions." in not_found.direct_response.body.inline_string


ENVOY_DIRECT_RESPONSE_MAX_BYTES = 4096  # Envoy refuses a route configuration with a larger body


def test_the_404_body_stays_under_envoys_cap_with_2000_long_routes_naming_the_first_and_counting_the_rest():
    paths = [f"/v1/{'a-rather-long-department-name-' * 4}{i:04d}/chat/completions" for i in range(2000)]
    config = parse_config(yaml.safe_dump({
        "providers": {"openai": {"type": "openai", "model": "gpt-4o", "api_key": "k"}},
        "routes": [{"path": path, "handler": "chat"} for path in paths]}), env={})
    served = sorted({route.path for route in config.routes} | {"/health"})
    [not_found] = [r for r in route_configuration(make_plan(config)).virtual_hosts[0].routes if r.name == "404"]
    body = not_found.direct_response.body.inline_string

    assert len(body.encode()) <= ENVOY_DIRECT_RESPONSE_MAX_BYTES // 2  # well under the cap
    error = json.loads(body)["error"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", None, "unknown_url")
    listed = error["message"].split(": ", 1)[1].split(" and ", 1)[0].split(", ")
    assert len(listed) >= 10 and listed == served[:len(listed)]  # the first paths, in order
    assert f" and {len(served) - len(listed)} more " in error["message"]
    assert f"{len(served)} paths" in error["message"]


def test_a_path_longer_than_envoys_cap_still_builds_answers_envoy_accepts():
    # One path alone too long to name: the 405 does not name it, the 404 counts it.
    long_path = "/v1/" + "x" * ENVOY_DIRECT_RESPONSE_MAX_BYTES
    config = parse_config(yaml.safe_dump({
        "providers": {"openai": {"type": "openai", "model": "gpt-4o", "api_key": "k"}},
        "default_routes": False, "routes": [{"path": long_path, "handler": "chat"}]}), env={})
    answers = {r.name: r.direct_response.body.inline_string
               for r in route_configuration(make_plan(config)).virtual_hosts[0].routes if r.HasField("direct_response")}

    assert all(len(body.encode()) < ENVOY_DIRECT_RESPONSE_MAX_BYTES for body in answers.values())
    message = {name: json.loads(body)["error"]["message"] for name, body in answers.items()}
    assert message[f"405:{long_path}"] == "Method not allowed: this path accepts POST only."
    assert message["404"] == ("Unknown request URL. This gateway serves 2 paths: /health and 1 more "
                              "(the gateway's configuration names them all).")


def test_retry_policy_carries_the_configured_backoff():
    text = SEED_YAML + "retry: {max_attempts: 3, backoff: {base_interval: 50ms, max_interval: 1s}}\n"
    rc = seed_snapshot(text).of_type(ROUTE)[res.ROUTE_CONFIG_NAME]
    marketing = next(r for r in effective_routes(rc.virtual_hosts[0]) if r.match.path == "/v1/marketing/completions")
    policy = marketing.route.retry_policy
    assert policy.num_retries.value == 2
    assert (policy.retry_back_off.base_interval.ToMilliseconds(),
            policy.retry_back_off.max_interval.ToMilliseconds()) == (50, 1000)


def test_route_stats_carry_the_path_and_the_labels_envoy_has_tags_for():
    text = SEED_YAML + """\
  - path: "/v1/eng.v2/chat/completions"
    handler: chat
    metrics_labels: {department: engineering, team: "core platform"}
"""
    config = parse_config(text, env=SECRETS)
    assert res.stats_label_keys(config) == ("department", "team")
    virtual_host = res.route_configuration(make_plan(config)).virtual_hosts[0]
    routes = {r.match.path: r for r in virtual_host.routes if r.HasField("route")}
    assert routes["/v1/marketing/completions"].stat_prefix == "v1_marketing_completions.department.marketing"
    assert routes["/v1/eng.v2/chat/completions"].stat_prefix == \
        "v1_eng_v2_chat_completions.department.engineering.team.core_platform"
    # A key Envoy has no tag for (added after it started) stays out of the stat name.
    later = res.route_configuration(make_plan(config), ("department",)).virtual_hosts[0].routes
    assert {r.stat_prefix for r in later if r.match.path == "/v1/eng.v2/chat/completions" and r.HasField("route")} == {
        "v1_eng_v2_chat_completions.department.engineering"}


def test_api_keys_reach_ext_proc_and_envoy_sds_secrets_never_other_envoy_resources():
    # (Which providers' keys Envoy gets as secrets: tests/unit/test_passthrough.py.)
    snap = seed_snapshot()
    for type_url in (CLUSTER, ENDPOINT, LISTENER, ROUTE):
        for msg in snap.of_type(type_url).values():
            blob = msg.SerializeToString()
            for secret in SECRETS.values():
                assert secret.encode() not in blob, f"{secret} leaked into {type_url}"
    runtime = snap.of_type(RUNTIME)["hapax"]
    assert {p.name: p.api_key for p in runtime.providers} == {
        "anthropic": SECRETS["ANTHROPIC_API_KEY"], "openai": SECRETS["OPENAI_API_KEY"]}


def test_runtime_names_chains_in_preference_order():
    runtime = seed_snapshot(MIXED).of_type(RUNTIME)["hapax"]
    # The chat chains, then the embeddings chains that differ from them (claude serves none).
    assert [c.cluster for c in runtime.chains] == ["chain.openai", "chain.claude", "chain.local",
                                                   "chain.openai.embeddings", "chain.local.embeddings"]
    assert list(runtime.chains[2].providers) == ["local", "openai", "claude"]
    assert list(runtime.chains[4].providers) == ["local", "openai"]
    # One attempt per provider of the chain, and never fewer than two.
    assert [c.attempts for c in runtime.chains] == [2, 2, 3, 2, 2]
    assert dict(runtime.auto_chains) == {"chat": "chain.openai", "embeddings": "chain.openai.embeddings"}


def test_runtime_carries_the_plans_model_owners_and_attempts_so_ext_proc_derives_none():
    text = MIXED.replace("model: gpt-4o,", "model: gpt-4o, aliases: [shared],").replace(
        "model: claude-3-haiku,", "model: claude-3-haiku, aliases: [shared, fast],")
    runtime = seed_snapshot(text + "retry: {max_attempts: 5}\n").of_type(RUNTIME)["hapax"]
    owners = {(m.name, m.family): (m.provider, m.chain) for m in runtime.models}
    # The provider first in preference order wins a name two providers serve; a provider with
    # no `models` serves its model for every family its type serves (claude: chat alone).
    assert owners == {("gpt-4o", "chat"): ("openai", "chain.openai"),
                      ("shared", "chat"): ("openai", "chain.openai"),
                      ("claude-3-haiku", "chat"): ("claude", "chain.claude"),
                      ("fast", "chat"): ("claude", "chain.claude"),
                      ("llama3.2", "chat"): ("local", "chain.local"),
                      ("gpt-4o", "embeddings"): ("openai", "chain.openai.embeddings"),
                      ("shared", "embeddings"): ("openai", "chain.openai.embeddings"),
                      ("llama3.2", "embeddings"): ("local", "chain.local.embeddings")}
    assert {c.attempts for c in runtime.chains} == {5}  # the config's max_attempts, on every chain


def test_push_order_is_clusters_endpoints_secrets_listeners_routes_then_runtime():
    assert PUSH_ORDER == (CLUSTER, ENDPOINT, SECRET, LISTENER, ROUTE, RUNTIME)


def test_snapshot_naming_a_missing_cluster_is_refused():
    rc = route_pb2.RouteConfiguration(name="r", virtual_hosts=[route_components_pb2.VirtualHost(
        name="v", domains=["*"], routes=[route_components_pb2.Route(
            match=route_components_pb2.RouteMatch(prefix="/"),
            route=route_components_pb2.RouteAction(cluster="nowhere"))])])
    with pytest.raises(InconsistentSnapshot, match="missing cluster nowhere"):
        make_snapshot("v", {ROUTE: [rc]})


def test_eds_cluster_without_endpoints_is_refused():
    cluster = cluster_pb2.Cluster(name="lonely", type=cluster_pb2.Cluster.EDS)
    with pytest.raises(InconsistentSnapshot, match="lonely uses EDS"):
        make_snapshot("v", {CLUSTER: [cluster]})


def test_listener_naming_a_missing_route_configuration_is_refused():
    snap = seed_snapshot()
    with pytest.raises(InconsistentSnapshot, match="missing route configuration"):
        make_snapshot("v", {CLUSTER: list(snap.of_type(CLUSTER).values()),
                            ENDPOINT: list(snap.of_type(ENDPOINT).values()),
                            LISTENER: list(snap.of_type(LISTENER).values())})


def test_health_and_metrics_come_from_the_worker_whose_verdicts_envoy_polls():
    workers = res.ExtProcEndpoints(grpc=(res.Address("127.0.0.1", 7001), res.Address("127.0.0.1", 7003)),
                                   http=(res.Address("127.0.0.1", 7002), res.Address("127.0.0.1", 7004)),
                                   verdicts=(res.Address("127.0.0.1", 7005), res.Address("127.0.0.1", 7006)))
    snap = build_snapshot(parse_config(SEED_YAML, env=SECRETS), "v1", workers)
    endpoints = snap.of_type(ENDPOINT)

    def ports(cluster: str) -> list[int]:
        return [e.endpoint.address.socket_address.port_value for e in endpoints[cluster].endpoints[0].lb_endpoints]

    assert ports(res.EXT_PROC_CLUSTER) == [7001, 7003]  # the calls are spread over every worker
    assert ports(res.EXT_PROC_HTTP_CLUSTER) == [7002]   # /health and /metrics: the first one's
    verdict = snap.of_type(CLUSTER)["provider.openai"].load_assignment.endpoints[0].lb_endpoints[0]
    assert verdict.endpoint.health_check_config.address.socket_address.port_value == 7005


def test_ext_proc_listens_on_unix_sockets_envoy_reaches_as_pipes_and_verdicts_on_loopback():
    workers = res.ExtProcEndpoints(grpc=(res.Address.parse("unix:/run/hapax/ext_proc-1.grpc.sock"),),
                                   http=(res.Address.parse("unix:/run/hapax/ext_proc-1.http.sock"),),
                                   verdicts=(res.Address.parse("127.0.0.1:7005"),))
    snap = build_snapshot(parse_config(SEED_YAML, env=SECRETS), "v1", workers)
    endpoints = snap.of_type(ENDPOINT)
    [grpc] = endpoints[res.EXT_PROC_CLUSTER].endpoints[0].lb_endpoints
    [http] = endpoints[res.EXT_PROC_HTTP_CLUSTER].endpoints[0].lb_endpoints
    assert grpc.endpoint.address.pipe.path == "/run/hapax/ext_proc-1.grpc.sock"
    assert http.endpoint.address.pipe.path == "/run/hapax/ext_proc-1.http.sock"
    verdict = snap.of_type(CLUSTER)["provider.openai"].load_assignment.endpoints[0].lb_endpoints[0]
    assert verdict.endpoint.health_check_config.address.socket_address.port_value == 7005
    assert str(res.Address.parse("unix:/run/x.sock")) == "unix:/run/x.sock"
    assert str(res.Address.parse("127.0.0.1:7001")) == "127.0.0.1:7001"


def test_the_ext_proc_cluster_allows_what_its_workers_can_hold():
    # Envoy's default (1,024 streams for the whole cluster) overflowed into bare 500s.
    workers = res.ExtProcEndpoints(grpc=(res.Address("127.0.0.1", 7001), res.Address("127.0.0.1", 7003)),
                                   http=(res.Address("127.0.0.1", 7002), res.Address("127.0.0.1", 7004)),
                                   verdicts=(res.Address("127.0.0.1", 7005), res.Address("127.0.0.1", 7006)))
    config = parse_config(SEED_YAML + "\next_proc: {max_streams_per_worker: 300}\n", env=SECRETS)
    [limits] = build_snapshot(config, "v1", workers).of_type(CLUSTER)[res.EXT_PROC_CLUSTER].circuit_breakers.thresholds
    assert limits.max_requests.value == 600
    assert limits.max_pending_requests.value == 600
    assert limits.max_connections.value >= 2


def test_provider_verdicts_on_a_unix_socket_are_refused_because_envoy_health_checks_ip_addresses_only():
    workers = res.ExtProcEndpoints(grpc=(res.Address.parse("unix:/run/a.sock"),),
                                   http=(res.Address.parse("unix:/run/b.sock"),),
                                   verdicts=(res.Address.parse("unix:/run/c.sock"),))
    with pytest.raises(ValueError, match="IP address only"):
        build_snapshot(parse_config(SEED_YAML, env=SECRETS), "v1", workers)


def test_the_chains_last_member_is_never_health_checked_and_tells_the_upstream_step_to_answer():
    unavailable = seed_snapshot().of_type(CLUSTER)[UNAVAILABLE]
    assert not unavailable.health_checks and not unavailable.HasField("outlier_detection")
    [host] = unavailable.load_assignment.endpoints[0].lb_endpoints
    assert host.metadata.filter_metadata["hapax"]["unavailable"] == "true"
    assert "provider" not in host.metadata.filter_metadata["hapax"]  # never counted as a provider


def test_the_router_steps_routes_have_a_cluster_before_the_step_names_the_chain():
    """Envoy's limit and queue checks (rate limit filters, before the router step) ask about a request
    only once its route has a cluster: the router's routes have the first chain until the step names
    one in x-hapax-chain (then that one, or Envoy's "cluster not found" for a name it does not have)."""
    snapshot = seed_snapshot()
    (route_config,) = snapshot.of_type(ROUTE).values()
    [plugin] = [p for p in route_config.cluster_specifier_plugins if p.extension.name == ROUTER_CHAIN_PLUGIN]
    config = lua_pb2.LuaConfig()
    plugin.extension.typed_config.Unpack(config)
    assert config.default_cluster in snapshot.of_type(CLUSTER) and config.default_cluster.startswith("chain.")
    assert (f'route_handle:headers():get("{wire.CHAIN_HEADER}") or "{config.default_cluster}"'
            in config.source_code.inline_string)
