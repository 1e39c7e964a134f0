"""Validation: a parsed, expanded mapping -> the dataclasses of ``model``, with every issue.

It is strict: unknown keys, wrong types and dangling references are errors,
each reported at its key path. ``_build`` checks the top level and hands each
section to its module:

- ``server``: host, ports, TLS and HTTP/3;
- ``providers``: providers, their health checks and circuit breakers, and
  ``provider_preference``;
- ``routes``: routes and their metrics labels, over the standard ones unless
  ``default_routes: false``;
- ``settings``: the small sections: retry, pricing, logging, ext_proc;
- ``control_plane``: where a fleet reaches the control plane, and its mutual TLS;
- ``clients``: who may call (their keys' lines), their labels and limits; ``limits``: where
  the counters live and the departments' limits; ``queue``: waiting for a saturated provider;
  ``ledger`` (settings): where the cost ledger is kept;
- ``experiments``: A/B model experiments, their variants and weights.
- ``regions``: geographic routing (the providers' ``region``) and data residency.

``values`` holds what they share: reading one value of a given kind, and the
messages that describe a wrong one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from control_plane.config.errors import _Issues
from control_plane.config.model import HapaxConfig, HealthCheckConfig, ProviderConfig, RouteConfig
from control_plane.config.validate.clients import Scope, _admission, _clients, _queue
from control_plane.config.validate.control_plane import _control_plane
from control_plane.config.validate.experiments import _experiments
from control_plane.config.validate.providers import _health_check, _preference, _provider_names, _providers
from control_plane.config.validate.regions import _regions
from control_plane.config.validate.routes import _served_routes
from control_plane.config.validate.server import _base_dir, _server
from control_plane.config.validate.settings import _ext_proc, _ledger, _logging, _pricing, _retry
from control_plane.config.validate.values import _expected, _reject_unknown_keys
from hapax import wire

_TOP_LEVEL_KEYS = ("server", "providers", "provider_preference", "routes", "default_routes", "health_check",
                   "retry", "pricing", "logging", "ext_proc", "control_plane", "clients", "limits", "queue", "ledger",
                   "experiments", "regions")


def _served_scope(providers: Mapping[str, ProviderConfig], routes: Sequence[RouteConfig], experiments: Any) -> Scope:
    """What a client may be confined to: every model name served (an experiment's too) and route path."""
    models = {wire.AUTO_MODEL} | {name for p in providers.values() for name in (*p.models, *p.aliases)}
    if isinstance(experiments, Mapping):
        models |= {e["model"] for e in experiments.values()
                   if isinstance(e, Mapping) and isinstance(e.get("model"), str)}
    return Scope(tuple(sorted(models)), tuple(route.path for route in routes))


def _build(data: Any, source: str, issues: _Issues) -> HapaxConfig | None:
    if data is None:
        issues.error("", "the file is empty: expected a mapping with at least 'providers'")
        return None
    if not isinstance(data, dict):
        issues.error("", _expected("a mapping at the top level", data))
        return None
    root = data
    _reject_unknown_keys(root, "", _TOP_LEVEL_KEYS, issues)
    server = _server(root.get("server"), issues, _base_dir(source))
    health_defaults = _health_check(root.get("health_check"), "health_check", HealthCheckConfig(), issues)
    providers = _providers(root.get("providers"), health_defaults, issues)
    preference = _preference(root.get("provider_preference"), _provider_names(root.get("providers")), issues)
    routes = _served_routes(root.get("routes"), root.get("default_routes"), issues)
    retry = _retry(root.get("retry"), issues)
    pricing = _pricing(root.get("pricing"), issues)
    logging_config = _logging(root.get("logging"), issues)
    ext_proc = _ext_proc(root.get("ext_proc"), issues)
    control_plane = _control_plane(root.get("control_plane"), issues, _base_dir(source))
    clients = _clients(root.get("clients"), _served_scope(providers, routes, root.get("experiments")), issues)
    admission = _admission(root.get("limits"), issues)
    queue = _queue(root.get("queue"), issues)
    ledger = _ledger(root.get("ledger"), issues, _base_dir(source))
    experiments = _experiments(root.get("experiments"), providers, routes, issues)
    regions = _regions(root.get("regions"), providers, issues, _base_dir(source))
    if issues.errors:
        return None
    return HapaxConfig(server, providers, preference, routes, tuple(issues.warnings), source, retry, pricing,
                       logging_config, ext_proc, control_plane, clients, admission, queue, ledger,
                       experiments, regions)
