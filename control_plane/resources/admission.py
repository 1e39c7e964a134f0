"""Envoy's rate limit filter, asking ext_proc's admission service before a request under limits goes on.

Present only when some client or department has limits (``HapaxConfig.limited``). The filter
sends one descriptor per request (``wire.AdmissionEntry``): the request id (the reservation's
name), the client key's id, the route, and what ``json_to_metadata`` read of the body (model,
``max_tokens``, ``max_completion_tokens``) with its size; ext_proc reserves the worst case and
answers OK, or OVER_LIMIT with a 429 body of its own (ext_proc/admission.py).

When ext_proc cannot be asked (or its store cannot answer and ``on_store_error: closed`` says
refuse), ``on_store_error`` decides: ``open`` lets the request through, ``closed`` answers 503.

With ``queue:``, a second rate limit filter (its own domain) holds a request while its first
provider has no free slot (ext_proc/queue.py) and gives the slot back when the stream is done.
"""

from __future__ import annotations

from envoy.config.core.v3 import config_source_pb2, grpc_service_pb2
from envoy.config.ratelimit.v3 import rls_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.ratelimit.v3 import rate_limit_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from envoy.type.metadata.v3 import metadata_pb2
from envoy.type.v3 import http_status_pb2
from google.protobuf import any_pb2

from control_plane.config.model import HapaxConfig, RouteConfig
from control_plane.protobuf import duration, pack
from control_plane.resources.names import EXT_PROC_CLUSTER, FIRST_WORKER_CLUSTER, METADATA_NAMESPACE
from hapax import wire
from hapax.wire import AdmissionEntry

ADMISSION_FILTER = "hapax.limit_check"
QUEUE_FILTER = "hapax.slot_check"
QUEUE_TIMEOUT_MARGIN_SECONDS = 5.0
# Envoy's default is 20 ms: a busy worker would let requests through unchecked (or, closed,
# refuse them). The check is one store round trip; a second bounds a stalled store.
CHECK_TIMEOUT_SECONDS = 1.0

# Envoy's reason for the 503 of a check that failed (failure_mode_deny), which listeners.py words.
CHECK_FAILED_DETAILS = "rate_limiter_error"

Action = route_components_pb2.RateLimit.Action


def _header(name: str, key: AdmissionEntry) -> route_components_pb2.RateLimit.Action:
    return Action(request_headers=Action.RequestHeaders(header_name=name, descriptor_key=key, skip_if_absent=True))


def _metadata(namespace: str, path: str, key: AdmissionEntry, source: int) -> route_components_pb2.RateLimit.Action:
    return Action(metadata=Action.MetaData(
        descriptor_key=key, source=source, skip_if_absent=True,
        metadata_key=metadata_pb2.MetadataKey(key=namespace, path=[metadata_pb2.MetadataKey.PathSegment(key=path)])))


def _check(name: str) -> route_components_pb2.RateLimit.Action:
    return Action(generic_key=Action.GenericKey(descriptor_key=AdmissionEntry.CHECK, descriptor_value=name))


def region_actions(config: HapaxConfig) -> list[route_components_pb2.RateLimit.Action]:
    """With regions, what picks the request's chain (its region, its country): the chain whose
    providers it may reach (the dearest's price) and wait for (the queue's first provider)."""
    if config.regions is None:
        return []
    country = [_header(wire.GEO_COUNTRY_HEADER, AdmissionEntry.COUNTRY)] if config.regions.geoip else []
    return [_header(config.regions.header, AdmissionEntry.REGION), *country]


def descriptor_actions(first: route_components_pb2.RateLimit.Action,
                       config: HapaxConfig) -> list[route_components_pb2.RateLimit.Action]:
    """One descriptor; every entry may be absent but ``first``, which decides whether there is one
    (and so a check at all)."""
    dynamic, route = Action.MetaData.DYNAMIC, Action.MetaData.ROUTE_ENTRY
    return [
        first,
        _header(wire.REQUEST_ID_HEADER, AdmissionEntry.REQUEST_ID),
        _header(wire.KEY_ID_HEADER, AdmissionEntry.KEY_ID),
        _metadata(METADATA_NAMESPACE, wire.RouteKey.ROUTE, AdmissionEntry.ROUTE, route),
        _metadata(wire.REQUEST_NAMESPACE, wire.BODY_MODEL, AdmissionEntry.MODEL, dynamic),
        _header("content-length", AdmissionEntry.BYTES),
        *(_metadata(wire.REQUEST_NAMESPACE, field, field, dynamic) for field in wire.RESERVATION_FIELDS),
        *region_actions(config),
    ]


def _ask_ext_proc(name: str, domain: str, cluster: str, timeout: float,
                  rate_limits: list[route_components_pb2.RateLimit], **settings: object) -> hcm_pb2.HttpFilter:
    """A rate limit filter whose service is ext_proc's (ext_proc/admission.py: AdmissionService)."""
    filter_config = rate_limit_pb2.RateLimit(
        domain=domain, request_type="external", timeout=duration(timeout),
        disable_x_envoy_ratelimited_header=True,
        rate_limit_service=rls_pb2.RateLimitServiceConfig(
            grpc_service=grpc_service_pb2.GrpcService(
                envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=cluster)),
            transport_api_version=config_source_pb2.V3),
        rate_limits=rate_limits, **settings)
    return hcm_pb2.HttpFilter(name=name, typed_config=pack(filter_config))


