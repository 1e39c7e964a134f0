"""Scripted xDS clients on real gRPC, a control plane on a loopback port, and the real Envoy.

The clients speak what ext_proc (state of the world) and Envoy (incremental)
speak; the tests drive them step by step to see what the ADS server sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2

from control_plane.ads import AdsServer, add_to_server
from control_plane.cache import SnapshotCache
from control_plane.resources import ROUTE_CONFIG_NAME
from control_plane.rollout import Rollout
from control_plane.snapshot import CLUSTER, ROUTE, RUNTIME, Snapshot
from hapax.envoy_process import envoy_binary, render_bootstrap
from hapax.v1 import runtime_pb2
from tests.snapshots import snapshot_of


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


async def wait_for(predicate, what: str, timeout: float = 30.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def admin_json(admin: str, path: str) -> dict:
    with urllib.request.urlopen(f"http://{admin}{path}", timeout=2) as resp:
        return json.load(resp)


@contextlib.asynccontextmanager
async def envoy_of(tmp_path: Path, node_id: str, xds_port: int) -> AsyncIterator[Path]:
    """The real Envoy, its ADS stream to ``xds_port``; yields the file its admin address is written to."""
    admin_file, bootstrap = tmp_path / "admin", tmp_path / "envoy.yaml"
    bootstrap.write_text(render_bootstrap(node_id=node_id, admin="127.0.0.1:0", xds=f"127.0.0.1:{xds_port}"))
    envoy = await asyncio.create_subprocess_exec(
        str(envoy_binary()), "-c", str(bootstrap), "--admin-address-path", str(admin_file),
        "--disable-hot-restart", "--log-level", "error", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield admin_file
    finally:
        envoy.terminate()
        await asyncio.wait_for(envoy.wait(), 10)


@pytest.fixture()
async def ads():
    cache = SnapshotCache(snapshot_of(version="v1"))
    server = AdsServer(cache)
    grpc_server = grpc.aio.server()
    add_to_server(server, grpc_server)
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



# ---------------------------------------------------------------- a control plane that rolls out


class Plane:
    """The ADS server and a rollout over it, on a loopback port."""

    def __init__(self, first: Snapshot, stage_timeout: float) -> None:
        self.cache = SnapshotCache(first)
        self.server = AdsServer(self.cache)
        self.rollout = Rollout(self.cache, self.server, stage_timeout=stage_timeout)
        self.grpc = grpc.aio.server()
        add_to_server(self.server, self.grpc)
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


async def envoy_holding_clusters_and_routes(plane: Plane) -> DeltaClient:
    envoy = plane.envoy()
    await envoy.send(CLUSTER)
    await envoy.send(CLUSTER, nonce=(await envoy.recv()).nonce)
    await envoy.send(ROUTE, subscribe=[ROUTE_CONFIG_NAME])
    await envoy.send(ROUTE, nonce=(await envoy.recv()).nonce)
    return envoy


async def ext_proc_holding_the_runtime(plane: Plane) -> AdsClient:
    ext_proc = plane.ext_proc()
    await ext_proc.send(RUNTIME)
    await ack(ext_proc, await ext_proc.recv())
    return ext_proc


async def ack(client: AdsClient, response) -> None:
    await client.send(response.type_url, nonce=response.nonce, version=response.version_info)


def runtime_version(response) -> str:
    rt = runtime_pb2.Runtime()
    assert response.resources[0].Unpack(rt)
    return rt.config_version
