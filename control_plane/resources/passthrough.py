"""The passthrough lane: OpenAI-to-OpenAI requests that Envoy serves without Python.

ext_proc is needed where something must be understood or rewritten: a provider
with another API, a model alias, a stream (watched event by event), the legacy
completion shapes. A non-streaming chat or embeddings request whose ``model``
is one of an OpenAI-type provider's own models (of the route's family) needs none of that. For such a
request Envoy, alone:

- reads ``model`` and ``stream`` from the body (``json_to_metadata``) and picks a
  lane route on them: one per department route (and per chain length, idle limit
  and API base path the lane models have), matching the set of lane models;
- sends it to the model's lane cluster, which the route's cluster specifier looks
  up by the body's model (``lane_clusters``), ``lane.<chain>``: the same providers in the
  same order as the model's chain cluster, but its per-attempt filters remove
  every request header the provider is not to be sent (provider_headers.py) and
  inject the key of the provider each attempt goes to (``credential_injector``
  with the provider's SDS secret), chosen by a composite filter matching the
  endpoint's ``hapax.provider``. The chain cluster, which every other request
  uses, runs only ext_proc's upstream step: those requests pay for no matching;
- reads the token usage from the answer (``json_to_metadata`` again), which the
  gRPC access log brings to ext_proc's metrics in batches, after the answer.

An attempt that goes to a provider outside the lane (another type, another
model or another base path) is an ordinary upstream ext_proc attempt,
translated as always: failover does not depend on the lane.

Anthropic's Messages API has a lane too (``LaneModel.api``): a Messages body naming an
Anthropic-type provider's own model goes to it as it came, with the key in ``x-api-key`` and
the client's ``anthropic-version`` kept (provider_headers.py), its answer's usage read under
Anthropic's names (``wire.ANTHROPIC_USAGE``).

What the lane checks: the body is a JSON object whose ``model`` is a string
naming a lane model and whose ``stream`` is absent or ``false``, and the path has
no query string (Envoy's rewrite would keep it; the model lane drops it). Anything
else (malformed JSON, an unknown model, those two fields of the wrong type) takes
the ordinary route, where ext_proc answers with a precise error. The other
fields are the provider's to check: it speaks the OpenAI API, and its error
answer reaches the client unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import base_pb2, config_source_pb2, grpc_service_pb2
from envoy.config.core.v3 import extension_pb2 as core_extension_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.access_loggers.grpc.v3 import als_pb2
from envoy.extensions.common.matching.v3 import extension_matcher_pb2
from envoy.extensions.filters.http.composite.v3 import composite_pb2
from envoy.extensions.filters.http.credential_injector.v3 import credential_injector_pb2
from envoy.extensions.filters.http.json_to_metadata.v3 import json_to_metadata_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.http.injected_credentials.generic.v3 import generic_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from envoy.type.metadata.v3 import metadata_pb2 as metadata_kind_pb2
from envoy.type.tracing.v3 import custom_tag_pb2
from google.protobuf import any_pb2, duration_pb2, struct_pb2, wrappers_pb2
from xds.core.v3 import extension_pb2
from xds.type.matcher.v3 import cel_pb2 as cel_matcher_pb2
from xds.type.matcher.v3 import http_inputs_pb2, matcher_pb2
from xds.type.v3 import cel_pb2

from control_plane.cel import MetadataEquals, MetadataPresent, all_of
from control_plane.config.model import HapaxConfig, ProviderConfig
from control_plane.plan import LANE_HANDLERS, LaneModel, Plan
from control_plane.protobuf import ads, pack
from control_plane.resources import provider_headers, regional
from control_plane.resources.body_routing import (
    LANE_MODEL_FILTER,
    LaneGroup,
    body_routed,
    cluster_plugin,
    cluster_plugin_name,
    grouped,
    route_limits,
)
from control_plane.resources.secrets import key_secret_name
from hapax import wire

LANE = wire.Lane.PASSTHROUGH
METADATA_NAMESPACE = wire.METADATA_NAMESPACE
# Dynamic metadata json_to_metadata writes of the request: what the lane routes on, and the
# upstream step reads (what it writes of the answer, the usage, is ext_proc's to read:
# wire.USAGE_NAMESPACE).
REQUEST_NAMESPACE = wire.REQUEST_NAMESPACE
JSON_TO_METADATA_FILTER = "hapax.json_to_metadata"
LANE_FILTER = "hapax.passthrough"
# The OpenAI API path of each handler the lane serves, under the provider's base path.
# Keyed by the config's handler names (a wire.Handler is one).
HANDLER_PATHS: dict[str, str] = {
    **{handler: wire.OPENAI_PATHS[handler] for handler in (wire.Handler.CHAT, wire.Handler.EMBEDDINGS)},
    wire.Handler.RESPONSES: wire.OPENAI_RESPONSES_PATH, wire.Handler.MESSAGES: wire.ANTHROPIC_MESSAGES_PATH}
ALS_BUFFER_BYTES = 64 * 1024
_JSON = regex_pb2.RegexMatcher(regex=r"^application/json(;.*)?$")


# ---------------------------------------------------------------- listener side


def json_to_metadata_filter(*, reservations: bool = False, ledger: bool = False) -> hcm_pb2.HttpFilter:
    """``reservations``: also the answer's limits a request sets, which admission reserves (admission.py);
    ``ledger``: also the cached prompt tokens of an answer, which the ledger records (ext_proc/ledger.py)."""
    def rule(path: list[str], namespace: str, key: str, *,
             typ: int = json_to_metadata_pb2.JsonToMetadata.PROTOBUF_VALUE,
             missing: struct_pb2.Value | None = None) -> json_to_metadata_pb2.JsonToMetadata.Rule:
        kv = json_to_metadata_pb2.JsonToMetadata.KeyValuePair
        out = json_to_metadata_pb2.JsonToMetadata.Rule(
            selectors=[json_to_metadata_pb2.JsonToMetadata.Selector(key=k) for k in path],
            on_present=kv(metadata_namespace=namespace, key=key, type=typ))
        if missing is not None:
            out.on_missing.CopyFrom(kv(metadata_namespace=namespace, key=key, value=missing))
        return out

    JTM = json_to_metadata_pb2.JsonToMetadata
    config = JTM(
        request_rules=JTM.MatchRules(
            # The default accepts "application/json" exactly, not with a charset.
            allow_content_types_regex=_JSON,
            rules=[
                rule(["model"], REQUEST_NAMESPACE, wire.BODY_MODEL, typ=JTM.PROTOBUF_VALUE),
                # Absent means false; any value but a boolean false keeps the request off the lane.
                rule(["stream"], REQUEST_NAMESPACE, wire.BODY_STREAM, missing=struct_pb2.Value(bool_value=False)),
                # Whether a stream's client asked for the usage chunk: if so, and it names the
                # provider's own model, an OpenAI provider can take its body as it is.
                rule(["stream_options", "include_usage"], REQUEST_NAMESPACE, wire.BODY_INCLUDE_USAGE),
                # As strings: a rate limit descriptor takes only a string from metadata.
                *(rule([field], REQUEST_NAMESPACE, field, typ=JTM.STRING)
                  for field in wire.RESERVATION_FIELDS
                  if reservations),
            ]),
        response_rules=JTM.MatchRules(
            allow_content_types_regex=_JSON,
            rules=[*(rule(["usage", key], wire.USAGE_NAMESPACE, key)
                     for key in (wire.PROMPT_TOKENS, wire.COMPLETION_TOKENS)),
                   *([rule(["usage", wire.PROMPT_DETAILS, wire.CACHED_TOKENS], wire.USAGE_NAMESPACE,
                           wire.CACHED_TOKENS)] if ledger else []),
                   # An Anthropic answer or a Response (a Messages or Responses body sent as it came):
                   # the same counts, their names.
                   *(rule(["usage", *fields], wire.USAGE_NAMESPACE, key) for fields, key in wire.INPUT_OUTPUT_USAGE
                     if key != wire.CACHED_TOKENS or ledger)]),
    )
    return hcm_pb2.HttpFilter(name=JSON_TO_METADATA_FILTER, typed_config=pack(config))


def body_filters_disabled() -> dict[str, any_pb2.Any]:
    """typed_per_filter_config for routes no lane request can take: their bodies are not parsed."""
    off = pack(route_components_pb2.FilterConfig(disabled=True))
    return {JSON_TO_METADATA_FILTER: off, LANE_MODEL_FILTER: off}


def lane_groups(plan: Plan) -> list[LaneGroup]:
    """The passthrough lane's routes, per department route: usually one per family, however many models."""
    groups = grouped(plan.lane_models,
                     lambda lane: (lane.api, lane.family, lane.base_path, *route_limits(plan, lane.chain)))
    return [LaneGroup(members[0].family, tuple(lane.model for lane in members), members[0].chain,
                      members[0].base_path, members[0].api) for members in groups.values()]


