"""The ``routes`` section: paths, handlers and metrics labels (within Prometheus' and Hapax's rules).

Configured routes add to the standard OpenAI ones (``DEFAULT_ROUTES``) and
replace one on the same path; ``default_routes: false`` keeps only them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from control_plane.config.errors import _index, _Issues, _join
from control_plane.config.model import (
    DEDUP_CHOICES,
    DEFAULT_ROUTES,
    HANDLERS,
    HEALTH_PATH,
    MAX_LABEL_VALUE_LENGTH,
    MAX_LABELS,
    RESERVED_LABELS,
    RouteConfig,
)
from control_plane.config.validate.values import (
    _describe,
    _expected,
    _list,
    _mapping,
    _not_one_of,
    _quote,
    _reject_unknown_keys,
    _required,
    _string,
    _text,
)

_ROUTE_KEYS = ("path", "handler", "version", "metrics_labels", "dedup")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")  # Prometheus' own rule


def _served_routes(routes_value: Any, default_routes_value: Any, issues: _Issues) -> tuple[RouteConfig, ...]:
    """What the gateway serves: the standard routes unless ``default_routes: false``, and the configured ones."""
    keep_defaults = _default_routes(default_routes_value, issues)
    if routes_value is None:
        if not keep_defaults:
            issues.error("default_routes", "false leaves nothing to serve: list the routes to serve under 'routes'")
        return DEFAULT_ROUTES if keep_defaults else ()
    configured = _routes(routes_value, issues)
    return _over_defaults(configured) if keep_defaults else configured


def _default_routes(value: Any, issues: _Issues) -> bool:
    if value is None:
        return True
    if not isinstance(value, bool):
        issues.error("default_routes", _expected("true or false", value))
        return True
    return value


def _over_defaults(configured: tuple[RouteConfig, ...]) -> tuple[RouteConfig, ...]:
    """The configured routes in file order, then each standard one whose path none of them takes.

    Envoy matches a route's exact path, so the order only decides how they are listed.
    """
    taken = {route.path for route in configured}
    return configured + tuple(route for route in DEFAULT_ROUTES if route.path not in taken)


def _routes(value: Any, issues: _Issues) -> tuple[RouteConfig, ...]:
    items = _list(value, "routes", issues)
    if items is None:
        return ()
    if not items:
        issues.error("routes", "must define at least one route (omit the key for the default routes)")
    routes = (_route(item, _index("routes", i), issues) for i, item in enumerate(items))
    built = tuple(route for route in routes if route is not None)
    _check_unique_paths(items, issues)
    return built


def _route(value: Any, path: str, issues: _Issues) -> RouteConfig | None:
    node = _mapping(value, path, issues)
    if node is None:
        return None
    _reject_unknown_keys(node, path, _ROUTE_KEYS, issues)
    route_path = _route_path(_required(node, "path", path, issues), _join(path, "path"), issues)
    handler = _handler(_required(node, "handler", path, issues), _join(path, "handler"), issues)
    version_value = node.get("version")
    version = "v1" if version_value is None else _text(version_value, _join(path, "version"), issues)
    labels = _metrics_labels(node.get("metrics_labels"), _join(path, "metrics_labels"), issues)
    dedup = _dedup(node.get("dedup"), _join(path, "dedup"), handler, issues)
    if not (route_path and handler and version):
        return None
    return RouteConfig(route_path, handler, version, labels, dedup)


def _dedup(value: Any, path: str, handler: str | None, issues: _Issues) -> str:
    """``true``: coalesce requests whose answer is determined; ``always``: any; ``false``: none."""
    if value is None or value is False:
        return "off"
    choice = "on" if value is True else value
    if choice not in DEDUP_CHOICES[1:]:
        issues.error(path, _expected("true, false or 'always'", value))
        return "off"
    if handler == "models":
        issues.error(path, "a models route has nothing to coalesce (it is answered by the gateway)")
        return "off"
    return str(choice)


def _route_path(value: Any, path: str, issues: _Issues) -> str | None:
    if value is None:
        return None
    route_path = _string(value, path, issues)
    problem = None if route_path is None else _route_path_problem(route_path)
    if problem:
        issues.error(path, problem)
        return None
    return route_path


def _route_path_problem(route_path: str) -> str | None:
    if not route_path.startswith("/"):
        return f"path {_quote(route_path)} must start with '/'"
    if any(c.isspace() or not c.isprintable() for c in route_path):
        return f"path {_quote(route_path)} must not contain whitespace or control characters"
    if "?" in route_path or "#" in route_path:
        return f"path {_quote(route_path)} must not contain '?' or '#' (routes match the path only)"
    if route_path == HEALTH_PATH:
        return f"path {HEALTH_PATH} is reserved for the gateway health endpoint"
    return None


def _check_unique_paths(items: Sequence[Any], issues: _Issues) -> None:
    first_use: dict[str, str] = {}
    for i, item in enumerate(items):
        route_path = item.get("path") if isinstance(item, dict) else None
        if not isinstance(route_path, str):
            continue
        where = _index("routes", i)
        if route_path in first_use:
            issues.error(_join(where, "path"), f"duplicate path {route_path} (already used by {first_use[route_path]})")
        else:
            first_use[route_path] = where


def _handler(value: Any, path: str, issues: _Issues) -> str | None:
    if value is None:
        return None
    handler = _string(value, path, issues)
    if handler is not None and handler not in HANDLERS:
        issues.error(path, _not_one_of("handler", handler, HANDLERS))
        return None
    return handler


def _metrics_labels(value: Any, path: str, issues: _Issues) -> dict[str, str]:
    if value is None:
        return {}
    node = _mapping(value, path, issues)
    if node is None:
        return {}
    if len(node) > MAX_LABELS:
        issues.error(path, f"at most {MAX_LABELS} labels are allowed, got {len(node)} "
                           "(each label multiplies the number of time series)")
    labels = {}
    for name, raw in node.items():
        label_path = _join(path, name)
        name_ok = _check_label_name(name, label_path, issues)
        text = _label_value(raw, label_path, issues)
        if name_ok and text is not None:
            labels[name] = text
    return labels


def _check_label_name(name: Any, path: str, issues: _Issues) -> bool:
    if not isinstance(name, str):
        problem = f"label names must be strings, got {_describe(name)}"
    elif not _LABEL_NAME.fullmatch(name):
        problem = f"invalid label name {_quote(name)} (Prometheus label names match [a-zA-Z_][a-zA-Z0-9_]*)"
    elif name.startswith("__"):
        problem = f"invalid label name {_quote(name)}: names starting with '__' are reserved by Prometheus"
    elif name in RESERVED_LABELS:
        problem = f"label {name!r} is reserved: Hapax sets it itself (reserved: {', '.join(RESERVED_LABELS)})"
    else:
        return True
    issues.error(path, problem)
    return False


def _label_value(value: Any, path: str, issues: _Issues) -> str | None:
    text = _text(value, path, issues)
    if text is not None and len(text) > MAX_LABEL_VALUE_LENGTH:
        issues.error(path, f"label value is {len(text)} characters long; at most {MAX_LABEL_VALUE_LENGTH} are allowed")
        return None
    return text
