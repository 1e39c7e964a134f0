"""A new version reaches Envoy and ext_proc in stages, each answered before the next.

Scripted xDS clients on real gRPC show the order (Envoy's clusters, then
ext_proc's runtime, then Envoy's routes, then the old clusters go); the real
Envoy shows what the order relies on: it ACKs new clusters only once warm.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess

import grpc
import pytest
from aiohttp import web
from envoy.service.discovery.v3 import ads_pb2_grpc

from control_plane import resources as res
from control_plane.ads import AdsServer
from control_plane.cache import SnapshotCache
from control_plane.config import parse_config
from control_plane.rollout import Rollout, stages
from control_plane.snapshot import (
    CLUSTER,
    ROUTE,
    RUNTIME,
    Snapshot,
    build_snapshot,
    check_consistency,
)
from hapax.envoy_process import envoy_binary, render_bootstrap
from hapax.v1 import runtime_pb2
from tests.seed import SEED_YAML
from tests.test_ads import WITH_LOCAL, AdsClient, DeltaClient, _admin_json, _wait_for
from tests.test_snapshot import EXT_PROC, MIXED, SECRETS

WITH_EXTRA = SEED_YAML.replace("provider_preference:", "  extra: {type: openai, model: extra-1, api_key: k}\n"
                               "provider_preference:")


def snapshot_of(yaml_text: str, version: str, ext_proc: res.ExtProcEndpoints = EXT_PROC) -> Snapshot:
    return build_snapshot(parse_config(yaml_text, env=SECRETS), version, ext_proc)


class Plane:
    """The ADS server and a rollout over it, on a loopback port."""

    def __init__(self, first: Snapshot, stage_timeout: float) -> None:
        self.cache = SnapshotCache(first)
        self.server = AdsServer(self.cache)
        self.rollout = Rollout(self.cache, self.server, stage_timeout=stage_timeout)
        self.grpc = grpc.aio.server()
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(self.server, self.grpc)
        self.port = self.grpc.add_insecure_port("127.0.0.1:0")
        self.clients: list[AdsClient | DeltaClient] = []

    def envoy(self, node_id: str = "envoy") -> DeltaClient:
        client = DeltaClient(f"127.0.0.1:{self.port}", node_id)
        self.clients.append(client)
        return client

    def ext_proc(self, node_id: str = "ext_proc-1") -> AdsClient:
        client = AdsClient(f"127.0.0.1:{self.port}", node_id)
        self.clients.append(client)
        return client

    def served_version(self, type_url: str) -> str:
        return self.cache.current(type_url)[0]


@pytest.fixture()
async def plane_at():
    planes: list[Plane] = []

    async def start(first: Snapshot, stage_timeout: float = 30.0) -> Plane:
        plane = Plane(first, stage_timeout)
        await plane.grpc.start()
        planes.append(plane)
        return plane

    yield start
    for plane in planes:
        plane.rollout.stop()
        for client in plane.clients:
            await client.close()
        await plane.grpc.stop(0)


async def _envoy_holding_clusters_and_routes(plane: Plane) -> DeltaClient:
    envoy = plane.envoy()
    await envoy.send(CLUSTER)
    await envoy.send(CLUSTER, nonce=(await envoy.recv()).nonce)
    await envoy.send(ROUTE, subscribe=[res.ROUTE_CONFIG_NAME])
    await envoy.send(ROUTE, nonce=(await envoy.recv()).nonce)
    return envoy


async def _ext_proc_holding_the_runtime(plane: Plane) -> AdsClient:
    ext_proc = plane.ext_proc()
    await ext_proc.send(RUNTIME)
    await _ack(ext_proc, await ext_proc.recv())
    return ext_proc


async def _plane_with_clients(plane_at, first: Snapshot, stage_timeout: float = 30.0
                             ) -> tuple[Plane, DeltaClient, AdsClient]:
    """A plane serving ``first``, an Envoy that holds its clusters and routes, an ext_proc its runtime."""
    plane = await plane_at(first, stage_timeout=stage_timeout)
    return plane, await _envoy_holding_clusters_and_routes(plane), await _ext_proc_holding_the_runtime(plane)


async def _ack(client: AdsClient, response) -> None:
    await client.send(response.type_url, nonce=response.nonce, version=response.version_info)


def _runtime_version(response) -> str:
    rt = runtime_pb2.Runtime()
    assert response.resources[0].Unpack(rt)
    return rt.config_version


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
    assert _runtime_version(runtime) == "v2"
    assert plane.served_version(ROUTE) == "v1"  # the routes wait for ext_proc's answer

    await _ack(ext_proc, runtime)
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
    await _ack(ext_proc, runtime)
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
        assert _runtime_version(await ext_proc.recv()) == "v2"
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
    assert _runtime_version(runtime) == "v3"
    await _ack(ext_proc, runtime)
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


# ---------------------------------------------------------------- with the real Envoy


class HeldVerdicts:
    """ext_proc's provider verdicts for Envoy's health checks: 200, except one provider's, held until released."""

    def __init__(self, held_provider: str) -> None:
        self.held_path = f"/providers/{held_provider}/health"
        self.asked = asyncio.Event()
        self.release = asyncio.Event()
        self.runner: web.AppRunner | None = None

    async def verdict(self, request: web.Request) -> web.Response:
        if request.path == self.held_path:
            self.asked.set()
            await self.release.wait()
        return web.json_response({"status": "healthy"})

    async def start(self) -> res.Address:
        app = web.Application()
        app.router.add_get("/providers/{name}/health", self.verdict)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return res.Address("127.0.0.1", site._server.sockets[0].getsockname()[1])


