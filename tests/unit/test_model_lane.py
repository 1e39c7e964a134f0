"""Which requests the control plane routes from the body's model (the model lane), and the routes it builds."""

from __future__ import annotations

from envoy.extensions.access_loggers.grpc.v3 import als_pb2
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2

from bench.scale import config_text
from control_plane import resources as res
from control_plane.config import parse_config
from control_plane.plan import make_plan
from control_plane.resources import body_routing, model_lane, passthrough
from control_plane.resources.routes import ROUTER_CHAIN_PLUGIN
from control_plane.snapshot import ROUTE, build_snapshot
from tests.snapshots import EXT_PROC, cluster_lookup, effective_routes, lane_model_names, lane_route
from tests.unit.test_passthrough import CONFIG


def _route_config(text: str = CONFIG, version: str = "v7"):
    return build_snapshot(parse_config(text), version, EXT_PROC).of_type(ROUTE)[res.ROUTE_CONFIG_NAME]


def _routes(text: str = CONFIG, version: str = "v7"):
    return effective_routes(_route_config(text, version).virtual_hosts[0])


def _model_lane(path: str, model: str, *, stream: bool = True, text: str = CONFIG):
    """The model-lane route Envoy picks for ``model`` at ``path``, and the chain cluster it sends the request to."""
    return lane_route(_route_config(text), path, model, stream=stream, lane=model_lane.MODEL_LANE)


def test_every_model_name_takes_the_lane_to_the_chain_of_the_provider_that_owns_it():
    routes = _route_config()
    path = "/v1/chat/completions"
    lane = [r for r in effective_routes(routes.virtual_hosts[0]) if r.name.startswith(f"model:chat:{path}")]
    # A route per chain length and idle limit, whatever the number of models, streams or not:
    # vllm's chain (vllm, then the preference order) is one longer than the others.
    assert [r.name.removeprefix(f"model:chat:{path}") for r in lane] == ["", ":2"]
    # Own models and aliases, every API, streams or not: the upstream step translates each attempt.
    # And auto: the family's preference chain.
    names = [lane_model_names(next(m.value for m in r.match.dynamic_metadata if m.path[0].key == "model"))
             for r in lane]
    assert names[0] | names[1] == {"auto", "claude-3-haiku", "fast", "gpt-4o", "llama-3-8b"}
    chain = {m: lane_route(routes, "/v1/chat/completions", m, stream=True, lane="model")[1]
             for m in ("auto", "claude-3-haiku", "fast", "gpt-4o", "llama-3-8b")}
    assert chain["fast"] == chain["gpt-4o"] == "chain.openai"
    assert chain["claude-3-haiku"] == "chain.claude"
    assert chain["llama-3-8b"] == "chain.vllm"
    assert chain["auto"] == chain["gpt-4o"]  # openai is preferred
    # Streams or not, a boolean: any other "stream" takes the ordinary route and the router step's answer.
    stream = next(m.value for m in lane[0].match.dynamic_metadata if m.path[0].key == "stream")
    assert sorted(m.bool_match for m in stream.or_match.value_matchers) == [False, True]
    # An unknown model takes no lane route: the ordinary route's router step answers it.
    assert lane_route(routes, "/v1/chat/completions", "gpt-9", stream=True) is None


def test_auto_takes_the_lane_to_the_preference_chain_only_where_that_chain_says_why_it_is_unavailable():
    # One provider, retried once: its chain has no reasons member, so only the router step can
    # tell an auto client why its 503; its own model name takes the lane all the same.
    text = ("providers:\n  openai: {type: openai, model: gpt-4o, api_key: k}\n"
            "routes:\n  - {path: /v1/chat/completions, handler: chat}\n")
    assert _model_lane("/v1/chat/completions", "gpt-4o", text=text) is not None
    assert _model_lane("/v1/chat/completions", "auto", text=text) is None
    plan = make_plan(parse_config(text))
    assert not plan.auto_chains["chat"].says_why_unavailable
    # Two providers, one attempt each: auto is on the lane, to the preference order's chain.
    two = make_plan(parse_config(CONFIG))
    auto = two.auto_chains["chat"]
    assert auto.says_why_unavailable
    assert dict(model_lane.lane_models(two, "chat"))["auto"] == auto


