"""Envoy's listeners and their HTTP connection manager.

- ``hapax_http``: HTTP/1.1 and HTTP/2 (HTTPS with ``server.tls``, by ALPN).
- ``hapax_http3``: QUIC, with ``server.http3``; ``alt-svc`` on every answer
  advertises it.
- ``hapax_metrics``: ``GET /metrics``, answered by ext_proc.

The connection manager runs the compressor (a JSON answer is gzip'd for a
client that accepts it), the lane's ``json_to_metadata`` (when some request
can take a lane), the custom response for a provider that refuses the
gateway's credentials or answers 404, the router-level ext_proc step and the
router. Envoy's
own local replies become OpenAI error JSON; its access log is one JSON line
per request on its stdout, apart from its own log on stderr (hapax/log_relay.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import (
    address_pb2,
    base_pb2,
    protocol_pb2,
    substitution_format_string_pb2,
)
from envoy.config.core.v3 import extension_pb2 as core_extension_pb2
from envoy.config.listener.v3 import (
    listener_components_pb2,
    listener_pb2,
    quic_config_pb2,
    udp_listener_config_pb2,
)
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.access_loggers.filters.cel.v3 import cel_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2
from envoy.extensions.compression.gzip.compressor.v3 import gzip_pb2
from envoy.extensions.filters.http.compressor.v3 import compressor_pb2
from envoy.extensions.filters.http.custom_response.v3 import custom_response_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.http.custom_response.local_response_policy.v3 import (
    local_response_policy_pb2,
)
from envoy.extensions.transport_sockets.quic.v3 import quic_transport_pb2
from envoy.type.matcher.v3 import regex_pb2, status_code_input_pb2, string_pb2
from google.protobuf import struct_pb2, wrappers_pb2
from xds.core.v3 import extension_pb2
from xds.type.matcher.v3 import matcher_pb2
from xds.type.matcher.v3 import string_pb2 as xds_string_pb2

from control_plane.cel import MetadataPresent
from control_plane.config.model import HapaxConfig
from control_plane.plan import Plan
from control_plane.protobuf import ads, duration, pack
from control_plane.resources import admission, body_routing, client_keys, passthrough, regional
from control_plane.resources.ext_proc_filters import router_ext_proc_filter
from control_plane.resources.names import (
    EXT_PROC_CLUSTER,
    EXT_PROC_HTTP_CLUSTER,
    HOST_KEY_SOURCE_KEY,
    HTTP3_LISTENER_NAME,
    LISTENER_NAME,
    MAX_REQUEST_BYTES,
    METADATA_NAMESPACE,
    METRICS_LISTENER_NAME,
    ROUTE_CONFIG_NAME,
    direct_json,
    json_headers,
    method_is,
    socket_address,
)
from control_plane.resources.secrets import HTTP3_TLS_SECRET, TLS_SECRET, downstream_tls
from control_plane.resources.stats import stats_label_keys
from hapax import wire

# The provider an attempt went to, in Envoy's substitution format.
UPSTREAM_PROVIDER = f"%UPSTREAM_METADATA({METADATA_NAMESPACE}:{wire.HOST_PROVIDER_KEY})%"
# Where that provider's key comes from: "providers.NAME.api_key, from ${VAR}" (clusters.py).
UPSTREAM_KEY_SOURCE = f"%UPSTREAM_METADATA({METADATA_NAMESPACE}:{HOST_KEY_SOURCE_KEY})%"

# Edge limits (docs/operations.md: Edge limits). Seconds to receive a request's headers,
# as in Envoy's edge-proxy example.
REQUEST_HEADERS_TIMEOUT = 10
# Over either, Envoy's codec answers 431. Clients send a dozen or two headers; below Envoy's
# default of 100, so that what Envoy and ext_proc add to a request still fits under it.
MAX_HEADERS_COUNT = 64
MAX_REQUEST_HEADERS_KB = 60

# Envoy's own local replies (no healthy provider, connect failure, timeout...)
# are plain text by default; clients of an OpenAI API expect error JSON.
_LOCAL_REPLY_ERRORS = (
    (("UT",), 504, "The provider did not answer in time.", "timeout"),
    (("UO",), 503, "The gateway is at capacity for this provider.", "overloaded"),
    (("NC",), 503, "No provider chain was selected for this request.", "no_provider"),
    (("UH", "UF", "URX", "UC", "UR", "LR"), 503, "No provider could serve the request.", "provider_unavailable"),
)


def _json_mapper(flt: accesslog_pb2.AccessLogFilter, status: int, message_text: str, err_type: str, code: str,
                 headers: Sequence[base_pb2.HeaderValueOption] = ()) -> hcm_pb2.ResponseMapper:
    fmt = struct_pb2.Struct()
    fmt.update({"error": {"message": message_text, "type": err_type, "param": None, "code": code}})
    return hcm_pb2.ResponseMapper(
        filter=flt,
        status_code=wrappers_pb2.UInt32Value(value=status),
        body_format_override=substitution_format_string_pb2.SubstitutionFormatString(json_format=fmt),
        headers_to_add=list(headers),
    )


def _status_is_filter(status: int) -> accesslog_pb2.AccessLogFilter:
    return accesslog_pb2.AccessLogFilter(status_code_filter=accesslog_pb2.StatusCodeFilter(
        comparison=accesslog_pb2.ComparisonFilter(
            op=accesslog_pb2.ComparisonFilter.EQ,
            value=base_pb2.RuntimeUInt32(default_value=status, runtime_key=f"hapax.unused.{status}"))))


# How long a client shed for overload should wait before it tries again.
OVERLOAD_RETRY_AFTER_SECONDS = 1


def _details_filter(expression: str) -> accesslog_pb2.AccessLogFilter:
    """A CEL condition on the reply (``response.code_details``: why Envoy answered so)."""
    return accesslog_pb2.AccessLogFilter(extension_filter=accesslog_pb2.ExtensionFilter(
        name="envoy.access_loggers.extension_filters.cel", typed_config=pack(cel_pb2.ExpressionFilter(
            expression=expression))))


def _shed_headers(headers: Sequence[base_pb2.HeaderValueOption]) -> list[base_pb2.HeaderValueOption]:
    return [*headers, base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key="retry-after", value=str(OVERLOAD_RETRY_AFTER_SECONDS)),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD)]


def _overload_mappers(headers: Sequence[base_pb2.HeaderValueOption]) -> list[hcm_pb2.ResponseMapper]:
    """The gateway's own limits: a 503 with retry-after, never a bare 500 (docs/operations.md: Overload).

    ext_proc's cluster at its limit (clusters.ext_proc_grpc_cluster) fails the ext_proc filter
    with gRPC UNAVAILABLE and an "overflow" reset, which Envoy answers with an empty 500;
    the overload manager's stop_accepting_requests answers 503 "envoy overloaded" (details
    "overload", no response flag).
    """
    shed = _shed_headers(headers)
    ext_proc_full = accesslog_pb2.AccessLogFilter(and_filter=accesslog_pb2.AndFilter(filters=[
        _status_is_filter(500),
        _details_filter("response.code_details.startsWith('ext_proc_error_gRPC_error_14')"
                        " && response.code_details.contains('overflow')")]))
    overload_manager = accesslog_pb2.AccessLogFilter(and_filter=accesslog_pb2.AndFilter(filters=[
        _status_is_filter(503), _details_filter("response.code_details == 'overload'")]))
    # Any other ext_proc failure (a worker that died or stalled under the request): the gateway's
    # own trouble, passing (the supervisor restarts a worker within a second or so).
    ext_proc_failed = accesslog_pb2.AccessLogFilter(and_filter=accesslog_pb2.AndFilter(filters=[
        _status_is_filter(500), _details_filter("response.code_details.startsWith('ext_proc_error')")]))
    return [
        _json_mapper(ext_proc_full, 503, "The gateway is at capacity; try again shortly.", "server_error",
                     "overloaded", shed),
        _json_mapper(overload_manager, 503, "The gateway is out of memory headroom; try again shortly.",
                     "server_error", "overloaded", shed),
        _json_mapper(ext_proc_failed, 503, "The gateway could not process the request (%RESPONSE_CODE_DETAILS%); "
                     "try again shortly.", "server_error", "gateway_error", shed),
    ]


def local_reply_config(headers: Sequence[base_pb2.HeaderValueOption] = (), *,
                       router_step: bool = False,
                       residency: Mapping[str, tuple[list[str], list[str]]] | None = None,
                       anthropic_routes: bool = False) -> hcm_pb2.LocalReplyConfig:
    """Envoy's own replies as OpenAI error JSON; ``headers`` go on each reply mapped so.

    ``router_step``: the connection manager has the router step, which completes a 503
    provider_unavailable with the providers' reasons (_unavailable_to_router_step).
    ``residency``: regional.residency, whose requests' 503 says which region they may not leave.
    ``anthropic_routes``: some route serves Anthropic's Messages API; its requests get each reply
    in Anthropic's error shape (_anthropic_twins).
    """
    # Each flag's reply only with the status Envoy gives it: the custom response's 502 for a
    # provider's last 404 is a local reply too, and carries URX once the retries are spent.
    marked = [_unavailable_to_router_step(headers)] if router_step else []
    # A pinned client's region first: its pin wins over its route's department's.
    marked += [_pinned_unavailable(region, _key_is_one_of(key_ids), headers)
               for region, (_, key_ids) in (residency or {}).items() if key_ids]
    marked += [_pinned_unavailable(region, _department_is_one_of(departments), headers)
               for region, (departments, _) in (residency or {}).items()]
    mappers = _overload_mappers(headers) + marked + [
        _json_mapper(
            accesslog_pb2.AccessLogFilter(and_filter=accesslog_pb2.AndFilter(filters=[
                _flags_filter(flags), _status_is_filter(status)])),
            status, f"{text} (%LOCAL_REPLY_BODY%)", "server_error", code,
            _shed_headers(headers) if code == "overloaded" else headers)
        for flags, status, text, code in _LOCAL_REPLY_ERRORS
    ]
    # Envoy answers 413 itself when a body outgrows the buffer; ext_proc never does.
    too_large = _status_is_filter(413)
    mappers.append(_json_mapper(
        too_large, 413, f"The request body is larger than the gateway accepts ({MAX_REQUEST_BYTES} bytes).",
        "invalid_request_error", "request_too_large", headers))
    mappers += _edge_mappers(headers) + _key_mappers(headers) + [_limits_unavailable_mapper(headers)]
    # Last: any other 500 of Envoy's own still says what it is, as JSON (ext_proc's own answers,
    # marked by their details, are JSON already and keep their words).
    envoys_500 = accesslog_pb2.AccessLogFilter(and_filter=accesslog_pb2.AndFilter(filters=[
        _status_is_filter(500),
        _details_filter(f"!response.code_details.startsWith('{wire.GATEWAY_DETAILS_PREFIX}')")]))
    mappers.append(_json_mapper(envoys_500, 500, "The gateway failed to handle the request "
                                "(%RESPONSE_CODE_DETAILS%).", "server_error", "internal_error", headers))
    return hcm_pb2.LocalReplyConfig(mappers=[*(_anthropic_twins(mappers) if anthropic_routes else ()), *mappers])


# A request on a route of Anthropic's API (its route's handler, in the route's metadata).
_MESSAGES_ROUTE = _details_filter(
    f"xds.route_metadata.filter_metadata['{wire.METADATA_NAMESPACE}']['{wire.RouteKey.HANDLER}'] in "
    f"[{', '.join(repr(str(handler)) for handler in wire.ANTHROPIC_HANDLERS)}]")


def _anthropic_twins(mappers: Sequence[hcm_pb2.ResponseMapper]) -> list[hcm_pb2.ResponseMapper]:
    """Each OpenAI-shaped reply again, first, for the Messages API's routes: the same status,
    headers and words, in Anthropic's error JSON (``{"type": "error", "error": {type, message}}``),
    which the anthropic SDK reads. The route's filter goes last: it is looked at only for a reply
    that the others already matched."""
    twins = []
    for mapper in mappers:
        body_fields = mapper.body_format_override.json_format.fields
        if "error" not in body_fields:  # (indexing a missing key would add it to the original)
            continue
        error = body_fields["error"].struct_value.fields
        status = mapper.status_code.value
        body = struct_pb2.Struct()
        body.update({"type": "error", "error": {"type": wire.anthropic_error_type(status),
                                                "message": error["message"].string_value}})
        twins.append(hcm_pb2.ResponseMapper(
            filter=accesslog_pb2.AccessLogFilter(and_filter=accesslog_pb2.AndFilter(
                filters=[mapper.filter, _MESSAGES_ROUTE])),
            status_code=mapper.status_code,
            body_format_override=substitution_format_string_pb2.SubstitutionFormatString(json_format=body),
            headers_to_add=list(mapper.headers_to_add)))
    return twins


def _flags_filter(flags: Sequence[str]) -> accesslog_pb2.AccessLogFilter:
    return accesslog_pb2.AccessLogFilter(response_flag_filter=accesslog_pb2.ResponseFlagFilter(flags=list(flags)))


def _unavailable_to_router_step(headers: Sequence[base_pb2.HeaderValueOption]) -> hcm_pb2.ResponseMapper:
    """The 503 provider_unavailable of a request the router step routed, marked for it.

    Why no provider could serve is known in ext_proc (its prober's verdicts and the
    retry-afters it saw), not in Envoy. The router step sees this reply on its way out
    (it is above the router) and, finding the mark, puts each provider's reason in the
    message. Marked only here, so the success path costs nothing. A lane's request
    (no router step, no chain header) keeps the plain reply below.
    """
    flags, status, text, code = _LOCAL_REPLY_ERRORS[-1]
    routed = accesslog_pb2.AccessLogFilter(and_filter=accesslog_pb2.AndFilter(filters=[
        _flags_filter(flags), _status_is_filter(status), _request_has(wire.CHAIN_HEADER)]))
    mark = base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=wire.UNAVAILABLE_HEADER, value="1"),
                                      append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD)
    return _json_mapper(routed, status, f"{text} (%LOCAL_REPLY_BODY%)", "server_error", code, [*headers, mark])


def _pinned_unavailable(region: str, pinned: accesslog_pb2.AccessLogFilter,
                        headers: Sequence[base_pb2.HeaderValueOption]) -> hcm_pb2.ResponseMapper:
    """The 503 provider_unavailable of a lane request ``pinned`` to ``region`` (regions.residency),
    which no router step words: it says where the request must stay."""
    flags, status, text, code = _LOCAL_REPLY_ERRORS[-1]
    on_a_lane = accesslog_pb2.AccessLogFilter(and_filter=accesslog_pb2.AndFilter(filters=[
        _flags_filter(flags), _status_is_filter(status), pinned]))
    message = (f"No provider in region {region}, which this request's department may not leave (data residency), "
               "could serve the request. (%LOCAL_REPLY_BODY%)")
    return _json_mapper(on_a_lane, status, message, "server_error", code, headers)


def _key_is_one_of(key_ids: Sequence[str]) -> accesslog_pb2.AccessLogFilter:
    # Ids are hex digits: nothing in them needs escaping.
    return accesslog_pb2.AccessLogFilter(header_filter=accesslog_pb2.HeaderFilter(
        header=route_components_pb2.HeaderMatcher(name=wire.KEY_ID_HEADER, string_match=string_pb2.StringMatcher(
            safe_regex=regex_pb2.RegexMatcher(regex=f"^(?:{'|'.join(key_ids)})$")))))


def _department_is_one_of(departments: Sequence[str]) -> accesslog_pb2.AccessLogFilter:
    """The route's ``department`` label (its metadata) is one of ``departments``."""
    # CEL string literals: department names are the config's, their quotes and backslashes escaped.
    names = ", ".join("'" + d.replace("\\", "\\\\").replace("'", "\\'") + "'" for d in departments)
    return _details_filter(f"xds.route_metadata.filter_metadata['{METADATA_NAMESPACE}']['department'] in [{names}]")


