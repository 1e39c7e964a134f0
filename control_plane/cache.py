"""The snapshot cache: what each type URL's clients are served now, apart from how it reaches them.

It holds the newest accepted snapshot, the (version, resources) served of each
type, which may lag behind that snapshot during a rollout, and the config
status; every change bumps a generation and wakes the waiting streams. Each
served resource is serialised once, when the cache starts serving it, not per
client: its packed form (what every response carries) and its digest (its
version in incremental xDS, a digest of those bytes). At 200 clients and a
snapshot of megabytes, serialising per client was the fan-out's cost. The ADS
protocol (``control_plane.ads``) only reads it.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2, message

from control_plane.snapshot import PUSH_ORDER, Snapshot
from hapax import wire
from hapax.v1 import runtime_pb2

STATUS = wire.STATUS_TYPE_URL
STATUS_NAME = wire.STATUS_NAME


def packed_resource(msg: message.Message) -> any_pb2.Any:
    """A resource as a response carries it, serialised deterministically (so its digest is stable)."""
    packed = any_pb2.Any()
    packed.Pack(msg, deterministic=True)
    return packed


def resource_version(packed: any_pb2.Any) -> str:
    """A resource's version in incremental xDS: a digest of its content."""
    return hashlib.sha256(packed.value).hexdigest()[:16]


@dataclass(frozen=True)
class Served:
    """One type's served content: its version, its resources, each packed once, and each one's digest."""

    version: str
    resources: Mapping[str, message.Message]
    packed: Mapping[str, any_pb2.Any]  # resource name -> what every client's response carries
    digests: Mapping[str, str]  # resource name -> resource_version
    # Names a client asked for -> those resources as a DiscoveryResponse's serialised
    # ``resources`` field: encoded once per served version, however many clients ask.
    encoded: dict[tuple[str, ...], bytes] = field(default_factory=dict, compare=False)

    @classmethod
    def of(cls, version: str, resources: Mapping[str, message.Message]) -> Served:
        packed = {name: packed_resource(resource) for name, resource in resources.items()}
        digests = {name: resource_version(p) for name, p in packed.items()}
        return cls(version, resources, MappingProxyType(packed), MappingProxyType(digests))

    def encoded_resources(self, names: tuple[str, ...]) -> bytes:
        """``names``' resources (those served) as the serialised ``resources`` field of a
        state-of-the-world response. A response is this after its own version, type and nonce:
        protobuf reads concatenated messages as one."""
        body = self.encoded.get(names)
        if body is None:
            body = self.encoded[names] = discovery_pb2.DiscoveryResponse(
                resources=[self.packed[n] for n in names if n in self.packed]).SerializeToString()
        return body


class SnapshotCache:
    """What every type URL's clients are served, and the config status; wakes every stream on a change.

    ``snapshot`` is the newest configuration accepted. What is served of each
    type may lag behind it while a rollout (``control_plane.rollout``) moves
    clients over in stages; each type has the version of its content.

    The status (``hapax.v1.ConfigStatus``) has versions of its own: a refused
    edit or a NACK changes it, never the configuration's version.
    """

    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot
        self._served: dict[str, Served] = {}
        self._status = runtime_pb2.ConfigStatus()
        self._status_version = 0
        self._status_served = self._serve_status()
        self._generation = 0
        self._changed = asyncio.Event()
        self.set(snapshot)

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    @property
    def status(self) -> runtime_pb2.ConfigStatus:
        copy = runtime_pb2.ConfigStatus()
        copy.CopyFrom(self._status)
        return copy

    def set(self, snapshot: Snapshot) -> None:
        """Serves ``snapshot`` whole, at once."""
        self.accept(snapshot)
        self.serve({t: (snapshot.version, snapshot.of_type(t)) for t in PUSH_ORDER})
        self.update_status(lambda status: setattr(status, "serving_version", snapshot.version))

    def accept(self, snapshot: Snapshot) -> None:
        """Records ``snapshot`` as the newest configuration, before it is served."""
        self._snapshot = snapshot

    def served(self, type_url: str) -> Mapping[str, message.Message]:
        entry = self._served.get(type_url)
        return entry.resources if entry is not None else {}

    def serve(self, stage: Mapping[str, tuple[str, Mapping[str, message.Message]]]) -> bool:
        """Serves each type's (version, resources) of ``stage``: True if anything changed."""
        changed = False
        for type_url, (version, resources) in stage.items():
            old = self._served.get(type_url)
            if old is None or old.version != version or dict(old.resources) != dict(resources):
                self._served[type_url] = Served.of(version, resources)
                changed = True
        if changed:
            self._wake()
        return changed

    def update_status(self, change: Callable[[runtime_pb2.ConfigStatus], None]) -> None:
        change(self._status)
        self._status_version += 1
        self._status_served = self._serve_status()
        self._wake()

    def _serve_status(self) -> Served:
        # The status changes in place, only through update_status: its digest is taken there.
        return Served.of(f"status-{self._status_version}", {STATUS_NAME: self._status})

    def _wake(self) -> None:
        self._generation += 1
        self._changed.set()
        self._changed = asyncio.Event()

    def current(self, type_url: str) -> tuple[str, Mapping[str, message.Message]]:
        """The version and resources a client of ``type_url`` should have now."""
        entry = self._entry(type_url)
        return entry.version, entry.resources

    def encoded_resources(self, type_url: str, names: tuple[str, ...]) -> bytes:
        """``Served.encoded_resources`` of what ``current`` returns for ``type_url``."""
        return self._entry(type_url).encoded_resources(names)

    def packed(self, type_url: str) -> Mapping[str, any_pb2.Any]:
        """Each resource ``current`` returns, serialised: taken once per served version, for every client."""
        return self._entry(type_url).packed

    def digests(self, type_url: str) -> Mapping[str, str]:
        """The digest of each resource ``current`` returns, by name: taken once per served version."""
        return self._entry(type_url).digests

    def _entry(self, type_url: str) -> Served:
        if type_url == STATUS:
            return self._status_served
        entry = self._served.get(type_url)
        if entry is None:
            return Served(self._snapshot.version, MappingProxyType({}), MappingProxyType({}), MappingProxyType({}))
        return entry

    async def wait_change(self, seen: int) -> int:
        while self._generation == seen:
            await self._changed.wait()
        return self._generation

    @property
    def generation(self) -> int:
        return self._generation
