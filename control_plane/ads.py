"""Aggregated Discovery Service (xDS v3) on grpc.aio: state of the world and incremental.

One stream per client (an Envoy or an ext_proc). For each type URL the client
subscribes to, the stream remembers what it sent (version, nonce) and what the
client said about it. A NACK (a request whose ``error_detail`` is set) is logged
with the client's message, reported in the config status, and the rejected
version is not sent again: the client keeps its last good version and gets the
next snapshot when there is one.

The incremental (delta) variant, which Envoy uses, sends only the resources
whose content changed since what the client has (each resource's version is a
digest of its content, which the cache takes once per served version) and
names the ones that are gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from control_plane.cache import STATUS, SnapshotCache
from control_plane.snapshot import PUSH_ORDER

log = logging.getLogger("hapax.control_plane.ads")
ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"

# Types whose subscribers get every resource regardless of the names they ask
# for (an empty name list is a wildcard in SotW for every type).
WILDCARD = "*"


@dataclass
class TypeState:
    """What one client has been sent, and has said, for one type URL."""

    names: frozenset[str] = frozenset()
    sent_version: str = ""
    sent_nonce: str = ""
    answered_nonce: str = ""  # the last response the client ACKed or NACKed
    acked_version: str = ""
    nacked_version: str = ""
    nack_message: str = ""
    responses_sent: int = 0
    # Incremental streams only: what the client subscribed to and holds.
    wildcard: bool = False
    known: dict[str, str] = field(default_factory=dict)  # resource name -> version (digest)

    @property
    def awaiting_answer(self) -> bool:
        return self.sent_nonce != self.answered_nonce


@dataclass
class ClientState:
    node_id: str
    types: dict[str, TypeState] = field(default_factory=dict)
    connected: bool = True
    # The cache generation whose change this client's stream has handled last.
    generation_seen: int = 0


class AdsServer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    def __init__(self, cache: SnapshotCache) -> None:
        self.cache = cache
        self.clients: dict[str, ClientState] = {}
        self._nonces = itertools.count(1)
        self._progress = asyncio.Event()

    async def StreamAggregatedResources(
        self, request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest], context
    ) -> AsyncIterator[EncodedResponse]:
        stream = _Stream(self)
        try:
            async for response in stream.run(request_iterator):
                yield response
        except asyncio.CancelledError:
            return  # the server is stopping; the client reconnects elsewhere or later

    async def DeltaAggregatedResources(
        self, request_iterator: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest], context
    ) -> AsyncIterator[discovery_pb2.DeltaDiscoveryResponse]:
        stream = _DeltaStream(self)
        try:
            async for response in stream.run(request_iterator):
                yield response
        except asyncio.CancelledError:
            return

    def next_nonce(self) -> str:
        return str(next(self._nonces))

    def progressed(self) -> None:
        """A client answered, or a stream handled a change, or a client left."""
        self._progress.set()
        self._progress = asyncio.Event()

    def unsettled(self, generation: int) -> list[str]:
        """The connected clients that have not yet answered what ``generation`` sent them, as node/type."""
        waiting = []
        for client in self.clients.values():
            if not client.connected:
                continue
            if client.generation_seen < generation:
                waiting.append(f"{client.node_id}/*")
                continue
            waiting += [f"{client.node_id}/{type_url.rsplit('.', 1)[-1]}" for type_url in PUSH_ORDER
                        if type_url in client.types and client.types[type_url].awaiting_answer]
        return waiting

    async def settle(self, generation: int, timeout: float) -> list[str]:
        """Waits until every connected client has answered ``generation``: the ones that did not, in time."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self.unsettled(generation):
                    await self._progress.wait()
        return self.unsettled(generation)


@dataclass(frozen=True)
class EncodedResponse:
    """A serialised ``DiscoveryResponse``: ``add_to_server``'s serializer sends it as it is."""

    raw: bytes


def _serialize(response: discovery_pb2.DeltaDiscoveryResponse | EncodedResponse) -> bytes:
    return response.raw if isinstance(response, EncodedResponse) else response.SerializeToString()


