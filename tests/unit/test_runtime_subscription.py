"""ext_proc's xDS subscription against the real ADS server: what a large configuration needs."""

from __future__ import annotations

import asyncio

from control_plane.snapshot import RUNTIME
from ext_proc.translators import TRANSLATORS
from ext_proc.xds_client import RuntimeSubscription
from hapax.v1 import runtime_pb2
from tests.xds_harness import wait_for


def _runtime_of(routes: int, version: str, served: runtime_pb2.Runtime) -> runtime_pb2.Runtime:
    """The served runtime with ``routes`` department routes more: thousands make megabytes."""
    big = runtime_pb2.Runtime()
    big.CopyFrom(served)
    big.config_version = version
    for i in range(routes):
        big.routes.add(path=f"/v1/departments/department-{i:06d}/chat/completions", handler="chat",
                       version=version, metrics_labels={"department": f"department-{i:06d}", "team": "t" * 16})
    return big


async def test_a_runtime_larger_than_grpcs_default_4_mb_reaches_ext_proc(ads):
    _, cache, _, port = ads
    (name, served), = cache.current(RUNTIME)[1].items()
    big = _runtime_of(40_000, "big", served)
    assert big.ByteSize() > 4 * 1024 * 1024  # gRPC's default limit on a message received
    subscription = RuntimeSubscription(f"127.0.0.1:{port}", frozenset(TRANSLATORS))
    task = asyncio.create_task(subscription.run())
    try:
        await wait_for(lambda: subscription.view is not None, "the first runtime")
        cache.serve({RUNTIME: ("big", {name: big})})
        await wait_for(lambda: subscription.view is not None and subscription.view.version == "big",
                       "the large runtime", timeout=20)
        assert len(subscription.view.routes) >= 40_000
    finally:
        task.cancel()