def _request_has(header: str) -> accesslog_pb2.AccessLogFilter:
    return accesslog_pb2.AccessLogFilter(header_filter=accesslog_pb2.HeaderFilter(
        header=route_components_pb2.HeaderMatcher(name=header, present_match=True)))


def _edge_mappers(headers: Sequence[base_pb2.HeaderValueOption]) -> list[hcm_pb2.ResponseMapper]:
    """The edge limits' answers (http_connection_manager), as JSON a client can read."""
    # Envoy refuses an upgrade no upgrade_configs allows with a 403; a client would take that
    # for its key (and the provider-errors filter for the gateway's). Neither: the API has none.
    upgrade = accesslog_pb2.AccessLogFilter(and_filter=accesslog_pb2.AndFilter(
        filters=[_status_is_filter(403), _request_has("upgrade")]))
    return [
        _json_mapper(upgrade, 400, "The gateway does not upgrade connections (Upgrade: %REQ(UPGRADE)%); "
                     "send plain HTTP requests.", "invalid_request_error", "upgrade_not_supported", headers),
        _json_mapper(_status_is_filter(408), 408, "The request was not received in time: the gateway allows "
                     f"{REQUEST_HEADERS_TIMEOUT}s for the headers and server.request_timeout seconds for the whole "
                     "request.", "invalid_request_error", "request_timeout", headers),
        _json_mapper(_status_is_filter(431), 431, f"The request headers are too many or too large (at most "
                     f"{MAX_HEADERS_COUNT} headers, {MAX_REQUEST_HEADERS_KB} KiB in all).",
                     "invalid_request_error", "request_header_fields_too_large", headers),
    ]


