"""Anthropic Messages API (``type: anthropic``).

Requests: the canonical OpenAI chat body becomes a ``POST /v1/messages`` body
(system lifted to the top level, roles merged so they alternate, tools and
tool calls rewritten as Anthropic blocks, ``max_tokens`` defaulted because
Anthropic requires it). Responses: the message JSON, the SSE event stream and
Anthropic's error JSON become OpenAI chat completions, chunks and errors.
Pure translation, no I/O.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from ext_proc.client_request import ClientRequest
from ext_proc.errors import error_json, invalid
from ext_proc.outcomes import StreamOutcome
from ext_proc.runtime import Provider
from ext_proc.sse import SseParser, encode
from ext_proc.translators.base import (
    ConvertingResponseStage,
    ProviderRequest,
    ResponseStage,
    Translator,
    dumps,
    http_error_text,
    json_or_none,
    tool_arguments,
)
from ext_proc.translators.openai_chunks import (
    chunk,
    completion,
    error_event,
    stream_end,
)
from hapax.wire import Handler

ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096
# Anthropic's conversation must open with a user turn; OpenAI's may open with an
# assistant turn (or hold only system messages). This neutral turn fills the gap.
PLACEHOLDER_USER_TEXT = "(continue)"
# Anthropic accepts temperature in [0, 1]; OpenAI in [0, 2].
MAX_TEMPERATURE = 1.0

STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

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

_DATA_URL = re.compile(r"^data:(?P<media>[^;,]+)(?:;[^,;]*)*;base64,(?P<data>.*)$", re.DOTALL)
_TOOL_ID_UNSAFE = re.compile(r"[^a-zA-Z0-9_-]")


class AnthropicTranslator(Translator):
    type = "anthropic"
    handlers = frozenset({Handler.CHAT, Handler.COMPLETION})

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock

    def request(self, req: ClientRequest, provider: Provider) -> ProviderRequest:
        if req.handler not in self.handlers:
            raise invalid(f"Provider '{provider.name}' (anthropic) does not serve {req.handler}",
                          code="unsupported_handler")
        body = messages_body(req.body, provider.model, req.stream)
        headers = {"anthropic-version": ANTHROPIC_VERSION, "content-type": "application/json"}
        if provider.api_key:
            headers["x-api-key"] = provider.api_key
        return ProviderRequest(path=provider.base_path + "/v1/messages",
                               body=dumps(body).encode(), set_headers=headers)

    def response(self, req: ClientRequest, provider: Provider) -> ResponseStage:
        return AnthropicResponseStage(provider, stream=req.stream, include_usage=req.include_usage,
                                      clock=self._clock)

    def health_probe(self, provider: Provider) -> ProviderRequest:
        headers = {"anthropic-version": ANTHROPIC_VERSION}
        if provider.api_key:
            headers["x-api-key"] = provider.api_key
        return ProviderRequest(path=provider.base_path + "/v1/models", body=b"", set_headers=headers)


# --------------------------------------------------------------------------- request


def messages_body(chat: dict[str, Any], model: str, stream: bool) -> dict[str, Any]:
    """The Anthropic Messages body for one canonical OpenAI chat body."""
    n = chat.get("n")
    if n is not None and n != 1:
        raise invalid("Anthropic returns one choice per request; 'n' must be 1.", param="n")
    system, messages = _conversation(chat.get("messages") or [])
    body: dict[str, Any] = {"model": model, "messages": messages}
    if system:
        body["system"] = "\n\n".join(system)
    max_tokens = chat.get("max_completion_tokens") or chat.get("max_tokens")
    body["max_tokens"] = max_tokens if max_tokens else DEFAULT_MAX_TOKENS
    if chat.get("temperature") is not None:
        body["temperature"] = min(float(chat["temperature"]), MAX_TEMPERATURE)
    if chat.get("top_p") is not None:
        body["top_p"] = chat["top_p"]
    stops = _stop_sequences(chat.get("stop"))
    if stops:
        body["stop_sequences"] = stops
    body["stream"] = bool(stream)
    tools = chat.get("tools")
    if tools:
        body["tools"] = [_tool(t, i) for i, t in enumerate(tools)]
        choice = _tool_choice(chat.get("tool_choice"))
        if chat.get("parallel_tool_calls") is False and (choice or {}).get("type") != "none":
            choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
        if choice is not None:
            body["tool_choice"] = choice
    user = chat.get("user")
    if isinstance(user, str) and user:
        body["metadata"] = {"user_id": user}
    return body


def _stop_sequences(stop: Any) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    # Anthropic rejects empty and whitespace-only stop sequences ("each stop
    # sequence must contain non-whitespace"); they cannot be expressed, so they
    # are dropped rather than failing the whole request.
    return [s for s in stops if isinstance(s, str) and s.strip()]


def _tool(tool: Any, i: int) -> dict[str, Any]:
    where = f"tools[{i}]"
    if not isinstance(tool, dict) or tool.get("type", "function") != "function" \
            or not isinstance(tool.get("function"), dict) or not tool["function"].get("name"):
        raise invalid(f"'{where}' must be {{type: function, function: {{name, ...}}}}; "
                      "Anthropic serves only function tools.", param=where)
    fn = tool["function"]
    out: dict[str, Any] = {"name": fn["name"]}
    if fn.get("description"):
        out["description"] = fn["description"]
    out["input_schema"] = fn.get("parameters") or {"type": "object", "properties": {}}
    return out


def _tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice == "auto":
        return {"type": "auto"}
    if choice == "required":
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    if isinstance(choice, dict) and choice.get("type") == "function" \
            and isinstance(choice.get("function"), dict) and choice["function"].get("name"):
        return {"type": "tool", "name": choice["function"]["name"]}
    raise invalid("'tool_choice' must be 'auto', 'required', 'none' or "
                  "{type: function, function: {name}}.", param="tool_choice")


def _conversation(messages: list[Any]) -> tuple[list[str], list[dict[str, Any]]]:
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    legacy_calls: dict[str, str] = {}  # function name -> id given to its legacy function_call
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        role = msg.get("role")
        if role in ("system", "developer"):
            text = _plain_text(msg.get("content"), where)
            if text.strip():
                system.append(text)
            continue
        if role == "user":
            blocks = _content_blocks(msg.get("content"), where, images=True)
        elif role == "assistant":
            blocks = _assistant_blocks(msg, where, i, legacy_calls)
        elif role == "tool":
            role = "user"
            call_id = msg.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                raise invalid(f"'{where}.tool_call_id' is required for a tool message.",
                              param=f"{where}.tool_call_id")
            blocks = [_tool_result(_tool_id(call_id), msg.get("content"), where)]
        elif role == "function":  # legacy function calling
            role = "user"
            name = msg.get("name") or ""
            call_id = legacy_calls.get(name)
            if call_id is None:
                raise invalid(f"'{where}' answers a function call that no assistant message made.",
                              param=where)
            blocks = [_tool_result(call_id, msg.get("content"), where)]
        else:
            raise invalid(f"'{where}.role' {role!r} cannot be sent to Anthropic.", param=f"{where}.role")
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})

    for turn in turns:
        if turn["role"] == "user":
            # Tool results must open the user turn that answers the tool calls.
            turn["content"].sort(key=lambda b: b["type"] != "tool_result")
    if turns and turns[-1]["role"] == "assistant":
        _trim_final_assistant(turns)
    if not turns or turns[0]["role"] != "user":
        turns.insert(0, {"role": "user", "content": [{"type": "text", "text": PLACEHOLDER_USER_TEXT}]})
    return system, turns


def _trim_final_assistant(turns: list[dict[str, Any]]) -> None:
    """A final assistant turn is a prefill; Anthropic rejects trailing whitespace in it."""
    blocks = turns[-1]["content"]
    if blocks and blocks[-1]["type"] == "text":
        text = blocks[-1]["text"].rstrip()
        if text:
            blocks[-1] = {"type": "text", "text": text}
        else:
            blocks.pop()
    if not blocks:
        turns.pop()


def _plain_text(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text":
            raise invalid(f"'{where}.content[{j}]' must be a text part here.", param=f"{where}.content")
        texts.append(str(part.get("text") or ""))
    return "\n".join(texts)


def _text_block(text: Any) -> list[dict[str, Any]]:
    # Anthropic rejects empty and whitespace-only text blocks.
    return [{"type": "text", "text": text}] if isinstance(text, str) and text.strip() else []


def _content_blocks(content: Any, where: str, *, images: bool) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return _text_block(content)
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            blocks += _text_block(part.get("text"))
        elif kind == "refusal":
            blocks += _text_block(part.get("refusal"))
        elif kind == "image_url" and images:
            blocks.append(_image_block(part.get("image_url"), at))
        else:
            raise invalid(f"'{at}' of type {kind!r} cannot be sent to Anthropic.", param=at)
    return blocks


def _image_block(image: Any, where: str) -> dict[str, Any]:
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise invalid(f"'{where}.image_url.url' must be a string.", param=where)
    match = _DATA_URL.match(url)
    if match:
        return {"type": "image", "source": {"type": "base64", "media_type": match["media"],
                                            "data": match["data"]}}
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise invalid(f"'{where}.image_url.url' must be an http(s) URL or a base64 data URL.", param=where)


def _tool_id(call_id: str) -> str:
    # Anthropic tool ids match ^[a-zA-Z0-9_-]+$; ids minted elsewhere may not.
    return _TOOL_ID_UNSAFE.sub("_", call_id)


def _assistant_blocks(msg: dict[str, Any], where: str, i: int,
                      legacy_calls: dict[str, str]) -> list[dict[str, Any]]:
    blocks = _content_blocks(msg.get("content"), where, images=False)
    for j, call in enumerate(msg.get("tool_calls") or []):
        at = f"{where}.tool_calls[{j}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not fn.get("name") or not call.get("id"):
            raise invalid(f"'{at}' must have an id and a function name.", param=at)
        blocks.append({"type": "tool_use", "id": _tool_id(str(call["id"])), "name": fn["name"],
                       "input": tool_arguments(fn.get("arguments"))})
    legacy = msg.get("function_call")
    if isinstance(legacy, dict) and legacy.get("name"):
        call_id = f"toolu_legacy_{i}"
        legacy_calls[legacy["name"]] = call_id
        blocks.append({"type": "tool_use", "id": call_id, "name": legacy["name"],
                       "input": tool_arguments(legacy.get("arguments"))})
    return blocks


def _tool_result(call_id: str, content: Any, where: str) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": call_id}
    if isinstance(content, str):
        if content:
            block["content"] = content
    elif content:
        parts = _content_blocks(content, where, images=True)
        if parts:
            block["content"] = parts
    return block


# -------------------------------------------------------------------------- response


def openai_error(err_type: str | None, message: str, status: int, provider: str) -> dict[str, Any]:
    """OpenAI's error JSON for an Anthropic error type (or, lacking one, an HTTP status)."""
    if err_type not in ERROR_TYPES:
        err_type = {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
                    413: "request_too_large", 429: "rate_limit_error", 529: "overloaded_error"}.get(
            status, "api_error" if status >= 500 or status < 400 else "invalid_request_error")
    kind, code = ERROR_TYPES[err_type]
    if err_type in ("authentication_error", "permission_error"):
        message = (f"The gateway's credential for provider '{provider}' was rejected by Anthropic "
                   f"(this is not about your own API key): {message}")
    if err_type == "not_found_error" and "model" in message.lower():
        code = "model_not_found"
    return error_json(message, kind, code)


