"""The legacy completions API's answer shape, after the provider's translator.

Translators produce OpenAI chat completions. The legacy completion handler
answers in ``text_completion`` shape, so its responses (JSON or SSE) pass
through this stage after the provider's own.
"""

from __future__ import annotations

import json
from typing import Any

from ext_proc.outcomes import StreamOutcome
from ext_proc.sse import SseParser, encode
from ext_proc.translators.base import ResponseStage


def _text_choice(choice: dict[str, Any], text: str | None) -> dict[str, Any]:
    return {"text": text or "", "index": choice.get("index", 0), "logprobs": None,
            "finish_reason": choice.get("finish_reason")}


def _text_completion_id(chat_id: str) -> str:
    """``chatcmpl-X`` -> ``cmpl-X``: OpenAI's prefix for the legacy API, which clients and
    logs use to tell the two apart. A chunk keeps its stream's id, as each maps alike."""
    if chat_id.startswith("cmpl-"):
        return chat_id
    return "cmpl-" + chat_id.removeprefix("chatcmpl-")


def chat_to_text_completion(body: dict[str, Any], *, chunk: bool) -> dict[str, Any]:
    out: dict[str, Any] = {k: body[k] for k in ("id", "created", "model", "usage", "system_fingerprint") if k in body}
    if isinstance(out.get("id"), str):
        out["id"] = _text_completion_id(out["id"])
    out["object"] = "text_completion"
    choices = []
    for choice in body.get("choices") or []:
        text = (choice.get("delta") or {}).get("content") if chunk else (choice.get("message") or {}).get("content")
        choices.append(_text_choice(choice, text))
    out["choices"] = choices
    return out


class TextCompletionStage(ResponseStage):
    def __init__(self) -> None:
        self._streaming = False
        self._passthrough = False
        self._parser = SseParser()
        self._buffer = bytearray()

    def headers(self, status: int, content_type: str) -> dict[str, str]:
        self._passthrough = status >= 400  # errors are already OpenAI error JSON
        self._streaming = content_type.startswith("text/event-stream")
        return {}

    @property
    def streams(self) -> bool:
        return self._streaming

    def body(self, piece: bytes, end_of_stream: bool) -> bytes:
        if self._passthrough:
            return piece
        if self._streaming:
            return self._stream(piece, end_of_stream)
        self._buffer += piece
        if not end_of_stream:
            return b""
        try:
            body = json.loads(self._buffer)
        except json.JSONDecodeError:
            return bytes(self._buffer)
        return json.dumps(chat_to_text_completion(body, chunk=False)).encode()

    def _stream(self, piece: bytes, end_of_stream: bool) -> bytes:
        events = self._parser.feed(piece) + (self._parser.finish() if end_of_stream else [])
        out = bytearray()
        for event in events:
            out += encode(self._convert(event.data))
        return bytes(out)

    @staticmethod
    def _convert(data: str) -> str:
        if data == "[DONE]":
            return data
        try:
            chunk = json.loads(data)
        except json.JSONDecodeError:
            return data
        if "error" in chunk or "choices" not in chunk:
            return data
        return json.dumps(chat_to_text_completion(chunk, chunk=True))


class ChainedStage(ResponseStage):
    """Runs the provider's stage, then the shape's, on every piece."""

    def __init__(self, first: ResponseStage, second: ResponseStage) -> None:
        self.first, self.second = first, second

    def headers(self, status: int, content_type: str) -> dict[str, str]:
        headers = self.first.headers(status, content_type)
        headers.update(self.second.headers(status, headers.get("content-type", content_type)))
        return headers

    @property
    def streams(self) -> bool:
        return self.first.streams or self.second.streams

    @property
    def reads_body(self) -> bool:
        return self.first.reads_body or self.second.reads_body

    @property
    def reads_json_only_for_usage(self) -> bool:
        return self.first.reads_json_only_for_usage and self.second.reads_json_only_for_usage

    @property
    def status_override(self) -> int | None:  # type: ignore[override]
        return self.first.status_override or self.second.status_override

    @property
    def stream_outcome(self) -> StreamOutcome | None:  # type: ignore[override]
        return self.first.stream_outcome

    @property
    def usage(self) -> dict[str, Any] | None:  # type: ignore[override]
        return self.first.usage

    def body(self, piece: bytes, end_of_stream: bool) -> bytes:
        return self.second.body(self.first.body(piece, end_of_stream), end_of_stream)