def _key_mappers(headers: Sequence[base_pb2.HeaderValueOption]) -> list[hcm_pb2.ResponseMapper]:
    """The key check's 401s (client_keys.py), in OpenAI's words for them."""
    missing = accesslog_pb2.AccessLogFilter(and_filter=accesslog_pb2.AndFilter(filters=[
        _status_is_filter(401), _details_filter(f"response.code_details == '{client_keys.MISSING_KEY_DETAILS}'")]))
    refused = accesslog_pb2.AccessLogFilter(and_filter=accesslog_pb2.AndFilter(filters=[
        _status_is_filter(401),
        _details_filter(f"response.code_details.endsWith('{client_keys.REFUSED_KEY_DETAILS_SUFFIX}')")]))
    challenge = client_keys.bearer_challenge(headers)
    out_of_scope = accesslog_pb2.AccessLogFilter(and_filter=accesslog_pb2.AndFilter(filters=[
        _status_is_filter(403),
        _details_filter(f"response.code_details.startsWith('{client_keys.OUT_OF_SCOPE_DETAILS_PREFIX}')")]))
    model = f"%DYNAMIC_METADATA({wire.REQUEST_NAMESPACE}:{wire.BODY_MODEL})%"
    return [
        _json_mapper(out_of_scope, 403, f"This key may not call {model} on this path: its client's models or "
                     "routes (clients.NAME in the gateway's configuration) do not include it.",
                     "invalid_request_error", "not_allowed", headers),
        _json_mapper(missing, 401, "You didn't provide an API key. Send your Hapax key in an Authorization "
                     "header using Bearer auth (Authorization: Bearer YOUR_KEY), or in x-api-key.",
                     "invalid_request_error", "missing_api_key", challenge),
        _json_mapper(refused, 401, "Incorrect API key provided. Ask the gateway's operators for a key "
                     "(hapax keys create).", "invalid_request_error", "invalid_api_key", challenge),
    ]


