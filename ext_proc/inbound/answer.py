"""What every client API's answer shape does alike: the canonical chat answer, after the provider's
stage, read whole when it is JSON (an error included) and event by event when it streams."""

from __future__ import annotations

import json
from abc import abstractmethod
from typing import Any

from ext_proc.outcomes import StreamOutcome
from ext_proc.sse import SseParser
from ext_proc.translators.base import ResponseStage


def chat_chunk(data: str) -> dict[str, Any] | None:
    """A canonical stream event's chunk: None for ``[DONE]`` and for anything not a JSON object."""
    if data == "[DONE]":
        return None
    try:
        chunk = json.loads(data)
    except json.JSONDecodeError:
        return None
    return chunk if isinstance(chunk, dict) else None


class AnswerShape(ResponseStage):
    """A ResponseStage for a client API's own shape: subclasses say what a whole answer, a stream
    event and a stream's end become."""

    def __init__(self) -> None:
        self.status = 0
        self._streaming = False
        self._parser = SseParser()
        self._buffer = bytearray()

    def headers(self, status: int, content_type: str) -> dict[str, str]:
        self.status = status
        self._streaming = content_type.startswith("text/event-stream") and status < 400
        return {}

    @property
    def streams(self) -> bool:
        return self._streaming

    def body(self, piece: bytes, end_of_stream: bool) -> bytes:
        if self._streaming:
            events = self._parser.feed(piece) + (self._parser.finish() if end_of_stream else [])
            out = b"".join(self.event(event.data) for event in events)
            return out + (self.stream_end() if end_of_stream else b"")
        self._buffer += piece
        if not end_of_stream:
            return b""
        raw = bytes(self._buffer)
        try:
            body = json.loads(raw)
        except json.JSONDecodeError:
            body = None
        return self.whole(body, raw)

    @abstractmethod
    def whole(self, body: Any, raw: bytes) -> bytes:
        """A JSON answer (an error too: ``self.status``), parsed (None: not JSON) and as it came."""

    @abstractmethod
    def event(self, data: str) -> bytes:
        """One stream event's data, as this API's events."""

    def stream_end(self) -> bytes:
        return b""


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
