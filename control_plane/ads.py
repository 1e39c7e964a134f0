"""Aggregated Discovery Service (xDS v3, state of the world) on grpc.aio.

One stream per client (an Envoy or an ext_proc). For each type URL the client
subscribes to, the stream remembers what it sent (version, nonce) and what the
client said about it. A NACK (a request whose ``error_detail`` is set) is logged
with the client's message and the rejected version is not sent again: the client
keeps its last good version and gets the next snapshot when there is one.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2

from control_plane.snapshot import PUSH_ORDER, Snapshot

log = logging.getLogger("hapax.control_plane.ads")

# Types whose subscribers get every resource regardless of the names they ask
# for (an empty name list is a wildcard in SotW for every type).
WILDCARD = "*"


class SnapshotCache:
    """Holds the current snapshot and wakes every stream when it changes."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot
        self._changed = asyncio.Event()

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    def set(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_change(self, seen: Snapshot) -> Snapshot:
        while self._snapshot is seen:
            await self._changed.wait()
        return self._snapshot


@dataclass
class TypeState:
    """What one client has been sent, and has said, for one type URL."""

    names: frozenset[str] = frozenset()
    sent_version: str = ""
    sent_nonce: str = ""
    acked_version: str = ""
    nacked_version: str = ""
    nack_message: str = ""
    responses_sent: int = 0


@dataclass
class ClientState:
    node_id: str
    types: dict[str, TypeState] = field(default_factory=dict)
    connected: bool = True


class AdsServer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    def __init__(self, cache: SnapshotCache) -> None:
        self.cache = cache
        self.clients: dict[str, ClientState] = {}
        self._nonces = itertools.count(1)

    async def StreamAggregatedResources(
        self, request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest], context
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        stream = _Stream(self)
        try:
            async for response in stream.run(request_iterator):
                yield response
        except asyncio.CancelledError:
            return  # the server is stopping; the client reconnects elsewhere or later

    async def DeltaAggregatedResources(self, request_iterator, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Hapax serves state-of-the-world ADS only")

    def next_nonce(self) -> str:
        return str(next(self._nonces))


class _Stream:
    def __init__(self, server: AdsServer) -> None:
        self.server = server
        self.client: ClientState | None = None
        self.events: asyncio.Queue = asyncio.Queue()

    async def run(self, requests: AsyncIterator[discovery_pb2.DiscoveryRequest]):
        reader = asyncio.create_task(self._read(requests))
        watcher = asyncio.create_task(self._watch())
        try:
            while True:
                kind, item = await self.events.get()
                if kind == "end":
                    return
                responses = self._on_request(item) if kind == "request" else self._on_snapshot(item)
                for response in responses:
                    yield response
        finally:
            reader.cancel()
            watcher.cancel()
            if self.client is not None:
                self.client.connected = False
                log.info("xDS client disconnected", extra={"node": self.client.node_id})

    async def _read(self, requests) -> None:
        try:
            async for request in requests:
                await self.events.put(("request", request))
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            pass
        finally:
            await self.events.put(("end", None))

    async def _watch(self) -> None:
        seen = self.server.cache.snapshot
        while True:
            seen = await self.server.cache.wait_change(seen)
            await self.events.put(("snapshot", seen))

    # -- protocol

    def _client_for(self, request: discovery_pb2.DiscoveryRequest) -> ClientState:
        if self.client is None:
            node_id = request.node.id or "unknown"
            self.client = ClientState(node_id=node_id)
            self.server.clients[node_id] = self.client
            log.info("xDS client connected", extra={"node": node_id, "cluster": request.node.cluster})
        return self.client

    def _on_request(self, request: discovery_pb2.DiscoveryRequest) -> list[discovery_pb2.DiscoveryResponse]:
        client = self._client_for(request)
        state = client.types.setdefault(request.type_url, TypeState())
        if request.response_nonce and request.response_nonce != state.sent_nonce:
            return []  # answers a response that a newer one superseded
        names = frozenset(n for n in request.resource_names if n != WILDCARD)
        names_changed = names != state.names
        state.names = names
        if request.HasField("error_detail"):
            self._record_nack(client, request, state)
        elif request.response_nonce:
            state.acked_version = request.version_info
        snapshot = self.server.cache.snapshot
        up_to_date = state.sent_version == snapshot.version
        rejected = state.nacked_version == snapshot.version
        if (up_to_date or rejected) and not names_changed:
            return []
        return [self._respond(request.type_url, state, snapshot)]

    def _record_nack(self, client: ClientState, request, state: TypeState) -> None:
        state.nacked_version = state.sent_version
        state.nack_message = request.error_detail.message
        log.warning(
            "xDS client rejected a configuration (NACK); it keeps its last good version",
            extra={
                "node": client.node_id,
                "type_url": request.type_url,
                "rejected_version": state.sent_version,
                "kept_version": request.version_info,
                "reason": request.error_detail.message,
            },
        )

    def _on_snapshot(self, snapshot: Snapshot) -> list[discovery_pb2.DiscoveryResponse]:
        if self.client is None:
            return []
        out = []
        for type_url in PUSH_ORDER:
            state = self.client.types.get(type_url)
            if state is not None and state.sent_version != snapshot.version:
                out.append(self._respond(type_url, state, snapshot))
        return out

    def _respond(self, type_url: str, state: TypeState, snapshot: Snapshot) -> discovery_pb2.DiscoveryResponse:
        available = snapshot.of_type(type_url)
        wanted = sorted(state.names) if state.names else sorted(available)
        response = discovery_pb2.DiscoveryResponse(
            version_info=snapshot.version,
            type_url=type_url,
            nonce=self.server.next_nonce(),
        )
        for name in wanted:
            if name in available:
                packed = any_pb2.Any()
                packed.Pack(available[name])
                response.resources.append(packed)
        state.sent_version = snapshot.version
        state.sent_nonce = response.nonce
        state.responses_sent += 1
        return response
