"""The HTTP side of ext_proc: ``/health``, which Envoy routes ``GET /health`` to.

A request that reaches it has crossed Envoy, so Envoy is up; ext_proc answers,
so ext_proc is up; the control plane is up when the xDS stream is connected.
"""

from __future__ import annotations

from aiohttp import web

from ext_proc.xds_client import RuntimeSubscription


def health_app(subscription: RuntimeSubscription) -> web.Application:
    async def health(_: web.Request) -> web.Response:
        view = subscription.view
        cp_up = subscription.connected
        ok = cp_up and view is not None
        body = {
            "status": "ok" if ok else "degraded",
            "components": {
                "envoy": {"status": "up"},
                "ext_proc": {"status": "up", "node": subscription.node_id},
                "control_plane": {
                    "status": "up" if cp_up else "down",
                    "config_version": view.version if view else None,
                    **({"error": subscription.last_error} if not cp_up and subscription.last_error else {}),
                },
            },
            "providers": sorted(view.providers) if view else [],
        }
        return web.json_response(body, status=200 if ok else 503)

    app = web.Application()
    app.router.add_get("/health", health)
    return app
