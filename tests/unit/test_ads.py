"""The ADS server over real gRPC: ordering, ACK vs NACK, no NACK loop.

The client side is a plain ADS stub on a loopback channel (what ext_proc and
Envoy speak), then the real Envoy for the NACK case.
"""

from __future__ import annotations

import pytest

from control_plane import cache as cache_module
from control_plane import resources as res
from control_plane.cache import STATUS
from control_plane.snapshot import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    PUSH_ORDER,
    ROUTE,
    RUNTIME,
    SECRET,
    Snapshot,
)
from hapax.v1 import runtime_pb2
from tests.seed import SEED_YAML
from tests.snapshots import WITH_LOCAL, snapshot_of
from tests.xds_harness import DeltaClient, wait_for


def snapshot(version: str) -> Snapshot:
    return snapshot_of(SEED_YAML, version)


async def test_ack_and_nack_are_told_apart_by_error_detail(ads):
    server, cache, connect, _ = ads
    client = connect()
    await client.send(CLUSTER)
    first = await client.recv()
    assert first.version_info == "v1" and len(first.resources) == len(snapshot("v1").of_type(CLUSTER))
    await client.send(CLUSTER, nonce=first.nonce, version="v1")  # ACK
    state = await wait_for(lambda: server.clients["test-node"].types[CLUSTER], "client state")
    await wait_for(lambda: state.acked_version == "v1", "the ACK")
    cache.set(snapshot("v2"))
    second = await client.recv()
    assert second.version_info == "v2"
    await client.send(CLUSTER, nonce=second.nonce, version="v1", error="cluster rejected: bad timeout")  # NACK
    await wait_for(lambda: state.nacked_version, "the NACK")
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
    await wait_for(lambda: state.acked_version == "v2", "the ACK of v2")  # requests are handled in order
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

    cache.set(snapshot_of(WITH_LOCAL, "v2"))
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
    cache.set(snapshot_of(WITH_LOCAL, "v2"))
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
    state = await wait_for(lambda: server.clients["delta-node"].types[CLUSTER].nacked_version, "the NACK")
    assert state == "v1" and cache.status.rejections[0].reason == "no thanks"
    cache.set(snapshot_of(WITH_LOCAL, "v2"))
    nxt = await client.recv()  # the next version, with only what changed since what was sent
    assert nxt.system_version_info == "v2" and "provider.openai" not in {r.name for r in nxt.resources}


async def test_a_resource_is_serialised_and_digested_once_per_served_version_not_per_client(delta, monkeypatch):
    _, cache, connect = delta
    digested: list = []
    real = cache_module.packed_resource
    monkeypatch.setattr(cache_module, "packed_resource", lambda msg: digested.append(msg) or real(msg))
    clients = [connect(f"envoy-{i}") for i in range(3)]
    for client in clients:
        await client.send(CLUSTER)
        first = await client.recv()
        await client.send(CLUSTER, nonce=first.nonce)
    assert digested == []  # v1's digests were taken when the cache began serving it

    v2 = snapshot_of(WITH_LOCAL, "v2")
    cache.set(v2)
    for client in clients:
        pushed = {r.name: r.version for r in (await client.recv()).resources}
        assert "provider.local" in pushed
        assert pushed == {name: cache.digests(CLUSTER)[name] for name in pushed}
    # Once per served resource of v2, and once for the status that now says v2: not once per client.
    assert len(digested) == sum(len(v2.of_type(t)) for t in PUSH_ORDER) + 1


async def test_every_sotw_client_gets_the_same_bytes_serialised_once_per_served_version(ads, monkeypatch):
    _, cache, connect, _ = ads
    packed: list = []
    real = cache_module.packed_resource
    monkeypatch.setattr(cache_module, "packed_resource", lambda msg: packed.append(msg) or real(msg))
    clients = [connect(f"envoy-{i}") for i in range(3)]
    for client in clients:
        await client.send(CLUSTER)
        got = await client.recv()
        await client.send(CLUSTER, nonce=got.nonce, version=got.version_info)
    v2 = snapshot("v2")
    cache.set(v2)
    answers = [await client.recv() for client in clients]
    assert {a.version_info for a in answers} == {"v2"}
    assert len({tuple(r.SerializeToString() for r in a.resources) for a in answers}) == 1
    assert len(answers[0].resources) == len(v2.of_type(CLUSTER))
    # Once per served resource of v2, and once for the status that now says v2: not once per client.
    assert len(packed) == sum(len(v2.of_type(t)) for t in PUSH_ORDER) + 1