def _limits_unavailable_mapper(headers: Sequence[base_pb2.HeaderValueOption]) -> hcm_pb2.ResponseMapper:
    """The admission check failed (ext_proc or its store did not answer) under ``on_store_error: closed``."""
    failed = accesslog_pb2.AccessLogFilter(and_filter=accesslog_pb2.AndFilter(filters=[
        _status_is_filter(503), _details_filter(f"response.code_details == '{admission.CHECK_FAILED_DETAILS}'")]))
    return _json_mapper(failed, 503, "The gateway cannot check this request's limits right now, and its "
                        "configuration (limits.on_store_error: closed) refuses what it cannot check; try again "
                        "shortly.", "server_error", "limits_unavailable", _shed_headers(headers))


# A provider that refuses the gateway's credentials is the gateway's problem, not
# the client's: a client that saw 401 would think its own key was wrong.
_CREDENTIAL_REJECTED = (401, 403)
# Nor is a provider's 404: the gateway answers an unknown model itself (404 model_not_found,
# before any provider) and sends each provider only its configured path and model. ext_proc
# turns the 404s it reads into precise 502s (the translators' provider_not_found); this
# catches those it never reads (the passthrough lane's, a stream sent as it is), whose body
# Envoy does not read either: it cannot tell the path from the model, so it names both.
_NOT_FOUND = 404


