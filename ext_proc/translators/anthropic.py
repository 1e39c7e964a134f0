"""Anthropic Messages API (``type: anthropic``).

Requests: the canonical OpenAI chat body becomes a ``POST /v1/messages`` body
(``anthropic_request``, with ``anthropic_content`` and ``anthropic_tools``).
Responses: the message JSON, the SSE event stream and Anthropic's error JSON
become OpenAI chat completions, chunks and errors (``anthropic_response``).
Pure translation, no I/O.

Where the APIs differ, an option is honoured, refused with a 400 that names it,
or dropped and reported in ``x-hapax-dropped-params`` (``CHAT_RULES``;
docs/providers.md says why each way was chosen):

- tool rounds with no ``tools`` declare the tools they used, ``tool_choice: none``;
- legacy ``functions`` / ``function_call`` are tools, answered as ``function_call``;
- ``user`` / ``safety_identifier`` go as their SHA-256 hex in ``metadata.user_id``;
- ``response_format`` is a forced ``json_response`` tool whose input is the content;
- PDF ``file`` parts are ``document`` blocks; ``cache_control`` is passed through;
- ``reasoning_effort`` is extended thinking, and thinking comes back as
  ``reasoning_content``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ext_proc.client_request import ClientRequest
from ext_proc.errors import invalid
from ext_proc.runtime import Provider
from ext_proc.translators.anthropic_messages import MessagesPassStage
from ext_proc.translators.anthropic_request import dropped_fields, messages_body
from ext_proc.translators.anthropic_response import AnthropicResponseStage
from ext_proc.translators.anthropic_tools import AnswerShape
from ext_proc.translators.base import ProviderRequest, ResponseStage, Translator, dumps
from hapax import wire
from hapax.wire import Handler

ANTHROPIC_VERSION = "2023-06-01"


class AnthropicTranslator(Translator):
    type = "anthropic"
    handlers = frozenset({Handler.CHAT, Handler.COMPLETION})
    native = frozenset({Handler.MESSAGES, Handler.COUNT_TOKENS})
    native_headers = frozenset(wire.ANTHROPIC_AS_SENT_HEADERS)

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock

    def request(self, req: ClientRequest, provider: Provider) -> ProviderRequest:
        if req.handler not in self.handlers:
            raise invalid(f"Provider '{provider.name}' (anthropic) does not serve {req.handler}",
                          code="unsupported_handler")
        dropped = dropped_fields(req.body)  # first: a refused field is the answer
        body = messages_body(req.body, provider.model, req.stream)
        return ProviderRequest(path=provider.base_path + wire.ANTHROPIC_MESSAGES_PATH,
                               body=dumps(body).encode(), set_headers=_headers(provider), dropped=dropped)

    def native_request(self, api: Handler, body: dict[str, Any], provider: Provider) -> ProviderRequest:
        path = wire.ANTHROPIC_COUNT_TOKENS_PATH if api == Handler.COUNT_TOKENS else wire.ANTHROPIC_MESSAGES_PATH
        return ProviderRequest(path=provider.base_path + path, body=dumps({**body, "model": provider.model}).encode(),
                               set_headers=_headers(provider))

    def native_response(self, api: Handler, provider: Provider) -> ResponseStage:
        return MessagesPassStage(provider, counting=api == Handler.COUNT_TOKENS)

    def response(self, req: ClientRequest, provider: Provider) -> ResponseStage:
        return AnthropicResponseStage(provider, stream=req.stream, include_usage=req.include_usage,
                                      clock=self._clock, shape=AnswerShape.of(req.body))

    def health_probe(self, provider: Provider) -> ProviderRequest:
        headers = {wire.ANTHROPIC_VERSION_HEADER: ANTHROPIC_VERSION}
        if provider.api_key:
            headers["x-api-key"] = provider.api_key
        return ProviderRequest(path=provider.base_path + "/v1/models", body=b"", set_headers=headers)


def _headers(provider: Provider) -> dict[str, str]:
    headers = {wire.ANTHROPIC_VERSION_HEADER: ANTHROPIC_VERSION, "content-type": "application/json"}
    if provider.api_key:
        headers["x-api-key"] = provider.api_key
    return headers
