"""An Anthropic provider's Messages API answers, to a client that spoke the Messages API.

They pass as they came. The gateway reads them on their way: a JSON message for its usage, a
stream event by event for its end (``message_stop``: completed; ``error``: the provider's error)
and its usage (``message_start`` has the input's, ``message_delta`` the output's), so metrics,
limits and the ledger count it as a chat. A stream the provider cuts short ends with Anthropic's
``error`` event. A 404 is the gateway's configuration (base_url or model): a 502 naming the
provider, in Anthropic's error shape, as the client reads errors.
"""

from __future__ import annotations

from typing import Any

from ext_proc.outcomes import StreamOutcome
from ext_proc.runtime import Provider
from ext_proc.sse import encode
from ext_proc.translators.anthropic_response import BASE_URL_CONVENTION, usage
from ext_proc.translators.base import dumps, json_or_none, provider_not_found
from ext_proc.translators.passing import PassingStage, error_message
from hapax import wire


def _error(status: int, message: str) -> bytes:
    return dumps({"type": "error", "error": {"type": wire.anthropic_error_type(status), "message": message}}).encode()


class MessagesPassStage(PassingStage):
    """Passes a Messages answer through unchanged, reading its usage and its stream's end.

    ``counting``: the answer is a token count (``{"input_tokens": N}``), which spends no tokens."""

    def __init__(self, provider: Provider, *, counting: bool = False) -> None:
        super().__init__(provider)
        self.counting = counting
        self._usage: dict[str, Any] = {}  # Anthropic's, as the stream's events add to it

    def whole(self, raw: bytes, answer: Any) -> bytes:
        if self.counting and isinstance(answer, dict) and isinstance(answer.get("input_tokens"), int):
            return raw
        if not isinstance(answer, dict) or answer.get("type") != "message" or self.counting:
            self.status_override = 502
            return _error(502, f"The provider '{self.provider.name}' answered a Messages API request with "
                               f"something that is not {'a token count' if self.counting else 'a message'}.")
        if isinstance(answer.get("usage"), dict):
            self.usage = usage(answer["usage"])
        return raw

    def not_found(self, raw: bytes, answer: Any) -> bytes:
        said = provider_not_found(self.provider, BASE_URL_CONVENTION, raw, error_message(answer))
        return _error(502, said["error"]["message"])

    def cut_short(self) -> bytes:
        return encode(_error(502, "provider stream ended unexpectedly").decode(), "error")

    def event(self, data: str, name: str) -> bytes:
        event = json_or_none(data)
        kind = event.get("type") if isinstance(event, dict) else None
        if kind == "message_start" and isinstance(event, dict):
            message = event.get("message")
            if isinstance(message, dict) and isinstance(message.get("usage"), dict):
                self._usage.update(message["usage"])
        elif kind == "message_delta" and isinstance(event, dict) and isinstance(event.get("usage"), dict):
            self._usage.update({k: v for k, v in event["usage"].items() if v is not None})
        elif kind == "message_stop":
            self.stream_outcome = StreamOutcome.COMPLETED
            self.usage = usage(self._usage)
        elif kind == "error":
            self.stream_outcome = StreamOutcome.PROVIDER_ERROR
        return encode(data, None if name == "message" else name)
