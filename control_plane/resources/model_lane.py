"""The model lane: requests Envoy routes from the body's model, without the router step.

Every ext_proc message is a round trip of about half a millisecond (gRPC,
Python, and the wake-ups between processes), and every gRPC stream costs
more. The router step costs one stream and three messages (request headers,
request body, response headers) to decide, for a request naming a model the
gateway knows, only what Envoy can: which chain serves the model. So a chat,
completion or embeddings request whose ``model`` names a provider's model or
alias takes a route Envoy picks from the body (``json_to_metadata``, as the
passthrough lane does), straight to that model's chain. Every attempt is
still translated and checked by the upstream step (its errors are the
client's answer). The passthrough lane's routes come first: a request they
take needs no ext_proc at all.

What the router step did for the request, the route does: it removes client
credentials and the gateway's own headers, sets the retry count, and stamps
when the request started and under which runtime version (the upstream step
reads both). Counting is split by who sees the end: the upstream step counts
a stream it delivered (with its tokens) and every attempt's retries; the gRPC
access log counts every other answer (as it does for the passthrough lane),
a JSON one with the tokens Envoy read from it, and the upstream step's client
errors among them. So an OpenAI-shaped JSON answer (an alias, an
OpenAI-compatible server) needs no ext_proc message after its headers.

What Envoy read of the body travels too: the upstream step reads the model,
whether it streams and whether a stream asked for the usage chunk from the
request's dynamic metadata (``wire.REQUEST_NAMESPACE``), where json_to_metadata
wrote them. A body the provider takes as it is (an OpenAI
provider's own model name and, on a stream, the usage chunk asked for:
``Translator.request_as_sent``) then never reaches ext_proc: the upstream step
sets only the path and headers, and a stream costs one message less.

``auto`` takes the lane too, to its family's preference chain, as the name
of the chain's first provider's model would: the upstream step sends each
provider its first model of the family (``Provider.serving``), and the access
log prices the answer by that model. Only on a chain that ends in the reasons
no provider can serve (``Chain.says_why_unavailable``): on one that does not
(one provider, retried), only the router step can tell an ``auto`` client why
its 503, so those requests keep it.

Anything else (no model, an unknown one, malformed JSON, a non-boolean
``stream``) takes the ordinary route and the router step.

A department route has one lane route here, streams or not, matching every
model name of its family, whatever their number (more where chains differ in
length or idle limit): the chain cluster is looked up by the body's model
(body_routing.py). So the route configuration grows with departments plus
models, not with their product.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2
from google.protobuf import any_pb2

from control_plane.plan import MODEL_LANE_HANDLERS, Chain, Plan
from control_plane.resources import regional
from control_plane.resources.body_routing import (
    LaneGroup,
    body_routed,
    cluster_plugin,
    cluster_plugin_name,
    grouped,
    route_limits,
)
from control_plane.resources.names import set_header
from hapax import wire

MODEL_LANE = wire.Lane.MODEL


def model_groups(plan: Plan) -> list[LaneGroup]:
    """The model lane's routes per department route: one per family and chain shape."""
    groups = []
    for family in _families(plan):
        by_limits = grouped(lane_models(plan, family), lambda owned: route_limits(plan, owned[1]))
        groups += [LaneGroup(family, tuple(model for model, _ in members), members[0][1])
                   for members in by_limits.values()]
    return groups


def model_routes(plan: Plan, groups: Sequence[LaneGroup], handler: str, base: route_components_pb2.Route,
                 version: str, disabled_ext_proc: dict[str, any_pb2.Any]) -> Iterator[route_components_pb2.Route]:
    """The model lane's variants of ``base``, one per group of its family (``model_groups``); to go before it."""
    if handler not in MODEL_LANE_HANDLERS:
        return
    family = wire.FAMILY_OF_HANDLER[wire.Handler(handler)]
    for n, group in enumerate((g for g in groups if g.family == family), 1):
        # Streams or not: what Envoy read of the body (the model, whether it streams, whether a
        # stream asked for the usage chunk) the upstream step reads from the request's metadata.
        route = body_routed(plan, base, MODEL_LANE, group, stream=None, disabled_ext_proc=disabled_ext_proc)
        route.name += f":{n}" if n > 1 else ""
        route.request_headers_to_add.extend(step_headers(version))
        yield route


def model_clusters(plan: Plan) -> Iterator[route_components_pb2.ClusterSpecifierPlugin]:
    """Per family some route serves, the model lane's model -> chain cluster lookup its routes share
    (with regions, one per region view: regional.py)."""
    for family in _families(plan):
        clusters = {model: chain.cluster for model, chain in lane_models(plan, family)}
        if not clusters:
            continue
        name = cluster_plugin_name(MODEL_LANE, family)
        if not plan.views:
            yield cluster_plugin(name, clusters)
            continue

        def in_view(key: str | None, family: str = family, clusters: dict[str, str] = clusters) -> dict[str, str]:
            if key is None:
                return clusters
            view = plan.views[key]
            auto = view.auto_chains.get(family)
            chains = {model: auto if model == wire.AUTO_MODEL else view.chain_for(family, model) for model in clusters}
            return {model: chain.cluster if chain is not None else clusters[model] for model, chain in chains.items()}

        for plugin, matcher in regional.regional_lookups(plan, name, in_view).items():
            yield cluster_plugin(plugin, matcher)


def lane_models(plan: Plan, family: str) -> Iterator[tuple[str, Chain]]:
    """The model names of ``family`` the lane takes, each with its chain.

    A model the family does not serve is left to the router step, which tells the
    client why; so is ``auto`` on a chain that cannot say why it is unavailable.
    """
    for owned in plan.models:
        if owned.family == family and owned.name != wire.AUTO_MODEL:
            yield owned.name, owned.chain
    auto = plan.auto_chains.get(family)
    if auto is not None and auto.says_why_unavailable:
        yield wire.AUTO_MODEL, auto


def _families(plan: Plan) -> list[str]:
    """The families some route of the model lane serves."""
    return list(dict.fromkeys(wire.FAMILY_OF_HANDLER[wire.Handler(r.handler)] for r in plan.config.routes
                              if r.handler in MODEL_LANE_HANDLERS))


def step_headers(version: str) -> list[base_pb2.HeaderValueOption]:
    """What the router step would have told the upstream step: when the request started, and the
    runtime version it started under."""
    return [set_header(wire.START_HEADER, "%START_TIME(%s.%6f)%"),  # unix time, as the router step writes it
            *([set_header(wire.VERSION_HEADER, version)] if version else [])]
