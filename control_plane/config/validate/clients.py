"""The ``clients`` and ``limits`` sections: who may call, and how much.

``clients`` names each team or application with its keys (the lines ``hapax keys create``
prints, never a key), the metrics labels its requests carry, its department and its limits.
``limits`` says where the counters live (``store``), what happens when they cannot be read
(``on_store_error``) and each department's limits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from control_plane.config.errors import _index, _Issues, _join
from control_plane.config.model import (
    LIMIT_PERIODS,
    STORE_ERROR_CHOICES,
    AdmissionConfig,
    Budget,
    ClientConfig,
    LimitsConfig,
    QueueConfig,
)
from control_plane.config.validate.routes import _metrics_labels
from control_plane.config.validate.values import (
    _duration,
    _expected,
    _integer,
    _list,
    _mapping,
    _not_one_of,
    _positive_integer,
    _reject_unknown_keys,
    _server_url,
    _string,
    _text,
)
from hapax.client_keys import KeyLine, KeyLineError

_CLIENT_KEYS = ("keys", "department", "metrics_labels", "limits", "models", "routes", "priority")
_QUEUE_KEYS = ("max_waiting", "timeout")
MAX_PRIORITY = 1000
_LIMIT_KEYS = ("requests_per_minute", "requests_per_day", "tokens_per_minute", "tokens_per_day", "budget")
_BUDGET_KEYS = ("usd", "period")
_ADMISSION_KEYS = ("store", "on_store_error", "default_max_tokens", "departments")
_STORE_SCHEMES = ("redis", "rediss")


def _clients(value: Any, served: Scope, issues: _Issues) -> dict[str, ClientConfig] | None:
    """``served``: the model names and route paths a client's ``models`` and ``routes`` may name."""
    if value is None:
        return None
    node = _mapping(value, "clients", issues)
    if node is None:
        return {}
    clients: dict[str, ClientConfig] = {}
    owner: dict[str, str] = {}  # key id -> the client path that has it
    for name, entry in node.items():
        path = _join("clients", name)
        if not isinstance(name, str) or not name.strip():
            issues.error(path, _expected("a client name", name))
            continue
        client = _client(name, entry, path, served, issues)
        if client is None:
            continue
        for i, line in enumerate(client.keys):
            where = _index(_join(path, "keys"), i)
            if line.key_id in owner:
                issues.error(where, f"key id {line.key_id} is already {owner[line.key_id]}'s: ids must be unique")
            owner.setdefault(line.key_id, where)
        clients[name] = client
    return clients


def _client(name: str, value: Any, path: str, served: Scope, issues: _Issues) -> ClientConfig | None:
    node = _mapping(value, path, issues)
    if node is None:
        return None
    _reject_unknown_keys(node, path, _CLIENT_KEYS, issues)
    keys = _key_lines(node.get("keys"), _join(path, "keys"), issues)
    department = None if node.get("department") is None else _text(node["department"], _join(path, "department"),
                                                                     issues)
    labels = _metrics_labels(node.get("metrics_labels"), _join(path, "metrics_labels"), issues)
    limits = _limits(node.get("limits"), _join(path, "limits"), issues)
    models = _scope(node.get("models"), _join(path, "models"), "model", served.models, issues)
    routes = _scope(node.get("routes"), _join(path, "routes"), "route path", served.routes, issues)
    priority = 0 if node.get("priority") is None else _priority(node["priority"], _join(path, "priority"), issues)
    return ClientConfig(name, keys, department, labels, limits, models, routes, priority)


def _priority(value: Any, path: str, issues: _Issues) -> int:
    number = _integer(value, path, issues)
    if number is None or not -MAX_PRIORITY <= number <= MAX_PRIORITY:
        if number is not None:
            issues.error(path, f"must be between {-MAX_PRIORITY} and {MAX_PRIORITY}, got {number}")
        return 0
    return number


def _queue(value: Any, issues: _Issues) -> QueueConfig | None:
    if value is None:
        return None
    node = _mapping(value, "queue", issues)
    if node is None:
        return None
    _reject_unknown_keys(node, "queue", _QUEUE_KEYS, issues)
    default = QueueConfig()
    waiting = default.max_waiting if node.get("max_waiting") is None else _positive_integer(
        node["max_waiting"], "queue.max_waiting", default.max_waiting, issues)
    timeout = default.timeout if node.get("timeout") is None else _duration(
        node["timeout"], "queue.timeout", default.timeout, issues)
    return QueueConfig(waiting, timeout)


