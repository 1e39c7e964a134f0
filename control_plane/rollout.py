"""A new version reaches Envoy and ext_proc in stages, each one answered before the next.

A route to a cluster Envoy does not have yet, or has not warmed yet, answers
503 (no cluster); so does ext_proc naming such a cluster in ``x-hapax-chain``.
Envoy warms a new cluster (its first health check) before it ACKs the CDS
update that added it, so an ACK means "ready to route to". The stages:

1. ``connect``: clusters, endpoints and secrets of the new version, next to
   the old ones (old routes and ext_proc's old runtime still name them).
2. ``runtime``: ext_proc lists and routes the new models; their chains are warm.
3. ``routes``: listeners and routes, whose model lane stamps the new version,
   which every ext_proc now has.
4. ``prune``: only the new version's clusters, endpoints and secrets; nothing
   names the others any more.

Each stage waits until every connected client has answered (ACK or NACK) what
it was sent, for at most ``STAGE_TIMEOUT`` seconds: a client that hangs delays
a version, it does not stop it. A NACK does not stop it either: Envoy keeps its
last good resources, and the status reports the rejection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

from google.protobuf import message

from control_plane.ads import AdsServer
from control_plane.cache import SnapshotCache
from control_plane.snapshot import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    RUNTIME,
    SECRET,
    Snapshot,
)

log = logging.getLogger("hapax.control_plane.rollout")

STAGE_TIMEOUT = 10.0
CONNECTIONS = (CLUSTER, ENDPOINT, SECRET)

Resources = Mapping[str, Mapping[str, message.Message]]


def stages(served: Resources, target: Snapshot) -> list[tuple[str, Resources]]:
    """What is served after each stage, per type URL, moving from ``served`` to ``target``.

    Attempt listeners (internal listeners a provider's cluster reaches it through,
    control_plane/resources/attempts.py) go with the clusters: they arrive before
    the clusters that name them are used, and go once those are gone.
    """
    old_listeners, new_listeners = served.get(LISTENER, {}), target.of_type(LISTENER)
    connect: dict[str, Mapping[str, message.Message]] = {
        t: {**served.get(t, {}), **target.of_type(t)} for t in CONNECTIONS}
    arriving = {name: lst for name, lst in _attempt_listeners(new_listeners).items() if old_listeners.get(name) != lst}
    if arriving:
        connect[LISTENER] = {**old_listeners, **arriving}
    return [
        ("connect", connect),
        ("runtime", {RUNTIME: target.of_type(RUNTIME)}),
        ("routes", {LISTENER: {**_attempt_listeners(old_listeners), **new_listeners}, ROUTE: target.of_type(ROUTE)}),
        ("prune", {**{t: target.of_type(t) for t in CONNECTIONS}, LISTENER: new_listeners}),
    ]


def _attempt_listeners(listeners: Mapping[str, message.Message]) -> dict[str, message.Message]:
    return {name: lst for name, lst in listeners.items() if lst.HasField("internal_listener")}


class Rollout:
    """Moves the clients of ``cache`` to each accepted snapshot, one rollout at a time."""

    def __init__(self, cache: SnapshotCache, ads: AdsServer, stage_timeout: float = STAGE_TIMEOUT) -> None:
        self.cache = cache
        self.ads = ads
        self.stage_timeout = stage_timeout
        self._task: asyncio.Task | None = None

    def start(self, target: Snapshot) -> None:
        """Accepts ``target`` and rolls it out; a rollout still going stops where it is and this one takes over."""
        self.cache.accept(target)
        self.stop()
        self._task = asyncio.get_running_loop().create_task(self._run(target))
        self._task.add_done_callback(_report_failure)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def done(self) -> None:
        if self._task is not None:
            await asyncio.shield(self._task)

    async def _run(self, target: Snapshot) -> None:
        began = time.monotonic()
        served = {t: self.cache.served(t) for t in (*CONNECTIONS, RUNTIME, LISTENER, ROUTE)}
        for name, stage in stages(served, target):
            versions = {t: (_version_of(target, t, resources, name), resources) for t, resources in stage.items()}
            if not self.cache.serve(versions):
                continue
            waiting = await self.ads.settle(self.cache.generation, self.stage_timeout)
            if waiting:
                log.warning("config rollout went on without every client's answer",
                            extra={"version": target.version, "stage": name, "waiting_for": waiting,
                                   "timeout_seconds": self.stage_timeout})
        self.cache.update_status(lambda status: setattr(status, "serving_version", target.version))
        log.info("config version rolled out", extra={"version": target.version,
                                                     "seconds": round(time.monotonic() - began, 3)})


def _report_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("config rollout failed; clients keep what they were served", exc_info=task.exception())


def _version_of(target: Snapshot, type_url: str, resources: Mapping[str, message.Message], stage: str) -> str:
    # A type whose content is the target's has the target's version; a mix of old and new has its own.
    return target.version if dict(resources) == dict(target.of_type(type_url)) else f"{target.version}.{stage}"
