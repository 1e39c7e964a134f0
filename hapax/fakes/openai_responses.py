"""OpenAI's Responses API (``POST /v1/responses``) for the fake OpenAI, stateless.

The answer is one output item: an assistant ``message`` echoing the last user text
(as chat does), or a ``function_call`` when function tools are offered and the input
ends with the user's turn. Streamed, it is the real API's typed event sequence
(``response.created`` ... ``response.completed``), each event numbered by
``sequence_number``, with no ``[DONE]`` at the end. Requests are checked first by
``openai_responses_rules``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .base import FakeProvider, sse_event
from .content import Reply, ToolCall, compose_reply, prompt_tokens, tool_arguments
from .openai_responses_rules import check_request, item_type

_TEXT_PARTS = ("input_text", "output_text")


@dataclass(frozen=True)
class _Item:
    """The one output item, whole and as the stream builds it."""

    done: dict[str, Any]  # as in the final ``output`` list
    opening: dict[str, Any]  # as ``response.output_item.added`` shows it
    events: list[tuple[str, dict[str, Any]]]  # the events between added and done, unnumbered
    output_tokens: int
    cut: bool  # stopped by max_output_tokens


class ResponsesEndpoint:
    """``POST /v1/responses`` for one fake; ``check_model`` and ``read_body`` are the fake's own."""

    def __init__(
        self,
        fake: FakeProvider,
        check_model: Callable[[str], None],
        read_body: Callable[[web.Request], dict[str, Any]],
    ) -> None:
        self._fake = fake
        self._check_model = check_model
        self._read_body = read_body

    async def create(self, request: web.Request) -> web.StreamResponse:
        body = self._read_body(request)
        check_request(body)
        self._check_model(body["model"])
        items = _input_items(body["input"])
        item = self._answer(body, items)
        usage = _usage(prompt_tokens(_prompt_texts(body, items)), item.output_tokens)
        final = self._response(body, item, usage)
        if body.get("stream"):
            return await self._fake.send_stream(request, _events(final, item))
        return await self._fake.send_json(request, final)

    def _answer(self, body: dict[str, Any], items: list[dict[str, Any]]) -> _Item:
        user_text = _last_user_text(items)
        function = _function_to_call(body, items)
        if function is None:
            reply = compose_reply(self._fake.label, user_text, body.get("max_output_tokens"))
            return _message_item(self._fake.next_id("msg_"), reply)
        arguments = tool_arguments(function.get("parameters"), user_text)
        call = ToolCall(self._fake.next_id("call_"), function["name"], arguments)
        return _call_item(self._fake.next_id("fc_"), call)

    def _response(self, body: dict[str, Any], item: _Item, usage: dict[str, Any]) -> dict[str, Any]:
        now = int(time.time())
        return {
            "id": self._fake.next_id("resp_"),
            "object": "response",
            "created_at": now,
            "status": "incomplete" if item.cut else "completed",
            "completed_at": None if item.cut else now,
            "background": False,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if item.cut else None,
            "model": body["model"],
            "output": [item.done],
            "usage": usage,
            **_echoed_settings(body),
        }


# -- what the request says ---------------------------------------------------------------------


def _input_items(value: Any) -> list[dict[str, Any]]:
    """``input`` as items: a bare string is one user message."""
    return [{"type": "message", "role": "user", "content": value}] if isinstance(value, str) else value


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    texts = [part["text"] for part in content if part.get("type") in _TEXT_PARTS]
    return " ".join(text for text in texts if text)


def _last_user_text(items: list[dict[str, Any]]) -> str:
    for item in reversed(items):
        if item_type(item) == "message" and item["role"] == "user":
            return _content_text(item["content"])
    return ""


def _prompt_texts(body: dict[str, Any], items: list[dict[str, Any]]) -> list[str]:
    texts = [body.get("instructions") or ""]
    for item in items:
        kind = item_type(item)
        if kind == "message":
            texts.append(_content_text(item["content"]))
        elif kind == "function_call":
            texts.append(item["arguments"])
        elif kind == "function_call_output" and isinstance(item["output"], str):
            texts.append(item["output"])
    return texts


