"""Ollama's native API (``type: ollama``).

Requests: the canonical OpenAI chat body becomes ``POST /api/chat`` (sampling
parameters under ``options``, images as base64, tool-call arguments as
objects, ``stream`` always explicit because Ollama streams by default); an
embeddings body becomes ``POST /api/embed``. Responses: Ollama's JSON, its
NDJSON stream and its ``{"error": "..."}`` bodies become OpenAI chat
completions, SSE chunks, embeddings lists and error JSON. ``reasoning_effort``
becomes ``think`` and the model's ``thinking`` comes back as
``reasoning_content``. Pure translation, no I/O.
"""

from __future__ import annotations

import base64
import re
import struct
import time
import uuid
from collections.abc import Callable
from typing import Any

from ext_proc.client_request import ClientRequest
from ext_proc.errors import error_json, invalid
from ext_proc.outcomes import StreamOutcome
from ext_proc.runtime import Provider
from ext_proc.translators.base import (
    ConvertingResponseStage,
    ProviderRequest,
    ResponseStage,
    Translator,
    dumps,
    http_error_text,
    json_or_none,
    provider_not_found,
    tool_arguments,
)
from ext_proc.translators.openai_chunks import (
    chunk,
    completion,
    error_event,
    stream_end,
)
from ext_proc.translators.params import FieldRules, message_fields_dropped, reported
from hapax.wire import Handler

PATHS = {Handler.CHAT: "/api/chat", Handler.COMPLETION: "/api/chat", Handler.EMBEDDINGS: "/api/embed"}
FINISH_REASONS = {"stop": "stop", "length": "length"}
# reasoning_effort -> Ollama's ``think``: a level for models that have levels
# (gpt-oss), which the others read as "think"; false turns thinking off.
THINK = {"none": False, "minimal": "low", "low": "low", "medium": "medium", "high": "high", "xhigh": "high"}
# What a 404 for the path says of the base_url (docs/configuration.md: base_url).
BASE_URL_CONVENTION = ("an ollama-type base_url has no /v1 or /api: the gateway appends /api/chat, /api/embed "
                       "and /api/tags (for Ollama's OpenAI-compatible /v1, use type: openai)")
_DATA_URL = re.compile(r"^data:[^,]*;base64,(?P<data>.*)$", re.DOTALL)

# What becomes of each OpenAI field (docs/providers.md has the table, and why). Refused: what
# would be missing from the answer, and the legacy functions (Ollama serves tools). Dropped and
# reported: what Ollama has no word for and the answer does without.
CHAT_RULES = FieldRules(
    mapped=frozenset({
        "messages", "model", "frequency_penalty", "presence_penalty", "max_tokens", "max_completion_tokens",
        "seed", "stop", "stream", "stream_options", "temperature", "top_p", "tools", "tool_choice",
        "response_format", "reasoning_effort"}),
    refused={
        "n": "Ollama returns one choice per request; 'n' must be 1.",
        "logprobs": "Log probabilities are not translated for Ollama; 'logprobs' cannot be served.",
        "top_logprobs": "Log probabilities are not translated for Ollama; 'top_logprobs' cannot be served.",
        "modalities": "Ollama answers in text only; 'modalities' can only be [\"text\"].",
        "audio": "Ollama does not produce audio; 'audio' cannot be served.",
        "web_search_options": "Ollama has no web search; 'web_search_options' cannot be served.",
        "functions": "Ollama serves function calling as 'tools'; send 'tools' rather than the legacy 'functions'.",
        "function_call": "Ollama serves function calling as 'tools'; send 'tool_choice' rather than the legacy "
                         "'function_call'.",
    },
    dropped=frozenset({
        "logit_bias", "parallel_tool_calls", "user", "safety_identifier", "service_tier", "store", "metadata",
        "prediction", "verbosity", "prompt_cache_key", "prompt_cache_retention"}),
)
EMBEDDINGS_RULES = FieldRules(mapped=frozenset({"input", "model", "dimensions", "encoding_format"}),
                              dropped=frozenset({"user"}))
