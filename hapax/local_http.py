"""Plain HTTP to one of the gateway's own processes, on a Unix socket or loopback TCP.

The channels between Hapax's processes (Envoy's admin, ext_proc's HTTP side) listen on Unix
sockets in a directory only Hapax's user can open (docs/operations.md: Local channels), and
urllib speaks TCP only. Used by the supervisor and the tests, never on a request's path.
"""

from __future__ import annotations

import http.client
import socket

from hapax.local_socket import LocalAddress


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def connection(address: str, timeout: float) -> http.client.HTTPConnection:
    """``unix:/path``, ``http://host:port`` or ``host:port``."""
    parsed = LocalAddress.parse(address.removeprefix("http://").rstrip("/"))
    if parsed.path:
        return UnixHTTPConnection(parsed.path, timeout)
    return http.client.HTTPConnection(parsed.host, parsed.port, timeout=timeout)


def request(address: str, path: str, method: str = "GET", timeout: float = 5.0) -> tuple[int, bytes]:
    """The status and body; OSError when nothing answers."""
    conn = connection(address, timeout)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, response.read()
    except http.client.HTTPException as err:
        raise OSError(f"{address}{path}: {err}") from err
    finally:
        conn.close()


def get(address: str, path: str, timeout: float = 5.0) -> bytes:
    """The body of a 200; OSError otherwise."""
    status, body = request(address, path, timeout=timeout)
    if status != 200:
        raise OSError(f"{address}{path} answered {status}")
    return body
