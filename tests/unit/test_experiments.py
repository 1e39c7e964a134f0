"""A/B experiments, piece by piece: the config, the buckets, Envoy's route, ext_proc's assignment.

tests/e2e/test_experiments_e2e.py proves the pieces agree with the real Envoy.
"""

from __future__ import annotations

import json

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from control_plane.config import ConfigError, HapaxConfig, parse_config
from control_plane.config.served import experiment_lines
from control_plane.plan import make_plan
from control_plane.resources.routes import route_configuration
from control_plane.resources.runtime import runtime
from ext_proc.experiments import xxh64
from ext_proc.metrics import GatewayMetrics
from ext_proc.provider_health import ProviderProber
from ext_proc.runtime import RuntimeView
from ext_proc.steps.router import RouterStep
from hapax import wire
from tests.snapshots import REGIONAL, SECRETS

PROVIDERS = """\
providers:
  openai: {type: openai, model: gpt-4o-mini, api_key: k, models: {gpt-4o-mini: {}, gpt-4o: {}}}
  anthropic: {type: anthropic, model: claude-3-5-haiku-latest, api_key: k}
  embed: {type: openai, model: text-embedding-3-small, api_key: k,
          models: {text-embedding-3-small: {handler: embeddings}}}
routes:
  - {path: /v1/chat/completions, handler: chat, metrics_labels: {department: search}}
  - {path: /v1/dedup/chat, handler: chat, dedup: always}
"""

EXPERIMENT = PROVIDERS + """\
experiments:
  summary-test:
    model: summary
    sticky_by: header X-User-Id
    variants:
      a: {provider: anthropic, weight: 90}
      b: {provider: openai, model: gpt-4o, weight: 10}
"""


def parse(text: str) -> HapaxConfig:
    return parse_config(text, source="hapax.yaml", env={})


def errors(text: str) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        parse(text)
    return {issue.path: issue.message for issue in caught.value.issues}


def view_of(text: str) -> RuntimeView:
    plan = make_plan(parse(text))
    return RuntimeView.from_proto(runtime(plan, "v1"), frozenset({"openai", "anthropic"}))


# ---------------------------------------------------------------- the config


def test_an_experiment_reads_its_variants_in_order_with_their_models():
    experiment = parse(EXPERIMENT).experiments["summary-test"]
    assert [(v.name, v.provider, v.model, v.weight) for v in experiment.variants] == [
        ("a", "anthropic", "claude-3-5-haiku-latest", 90), ("b", "openai", "gpt-4o", 10)]
    assert (experiment.model, experiment.sticky_header, experiment.routes) == ("summary", "x-user-id", ())


@pytest.mark.parametrize(("variants", "path", "message"), [
    ("{a: {provider: nope, weight: 1}}", "experiments.e.variants.a.provider",
     "unknown provider 'nope' (expected one of: openai, anthropic, embed)"),
    ("{a: {provider: openai, model: gpt-5, weight: 1}}", "experiments.e.variants.a.model",
     "provider 'openai' serves no chat model 'gpt-5' (its chat models: gpt-4o-mini, gpt-4o; see "
     "providers.openai.models)"),
    ("{a: {provider: embed, weight: 1}}", "experiments.e.variants.a.provider",
     "provider 'embed' serves no chat model"),
    ("{a: {provider: openai}}", "experiments.e.variants.a.weight",
     "is required: the variant's share, relative to the others' (90 and 10, say)"),
    ("{a: {provider: openai, weight: -1}}", "experiments.e.variants.a.weight", "must be between 0 and 1000000, got -1"),
    ("{a: {provider: openai, weight: 0}}", "experiments.e.variants",
     "every weight is 0: at least one variant must take requests"),
    ("{a: {provider: openai, weight: 1, colour: red}}", "experiments.e.variants.a.colour",
     "unknown key 'colour' (expected one of: provider, model, weight)"),
])
def test_a_wrong_variant_is_an_error_at_its_key_path(variants, path, message):
    text = PROVIDERS + f"experiments:\n  e: {{model: m, variants: {variants}}}\n"
    assert errors(text)[path].startswith(message)


@pytest.mark.parametrize(("experiment", "path", "message"), [
    ("{variants: {a: {provider: openai, weight: 1}}}", "experiments.e", "names neither a model nor routes"),
    ("{model: m, routes: [/v1/nope], variants: {a: {provider: openai, weight: 1}}}", "experiments.e.routes[0]",
     "unknown chat or completion route '/v1/nope'"),
    ("{model: m, sticky_by: header authorization, variants: {a: {provider: openai, weight: 1}}}",
     "experiments.e.sticky_by", "cannot assign users by 'authorization': is a client credential"),
    ("{model: m, sticky_by: cookie, variants: {a: {provider: openai, weight: 1}}}", "experiments.e.sticky_by",
     "must be 'client_key' or 'header NAME'"),
])
def test_a_wrong_experiment_is_an_error_at_its_key_path(experiment, path, message):
    assert errors(PROVIDERS + f"experiments:\n  e: {experiment}\n")[path].startswith(message)


