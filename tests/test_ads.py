"""The ADS server over real gRPC: ordering, ACK vs NACK, no NACK loop.

The client side is a plain ADS stub on a loopback channel (what ext_proc and
Envoy speak), then the real Envoy for the NACK case.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import urllib.request

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import duration_pb2
from google.rpc import status_pb2

from control_plane import resources as res
from control_plane.ads import AdsServer
from control_plane import cache as cache_module
from control_plane.cache import STATUS, SnapshotCache
from control_plane.config import parse_config
from control_plane.snapshot import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    PUSH_ORDER,
    ROUTE,
    RUNTIME,
    SECRET,
    Snapshot,
    build_snapshot,
    make_snapshot,
)
from hapax.envoy_process import envoy_binary, render_bootstrap
from hapax.v1 import runtime_pb2
from tests.seed import SEED_YAML
from tests.test_snapshot import EXT_PROC, SECRETS


def snapshot(version: str) -> Snapshot:
    return build_snapshot(parse_config(SEED_YAML, env=SECRETS), version, EXT_PROC)


class AdsClient:
    def __init__(self, address: str, node_id: str = "test-node") -> None:
        self.channel = grpc.aio.insecure_channel(address)
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.node = base_pb2.Node(id=node_id)
        self.call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel).StreamAggregatedResources(self._out())

    async def _out(self):
        while True:
            yield await self.outbox.get()

    async def send(self, type_url: str, *, names=(), nonce="", version="", error: str | None = None) -> None:
        req = discovery_pb2.DiscoveryRequest(type_url=type_url, node=self.node, resource_names=list(names),
                                             response_nonce=nonce, version_info=version)
        if error is not None:
            req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        await self.outbox.put(req)

    async def recv(self) -> discovery_pb2.DiscoveryResponse:
        return await asyncio.wait_for(self.call.read(), 10)

    async def close(self) -> None:
        self.call.cancel()
        await self.channel.close()


@pytest.fixture()
async def ads():
    cache = SnapshotCache(snapshot("v1"))
    server = AdsServer(cache)
    grpc_server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(server, grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    await grpc_server.start()
    clients: list[AdsClient] = []

    def connect(node_id: str = "test-node") -> AdsClient:
        client = AdsClient(f"127.0.0.1:{port}", node_id)
        clients.append(client)
        return client

    yield server, cache, connect, port
    for client in clients:
        await client.close()
    await grpc_server.stop(0)


async def test_ack_and_nack_are_told_apart_by_error_detail(ads):
    server, cache, connect, _ = ads
    client = connect()
    await client.send(CLUSTER)
    first = await client.recv()
    assert first.version_info == "v1" and len(first.resources) == len(snapshot("v1").of_type(CLUSTER))
    await client.send(CLUSTER, nonce=first.nonce, version="v1")  # ACK
    state = await _wait_for(lambda: server.clients["test-node"].types[CLUSTER], "client state")
    await _wait_for(lambda: state.acked_version == "v1", "the ACK")
    cache.set(snapshot("v2"))
    second = await client.recv()
    assert second.version_info == "v2"
    await client.send(CLUSTER, nonce=second.nonce, version="v1", error="cluster rejected: bad timeout")  # NACK
    await _wait_for(lambda: state.nacked_version, "the NACK")
    assert state.acked_version == "v1"
    assert state.nacked_version == "v2"
    assert state.nack_message == "cluster rejected: bad timeout"


async def test_nacked_version_is_not_sent_again(ads):
    server, cache, connect, _ = ads
    client = connect()
    await client.send(CLUSTER)
    first = await client.recv()
    await client.send(CLUSTER, nonce=first.nonce, version="v1", error="no thanks")
    # The client asks again (as Envoy does on reconnect-free retries); the server
    # must stay silent until there is a new version, which is the next thing sent.
    await client.send(CLUSTER, nonce=first.nonce, version="")
    cache.set(snapshot("v3"))
    nxt = await client.recv()
    assert nxt.version_info == "v3"
    assert server.clients["test-node"].types[CLUSTER].responses_sent == 2


async def test_stale_nonce_is_ignored(ads):
    server, cache, connect, _ = ads
    client = connect()
    await client.send(CLUSTER)
    first = await client.recv()
    cache.set(snapshot("v2"))
    second = await client.recv()
    await client.send(CLUSTER, nonce=first.nonce, version="v1", error="late NACK of v1")
    await client.send(CLUSTER, nonce=second.nonce, version="v2")
    state = server.clients["test-node"].types[CLUSTER]
    await _wait_for(lambda: state.acked_version == "v2", "the ACK of v2")  # requests are handled in order
    assert state.nacked_version == ""


async def test_a_new_version_is_pushed_in_cds_eds_lds_rds_runtime_order(ads):
    _, cache, connect, _ = ads
    client = connect()
    for type_url, names in ((CLUSTER, ()), (ENDPOINT, (res.EXT_PROC_CLUSTER, res.EXT_PROC_HTTP_CLUSTER)),
                            (LISTENER, ()), (ROUTE, (res.ROUTE_CONFIG_NAME,)), (RUNTIME, ())):
        await client.send(type_url, names=names)
        got = await client.recv()
        await client.send(type_url, names=names, nonce=got.nonce, version=got.version_info)
    cache.set(snapshot("v2"))
    subscribed = [t for t in PUSH_ORDER if t != SECRET]  # no TLS in this config: nobody asks for secrets
    pushed = [await client.recv() for _ in subscribed]
    assert [r.type_url for r in pushed] == subscribed
    assert {r.version_info for r in pushed} == {"v2"}


async def test_named_subscriptions_get_only_the_resources_they_name(ads):
    _, _, connect, _ = ads
    client = connect()
    await client.send(ENDPOINT, names=(res.EXT_PROC_CLUSTER,))
    got = await client.recv()
    assert len(got.resources) == 1


# ---------------------------------------------------------------- with the real Envoy


def _admin_json(admin: str, path: str) -> dict:
    with urllib.request.urlopen(f"http://{admin}{path}", timeout=2) as resp:
        return json.load(resp)


async def _wait_for(predicate, what: str, timeout: float = 30.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _with_broken_cluster(good: Snapshot, version: str) -> Snapshot:
    # Passes our consistency check, fails Envoy's validation (negative timeout).
    broken = cluster_pb2.Cluster(name="broken", type=cluster_pb2.Cluster.STATIC,
                                 connect_timeout=duration_pb2.Duration(seconds=-1))
    by_type = {t: list(good.of_type(t).values()) for t in good.resources}
    by_type[CLUSTER].append(broken)
    return make_snapshot(version, by_type)


async def test_envoy_nack_is_logged_and_not_resent_and_envoy_keeps_serving(ads, tmp_path, caplog):
    server, cache, _, port = ads
    admin_file = tmp_path / "admin"
    bootstrap = tmp_path / "envoy.yaml"
    bootstrap.write_text(render_bootstrap(node_id="nack-test", admin_port=0, xds_host="127.0.0.1", xds_port=port))
    envoy = subprocess.Popen([str(envoy_binary()), "-c", str(bootstrap), "--admin-address-path", str(admin_file),
                              "--disable-hot-restart", "--log-level", "error"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = await _wait_for(lambda: server.clients.get("nack-test"), "Envoy to connect")
        await _wait_for(lambda: client.types.get(CLUSTER) and client.types[CLUSTER].acked_version == "v1",
                        "Envoy to ACK v1")
        cache.set(_with_broken_cluster(snapshot("v1"), "v2-broken"))
        state = client.types[CLUSTER]
        await _wait_for(lambda: state.nacked_version == "v2-broken", "Envoy to NACK")
        assert "positive duration" in state.nack_message
        assert any("NACK" in r.getMessage() for r in caplog.records)
        sent = state.responses_sent
        await asyncio.sleep(1.0)  # Envoy may re-request; the server must not answer with v2 again
        assert state.responses_sent == sent
        admin = await _wait_for(lambda: admin_file.exists() and admin_file.read_text().strip(), "admin address")
        dump = await asyncio.to_thread(_admin_json, admin, "/config_dump?resource=dynamic_active_clusters")
        names = {c["cluster"]["name"] for c in dump["configs"]}
        assert "broken" not in names and "provider.openai" in names
        cache.set(snapshot("v3"))
        await _wait_for(lambda: state.acked_version == "v3", "Envoy to ACK the next good version")
    finally:
        envoy.terminate()
        envoy.wait(timeout=10)


async def test_the_config_status_has_versions_of_its_own_and_reports_nacks(ads):
    server, cache, connect, _ = ads
    watcher, envoy = connect("ext_proc-1"), connect("envoy-1")
    await watcher.send(STATUS)
    first = await watcher.recv()
    status = runtime_pb2.ConfigStatus()
    assert first.resources[0].Unpack(status) and status.serving_version == "v1"
    await watcher.send(STATUS, nonce=first.nonce, version=first.version_info)
    await envoy.send(CLUSTER)
    clusters = await envoy.recv()
    await envoy.send(CLUSTER, nonce=clusters.nonce, version="", error="cluster rejected: bad timeout")
    # The NACK changes the status (pushed to its watchers), not the configuration.
    second = await watcher.recv()
    assert second.version_info != first.version_info and cache.snapshot.version == "v1"
    second.resources[0].Unpack(status)
    [rejection] = status.rejections
    assert (rejection.node, rejection.type_url, rejection.version, rejection.reason) == (
        "envoy-1", CLUSTER, "v1", "cluster rejected: bad timeout")


class DeltaClient:
    def __init__(self, address: str, node_id: str = "delta-node") -> None:
        self.channel = grpc.aio.insecure_channel(address)
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.node = base_pb2.Node(id=node_id)
        self.call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel).DeltaAggregatedResources(self._out())

    async def _out(self):
        while True:
            yield await self.outbox.get()

    async def send(self, type_url: str, *, subscribe=(), nonce="", initial=None, error: str | None = None) -> None:
        req = discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, node=self.node, response_nonce=nonce,
                                                  resource_names_subscribe=list(subscribe))
        req.initial_resource_versions.update(initial or {})
        if error is not None:
            req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        await self.outbox.put(req)

    async def recv(self) -> discovery_pb2.DeltaDiscoveryResponse:
        return await asyncio.wait_for(self.call.read(), 10)

    async def close(self) -> None:
        self.call.cancel()
        await self.channel.close()


WITH_LOCAL = SEED_YAML + "  - path: /v1/chat/completions\n    handler: chat\n"
WITH_LOCAL = WITH_LOCAL.replace("provider_preference:", "  local: {type: ollama, model: llama3.2}\n"
                                "provider_preference:")


@pytest.fixture()
async def delta(ads):
    server, cache, _, port = ads
    clients: list[DeltaClient] = []

    def connect(node_id: str = "delta-node") -> DeltaClient:
        client = DeltaClient(f"127.0.0.1:{port}", node_id)
        clients.append(client)
        return client

    yield server, cache, connect
    for client in clients:
        await client.close()


async def test_delta_sends_only_what_changed_and_names_what_is_gone(delta):
    _, cache, connect = delta
    client = connect()
    await client.send(CLUSTER)  # an empty first subscription: wildcard
    first = await client.recv()
    held = {r.name: r.version for r in first.resources}
    assert "provider.openai" in held and not first.removed_resources
    await client.send(CLUSTER, nonce=first.nonce)

    cache.set(build_snapshot(parse_config(WITH_LOCAL, env=SECRETS), "v2", EXT_PROC))
    added = await client.recv()
    changed = {r.name for r in added.resources}
    assert "provider.local" in changed and "provider.openai" not in changed  # unchanged: not re-sent
    assert added.system_version_info == "v2" and not added.removed_resources
    await client.send(CLUSTER, nonce=added.nonce)

    cache.set(snapshot("v3"))
    gone = await client.recv()
    assert "provider.local" in gone.removed_resources and "provider.openai" not in {r.name for r in gone.resources}


async def test_delta_reconnect_sends_only_what_the_client_lacks(delta):
    _, cache, connect = delta
    first_client = connect("first")
    await first_client.send(CLUSTER)
    held = {r.name: r.version for r in (await first_client.recv()).resources}
    cache.set(build_snapshot(parse_config(WITH_LOCAL, env=SECRETS), "v2", EXT_PROC))
    again = connect("again")  # a reconnecting Envoy says what it holds
    await again.send(CLUSTER, initial=held)
    response = await again.recv()
    assert "provider.local" in {r.name for r in response.resources}
    assert not {r.name for r in response.resources} & {n for n in held if n.startswith("provider.")}


async def test_delta_named_subscriptions_get_only_those_names(delta):
    _, _, connect = delta
    client = connect()
    await client.send(ROUTE, subscribe=[res.ROUTE_CONFIG_NAME])
    response = await client.recv()
    assert [r.name for r in response.resources] == [res.ROUTE_CONFIG_NAME]


async def test_a_delta_nack_is_recorded_and_not_resent(delta):
    server, cache, connect = delta
    client = connect()
    await client.send(CLUSTER)
    first = await client.recv()
    await client.send(CLUSTER, nonce=first.nonce, error="no thanks")
    state = await _wait_for(lambda: server.clients["delta-node"].types[CLUSTER].nacked_version, "the NACK")
    assert state == "v1" and cache.status.rejections[0].reason == "no thanks"
    cache.set(build_snapshot(parse_config(WITH_LOCAL, env=SECRETS), "v2", EXT_PROC))
    nxt = await client.recv()  # the next version, with only what changed since what was sent
    assert nxt.system_version_info == "v2" and "provider.openai" not in {r.name for r in nxt.resources}


async def test_a_resource_digest_is_computed_once_per_served_version_not_per_client(delta, monkeypatch):
    _, cache, connect = delta
    digested: list = []
    real = cache_module.resource_version
    monkeypatch.setattr(cache_module, "resource_version", lambda msg: digested.append(msg) or real(msg))
    clients = [connect(f"envoy-{i}") for i in range(3)]
    for client in clients:
        await client.send(CLUSTER)
        first = await client.recv()
        await client.send(CLUSTER, nonce=first.nonce)
    assert digested == []  # v1's digests were taken when the cache began serving it

    v2 = build_snapshot(parse_config(WITH_LOCAL, env=SECRETS), "v2", EXT_PROC)
    cache.set(v2)
    for client in clients:
        pushed = {r.name: r.version for r in (await client.recv()).resources}
        assert "provider.local" in pushed
        assert pushed == {name: cache.digests(CLUSTER)[name] for name in pushed}
    # Once per served resource of v2, and once for the status that now says v2: not once per client.
    assert len(digested) == sum(len(v2.of_type(t)) for t in PUSH_ORDER) + 1
