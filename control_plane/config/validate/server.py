"""The ``server`` section: the listen address, distinct ports, TLS and HTTP/3 certificates."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from control_plane.config.errors import _Issues, _join
from control_plane.config.model import Http3Config, ServerConfig
from control_plane.config.validate.values import (
    _expected,
    _integer,
    _mapping,
    _positive_integer,
    _quote,
    _reject_unknown_keys,
    _string,
)
from control_plane.tls import Certificate, CertificateError, load_certificate

_SERVER_KEYS = ("host", "port", "admin_port", "metrics_port", "tls", "http3", "request_timeout")
_TLS_KEYS = ("cert_file", "key_file")
_HTTP3_KEYS = ("enabled", "port", "tls_cert_file", "tls_key_file")
_PORT_KEYS = ("port", "admin_port", "metrics_port")


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
    request_timeout = defaults.request_timeout if node.get("request_timeout") is None else _positive_integer(
        node["request_timeout"], "server.request_timeout", defaults.request_timeout, issues)
    return replace(defaults, host=host, tls=tls, http3=http3, request_timeout=request_timeout, **valid)


def _base_dir(source: str) -> Path:
    """Relative certificate paths are relative to the config file."""
    path = Path(source)
    return path.parent if source != "<string>" and path.parent.is_dir() else Path.cwd()


def _certificate(cert: Any, key: Any, paths: tuple[str, str], base_dir: Path, issues: _Issues) -> Certificate | None:
    cert_file, key_file = [_string(value, path, issues) for value, path in ((cert, paths[0]), (key, paths[1]))]
    if cert_file is None or key_file is None:
        return None
    try:
        return load_certificate(base_dir / cert_file, base_dir / key_file)
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
        issues.error("server.host", f"expected an IP address such as 0.0.0.0 or 127.0.0.1, got {_quote(host)}")
        return None
    return host


def _port(value: Any, default: int | None, path: str, issues: _Issues) -> int | None:
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
