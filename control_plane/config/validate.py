"""Validation: a parsed, expanded mapping -> the dataclasses of ``model``, with every issue.

It is strict: unknown keys, wrong types and dangling references are errors,
each reported at its key path.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from control_plane.config.env import _Expanded
from control_plane.config.errors import _index, _Issues, _join
from control_plane.config.model import (
    DEFAULT_BASE_URLS,
    DEFAULT_ROUTES,
    DEFAULT_TIMEOUT,
    HANDLERS,
    HEALTH_PATH,
    LOG_FORMATS,
    LOG_LEVELS,
    MAX_LABEL_VALUE_LENGTH,
    MAX_LABELS,
    MAX_WORKERS,
    PROVIDER_TYPES,
    RESERVED_LABELS,
    CircuitBreakerConfig,
    ExtProcConfig,
    HapaxConfig,
    HealthCheckConfig,
    Http3Config,
    LoggingConfig,
    ProviderConfig,
    RetryConfig,
    RouteConfig,
    ServerConfig,
)
from control_plane.pricing import DEFAULT_PRICES, ModelPrice
from control_plane.tls import Certificate, CertificateError, load_certificate

_TOP_LEVEL_KEYS = ("server", "providers", "provider_preference", "routes", "health_check", "retry", "pricing",
                   "logging", "ext_proc")
_EXT_PROC_KEYS = ("workers",)
_LOGGING_KEYS = ("level", "format", "access_log")
_PRICE_KEYS = ("input", "output")
_RETRY_KEYS = ("max_attempts", "backoff")
_BACKOFF_KEYS = ("base_interval", "max_interval")
_SERVER_KEYS = ("host", "port", "admin_port", "metrics_port", "tls", "http3")
_TLS_KEYS = ("cert_file", "key_file")
_HTTP3_KEYS = ("enabled", "port", "tls_cert_file", "tls_key_file")
_PORT_KEYS = ("port", "admin_port", "metrics_port")
_PROVIDER_KEYS = ("type", "model", "api_key", "base_url", "timeout", "aliases", "health_check", "circuit_breaker")
_HEALTH_CHECK_KEYS = ("interval", "timeout", "healthy_threshold", "unhealthy_threshold")
_CIRCUIT_BREAKER_KEYS = ("max_concurrent_requests", "max_pending_requests", "max_retries")
_ROUTE_KEYS = ("path", "handler", "version", "metrics_labels")
_KEYED_PROVIDER_TYPES = ("anthropic", "openai")  # their APIs refuse requests without a key

_PROVIDER_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")  # provider names become Envoy cluster names
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")  # Prometheus' own rule


# --------------------------------------------------------------------------- validation helpers


def _describe(value: object, *, secret: bool = False) -> str:
    """How a wrong value is shown in a message: its kind, and its text unless secret."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        kind, text = "boolean", str(value).lower()
    elif isinstance(value, int):
        kind, text = "integer", str(value)
    elif isinstance(value, float):
        kind, text = "number", str(value)
    elif isinstance(value, _Expanded):
        kind, text = "string", f"from {value.template!r}"
    elif isinstance(value, str):
        kind, text = "string", repr(value if len(value) <= 40 else value[:37] + "...")
    elif isinstance(value, dict):
        return "a mapping"
    elif isinstance(value, list):
        return "a list"
    else:
        return type(value).__name__
    return kind if secret else f"{kind} {text}"


def _expected(what: str, value: object, *, secret: bool = False) -> str:
    return f"expected {what}, got {_describe(value, secret=secret)}"


def _suggestion(word: str, choices: Sequence[str]) -> str | None:
    matches = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return matches[0] if matches else None


def _not_one_of(kind: str, value: str, choices: Sequence[str], *, suggest: bool = True) -> str:
    message = f"unknown {kind} {value!r} (expected one of: {', '.join(choices)})"
    close = _suggestion(value, choices) if suggest else None
    return f"{message}; did you mean {close!r}?" if close else message


