"""Anthropic Messages responses as OpenAI's: the message JSON, the SSE event stream and errors.

Pure translation, no I/O: a stage is fed the provider's body piece by piece
and returns what the client gets.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ext_proc.errors import error_json
from ext_proc.outcomes import StreamOutcome
from ext_proc.runtime import Provider
from ext_proc.sse import SseParser, encode
from ext_proc.translators.anthropic_tools import AnswerShape
from ext_proc.translators.base import (
    ConvertingResponseStage,
    dumps,
    http_error_text,
    json_or_none,
    provider_not_found,
)
from ext_proc.translators.openai_chunks import chunk, completion, error_event, stream_end

STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# The answer's shape when the request asked for nothing special.
PLAIN = AnswerShape()

# What a 404 for the path says of the base_url (docs/configuration.md: base_url).
BASE_URL_CONVENTION = "an anthropic-type base_url has no /v1: the gateway appends /v1/messages and /v1/models"

# Anthropic error type -> (OpenAI error type, code)
ERROR_TYPES = {
    "invalid_request_error": ("invalid_request_error", None),
    "authentication_error": ("authentication_error", "provider_authentication_error"),
    "permission_error": ("permission_error", "provider_permission_error"),
    "not_found_error": ("invalid_request_error", "not_found"),
    "request_too_large": ("invalid_request_error", "request_too_large"),
    "rate_limit_error": ("rate_limit_exceeded", "rate_limit_exceeded"),
    "api_error": ("server_error", "api_error"),
    "overloaded_error": ("server_error", "overloaded"),
    "timeout_error": ("server_error", "timeout"),
}


def openai_error(err_type: str | None, message: str, status: int, provider: str,
                 key_source: str = "") -> dict[str, Any]:
    """OpenAI's error JSON for an Anthropic error type (or, lacking one, an HTTP status).
    ``key_source`` says where the provider's key comes from (runtime Provider.api_key_source)."""
    if err_type not in ERROR_TYPES:
        err_type = {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
                    413: "request_too_large", 429: "rate_limit_error", 529: "overloaded_error"}.get(
            status, "api_error" if status >= 500 or status < 400 else "invalid_request_error")
    kind, code = ERROR_TYPES[err_type]
    if err_type in ("authentication_error", "permission_error"):
        source = f" ({key_source})" if key_source else ""
        message = (f"The gateway's credential for provider '{provider}'{source} was rejected by Anthropic "
                   f"(this is not about your own API key): {message}")
    if err_type == "not_found_error" and "model" in message.lower():
        code = "model_not_found"
    return error_json(message, kind, code)


def _error_from_body(raw: bytes, status: int, provider: str, key_source: str) -> dict[str, Any]:
    body = json_or_none(raw)
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        return openai_error(err.get("type"), str(err.get("message") or ""), status, provider, key_source)
    return openai_error(None, http_error_text(raw, status), status, provider, key_source)


def usage(u: dict[str, Any]) -> dict[str, Any]:
    """OpenAI usage from Anthropic's; prompt tokens include cache reads and writes."""
    cached = u.get("cache_read_input_tokens") or 0
    prompt = (u.get("input_tokens") or 0) + (u.get("cache_creation_input_tokens") or 0) + cached
    completion = u.get("output_tokens") or 0
    out: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                           "total_tokens": prompt + completion}
    if cached:
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    return out


@dataclass
class _Read:
    """What an answer's content blocks say, sorted by where OpenAI puts it."""

    texts: list[str] = field(default_factory=list)
    thoughts: list[str] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)
    answered: bool = False  # the answer tool (response_format) was called


def _read(blocks: list[dict[str, Any]], shape: AnswerShape) -> _Read:
    read = _Read()
    for block in blocks:
        kind = block.get("type")
        if kind == "text":
            read.texts.append(block.get("text") or "")
        elif kind == "thinking":  # redacted_thinking is encrypted: nothing to read
            read.thoughts.append(block.get("thinking") or "")
        elif kind == "tool_use" and block.get("name") == shape.answer_tool:
            read.texts.append(dumps(block.get("input") or {}))
            read.answered = True
        elif kind == "tool_use":
            read.calls.append({"id": block.get("id"), "type": "function", "function": {
                "name": block.get("name"), "arguments": dumps(block.get("input") or {})}})
    return read


