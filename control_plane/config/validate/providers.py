"""The ``providers`` section (health checks and circuit breakers included) and ``provider_preference``."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

from control_plane.config.env import _Expanded
from control_plane.config.errors import _index, _Issues, _join
from control_plane.config.model import (
    DEFAULT_BASE_URLS,
    DEFAULT_TIMEOUT,
    FAMILIES,
    PROVIDER_TYPES,
    TYPE_FAMILIES,
    CircuitBreakerConfig,
    HealthCheckConfig,
    ProviderConfig,
)
from control_plane.config.validate.values import (
    _describe,
    _duration,
    _list,
    _looks_like_a_secret,
    _mapping,
    _not_one_of,
    _positive_integer,
    _quote,
    _reject_unknown_keys,
    _required,
    _string,
    _suggestion,
    _text,
)
from hapax import wire

_PROVIDER_KEYS = ("type", "model", "models", "api_key", "base_url", "timeout", "aliases", "health_check",
                  "circuit_breaker", "forward_headers", "region")
_MODEL_KEYS = ("handler",)
_HEALTH_CHECK_KEYS = ("interval", "timeout", "healthy_threshold", "unhealthy_threshold")
_CIRCUIT_BREAKER_KEYS = ("max_concurrent_requests", "max_pending_requests", "max_retries")
_KEYED_PROVIDER_TYPES = ("anthropic", "openai")  # their APIs refuse requests without a key

_PROVIDER_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")  # provider names become Envoy cluster names

# What the gateway appends to each type's base_url (ext_proc's translators; docs/configuration.md: base_url).
_APPENDED_PATHS = {
    "openai": (wire.OPENAI_CHAT_PATH, wire.OPENAI_EMBEDDINGS_PATH, wire.OPENAI_MODELS_PATH),
    "anthropic": (wire.ANTHROPIC_MESSAGES_PATH, "/v1/models"),
    "ollama": ("/api/chat", "/api/embed", "/api/tags"),
}
# Path endings that repeat what the gateway appends: its requests would get the provider's 404.
_REPEATED_ENDINGS = {"anthropic": ("/v1",), "ollama": ("/v1", "/api")}


def _provider_names(value: Any) -> list[str]:
    return [name for name in value if isinstance(name, str)] if isinstance(value, dict) else []


def _providers(value: Any, health_defaults: HealthCheckConfig, issues: _Issues) -> dict[str, ProviderConfig]:
    if value is None:
        issues.error("providers", "is required: define at least one provider")
        return {}
    node = _mapping(value, "providers", issues)
    if node is None:
        return {}
    if not node:
        issues.error("providers", "must define at least one provider")
    providers = {}
    for name, body in node.items():
        provider = _provider(name, body, _join("providers", name), health_defaults, issues)
        if provider is not None:
            providers[provider.name] = provider
    return providers


def _provider(
    name: Any, body: Any, path: str, health_defaults: HealthCheckConfig, issues: _Issues
) -> ProviderConfig | None:
    name_ok = _check_provider_name(name, path, issues)
    node = _mapping(body, path, issues)
    if node is None:
        return None
    _reject_unknown_keys(node, path, _PROVIDER_KEYS, issues)
    kind = _provider_type(_required(node, "type", path, issues), _join(path, "type"), issues)
    model_value = _required(node, "model", path, issues)
    model = _text(model_value, _join(path, "model"), issues) if model_value is not None else None
    api_key = _api_key(node.get("api_key"), kind, _join(path, "api_key"), issues)
    base_url = _base_url(node.get("base_url"), kind, _join(path, "base_url"), issues)
    timeout = _timeout(node.get("timeout"), _join(path, "timeout"), issues)
    aliases = _aliases(node.get("aliases"), _join(path, "aliases"), issues)
    models = _models(node.get("models"), model, kind, aliases, _join(path, "models"), issues)
    health = _health_check(node.get("health_check"), _join(path, "health_check"), health_defaults, issues)
    breaker = _circuit_breaker(node.get("circuit_breaker"), _join(path, "circuit_breaker"), issues)
    forward = _forward_headers(node.get("forward_headers"), _join(path, "forward_headers"), issues)
    region = None if node.get("region") is None else _region_name(node["region"], _join(path, "region"), issues)
    if not (name_ok and kind and model and base_url):
        return None
    variables = node["api_key"].variables if isinstance(node.get("api_key"), _Expanded) else ()
    return ProviderConfig(name, kind, model, api_key, base_url, timeout, aliases, health, breaker,
                          forward_headers=forward, api_key_variables=variables, models=models, region=region)


REGION_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")  # it names chain clusters: chain.<first>@<region>


def _region_name(value: Any, path: str, issues: _Issues) -> str | None:
    name = _string(value, path, issues)
    if name is not None and not REGION_NAME.fullmatch(name):
        issues.error(path, f"invalid region name {_quote(name)}: use lowercase letters, digits, '_' and '-', "
                           "starting with a letter or digit (it names Envoy clusters)")
        return None
    return name


def _health_check(value: Any, path: str, defaults: HealthCheckConfig, issues: _Issues) -> HealthCheckConfig:
    """A mapping overriding ``defaults`` key by key (the top level's, for a provider)."""
    node = {} if value is None else _mapping(value, path, issues)
    if node is None:
        return defaults
    _reject_unknown_keys(node, path, _HEALTH_CHECK_KEYS, issues)
    fields: dict[str, Any] = {}  # durations (float) and thresholds (int), by field name
    for key in ("interval", "timeout"):
        if node.get(key) is not None:
            fields[key] = _duration(node[key], _join(path, key), getattr(defaults, key), issues)
    for key in ("healthy_threshold", "unhealthy_threshold"):
        if node.get(key) is not None:
            fields[key] = _positive_integer(node[key], _join(path, key), getattr(defaults, key), issues)
    config = replace(defaults, **fields)
    if config.timeout <= config.interval:
        return config
    if "timeout" not in fields:  # an inherited timeout shrinks to a shorter interval
        return replace(config, timeout=config.interval)
    issues.error(_join(path, "timeout"), f"must not exceed the interval ({config.interval:g}s), "
                                         f"got {config.timeout:g}s")
    return config


def _circuit_breaker(value: Any, path: str, issues: _Issues) -> CircuitBreakerConfig:
    defaults = CircuitBreakerConfig()
    node = {} if value is None else _mapping(value, path, issues)
    if node is None:
        return defaults
    _reject_unknown_keys(node, path, _CIRCUIT_BREAKER_KEYS, issues)
    fields = {key: _positive_integer(node[key], _join(path, key), getattr(defaults, key), issues)
              for key in _CIRCUIT_BREAKER_KEYS if node.get(key) is not None}
    return replace(defaults, **fields)


def _check_provider_name(name: Any, path: str, issues: _Issues) -> bool:
    if not isinstance(name, str):
        issues.error(path, f"provider names must be strings, got {_describe(name)}")
        return False
    if not _PROVIDER_NAME.fullmatch(name):
        issues.error(path, f"invalid provider name {_quote(name)}: use lowercase letters, digits, '_' and '-', "
                           "starting with a letter or digit (it names an Envoy cluster)")
        return False
    return True


def _provider_type(value: Any, path: str, issues: _Issues) -> str | None:
    if value is None:
        return None
    kind = _string(value, path, issues)
    if kind is not None and kind not in PROVIDER_TYPES:
        issues.error(path, _not_one_of("provider type", kind, PROVIDER_TYPES, suggest=False))
        return None
    return kind


def _api_key(value: Any, kind: str | None, path: str, issues: _Issues) -> str:
    key = "" if value is None else _string(value, path, issues, secret=True)
    if key is None:
        return ""
    if not key and kind in _KEYED_PROVIDER_TYPES:
        issues.warn(path, f"{_why_empty(value)}; requests to this provider will be rejected")
    return key


def _why_empty(value: Any) -> str:
    if value is None:
        return "empty (no api_key given)"
    if isinstance(value, _Expanded) and value.empty_variables:
        return f"empty ({', '.join(value.empty_variables)})"
    return "empty"


def _base_url(value: Any, kind: str | None, path: str, issues: _Issues) -> str | None:
    if value is None:
        return DEFAULT_BASE_URLS.get(kind or "")
    url = _string(value, path, issues)
    if url is None:
        return None
    problem = _url_problem(value)  # the original keeps its ${VAR} reference for the message
    if problem:
        issues.error(path, problem)
        return None
    warning = _against_convention(urlsplit(url).path.rstrip("/"), kind)
    if warning:
        issues.warn(path, warning)
    return url.rstrip("/")


def _against_convention(base_path: str, kind: str | None) -> str | None:
    """Why a base_url's path likely makes every request a 404, or None."""
    appended = _APPENDED_PATHS.get(kind or "")
    if appended is None:
        return None
    listed = f"{', '.join(appended[:-1])} and {appended[-1]}"
    if kind == "openai" and not base_path:
        return (f"has no path, and the gateway appends {listed} to it: OpenAI's API, like most compatible "
                f"servers', is under /v1 ({DEFAULT_BASE_URLS['openai']})")
    ending = next((e for e in _REPEATED_ENDINGS.get(kind or "", ()) if base_path.endswith(e)), None)
    if ending is None:
        return None
    hint = ""
    if (kind, ending) == ("ollama", "/v1"):
        hint = " (for Ollama's OpenAI-compatible API under /v1, use type: openai)"
    return (f"ends in {ending}, and the gateway appends {listed} to it itself: requests would go to "
            f"...{ending}{appended[0]}; leave the {ending} out{hint}")


_shown = _quote


def _url_problem(url: str) -> str | None:
    if any(c.isspace() or not c.isprintable() for c in url):
        return "must not contain whitespace or control characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parses the port, raising on a bad one
    except ValueError as exc:
        # urlsplit's message can quote the value, which may be a key pasted here.
        if isinstance(url, _Expanded) or _looks_like_a_secret(str(exc)):
            return f"invalid URL {_shown(url)}"
        return f"invalid URL: {exc}"
    if parts.username is not None or parts.password is not None:
        return "must not contain credentials (user:password@); use api_key"  # and is not echoed
    if parts.scheme not in ("http", "https"):
        return f"expected an http:// or https:// URL, got {_shown(url)}"
    if not parts.hostname:
        return f"URL {_shown(url)} has no host"
    if parts.query or parts.fragment:
        return f"URL {_shown(url)} must not have a query string or fragment"
    return None


def _timeout(value: Any, path: str, issues: _Issues) -> float:
    return DEFAULT_TIMEOUT if value is None else _duration(value, path, DEFAULT_TIMEOUT, issues)


def _aliases(value: Any, path: str, issues: _Issues) -> tuple[str, ...]:
    if value is None:
        return ()
    items = _list(value, path, issues) or []
    aliases = (_text(item, _index(path, i), issues) for i, item in enumerate(items))
    return tuple(alias for alias in aliases if alias is not None)


# --------------------------------------------------------------------------- models


def _models(value: Any, model: str | None, kind: str | None, aliases: Sequence[str], path: str,
            issues: _Issues) -> dict[str, tuple[str, ...]]:
    """``model`` first (a chat model unless listed as another), then the listed models, each with
    its families; empty when the key is absent (``model`` alone serves all its type does)."""
    if value is None:
        return {}
    node = _mapping(value, path, issues)
    if node is None:
        return {}
    if not node:
        issues.error(path, "must list at least one model (omit the key to serve 'model' alone)")
    listed: dict[str, tuple[str, ...]] = {}
    for name, body in node.items():
        family = _model_entry(name, body, _join(path, name), kind, aliases, issues)
        if family is not None:
            listed[name] = (family,)
    if model is None:
        return {}
    return {model: listed.pop(model, (wire.ModelFamily.CHAT,)), **listed}


def _model_entry(name: Any, body: Any, path: str, kind: str | None, aliases: Sequence[str],
                 issues: _Issues) -> str | None:
    """The family one ``models`` entry serves (``{}`` or nothing: chat), or None if it is wrong."""
    if not isinstance(name, str) or not name.strip():
        issues.error(path, f"model names must be non-empty strings, got {_describe(name)}")
        return None
    if name in aliases:
        # An alias is rewritten to `model`; a listed model is sent as it is: one name cannot be both.
        issues.error(path, f"{_quote(name)} is also one of this provider's aliases (another name for its "
                           "'model'); list it in one place")
        return None
    node = {} if body is None else _mapping(body, path, issues)
    if node is None:
        return None
    _reject_unknown_keys(node, path, _MODEL_KEYS, issues)
    handler = node.get("handler")
    return wire.ModelFamily.CHAT if handler is None else _model_family(handler, _join(path, "handler"), kind, issues)


def _model_family(value: Any, path: str, kind: str | None, issues: _Issues) -> str | None:
    family = _string(value, path, issues)
    if family is None:
        return None
    if family == wire.Handler.COMPLETION:
        issues.error(path, "the gateway sends a legacy completion to providers as a chat, so a chat model "
                           "serves both: use handler: chat")
        return None
    if family not in FAMILIES:
        issues.error(path, _not_one_of("handler", family, FAMILIES))
        return None
    if kind is not None and family not in TYPE_FAMILIES[kind]:
        issues.error(path, f"a provider of type {kind} serves no {family}: its API has none")
        return None
    return family


# --------------------------------------------------------------------------- forward_headers

_HEADER_NAME = re.compile(r"[!#$%&'*+.^`|~0-9a-z_-]+")  # an HTTP field name (a token), once lowercased
# Names that can never be forwarded, and why.
_CREDENTIAL = ("is a client credential: a provider is sent the gateway's own key, never what the client "
               "authenticates with")
_CONNECTION = "belongs to the connection: the gateway sets it for each provider itself"
_NOT_FORWARDABLE = {
    **dict.fromkeys((*wire.CLIENT_CREDENTIAL_HEADERS, "cookie"), _CREDENTIAL),
    **dict.fromkeys((*wire.NEVER_REMOVED_HEADERS, "content-length", "transfer-encoding", "connection",
                     "keep-alive", "proxy-connection", "te", "trailer", "upgrade"), _CONNECTION),
}
_GATEWAY_PREFIXES = ("x-envoy-", "x-hapax-")  # the gateway's own (Envoy's and Hapax's), never a client's


def _forward_headers(value: Any, path: str, issues: _Issues) -> tuple[str, ...]:
    """Header names, lowercased; each one a client may send and a provider may be given."""
    items = [] if value is None else _list(value, path, issues) or []
    names: dict[str, str] = {}  # name -> where it was listed
    for i, item in enumerate(items):
        name = _forward_header(item, _index(path, i), issues)
        if name is not None and name in names:
            issues.error(_index(path, i), f"{name!r} is listed twice (first at {names[name]})")
        elif name is not None:
            names[name] = _index(path, i)
    return tuple(names)


def _forward_header(item: Any, path: str, issues: _Issues) -> str | None:
    text = _string(item, path, issues)
    if text is None:
        return None
    name = text.strip().lower()
    problem = _forward_header_problem(name)
    if problem:
        issues.error(path, f"cannot forward {_quote(text)}: {problem}")
        return None
    if name in wire.PROVIDER_REQUEST_HEADERS:
        issues.warn(path, f"{name!r} is sent to every provider already; listing it changes nothing")
    return name


def _forward_header_problem(name: str) -> str | None:
    if name.startswith(":"):
        return "a pseudo-header is the gateway's to set"
    if not _HEADER_NAME.fullmatch(name):
        return "not an HTTP header name"
    if "_" in name:
        # Envoy drops such names from every request (some servers read "x_api_key" as "x-api-key").
        return "names with underscores are dropped from every request"
    if name.startswith(_GATEWAY_PREFIXES):
        return "the gateway's own headers are never taken from a client"
    return _NOT_FORWARDABLE.get(name)


# --------------------------------------------------------------------------- provider_preference


def _preference(value: Any, names: Sequence[str], issues: _Issues) -> tuple[str, ...]:
    path = "provider_preference"
    if value is None:
        return tuple(names)
    items = _list(value, path, issues)
    if items is None:
        return tuple(names)
    if not items:
        issues.error(path, "must list at least one provider (omit the key to use every provider in file order)")
    chosen: dict[str, str] = {}  # name -> where it was listed
    for i, item in enumerate(items):
        name = _preference_entry(item, _index(path, i), names, chosen, issues)
        if name is not None:
            chosen[name] = _index(path, i)
    unlisted = [name for name in names if name not in chosen]
    if chosen and unlisted:
        issues.warn(path, f"not listed, so never used for failover: {', '.join(unlisted)}")
    return tuple(chosen)


def _preference_entry(
    item: Any, path: str, names: Sequence[str], chosen: Mapping[str, str], issues: _Issues
) -> str | None:
    name = _string(item, path, issues)
    if name is None:
        return None
    if names and name not in names:  # no names: `providers` is broken and already reported
        close = _suggestion(name, names)
        hint = f"; did you mean {close!r}?" if close else ""
        issues.error(path, f"unknown provider {_quote(name)} (defined: {', '.join(names)}){hint}")
        return None
    if name in chosen:
        issues.error(path, f"provider {name!r} is listed twice (first at {chosen[name]})")
        return None
    return name