def _status_is(status: int) -> matcher_pb2.Matcher.MatcherList.Predicate:
    return matcher_pb2.Matcher.MatcherList.Predicate(
        single_predicate=matcher_pb2.Matcher.MatcherList.Predicate.SinglePredicate(
            input=extension_pb2.TypedExtensionConfig(
                name="status", typed_config=pack(status_code_input_pb2.HttpResponseStatusCodeMatchInput())),
            value_match=xds_string_pb2.StringMatcher(exact=str(status)),
        )
    )


def _answer_502(name: str, message: str, code: str) -> matcher_pb2.Matcher.OnMatch:
    body = struct_pb2.Struct()
    body.update({"error": {"message": message, "type": "server_error", "param": None, "code": code}})
    policy = local_response_policy_pb2.LocalResponsePolicy(
        status_code=wrappers_pb2.UInt32Value(value=502),
        body_format=substitution_format_string_pb2.SubstitutionFormatString(json_format=body),
    )
    return matcher_pb2.Matcher.OnMatch(action=extension_pb2.TypedExtensionConfig(name=name, typed_config=pack(policy)))


def provider_errors_filter() -> hcm_pb2.HttpFilter:
    """A provider's 401 or 403, and a provider's 404, become a 502 naming the provider."""
    predicate = matcher_pb2.Matcher.MatcherList.Predicate
    # Only a provider's answer (from an endpoint with hapax.provider): the gateway's own 4xx stay theirs.
    from_a_provider = passthrough.cel_predicate(
        MetadataPresent("upstream_host_metadata", METADATA_NAMESPACE, wire.HOST_PROVIDER_KEY))
    credential_rejected = matcher_pb2.Matcher.MatcherList.FieldMatcher(
        predicate=predicate(and_matcher=predicate.PredicateList(predicate=[
            predicate(or_matcher=predicate.PredicateList(predicate=[_status_is(s) for s in _CREDENTIAL_REJECTED])),
            from_a_provider])),
        on_match=_answer_502(
            "credential_rejected",
            f"The provider '{UPSTREAM_PROVIDER}' refused the gateway's key ({UPSTREAM_KEY_SOURCE}) "
            "with HTTP %RESPONSE_CODE%. This is a gateway configuration problem, not the client's: "
            "check that variable or key.",
            "provider_auth_failed"))
    not_found = matcher_pb2.Matcher.MatcherList.FieldMatcher(
        predicate=predicate(and_matcher=predicate.PredicateList(predicate=[_status_is(_NOT_FOUND), from_a_provider])),
        on_match=_answer_502(
            "provider_not_found",
            f"The provider '{UPSTREAM_PROVIDER}' answered HTTP 404 to the gateway's request: its base_url "
            "(what the gateway appends its API paths to) or its model is likely wrong. This is a gateway "
            "configuration problem, not the client's.",
            "provider_not_found"))
    matcher = matcher_pb2.Matcher(matcher_list=matcher_pb2.Matcher.MatcherList(
        matchers=[credential_rejected, not_found]))
    config = custom_response_pb2.CustomResponse(custom_response_matcher=matcher)
    return hcm_pb2.HttpFilter(name="envoy.filters.http.custom_response", typed_config=pack(config))


