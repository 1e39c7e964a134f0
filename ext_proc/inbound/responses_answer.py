"""OpenAI's Responses API's answers, for a translated request: the canonical chat answer, after the
provider's translator, as a Response object (JSON) or the Responses event stream
(``response.created``, ``response.in_progress``, per output item ``response.output_item.added`` /
its deltas / ``response.output_item.done``, then ``response.completed`` or ``response.incomplete``;
``error`` and ``response.failed`` when the provider fails mid-stream). See responses_request.py
for the requests; a provider that speaks the Responses API answers in it itself.

The Response echoes what the client asked (instructions, tools, text format...), as OpenAI's
does: the stage is made with the client's body.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from ext_proc.errors import error_json
from ext_proc.inbound.answer import AnswerShape, chat_chunk
from ext_proc.sse import encode

# What each chat finish_reason leaves a Response: its status, and why it is incomplete.
INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}
# The request fields a Response echoes, with the value it echoes when the client left one out.
ECHOED: dict[str, Any] = {
    "instructions": None, "max_output_tokens": None, "metadata": {}, "parallel_tool_calls": True,
    "previous_response_id": None, "reasoning": {"effort": None, "summary": None}, "store": False,
    "temperature": 1.0, "text": {"format": {"type": "text"}}, "tool_choice": "auto", "tools": [], "top_p": 1.0,
    "truncation": "disabled", "user": None}


def response_id(chat_id: Any) -> str:
    return "resp_" + (chat_id.removeprefix("chatcmpl-") if isinstance(chat_id, str) and chat_id
                      else uuid.uuid4().hex)


def usage(chat_usage: Any) -> dict[str, Any]:
    """The Responses API's usage of a chat's."""
    chat_usage = chat_usage if isinstance(chat_usage, dict) else {}
    inputs, outputs = chat_usage.get("prompt_tokens") or 0, chat_usage.get("completion_tokens") or 0
    prompt_details = chat_usage.get("prompt_tokens_details")
    output_details = chat_usage.get("completion_tokens_details")
    cached = prompt_details.get("cached_tokens") if isinstance(prompt_details, dict) else None
    reasoning = output_details.get("reasoning_tokens") if isinstance(output_details, dict) else None
    return {"input_tokens": inputs, "input_tokens_details": {"cached_tokens": cached or 0},
            "output_tokens": outputs, "output_tokens_details": {"reasoning_tokens": reasoning or 0},
            "total_tokens": chat_usage.get("total_tokens") or inputs + outputs}


def _item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    content = [_text_part(text)] if status == "completed" else []
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": content}


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _call_item(item_id: str, call_id: str, name: str, arguments: str, status: str = "completed") -> dict[str, Any]:
    return {"type": "function_call", "id": item_id, "call_id": call_id, "name": name, "arguments": arguments,
            "status": status}


def _reasoning_item(item_id: str, text: str) -> dict[str, Any]:
    return {"type": "reasoning", "id": item_id, "summary": [], "content": [{"type": "reasoning_text", "text": text}]}


def output_items(message: dict[str, Any]) -> list[dict[str, Any]]:
    """A chat's assistant message as Response output items: reasoning, the words, then each call."""
    items: list[dict[str, Any]] = []
    if isinstance(message.get("reasoning_content"), str) and message["reasoning_content"]:
        items.append(_reasoning_item(_item_id("rs"), message["reasoning_content"]))
    if isinstance(message.get("refusal"), str) and message["refusal"]:
        items.append({**_message_item(_item_id("msg"), ""),
                      "content": [{"type": "refusal", "refusal": message["refusal"]}]})
    elif message.get("content"):
        items.append(_message_item(_item_id("msg"), str(message["content"])))
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        items.append(_call_item(_item_id("fc"), call.get("id") or _item_id("call"), function.get("name", ""),
                                function.get("arguments") or "{}"))
    return items


