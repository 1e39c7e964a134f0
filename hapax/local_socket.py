"""The Unix sockets between Hapax's own processes: readable and writable by Hapax's user only.

`hapax serve` puts them in a directory of mode 0700 (its working directory); each process
that binds one also sets the socket itself to 0600, so that a socket moved or bound elsewhere
(``--listen unix:/some/dir/x.sock``) is no more open than the directory around it.
"""

from __future__ import annotations

import os

from hapax import wire

SOCKET_MODE = 0o600


def private_socket(address: str) -> str | None:
    """For ``unix:/path``: makes the socket private and returns the address; None for host:port."""
    if not address.startswith(wire.UNIX_SOCKET_PREFIX):
        return None
    os.chmod(address.removeprefix(wire.UNIX_SOCKET_PREFIX), SOCKET_MODE)
    return address