def lane_routes(plan: Plan, groups: Sequence[LaneGroup], handler: str, base: route_components_pb2.Route,
                disabled_ext_proc: dict[str, any_pb2.Any]) -> Iterator[route_components_pb2.Route]:
    """The lane's variants of ``base`` (an ordinary provider route), one per group of its family
    (``lane_groups``); to go before it."""
    if handler not in HANDLER_PATHS:
        return
    family = wire.FAMILY_OF_HANDLER[wire.Handler(handler)]
    api = next(api for api, handlers in LANE_HANDLERS.items() if handler in handlers)
    # A chat model is no embeddings request's lane, nor the other way round; an OpenAI body is no
    # Anthropic provider's, nor a Messages body an OpenAI provider's.
    for n, group in enumerate((g for g in groups if g.family == family and g.api == api), 1):
        route = body_routed(plan, base, LANE, group, stream=False, disabled_ext_proc=disabled_ext_proc)
        route.name += f":{n}" if n > 1 else ""
        # The path exactly, query string and all: a rewrite would pass a query string on.
        route.match.headers.append(route_components_pb2.HeaderMatcher(
            name=":path", string_match=string_pb2.StringMatcher(exact=base.match.path)))
        # Attempts that leave the lane get their path and host from ext_proc.
        route.route.prefix_rewrite = group.base_path + HANDLER_PATHS[handler]
        route.route.auto_host_rewrite.value = True
        yield route


