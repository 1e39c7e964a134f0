"""Fake OpenAI API: chat completions, the Responses API, legacy completions, embeddings and models."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .base import FakeProvider, RequestError, recorded, sse_event
from .content import (
    EMBEDDING_DIMS,
    Reply,
    ToolCall,
    compose_reply,
    embed,
    embedding_base64,
    last_user_text,
    prompt_tokens,
    text_of,
    tool_arguments,
)
from .openai_responses import ResponsesEndpoint

_FINGERPRINT = "fp_hapax_fake"
_DONE = b"data: [DONE]\n\n"
_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}


@dataclass(frozen=True)
class _Chat:
    model: str
    messages: list[dict[str, Any]]
    stream: bool
    include_usage: bool
    max_tokens: int | None
    tool: dict[str, Any] | None  # the function to call instead of answering in text


@dataclass(frozen=True)
class _Turn:
    """The assistant's answer, in both its non-stream and stream shapes."""

    message: dict[str, Any]
    deltas: list[dict[str, Any]]
    finish_reason: str
    completion_tokens: int


class FakeOpenAI(FakeProvider):
    """Chat, Responses and legacy completions (all streaming), embeddings and the model list."""

    label = "fake-openai"
    default_model = "gpt-4o-mini"
    api_path = "/v1"

    def __init__(self, *, serves: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        """``serves``: model name -> ``chat`` or ``embeddings``: the models this account has, each
        refused by the other endpoint, and every other name refused, as OpenAI does. None: any
        model on any endpoint (most tests name models freely)."""
        super().__init__(**kwargs)
        self.serves = dict(serves) if serves is not None else None

    def _check_model(self, model: str, endpoint: str) -> None:
        if self.serves is None:
            return
        kind = self.serves.get(model)
        if kind is None:
            raise RequestError(404, f"The model `{model}` does not exist or you do not have access to it.",
                               code="model_not_found")
        if kind != endpoint and endpoint == "chat":
            raise RequestError(404, "This is not a chat model and thus not supported in the "
                               "v1/chat/completions endpoint. Did you mean to use v1/completions?", param="model")
        if kind != endpoint:
            raise RequestError(400, f"The model `{model}` does not support embeddings.", param="model")

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/chat/completions", self._chat),
            # The Responses API serves the same chat models, so the account's model check is chat's.
            web.post("/v1/responses", ResponsesEndpoint(self, lambda model: self._check_model(model, "chat"),
                                                        _body).create),
            web.post("/v1/completions", self._completions),
            web.post("/v1/embeddings", self._embeddings),
            web.get("/v1/models", self._models),
        ]

    # -- wire format hooks ------------------------------------------------------

    def error_response(self, error: RequestError) -> web.Response:
        default_type, default_code = _error_kind(error.status)
        body = {
            "message": error.message,
            "type": error.error_type or default_type,
            "param": error.param,
            "code": error.code or default_code,
        }
        return web.json_response({"error": body}, status=error.status)

    def check_credentials(self, request: web.Request) -> None:
        if self.api_key is None:
            return
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise RequestError(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            )
        if token.strip() != self.api_key:
            raise RequestError(
                401, f"Incorrect API key provided: {_mask(token)}.", code="invalid_api_key"
            )

    def stream_error_event(self, error_type: str, message: str) -> bytes:
        error = {"message": message, "type": error_type, "param": None, "code": None}
        return sse_event({"error": error})

    def unknown_path_response(self, request: web.Request, exc: web.HTTPException) -> web.Response:
        if exc.status != 404:
            return super().unknown_path_response(request, exc)
        # What api.openai.com answers a path it does not serve (a base_url without /v1).
        error = {"message": f"Invalid URL ({request.method} {request.path})", "type": "invalid_request_error",
                 "param": None, "code": None}
        return web.json_response({"error": error}, status=404)

    # -- /v1/chat/completions ---------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        chat = _parse_chat(_body(request))
        self._check_model(chat.model, "chat")
        turn = self._turn(chat)
        texts = (text_of(message.get("content")) for message in chat.messages)
        usage = _usage(prompt_tokens(texts), turn.completion_tokens)
        head = self._head("chatcmpl-", "chat.completion", chat.model)
        if chat.stream:
            events = _chat_events(head, turn, usage if chat.include_usage else None)
            return await self.send_stream(request, events)
        choice = {
            "index": 0,
            "message": turn.message,
            "logprobs": None,
            "finish_reason": turn.finish_reason,
        }
        return await self.send_json(request, {**head, "choices": [choice], "usage": usage})

    def _turn(self, chat: _Chat) -> _Turn:
        user_text = last_user_text(chat.messages)
        if chat.tool is None:
            return _text_turn(compose_reply(self.label, user_text, chat.max_tokens))
        arguments = tool_arguments(chat.tool.get("parameters"), user_text)
        return _tool_turn(ToolCall(self.next_id("call_"), chat.tool["name"], arguments))

    def _head(self, id_prefix: str, object_type: str, model: str) -> dict[str, Any]:
        return {
            "id": self.next_id(id_prefix),
            "object": object_type,
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": _FINGERPRINT,
        }

    # -- /v1/completions (legacy) -----------------------------------------------

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = _body(request)
        model = _require_model(body)
        prompts = _prompts(body.get("prompt"))
        max_tokens = _positive_int(body, "max_tokens")
        replies = [compose_reply(self.label, prompt, max_tokens) for prompt in prompts]
        usage = _usage(prompt_tokens(prompts), sum(reply.completion_tokens for reply in replies))
        head = self._head("cmpl-", "text_completion", model)
        if _flag(body, "stream"):
            include_usage = _include_usage(body)
            events = _completion_events(head, replies, usage if include_usage else None)
            return await self.send_stream(request, events)
        choices = [
            {"text": reply.text, "index": index, "logprobs": None, "finish_reason": _finish(reply)}
            for index, reply in enumerate(replies)
        ]
        return await self.send_json(request, {**head, "choices": choices, "usage": usage})

    # -- /v1/embeddings and /v1/models -------------------------------------------

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        body = _body(request)
        model = _require_model(body)
        self._check_model(model, "embeddings")
        inputs = _embedding_inputs(body.get("input"))
        dims = _positive_int(body, "dimensions")
        base64 = body.get("encoding_format") == "base64"
        data = []
        for index, text in enumerate(inputs):
            vector = embed(text, dims or EMBEDDING_DIMS)
            encoded: Any = embedding_base64(vector) if base64 else vector
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        tokens = prompt_tokens(inputs)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return await self.send_json(
            request, {"object": "list", "data": data, "model": model, "usage": usage}
        )

    async def _models(self, request: web.Request) -> web.StreamResponse:
        names = list(self.serves) if self.serves is not None else [self.model]
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "hapax-fakes"} for name in names]
        return await self.send_json(request, {"object": "list", "data": data})