class ResponsesStage(AnswerShape):
    """After the provider's stage: its OpenAI chat answer (JSON or chunks) as a Response or its events.

    ``request``: the client's Responses body, whose settings a Response echoes."""

    def __init__(self, request: dict[str, Any]) -> None:
        super().__init__()
        self._echo = {name: request.get(name, default) if request.get(name) is not None else default
                      for name, default in ECHOED.items()}
        self._events = _EventWriter(self._response)

    def _response(self, chat: dict[str, Any], status: str, output: list[dict[str, Any]],
                  chat_usage: Any, finish_reason: Any) -> dict[str, Any]:
        incomplete = INCOMPLETE.get(finish_reason) if status != "in_progress" else None
        return {"id": response_id(chat.get("id")), "object": "response",
                "created_at": chat.get("created") or int(time.time()),
                "status": "incomplete" if incomplete else status, "error": None,
                "incomplete_details": {"reason": incomplete} if incomplete else None,
                "model": chat.get("model", ""), "output": output, **self._echo,
                "usage": usage(chat_usage) if status != "in_progress" else None}

    def whole(self, body: Any, raw: bytes) -> bytes:
        if self.status >= 400:  # the provider's stage gives OpenAI's error JSON, the Responses API's too
            return raw
        if not isinstance(body, dict) or not body.get("choices"):
            self.status_override = 502
            return json.dumps(error_json("The provider's answer could not be read.", "server_error",
                                         "bad_provider_answer")).encode()
        choice = body["choices"][0]
        message = choice.get("message") or {}
        return json.dumps(self._response(body, "completed", output_items(message), body.get("usage"),
                                         choice.get("finish_reason"))).encode()

    def event(self, data: str) -> bytes:
        return self._events.chunk(data)

    def stream_end(self) -> bytes:
        return self._events.end()


class _Item:
    """An output item being streamed: its index, kind, id, and what has arrived of it."""

    def __init__(self, index: int, kind: str, item_id: str, call_id: str = "", name: str = "",
                 tool_index: int | None = None) -> None:
        self.index, self.kind, self.id = index, kind, item_id
        self.call_id, self.name, self.tool_index = call_id, name, tool_index
        self.text = ""

    def whole(self) -> dict[str, Any]:
        if self.kind == "function_call":
            return _call_item(self.id, self.call_id, self.name, self.text or "{}")
        if self.kind == "reasoning":
            return _reasoning_item(self.id, self.text)
        return _message_item(self.id, self.text)

    def opened(self) -> dict[str, Any]:
        if self.kind == "function_call":
            return _call_item(self.id, self.call_id, self.name, "", "in_progress")
        if self.kind == "reasoning":
            return {"type": "reasoning", "id": self.id, "summary": [], "content": []}
        return _message_item(self.id, "", "in_progress")