# The keys of a message that reach Ollama, by role; any other is reported as dropped. A cache
# breakpoint needs no translation: Ollama reuses what it computed for a prompt's shared prefix
# on its own.
_SENT = frozenset({"role", "content", "cache_control"})
MESSAGE_KEYS = {"system": _SENT, "developer": _SENT, "user": _SENT,
                "assistant": _SENT | {"tool_calls", "function_call"},
                "tool": _SENT | {"tool_call_id"}, "function": _SENT | {"name"}}


def _new_id() -> str:
    return uuid.uuid4().hex


class OllamaTranslator(Translator):
    type = "ollama"
    handlers = frozenset(PATHS)

    def __init__(self, clock: Callable[[], float] = time.time,
                 new_id: Callable[[], str] = _new_id) -> None:
        self._clock = clock
        self._new_id = new_id

    def request(self, req: ClientRequest, provider: Provider) -> ProviderRequest:
        if req.handler not in PATHS:
            raise invalid(f"Provider '{provider.name}' (ollama) does not serve {req.handler}",
                          code="unsupported_handler")
        if req.handler == Handler.EMBEDDINGS:
            dropped = reported(EMBEDDINGS_RULES.check(req.body))
            body = embed_body(req.body, provider.model)
        else:
            dropped = chat_dropped(req.body)  # first: a refused field is the answer
            body = chat_body(req.body, provider.model, req.stream)
        # Ollama has no keys; a key is only meaningful for an authenticating proxy in front.
        headers = {"content-type": "application/json"}
        if provider.api_key:
            headers["authorization"] = f"Bearer {provider.api_key}"
        return ProviderRequest(path=provider.base_path + PATHS[req.handler],
                               body=dumps(body).encode(), set_headers=headers, dropped=dropped)

    def response(self, req: ClientRequest, provider: Provider) -> ResponseStage:
        embeddings = req.handler == Handler.EMBEDDINGS
        return OllamaResponseStage(
            provider, stream=req.stream and not embeddings, include_usage=req.include_usage, embeddings=embeddings,
            base64_embeddings=embeddings and req.body.get("encoding_format") == "base64",
            clock=self._clock, new_id=self._new_id)

    def health_probe(self, provider: Provider) -> ProviderRequest:
        headers = {"authorization": f"Bearer {provider.api_key}"} if provider.api_key else {}
        return ProviderRequest(path=provider.base_path + "/api/tags", body=b"", set_headers=headers)


# --------------------------------------------------------------------------- request


def embed_body(body: dict[str, Any], model: str) -> dict[str, Any]:
    value = body.get("input")
    if isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        out = {"model": model, "input": value}
        if body.get("dimensions") is not None:
            out["dimensions"] = body["dimensions"]  # Ollama truncates the vectors to it, as OpenAI does
        return out
    raise invalid("Ollama embeds text only: 'input' must be a string or an array of strings, "
                  "not token arrays.", param="input")


def chat_dropped(chat: dict[str, Any]) -> tuple[str, ...]:
    """The client's fields Ollama is not sent, or not as asked; raises the 400 of a refused one."""
    dropped = CHAT_RULES.check(chat)
    if _forces_a_call(chat.get("tool_choice")):
        dropped.append("tool_choice")
    return reported(dropped, message_fields_dropped(chat.get("messages") or [], MESSAGE_KEYS))


def _forces_a_call(choice: Any) -> bool:
    return choice == "required" or isinstance(choice, dict)