# What the compressor compresses. Not text/event-stream: compressing buffers, and a
# stream's chunks must reach the client as the provider writes them.
COMPRESSED_CONTENT_TYPES = ["application/json"]
# Nor an answer shorter than this: a few hundred bytes fit in one packet either way, and each
# gzip stream costs Envoy a deflate state (measured: ~17 µs of Envoy CPU per SDK JSON answer
# of 350 B, C/B 0.298 -> 0.354 at 64 connections; docs/benchmarks.md).
COMPRESSION_MIN_BYTES = 1024


def compressor_filter() -> hcm_pb2.HttpFilter:
    """gzip for a client that accepts it, of JSON answers only (providers answer uncompressed:
    routes.py). First in the chain, so last on the way back: json_to_metadata and ext_proc
    read the plain body before it is compressed."""
    direction = compressor_pb2.Compressor.CommonDirectionConfig(
        content_type=COMPRESSED_CONTENT_TYPES, min_content_length=wrappers_pb2.UInt32Value(value=COMPRESSION_MIN_BYTES))
    config = compressor_pb2.Compressor(
        response_direction_config=compressor_pb2.Compressor.ResponseDirectionConfig(common_config=direction),
        compressor_library=core_extension_pb2.TypedExtensionConfig(
            name="envoy.compression.gzip.compressor", typed_config=pack(gzip_pb2.Gzip())))
    return hcm_pb2.HttpFilter(name="envoy.filters.http.compressor", typed_config=pack(config))


# One JSON line per request on Envoy's stdout. No credentials, no bodies, no
# query strings (some clients put keys there); request_id is the x-request-id
# that ext_proc's log lines carry too.
_ACCESS_LOG_FIELDS = {
    "ts": "%START_TIME(%Y-%m-%dT%H:%M:%S.%3fZ)%",
    "level": "info",
    "component": "envoy",
    "logger": "access",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "method": "%REQ(:METHOD)%",
    # The client's path, from the route (the request's :path is the provider's
    # once ext_proc has rewritten it); Envoy's own routes (404, /health) have none.
    "path": f"%METADATA(ROUTE:{METADATA_NAMESPACE}:{wire.RouteKey.ROUTE})%",
    "protocol": "%PROTOCOL%",
    "route": "%ROUTE_NAME%",
    "provider": UPSTREAM_PROVIDER,
    "upstream_cluster": "%UPSTREAM_CLUSTER%",
    "status": "%RESPONSE_CODE%",
    "response_flags": "%RESPONSE_FLAGS%",
    "details": "%RESPONSE_CODE_DETAILS%",
    "attempts": "%UPSTREAM_REQUEST_ATTEMPT_COUNT%",
    "duration_ms": "%DURATION%",
    "upstream_first_byte_ms": "%RESPONSE_DURATION%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "client": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
    # The id of the client key Envoy checked (clients:), never the key.
    wire.REQUEST_KEY_ID: f"%DYNAMIC_METADATA({wire.REQUEST_NAMESPACE}:{wire.REQUEST_KEY_ID})%",
}


def access_log(config: HapaxConfig) -> list[accesslog_pb2.AccessLog]:
    if not config.logging.access_log:
        return []
    fields = dict(_ACCESS_LOG_FIELDS)
    for key in stats_label_keys(config):  # department & co., from the route's metadata
        fields[key] = f"%METADATA(ROUTE:{METADATA_NAMESPACE}:{key})%"
    fmt = struct_pb2.Struct()
    fmt.update(fields)
    log_format = substitution_format_string_pb2.SubstitutionFormatString(json_format=fmt)
    # Not stderr: Envoy writes this log in buffered slices that end mid-line, and its own
    # log lines on the same stream landed between them. The supervisor relays both streams.
    return [accesslog_pb2.AccessLog(
        name="envoy.access_loggers.stdout",
        typed_config=pack(stream_pb2.StdoutAccessLog(log_format=log_format)),
    )]