def lane_clusters(plan: Plan) -> Iterator[route_components_pb2.ClusterSpecifierPlugin]:
    """Per family, the passthrough lane's model -> lane cluster lookup its routes share (with
    regions, one per region view: regional.py)."""
    for family in dict.fromkeys(lane.family for lane in plan.lane_models):
        lanes = {lane.model: lane for lane in plan.lane_models if lane.family == family}
        name = cluster_plugin_name(LANE, family)
        if not plan.views:
            yield cluster_plugin(name, {model: lane.cluster for model, lane in lanes.items()})
            continue

        def in_view(key: str | None, family: str = family, lanes: dict[str, LaneModel] = lanes) -> dict[str, str]:
            """A model the view's lane serves as the route expects (its base path) takes the view's
            lane cluster; any other the view's chain, whose upstream step translates each attempt."""
            if key is None:
                return {model: lane.cluster for model, lane in lanes.items()}
            view = plan.views[key]
            own = {lane.model: lane for lane in view.lane_models
                   if lane.family == family and lane.model in lanes and lane.base_path == lanes[lane.model].base_path}
            out = {}
            for model, lane in lanes.items():
                chain = view.chain_for(family, model)
                out[model] = own[model].cluster if model in own else chain.cluster if chain else lane.cluster
            return out

        for plugin, matcher in regional.regional_lookups(plan, name, in_view).items():
            yield cluster_plugin(plugin, matcher)


def access_logger(grpc_cluster: str) -> accesslog_pb2.AccessLog:
    """Every answered request, in batches, to ext_proc (which counts the lanes')."""
    return accesslog_pb2.AccessLog(name="envoy.access_loggers.http_grpc", typed_config=pack(
        als_pb2.HttpGrpcAccessLogConfig(
            common_config=_grpc_log(grpc_cluster),
            # A stream the upstream step delivered is its to count (model_lane.py); a coalesced
            # answer's tokens are its leader's (ext_proc/coalescing.py); an experiment's request is
            # counted under its variant (experiments.py).
            additional_response_headers_to_log=["content-type", wire.COALESCED_HEADER, wire.EXPERIMENT_HEADER,
                                                wire.VARIANT_HEADER])))


