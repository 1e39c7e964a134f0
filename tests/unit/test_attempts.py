"""Each attempt is held to its own provider's timeout, and a route's idle limit follows its chain."""

from __future__ import annotations

from control_plane import resources as res
from control_plane.snapshot import ROUTE
from tests.snapshots import seed_snapshot


def _routes(text: str) -> list:
    return list(seed_snapshot(text).of_type(ROUTE)[res.ROUTE_CONFIG_NAME].virtual_hosts[0].routes)


def _ordinary(text: str, path: str = "/v1/chat/completions"):
    return next(r for r in _routes(text) if r.match.path == path and r.HasField("route")
                and not r.match.dynamic_metadata)


SHORT_CHAINS = """\
providers:
  a: {type: openai, model: a-model, base_url: "http://127.0.0.1:8001/v1", timeout: 2s}
  b: {type: openai, model: b-model, base_url: "http://127.0.0.1:8002/v1", timeout: 3s}
  slow: {type: ollama, model: llama3.2, timeout: 2m}
provider_preference: [a, b]
routes:
  - path: /v1/chat/completions
    handler: chat
"""


def test_a_routes_idle_limit_follows_its_chain():
    # Every attempt may be silent for its chain's longest timeout; plus the back-offs (250 ms)
    # and a second to spare.
    idle = {r.name: r.route.idle_timeout.ToMilliseconds() for r in _routes(SHORT_CHAINS) if r.HasField("route")}
    lane = "chat:/v1/chat/completions"
    assert idle[f"passthrough:{lane}:a-model"] == idle[f"model:{lane}:a-model:stream"] == 2 * 3000 + 250 + 1000
    assert idle[f"model:{lane}:llama3.2"] == 3 * 120_000 + 2 * 250 + 1000  # slow, then a and b
    # The ordinary route serves any chain (the router step names it): the longest wait of all.
    assert _ordinary(SHORT_CHAINS).route.idle_timeout.ToMilliseconds() == 3 * 120_000 + 2 * 250 + 1000
