"""An OpenAI provider's Responses API answers, to a client that spoke the Responses API.

They pass as they came. The gateway reads them on their way: a JSON Response for its usage, a
stream event by event for its end (``response.completed`` or ``response.incomplete``: completed;
``response.failed`` or ``error``: the provider's error) and its usage, so metrics, limits and the
ledger count a Responses request as they count a chat. A stream the provider cuts short ends
with an ``error`` event the client can see. A 404 is the gateway's configuration (the base_url,
the model, or a server without the Responses API) and becomes a 502 naming the provider.
"""

from __future__ import annotations

from typing import Any

from ext_proc.errors import error_json
from ext_proc.outcomes import StreamOutcome
from ext_proc.runtime import Provider
from ext_proc.sse import encode
from ext_proc.translators.base import dumps, json_or_none, provider_not_found
from ext_proc.translators.passing import PassingStage, error_message

# The events that end a Responses stream, and how.
ENDINGS = {"response.completed": StreamOutcome.COMPLETED, "response.incomplete": StreamOutcome.COMPLETED,
           "response.failed": StreamOutcome.PROVIDER_ERROR, "error": StreamOutcome.PROVIDER_ERROR}
CONVENTION = ("an openai-type base_url ends in the API's version, as https://api.openai.com/v1 does: the "
              "gateway appends /responses, and the server must serve OpenAI's Responses API")


def chat_usage(usage: Any) -> dict[str, Any] | None:
    """A Response's usage in the chat's words, which metrics, limits and the ledger read."""
    if not isinstance(usage, dict):
        return None
    out: dict[str, Any] = {"prompt_tokens": usage.get("input_tokens"), "completion_tokens": usage.get("output_tokens"),
                           "total_tokens": usage.get("total_tokens")}
    details = usage.get("input_tokens_details")
    if isinstance(details, dict) and details.get("cached_tokens") is not None:
        out["prompt_tokens_details"] = {"cached_tokens": details["cached_tokens"]}
    return out


class ResponsesPassStage(PassingStage):
    """Passes a Responses answer through unchanged, reading its usage and its stream's end."""

    def __init__(self, provider: Provider) -> None:
        super().__init__(provider)
        self._sequence = 0  # the next sequence_number: an error the gateway adds continues the provider's

    def whole(self, raw: bytes, answer: Any) -> bytes:
        if not isinstance(answer, dict) or answer.get("object") != "response":
            self.status_override = 502
            return dumps(error_json(f"The provider '{self.provider.name}' answered a Responses API request with "
                                    "something that is not a Response.", "server_error",
                                    "bad_provider_answer")).encode()
        self.usage = chat_usage(answer.get("usage"))
        return raw

    def not_found(self, raw: bytes, answer: Any) -> bytes:
        code = answer.get("error", {}).get("code") if isinstance(answer, dict) else None
        return dumps(provider_not_found(self.provider, CONVENTION, raw, error_message(answer),
                                        about_model=code == "model_not_found")).encode()

    def cut_short(self) -> bytes:
        return encode(dumps({"type": "error", "code": "server_error", "param": None,
                             "message": "provider stream ended unexpectedly", "sequence_number": self._sequence}),
                      "error")

    def event(self, data: str, name: str) -> bytes:
        event = json_or_none(data)
        kind = event.get("type") if isinstance(event, dict) else None
        if isinstance(event, dict) and isinstance(event.get("sequence_number"), int):
            self._sequence = event["sequence_number"] + 1
        if kind in ENDINGS:
            self.stream_outcome = ENDINGS[kind]
            response = event.get("response") if isinstance(event, dict) else None
            if isinstance(response, dict):
                self.usage = chat_usage(response.get("usage"))
        return encode(data, None if name == "message" else name)