async def test_envoy_acks_a_new_cluster_only_once_warm_so_ext_proc_waits_for_its_first_health_check(
        plane_at, tmp_path):
    verdicts = HeldVerdicts("local")
    ext_proc_at = res.ExtProcEndpoints(grpc=EXT_PROC.grpc, http=(await verdicts.start(),))
    plane = await plane_at(snapshot_of(SEED_YAML, "v1", ext_proc_at))
    admin_file, bootstrap = tmp_path / "admin", tmp_path / "envoy.yaml"
    bootstrap.write_text(render_bootstrap(node_id="envoy", admin_port=0, xds_host="127.0.0.1", xds_port=plane.port))
    envoy = await asyncio.create_subprocess_exec(
        str(envoy_binary()), "-c", str(bootstrap), "--admin-address-path", str(admin_file),
        "--disable-hot-restart", "--log-level", "error", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        state = await _wait_for(lambda: plane.server.clients.get("envoy"), "Envoy to connect")
        await _wait_for(lambda: ROUTE in state.types and state.types[ROUTE].acked_version == "v1", "Envoy at v1")
        ext_proc = await _ext_proc_holding_the_runtime(plane)
        admin = admin_file.read_text().strip()

        plane.rollout.start(snapshot_of(WITH_LOCAL, "v2", ext_proc_at))
        await asyncio.wait_for(verdicts.asked.wait(), 10)
        stats = await asyncio.to_thread(_admin_json, admin, "/stats?format=json&filter=^cluster_manager.warming_clusters$")
        assert stats["stats"][0]["value"] == 1  # provider.local waits for its first health check...
        await asyncio.sleep(0.5)
        assert state.types[CLUSTER].awaiting_answer  # ...and Envoy has not ACKed the clusters yet,
        assert plane.served_version(RUNTIME) == "v1"  # so ext_proc does not know the provider yet

        verdicts.release.set()
        runtime = await ext_proc.recv()
        assert _runtime_version(runtime) == "v2"
        await _ack(ext_proc, runtime)
        await asyncio.wait_for(plane.rollout.done(), 20)
        assert state.types[ROUTE].acked_version == "v2" and plane.cache.status.serving_version == "v2"
        clusters = await asyncio.to_thread(_admin_json, admin, "/clusters?format=json")
        assert "provider.local" in {c["name"] for c in clusters["cluster_statuses"]}
    finally:
        envoy.terminate()
        await asyncio.wait_for(envoy.wait(), 10)
        verdicts.release.set()
        if verdicts.runner is not None:
            await verdicts.runner.cleanup()