def _reject_unknown_keys(node: Mapping[Any, Any], path: str, allowed: Sequence[str], issues: _Issues) -> None:
    for key in node:
        if not isinstance(key, str):
            issues.error(_join(path, key), _expected("a string key", key))
        elif key not in allowed:
            close = _suggestion(key, allowed)
            hint = f"did you mean {close!r}?" if close else f"expected one of: {', '.join(allowed)}"
            issues.error(_join(path, key), f"unknown key {key!r} ({hint})")


def _mapping(value: Any, path: str, issues: _Issues) -> dict[Any, Any] | None:
    if isinstance(value, dict):
        return value
    issues.error(path, _expected("a mapping", value))
    return None


def _list(value: Any, path: str, issues: _Issues) -> list[Any] | None:
    if isinstance(value, list):
        return value
    issues.error(path, _expected("a list", value))
    return None


def _string(value: Any, path: str, issues: _Issues, *, secret: bool = False) -> str | None:
    if isinstance(value, str):
        return str(value)  # a plain str: _Expanded's bookkeeping stays in this package
    issues.error(path, _expected("a string", value, secret=secret))
    return None


def _text(value: Any, path: str, issues: _Issues) -> str | None:
    """A string that must say something."""
    text = _string(value, path, issues)
    if text is not None and not text.strip():
        issues.error(path, "must not be empty")
        return None
    return text


def _required(node: Mapping[str, Any], key: str, path: str, issues: _Issues) -> Any:
    # An explicit null counts as absent: `model:` with nothing after it is a missing model.
    value = node.get(key)
    if value is None:
        issues.error(_join(path, key), "is required")
    return value


def _integer(value: Any, path: str, issues: _Issues) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, _Expanded) and re.fullmatch(r"[+-]?\d+", value.strip()):
        return int(value)  # from the environment, where every value is a string
    issues.error(path, _expected("an integer", value))
    return None


# --------------------------------------------------------------------------- the file


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
    routes = _routes(root.get("routes"), issues)
    retry = _retry(root.get("retry"), issues)
    pricing = _pricing(root.get("pricing"), issues)
    logging_config = _logging(root.get("logging"), issues)
    ext_proc = _ext_proc(root.get("ext_proc"), issues)
    if issues.errors:
        return None
    return HapaxConfig(server, providers, preference, routes, tuple(issues.warnings), source, retry, pricing,
                       logging_config, ext_proc)


def _ext_proc(value: Any, issues: _Issues) -> ExtProcConfig:
    node = {} if value is None else _mapping(value, "ext_proc", issues)
    if not node:
        return ExtProcConfig()
    _reject_unknown_keys(node, "ext_proc", _EXT_PROC_KEYS, issues)
    if node.get("workers") is None:
        return ExtProcConfig()
    workers = _positive_integer(node["workers"], "ext_proc.workers", 1, issues)
    if workers > MAX_WORKERS:
        issues.error("ext_proc.workers", f"at most {MAX_WORKERS} workers, got {workers}")
    return ExtProcConfig(min(workers, MAX_WORKERS))


def _logging(value: Any, issues: _Issues) -> LoggingConfig:
    default = LoggingConfig()
    node = {} if value is None else _mapping(value, "logging", issues)
    if not node:
        return default
    _reject_unknown_keys(node, "logging", _LOGGING_KEYS, issues)
    level = _one_of(node.get("level"), "logging.level", "log level", LOG_LEVELS, default.level, issues)
    fmt = _one_of(node.get("format"), "logging.format", "log format", LOG_FORMATS, default.format, issues)
    access_log = node.get("access_log", default.access_log)
    if not isinstance(access_log, bool):
        issues.error("logging.access_log", _expected("true or false", access_log))
        access_log = default.access_log
    return LoggingConfig(level, fmt, access_log)


def _one_of(value: Any, path: str, kind: str, choices: Sequence[str], default: str, issues: _Issues) -> str:
    if value is None:
        return default
    if not isinstance(value, str) or value.lower() not in choices:
        issues.error(path, _not_one_of(kind, str(value), choices))
        return default
    return value.lower()