class _EventWriter:
    """Chat chunks in, Responses events out, one output item open at a time."""

    def __init__(self, response: Any) -> None:
        self.response = response  # ResponsesStage._response
        self.sequence = 0
        self.chat: dict[str, Any] = {}  # the first chunk: the answer's id, model and time
        self.started = self.stopped = False
        self.items: list[_Item] = []
        self.open: _Item | None = None
        self.finish_reason: Any = None
        self.chat_usage: Any = None

    def chunk(self, data: str) -> bytes:
        chunk = chat_chunk(data)
        if chunk is None or self.stopped:
            return b""
        out = b"" if self.started else self._start(chunk)
        if "error" in chunk:
            return out + self._fail(chunk.get("error"))
        if chunk.get("usage"):
            self.chat_usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            out += self._delta(choice.get("delta") or {})
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return out

    def end(self) -> bytes:
        if self.stopped:
            return b""
        self.stopped = True
        out = (b"" if self.started else self._start({})) + self._close()
        done = self.response(self.chat, "completed", [item.whole() for item in self.items], self.chat_usage,
                             self.finish_reason)
        name = "response.incomplete" if done["status"] == "incomplete" else "response.completed"
        return out + self._event(name, {"response": done})

    def _start(self, chunk: dict[str, Any]) -> bytes:
        self.started = True
        self.chat = {k: chunk[k] for k in ("id", "model", "created") if k in chunk}
        begun = self.response(self.chat, "in_progress", [], None, None)
        return self._event("response.created", {"response": begun}) + \
            self._event("response.in_progress", {"response": begun})

    def _fail(self, error: Any) -> bytes:
        """The provider failed mid-stream: ``error``, then the Response failed, and nothing after."""
        self.stopped = True
        error = error if isinstance(error, dict) else {}
        message = error.get("message") if isinstance(error.get("message"), str) else "The provider failed."
        code = error.get("code") or error.get("type") or "server_error"
        out = self._event("error", {"code": code, "message": message, "param": None})
        failed = self.response(self.chat, "failed", [item.whole() for item in self.items], self.chat_usage, None)
        failed.update(status="failed", error={"code": "server_error", "message": message})
        return out + self._event("response.failed", {"response": failed})

    def _delta(self, delta: dict[str, Any]) -> bytes:
        out = b""
        if delta.get("reasoning_content"):
            out += self._text("reasoning", delta["reasoning_content"])
        if delta.get("content"):
            out += self._text("message", delta["content"])
        for call in delta.get("tool_calls") or []:
            function = call.get("function") or {}
            index = call.get("index", 0)
            if self.open is None or self.open.kind != "function_call" or self.open.tool_index != index:
                item = _Item(len(self.items), "function_call", _item_id("fc"), call.get("id") or _item_id("call"),
                             function.get("name", ""), index)
                out += self._open(item)
            if function.get("arguments"):
                assert self.open is not None
                self.open.text += function["arguments"]
                out += self._event("response.function_call_arguments.delta", {
                    "item_id": self.open.id, "output_index": self.open.index, "delta": function["arguments"]})
        return out

    def _text(self, kind: str, text: str) -> bytes:
        out = b""
        if self.open is None or self.open.kind != kind:
            out += self._open(_Item(len(self.items), kind, _item_id("rs" if kind == "reasoning" else "msg")))
        item = self.open
        assert item is not None
        item.text += text
        name = "response.reasoning_text.delta" if kind == "reasoning" else "response.output_text.delta"
        extra: dict[str, Any] = {} if kind == "reasoning" else {"logprobs": []}
        return out + self._event(name, {"item_id": item.id, "output_index": item.index, "content_index": 0,
                                        "delta": text, **extra})

    def _open(self, item: _Item) -> bytes:
        out = self._close()
        self.items.append(item)
        self.open = item
        out += self._event("response.output_item.added", {"output_index": item.index, "item": item.opened()})
        if item.kind == "message":
            out += self._event("response.content_part.added", {
                "item_id": item.id, "output_index": item.index, "content_index": 0, "part": _text_part("")})
        return out

    def _close(self) -> bytes:
        item, self.open = self.open, None
        if item is None:
            return b""
        where = {"item_id": item.id, "output_index": item.index}
        if item.kind == "function_call":
            out = self._event("response.function_call_arguments.done", {
                **where, "name": item.name, "arguments": item.text or "{}"})
        elif item.kind == "reasoning":
            out = self._event("response.reasoning_text.done", {**where, "content_index": 0, "text": item.text})
        else:
            out = self._event("response.output_text.done", {**where, "content_index": 0, "text": item.text,
                                                            "logprobs": []})
            out += self._event("response.content_part.done", {**where, "content_index": 0,
                                                              "part": _text_part(item.text)})
        return out + self._event("response.output_item.done", {"output_index": item.index, "item": item.whole()})

    def _event(self, name: str, data: dict[str, Any]) -> bytes:
        event = {"type": name, "sequence_number": self.sequence, **data}
        self.sequence += 1
        return encode(json.dumps(event), name)