def _error_from_body(raw: bytes, status: int, provider: str) -> dict[str, Any]:
    body = json_or_none(raw)
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        return openai_error(err.get("type"), str(err.get("message") or ""), status, provider)
    return openai_error(None, http_error_text(raw, status), status, provider)


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


def chat_completion(message: dict[str, Any], model: str, created: int) -> dict[str, Any]:
    """OpenAI chat.completion for an Anthropic message."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in message.get("content") or []:
        if block.get("type") == "text":
            texts.append(block.get("text") or "")
        elif block.get("type") == "tool_use":
            calls.append({"id": block.get("id"), "type": "function",
                          "function": {"name": block.get("name"),
                                       "arguments": dumps(block.get("input") or {})}})
    out_msg: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        out_msg["tool_calls"] = calls
    finish = STOP_REASONS.get(message.get("stop_reason") or "", "stop")
    return completion("chatcmpl-" + str(message.get("id") or ""), created, model, out_msg, finish,
                      usage(message.get("usage") or {}))


class AnthropicResponseStage(ConvertingResponseStage):
    """Anthropic JSON / SSE / error -> OpenAI chat JSON / SSE / error."""

    stream_media_type = "text/event-stream"

    def __init__(self, provider: Provider, *, stream: bool, include_usage: bool = False,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(stream=stream, include_usage=include_usage)
        self._model = provider.model
        self._provider = provider.name
        self._clock = clock
        self._parser = SseParser()
        self._id = ""
        self._created = 0
        self._usage: dict[str, Any] = {}
        self._tool_index: dict[int, int] = {}  # Anthropic block index -> OpenAI tool_calls index

    def error_body(self, raw: bytes) -> bytes:
        if self.status == 529:  # Anthropic's "overloaded"; OpenAI clients know 503
            self.status_override = 503
        return dumps(_error_from_body(raw, self.status, self._provider)).encode()

    def json_body(self, raw: bytes) -> bytes:
        message = json_or_none(raw)
        if not isinstance(message, dict) or message.get("type") == "error" or "content" not in message:
            if isinstance(message, dict) and isinstance(message.get("error"), dict):
                return self.error_body(raw)
            return self.unreadable(dumps(openai_error(
                "api_error", "Provider returned an unreadable response.", 502, self._provider)).encode())
        answer = chat_completion(message, self._model, int(self._clock()))
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
            return self._chunk({}, STOP_REASONS.get(reason, "stop"))
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
        if block.get("type") == "tool_use":
            position = self._tool_index.setdefault(index, len(self._tool_index))
            return self._chunk({"tool_calls": [{
                "index": position, "id": block.get("id"), "type": "function",
                "function": {"name": block.get("name"), "arguments": ""}}]})
        if block.get("type") == "text" and block.get("text"):
            return self._chunk({"content": block["text"]})
        return b""

    def _block_delta(self, index: int, delta: dict[str, Any]) -> bytes:
        kind = delta.get("type")
        if kind == "text_delta" and delta.get("text"):
            return self._chunk({"content": delta["text"]})
        if kind == "input_json_delta" and delta.get("partial_json") and index in self._tool_index:
            return self._chunk({"tool_calls": [{"index": self._tool_index[index],
                                                "function": {"arguments": delta["partial_json"]}}]})
        return b""  # thinking / signature deltas have no OpenAI chat equivalent
