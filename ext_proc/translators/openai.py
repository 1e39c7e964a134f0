"""OpenAI and OpenAI-compatible servers: the request keeps its shape.

Answers need no conversion, but the gateway reads them on their way through:
a JSON answer for its token usage; a stream event by event, so that one the
provider cuts short ends with an error event the client can see, and so that
the usage chunk the gateway asks for (to count tokens) reaches only the
clients that asked for it too. Error answers pass untouched, but a 404: that
is the gateway's base_url or model, and becomes a 502 naming the provider.
"""

from __future__ import annotations

import json
from typing import Any

from ext_proc.client_request import ClientRequest
from ext_proc.outcomes import StreamOutcome
from ext_proc.runtime import Provider
from ext_proc.sse import encode
from ext_proc.translators.base import (
    ProviderRequest,
    ResponseStage,
    Translator,
    dumps,
    json_or_none,
    provider_not_found,
)
from ext_proc.translators.openai_chunks import DONE, error_event
from ext_proc.translators.openai_responses import ResponsesPassStage
from ext_proc.translators.passing import PassingStage
from hapax import wire
from hapax.wire import Handler

PATHS = wire.OPENAI_PATHS
# What a 404 for the path says of the base_url (docs/configuration.md: base_url).
BASE_URL_CONVENTION = ("an openai-type base_url ends in the API's version, as https://api.openai.com/v1 does: "
                       "the gateway appends /chat/completions, /embeddings and /models")


class OpenAITranslator(Translator):
    type = "openai"
    handlers = frozenset(PATHS)
    native = frozenset({Handler.RESPONSES})

    def request(self, req: ClientRequest, provider: Provider) -> ProviderRequest:
        body = dict(req.body)
        body["model"] = provider.model
        if req.stream:
            # Token usage is only known on a stream if the last chunk carries it.
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        return ProviderRequest(
            path=provider.base_path + PATHS[req.handler],
            body=json.dumps(body, separators=(",", ":")).encode(),
            set_headers=_credentials(provider),
        )

    def request_as_sent(self, req: ClientRequest, provider: Provider) -> ProviderRequest | None:
        # The body already names the provider's model and, on a stream, asks for the usage
        # chunk; a legacy completion is converted to chat.
        if req.handler == Handler.COMPLETION or req.model != provider.model or (req.stream and not req.include_usage):
            return None
        return ProviderRequest(path=provider.base_path + PATHS[req.handler], body=None,
                               set_headers=_credentials(provider))

    def response(self, req: ClientRequest, provider: Provider) -> ResponseStage | None:
        return OpenAIResponseStage(provider, include_usage=req.include_usage)

    def native_request(self, api: Handler, body: dict[str, Any], provider: Provider) -> ProviderRequest:
        # A Responses stream always ends with its usage (response.completed): nothing to ask for.
        return ProviderRequest(path=provider.base_path + wire.OPENAI_RESPONSES_PATH,
                               body=dumps({**body, "model": provider.model}).encode(),
                               set_headers=_credentials(provider))

    def native_response(self, api: Handler, provider: Provider) -> ResponseStage:
        return ResponsesPassStage(provider)

    def health_probe(self, provider: Provider) -> ProviderRequest:
        return ProviderRequest(path=provider.base_path + wire.OPENAI_MODELS_PATH, body=b"",
                               set_headers=_credentials(provider))


def _credentials(provider: Provider) -> dict[str, str]:
    return {"authorization": f"Bearer {provider.api_key}"} if provider.api_key else {}


class OpenAIResponseStage(PassingStage):
    """Passes an OpenAI answer through unchanged but for the usage chunk, and reads it."""

    def __init__(self, provider: Provider, *, include_usage: bool) -> None:
        super().__init__(provider)
        self.include_usage = include_usage

    def whole(self, raw: bytes, answer: object) -> bytes:
        if isinstance(answer, dict) and isinstance(answer.get("usage"), dict):
            self.usage = answer["usage"]
        return raw

    def not_found(self, raw: bytes, answer: object) -> bytes:
        return dumps(self._not_found(raw, answer)).encode()

    def cut_short(self) -> bytes:
        return error_event("provider stream ended unexpectedly")

    def _not_found(self, raw: bytes, answer: object) -> dict[str, object]:
        """A 404 for the path or the model (OpenAI's error JSON, or an OpenAI-compatible server's)."""
        message, code = None, None
        if isinstance(answer, dict):
            err = answer.get("error")
            if isinstance(err, dict):
                message, code = err.get("message"), err.get("code")
            elif isinstance(answer.get("message"), str):  # vLLM: {"object": "error", "message": ...}
                message = answer["message"]
        return provider_not_found(self.provider, BASE_URL_CONVENTION, raw,
                                  message if isinstance(message, str) else None, about_model=code == "model_not_found")

    def event(self, data: str, name: str) -> bytes:
        if data == "[DONE]":
            self.stream_outcome = StreamOutcome.COMPLETED
            return DONE
        payload = json_or_none(data)
        if isinstance(payload, dict):
            if payload.get("error") is not None:
                self.stream_outcome = StreamOutcome.PROVIDER_ERROR
            elif isinstance(payload.get("usage"), dict):
                self.usage = payload["usage"]
                if not self.include_usage and not payload.get("choices"):
                    return b""  # the usage chunk the gateway added for itself
        return encode(data, None if name == "message" else name)