def test_a_model_lane_route_does_what_the_router_step_did():
    names = [r.name for r in _routes()]
    found = _model_lane("/v1/eng/chat/completions", "gpt-4o", stream=False)
    assert found is not None
    route, cluster = found
    assert cluster == "chain.openai"
    # After the passthrough lane's route for the same path (which needs no ext_proc), before the ordinary one.
    assert names.index("passthrough:chat:/v1/eng/chat/completions") < names.index(route.name) \
        < names.index("chat:/v1/eng/chat/completions")
    assert route.route.retry_policy.num_retries.value == 3
    assert not route.route.prefix_rewrite  # the upstream step sets each attempt's path
    assert {"authorization", "x-api-key", "x-hapax-chain", "x-hapax-start", "x-hapax-version"} \
        <= set(route.request_headers_to_remove)  # a client cannot send them
    stamped = {h.header.key: h.header.value for h in route.request_headers_to_add}
    # What Envoy read of the body (model, stream, usage chunk) the upstream step reads from the
    # request's metadata: nothing of it is stamped, a request near the header limit has no more.
    assert stamped == {"x-hapax-start": "%START_TIME(%s.%6f)%", "x-hapax-version": "v7",
                       "accept-encoding": "identity"}
    ext_proc = ext_proc_pb2.ExtProcPerRoute()
    route.typed_per_filter_config[res.EXT_PROC_FILTER].Unpack(ext_proc)
    assert ext_proc.disabled
    labels = route.metadata.filter_metadata["hapax"]
    assert labels["lane"] == model_lane.MODEL_LANE and labels["department"] == "engineering"
    # No passthrough.<provider> flag: every attempt goes to the upstream ext_proc step.
    assert not [k for k in labels.fields if k.startswith(passthrough.LANE + ".")]


def test_a_gateway_serving_only_its_model_list_has_no_lane():
    text = ("providers:\n  claude: {type: anthropic, model: claude-3-haiku, api_key: k}\n"
            "default_routes: false\nroutes:\n  - {path: /v1/models, handler: models}\n")
    assert not [r for r in _routes(text) if r.name.startswith("model:")]
    assert [p.extension.name for p in _route_config(text).cluster_specifier_plugins] == [ROUTER_CHAIN_PLUGIN]
    hcm_filters = [f.name for f in res.http_connection_manager(make_plan(parse_config(text))).http_filters]
    assert passthrough.JSON_TO_METADATA_FILTER not in hcm_filters  # no lane: bodies are not read in Envoy
    assert body_routing.LANE_MODEL_FILTER not in hcm_filters


def test_each_route_takes_on_its_lanes_only_the_models_of_its_family_to_that_familys_chain():
    text = """\
providers:
  openai:
    type: openai
    model: gpt-4o-mini
    api_key: sk-a
    models: {text-embedding-3-small: {handler: embeddings}}
  claude: {type: anthropic, model: claude-3-haiku, api_key: sk-b}
provider_preference: [openai, claude]
"""
    routes = _route_config(text)
    models = ("gpt-4o-mini", "claude-3-haiku", "auto", "text-embedding-3-small")

    def lane(kind: str, path: str) -> dict[str, str]:
        found = {m: lane_route(routes, path, m, lane=kind) for m in models}
        return {m: f[1] for m, f in found.items() if f is not None}

    # The chat route: the chat models (claude's too), on their chat chains, and auto on the preferred one's.
    assert lane("model", "/v1/chat/completions") == {"gpt-4o-mini": "chain.openai", "claude-3-haiku": "chain.claude",
                                                     "auto": "chain.openai"}
    assert lane("passthrough", "/v1/chat/completions") == {"gpt-4o-mini": "lane.openai"}
    # The embeddings route: the embeddings model alone, on openai's embeddings chain (no claude in it;
    # one provider, retried: no auto on the lane).
    assert lane("model", "/v1/embeddings") == {"text-embedding-3-small": "chain.openai.embeddings"}
    assert lane("passthrough", "/v1/embeddings") == {"text-embedding-3-small": "lane.openai.embeddings"}


def test_the_access_log_names_the_model_a_lane_request_was_sent():
    config = als_pb2.HttpGrpcAccessLogConfig()
    passthrough.access_logger("ext_proc").typed_config.Unpack(config)
    tags = {tag.tag: tag.metadata for tag in config.common_config.custom_tags}
    # The body's model as json_to_metadata read it: which of its provider's models a lane answer counts under.
    assert tags["model"].kind.HasField("request")
    assert tags["model"].metadata_key.key == passthrough.REQUEST_NAMESPACE
    assert [segment.key for segment in tags["model"].metadata_key.path] == ["model"]


def test_every_model_a_lane_route_takes_has_a_cluster_in_its_routes_lookup():
    # The route decides whether a request is on a lane, the lookup where it goes: one without
    # the other would send a lane request to no cluster (Envoy's 503) or leave a model off its lane.
    for text in (CONFIG, config_text(12, 9)):
        routes = _route_config(text)
        lookups = {p.extension.name: cluster_lookup(p) for p in routes.cluster_specifier_plugins
                   if p.extension.name != ROUTER_CHAIN_PLUGIN}
        used = set()
        for route in effective_routes(routes.virtual_hosts[0]):
            if route.match.dynamic_metadata:
                names = lane_model_names(next(m.value for m in route.match.dynamic_metadata
                                              if m.path[0].key == "model"))
                lookup = lookups[route.route.cluster_specifier_plugin]
                assert names <= set(lookup) and all(lookup[m] for m in names), route.name
                used.add(route.route.cluster_specifier_plugin)
        assert used == set(lookups)  # and no lookup that no route uses