def http_connection_manager(plan: Plan) -> hcm_pb2.HttpConnectionManager:
    config, lane = plan.config, plan.uses_lanes
    # The access log to ext_proc counts the lanes' requests and settles reservations.
    logged = lane or config.limited or config.ledger is not None
    return hcm_pb2.HttpConnectionManager(
        access_log=access_log(config) + ([passthrough.access_logger(EXT_PROC_CLUSTER)] if logged else []),
        stat_prefix="hapax",
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        rds=hcm_pb2.Rds(route_config_name=ROUTE_CONFIG_NAME, config_source=ads()),
        # On the way back filters run in reverse: the compressor, first here, compresses last.
        http_filters=[
            compressor_filter(),
            # First of what reads the request: the region header is the edge's, or nobody's.
            *regional.region_filters(config),
            *client_keys.key_filters(config),
            *([passthrough.json_to_metadata_filter(reservations=config.limited, ledger=config.ledger is not None),
               body_routing.lane_model_filter()] if lane or config.reads_request_bodies else []),
            # After json_to_metadata: both read the body's model (and the reservation its max tokens).
            *client_keys.scope_filter(config),
            *admission.admission_filter(config),
            # After the limits: a refused request waits for no slot.
            *admission.queue_filter(config),
            provider_errors_filter(),
            router_ext_proc_filter(),
            hcm_pb2.HttpFilter(name="envoy.filters.http.router", typed_config=pack(router_pb2.Router(
                upstream_log=[passthrough.hold_off_logger(EXT_PROC_CLUSTER)] if lane else [],
                # No x-envoy-original-path (the client's query string), -original-host,
                # -expected-rq-timeout-ms to providers, nor -upstream-service-time to clients.
                # (x-envoy-attempt-count, which the route asks for, is still set.)
                suppress_envoy_headers=True,
            ))),
        ],
        local_reply_config=local_reply_config(
            router_step=True, residency=regional.residency(config),
            anthropic_routes=any(route.handler in wire.ANTHROPIC_HANDLERS for route in config.routes)),
        stream_idle_timeout=duration(300),
        # Edge limits, as Envoy's edge-proxy guidance sets them (docs/operations.md: Edge limits).
        # The headers, then the whole request, within a bound: a client that sends slowly holds
        # a connection and its buffer. Envoy disarms request_timeout once the request has gone
        # upstream or the answer has begun, so it never cuts a long (streamed) answer.
        request_headers_timeout=duration(REQUEST_HEADERS_TIMEOUT),
        request_timeout=duration(config.server.request_timeout),
        common_http_protocol_options=protocol_pb2.HttpProtocolOptions(
            idle_timeout=duration(300),
            max_headers_count=wrappers_pb2.UInt32Value(value=MAX_HEADERS_COUNT),
            # Some servers read "x_api_key" as "x-api-key" (CGI turns '-' into '_'): such a
            # name is dropped here, before any filter or provider sees it.
            headers_with_underscores_action=protocol_pb2.HttpProtocolOptions.DROP_HEADER,
        ),
        max_request_headers_kb=wrappers_pb2.UInt32Value(value=MAX_REQUEST_HEADERS_KB),
        use_remote_address=wrappers_pb2.BoolValue(value=True),
        # The client's address is the gateway's to know (access log), not a provider's.
        skip_xff_append=True,
    )


def listener(plan: Plan) -> listener_pb2.Listener:
    config = plan.config
    chain = listener_components_pb2.FilterChain(filters=[listener_components_pb2.Filter(
        name="envoy.filters.network.http_connection_manager",
        typed_config=pack(http_connection_manager(plan)),
    )])
    if config.server.tls is not None:
        # HTTPS; HTTP/2 or HTTP/1.1 by ALPN (codec AUTO follows it).
        chain.transport_socket.CopyFrom(base_pb2.TransportSocket(
            name="envoy.transport_sockets.tls",
            typed_config=pack(downstream_tls(TLS_SECRET, ["h2", "http/1.1"]))))
    return listener_pb2.Listener(
        name=LISTENER_NAME,
        address=socket_address(config.server.host, config.server.port),
        per_connection_buffer_limit_bytes=wrappers_pb2.UInt32Value(value=MAX_REQUEST_BYTES),
        filter_chains=[chain],
    )


