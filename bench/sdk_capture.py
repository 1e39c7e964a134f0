"""What the official OpenAI and anthropic Python SDKs send, captured from real calls against a local socket.

bench/payloads.py's SDK_HEADERS, ANTHROPIC_HEADERS, sdk_chat_request(), responses_request() and
messages_request() were written from this output; run it again when an SDK changes:

    python -m bench.sdk_capture

The socket answers 500 with ``connection: close`` and the SDK is told not to
retry, so each call is exactly one request. Needs the ``openai`` and ``anthropic``
packages (test dependencies), nothing on the network.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
from collections.abc import Callable
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


def _one_call(call: Callable[[int], object]) -> Captured:
    """What ``call(port)`` (an SDK call to 127.0.0.1:port) puts on the wire."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    got: list[Captured] = []

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            got.append(_read_one(conn))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with contextlib.suppress(Exception):  # the SDK's error for the 500 it was given
        call(port)
    thread.join(timeout=10)
    server.close()
    return got[0]


def capture(stream: bool, content: str = "hi", model: str = "gpt-4o-mini") -> Captured:
    """One ``client.chat.completions.create`` call as the SDK puts it on the wire."""
    import openai  # a test dependency: only this tool needs it

    return _one_call(lambda port: openai.OpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-bench", max_retries=0).chat.completions.create(
        model=model, messages=[{"role": "user", "content": content}], stream=stream))


def capture_responses(content: str = "hi", model: str = "gpt-4o-mini") -> Captured:
    """One ``client.responses.create(model=..., input=...)`` call as the OpenAI SDK puts it on the wire."""
    import openai

    return _one_call(lambda port: openai.OpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-bench", max_retries=0).responses.create(
        model=model, input=content))


def capture_messages(content: str = "hi", model: str = "claude-x") -> Captured:
    """One ``client.messages.create(model=..., max_tokens=256, messages=[...])`` call as the anthropic SDK
    puts it on the wire."""
    import anthropic  # a test dependency too

    return _one_call(lambda port: anthropic.Anthropic(
        base_url=f"http://127.0.0.1:{port}", api_key="sk-bench", max_retries=0).messages.create(
        model=model, max_tokens=256, messages=[{"role": "user", "content": content}]))


def main() -> int:
    for c in (capture(False), capture(True), capture_responses(), capture_messages()):
        print(c.request_line)
        for name, value in c.headers:
            print(f"{name}: {value}")
        print()
        print(c.body.decode())
        print("-" * 40)
    return 0


if __name__ == "__main__":
    sys.exit(main())