def _function_to_call(body: dict[str, Any], items: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The function the fake "decides" to call: chat's rule, only right after the user's turn."""
    functions = [tool for tool in body.get("tools") or [] if tool["type"] == "function"]
    choice = body.get("tool_choice")
    if not functions or choice == "none" or not items:
        return None
    last = items[-1]
    if item_type(last) != "message" or last["role"] != "user":
        return None  # after a function_call_output the fake answers in text
    if isinstance(choice, dict) and choice.get("type") == "function":
        functions = [f for f in functions if f["name"] == choice["name"]]
    return functions[0]


def _echoed_settings(body: dict[str, Any]) -> dict[str, Any]:
    """The request's settings as the Response object repeats them, with the API's defaults filled in."""
    return {
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": body.get("max_tool_calls"),
        "metadata": body.get("metadata") or {},
        "parallel_tool_calls": _default(body, "parallel_tool_calls", True),
        "previous_response_id": None,
        "prompt_cache_key": body.get("prompt_cache_key"),
        "reasoning": {"effort": None, "summary": None, **(body.get("reasoning") or {})},
        "safety_identifier": body.get("safety_identifier"),
        # What a request left to "auto" was served with.
        "service_tier": "default" if body.get("service_tier") in (None, "auto") else body["service_tier"],
        "store": _default(body, "store", True),
        "temperature": _default(body, "temperature", 1.0),
        "text": {"format": {"type": "text"}, "verbosity": "medium", **_without_nulls(body.get("text"))},
        "tool_choice": _default(body, "tool_choice", "auto"),
        "tools": [_echoed_tool(tool) for tool in body.get("tools") or []],
        "top_logprobs": _default(body, "top_logprobs", 0),
        "top_p": _default(body, "top_p", 1.0),
        "truncation": _default(body, "truncation", "disabled"),
        "user": body.get("user"),
    }


def _default(body: dict[str, Any], name: str, default: Any) -> Any:
    return default if body.get(name) is None else body[name]


def _without_nulls(value: dict[str, Any] | None) -> dict[str, Any]:
    return {key: item for key, item in (value or {}).items() if item is not None}


def _echoed_tool(tool: dict[str, Any]) -> dict[str, Any]:
    if tool["type"] != "function":
        return tool
    # Function tools come back complete: strict is on unless the request turned it off.
    defaults = {"description": None, "parameters": None, "strict": True}
    return {**defaults, **_without_nulls(tool)}


# -- the answer -------------------------------------------------------------------------------


def _usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def _message_item(item_id: str, reply: Reply) -> _Item:
    part = {"type": "output_text", "text": reply.text, "annotations": [], "logprobs": []}
    done = {"id": item_id, "type": "message", "status": "incomplete" if reply.truncated else "completed",
            "role": "assistant", "content": [part]}
    where = {"item_id": item_id, "output_index": 0, "content_index": 0}
    events = [
        ("response.content_part.added", {**where, "part": {**part, "text": ""}}),
        *(("response.output_text.delta", {**where, "delta": chunk, "logprobs": []}) for chunk in reply.chunks),
        ("response.output_text.done", {**where, "text": reply.text, "logprobs": []}),
        ("response.content_part.done", {**where, "part": part}),
    ]
    opening = {**done, "status": "in_progress", "content": []}
    return _Item(done, opening, events, reply.completion_tokens, reply.truncated)


def _call_item(item_id: str, call: ToolCall) -> _Item:
    done = {"id": item_id, "type": "function_call", "status": "completed", "arguments": call.arguments_json,
            "call_id": call.id, "name": call.name}
    where = {"item_id": item_id, "output_index": 0}
    events = [
        *(("response.function_call_arguments.delta", {**where, "delta": piece}) for piece in call.argument_pieces),
        ("response.function_call_arguments.done", {**where, "arguments": call.arguments_json}),
    ]
    opening = {**done, "status": "in_progress", "arguments": ""}
    return _Item(done, opening, events, call.completion_tokens, cut=False)


def _events(final: dict[str, Any], item: _Item) -> Iterator[bytes]:
    """The real API's event order; the response so far opens it, the whole response closes it."""
    pending = {**final, "status": "in_progress", "completed_at": None, "incomplete_details": None,
               "output": [], "usage": None}
    closing = "response.incomplete" if item.cut else "response.completed"
    events: list[tuple[str, dict[str, Any]]] = [
        ("response.created", {"response": pending}),
        ("response.in_progress", {"response": pending}),
        ("response.output_item.added", {"output_index": 0, "item": item.opening}),
        *item.events,
        ("response.output_item.done", {"output_index": 0, "item": item.done}),
        (closing, {"response": final}),
    ]
    for number, (kind, data) in enumerate(events):
        yield sse_event({"type": kind, **data, "sequence_number": number}, event=kind)