def http3_listener(plan: Plan) -> listener_pb2.Listener | None:
    config = plan.config
    http3 = config.server.http3
    if not http3.enabled or http3.certificate is None:
        return None
    secret = TLS_SECRET if http3.certificate == config.server.tls else HTTP3_TLS_SECRET
    transport = quic_transport_pb2.QuicDownstreamTransport(
        downstream_tls_context=downstream_tls(secret, ["h3"]),
        # No 0-RTT: every API call is a POST that spends money; a replayed one
        # must be impossible, not merely unlikely. Resumption still saves the
        # certificate exchange. (docs/operations.md: HTTPS and HTTP/3.)
        enable_early_data=wrappers_pb2.BoolValue(value=False),
    )
    hcm = http_connection_manager(plan)
    hcm.codec_type = hcm_pb2.HttpConnectionManager.HTTP3
    hcm.http3_protocol_options.CopyFrom(protocol_pb2.Http3ProtocolOptions())
    address = socket_address(config.server.host, config.server.http3_port)
    address.socket_address.protocol = address_pb2.SocketAddress.UDP
    return listener_pb2.Listener(
        name=HTTP3_LISTENER_NAME,
        address=address,
        per_connection_buffer_limit_bytes=wrappers_pb2.UInt32Value(value=MAX_REQUEST_BYTES),
        udp_listener_config=udp_listener_config_pb2.UdpListenerConfig(
            quic_options=quic_config_pb2.QuicProtocolOptions()),
        filter_chains=[listener_components_pb2.FilterChain(
            transport_socket=base_pb2.TransportSocket(
                name="envoy.transport_sockets.quic", typed_config=pack(transport)),
            filters=[listener_components_pb2.Filter(
                name="envoy.filters.network.http_connection_manager", typed_config=pack(hcm))],
        )],
    )


ALT_SVC_MAX_AGE = 86400


def alt_svc(config: HapaxConfig) -> list[base_pb2.HeaderValueOption]:
    """Advertises HTTP/3 on every answer, so that clients upgrade (not with an ephemeral port: unknown here)."""
    http3 = config.server.http3
    if not http3.enabled or http3.certificate is None or config.server.http3_port == 0:
        return []
    return [base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key="alt-svc", value=f'h3=":{config.server.http3_port}"; ma={ALT_SVC_MAX_AGE}'),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD)]


def metrics_listener(config: HapaxConfig) -> listener_pb2.Listener:
    """``server.metrics_port``, the admin side: GET /metrics and the detailed GET /health, by ext_proc;
    GET /stats/prometheus, Envoy's own stats, from Envoy's admin (which is on a Unix socket only
    Hapax can open: this read-only route is the one way to it from the network)."""
    routes = route_pb2.RouteConfiguration(
        name=METRICS_LISTENER_NAME,
        # The admin cluster is in each Envoy's bootstrap, not in this snapshot.
        validate_clusters=wrappers_pb2.BoolValue(value=False),
        virtual_hosts=[route_components_pb2.VirtualHost(
        name="metrics", domains=["*"], routes=[
            route_components_pb2.Route(
                match=route_components_pb2.RouteMatch(path=wire.METRICS_PATH, headers=method_is("GET")),
                route=route_components_pb2.RouteAction(cluster=EXT_PROC_HTTP_CLUSTER, timeout=duration(10))),
            route_components_pb2.Route(  # the detailed health, with a refused edit's reasons
                match=route_components_pb2.RouteMatch(path=wire.HEALTH_PATH, headers=method_is("GET")),
                route=route_components_pb2.RouteAction(cluster=EXT_PROC_HTTP_CLUSTER, timeout=duration(10),
                                                       prefix_rewrite=wire.ADMIN_HEALTH_PATH)),
            route_components_pb2.Route(  # exact path, GET only: nothing else of the admin is reachable
                match=route_components_pb2.RouteMatch(path=wire.ENVOY_STATS_PATH, headers=method_is("GET")),
                route=route_components_pb2.RouteAction(cluster=wire.ENVOY_ADMIN_CLUSTER, timeout=duration(10))),
            route_components_pb2.Route(
                match=route_components_pb2.RouteMatch(prefix="/"),
                direct_response=direct_json(404, f"This port serves GET {wire.METRICS_PATH}, GET "
                                                 f"{wire.ENVOY_STATS_PATH} (Envoy's) and GET {wire.HEALTH_PATH} only.",
                                             "invalid_request_error", "unknown_url"),
                response_headers_to_add=json_headers()),
        ])])
    hcm = hcm_pb2.HttpConnectionManager(
        stat_prefix=METRICS_LISTENER_NAME,
        route_config=routes,
        http_filters=[hcm_pb2.HttpFilter(name="envoy.filters.http.router", typed_config=pack(router_pb2.Router()))],
    )
    return listener_pb2.Listener(
        name=METRICS_LISTENER_NAME,
        address=socket_address(config.server.host, config.server.metrics_port),
        filter_chains=[listener_components_pb2.FilterChain(filters=[listener_components_pb2.Filter(
            name="envoy.filters.network.http_connection_manager", typed_config=pack(hcm))])],
    )