def hold_off_logger(grpc_cluster: str) -> accesslog_pb2.AccessLog:
    """The router's log of attempts answered 429 or 503, with their retry-after, to ext_proc.

    What the upstream step does for the attempts it sees: a provider that says
    when to come back is held off until then. (This request's next attempt has
    already gone elsewhere; the log arrives within a flush interval.)
    """
    def status_is(code: int) -> accesslog_pb2.AccessLogFilter:
        return accesslog_pb2.AccessLogFilter(status_code_filter=accesslog_pb2.StatusCodeFilter(
            comparison=accesslog_pb2.ComparisonFilter(
                op=accesslog_pb2.ComparisonFilter.EQ,
                value=base_pb2.RuntimeUInt32(default_value=code, runtime_key="hapax.hold_off_status"))))

    return accesslog_pb2.AccessLog(
        name="envoy.access_loggers.http_grpc",
        filter=accesslog_pb2.AccessLogFilter(
            or_filter=accesslog_pb2.OrFilter(filters=[status_is(429), status_is(503)])),
        typed_config=pack(als_pb2.HttpGrpcAccessLogConfig(
            common_config=_grpc_log(grpc_cluster), additional_response_headers_to_log=["retry-after"])))


def _grpc_log(grpc_cluster: str) -> als_pb2.CommonGrpcAccessLogConfig:
    def tag(name: str, kind: metadata_kind_pb2.MetadataKind, key: str,
            namespace: str = METADATA_NAMESPACE) -> custom_tag_pb2.CustomTag:
        return custom_tag_pb2.CustomTag(tag=name, metadata=custom_tag_pb2.CustomTag.Metadata(
            kind=kind, metadata_key=metadata_kind_pb2.MetadataKey(
                key=namespace, path=[metadata_kind_pb2.MetadataKey.PathSegment(key=key)])))

    route_kind = metadata_kind_pb2.MetadataKind(route=metadata_kind_pb2.MetadataKind.Route())
    host_kind = metadata_kind_pb2.MetadataKind(host=metadata_kind_pb2.MetadataKind.Host())
    request_kind = metadata_kind_pb2.MetadataKind(request=metadata_kind_pb2.MetadataKind.Request())
    return als_pb2.CommonGrpcAccessLogConfig(
        log_name=wire.ACCESS_LOG_NAME,
        grpc_service=grpc_service_pb2.GrpcService(
            envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=grpc_cluster)),
        transport_api_version=config_source_pb2.V3,
        buffer_flush_interval=duration_pb2.Duration(nanos=250_000_000),
        # At 7k req/s the default 16 KiB made ~230 messages a second, and each costs ext_proc's
        # gRPC more than its 30 entries do. Measured (wrk, c=64 and paced at ~3.2k req/s, four
        # rounds interleaved), ext_proc CPU per request and paced p99: 16 KiB 0.035 ms, 11.3 ms;
        # 64 KiB 0.017-0.022 ms, 11.0 ms; 1 MiB (a quarter second's entries in one message)
        # 0.013 ms but 14 ms, and p50 +1 ms: Envoy writes a whole flush at once.
        buffer_size_bytes=wrappers_pb2.UInt32Value(value=ALS_BUFFER_BYTES),
        custom_tags=[tag(wire.LogTag.LANE, route_kind, wire.RouteKey.LANE),
                     tag(wire.LogTag.ROUTE, route_kind, wire.RouteKey.ROUTE),
                     tag(wire.LogTag.PROVIDER, host_kind, wire.HOST_PROVIDER_KEY),
                     # Which of its provider's models a lane request was sent: its labels and price.
                     tag(wire.LogTag.MODEL, request_kind, "model", REQUEST_NAMESPACE),
                     tag(wire.LogTag.KEY_ID, request_kind, wire.REQUEST_KEY_ID, REQUEST_NAMESPACE)],
    )