def _pricing(value: Any, issues: _Issues) -> dict[str, ModelPrice]:
    table = dict(DEFAULT_PRICES)
    node = {} if value is None else _mapping(value, "pricing", issues)
    for model, entry in (node or {}).items():
        path = _join("pricing", model)
        if not isinstance(model, str) or not model.strip():
            issues.error(path, _expected("a model name", model))
            continue
        prices = _mapping(entry, path, issues)
        if prices is None:
            continue
        _reject_unknown_keys(prices, path, _PRICE_KEYS, issues)
        missing = [k for k in _PRICE_KEYS if k not in prices]
        if missing:
            issues.error(path, f"needs both input and output (USD per million tokens); missing: {', '.join(missing)}")
            continue
        amounts = [_price(prices[k], _join(path, k), issues) for k in _PRICE_KEYS]
        if None not in amounts:
            table[model] = ModelPrice(*amounts)
    return table


def _price(value: Any, path: str, issues: _Issues) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 <= value < math.inf):
        issues.error(path, _expected("a non-negative number of US dollars per million tokens", value))
        return None
    return float(value)


def _retry(value: Any, issues: _Issues) -> RetryConfig:
    node = {} if value is None else _mapping(value, "retry", issues)
    if node is None:
        return RetryConfig()
    _reject_unknown_keys(node, "retry", _RETRY_KEYS, issues)
    attempts = node.get("max_attempts")
    max_attempts = None if attempts is None else _positive_integer(attempts, "retry.max_attempts", 1, issues)
    base, most = _backoff(node.get("backoff"), issues)
    return RetryConfig(max_attempts, base, most)


def _backoff(value: Any, issues: _Issues) -> tuple[float, float]:
    default = RetryConfig()
    node = {} if value is None else _mapping(value, "retry.backoff", issues)
    if not node:
        return default.backoff_base, default.backoff_max
    _reject_unknown_keys(node, "retry.backoff", _BACKOFF_KEYS, issues)
    base = default.backoff_base
    if node.get("base_interval") is not None:
        base = _duration(node["base_interval"], "retry.backoff.base_interval", base, issues)
    most = max(base * 10, default.backoff_max) if node.get("max_interval") is None else _duration(
        node["max_interval"], "retry.backoff.max_interval", default.backoff_max, issues)
    if most < base:
        issues.error("retry.backoff.max_interval",
                     f"must be at least base_interval ({base:g}s), got {most:g}s")
    return base, most


# --------------------------------------------------------------------------- server


def _server(value: Any, issues: _Issues, base_dir: Path) -> ServerConfig:
    defaults = ServerConfig()
    node = _mapping(value, "server", issues) if value is not None else None
    if node is None:
        return defaults
    _reject_unknown_keys(node, "server", _SERVER_KEYS, issues)
    host = _host(node.get("host"), issues) or defaults.host
    ports = {key: _port(node.get(key), getattr(defaults, key), _join("server", key), issues) for key in _PORT_KEYS}
    valid = {key: port for key, port in ports.items() if port is not None}
    _check_distinct_ports(valid, explicit=node.keys(), issues=issues)
    tls = _tls(node.get("tls"), base_dir, issues)
    http3 = _http3(node.get("http3"), tls, base_dir, issues)
    return replace(defaults, host=host, tls=tls, http3=http3, **valid)


def _base_dir(source: str) -> Path:
    """Relative certificate paths are relative to the config file."""
    path = Path(source)
    return path.parent if source != "<string>" and path.parent.is_dir() else Path.cwd()


def _certificate(cert: Any, key: Any, paths: tuple[str, str], base_dir: Path, issues: _Issues) -> Certificate | None:
    texts = [_string(value, path, issues) for value, path in ((cert, paths[0]), (key, paths[1]))]
    if None in texts:
        return None
    try:
        return load_certificate(base_dir / texts[0], base_dir / texts[1])
    except CertificateError as err:
        issues.error(paths[0] if err.which == "cert" else paths[1], err.reason)
        return None


