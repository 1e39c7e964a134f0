"""One HTTP request to a gateway with the standard library, its answer kept whole.

For tests that must set exactly what is sent (a body's bytes, a key header) or keep a
connection open across requests, which the SDKs hide.
"""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def error(self) -> dict[str, Any]:
        return self.json()["error"]


def connect(gateway, timeout: float = 60) -> http.client.HTTPConnection:
    url = urlsplit(gateway.url)
    return http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=timeout)


def send(gateway, method: str, path: str, body: bytes | dict | None = None, headers: dict[str, str] | None = None,
         connection: http.client.HTTPConnection | None = None) -> Answer:
    """On ``connection`` (left open), or on a connection of its own."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    own = connection or connect(gateway)
    try:
        own.request(method, path, body=data, headers={"content-type": "application/json", **(headers or {})})
        response = own.getresponse()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        if connection is None:
            own.close()


def post_chat(gateway, body: bytes | dict, key: str | None = None) -> Answer:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return send(gateway, "POST", "/v1/chat/completions", body, headers)