def add_to_server(ads: AdsServer, server: grpc.aio.Server) -> None:
    """Serves ``ads`` as Envoy's AggregatedDiscoveryService: as the generated registration does,
    but a response may be one already serialised (``EncodedResponse``)."""
    handlers = {
        "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
            ads.StreamAggregatedResources, request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
            response_serializer=_serialize),
        "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
            ads.DeltaAggregatedResources, request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString,
            response_serializer=_serialize),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(ADS_SERVICE, handlers),))


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
                responses = self._on_request(item) if kind == "request" else self._on_change()
                for response in responses:
                    yield response
        finally:
            reader.cancel()
            watcher.cancel()
            if self.client is not None:
                self.client.connected = False
                self.server.progressed()
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
        seen = self.server.cache.generation
        while True:
            seen = await self.server.cache.wait_change(seen)
            await self.events.put(("change", None))

    # -- protocol

    def _client_for(self, request: discovery_pb2.DiscoveryRequest) -> ClientState:
        if self.client is None:
            node_id = request.node.id or "unknown"
            # Whatever it asks for from now on is answered from what is served now.
            self.client = ClientState(node_id=node_id, generation_seen=self.server.cache.generation)
            self.server.clients[node_id] = self.client
            log.info("xDS client connected", extra={"node": node_id, "cluster": request.node.cluster})
        return self.client

    def _on_request(self, request: discovery_pb2.DiscoveryRequest) -> list[EncodedResponse]:
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
        if request.response_nonce:
            self._answered(state, request.response_nonce)
        version, _ = self.server.cache.current(request.type_url)
        up_to_date = state.sent_version == version
        rejected = state.nacked_version == version
        if (up_to_date or rejected) and not names_changed:
            return []
        return [self._respond(request.type_url, state)]

    def _answered(self, state: TypeState, nonce: str) -> None:
        state.answered_nonce = nonce
        self.server.progressed()

    def _record_nack(self, client: ClientState, request, state: TypeState) -> None:
        state.nacked_version = state.sent_version
        state.nack_message = request.error_detail.message
        self.server.cache.update_status(lambda status: status.rejections.add(
            node=client.node_id, type_url=request.type_url, version=state.sent_version,
            reason=request.error_detail.message))
        log.warning(
            "xDS client rejected a configuration (NACK); it keeps its last good version",
            extra={
                "node": client.node_id,
                "type_url": request.type_url,
                "rejected_version": state.sent_version,
                "kept_version": state.acked_version,
                "reason": request.error_detail.message,
            },
        )

    def _on_change(self) -> list[EncodedResponse]:
        if self.client is None:
            return []
        out = []
        for type_url in (*PUSH_ORDER, STATUS):
            state = self.client.types.get(type_url)
            version, _ = self.server.cache.current(type_url)
            if state is not None and version not in (state.sent_version, state.nacked_version):
                out.append(self._respond(type_url, state))
        self._handled_change()
        return out

    def _handled_change(self) -> None:
        assert self.client is not None
        self.client.generation_seen = self.server.cache.generation
        self.server.progressed()

    def _respond(self, type_url: str, state: TypeState) -> EncodedResponse:
        version, available = self.server.cache.current(type_url)
        wanted = tuple(sorted(state.names) if state.names else sorted(available))
        head = discovery_pb2.DiscoveryResponse(version_info=version, type_url=type_url,
                                               nonce=self.server.next_nonce())
        state.sent_version = version
        state.sent_nonce = head.nonce
        state.responses_sent += 1
        # The resources as encoded once for every client: a route configuration of megabytes
        # was copied and serialised again for each of hundreds of clients (bench/xds_fanout.py).
        return EncodedResponse(head.SerializeToString() + self.server.cache.encoded_resources(type_url, wanted))


class _DeltaStream(_Stream):
    def _on_request(self, request: discovery_pb2.DeltaDiscoveryRequest) -> list[discovery_pb2.DeltaDiscoveryResponse]:
        client = self._client_for(request)
        first = request.type_url not in client.types
        state = client.types.setdefault(request.type_url, TypeState())
        if request.response_nonce:
            if request.response_nonce == state.sent_nonce:
                if request.HasField("error_detail"):
                    # What was sent stays recorded as held, so it is not sent again.
                    self._record_nack(client, request, state)
                else:
                    state.acked_version = state.sent_version
                self._answered(state, request.response_nonce)
            if not (request.resource_names_subscribe or request.resource_names_unsubscribe):
                return []
        if first:
            state.known.update(request.initial_resource_versions)
            # An empty first subscription is the legacy wildcard (Envoy's CDS and LDS).
            state.wildcard = not request.resource_names_subscribe
        for name in request.resource_names_subscribe:
            if name == WILDCARD:
                state.wildcard = True
            else:
                state.names = state.names | {name}
        for name in request.resource_names_unsubscribe:
            if name == WILDCARD:
                state.wildcard = False
            else:
                state.names = state.names - {name}
                state.known.pop(name, None)
        response = self._delta(request.type_url, state, always=first)
        return [response] if response is not None else []

    def _on_change(self) -> list[discovery_pb2.DeltaDiscoveryResponse]:
        if self.client is None:
            return []
        out = []
        for type_url in (*PUSH_ORDER, STATUS):
            state = self.client.types.get(type_url)
            if state is not None:
                response = self._delta(type_url, state)
                if response is not None:
                    out.append(response)
        self._handled_change()
        return out

    def _delta(
        self, type_url: str, state: TypeState, always: bool = False
    ) -> discovery_pb2.DeltaDiscoveryResponse | None:
        version, available = self.server.cache.current(type_url)
        digests, packed = self.server.cache.digests(type_url), self.server.cache.packed(type_url)
        wanted = set(available) if state.wildcard else {n for n in state.names if n in available}
        response = discovery_pb2.DeltaDiscoveryResponse(system_version_info=version, type_url=type_url)
        for name in sorted(wanted):
            digest = digests[name]
            if state.known.get(name) != digest:
                response.resources.add(name=name, version=digest, resource=packed[name])
                state.known[name] = digest
        for name in sorted(set(state.known) - set(wanted)):
            response.removed_resources.append(name)
            del state.known[name]
        if not (response.resources or response.removed_resources or always):
            return None
        response.nonce = self.server.next_nonce()
        state.sent_version = version
        state.sent_nonce = response.nonce
        state.responses_sent += 1
        return response