def _tls(value: Any, base_dir: Path, issues: _Issues) -> Certificate | None:
    node = None if value is None else _mapping(value, "server.tls", issues)
    if node is None:
        return None
    _reject_unknown_keys(node, "server.tls", _TLS_KEYS, issues)
    missing = [k for k in _TLS_KEYS if node.get(k) is None]
    if missing:
        issues.error("server.tls", f"needs both cert_file and key_file; missing: {', '.join(missing)}")
        return None
    return _certificate(node["cert_file"], node["key_file"], ("server.tls.cert_file", "server.tls.key_file"),
                        base_dir, issues)


def _http3(value: Any, tls: Certificate | None, base_dir: Path, issues: _Issues) -> Http3Config:
    node = None if value is None else _mapping(value, "server.http3", issues)
    if node is None:
        return Http3Config()
    _reject_unknown_keys(node, "server.http3", _HTTP3_KEYS, issues)
    enabled = node.get("enabled", True)
    if not isinstance(enabled, bool):
        issues.error("server.http3.enabled", _expected("true or false", enabled))
        return Http3Config()
    port = None if node.get("port") is None else _port(node["port"], 0, "server.http3.port", issues)
    certificate = tls
    if node.get("tls_cert_file") is not None or node.get("tls_key_file") is not None:
        certificate = _certificate(node.get("tls_cert_file"), node.get("tls_key_file"),
                                   ("server.http3.tls_cert_file", "server.http3.tls_key_file"), base_dir, issues)
    elif enabled and tls is None:
        issues.error("server.http3", "HTTP/3 needs a certificate: set tls_cert_file and tls_key_file, "
                                     "or server.tls")
    return Http3Config(enabled, port, certificate)


def _host(value: Any, issues: _Issues) -> str | None:
    if value is None:
        return None
    host = _string(value, "server.host", issues)
    if host is None:
        return None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        # Envoy binds listeners to addresses; it would reject a host name at run time.
        issues.error("server.host", f"expected an IP address such as 0.0.0.0 or 127.0.0.1, got {host!r}")
        return None
    return host


def _port(value: Any, default: int, path: str, issues: _Issues) -> int | None:
    if value is None:
        return default
    port = _integer(value, path, issues)
    if port is not None and not 0 <= port <= 65535:
        issues.error(path, f"port {port} is out of range (0..65535; 0 picks a free port)")
        return None
    return port


def _check_distinct_ports(ports: Mapping[str, int], *, explicit: Iterable[str], issues: _Issues) -> None:
    explicit = set(explicit)
    owner: dict[int, str] = {}
    # Defaults first, so a clash is reported at the key the user actually wrote.
    for key in sorted(ports, key=lambda k: k in explicit):
        port = ports[key]
        if port == 0:
            continue  # every 0 gets its own ephemeral port
        if port in owner:
            other = owner[port]
            note = "" if other in explicit else " (its default)"
            issues.error(_join("server", key), f"port {port} is already used by server.{other}{note}")
        else:
            owner[port] = key


# --------------------------------------------------------------------------- providers


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
    health = _health_check(node.get("health_check"), _join(path, "health_check"), health_defaults, issues)
    breaker = _circuit_breaker(node.get("circuit_breaker"), _join(path, "circuit_breaker"), issues)
    if not (name_ok and kind and model and base_url):
        return None
    return ProviderConfig(name, kind, model, api_key, base_url, timeout, aliases, health, breaker)


def _health_check(value: Any, path: str, defaults: HealthCheckConfig, issues: _Issues) -> HealthCheckConfig:
    """A mapping overriding ``defaults`` key by key (the top level's, for a provider)."""
    node = {} if value is None else _mapping(value, path, issues)
    if node is None:
        return defaults
    _reject_unknown_keys(node, path, _HEALTH_CHECK_KEYS, issues)
    fields = {}
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


