"""Configs and snapshots the control-plane tests share, unit and end-to-end alike."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from envoy.extensions.router.cluster_specifiers.matcher.v3.matcher_pb2 import ClusterAction, MatcherClusterSpecifier
from envoy.type.matcher.v3.http_inputs_pb2 import HttpRequestHeaderMatchInput

from control_plane.config import parse_config
from control_plane.resources import Address, ExtProcEndpoints
from control_plane.snapshot import Snapshot, build_snapshot
from tests.mmdb import write_country_db
from tests.seed import SEED_YAML

SECRETS = {"ANTHROPIC_API_KEY": "sk-ant-SECRET-aaaa", "OPENAI_API_KEY": "sk-oai-SECRET-bbbb"}
EXT_PROC = ExtProcEndpoints(grpc=(Address("127.0.0.1", 7001),), http=(Address("127.0.0.1", 7002),),
                            verdicts=(Address("127.0.0.1", 7003),))

MIXED = """\
providers:
  openai: {type: openai, model: gpt-4o, api_key: "${OPENAI_API_KEY}"}
  local:  {type: ollama, model: llama3.2, base_url: "http://127.0.0.1:11434", timeout: 2m}
  claude: {type: anthropic, model: claude-3-haiku, api_key: "${ANTHROPIC_API_KEY}"}
provider_preference: [openai, claude]
"""

# The seed's shape in issue #17: the primary (Anthropic) with a 5 s timeout, the
# secondary (OpenAI) with the default 60 s; and the chat route (openai's model takes the lane).
CAPPED = SEED_YAML.replace('api_key: "${ANTHROPIC_API_KEY}"}', 'api_key: "${ANTHROPIC_API_KEY}", timeout: 5s}')
CAPPED += "  - path: /v1/chat/completions\n    handler: chat\n"

# The seed with one more provider and the default chat route.
WITH_LOCAL = SEED_YAML + "  - path: /v1/chat/completions\n    handler: chat\n"
WITH_LOCAL = WITH_LOCAL.replace("provider_preference:", "  local: {type: ollama, model: llama3.2}\n"
                                "provider_preference:")


# MIXED with client keys, one client's models and routes, its limits, a department's budget
# in Redis and the queue (the key line is a fixed example: no test here needs its key), and an
# experiment whose two variants share a provider (a weighted cluster listed twice).
KEYED = MIXED + """\
clients:
  search:
    keys: ["0123456789ab:{SHA}QM1iQk32+VTlOatOudb57ErLcpE="]
    metrics_labels: {department: search}
    models: [gpt-4o, auto]
    routes: [/v1/chat/completions]
    limits: {requests_per_minute: 60, tokens_per_day: 100000}
limits:
  store: redis://127.0.0.1:6379/0
  on_store_error: closed
  departments:
    search: {budget: {usd: 5, period: month}}
queue: {max_waiting: 10, timeout: 5s}
ledger: {directory: /tmp/hapax-ledger-never-written}
routes:
  - {path: /v1/chat/completions, handler: chat, dedup: true}
  - {path: /search/v1/chat/completions, handler: chat, metrics_labels: {department: search}}
experiments:
  summary:
    model: auto
    sticky_by: header x-user-id
    variants:
      a: {provider: claude, weight: 50}
      b: {provider: openai, weight: 45}
      c: {provider: openai, weight: 5}
"""


# Geographic routing: three regional deployments of OpenAI (eu, us, ap), Anthropic without a
# region, the ads department pinned to eu (a route of its own, and a client of it), ap failing
# over to us first. (With geoip, see with_geoip: its database must be a file.)
REGIONAL = """\
providers:
  openai-eu:
    type: openai
    model: gpt-4o
    models: {text-embedding-3-small: {handler: embeddings}}
    api_key: "${OPENAI_API_KEY}"
    base_url: https://eu.openai.example.com/v1
    region: eu
  openai-us:
    type: openai
    model: gpt-4o
    models: {text-embedding-3-small: {handler: embeddings}}
    aliases: [smart]
    api_key: "${OPENAI_API_KEY}"
    region: us
  openai-ap:
    type: openai
    model: gpt-4o
    models: {text-embedding-3-small: {handler: embeddings}}
    api_key: "${OPENAI_API_KEY}"
    base_url: https://ap.openai.example.com/v1
    region: ap
  claude: {type: anthropic, model: claude-3-haiku, api_key: "${ANTHROPIC_API_KEY}"}
provider_preference: [openai-us, openai-eu, openai-ap, claude]
routes:
  - {path: /v1/ads/chat/completions, handler: chat, metrics_labels: {department: ads}}
  - {path: /v1/ads/embeddings, handler: embeddings, metrics_labels: {department: ads}}
clients:
  ads-app:
    keys: ["0123456789ab:{SHA}QM1iQk32+VTlOatOudb57ErLcpE="]
    metrics_labels: {department: ads}
  web:
    keys: ["ba9876543210:{SHA}QM1iQk32+VTlOatOudb57ErLcpE="]
