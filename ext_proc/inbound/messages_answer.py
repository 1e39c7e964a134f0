"""The Anthropic Messages API's answers: the canonical chat answer, after the provider's
translator, as an Anthropic message (JSON) or its event stream (``message_start``, per block
``content_block_start`` / ``content_block_delta`` / ``content_block_stop``, ``message_delta``,
``message_stop``; ``error`` mid-stream); see messages_request.py for the requests."""

from __future__ import annotations

import json
import uuid
from typing import Any

from ext_proc.inbound.answer import AnswerShape, chat_chunk
from ext_proc.inbound.messages_request import error_json
from ext_proc.sse import encode

# What each OpenAI finish_reason is in Anthropic's words.
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
                "content_filter": "refusal"}


def message_id(chat_id: Any) -> str:
    return "msg_" + (chat_id.removeprefix("chatcmpl-") if isinstance(chat_id, str) and chat_id
                     else uuid.uuid4().hex)


def usage(chat_usage: Any) -> dict[str, Any]:
    """Anthropic's usage of an OpenAI one: the cached prompt tokens are counted apart from the rest."""
    chat_usage = chat_usage if isinstance(chat_usage, dict) else {}
    out: dict[str, Any] = {"input_tokens": chat_usage.get("prompt_tokens") or 0,
                           "output_tokens": chat_usage.get("completion_tokens") or 0}
    details = chat_usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    if cached:
        out["cache_read_input_tokens"] = cached
        out["input_tokens"] = max(out["input_tokens"] - cached, 0)
    return out


def chat_to_message(chat: dict[str, Any]) -> dict[str, Any]:
    choice = (chat.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        content.append({"type": "tool_use", "id": call.get("id") or _tool_id(), "name": function.get("name", ""),
                        "input": _arguments(function.get("arguments"))})
    return {"id": message_id(chat.get("id")), "type": "message", "role": "assistant", "model": chat.get("model", ""),
            "content": content, "stop_reason": STOP_REASONS.get(choice.get("finish_reason"), "end_turn"),
            "stop_sequence": None, "usage": usage(chat.get("usage"))}


def _tool_id() -> str:
    return f"toolu_{uuid.uuid4().hex[:24]}"


def _arguments(text: Any) -> Any:
    try:
        value = json.loads(text) if isinstance(text, str) and text else {}
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _error_message(body: Any) -> str:
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"]
    return "The provider's answer could not be read."


class MessagesStage(AnswerShape):
    """After the provider's stage: its OpenAI chat answer (JSON or chunks) as Anthropic's."""

    def __init__(self) -> None:
        super().__init__()
        self._events = _EventWriter()

    def whole(self, body: Any, raw: bytes) -> bytes:
        if self.status >= 400 or not isinstance(body, dict) or "choices" not in body:
            return json.dumps(error_json(self.status if self.status >= 400 else 502, _error_message(body))).encode()
        return json.dumps(chat_to_message(body)).encode()

    def event(self, data: str) -> bytes:
        return self._events.chunk(data)

    def stream_end(self) -> bytes:
        return self._events.end()


class _EventWriter:
    """Chat chunks in, Anthropic's stream events out, one block open at a time."""

    def __init__(self) -> None:
        self.started = self.stopped = False
        self.block = -1  # the open block's index
        self.block_kind = ""  # "text" | "tool_use" | "": none open
        self.tool_index: int | None = None  # the chat tool call the open tool_use block is
        self.stop_reason = "end_turn"
        self.usage: dict[str, Any] = {}

    def chunk(self, data: str) -> bytes:
        chunk = chat_chunk(data)
        if chunk is None or self.stopped:
            return b""
        if "error" in chunk:
            self.stopped = True
            return _event("error", {"type": "error", "error": {"type": "api_error",
                                                               "message": _error_message(chunk)}})
        out = b"" if self.started else self._start(chunk)
        if chunk.get("usage"):
            self.usage = usage(chunk["usage"])
        for choice in chunk.get("choices") or []:
            out += self._delta(choice.get("delta") or {})
            if choice.get("finish_reason"):
                self.stop_reason = STOP_REASONS.get(choice["finish_reason"], "end_turn")
        return out

    def end(self) -> bytes:
        if self.stopped:
            return b""
        self.stopped = True
        out = b"" if self.started else self._start({})
        out += self._close()
        out += _event("message_delta", {"type": "message_delta",
                                        "delta": {"stop_reason": self.stop_reason, "stop_sequence": None},
                                        "usage": self.usage or {"output_tokens": 0}})
        return out + _event("message_stop", {"type": "message_stop"})

    def _start(self, chunk: dict[str, Any]) -> bytes:
        self.started = True
        message = {"id": message_id(chunk.get("id")), "type": "message", "role": "assistant",
                   "model": chunk.get("model", ""), "content": [], "stop_reason": None, "stop_sequence": None,
                   "usage": {"input_tokens": 0, "output_tokens": 0}}
        return _event("message_start", {"type": "message_start", "message": message})

    def _delta(self, delta: dict[str, Any]) -> bytes:
        out = b""
        if delta.get("content"):
            if self.block_kind != "text":
                out += self._open("text", {"type": "text", "text": ""})
            out += _event("content_block_delta", {"type": "content_block_delta", "index": self.block,
                                                  "delta": {"type": "text_delta", "text": delta["content"]}})
        for call in delta.get("tool_calls") or []:
            function = call.get("function") or {}
            if self.block_kind != "tool_use" or call.get("index", 0) != self.tool_index:
                self.tool_index = call.get("index", 0)
                out += self._open("tool_use", {"type": "tool_use", "id": call.get("id") or _tool_id(),
                                               "name": function.get("name", ""), "input": {}})
            if function.get("arguments"):
                out += _event("content_block_delta", {"type": "content_block_delta", "index": self.block, "delta": {
                    "type": "input_json_delta", "partial_json": function["arguments"]}})
        return out

    def _open(self, kind: str, block: dict[str, Any]) -> bytes:
        out = self._close()
        self.block += 1
        self.block_kind = kind
        return out + _event("content_block_start", {"type": "content_block_start", "index": self.block,
                                                    "content_block": block})

    def _close(self) -> bytes:
        if not self.block_kind:
            return b""
        self.block_kind = ""
        return _event("content_block_stop", {"type": "content_block_stop", "index": self.block})


def _event(name: str, data: dict[str, Any]) -> bytes:
    return encode(json.dumps(data), name)