def _positive_integer(value: Any, path: str, default: int, issues: _Issues) -> int:
    number = _integer(value, path, issues)
    if number is None:
        return default
    if number < 1:
        issues.error(path, f"must be at least 1, got {number}")
        return default
    return number


def _check_provider_name(name: Any, path: str, issues: _Issues) -> bool:
    if not isinstance(name, str):
        issues.error(path, f"provider names must be strings, got {_describe(name)}")
        return False
    if not _PROVIDER_NAME.fullmatch(name):
        issues.error(path, f"invalid provider name {name!r}: use lowercase letters, digits, '_' and '-', "
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
    return url.rstrip("/")


def _shown(text: str) -> str:
    """A value as a message may show it: by its reference when it came from the environment."""
    return repr(text.template) if isinstance(text, _Expanded) else repr(text)


def _url_problem(url: str) -> str | None:
    if any(c.isspace() or not c.isprintable() for c in url):
        return "must not contain whitespace or control characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parses the port, raising on a bad one
    except ValueError as exc:
        # urlsplit's message can quote the value, which may have come from a secret.
        return f"invalid URL {_shown(url)}" if isinstance(url, _Expanded) else f"invalid URL: {exc}"
    if parts.username is not None or parts.password is not None:
        return "must not contain credentials (user:password@); use api_key"  # and is not echoed
    if parts.scheme not in ("http", "https"):
        return f"expected an http:// or https:// URL, got {_shown(url)}"
    if not parts.hostname:
        return f"URL {_shown(url)} has no host"
    if parts.query or parts.fragment:
        return f"URL {_shown(url)} must not have a query string or fragment"
    return None


_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h))+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _timeout(value: Any, path: str, issues: _Issues) -> float:
    return DEFAULT_TIMEOUT if value is None else _duration(value, path, DEFAULT_TIMEOUT, issues)


def _duration(value: Any, path: str, default: float, issues: _Issues) -> float:
    seconds = _seconds(value)
    if seconds is None:
        issues.error(path, _expected("a number of seconds or a duration such as '30s', '500ms' or '1m30s'", value))
    elif not (0 < seconds < math.inf):
        issues.error(path, f"must be a positive, finite number of seconds, got {_describe(value)}")
    else:
        return seconds
    return default


def _seconds(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        try:
            return float(value)
        except OverflowError:  # a YAML integer beyond float range
            return math.inf
    if isinstance(value, _Expanded) and re.fullmatch(r"\d+(?:\.\d+)?", value.strip()):
        return float(value)  # a bare number from the environment means seconds
    if isinstance(value, str) and _DURATION.fullmatch(value.strip()):
        return sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(value))
    return None


def _aliases(value: Any, path: str, issues: _Issues) -> tuple[str, ...]:
    if value is None:
        return ()
    items = _list(value, path, issues) or []
    aliases = (_text(item, _index(path, i), issues) for i, item in enumerate(items))
    return tuple(alias for alias in aliases if alias is not None)


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
        issues.error(path, f"unknown provider {name!r} (defined: {', '.join(names)}){hint}")
        return None
    if name in chosen:
        issues.error(path, f"provider {name!r} is listed twice (first at {chosen[name]})")
        return None
    return name


# --------------------------------------------------------------------------- routes


def _routes(value: Any, issues: _Issues) -> tuple[RouteConfig, ...]:
    if value is None:
        return DEFAULT_ROUTES
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
    if not (route_path and handler and version):
        return None
    return RouteConfig(route_path, handler, version, labels)


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
        return f"path {route_path!r} must start with '/'"
    if any(c.isspace() or not c.isprintable() for c in route_path):
        return f"path {route_path!r} must not contain whitespace or control characters"
    if "?" in route_path or "#" in route_path:
        return f"path {route_path!r} must not contain '?' or '#' (routes match the path only)"
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
        problem = f"invalid label name {name!r} (Prometheus label names match [a-zA-Z_][a-zA-Z0-9_]*)"
    elif name.startswith("__"):
        problem = f"invalid label name {name!r}: names starting with '__' are reserved by Prometheus"
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