def chat_body(chat: dict[str, Any], model: str, stream: bool) -> dict[str, Any]:
    """Ollama's /api/chat body for one canonical OpenAI chat body (``chat_dropped`` checked)."""
    body: dict[str, Any] = {"model": model, "messages": _messages(chat.get("messages") or []),
                            "stream": bool(stream)}
    options: dict[str, Any] = {}
    for key in ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty"):
        if chat.get(key) is not None:
            options[key] = chat[key]
    max_tokens = chat.get("max_completion_tokens") or chat.get("max_tokens")
    if max_tokens:
        options["num_predict"] = max_tokens
    stop = chat.get("stop")
    if stop:
        options["stop"] = [stop] if isinstance(stop, str) else list(stop)
    if options:
        body["options"] = options
    tools = _offered_tools(chat.get("tools") or [], chat.get("tool_choice"))
    if tools:
        body["tools"] = tools
    effort = chat.get("reasoning_effort")
    if effort is not None:
        if effort not in THINK:
            raise invalid(f"'reasoning_effort' must be one of {', '.join(THINK)}.", param="reasoning_effort")
        body["think"] = THINK[effort]
    fmt = chat.get("response_format")
    if isinstance(fmt, dict):
        if fmt.get("type") == "json_object":
            body["format"] = "json"
        elif fmt.get("type") == "json_schema":
            schema = (fmt.get("json_schema") or {}).get("schema")
            body["format"] = schema if isinstance(schema, dict) else "json"
    return body


def _offered_tools(tools: list[Any], choice: Any) -> list[Any]:
    """Ollama takes OpenAI-shaped tools but has no tool_choice.

    "none" is honoured by offering no tools. A forced function is offered alone, so
    no other can be called; that a call is made at all (it, or any tool for
    "required") cannot be expressed, and ``tool_choice`` is reported as dropped.
    """
    if choice == "none":
        return []
    name = ((choice.get("function") or {}).get("name")) if isinstance(choice, dict) else None
    forced = [t for t in tools if isinstance(t, dict) and (t.get("function") or {}).get("name") == name]
    return forced if name and forced else tools


