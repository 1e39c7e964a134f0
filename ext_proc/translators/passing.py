"""What every stage that passes a provider's answer as it came does alike: read it on its way.

A provider answering in the client's own API (OpenAI's chat to a chat client, its Responses to
a Responses client, Anthropic's Messages to a Messages client) is not rewritten. Its answer is
read for what the gateway counts: a JSON answer whole, for its usage; a stream event by event,
for its usage and its end, after which nothing the provider sends is passed on. A stream that
ends before the provider's end gets the API's own error event. An error passes untouched, but a
404: that is the gateway's configuration (base_url, model), answered as a 502 naming the provider.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

from ext_proc.outcomes import StreamOutcome
from ext_proc.runtime import Provider
from ext_proc.sse import SseParser
from ext_proc.translators.base import ResponseStage, json_or_none


class PassingStage(ResponseStage):
    """Subclasses say what an answer read whole, a 404, one stream event and a stream cut short are."""

    def __init__(self, provider: Provider) -> None:
        self.provider = provider
        self._mode = "error"
        self._parser = SseParser()
        self._buffer = bytearray()

    def headers(self, status: int, content_type: str) -> dict[str, str]:
        media = content_type.split(";", 1)[0].strip().lower()
        if status == 404:
            self._mode = "not_found"  # read whole, and answered as the 502 it is
        else:
            self._mode = "error" if status >= 400 else "stream" if media == "text/event-stream" else "json"
        return {}

    @property
    def streams(self) -> bool:
        return self._mode == "stream"

    @property
    def reads_body(self) -> bool:
        return self._mode != "error"  # an error is already in the client's API's shape

    @property
    def reads_json_only_for_usage(self) -> bool:
        return self._mode == "json"

    def body(self, piece: bytes, end_of_stream: bool) -> bytes:
        if self._mode != "stream":
            return self._whole(piece, end_of_stream)
        events = self._parser.feed(piece) + (self._parser.finish() if end_of_stream else [])
        out = bytearray()
        for event in events:
            if self.stream_outcome:
                break  # nothing a provider sends after its end is part of the answer
            out += self.event(event.data, event.event)
        if end_of_stream and not self.stream_outcome:
            self.stream_outcome = StreamOutcome.ENDED_EARLY
            out += self.cut_short()
        return bytes(out)

    def _whole(self, piece: bytes, end_of_stream: bool) -> bytes:
        self._buffer += piece
        if not end_of_stream:
            return b""
        raw, self._buffer = bytes(self._buffer), bytearray()
        if self._mode == "not_found":
            self.status_override = 502
            return self.not_found(raw, json_or_none(raw))
        return self.whole(raw, json_or_none(raw))

    @abstractmethod
    def whole(self, raw: bytes, answer: Any) -> bytes:
        """A 2xx JSON answer (``answer``: parsed, None if not JSON): as it came, its usage read."""

    @abstractmethod
    def not_found(self, raw: bytes, answer: Any) -> bytes:
        """The 502 a provider's 404 is, naming it (``self.status_override`` is already set)."""

    @abstractmethod
    def event(self, data: str, name: str) -> bytes:
        """One stream event, encoded again (``name``: its event field, "message" if none); may end the stream."""

    @abstractmethod
    def cut_short(self) -> bytes:
        """The error event that ends a stream the provider cut short."""


def error_message(answer: Any) -> str | None:
    """The message of a provider's error JSON (``{"error": {"message": ...}}``), if it is one."""
    error = answer.get("error") if isinstance(answer, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return message if isinstance(message, str) else None