# -- request parsing, as strict as OpenAI's on the fields the fake uses -----------


def _body(request: web.Request) -> dict[str, Any]:
    record = recorded(request)
    if not isinstance(record.body, dict):
        raise RequestError(
            400,
            "We could not parse the JSON body of your request. (HINT: This likely means "
            "you aren't using your HTTP library correctly. The OpenAI API expects a JSON "
            "payload, but what was sent was not valid JSON.)",
        )
    return record.body


def _parse_chat(body: dict[str, Any]) -> _Chat:
    model = _require_model(body)
    messages = _messages(body)
    max_tokens = _positive_int(body, "max_completion_tokens") or _positive_int(body, "max_tokens")
    return _Chat(
        model=model,
        messages=messages,
        stream=_flag(body, "stream"),
        include_usage=_include_usage(body),
        max_tokens=max_tokens,
        tool=_tool_to_call(body, messages),
    )


def _require_model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError(400, "you must provide a model parameter")
    return model


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    if "messages" not in body:
        raise RequestError(
            400,
            "Missing required parameter: 'messages'.",
            param="messages",
            code="missing_required_parameter",
        )
    messages = body["messages"]
    if not isinstance(messages, list) or not messages:
        raise RequestError(
            400,
            "Invalid 'messages': expected a non-empty array of messages.",
            param="messages",
            code="empty_array" if messages == [] else "invalid_type",
        )
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            raise RequestError(
                400,
                f"Invalid value for 'messages[{index}].role'.",
                param=f"messages[{index}].role",
                code="invalid_value",
            )
    return messages