def _messages(messages: list[Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    tool_names: dict[str, str] = {}  # tool_call id -> function name, for tool results
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        role = msg.get("role")
        text, images = _content(msg.get("content"), where)
        if role in ("system", "developer"):
            item: dict[str, Any] = {"role": "system", "content": text}
        elif role == "user":
            item = {"role": "user", "content": text}
        elif role == "assistant":
            item = {"role": "assistant", "content": text}
            calls = []
            for call in msg.get("tool_calls") or []:
                fn = call.get("function") if isinstance(call, dict) else None
                if not isinstance(fn, dict) or not fn.get("name"):
                    raise invalid(f"'{where}.tool_calls' entries need a function name.",
                                  param=f"{where}.tool_calls")
                if call.get("id"):
                    tool_names[str(call["id"])] = fn["name"]
                calls.append({"function": {"name": fn["name"], "arguments": tool_arguments(fn.get("arguments"))}})
            legacy = msg.get("function_call")
            if isinstance(legacy, dict) and legacy.get("name"):
                calls.append({"function": {"name": legacy["name"],
                                           "arguments": tool_arguments(legacy.get("arguments"))}})
            if calls:
                item["tool_calls"] = calls
        elif role in ("tool", "function"):
            item = {"role": "tool", "content": text}
            name = msg.get("name") if role == "function" else tool_names.get(str(msg.get("tool_call_id")))
            if name:
                item["tool_name"] = name
        else:
            raise invalid(f"'{where}.role' {role!r} cannot be sent to Ollama.", param=f"{where}.role")
        if images:
            item["images"] = images
        out.append(item)
    return out


def _content(content: Any, where: str) -> tuple[str, list[str]]:
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    texts: list[str] = []
    images: list[str] = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            texts.append(str(part.get("text") or ""))
        elif kind == "refusal":
            texts.append(str(part.get("refusal") or ""))
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            match = _DATA_URL.match(url) if isinstance(url, str) else None
            if not match:
                raise invalid(f"'{at}': Ollama takes images only as base64 data URLs "
                              "(data:image/...;base64,...), not links.", param=at)
            images.append(match["data"])
        else:
            raise invalid(f"'{at}' of type {kind!r} cannot be sent to Ollama.", param=at)
    return "\n".join(texts), images


# -------------------------------------------------------------------------- response


def openai_error(message: str, status: int, provider: str, key_source: str = "") -> dict[str, Any]:
    """OpenAI's error JSON for an Ollama error message and HTTP status (a 404 is provider_not_found's).
    ``key_source`` says where the provider's key comes from (runtime Provider.api_key_source)."""
    code: str | None = None
    if status in (401, 403):
        kind = "authentication_error" if status == 401 else "permission_error"
        source = f" ({key_source})" if key_source else ""
        message = (f"The gateway's credential for provider '{provider}'{source} was rejected "
                   f"(this is not about your own API key): {message}")
    elif status == 429:
        kind, code = "rate_limit_exceeded", "rate_limit_exceeded"
    elif 400 <= status < 500:
        kind = "invalid_request_error"
    else:
        kind = "server_error"
    return error_json(message, kind, code)


def _own_error_message(raw: bytes) -> str | None:
    """The message of Ollama's own error JSON (``{"error": ...}``), or None for any other body."""
    body = json_or_none(raw)
    if isinstance(body, dict) and body.get("error") is not None:
        err = body["error"]
        return str(err.get("message") if isinstance(err, dict) else err)
    return None


def _error_message(raw: bytes, status: int) -> str:
    message = _own_error_message(raw)
    return message if message is not None else http_error_text(raw, status)


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def usage(body: dict[str, Any]) -> dict[str, int]:
    """OpenAI usage from Ollama's counts, with only the counts Ollama gave.

    Ollama's JSON leaves a zero count out (a prompt served whole from its cache
    has no ``prompt_eval_count``), so a missing count is unknown, not zero: it is
    left out here, and so is ``total_tokens``, rather than claimed as 0. The
    metrics count it as unknown (``hapax_usage_unknown_total``), not as 0 tokens.
    """
    prompt, completion = _count(body.get("prompt_eval_count")), _count(body.get("eval_count"))
    out: dict[str, int] = {}
    if prompt is not None:
        out["prompt_tokens"] = prompt
    if completion is not None:
        out["completion_tokens"] = completion
    if prompt is not None and completion is not None:
        out["total_tokens"] = prompt + completion
    return out


def _embedding(vector: list[float], as_base64: bool) -> Any:
    if not as_base64:
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


class OllamaResponseStage(ConvertingResponseStage):
    """Ollama JSON / NDJSON / error -> OpenAI chat or embeddings JSON / SSE / error."""

    stream_media_type = "application/x-ndjson"

    def __init__(self, provider: Provider, *, stream: bool, include_usage: bool = False, embeddings: bool = False,
                 base64_embeddings: bool = False, clock: Callable[[], float] = time.time,
                 new_id: Callable[[], str] = _new_id) -> None:
        super().__init__(stream=stream, include_usage=include_usage)
        self._model = provider.model
        self._provider = provider.name
        self._provider_config = provider
        self._embeddings = embeddings
        self._base64 = base64_embeddings
        self._clock = clock
        token = new_id()
        self._id = "chatcmpl-" + token[:24]
        self._call_prefix = "call_" + token[:20]
        self._created: int | None = None
        self._calls = 0
        self._tail = b""
        self._started = False

    def error_body(self, raw: bytes) -> bytes:
        if self.status == 404:  # the gateway's base_url or model, not the client's request
            self.status_override = 502
            return dumps(provider_not_found(self._provider_config, BASE_URL_CONVENTION, raw,
                                            _own_error_message(raw))).encode()
        return dumps(openai_error(_error_message(raw, self.status), self.status, self._provider,
                                  self._provider_config.api_key_source)).encode()

    def json_body(self, raw: bytes) -> bytes:
        body = json_or_none(raw)
        if isinstance(body, dict) and body.get("error") is not None:
            status = self.status if self.status >= 400 else 500
            return dumps(openai_error(_error_message(raw, status), status, self._provider,
                                      self._provider_config.api_key_source)).encode()
        if self._embeddings and isinstance(body, dict) and isinstance(body.get("embeddings"), list):
            return dumps(self._embeddings_list(body)).encode()
        if not self._embeddings and isinstance(body, dict) and isinstance(body.get("message"), dict):
            return dumps(self._chat_completion(body)).encode()
        return self.unreadable(
            dumps(openai_error("Provider returned an unreadable response.", 502, self._provider)).encode())

    # ---- JSON

    def _now(self) -> int:
        if self._created is None:
            self._created = int(self._clock())
        return self._created

    def _tool_calls(self, calls: list[Any]) -> list[dict[str, Any]]:
        out = []
        for call in calls:
            fn = call.get("function") if isinstance(call, dict) else None
            if not isinstance(fn, dict):
                continue
            args = fn.get("arguments")
            out.append({"index": self._calls, "id": f"{self._call_prefix}_{self._calls}", "type": "function",
                        "function": {"name": fn.get("name"),
                                     "arguments": args if isinstance(args, str) else dumps(args or {})}})
            self._calls += 1
        return out

    def _finish_reason(self, body: dict[str, Any]) -> str:
        if self._calls:
            return "tool_calls"
        return FINISH_REASONS.get(body.get("done_reason") or "stop", "stop")

    def _chat_completion(self, body: dict[str, Any]) -> dict[str, Any]:
        msg = body["message"]
        message: dict[str, Any] = {"role": "assistant", "content": msg.get("content") or ""}
        if msg.get("thinking"):
            message["reasoning_content"] = msg["thinking"]  # where OpenAI-compatible clients read reasoning
        calls = self._tool_calls(msg.get("tool_calls") or [])
        if calls:
            for call in calls:
                del call["index"]
            message["tool_calls"] = calls
            message["content"] = msg.get("content") or None
        self.usage = usage(body)
        return completion(self._id, self._now(), self._model, message, self._finish_reason(body), self.usage)

    def _embeddings_list(self, body: dict[str, Any]) -> dict[str, Any]:
        prompt = _count(body.get("prompt_eval_count"))  # unknown when missing, as in usage()
        self.usage = {} if prompt is None else {"prompt_tokens": prompt, "total_tokens": prompt}
        return {"object": "list",
                "data": [{"object": "embedding", "index": i, "embedding": _embedding(v, self._base64)}
                         for i, v in enumerate(body["embeddings"])],
                "model": self._model,
                "usage": self.usage}

    # ---- NDJSON -> SSE

    def stream_piece(self, piece: bytes, end_of_stream: bool) -> bytes:
        *lines, self._tail = (self._tail + piece).split(b"\n")
        if end_of_stream:
            lines.append(self._tail)
            self._tail = b""
        out = bytearray()
        for line in lines:
            if self.stream_outcome:
                break
            if line.strip():
                out += self._line(line)
        if end_of_stream and not self.stream_outcome:
            self.stream_outcome = StreamOutcome.ENDED_EARLY
            out += error_event("provider stream ended unexpectedly")
        return bytes(out)

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        return chunk(self._id, self._now(), self._model, delta, finish_reason)

    def _line(self, line: bytes) -> bytes:
        body = json_or_none(line)
        if not isinstance(body, dict):
            self.stream_outcome = StreamOutcome.PROVIDER_ERROR
            return error_event("provider sent an unreadable stream line")
        if body.get("error") is not None:
            self.stream_outcome = StreamOutcome.PROVIDER_ERROR
            err = body["error"]
            return error_event(str(err.get("message") if isinstance(err, dict) else err))
        out = bytearray()
        if not self._started:
            self._started = True
            out += self._chunk({"role": "assistant", "content": ""})
        msg = body.get("message") or {}
        if msg.get("thinking"):
            out += self._chunk({"reasoning_content": msg["thinking"]})
        if msg.get("content"):
            out += self._chunk({"content": msg["content"]})
        calls = self._tool_calls(msg.get("tool_calls") or [])
        if calls:
            out += self._chunk({"tool_calls": calls})
        if body.get("done"):
            self.stream_outcome = StreamOutcome.COMPLETED
            self.usage = usage(body)
            out += self._chunk({}, self._finish_reason(body))
            out += stream_end(self._id, self._now(), self._model, self.usage if self.include_usage else None)
        return bytes(out)