@dataclass(frozen=True)
class Scope:
    """What the config serves: the names a client's ``models`` and ``routes`` may hold."""

    models: tuple[str, ...]
    routes: tuple[str, ...]


def _scope(value: Any, path: str, kind: str, known: Sequence[str], issues: _Issues) -> tuple[str, ...]:
    if value is None:
        return ()
    items = _list(value, path, issues) or []
    if not items:
        issues.error(path, f"lists no {kind}: omit it to allow every {kind}")
    names = []
    for i, item in enumerate(items):
        text = _string(item, _index(path, i), issues)
        if text is None:
            continue
        if text not in known:
            issues.error(_index(path, i), _not_one_of(kind, text, known))
            continue
        names.append(text)
    return tuple(names)


def _key_lines(value: Any, path: str, issues: _Issues) -> tuple[KeyLine, ...]:
    if value is None:
        issues.error(path, "is required: the lines `hapax keys create` prints (a client with no key cannot call)")
        return ()
    items = _list(value, path, issues) or []
    lines = []
    for i, item in enumerate(items):
        where = _index(path, i)
        text = _string(item, where, issues, secret=True)
        if text is None:
            continue
        try:
            lines.append(KeyLine.parse(text))
        except KeyLineError as err:
            issues.error(where, str(err))
    return tuple(lines)


def _limits(value: Any, path: str, issues: _Issues) -> LimitsConfig:
    if value is None:
        return LimitsConfig()
    node = _mapping(value, path, issues)
    if node is None:
        return LimitsConfig()
    _reject_unknown_keys(node, path, _LIMIT_KEYS, issues)
    counts = {key: _positive_integer(node[key], _join(path, key), 1, issues)
              for key in _LIMIT_KEYS[:-1] if node.get(key) is not None}
    budget = None if node.get("budget") is None else _budget(node["budget"], _join(path, "budget"), issues)
    return LimitsConfig(**counts, budget=budget)


def _budget(value: Any, path: str, issues: _Issues) -> Budget | None:
    node = _mapping(value, path, issues)
    if node is None:
        return None
    _reject_unknown_keys(node, path, _BUDGET_KEYS, issues)
    usd = node.get("usd")
    if isinstance(usd, bool) or not isinstance(usd, (int, float)) or not (0 < usd < math.inf):
        issues.error(_join(path, "usd"), _expected("a positive number of US dollars", usd))
        return None
    period = node.get("period", "month")
    if period not in LIMIT_PERIODS:
        issues.error(_join(path, "period"), _not_one_of("budget period", str(period), LIMIT_PERIODS))
        return None
    return Budget(float(usd), period)


def _admission(value: Any, issues: _Issues) -> AdmissionConfig:
    node = {} if value is None else _mapping(value, "limits", issues)
    if not node:
        return AdmissionConfig()
    _reject_unknown_keys(node, "limits", _ADMISSION_KEYS, issues)
    default = AdmissionConfig()
    store = "" if node.get("store") is None else _server_url(
        node["store"], "limits.store", _STORE_SCHEMES, "omit it for the embedded store", issues)
    on_error = node.get("on_store_error", default.on_store_error)
    if on_error not in STORE_ERROR_CHOICES:
        issues.error("limits.on_store_error", _not_one_of("choice", str(on_error), STORE_ERROR_CHOICES))
        on_error = default.on_store_error
    max_tokens = default.default_max_tokens
    if node.get("default_max_tokens") is not None:
        max_tokens = _positive_integer(node["default_max_tokens"], "limits.default_max_tokens", max_tokens, issues)
    departments = {}
    for name, entry in (_mapping(node.get("departments") or {}, "limits.departments", issues) or {}).items():
        path = _join("limits.departments", name)
        if not isinstance(name, str) or not name.strip():
            issues.error(path, _expected("a department name", name))
            continue
        departments[name] = _limits(entry, path, issues)
    return AdmissionConfig(store, on_error, max_tokens, departments)