def chat_completion(message: dict[str, Any], model: str, created: int,
                    shape: AnswerShape = PLAIN) -> dict[str, Any]:
    """OpenAI chat.completion for an Anthropic message."""
    read = _read(message.get("content") or [], shape)
    out_msg: dict[str, Any] = {"role": "assistant", "content": "".join(read.texts) if read.texts else None}
    if read.thoughts:
        # Where OpenAI-compatible clients (and reasoning models served that way) read reasoning.
        out_msg["reasoning_content"] = "".join(read.thoughts)
    if read.calls and shape.legacy_functions:
        out_msg["function_call"] = read.calls[0]["function"]  # the legacy API has one call at most
    elif read.calls:
        out_msg["tool_calls"] = read.calls
    finish = finish_reason(message.get("stop_reason"), shape, answered_only=read.answered and not read.calls)
    return completion("chatcmpl-" + str(message.get("id") or ""), created, model, out_msg, finish,
                      usage(message.get("usage") or {}))


def finish_reason(stop_reason: str | None, shape: AnswerShape, *, answered_only: bool) -> str:
    """OpenAI's finish_reason; a stop to call the answer tool alone is a plain stop."""
    finish = STOP_REASONS.get(stop_reason or "", "stop")
    if finish != "tool_calls":
        return finish
    if answered_only:
        return "stop"
    return "function_call" if shape.legacy_functions else finish


