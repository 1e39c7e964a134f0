"""ext_proc's subscription to its runtime configuration over ADS.

ext_proc is an xDS client like Envoy: it asks the control plane for the
``hapax.v1.Runtime`` resource, ACKs a version it can serve and NACKs (with the
reason) one it cannot, keeping the last good one. It also follows the
``hapax.v1.ConfigStatus`` resource (reloads, the last refused edit, NACKs) to
report it. It reconnects with backoff when the control plane goes away, and
keeps serving what it has meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections import OrderedDict
from collections.abc import Callable

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2

from ext_proc.runtime import InvalidRuntime, RuntimeView
from hapax import wire
from hapax.v1 import runtime_pb2

RUNTIME_TYPE = wire.RUNTIME_TYPE_URL
STATUS_TYPE = wire.STATUS_TYPE_URL
INVALID_ARGUMENT = 3
RECENT_VERSIONS = 16
# A runtime names every route and provider: thousands of department routes make megabytes, over
# gRPC's default 4 MB for a message received (the control plane sends any size).
MAX_RUNTIME_BYTES = 256 * 1024 * 1024
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", MAX_RUNTIME_BYTES)]

log = logging.getLogger("hapax.ext_proc.xds")


class RuntimeSubscription:
    def __init__(self, address: str, known_types: frozenset[str], node_id: str | None = None,
                 on_update: Callable[[RuntimeView], None] | None = None,
                 credentials: grpc.ChannelCredentials | None = None) -> None:
        self.address = address
        # Mutual TLS to a control plane on another machine; None: a Unix socket or loopback.
        self.credentials = credentials
        self.on_update = on_update
        self.known_types = known_types
        # The control plane tracks each node's rollout by this id. Without one given (a fleet, where
        # `hapax serve` does not name the workers), the host's name keeps ext_procs apart whose pid
        # is the same: process 1 of every container or pod.
        self.node_id = node_id or f"ext_proc-{socket.gethostname()}-{os.getpid()}"
        self.view: RuntimeView | None = None
        # Recent versions, so that a request keeps the version it started under
        # even if a newer one arrives before its last attempt (see view_for).
        self._recent: OrderedDict[str, RuntimeView] = OrderedDict()
        self.status = runtime_pb2.ConfigStatus()
        self._status_version = ""
        self.connected = False
        self.received = asyncio.Event()
        self.last_error = ""

    async def run(self) -> None:
        backoff = 0.1
        while True:
            try:
                await self._stream()
                backoff = 0.1
            except grpc.aio.AioRpcError as err:
                self.last_error = f"{err.code().name}: {err.details()}"
            except asyncio.CancelledError:
                self.connected = False  # we are stopping: nothing was lost
                raise
            if self.connected:
                log.warning("lost the control plane; serving the last version",
                            extra={"version": self.view.version if self.view else None})
            self.connected = False
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    async def _stream(self) -> None:
        channel_of = (grpc.aio.insecure_channel(self.address, options=CHANNEL_OPTIONS) if self.credentials is None
                      else grpc.aio.secure_channel(self.address, self.credentials, options=CHANNEL_OPTIONS))
        async with channel_of as channel:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            outbox: asyncio.Queue = asyncio.Queue()
            await outbox.put(self._request())
            await outbox.put(self._status_request())
            call = stub.StreamAggregatedResources(_drain(outbox))
            async for response in call:
                self.connected = True
                if response.type_url == STATUS_TYPE:
                    await outbox.put(self._take_status(response))
                else:
                    await outbox.put(self._answer(response))

    def view_for(self, version: str) -> RuntimeView | None:
        """The view of ``version`` if it is recent, else the current one."""
        return self._recent.get(version) or self.view

    def _request(self, **fields) -> discovery_pb2.DiscoveryRequest:
        return discovery_pb2.DiscoveryRequest(
            type_url=RUNTIME_TYPE,
            node=base_pb2.Node(id=self.node_id, cluster="hapax-ext-proc"),
            version_info=self.view.version if self.view else "",
            **fields,
        )

    def _status_request(self, **fields) -> discovery_pb2.DiscoveryRequest:
        return discovery_pb2.DiscoveryRequest(type_url=STATUS_TYPE, version_info=self._status_version, **fields)

    def _take_status(self, response: discovery_pb2.DiscoveryResponse) -> discovery_pb2.DiscoveryRequest:
        status = runtime_pb2.ConfigStatus()
        if len(response.resources) == 1 and response.resources[0].Unpack(status):
            self.status, self._status_version = status, response.version_info
        return self._status_request(response_nonce=response.nonce)

    def _answer(self, response: discovery_pb2.DiscoveryResponse) -> discovery_pb2.DiscoveryRequest:
        try:
            self.view = self._parse(response)
            self._recent[self.view.version] = self.view
            while len(self._recent) > RECENT_VERSIONS:
                self._recent.popitem(last=False)
        except InvalidRuntime as err:
            log.error("rejected a runtime configuration (NACK)",
                      extra={"version": response.version_info, "reason": str(err)})
            return self._request(response_nonce=response.nonce,
                                 error_detail=status_pb2.Status(code=INVALID_ARGUMENT, message=str(err)))
        self.received.set()
        if self.on_update is not None:
            self.on_update(self.view)
        log.info("runtime configuration applied", extra={"version": response.version_info})
        return self._request(response_nonce=response.nonce)

    def _parse(self, response: discovery_pb2.DiscoveryResponse) -> RuntimeView:
        if len(response.resources) != 1:
            raise InvalidRuntime(f"expected one Runtime resource, got {len(response.resources)}")
        rt = runtime_pb2.Runtime()
        if not response.resources[0].Unpack(rt):
            raise InvalidRuntime(f"resource is {response.resources[0].type_url}, not a Runtime")
        return RuntimeView.from_proto(rt, self.known_types)


async def _drain(outbox: asyncio.Queue):
    while True:
        yield await outbox.get()
