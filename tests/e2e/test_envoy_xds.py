"""The real Envoy against the control plane's ADS server: what the server relies on Envoy doing.

A NACKed version is not sent again and Envoy keeps serving the last good one;
Envoy ACKs new clusters only once they are warm, which the make-before-break
rollout (tests/unit/test_rollout.py) waits for.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from envoy.config.cluster.v3 import cluster_pb2
from google.protobuf import duration_pb2

from control_plane.resources import Address, ExtProcEndpoints
from control_plane.snapshot import CLUSTER, ROUTE, RUNTIME, Snapshot, make_snapshot
from hapax import wire
from tests.seed import SEED_YAML
from tests.snapshots import EXT_PROC, WITH_LOCAL, snapshot_of
from tests.xds_harness import (
    ack,
    admin_json,
    envoy_of,
    ext_proc_holding_the_runtime,
    runtime_version,
    wait_for,
)


def _with_broken_cluster(good: Snapshot, version: str) -> Snapshot:
    # Passes our consistency check, fails Envoy's validation (negative timeout).
    broken = cluster_pb2.Cluster(name="broken", type=cluster_pb2.Cluster.STATIC,
                                 connect_timeout=duration_pb2.Duration(seconds=-1))
    by_type = {t: list(good.of_type(t).values()) for t in good.resources}
    by_type[CLUSTER].append(broken)
    return make_snapshot(version, by_type)


async def test_envoy_nack_is_logged_and_not_resent_and_envoy_keeps_serving(ads, tmp_path, caplog):
    server, cache, _, port = ads
    async with envoy_of(tmp_path, "nack-test", port) as admin_file:
        client = await wait_for(lambda: server.clients.get("nack-test"), "Envoy to connect")
        await wait_for(lambda: client.types.get(CLUSTER) and client.types[CLUSTER].acked_version == "v1",
                       "Envoy to ACK v1")
        cache.set(_with_broken_cluster(snapshot_of(SEED_YAML, "v1"), "v2-broken"))
        state = client.types[CLUSTER]
        await wait_for(lambda: state.nacked_version == "v2-broken", "Envoy to NACK")
        assert "positive duration" in state.nack_message
        assert any("NACK" in r.getMessage() for r in caplog.records)
        sent = state.responses_sent
        await asyncio.sleep(1.0)  # Envoy may re-request; the server must not answer with v2 again
        assert state.responses_sent == sent
        admin = await wait_for(lambda: admin_file.exists() and admin_file.read_text().strip(), "admin address")
        dump = await asyncio.to_thread(admin_json, admin, "/config_dump?resource=dynamic_active_clusters")
        names = {c["cluster"]["name"] for c in dump["configs"]}
        assert "broken" not in names and "provider.openai" in names
        cache.set(snapshot_of(SEED_YAML, "v3"))
        await wait_for(lambda: state.acked_version == "v3", "Envoy to ACK the next good version")


class HeldVerdicts:
    """ext_proc's provider verdicts for Envoy's health checks: 200, except one provider's, held until released."""

    def __init__(self, held_provider: str) -> None:
        self.held_path = wire.provider_verdict_path(held_provider)
        self.asked = asyncio.Event()
        self.release = asyncio.Event()
        self.runner: web.AppRunner | None = None

    async def verdict(self, request: web.Request) -> web.Response:
        if request.path == self.held_path:
            self.asked.set()
            await self.release.wait()
        return web.json_response({"status": "healthy"})

    async def start(self) -> Address:
        app = web.Application()
        app.router.add_get(wire.PROVIDER_VERDICT_PATH, self.verdict)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return Address("127.0.0.1", site._server.sockets[0].getsockname()[1])


async def test_envoy_acks_a_new_cluster_only_once_warm_so_ext_proc_waits_for_its_first_health_check(
        plane_at, tmp_path):
    verdicts = HeldVerdicts("local")
    ext_proc_at = ExtProcEndpoints(grpc=EXT_PROC.grpc, http=EXT_PROC.http, verdicts=(await verdicts.start(),))
    plane = await plane_at(snapshot_of(SEED_YAML, "v1", ext_proc_at))
    try:
        async with envoy_of(tmp_path, "envoy", plane.port) as admin_file:
            state = await wait_for(lambda: plane.server.clients.get("envoy"), "Envoy to connect")
            await wait_for(lambda: ROUTE in state.types and state.types[ROUTE].acked_version == "v1", "Envoy at v1")
            ext_proc = await ext_proc_holding_the_runtime(plane)
            admin = admin_file.read_text().strip()

            plane.rollout.start(snapshot_of(WITH_LOCAL, "v2", ext_proc_at))
            await asyncio.wait_for(verdicts.asked.wait(), 10)
            # Read at once: Envoy gives up a verdict poll after half a second (a stalled checker
            # is not a sick provider), which ends the first health check and so the warming.
            # The ACK not yet sent is read before the warming, so both held at that moment.
            acked_yet = not state.types[CLUSTER].awaiting_answer
            stats = await asyncio.to_thread(admin_json, admin,
                                            "/stats?format=json&filter=^cluster_manager.warming_clusters$")
            assert stats["stats"][0]["value"] == 1  # provider.local waits for its first health check...
            assert not acked_yet  # ...and Envoy had not ACKed the clusters while it did,
            assert plane.served_version(RUNTIME) == "v1"  # so ext_proc does not know the provider yet

            verdicts.release.set()
            runtime = await ext_proc.recv()
            assert runtime_version(runtime) == "v2"
            await ack(ext_proc, runtime)
            await asyncio.wait_for(plane.rollout.done(), 20)
            assert state.types[ROUTE].acked_version == "v2" and plane.cache.status.serving_version == "v2"
            clusters = await asyncio.to_thread(admin_json, admin, "/clusters?format=json")
            assert "provider.local" in {c["name"] for c in clusters["cluster_statuses"]}
    finally:
        verdicts.release.set()
        if verdicts.runner is not None:
            await verdicts.runner.cleanup()
