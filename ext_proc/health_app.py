"""The HTTP side of ext_proc.

``/health`` is what Envoy routes ``GET /health`` to. A request that reaches it
has crossed Envoy, so Envoy is up; ext_proc answers, so ext_proc is up; the
control plane is up when the xDS stream is connected. It also reports every
provider's health as ext_proc's prober sees it. A control plane that is away
does not make it 503: Envoy and ext_proc serve their last configuration, and a
load balancer (a Kubernetes readiness probe) that took every gateway out while
a fleet's control plane restarts would turn its restart into an outage.

A provider is ``healthy`` only while it may serve (in rotation, last probe
passed); ``/health`` is ``degraded`` (503) when none may (docs/operations.md).

``/providers/{name}/health`` is each provider's verdict, polled by Envoy's
active health check on that provider's endpoint: 200 healthy, 503 unhealthy or
holding off (the provider answered 429/503 with a retry-after that has not
passed yet).

``restarts`` counts how often ``hapax serve`` restarted each process.

Any ``POST`` is a coalesced request (a route's ``dedup``), which Envoy sends here with the id
of the identical request whose answer it shares (ext_proc/coalescing.py).

``/metrics`` is this process's Prometheus series (Envoy serves it on
``server.metrics_port``), and so is ``/admin/health``, the same report with
the reasons a config edit was refused. Public ``/health`` says only where
(file and key paths): a reason describes a value, and a value typed into the
wrong field may be an API key.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from ext_proc.coalescing import Coalescer, follower_handler
from ext_proc.metrics import GatewayMetrics
from ext_proc.provider_health import ProviderHealth, ProviderProber
from ext_proc.restarts import RestartCounts
from ext_proc.xds_client import RuntimeSubscription
from hapax import wire


def _provider_report(state: ProviderHealth | None) -> dict:
    """One provider's state (docs/operations.md: /health): healthy only when it may serve."""
    if state is None or state.last_checked is None:
        return {"status": "unknown"}
    report: dict[str, Any] = {"status": _provider_status(state), "checks": state.checks,
                              "consecutive_failures": state.consecutive_failures}
    if state.last_error:
        report["last_error"] = state.last_error
    held = state.hold_off_remaining()
    if held:
        report["retry_after_seconds"] = round(held, 1)
    return report


def _provider_status(state: ProviderHealth) -> str:
    if not state.healthy:
        return "unhealthy"
    if state.hold_off_remaining():
        return "holding_off"
    # Still in ext_proc's verdict until unhealthy_threshold failures in a row, but Envoy's
    # outlier detection may route around it already: never "healthy" then.
    return "failing" if state.last_error else "healthy"


def _may_serve(state: ProviderHealth | None) -> bool:
    """Unknown (not probed yet) may: the prober and Envoy are optimistic until proven wrong."""
    return state is None or state.last_checked is None or state.serving()


def _config_status(status, *, detailed: bool) -> dict:
    """What the control plane did with the file: reload counts, the edit it refused, NACKs."""
    report: dict = {"reloads": {"applied": status.reloads_applied, "unchanged": status.reloads_unchanged,
                                "invalid": status.reloads_invalid}}
    if status.last_error:
        report["last_refused_edit"] = {"file": status.last_error_source, "at": list(status.last_error_paths)}
    if status.unchecked_version:
        # Served all the same, guarded by the rollout and NACKs: docs/operations.md, what is validated when.
        report["unchecked_version"] = status.unchecked_version
    if status.last_error and detailed:
        report["last_error"] = status.last_error
    if status.rejections:
        # A NACK's reason is Envoy's text about the resource: the admin side's too.
        report["rejected_versions"] = [{"node": r.node, "type_url": r.type_url, "version": r.version,
                                        **({"reason": r.reason} if detailed else {})} for r in status.rejections]
    return report


def health_app(subscription: RuntimeSubscription, prober: ProviderProber,
               metrics: GatewayMetrics, restarts: RestartCounts | None = None,
               coalescer: Coalescer | None = None) -> web.Application:
    def health_report(detailed: bool) -> web.Response:
        view = subscription.view
        cp_up = subscription.connected
        states = {name: prober.state(name) for name in (view.providers if view else ())}
        # No provider that may serve: every request would be a 503 provider_unavailable.
        providers_up = not states or any(_may_serve(state) for state in states.values())
        ok = view is not None and providers_up
        body = {
            "status": "ok" if ok else "degraded",
            "components": {
                "envoy": {"status": "up"},
                "ext_proc": {"status": "up", "node": subscription.node_id},
                # "down" when none of them may serve (see "providers" for each one's state and reason).
                "providers": {"status": "up" if providers_up else "down"},
                "control_plane": {
                    "status": "up" if cp_up else "down",
                    # Served means rolled out to Envoy too, which the runtime's own version does not say.
                    "config_version": subscription.status.serving_version or (view.version if view else None),
                    **({"error": subscription.last_error} if not cp_up and subscription.last_error else {}),
                    **_config_status(subscription.status, detailed=detailed),
                },
            },
            "providers": {name: _provider_report(state) for name, state in states.items()},
            # How often `hapax serve` restarted each process (empty without it).
            "restarts": restarts.read() if restarts else {},
        }
        return web.json_response(body, status=200 if ok else 503)

    async def health(_: web.Request) -> web.Response:
        return health_report(detailed=False)

    async def admin_health(_: web.Request) -> web.Response:
        return health_report(detailed=True)

    async def prometheus(_: web.Request) -> web.Response:
        return web.Response(body=metrics.exposition(),
                            headers={"content-type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get(wire.HEALTH_PATH, health)
    app.router.add_get(wire.ADMIN_HEALTH_PATH, admin_health)
    app.router.add_get(wire.METRICS_PATH, prometheus)
    if coalescer is not None:  # a coalesced request, whatever its path (ext_proc/coalescing.py)
        app.router.add_post("/{path:.*}", follower_handler(coalescer))
    return app


def verdict_app(prober: ProviderProber) -> web.Application:
    """Only the provider verdicts Envoy's health checks poll: what it serves is public /health's
    providers anyway, so it may listen where the rest may not (a loopback TCP port;
    control_plane/resources/names.py: ExtProcEndpoints)."""

    async def provider_verdict(request: web.Request) -> web.Response:
        state = prober.state(request.match_info["name"])
        # Unknown until the first probe completes: optimistic, like the prober.
        healthy = state is None or state.in_rotation()
        return web.json_response(_provider_report(state), status=200 if healthy else 503)

    app = web.Application()
    app.router.add_get(wire.PROVIDER_VERDICT_PATH, provider_verdict)
    return app