def test_two_experiments_may_not_take_the_same_requests():
    text = PROVIDERS + """\
experiments:
  first: {model: m, variants: {a: {provider: openai, weight: 1}}}
  second: {model: m, routes: [/v1/chat/completions], variants: {a: {provider: anthropic, weight: 1}}}
"""
    assert errors(text) == {"experiments.second": "takes the same requests as experiments.first "
                                                  "(on /v1/chat/completions): a request belongs to one experiment"}


def test_experiment_and_variant_are_reserved_label_names():
    text = PROVIDERS.replace("{department: search}", "{variant: x}")
    assert "reserved" in errors(text)["routes[0].metrics_labels.variant"]


# ---------------------------------------------------------------- the buckets


@pytest.mark.parametrize(("weights", "buckets"), [
    ((90, 10), (9000, 1000)),
    ((9, 1), (9000, 1000)),  # the same ratio: the same buckets, nobody moves
    ((1, 1, 1), (3334, 3333, 3333)),  # largest remainder: every bucket has a variant
    ((1, 0, 1), (5000, 0, 5000)),
])
def test_weights_become_runs_of_ten_thousand_buckets(weights, buckets):
    variants = ", ".join(f"v{i}: {{provider: openai, weight: {w}}}" for i, w in enumerate(weights))
    experiment = parse(PROVIDERS + f"experiments:\n  e: {{model: m, variants: {{{variants}}}}}\n").experiments["e"]
    assert experiment.buckets() == buckets and sum(buckets) == wire.EXPERIMENT_BUCKETS


@pytest.mark.parametrize(("data", "digest"), [
    (b"", 0xEF46DB3751D8E999), (b"a", 0xD24EC4F1A98C6E5B), (b"abc", 0x44BC2CF5AD770999),
    (b"Nobody inspects the spammish repetition", 0xFBCEA83C8A378BF1),  # past 32 bytes: the four lanes
])
def test_xxh64_matches_the_reference_vectors(data, digest):
    assert xxh64(data) == digest


# ---------------------------------------------------------------- Envoy's route


def _experiment_routes(text: str) -> list:
    config = route_configuration(make_plan(parse(text)))
    return [r for r in config.virtual_hosts[0].routes if r.name.startswith("experiment.")]


def test_the_experiment_route_goes_before_the_lanes_and_splits_by_the_sticky_hash():
    config = route_configuration(make_plan(parse(EXPERIMENT)))
    names = [r.name for r in config.virtual_hosts[0].routes]
    first_chat = next(n for n in names if "/v1/chat/completions" in n)
    assert first_chat == "experiment.summary-test:chat:/v1/chat/completions"
    route = _experiment_routes(EXPERIMENT)[0]
    clusters = route.route.weighted_clusters
    assert [(c.name, c.weight.value) for c in clusters.clusters] == [("chain.anthropic", 9000),
                                                                     ("chain.openai", 1000)]
    assert clusters.use_hash_policy.value
    assert [(h.header.header_name, h.terminal) for h in route.route.hash_policy] == [
        ("x-user-id", True), (wire.KEY_ID_HEADER, True)]
    b = clusters.clusters[1]
    assert {(h.header.key, h.header.value) for h in b.request_headers_to_add} == {
        (wire.EXPERIMENT_HEADER, "summary-test"), (wire.VARIANT_HEADER, "b")}
    assert list(b.response_headers_to_add) == list(b.request_headers_to_add)
    # The route's removals run after the entry's additions: they must spare them.
    assert not {wire.EXPERIMENT_HEADER, wire.VARIANT_HEADER} & set(route.request_headers_to_remove)
    assert "authorization" in route.request_headers_to_remove


def test_a_dedup_route_has_no_experiment_route_and_the_router_step_assigns_its_requests():
    assert [r.name for r in _experiment_routes(EXPERIMENT)] == [
        "experiment.summary-test:chat:/v1/chat/completions", "experiment.summary-test:completion:/v1/completions",
        "experiment.summary-test:messages:/v1/messages", "experiment.summary-test:responses:/v1/responses"]


def test_an_experiment_on_routes_alone_takes_any_model_there():
    text = PROVIDERS + """\
experiments:
  e: {routes: [/v1/chat/completions], variants: {a: {provider: openai, weight: 1}}}
"""
    route = _experiment_routes(text)[0]
    assert [m.path[0].key for m in route.match.dynamic_metadata] == [wire.BODY_STREAM]
    assert [h.header.header_name for h in route.route.hash_policy] == [wire.KEY_ID_HEADER]


# ---------------------------------------------------------------- ext_proc


def test_a_variant_a_client_names_counts_only_if_this_version_has_it():
    view = view_of(EXPERIMENT)
    assert view.variant("summary-test", "b") is not None
    assert view.variant("summary-test", "z") is None and view.variant("other", "a") is None
    assert view.variant(None, "a") is None


