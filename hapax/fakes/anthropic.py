"""Fake Anthropic Messages API: ``POST /v1/messages`` and ``GET /v1/models``.

Requests are checked as strictly as the real API documents (``anthropic_rules``):
what Anthropic answers with a 400, the fake does too. With extended thinking on,
the answer opens with a ``thinking`` block (and its ``thinking_delta`` /
``signature_delta`` events when streamed).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from aiohttp import web

from .anthropic_rules import check_body, check_count_body
from .base import FakeProvider, RequestError, recorded, sse_event
from .content import (
    Reply,
    ToolCall,
    compose_reply,
    last_user_text,
    prompt_tokens,
    split_words,
    text_of,
    tool_arguments,
)

# What the fake "thinks" when extended thinking is on, before echoing the user's text.
THINKING_PREFIX = "Thinking it over: "

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


@dataclass(frozen=True)
class _Block:
    """One content block of the answer, whole and as its stream events carry it."""

    block: dict[str, Any]  # as it appears in a non-stream response
    opening: dict[str, Any]  # content_block_start's block: same, minus the payload
    deltas: list[dict[str, Any]]
    output_tokens: int


@dataclass(frozen=True)
class _Turn:
    """The assistant's content blocks and how the turn ends."""

    blocks: list[_Block]
    stop_reason: str

    @property
    def output_tokens(self) -> int:
        return sum(block.output_tokens for block in self.blocks)


class FakeAnthropic(FakeProvider):
    """Speaks the Messages API, including its SSE event sequence and error JSON."""

    label = "fake-anthropic"
    default_model = "claude-3-5-haiku-20241022"
    error_statuses: ClassVar[dict[str, int]] = {
        **FakeProvider.error_statuses,
        "overloaded_error": 529,
    }

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/messages", self._messages), web.post("/v1/messages/count_tokens", self._count_tokens),
                web.get("/v1/models", self._models)]

    # -- wire format hooks ------------------------------------------------------

    def error_response(self, error: RequestError) -> web.Response:
        fallback = "api_error" if error.status >= 500 else "invalid_request_error"
        kind = error.error_type or _ERROR_TYPES.get(error.status, fallback)
        return web.json_response(_error_body(kind, error.message), status=error.status)

    def check_credentials(self, request: web.Request) -> None:
        if self.api_key is not None:
            key = request.headers.get("x-api-key")
            if key is None:
                raise RequestError(401, "x-api-key header is required")
            if key != self.api_key:
                raise RequestError(401, "invalid x-api-key")
        # Required even without a key, as the real API does for every request.
        if "anthropic-version" not in request.headers:
            raise RequestError(400, "anthropic-version: header is required")

    def stream_error_event(self, error_type: str, message: str) -> bytes:
        return sse_event(_error_body(error_type, message), event="error")

    # -- handlers ---------------------------------------------------------------

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body = _body(request)
        model, max_tokens, messages = _require_fields(body)
        _check_roles(messages)
        check_body(body)
        turn = self._turn(body, messages, max_tokens)
        input_tokens = prompt_tokens(_prompt_texts(body, messages))
        message_id = self.next_id("msg_fake")
        if _flag(body, "stream"):
            events = _stream_events(message_id, model, turn, input_tokens)
            return await self.send_stream(request, events)
        reply = _message(message_id, model, input_tokens)
        reply["content"], reply["stop_reason"] = [b.block for b in turn.blocks], turn.stop_reason
        reply["usage"]["output_tokens"] = turn.output_tokens
        return await self.send_json(request, reply)

    async def _count_tokens(self, request: web.Request) -> web.StreamResponse:
        """The prompt's input tokens, counted as a message's answer counts them."""
        body = _body(request)
        for field in ("model", "messages"):
            if field not in body:
                raise RequestError(400, f"{field}: Field required")
        messages = body["messages"]
        if not isinstance(body["model"], str) or not isinstance(messages, list) or not messages:
            raise RequestError(400, "messages: at least one message is required")
        _check_roles(messages)
        check_count_body(body)
        return await self.send_json(request, {"input_tokens": prompt_tokens(_prompt_texts(body, messages))})

    async def _models(self, request: web.Request) -> web.StreamResponse:
        entry = {
            "type": "model",
            "id": self.model,
            "display_name": self.model,
            "created_at": "2024-10-22T00:00:00Z",
        }
        page = {"data": [entry], "has_more": False, "first_id": self.model, "last_id": self.model}
        return await self.send_json(request, page)

    def _turn(
        self, body: dict[str, Any], messages: list[dict[str, Any]], max_tokens: int
    ) -> _Turn:
        user_text = last_user_text(messages)
        thinking = [_thinking_block(user_text)] if _thinks(body) else []
        tool = _tool_to_call(body, messages)
        if tool is None:
            reply = compose_reply(self.label, user_text, max_tokens)
            return _Turn([*thinking, _text_block(reply)], "max_tokens" if reply.truncated else "end_turn")
        arguments = tool_arguments(tool.get("input_schema"), user_text)
        call = ToolCall(self.next_id("toolu_fake"), str(tool.get("name")), arguments)
        return _Turn([*thinking, _tool_block(call)], "tool_use")


# -- request validation, mirroring the real API's messages ---------------------------


