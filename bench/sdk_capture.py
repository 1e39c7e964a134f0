"""What the official OpenAI Python SDK sends, captured from a real call against a local socket.

bench/payloads.py's SDK_HEADERS and sdk_chat_request() were written from this
output; run it again when the SDK changes:

    python -m bench.sdk_capture

The socket answers 500 with ``connection: close`` and the SDK is told not to
retry, so each call is exactly one request. Needs the ``openai`` package (a test
dependency), nothing on the network.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class Captured:
    request_line: str
    headers: list[tuple[str, str]]  # as sent: order and case kept
    body: bytes


def _read_one(conn: socket.socket) -> Captured:
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    request_line, *lines = head.decode("latin-1").split("\r\n")
    headers = [(k.strip(), v.strip()) for k, _, v in (ln.partition(":") for ln in lines)]
    length = int(next(v for k, v in headers if k.lower() == "content-length"))
    while len(body) < length:
        body += conn.recv(65536)
    conn.sendall(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
    return Captured(request_line, headers, body)


def capture(stream: bool, content: str = "hi", model: str = "gpt-4o-mini") -> Captured:
    """One ``client.chat.completions.create`` call as the SDK puts it on the wire."""
    import openai  # a test dependency: only this tool needs it

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    got: list[Captured] = []

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            got.append(_read_one(conn))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-bench", max_retries=0)
    with contextlib.suppress(openai.APIStatusError):  # the 500 it was given
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}],
                                       stream=stream)
    thread.join(timeout=10)
    server.close()
    return got[0]


def main() -> int:
    for stream in (False, True):
        c = capture(stream)
        print(c.request_line)
        for name, value in c.headers:
            print(f"{name}: {value}")
        print()
        print(c.body.decode())
        print("-" * 40)
    return 0


if __name__ == "__main__":
    sys.exit(main())
