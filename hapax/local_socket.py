"""Where Hapax's own processes listen: ``unix:/path`` (a Unix socket) or ``host:port``.

The channels between them are Unix sockets, readable and writable by Hapax's user only:
`hapax serve` puts them in a directory of mode 0700 (its working directory), and each
process that binds one also sets the socket itself to 0600, so that a socket bound elsewhere
(``--listen unix:/some/dir/x.sock``) is no more open than the directory around it. A
control plane for a fleet listens on host:port, with mutual TLS beyond loopback.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from typing import Self

from hapax import wire

SOCKET_MODE = 0o600


@dataclass(frozen=True)
class LocalAddress:
    host: str = ""
    port: int = 0
    path: str = ""  # a Unix socket's; then host and port are unset

    @classmethod
    def parse(cls, text: str) -> Self:
        """``unix:/path`` or ``host:port`` (an IPv6 host in brackets); ValueError otherwise."""
        if text.startswith(wire.UNIX_SOCKET_PREFIX):
            return cls(path=text.removeprefix(wire.UNIX_SOCKET_PREFIX))
        host, _, port = text.rpartition(":")
        return cls(host.strip("[]"), int(port))

    @property
    def host_is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    @property
    def only_this_host(self) -> bool:
        """A Unix socket, or a loopback address: no other machine reaches it."""
        return bool(self.path) or (self.host_is_ip and ipaddress.ip_address(self.host).is_loopback)

    def __str__(self) -> str:
        return f"{wire.UNIX_SOCKET_PREFIX}{self.path}" if self.path else f"{self.host}:{self.port}"


def private_socket(address: str) -> str | None:
    """For ``unix:/path``: makes the socket private and returns the address; None for host:port."""
    path = LocalAddress.parse(address).path
    if not path:
        return None
    os.chmod(path, SOCKET_MODE)
    return address