def _positive_int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RequestError(
            400,
            f"Invalid '{name}': expected an integer of at least 1.",
            param=name,
            code="invalid_value",
        )
    return value


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise RequestError(
            400, f"Invalid type for '{name}': expected a boolean.", param=name, code="invalid_type"
        )
    return value


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _tool_to_call(body: dict[str, Any], messages: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The function the fake "decides" to call: only right after a user turn."""
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if not isinstance(tools, list) or not tools or choice == "none":
        return None
    if messages[-1].get("role") != "user":
        return None
    functions = [
        tool["function"]
        for tool in tools
        if isinstance(tool, dict) and isinstance(tool.get("function"), dict)
    ]
    if isinstance(choice, dict):
        wanted = (choice.get("function") or {}).get("name")
        functions = [f for f in functions if f.get("name") == wanted] or functions
    return functions[0] if functions else None


def _prompts(prompt: Any) -> list[str]:
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return prompt
    raise RequestError(
        400,
        "Invalid 'prompt': expected a string or an array of strings.",
        param="prompt",
        code="invalid_type",
    )


def _embedding_inputs(value: Any) -> list[str]:
    if isinstance(value, str) and value:
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    raise RequestError(
        400,
        "'$.input' is invalid: expected a non-empty string or array of strings.",
        param="input",
        code="invalid_value",
    )


# -- response building -------------------------------------------------------------


def _finish(reply: Reply) -> str:
    return "length" if reply.truncated else "stop"


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _text_turn(reply: Reply) -> _Turn:
    deltas: list[dict[str, Any]] = [{"content": chunk} for chunk in reply.chunks]
    deltas[0] = {"role": "assistant", **deltas[0]}
    message = {"role": "assistant", "content": reply.text, "refusal": None}
    return _Turn(message, deltas, _finish(reply), reply.completion_tokens)


def _tool_turn(call: ToolCall) -> _Turn:
    function = {"name": call.name, "arguments": call.arguments_json}
    message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": call.id, "type": "function", "function": function}],
    }
    # OpenAI opens a streamed tool call with its id, type and name, then streams
    # the arguments; clients join the pieces by ``index``.
    header = {"index": 0, "id": call.id, "type": "function"}
    opening = {
        "role": "assistant",
        "content": None,
        "tool_calls": [{**header, "function": {"name": call.name, "arguments": ""}}],
    }
    pieces = [
        {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
        for piece in call.argument_pieces
    ]
    return _Turn(message, [opening, *pieces], "tool_calls", call.completion_tokens)


def _chat_events(
    head: dict[str, Any], turn: _Turn, usage: dict[str, int] | None
) -> Iterator[bytes]:
    chunk_head = {**head, "object": "chat.completion.chunk"}
    if usage is not None:
        chunk_head["usage"] = None  # with include_usage, every other chunk says usage: null
    last = len(turn.deltas) - 1
    for index, delta in enumerate(turn.deltas):
        finish = turn.finish_reason if index == last else None
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        yield sse_event({**chunk_head, "choices": [choice]})
    if usage is not None:
        yield sse_event({**chunk_head, "choices": [], "usage": usage})
    yield _DONE


def _completion_events(
    head: dict[str, Any], replies: list[Reply], usage: dict[str, int] | None
) -> Iterator[bytes]:
    for index, reply in enumerate(replies):
        last = len(reply.chunks) - 1
        for position, chunk in enumerate(reply.chunks):
            finish = _finish(reply) if position == last else None
            choice = {"text": chunk, "index": index, "logprobs": None, "finish_reason": finish}
            yield sse_event({**head, "choices": [choice]})
    if usage is not None:
        yield sse_event({**head, "choices": [], "usage": usage})
    yield _DONE


def _error_kind(status: int) -> tuple[str, str | None]:
    """OpenAI's error ``type`` and ``code`` for a bare HTTP status."""
    if status == 429:
        return "requests", "rate_limit_exceeded"
    if status >= 500:
        return "server_error", None
    if status == 404:
        return "invalid_request_error", "not_found"
    return "invalid_request_error", None


def _mask(key: str) -> str:
    return key if len(key) <= 8 else f"{key[:3]}{'*' * 8}{key[-4:]}"