def limited_key_ids(config: HapaxConfig) -> list[str]:
    """The keys whose requests a limit may hold: their client's own, or their department's."""
    departments = {name for name, limits in config.limits.departments.items() if limits}
    return [line.key_id for client in (config.clients or {}).values()
            if client.limits or client.department_name in departments for line in client.keys]


def _key_is_one_of(key_ids: list[str]) -> route_components_pb2.RateLimit.Action:
    # Ids are hex digits: nothing in them needs escaping.
    return Action(header_value_match=Action.HeaderValueMatch(
        descriptor_key=AdmissionEntry.CHECK, descriptor_value=wire.ADMISSION_CHECK,
        headers=[route_components_pb2.HeaderMatcher(name=wire.KEY_ID_HEADER, string_match=string_pb2.StringMatcher(
            safe_regex=regex_pb2.RegexMatcher(regex=f"^(?:{'|'.join(key_ids)})$")))]))


def admission_filter(config: HapaxConfig) -> list[hcm_pb2.HttpFilter]:
    """Asks about a request only when a limit may hold it: its key is a limited client's (or of a
    limited department's client), or its route is a limited department's (route_admission).
    Every other request makes no call at all."""
    if not config.limited:
        return []
    key_ids = limited_key_ids(config)
    limits = [route_components_pb2.RateLimit(actions=descriptor_actions(_key_is_one_of(key_ids), config))]
    return [_ask_ext_proc(
        ADMISSION_FILTER, wire.ADMISSION_DOMAIN, EXT_PROC_CLUSTER, CHECK_TIMEOUT_SECONDS,
        limits if key_ids else [],
        failure_mode_deny=config.limits.on_store_error == "closed",
        status_on_error=http_status_pb2.HttpStatus(code=http_status_pb2.ServiceUnavailable))]


def queue_filter(config: HapaxConfig) -> list[hcm_pb2.HttpFilter]:
    """With ``queue:``, a request takes a slot of its first provider as it starts (waiting for one
    while they are all taken) and gives it back when its stream is done (``apply_on_stream_done``).
    Both go to the first ext_proc worker (FIRST_WORKER_CLUSTER): the queue is in one process."""
    if config.queue is None:
        return []
    take = [_check(wire.QUEUE_TAKE), _header(wire.REQUEST_ID_HEADER, AdmissionEntry.REQUEST_ID),
            _header(wire.KEY_ID_HEADER, AdmissionEntry.KEY_ID),
            _metadata(METADATA_NAMESPACE, wire.RouteKey.ROUTE, AdmissionEntry.ROUTE, Action.MetaData.ROUTE_ENTRY),
            _metadata(wire.REQUEST_NAMESPACE, wire.BODY_MODEL, AdmissionEntry.MODEL, Action.MetaData.DYNAMIC),
            *region_actions(config)]
    release = [_check(wire.QUEUE_RELEASE), _header(wire.REQUEST_ID_HEADER, AdmissionEntry.REQUEST_ID)]
    # The wait is ext_proc's to bound (queue.timeout); the filter's time-out only bounds a stalled
    # worker. A queue that cannot be asked lets the request through, to Envoy's own circuit breaker.
    return [_ask_ext_proc(
        QUEUE_FILTER, wire.QUEUE_DOMAIN, FIRST_WORKER_CLUSTER, config.queue.timeout + QUEUE_TIMEOUT_MARGIN_SECONDS,
        [route_components_pb2.RateLimit(actions=take),
         route_components_pb2.RateLimit(actions=release, apply_on_stream_done=True)],
        failure_mode_deny=False,
        rate_limited_status=http_status_pb2.HttpStatus(code=http_status_pb2.ServiceUnavailable))]


def route_admission(config: HapaxConfig, route: RouteConfig) -> dict[str, any_pb2.Any]:
    """A route labelled with a limited department: every request on it is asked about, whatever
    its key (its client may have no department of its own: then the route's is its)."""
    department = route.metrics_labels.get("department")
    if not config.limited or not department or not config.limits.departments.get(department):
        return {}
    always = rate_limit_pb2.RateLimitPerRoute(rate_limits=[
        route_components_pb2.RateLimit(actions=descriptor_actions(_check(wire.ADMISSION_CHECK), config))])
    return {ADMISSION_FILTER: pack(always)}


def not_queued(config: HapaxConfig, route: RouteConfig) -> dict[str, any_pb2.Any]:
    """A ``dedup`` route's requests take no slot: a follower never reaches the provider (it is given
    its leader's answer), and which request leads is only known in the router step, after the take.
    Holding slots for followers would starve the other requests to that provider in the very burst
    coalescing is for."""
    if config.queue is None or route.dedup == "off":
        return {}
    return {QUEUE_FILTER: pack(route_components_pb2.FilterConfig(disabled=True))}


def not_admitted_here(config: HapaxConfig) -> dict[str, any_pb2.Any]:
    """For a route no limit covers and that waits for no provider (``/health``): no check."""
    off = pack(route_components_pb2.FilterConfig(disabled=True))
    return {**({ADMISSION_FILTER: off} if config.limited else {}),
            **({QUEUE_FILTER: off} if config.queue is not None else {})}
