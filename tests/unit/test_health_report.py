"""/health's provider states, and when it says degraded (docs/operations.md: /health)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from aiohttp.test_utils import TestClient, TestServer

from ext_proc.health_app import health_app
from ext_proc.metrics import GatewayMetrics
from ext_proc.provider_health import ProviderHealth, ProviderProber
from hapax.v1 import runtime_pb2


class _Prober(ProviderProber):
    """A prober whose verdicts a test sets."""

    def __init__(self, states: dict[str, ProviderHealth | None]) -> None:
        super().__init__(lambda _: None)
        self.fixed = states

    def state(self, name: str) -> ProviderHealth | None:
        return self.fixed.get(name)


async def _health(states: dict[str, ProviderHealth | None]) -> tuple[int, dict]:
    prober = _Prober(states)
    subscription = SimpleNamespace(view=SimpleNamespace(providers=dict.fromkeys(states), version="v1"),
                                   connected=True, status=runtime_pb2.ConfigStatus(), node_id="n", last_error="")
    app = health_app(subscription, prober, GatewayMetrics(prober))  # type: ignore[arg-type]
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/health")
        return resp.status, await resp.json()


def _probed(**fields) -> ProviderHealth:
    return ProviderHealth("p", last_checked=1.0, checks=3, **fields)


async def test_health_is_degraded_when_no_provider_may_serve():
    status, report = await _health({"a": _probed(healthy=False, last_error="connection refused"),
                                    "b": _probed(held_until=1e12, held_after=429)})
    assert (status, report["status"]) == (503, "degraded")
    assert report["components"]["providers"]["status"] == "down"
    assert {n: p["status"] for n, p in report["providers"].items()} == {"a": "unhealthy", "b": "holding_off"}


async def test_one_provider_that_may_serve_keeps_health_ok():
    status, report = await _health({"a": _probed(healthy=False, last_error="HTTP 500"), "b": _probed()})
    assert (status, report["status"], report["components"]["providers"]["status"]) == (200, "ok", "up")


@pytest.mark.parametrize(("state", "shown"), [
    (_probed(), "healthy"),
    # In ext_proc's verdict until unhealthy_threshold failures, but Envoy may route around it already.
    (_probed(last_error="connection refused"), "failing"),
    (None, "unknown"),  # not probed yet: optimistic, like the prober and Envoy
])
async def test_a_provider_is_healthy_only_while_its_last_probe_passed(state, shown):
    status, report = await _health({"a": state})
    assert report["providers"]["a"]["status"] == shown
    assert status == (503 if shown == "failing" else 200)


async def test_a_control_plane_that_is_away_is_reported_but_leaves_the_gateway_serving():
    prober = _Prober({"a": _probed()})
    subscription = SimpleNamespace(view=SimpleNamespace(providers={"a": None}, version="v1"), connected=False,
                                   status=runtime_pb2.ConfigStatus(), node_id="n", last_error="connection refused")
    app = health_app(subscription, prober, GatewayMetrics(prober))  # type: ignore[arg-type]
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/health")
        report = await resp.json()
    assert resp.status == 200  # a fleet's control plane restarting must not take every gateway out
    assert report["components"]["control_plane"] == {**report["components"]["control_plane"], "status": "down",
                                                     "error": "connection refused"}
