"""How the generated configuration grows with the config (issue 21), asserted on structure, not time.

The configs are bench/scale.py's: N providers of the three types, all preferred, and M
department routes over the chat, completion and embeddings handlers.
"""

from __future__ import annotations

from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2

from bench.scale import ENDPOINTS, aggregate_members, config_text, make_config, resource_bytes
from bench.xds_fanout import measure_fanout
from control_plane.config import parse_config
from control_plane.resources import passthrough
from control_plane.resources.ext_proc_filters import EXT_PROC_FILTER
from control_plane.resources.routes import ROUTER_CHAIN_PLUGIN
from control_plane.snapshot import ROUTE, Snapshot, build_snapshot
from tests.snapshots import effective_routes


def _snapshot(providers: int, routes: int) -> Snapshot:
    return build_snapshot(make_config(providers, routes), "v1", ENDPOINTS)


def _vhost(snapshot: Snapshot):
    return next(iter(snapshot.of_type(ROUTE).values())).virtual_hosts[0]


def test_the_routes_common_retry_policy_is_sent_once_on_the_virtual_host():
    vhost = _vhost(_snapshot(12, 9))
    assert vhost.retry_policy.retry_on and vhost.retry_policy.HasField("retry_priority")
    own = {r.name.split(":")[1] for r in vhost.routes if r.HasField("route") and r.route.retry_policy.retry_on}
    # Anthropic serves no embeddings: only the embeddings lane's shorter chains retry otherwise.
    assert own == {"embeddings"}
    # What Envoy applies is what each route carried: the health route retries nothing.
    applied = {r.name: r.route.retry_policy for r in effective_routes(vhost) if r.HasField("route")}
    assert applied["health"].retry_on == "" and not applied["health"].HasField("num_retries")
    assert applied["model:chat:/v1/dept0000/chat/completions"] == vhost.retry_policy


def test_a_route_with_another_policy_keeps_its_own():
    # max_attempts 2 with three providers: each lane route's chain allows 2 attempts, the
    # ordinary routes (narrowed by the router step) as many as the longest chain.
    config = parse_config(config_text(3, 1) + "retry: {max_attempts: 2}\n", env={})
    vhost = _vhost(build_snapshot(config, "v1", ENDPOINTS))
    applied = {r.name: r.route.retry_policy for r in effective_routes(vhost) if r.HasField("route")}
    assert applied["model:chat:/v1/dept0000/chat/completions"].num_retries.value == 1
    assert applied["chat:/v1/dept0000/chat/completions"].num_retries.value == 2


def test_configuration_bytes_grow_at_most_linearly_in_routes():
    small, large = resource_bytes(_snapshot(6, 20)), resource_bytes(_snapshot(6, 40))
    assert sum(large.values()) <= 2.1 * sum(small.values())


def test_configuration_bytes_grow_at_most_linearly_in_providers_at_a_fixed_number_of_routes():
    # Each lane route names its models once, and each model's cluster is named once per configuration.
    small, large = resource_bytes(_snapshot(20, 6)), resource_bytes(_snapshot(40, 6))
    assert large["routes"] <= 2.1 * small["routes"]


def test_the_number_of_routes_does_not_depend_on_the_number_of_models():
    # A department route has its lane routes (per lane, stream and chain shape), not one per model:
    # the cluster is looked up by the body's model, in one table per lane and family.
    small, large = _snapshot(20, 6), _snapshot(40, 6)
    assert len(_vhost(large).routes) == len(_vhost(small).routes)
    plugins = next(iter(large.of_type(ROUTE).values())).cluster_specifier_plugins
    assert {p.extension.name for p in plugins} == {"hapax.passthrough.chat", "hapax.passthrough.embeddings",
                                                   "hapax.model.chat", "hapax.model.embeddings", ROUTER_CHAIN_PLUGIN}


def test_aggregate_members_are_quadratic_in_preferred_providers():
    # Not a goal, a fact to notice if it changes: every provider's model has its own chain
    # ("its provider first, then the others in preference order"), each over every provider.
    (_, small), (_, large) = aggregate_members(_snapshot(20, 3)), aggregate_members(_snapshot(40, 3))
    assert 3.5 * small <= large <= 4.5 * small


def test_ext_proc_off_is_said_once_on_the_virtual_host_and_the_routes_that_run_it_say_so():
    vhost = _vhost(_snapshot(6, 3))
    off = ext_proc_pb2.ExtProcPerRoute()
    vhost.typed_per_filter_config[EXT_PROC_FILTER].Unpack(off)
    assert off.disabled and not off.HasField("overrides")
    # Only the ordinary provider routes (the router step's) carry a config of their own.
    own = {r.name for r in vhost.routes if EXT_PROC_FILTER in r.typed_per_filter_config}
    assert own == {r.name for r in vhost.routes
                   if r.HasField("route") and r.route.cluster_specifier_plugin == ROUTER_CHAIN_PLUGIN}
    # json_to_metadata runs on the lanes' paths only: not every route configures it, so it stays per route.
    assert passthrough.JSON_TO_METADATA_FILTER not in vhost.typed_per_filter_config
    applied = {r.name: r.typed_per_filter_config for r in effective_routes(vhost)}
    assert applied["health"][EXT_PROC_FILTER] == vhost.typed_per_filter_config[EXT_PROC_FILTER]


async def test_the_fanout_measure_waits_for_every_client_to_hold_the_edit():
    # K real ADS streams in a process of their own against the real server: the measure
    # returns only once all of them hold the first version, then the edited one.
    first = build_snapshot(make_config(3, 5), "v1", ENDPOINTS)
    edited = build_snapshot(make_config(3, 6), "v2", ENDPOINTS)
    result = await measure_fanout(first, edited, 4)
    assert result.clients == 4
    assert result.first_s > 0 and result.edit_s > 0
