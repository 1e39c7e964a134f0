"""A new version reaches Envoy and ext_proc in stages, each answered before the next.

Scripted xDS clients on real gRPC show the order (Envoy's clusters, then
ext_proc's runtime, then Envoy's routes, then the old clusters go); the real
Envoy shows what the order relies on (tests/e2e/test_envoy_xds.py): it ACKs
new clusters only once warm.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from control_plane.rollout import stages
from control_plane.snapshot import (
    CLUSTER,
    ROUTE,
    RUNTIME,
    Snapshot,
    check_consistency,
)
from tests.seed import SEED_YAML
from tests.snapshots import MIXED, WITH_LOCAL, snapshot_of
from tests.xds_harness import (
    AdsClient,
    DeltaClient,
    Plane,
    ack,
    envoy_holding_clusters_and_routes,
    ext_proc_holding_the_runtime,
    runtime_version,
)

WITH_EXTRA = SEED_YAML.replace("provider_preference:", "  extra: {type: openai, model: extra-1, api_key: k}\n"
                               "provider_preference:")


async def _plane_with_clients(plane_at, first: Snapshot, stage_timeout: float = 30.0
                             ) -> tuple[Plane, DeltaClient, AdsClient]:
    """A plane serving ``first``, an Envoy that holds its clusters and routes, an ext_proc its runtime."""
    plane = await plane_at(first, stage_timeout=stage_timeout)
    return plane, await envoy_holding_clusters_and_routes(plane), await ext_proc_holding_the_runtime(plane)


async def test_ext_proc_gets_a_new_runtime_only_once_envoy_holds_its_clusters_and_routes_follow(plane_at):
    plane, envoy, ext_proc = await _plane_with_clients(plane_at, snapshot_of(SEED_YAML, "v1"))

    plane.rollout.start(snapshot_of(WITH_LOCAL, "v2"))
    clusters = await envoy.recv()
    assert clusters.type_url == CLUSTER and "provider.local" in {r.name for r in clusters.resources}
    # Until Envoy answers for its new clusters, ext_proc and Envoy's routes keep v1.
    assert plane.served_version(RUNTIME) == "v1" and plane.served_version(ROUTE) == "v1"
    assert plane.server.unsettled(plane.cache.generation) == ["envoy/Cluster"]

    await envoy.send(CLUSTER, nonce=clusters.nonce)
    runtime = await ext_proc.recv()
    assert runtime_version(runtime) == "v2"
    assert plane.served_version(ROUTE) == "v1"  # the routes wait for ext_proc's answer

    await ack(ext_proc, runtime)
    routes = await envoy.recv()
    assert routes.type_url == ROUTE and routes.system_version_info == "v2"
    await envoy.send(ROUTE, nonce=routes.nonce)
    await asyncio.wait_for(plane.rollout.done(), 10)
    assert plane.cache.status.serving_version == "v2"


async def test_clusters_a_version_drops_go_only_after_routes_and_runtime_stopped_naming_them(plane_at):
    plane, envoy, ext_proc = await _plane_with_clients(plane_at, snapshot_of(WITH_LOCAL, "v1"))

    plane.rollout.start(snapshot_of(SEED_YAML, "v2"))
    runtime = await ext_proc.recv()
    assert "provider.local" in plane.cache.served(CLUSTER)  # still there while ext_proc moves over
    await ack(ext_proc, runtime)
    routes = await envoy.recv()
    assert routes.type_url == ROUTE and not routes.removed_resources
    assert "provider.local" in plane.cache.served(CLUSTER)  # old routes name it until Envoy answers
    await envoy.send(ROUTE, nonce=routes.nonce)
    pruned = await envoy.recv()
    assert pruned.type_url == CLUSTER and "provider.local" in pruned.removed_resources
    await envoy.send(CLUSTER, nonce=pruned.nonce)
    await asyncio.wait_for(plane.rollout.done(), 10)
    assert plane.served_version(CLUSTER) == "v2" and plane.cache.status.serving_version == "v2"


async def test_a_client_that_never_answers_delays_a_rollout_but_does_not_stop_it(plane_at, caplog):
    plane, envoy, ext_proc = await _plane_with_clients(plane_at, snapshot_of(SEED_YAML, "v1"), stage_timeout=0.5)

    with caplog.at_level(logging.WARNING, logger="hapax.control_plane.rollout"):
        plane.rollout.start(snapshot_of(WITH_LOCAL, "v2"))
        await envoy.recv()  # and never answered
        assert runtime_version(await ext_proc.recv()) == "v2"
    [warning] = [r for r in caplog.records if "without every client's answer" in r.getMessage()]
    assert warning.stage == "connect" and warning.waiting_for == ["envoy/Cluster"]


async def test_an_edit_during_a_rollout_takes_over_and_the_superseded_runtime_is_never_served(plane_at):
    plane, envoy, ext_proc = await _plane_with_clients(plane_at, snapshot_of(SEED_YAML, "v1"))

    plane.rollout.start(snapshot_of(WITH_LOCAL, "v2"))
    first = await envoy.recv()  # v2's clusters, not answered before v3 comes
    plane.rollout.start(snapshot_of(WITH_EXTRA, "v3"))
    second = await envoy.recv()
    assert "provider.extra" in {r.name for r in second.resources}
    assert "provider.local" in plane.cache.served(CLUSTER)  # v2's clusters stay until v3 is through
    await envoy.send(CLUSTER, nonce=first.nonce)
    await envoy.send(CLUSTER, nonce=second.nonce)
    runtime = await ext_proc.recv()
    assert runtime_version(runtime) == "v3"
    await ack(ext_proc, runtime)
    await envoy.send(ROUTE, nonce=(await envoy.recv()).nonce)
    pruned = await envoy.recv()
    assert "provider.local" in pruned.removed_resources
    await envoy.send(CLUSTER, nonce=pruned.nonce)
    await asyncio.wait_for(plane.rollout.done(), 10)
    assert set(plane.cache.served(CLUSTER)) == set(snapshot_of(WITH_EXTRA, "v3").of_type(CLUSTER))


@pytest.mark.parametrize(("before", "after"), [(SEED_YAML, MIXED), (MIXED, SEED_YAML), (WITH_LOCAL, WITH_EXTRA)])
def test_every_stage_of_a_rollout_serves_a_consistent_snapshot(before, after):
    old, new = snapshot_of(before, "v1"), snapshot_of(after, "v2")
    served = {t: dict(r) for t, r in old.resources.items()}
    for name, stage in stages(served, new):
        served.update(stage)
        check_consistency(Snapshot(f"v2.{name}", served))  # raises on a name that points nowhere
    assert served == {t: dict(r) for t, r in new.resources.items()}