regions:
  home: us
  trusted_sources: [10.0.0.0/8, "2001:db8::/32"]
  failover: {ap: [us]}
  residency: {ads: eu}
"""


def with_geoip(folder: Path, text: str = REGIONAL) -> str:
    """``text`` with a GeoIP database (written in ``folder``) placing 10.1.0.0/16 in Germany."""
    database = write_country_db(folder / "countries.mmdb", {"10.1.0.0/16": "DE"})
    return text + f"  geoip: {{database: {database}, countries: {{DE: eu, US: us}}}}\n"


def snapshot_of(yaml_text: str = SEED_YAML, version: str = "v1", ext_proc: ExtProcEndpoints = EXT_PROC) -> Snapshot:
    return build_snapshot(parse_config(yaml_text, env=SECRETS), version, ext_proc)


def seed_snapshot(text: str = SEED_YAML) -> Snapshot:
    return snapshot_of(text)


def effective_routes(vhost) -> list:
    """``vhost``'s routes with the retry policy and per-filter configs Envoy applies to each: its
    own, else the virtual host's (routes.py: share_retry_policy and share_filter_configs move
    the most common ones there)."""
    out = []
    for route in vhost.routes:
        copy = type(route)()
        copy.CopyFrom(route)
        if copy.HasField("route") and not copy.route.HasField("retry_policy") and vhost.HasField("retry_policy"):
            copy.route.retry_policy.CopyFrom(vhost.retry_policy)
        for name, config in vhost.typed_per_filter_config.items():
            if name not in copy.typed_per_filter_config:
                copy.typed_per_filter_config[name].CopyFrom(config)
        out.append(copy)
    return out


def lane_route(route_config, path: str, model: str, *, stream: bool = False,
               lane: str | None = None) -> tuple[Any, str] | None:
    """The first body-routed route Envoy picks for a request to ``path`` whose body names ``model``
    (and ``stream``), of ``lane`` if given, with the cluster its cluster specifier looks up for the
    model; None when no lane route takes it (the ordinary route does)."""
    lookups = {plugin.extension.name: cluster_lookup(plugin) for plugin in route_config.cluster_specifier_plugins}
    for route in effective_routes(route_config.virtual_hosts[0]):
        if route.match.path != path or not route.match.dynamic_metadata:
            continue
        if lane is not None and route.metadata.filter_metadata["hapax"]["lane"] != lane:
            continue
        matchers = {m.path[0].key: m.value for m in route.match.dynamic_metadata}
        if model in lane_model_names(matchers["model"]) and stream in _stream_values(matchers["stream"]):
            return route, lookups[route.route.cluster_specifier_plugin].get(model, "")
    return None


def lane_model_names(matcher) -> set[str]:
    """The model names a lane route's ``model`` metadata matcher takes."""
    if matcher.HasField("or_match"):
        return {m.string_match.exact for m in matcher.or_match.value_matchers}
    return {matcher.string_match.exact}


def _stream_values(matcher) -> set[bool]:
    """The ``stream`` values a lane route's matcher takes."""
    if matcher.HasField("or_match"):
        return {m.bool_match for m in matcher.or_match.value_matchers}
    return {matcher.bool_match}


def cluster_lookup(plugin) -> dict[str, str]:
    """A lane's cluster specifier plugin as a table: model -> cluster."""
    specifier = MatcherClusterSpecifier()
    plugin.extension.typed_config.Unpack(specifier)
    out = {}
    for model, on_match in specifier.cluster_matcher.matcher_tree.exact_match_map.map.items():
        action = ClusterAction()
        on_match.action.typed_config.Unpack(action)
        out[model] = action.cluster
    return out


def regional_lookup(plugin, headers: dict[str, str]) -> dict[str, str]:
    """A lane's cluster specifier plugin as the request with ``headers`` sees it: model -> cluster
    (with regions, a matcher of header trees over such tables: control_plane/resources/regional.py)."""
    specifier = MatcherClusterSpecifier()
    plugin.extension.typed_config.Unpack(specifier)
    matcher = specifier.cluster_matcher
    while True:
        if matcher.HasField("matcher_list"):  # the pinned clients' key ids, by region
            matcher = next((m.on_match.matcher for m in matcher.matcher_list.matchers
                            if _header_matches(m.predicate.single_predicate, headers)), matcher.on_no_match.matcher)
            continue
        tree = matcher.matcher_tree
        header = HttpRequestHeaderMatchInput()
        if not tree.input.typed_config.Unpack(header):
            break  # the model's table
        on_match = tree.exact_match_map.map.get(headers.get(header.header_name, ""), matcher.on_no_match)
        matcher = on_match.matcher
    out = {}
    for model, on_match in matcher.matcher_tree.exact_match_map.map.items():
        action = ClusterAction()
        on_match.action.typed_config.Unpack(action)
        out[model] = action.cluster
    return out


def _header_matches(predicate, headers: dict[str, str]) -> bool:
    header = HttpRequestHeaderMatchInput()
    predicate.input.typed_config.Unpack(header)
    return re.fullmatch(predicate.value_match.safe_regex.regex, headers.get(header.header_name, "")) is not None
