"""Fan-out: how long an edit takes to reach the last of K xDS clients (issue 21).

The control plane's ADS server and snapshot cache run in the benchmark's process, on a
loopback port; the K clients run in a process of their own (``python -m bench.xds_fanout``),
so the server's work per client is what is timed, not the clients'. Each client is a
state-of-the-world ADS stream subscribing like an Envoy: every cluster, every listener,
the route configuration, and ACKing what it gets. The time is from the moment the
cache is handed the new snapshot to the moment the last client holds it in every type
(CLOCK_MONOTONIC is one clock for every process of the machine).

A client reads of each response only what its ACK needs (the version, type and nonce),
and skips the resources: an Envoy parses its copy on a CPU of its own, while these K
clients share one Python process, where parsing K copies of a 10 MB route configuration
took longer than the server sending them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from dataclasses import dataclass

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

from control_plane import resources as res
from control_plane.ads import AdsServer, add_to_server
from control_plane.cache import SnapshotCache
from control_plane.snapshot import CLUSTER, LISTENER, ROUTE, Snapshot

# What an Envoy subscribes to that grows with the config (names: () is every resource of the type).
SUBSCRIPTIONS: dict[str, tuple[str, ...]] = {CLUSTER: (), LISTENER: (), ROUTE: (res.ROUTE_CONFIG_NAME,)}
READY_WAIT_S = 300.0
STREAM_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
# DiscoveryResponse's fields an ACK needs, by field number.
ACK_FIELDS = {field.number: field.name for field in discovery_pb2.DiscoveryResponse.DESCRIPTOR.fields
              if field.name in ("version_info", "type_url", "nonce")}


@dataclass(frozen=True)
class Fanout:
    clients: int
    first_s: float  # connect to every client holding the first version
    edit_s: float   # new snapshot to the last client holding it


async def measure_fanout(first: Snapshot, edited: Snapshot, clients: int) -> Fanout:
    """Serves ``first`` to ``clients`` clients in another process, then ``edited``: how long each took."""
    cache = SnapshotCache(first)
    server = grpc.aio.server(options=[("grpc.max_send_message_length", 512 * 1024 * 1024)])
    add_to_server(AdsServer(cache), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.xds_fanout", "--port", str(port), "--clients", str(clients),
        "--versions", first.version, edited.version, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        held_first = json.loads(await asyncio.wait_for(proc.stdout.readline(), READY_WAIT_S))["at"]
        edit = time.monotonic()
        cache.set(edited)
        held_edit = json.loads(await asyncio.wait_for(proc.stdout.readline(), READY_WAIT_S))["at"]
        return Fanout(clients, held_first - started, held_edit - edit)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        await server.stop(0)


# ---------------------------------------------------------------- the clients' process


async def _client(port: int, n: int, versions: list[str], reached: list[asyncio.Event]) -> None:
    """One ADS stream: subscribes, ACKs, and sets reached[i] once it holds versions[i] in every type."""
    node = base_pb2.Node(id=f"fanout-{n}", cluster="bench")
    outbox: asyncio.Queue[discovery_pb2.DiscoveryRequest] = asyncio.Queue()

    async def requests():
        while True:
            yield await outbox.get()

    options = [("grpc.max_receive_message_length", 512 * 1024 * 1024)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        call = channel.stream_stream(STREAM_METHOD, request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
                                     response_deserializer=_ack_fields)(requests())
        for type_url, names in SUBSCRIPTIONS.items():
            await outbox.put(discovery_pb2.DiscoveryRequest(type_url=type_url, node=node, resource_names=names))
        held: dict[str, str] = {}
        async for response in call:
            held[response.type_url] = response.version_info
            await outbox.put(discovery_pb2.DiscoveryRequest(
                type_url=response.type_url, node=node, resource_names=SUBSCRIPTIONS[response.type_url],
                version_info=response.version_info, response_nonce=response.nonce))
            for version, event in zip(versions, reached, strict=True):
                if len(held) == len(SUBSCRIPTIONS) and set(held.values()) == {version}:
                    event.set()


def _ack_fields(raw: bytes) -> discovery_pb2.DiscoveryResponse:
    """A response's version, type and nonce, its resources skipped unread (wire format: a tag
    varint, then a varint or a length-delimited value per field)."""
    out, pos = discovery_pb2.DiscoveryResponse(), 0
    while pos < len(raw):
        tag, pos = _varint(raw, pos)
        if tag & 7 == 0:  # a varint field
            _, pos = _varint(raw, pos)
            continue
        size, pos = _varint(raw, pos)  # every other field of a DiscoveryResponse is length-delimited
        if tag >> 3 in ACK_FIELDS:
            setattr(out, ACK_FIELDS[tag >> 3], raw[pos:pos + size].decode())
        pos += size
    return out


def _varint(raw: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = raw[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


async def _clients(port: int, clients: int, versions: list[str]) -> None:
    reached = [[asyncio.Event() for _ in versions] for _ in range(clients)]
    tasks = [asyncio.create_task(_client(port, n, versions, reached[n])) for n in range(clients)]
    for i in range(len(versions)):
        await asyncio.gather(*(events[i].wait() for events in reached))
        print(json.dumps({"version": versions[i], "at": time.monotonic()}), flush=True)
    for task in tasks:
        task.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--versions", nargs="+", required=True)
    args = parser.parse_args()
    asyncio.run(_clients(args.port, args.clients, args.versions))


if __name__ == "__main__":
    main()
