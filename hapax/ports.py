"""The ports ``hapax serve`` opens, each with the key that sets it, and which of them are taken.

Envoy binds the listeners only once the control plane has sent them, and a port it cannot bind
is one line in its log (the listener update is rejected): the gateway would never become ready,
and the supervisor would blame the control plane a minute later. So the supervisor tries each
port itself before it starts anything (``taken``), and names the one another process holds;
``PortInUse`` is that answer. If another process takes a port in between, Envoy's rejection is
caught as it happens (hapax/supervisor.py) and named the same way.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hapax import wire

if TYPE_CHECKING:
    from control_plane.config.model import ServerConfig

LOOPBACK = "127.0.0.1"  # where server.admin_port listens


@dataclass(frozen=True)
class GatewayPort:
    key: str       # what sets it: "server.port", or "--port" when the command line overrides it
    number: int
    host: str
    udp: bool = False
    listener: str = ""  # Envoy's listener on it; "" for the admin, which is no listener

    def __str__(self) -> str:
        return f"{'UDP' if self.udp else 'TCP'} port {self.number} ({self.key}) on {self.host}"


class PortInUse(Exception):
    """Ports another process holds: the message names each, with the key that sets it."""

    def __init__(self, ports: list[tuple[GatewayPort, str]]) -> None:
        self.ports = ports
        named = "; ".join(f"{port} is {reason}" for port, reason in ports)
        super().__init__(f"{named}; stop what holds it, or set another port there")


def gateway_ports(server: ServerConfig, *, port: int | None = None, metrics_port: int | None = None,
                  admin_port: int | None = None) -> list[GatewayPort]:
    """Every port the gateway opens for ``server``, command-line overrides applied."""
    main = _choose("port", server.port, port)
    metrics = _choose("metrics_port", server.metrics_port, metrics_port)
    ports = [GatewayPort(*main, server.host, listener=wire.LISTENER),
             GatewayPort(*metrics, server.host, listener=wire.METRICS_LISTENER)]
    if server.http3.enabled:
        # Without its own port, HTTP/3 takes the TCP listener's number, over UDP.
        key = "server.http3.port" if server.http3.port is not None else main[0]
        number = server.http3.port if server.http3.port is not None else main[1]
        ports.append(GatewayPort(key, number, server.host, udp=True, listener=wire.HTTP3_LISTENER))
    if admin_port is not None or server.admin_port is not None:
        ports.append(GatewayPort(*_choose("admin_port", server.admin_port or 0, admin_port), LOOPBACK))
    return ports


def _choose(name: str, configured: int, override: int | None) -> tuple[str, int]:
    if override is not None:
        return f"--{name.replace('_', '-')}", override
    return f"server.{name}", configured


def taken(ports: list[GatewayPort]) -> list[tuple[GatewayPort, str]]:
    """The ports another process holds, each with why the bind failed; 0 (any free port) never is."""
    found = []
    for port in ports:
        reason = _bind_failure(port) if port.number else None
        if reason is not None:
            found.append((port, reason))
    return found


def _bind_failure(port: GatewayPort) -> str | None:
    family = socket.AF_INET6 if ":" in port.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM if port.udp else socket.SOCK_STREAM) as sock:
        if not port.udp:
            # As Envoy binds: a port whose last connections linger in TIME_WAIT is free to it.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((port.host, port.number))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                return "already in use by another process"
            if err.errno == errno.EACCES:
                return "one this user may not open (ports below 1024 need privileges)"
            return f"not available ({err.strerror or err})"
    return None