class AnthropicResponseStage(ConvertingResponseStage):
    """Anthropic JSON / SSE / error -> OpenAI chat JSON / SSE / error.

    Text becomes content and thinking ``reasoning_content``. Tool calls become
    ``tool_calls``, or ``function_call`` for a legacy request. The answer tool's
    input (response_format) becomes content, and its stop a plain "stop".
    """

    stream_media_type = "text/event-stream"

    def __init__(self, provider: Provider, *, stream: bool, include_usage: bool = False,
                 clock: Callable[[], float] = time.time, shape: AnswerShape = PLAIN) -> None:
        super().__init__(stream=stream, include_usage=include_usage)
        self._shape = shape
        self._model = provider.model
        self._provider = provider.name
        self._provider_config = provider
        self._clock = clock
        self._parser = SseParser()
        self._id = ""
        self._created = 0
        self._usage: dict[str, Any] = {}
        self._tool_index: dict[int, int] = {}  # Anthropic block index -> OpenAI tool_calls index
        self._answer_blocks: set[int] = set()  # blocks of the answer tool: their input is content

    def error_body(self, raw: bytes) -> bytes:
        if self.status == 529:  # Anthropic's "overloaded"; OpenAI clients know 503
            self.status_override = 503
        if self.status == 404:  # the gateway's base_url or model, not the client's request
            self.status_override = 502
            body = json_or_none(raw)
            err = body.get("error") if isinstance(body, dict) else None
            message = err.get("message") if isinstance(err, dict) else None
            return dumps(provider_not_found(self._provider_config, BASE_URL_CONVENTION, raw,
                                            message if isinstance(message, str) else None)).encode()
        return dumps(_error_from_body(raw, self.status, self._provider,
                                      self._provider_config.api_key_source)).encode()

    def json_body(self, raw: bytes) -> bytes:
        message = json_or_none(raw)
        if not isinstance(message, dict) or message.get("type") == "error" or "content" not in message:
            if isinstance(message, dict) and isinstance(message.get("error"), dict):
                return self.error_body(raw)
            return self.unreadable(dumps(openai_error(
                "api_error", "Provider returned an unreadable response.", 502, self._provider)).encode())
        answer = chat_completion(message, self._model, int(self._clock()), self._shape)
        self.usage = answer["usage"]
        return dumps(answer).encode()

    # ---- SSE

    def stream_piece(self, piece: bytes, end_of_stream: bool) -> bytes:
        events = self._parser.feed(piece)
        if end_of_stream:
            events += self._parser.finish()
        out = bytearray()
        for event in events:
            if self.stream_outcome:
                break
            out += self._event(event.event, event.data)
        if end_of_stream and not self.stream_outcome:
            self.stream_outcome = StreamOutcome.ENDED_EARLY
            out += error_event("provider stream ended unexpectedly")
        return bytes(out)

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        self._start()
        return chunk(self._id, self._created, self._model, delta, finish_reason)

    def _start(self, message_id: str | None = None) -> None:
        if not self._id:
            self._id = "chatcmpl-" + (message_id or "anthropic")
            self._created = int(self._clock())

    def _event(self, name: str, data: str) -> bytes:
        payload = json_or_none(data)
        if not isinstance(payload, dict):
            self.stream_outcome = StreamOutcome.PROVIDER_ERROR
            return error_event("provider sent an unreadable stream event")
        kind = payload.get("type") or name
        if kind == "message_start":
            message = payload.get("message") or {}
            self._start(message.get("id"))
            self._usage.update(message.get("usage") or {})
            return self._chunk({"role": "assistant", "content": ""})
        if kind == "content_block_start":
            return self._block_start(payload.get("index", 0), payload.get("content_block") or {})
        if kind == "content_block_delta":
            return self._block_delta(payload.get("index", 0), payload.get("delta") or {})
        if kind == "message_delta":
            self._usage.update({k: v for k, v in (payload.get("usage") or {}).items() if v is not None})
            reason = (payload.get("delta") or {}).get("stop_reason")
            if reason is None:
                return b""
            return self._chunk({}, finish_reason(
                reason, self._shape, answered_only=bool(self._answer_blocks) and not self._tool_index))
        if kind == "message_stop":
            self.stream_outcome = StreamOutcome.COMPLETED
            self._start()
            self.usage = usage(self._usage)
            return stream_end(self._id, self._created, self._model, self.usage if self.include_usage else None)
        if kind == "error":
            self.stream_outcome = StreamOutcome.PROVIDER_ERROR
            err = payload.get("error") or {}
            converted = openai_error(err.get("type"), str(err.get("message") or ""), 500,
                                     self._provider)
            return encode(dumps(converted))
        return b""  # ping, content_block_stop, and event types added later

    def _block_start(self, index: int, block: dict[str, Any]) -> bytes:
        if block.get("type") == "tool_use" and block.get("name") == self._shape.answer_tool:
            self._answer_blocks.add(index)
            return b""
        if block.get("type") == "tool_use":
            return self._call_start(index, block)
        if block.get("type") == "text" and block.get("text"):
            return self._chunk({"content": block["text"]})
        return b""

    def _call_start(self, index: int, block: dict[str, Any]) -> bytes:
        if self._shape.legacy_functions and self._tool_index:
            return b""  # the legacy API has one call at most; the rest could only garble it
        position = self._tool_index.setdefault(index, len(self._tool_index))
        if self._shape.legacy_functions:
            return self._chunk({"function_call": {"name": block.get("name"), "arguments": ""}})
        return self._chunk({"tool_calls": [{
            "index": position, "id": block.get("id"), "type": "function",
            "function": {"name": block.get("name"), "arguments": ""}}]})

    def _block_delta(self, index: int, delta: dict[str, Any]) -> bytes:
        kind = delta.get("type")
        if kind == "text_delta" and delta.get("text"):
            return self._chunk({"content": delta["text"]})
        if kind == "thinking_delta" and delta.get("thinking"):
            return self._chunk({"reasoning_content": delta["thinking"]})
        if kind != "input_json_delta" or not delta.get("partial_json"):
            return b""  # signature deltas have no OpenAI chat equivalent
        arguments = delta["partial_json"]
        if index in self._answer_blocks:
            return self._chunk({"content": arguments})
        if index not in self._tool_index:
            return b""
        if self._shape.legacy_functions:
            return self._chunk({"function_call": {"arguments": arguments}})
        return self._chunk({"tool_calls": [{"index": self._tool_index[index], "function": {"arguments": arguments}}]})
