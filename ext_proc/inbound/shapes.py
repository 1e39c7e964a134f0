"""What differs by a route's client API once its request is canonical: the provider translator's
API, the answer's shape and the gateway's own errors' shape."""

from __future__ import annotations

import json

from ext_proc.client_request import ClientRequest
from ext_proc.errors import GatewayError
from ext_proc.inbound.completions import TextCompletionStage
from ext_proc.inbound.messages_answer import MessagesStage
from ext_proc.inbound.messages_request import error_body as messages_error_body
from ext_proc.inbound.messages_request import error_json
from ext_proc.inbound.responses_answer import ResponsesStage
from ext_proc.translators.base import ResponseStage
from hapax.wire import ANTHROPIC_HANDLERS, Handler


def canonical_handler(handler: str) -> str:
    """The API a provider translator serves for a route's handler: Messages and Responses requests are chats."""
    return Handler.CHAT if handler in (Handler.MESSAGES, Handler.RESPONSES, Handler.COUNT_TOKENS) else handler


def answer_shape(handler: str, req: ClientRequest) -> ResponseStage | None:
    """The stage that turns a canonical answer into the route's API's, if it has its own."""
    if handler == Handler.COMPLETION:
        return TextCompletionStage()
    if handler == Handler.MESSAGES:
        return MessagesStage()
    if handler == Handler.RESPONSES:
        return ResponsesStage(req.as_sent or {})
    return None


def error_body(handler: str, err: GatewayError) -> bytes:
    """The gateway's own error, in the route's API's error shape."""
    return messages_error_body(err) if handler in ANTHROPIC_HANDLERS else err.body()


def reshaped_error(handler: str, status: int, openai_error: bytes) -> bytes:
    """An error the gateway wrote in OpenAI's shape (the reasons no provider can serve), in the route's API's."""
    if handler not in ANTHROPIC_HANDLERS:
        return openai_error
    try:
        message = json.loads(openai_error)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = "No provider could serve the request."
    return json.dumps(error_json(status, message)).encode()
