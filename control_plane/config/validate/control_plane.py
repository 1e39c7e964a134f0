"""The ``control_plane`` section: where a fleet reaches the control plane, and its mutual TLS."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from control_plane.config.errors import _Issues
from control_plane.config.model import ControlPlaneConfig, FleetTls
from control_plane.config.validate.server import _certificate
from control_plane.config.validate.values import _mapping, _quote, _reject_unknown_keys, _string
from control_plane.tls import PEM_CERTIFICATE
from hapax.local_socket import LocalAddress

_KEYS = ("listen", "tls")
_TLS_KEYS = ("cert_file", "key_file", "client_ca_file")


def _control_plane(value: Any, issues: _Issues, base_dir: Path) -> ControlPlaneConfig:
    node = None if value is None else _mapping(value, "control_plane", issues)
    if not node:
        return ControlPlaneConfig()
    _reject_unknown_keys(node, "control_plane", _KEYS, issues)
    listen = ControlPlaneConfig.listen if node.get("listen") is None else _listen(node["listen"], issues)
    tls = None if node.get("tls") is None else _tls(node["tls"], base_dir, issues)
    if listen is not None and tls is None and not LocalAddress.parse(listen).only_this_host:
        # The runtime it serves carries every provider's key.
        issues.error("control_plane.tls", f"a control plane that listens beyond loopback ({listen}) needs "
                                          "mutual TLS: set cert_file, key_file and client_ca_file")
    return ControlPlaneConfig(listen or ControlPlaneConfig.listen, tls)


def _listen(value: Any, issues: _Issues) -> str | None:
    text = _string(value, "control_plane.listen", issues)
    if text is None:
        return None
    try:
        address = LocalAddress.parse(text)
        valid = address.host_is_ip and 0 < address.port <= 65535
    except ValueError:
        valid = False
    if not valid:
        issues.error("control_plane.listen", f"expected an IP address and a port such as 0.0.0.0:18000, "
                                             f"got {_quote(text)}")
        return None
    return text


def _tls(value: Any, base_dir: Path, issues: _Issues) -> FleetTls | None:
    node = _mapping(value, "control_plane.tls", issues)
    if node is None:
        return None
    _reject_unknown_keys(node, "control_plane.tls", _TLS_KEYS, issues)
    missing = [k for k in _TLS_KEYS if node.get(k) is None]
    if missing:
        issues.error("control_plane.tls", f"needs cert_file, key_file and client_ca_file; missing: "
                                          f"{', '.join(missing)}")
        return None
    certificate = _certificate(node["cert_file"], node["key_file"],
                               ("control_plane.tls.cert_file", "control_plane.tls.key_file"), base_dir, issues)
    ca = _client_ca(node["client_ca_file"], base_dir, issues)
    if certificate is None or ca is None:
        return None
    return FleetTls(certificate, ca[0], ca[1])


def _client_ca(value: Any, base_dir: Path, issues: _Issues) -> tuple[str, bytes] | None:
    name = _string(value, "control_plane.tls.client_ca_file", issues)
    if name is None:
        return None
    path = base_dir / name
    try:
        pem = path.read_bytes()
    except OSError as err:
        issues.error("control_plane.tls.client_ca_file", f"cannot read {path}: {err.strerror or err}")
        return None
    if PEM_CERTIFICATE not in pem:
        issues.error("control_plane.tls.client_ca_file", "is not a PEM certificate (no BEGIN CERTIFICATE block)")
        return None
    return str(path), pem