# ---------------------------------------------------------------- upstream side (per attempt)


def upstream_filter(config: HapaxConfig, lane: LaneModel, translate: hcm_pb2.HttpFilter) -> hcm_pb2.HttpFilter:
    """The lane cluster's per-attempt filter: an attempt to a lane provider loses the headers it is
    not to be sent and gets its key from Envoy, any other (a provider the body would have to be
    rewritten for) goes to ``translate``."""
    matchers = [matcher_pb2.Matcher.MatcherList.FieldMatcher(
        predicate=cel_predicate(
            MetadataEquals("upstream_host_metadata", METADATA_NAMESPACE, wire.HOST_PROVIDER_KEY, name)),
        on_match=_execute(f"{LANE}.{name}", *_lane_attempt(config.providers[name])),
    ) for name in lane.providers]
    matcher = matcher_pb2.Matcher(
        matcher_list=matcher_pb2.Matcher.MatcherList(matchers=matchers),
        on_no_match=_execute("translate", extension_pb2.TypedExtensionConfig(
            name=translate.name, typed_config=translate.typed_config)))
    composite = extension_matcher_pb2.ExtensionWithMatcher(
        extension_config=core_extension_pb2.TypedExtensionConfig(
            name="composite", typed_config=pack(composite_pb2.Composite())),
        xds_matcher=matcher,
    )
    return hcm_pb2.HttpFilter(name=LANE_FILTER, typed_config=pack(composite))


def _lane_attempt(provider: ProviderConfig) -> list[extension_pb2.TypedExtensionConfig]:
    """The filters of an attempt to a lane provider: the allow-list first (another lane provider's
    key, set by an earlier attempt, goes too), then the provider's own key."""
    allow_list = provider_headers.allow_list_filter(provider)
    # A keyless server (local vLLM...): no key to add.
    return [allow_list, _injector(provider)] if provider.api_key else [allow_list]


def _injector(provider: ProviderConfig) -> extension_pb2.TypedExtensionConfig:
    """The provider's key (secrets.key_header_value) in the header its API reads it from."""
    generic = generic_pb2.Generic(credential=secret_pb2.SdsSecretConfig(
        name=key_secret_name(provider.name),
        sds_config=ads()), header="x-api-key" if provider.type == "anthropic" else "")
    injector = credential_injector_pb2.CredentialInjector(
        overwrite=True,
        credential=core_extension_pb2.TypedExtensionConfig(
            name="envoy.http.injected_credentials.generic", typed_config=pack(generic)))
    return extension_pb2.TypedExtensionConfig(name="credential_injector", typed_config=pack(injector))


def cel_predicate(*conditions: MetadataEquals | MetadataPresent) -> matcher_pb2.Matcher.MatcherList.Predicate:
    expression = cel_matcher_pb2.CelMatcher(expr_match=cel_pb2.CelExpression(cel_expr_parsed=all_of(*conditions)))
    return matcher_pb2.Matcher.MatcherList.Predicate(
        single_predicate=matcher_pb2.Matcher.MatcherList.Predicate.SinglePredicate(
            input=extension_pb2.TypedExtensionConfig(
                name="envoy.matching.inputs.cel_data_input",
                typed_config=pack(http_inputs_pb2.HttpAttributesCelMatchInput())),
            custom_match=extension_pb2.TypedExtensionConfig(
                name="envoy.matching.matchers.cel_matcher", typed_config=pack(expression))))


def _execute(name: str, *filters: extension_pb2.TypedExtensionConfig) -> matcher_pb2.Matcher.OnMatch:
    configs = [core_extension_pb2.TypedExtensionConfig(name=f.name, typed_config=f.typed_config) for f in filters]
    if len(configs) == 1:
        action = composite_pb2.ExecuteFilterAction(typed_config=configs[0])
    else:
        action = composite_pb2.ExecuteFilterAction(
            filter_chain=composite_pb2.FilterChainConfiguration(typed_config=configs))
    return matcher_pb2.Matcher.OnMatch(action=extension_pb2.TypedExtensionConfig(name=name, typed_config=pack(action)))