def _body(request: web.Request) -> dict[str, Any]:
    body = recorded(request).body
    if not isinstance(body, dict):
        raise RequestError(400, "There was an issue with your request body: expected a JSON object")
    return body


def _require_fields(body: dict[str, Any]) -> tuple[str, int, list[dict[str, Any]]]:
    for field in ("model", "max_tokens", "messages"):
        if field not in body:
            raise RequestError(400, f"{field}: Field required")
    model, max_tokens, messages = body["model"], body["max_tokens"], body["messages"]
    if not isinstance(model, str) or not model:
        raise RequestError(400, "model: Input should be a valid string")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise RequestError(400, "max_tokens: Input should be greater than or equal to 1")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "messages: at least one message is required")
    return model, max_tokens, messages


def _check_roles(messages: list[Any]) -> None:
    previous = None
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            # There is no "system" role: system prompts go in the top-level field.
            raise RequestError(400, f"messages.{index}.role: Input should be 'user' or 'assistant'")
        if "content" not in message:
            raise RequestError(400, f"messages.{index}.content: Field required")
        if index == 0 and role != "user":
            raise RequestError(400, 'messages: first message must use the "user" role')
        if role == previous:
            raise RequestError(
                400, f'messages: roles must alternate between "user" and "assistant", '
                f'but found multiple "{role}" roles in a row',
            )
        previous = role


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise RequestError(400, f"{name}: Input should be a valid boolean")
    return value


def _prompt_texts(body: dict[str, Any], messages: list[dict[str, Any]]) -> list[str]:
    return [text_of(body.get("system")), *(text_of(m["content"]) for m in messages)]


def _tool_to_call(body: dict[str, Any], messages: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The tool the fake "decides" to use: only when the user just wrote text."""
    tools = [tool for tool in body.get("tools") or [] if isinstance(tool, dict)]
    tool_choice = body.get("tool_choice")
    choice = tool_choice if isinstance(tool_choice, dict) else {}
    if not tools or choice.get("type") == "none":
        return None
    if choice.get("type") == "tool":  # forced: answered whatever the conversation holds
        return next(tool for tool in tools if tool.get("name") == choice.get("name"))
    last = messages[-1]
    if last["role"] != "user" or not _has_text(last["content"]):
        return None
    return tools[0]


def _thinks(body: dict[str, Any]) -> bool:
    thinking = body.get("thinking")
    return isinstance(thinking, dict) and thinking.get("type") == "enabled"


def _has_text(content: Any) -> bool:
    if isinstance(content, str):
        return True
    return isinstance(content, list) and any(
        isinstance(block, dict) and block.get("type") == "text" for block in content
    )


# -- response building ------------------------------------------------------------------


def _error_body(error_type: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type, "message": message}}


def _message(message_id: str, model: str, input_tokens: int) -> dict[str, Any]:
    """The message envelope; content, stop_reason and usage are filled by the caller."""
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": 0},
    }


def _text_block(reply: Reply) -> _Block:
    deltas = [{"type": "text_delta", "text": chunk} for chunk in reply.chunks]
    return _Block({"type": "text", "text": reply.text}, {"type": "text", "text": ""}, deltas,
                  reply.completion_tokens)


def _tool_block(call: ToolCall) -> _Block:
    block = {"type": "tool_use", "id": call.id, "name": call.name}
    deltas = [{"type": "input_json_delta", "partial_json": piece} for piece in call.argument_pieces]
    return _Block(
        {**block, "input": call.arguments},
        {**block, "input": {}},  # the input arrives as input_json_delta pieces
        deltas,
        call.completion_tokens,
    )


def _thinking_block(user_text: str) -> _Block:
    """Extended thinking: the reasoning, then the signature that lets it be sent back."""
    pieces = split_words(f"{THINKING_PREFIX}{user_text}")
    text = "".join(pieces)
    signature = base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()
    deltas = [{"type": "thinking_delta", "thinking": piece} for piece in pieces]
    deltas.append({"type": "signature_delta", "signature": signature})
    return _Block({"type": "thinking", "thinking": text, "signature": signature},
                  {"type": "thinking", "thinking": "", "signature": ""}, deltas, len(pieces))


def _stream_events(message_id: str, model: str, turn: _Turn, input_tokens: int) -> Iterator[bytes]:
    message = _message(message_id, model, input_tokens)
    message["usage"]["output_tokens"] = 1  # the real API reports 1 before any output
    yield sse_event({"type": "message_start", "message": message}, event="message_start")
    for index, block in enumerate(turn.blocks):
        yield from _block_events(index, block)
    ending = {
        "type": "message_delta",
        "delta": {"stop_reason": turn.stop_reason, "stop_sequence": None},
        "usage": {"output_tokens": turn.output_tokens},
    }
    yield sse_event(ending, event="message_delta")
    yield sse_event({"type": "message_stop"}, event="message_stop")


def _block_events(index: int, block: _Block) -> Iterator[bytes]:
    start = {"type": "content_block_start", "index": index, "content_block": block.opening}
    yield sse_event(start, event="content_block_start")
    if index == 0:
        yield sse_event({"type": "ping"}, event="ping")  # where the real API sends its first
    for delta in block.deltas:
        yield sse_event(
            {"type": "content_block_delta", "index": index, "delta": delta}, event="content_block_delta"
        )
    yield sse_event({"type": "content_block_stop", "index": index}, event="content_block_stop")
