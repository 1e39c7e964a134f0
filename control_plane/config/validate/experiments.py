"""The ``experiments`` section: A/B model experiments.

Each experiment splits the chat requests naming its ``model`` (on every chat route, or the
``routes`` listed), or every chat request of its ``routes``, between variants by weight. A
variant is a provider, with that provider's failover chain, and the model it is sent.
``sticky_by`` says what keeps a user on one variant: ``header NAME`` (the client's own user
id, say; the client key's id when the header is absent) or ``client_key``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from control_plane.config.errors import _Issues, _join
from control_plane.config.model import (
    EXPERIMENT_HANDLERS,
    STICKY_CLIENT_KEY,
    ExperimentConfig,
    ProviderConfig,
    RouteConfig,
    VariantConfig,
)
from control_plane.config.validate.clients import _scope
from control_plane.config.validate.providers import _forward_header_problem
from control_plane.config.validate.values import (
    _expected,
    _integer,
    _mapping,
    _not_one_of,
    _quote,
    _reject_unknown_keys,
    _required,
    _string,
    _text,
)
from hapax import wire

_EXPERIMENT_KEYS = ("model", "routes", "variants", "sticky_by")
_VARIANT_KEYS = ("provider", "model", "weight")
# Names become label values and header values: short, plain.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_WEIGHT = 1_000_000


def _experiments(value: Any, providers: Mapping[str, ProviderConfig], routes: Sequence[RouteConfig],
                 issues: _Issues) -> dict[str, ExperimentConfig]:
    if value is None:
        return {}
    node = _mapping(value, "experiments", issues)
    if node is None:
        return {}
    experiments: dict[str, ExperimentConfig] = {}
    for name, entry in node.items():
        path = _join("experiments", name)
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            issues.error(path, _expected("an experiment name (letters, digits, '_', '.', '-'; at most 64)", name))
            continue
        experiment = _experiment(name, entry, path, providers, routes, issues)
        if experiment is not None:
            _check_overlap(experiment, experiments, path, routes, issues)
            experiments[name] = experiment
    return experiments


def _experiment(name: str, value: Any, path: str, providers: Mapping[str, ProviderConfig],
                routes: Sequence[RouteConfig], issues: _Issues) -> ExperimentConfig | None:
    node = _mapping(value, path, issues)
    if node is None:
        return None
    _reject_unknown_keys(node, path, _EXPERIMENT_KEYS, issues)
    model = None if node.get("model") is None else _text(node["model"], _join(path, "model"), issues)
    chat = [r.path for r in routes if r.handler in EXPERIMENT_HANDLERS]
    paths = _scope(node.get("routes"), _join(path, "routes"), "chat or completion route", chat, issues)
    if node.get("model") is None and node.get("routes") is None:
        issues.error(path, "names neither a model nor routes: say which requests it splits "
                           "(model: the name clients send; routes: the paths whose every chat request it takes)")
    variants = _variants(_required(node, "variants", path, issues), _join(path, "variants"), providers, issues)
    sticky = _sticky_by(node.get("sticky_by"), _join(path, "sticky_by"), issues)
    if not variants:
        return None
    return ExperimentConfig(name, variants, model, paths, sticky)


def _variants(value: Any, path: str, providers: Mapping[str, ProviderConfig],
              issues: _Issues) -> tuple[VariantConfig, ...]:
    if value is None:
        return ()
    node = _mapping(value, path, issues)
    if node is None:
        return ()
    if not node:
        issues.error(path, "lists no variant")
    variants = []
    for name, entry in node.items():
        where = _join(path, name)
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            issues.error(where, _expected("a variant name (letters, digits, '_', '.', '-'; at most 64)", name))
            continue
        variant = _variant(name, entry, where, providers, issues)
        if variant is not None:
            variants.append(variant)
    if len(variants) == len(node) and variants and sum(v.weight for v in variants) == 0:
        issues.error(path, "every weight is 0: at least one variant must take requests")
    return tuple(variants) if len(variants) == len(node) else ()


def _variant(name: str, value: Any, path: str, providers: Mapping[str, ProviderConfig],
             issues: _Issues) -> VariantConfig | None:
    node = _mapping(value, path, issues)
    if node is None:
        return None
    _reject_unknown_keys(node, path, _VARIANT_KEYS, issues)
    provider_value = _required(node, "provider", path, issues)
    provider_name = None if provider_value is None else _string(provider_value, _join(path, "provider"), issues)
    weight = _weight(node.get("weight"), _join(path, "weight"), issues)
    if provider_name is None or weight is None:
        return None
    provider = providers.get(provider_name)
    if provider is None:
        issues.error(_join(path, "provider"), _not_one_of("provider", provider_name, list(providers)))
        return None
    chat = provider.default_model(wire.ModelFamily.CHAT)
    if chat is None:
        issues.error(_join(path, "provider"), f"provider {provider_name!r} serves no chat model")
        return None
    model = chat if node.get("model") is None else _text(node["model"], _join(path, "model"), issues)
    if model is None:
        return None
    if wire.ModelFamily.CHAT not in provider.models.get(model, ()):
        served = [m for m, families in provider.models.items() if wire.ModelFamily.CHAT in families]
        issues.error(_join(path, "model"), f"provider {provider_name!r} serves no chat model {_quote(model)} "
                                           f"(its chat models: {', '.join(served)}; see providers.{provider_name}"
                                           ".models)")
        return None
    return VariantConfig(name, provider_name, model, weight)


def _weight(value: Any, path: str, issues: _Issues) -> int | None:
    if value is None:
        issues.error(path, "is required: the variant's share, relative to the others' (90 and 10, say)")
        return None
    number = _integer(value, path, issues)
    if number is not None and not 0 <= number <= MAX_WEIGHT:
        issues.error(path, f"must be between 0 and {MAX_WEIGHT}, got {number}")
        return None
    return number


def _sticky_by(value: Any, path: str, issues: _Issues) -> str | None:
    """``header NAME`` -> the header's lowercased name; ``client_key`` (the default) -> None."""
    if value is None:
        return None
    text = _string(value, path, issues)
    if text is None or text.strip() == STICKY_CLIENT_KEY:
        return None
    kind, _, name = text.strip().partition(" ")
    name = name.strip().lower()
    if kind != "header" or not name:
        issues.error(path, f"must be 'client_key' or 'header NAME' (e.g. 'header x-user-id'), got {_quote(text)}")
        return None
    problem = _forward_header_problem(name)
    if problem:
        hint = " (to assign by the client's key, say 'client_key')" if name in wire.CLIENT_CREDENTIAL_HEADERS else ""
        issues.error(path, f"cannot assign users by {_quote(name)}: {problem}{hint}")
        return None
    return name


def _check_overlap(experiment: ExperimentConfig, earlier: Mapping[str, ExperimentConfig], path: str,
                   routes: Sequence[RouteConfig], issues: _Issues) -> None:
    """A request belongs to one experiment at most: two may not claim the same model on one route."""
    mine = {r.path for r in routes if experiment.applies_on(r)}
    for other in earlier.values():
        shared = mine & {r.path for r in routes if other.applies_on(r)}
        same_model = experiment.model is None or other.model is None or experiment.model == other.model
        if shared and same_model:
            issues.error(path, f"takes the same requests as experiments.{other.name} "
                               f"(on {', '.join(sorted(shared))}): a request belongs to one experiment")
            return
