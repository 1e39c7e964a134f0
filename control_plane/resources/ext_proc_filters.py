"""The ext_proc filters: the router step (per request) and the upstream step (per attempt).

Which messages each step gets (processing modes), and the per-route overrides
that set the router step's mode on each route, or turn it off.
"""

from __future__ import annotations

from envoy.config.common.mutation_rules.v3 import mutation_rules_pb2
from envoy.config.core.v3 import base_pb2, grpc_service_pb2
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2, processing_mode_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import any_pb2, wrappers_pb2

from control_plane.protobuf import duration, pack
from control_plane.resources.names import (
    EXT_PROC_CLUSTER,
    EXT_PROC_FILTER,
    FIRST_WORKER_CLUSTER,
    UPSTREAM_EXT_PROC_FILTER,
)
from hapax import wire

PM = processing_mode_pb2.ProcessingMode


def _grpc_service(phase: wire.Phase, cluster: str = EXT_PROC_CLUSTER) -> grpc_service_pb2.GrpcService:
    return grpc_service_pb2.GrpcService(
        envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=cluster),
        timeout=duration(5),
        initial_metadata=[base_pb2.HeaderValue(key=wire.PHASE_METADATA, value=phase)],
    )


def _ext_proc_filter(
    phase: wire.Phase, mode: processing_mode_pb2.ProcessingMode, attributes: tuple[str, ...] = (),
    response_attributes: tuple[str, ...] = (),
) -> ext_proc_pb2.ExternalProcessor:
    return ext_proc_pb2.ExternalProcessor(
        grpc_service=_grpc_service(phase),
        processing_mode=mode,
        request_attributes=list(attributes),
        response_attributes=list(response_attributes),
        message_timeout=duration(5),
        failure_mode_allow=False,
        allow_mode_override=True,
        # Routing headers (:authority, :path) and x-envoy-max-retries are set on purpose.
        mutation_rules=mutation_rules_pb2.HeaderMutationRules(
            allow_all_routing=wrappers_pb2.BoolValue(value=True),
            allow_envoy=wrappers_pb2.BoolValue(value=True),
        ),
    )


def router_ext_proc_filter() -> hcm_pb2.HttpFilter:
    # Per-route overrides set the real mode; this default only covers routes
    # that have none, which is none of ours (see router_mode, per_route_ext_proc).
    mode = PM(request_header_mode=PM.SEND, request_body_mode=PM.NONE,
              response_header_mode=PM.SKIP, response_body_mode=PM.NONE,
              request_trailer_mode=PM.SKIP, response_trailer_mode=PM.SKIP)
    return hcm_pb2.HttpFilter(name=EXT_PROC_FILTER, typed_config=pack(_ext_proc_filter(wire.Phase.ROUTER, mode)))


def upstream_ext_proc_filter() -> hcm_pb2.HttpFilter:
    # Every attempt's response headers reach ext_proc (its status and any
    # retry-after); the body only when ext_proc asks for it per attempt with
    # mode_override, so a JSON answer already in OpenAI's shape never crosses Python.
    mode = PM(
        request_header_mode=PM.SEND,
        request_body_mode=PM.BUFFERED,
        response_header_mode=PM.SEND,
        response_body_mode=PM.NONE,
        request_trailer_mode=PM.SKIP,
        response_trailer_mode=PM.SKIP,
    )
    # The status comes with the first answer message: a stream the step does not read the
    # headers of learns it from its first piece (ext_proc/steps/messages.py: STREAM_AS_SENT).
    # The request's dynamic metadata: what json_to_metadata read of the body (a model-lane request's model).
    attributes = (wire.HOST_METADATA_ATTRIBUTE, wire.ROUTE_METADATA_ATTRIBUTE, wire.REQUEST_METADATA_ATTRIBUTE)
    flt = _ext_proc_filter(wire.Phase.UPSTREAM, mode, attributes, (wire.STATUS_ATTRIBUTE,))
    return hcm_pb2.HttpFilter(name=UPSTREAM_EXT_PROC_FILTER, typed_config=pack(flt))


def router_mode(handler: str) -> processing_mode_pb2.ProcessingMode:
    """The router step's mode on a provider route of ``handler``."""
    # The router step sees each request's final response headers (after every
    # retry, Envoy's own replies included): that is where requests are counted.
    if handler == wire.Handler.MODELS:
        return PM(request_header_mode=PM.SEND, request_body_mode=PM.NONE,
                  response_header_mode=PM.SKIP, response_body_mode=PM.NONE)
    return PM(request_header_mode=PM.SEND, request_body_mode=PM.BUFFERED,
              response_header_mode=PM.SEND, response_body_mode=PM.NONE)


def per_route_ext_proc(mode: processing_mode_pb2.ProcessingMode | None, *,
                       first_worker: bool = False) -> dict[str, any_pb2.Any]:
    """``first_worker``: the router step runs in the first ext_proc worker (a route that coalesces
    requests: identical requests must meet in one process, ext_proc/coalescing.py)."""
    if mode is None:
        per_route = ext_proc_pb2.ExtProcPerRoute(disabled=True)
    else:
        overrides = ext_proc_pb2.ExtProcOverrides(processing_mode=mode)
        if first_worker:
            overrides.grpc_service.CopyFrom(_grpc_service(wire.Phase.ROUTER, FIRST_WORKER_CLUSTER))
        per_route = ext_proc_pb2.ExtProcPerRoute(overrides=overrides)
    return {EXT_PROC_FILTER: pack(per_route)}