def test_a_variants_provider_is_sent_its_model_and_a_provider_failed_over_to_its_own():
    variant = view_of(EXPERIMENT).variant("summary-test", "b")
    assert variant is not None
    assert variant.requested("openai") == "gpt-4o" and variant.requested("anthropic") is None


def _headers(fields: dict[str, str]) -> pb.HttpHeaders:
    return pb.HttpHeaders(headers=base_pb2.HeaderMap(headers=[
        base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in fields.items()]))


def test_the_router_step_assigns_a_variant_sends_its_chain_and_counts_it_there():
    view = view_of(EXPERIMENT)
    metrics = GatewayMetrics(ProviderProber(lambda _: None))
    metrics.configure(view)
    experiment = view.experiments[0]
    user = next(f"u{n}" for n in range(100) if experiment.assign({"x-user-id": f"u{n}"}).name == "b")
    step = RouterStep(view, metrics)
    step.request_headers(_headers({":path": "/v1/dedup/chat", ":method": "POST", "x-user-id": user}), None)
    body = pb.HttpBody(body=json.dumps({"model": "summary", "messages": [{"role": "user", "content": "hi"}]}).encode(),
                       end_of_stream=True)
    common = step.request_body(body, None).request_body.response
    set_headers = {h.header.key: h.header.raw_value.decode() for h in common.header_mutation.set_headers}
    assert (set_headers[wire.CHAIN_HEADER], set_headers[wire.EXPERIMENT_HEADER], set_headers[wire.VARIANT_HEADER]) == (
        "chain.openai", "summary-test", "b")
    in_flight = {tuple(sorted(s.labels.items())): s.value for family in metrics.registry.collect()
                 if family.name == "hapax_inflight_requests" for s in family.samples}
    unassigned = (("department", ""), ("experiment", ""), ("route", "/v1/dedup/chat"), ("variant", ""))
    assigned = (("department", ""), ("experiment", "summary-test"), ("route", "/v1/dedup/chat"), ("variant", "b"))
    assert in_flight == {unassigned: 0.0, assigned: 1.0}


def test_the_banner_names_each_experiment_with_its_variants_shares():
    assert experiment_lines(parse(EXPERIMENT)) == [
        "summary-test: model summary: a 90% (anthropic/claude-3-5-haiku-latest), b 10% (openai/gpt-4o)"]


def test_an_experiments_model_is_listed_and_a_client_may_be_confined_to_it():
    models = {m["id"]: m["owned_by"] for m in json.loads(view_of(EXPERIMENT).models_json)["data"]}
    assert models["summary"] == "hapax" and models["gpt-4o"] == "openai"
    confined = EXPERIMENT + """\
clients:
  app: {keys: ["0123456789ab:{SHA}QM1iQk32+VTlOatOudb57ErLcpE="], models: [summary]}
"""
    assert parse(confined).clients["app"].models == ("summary",)


# ---------------------------------------------------------------- with data residency

REGIONAL_EXPERIMENT = REGIONAL + """\
experiments:
  summary: {model: gpt-4o, variants: {a: {provider: openai-us, weight: 50}, b: {provider: claude, weight: 50}}}
"""


def test_a_pinned_departments_requests_are_in_no_experiment():
    config = parse_config(REGIONAL_EXPERIMENT, env=SECRETS)
    routes = [r for r in route_configuration(make_plan(config)).virtual_hosts[0].routes
              if r.name.startswith("experiment.")]
    # No experiment route on the pinned department's route (ads is pinned to eu)...
    assert not [r for r in routes if "/v1/ads/" in r.name] and routes
    # ...and a pinned client (ads-app, key id 0123456789ab) skips it on any other route.
    [key_match] = [h for h in routes[0].match.headers if h.name == wire.KEY_ID_HEADER]
    assert key_match.invert_match and key_match.string_match.safe_regex.regex == "^(0123456789ab)$"
    # The router step does alike: the pinned client's request gets its chain in eu, no variant.
    view = RuntimeView.from_proto(runtime(make_plan(config), "v1"), frozenset({"openai", "anthropic"}))
    step = RouterStep(view)
    step.request_headers(_headers({":path": "/v1/chat/completions", ":method": "POST",
                                   wire.KEY_ID_HEADER: "0123456789ab"}), None)
    body = pb.HttpBody(body=json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).encode(),
                       end_of_stream=True)
    set_headers = {h.header.key: h.header.raw_value.decode()
                   for h in step.request_body(body, None).request_body.response.header_mutation.set_headers}
    assert step.variant is None and set_headers[wire.CHAIN_HEADER].endswith("@eu.only")
    unpinned = RouterStep(view)
    unpinned.request_headers(_headers({":path": "/v1/chat/completions", ":method": "POST"}), None)
    unpinned.request_body(pb.HttpBody(body=json.dumps({"model": "gpt-4o", "messages": [
        {"role": "user", "content": "hi"}]}).encode(), end_of_stream=True), None)
    assert unpinned.variant is not None
