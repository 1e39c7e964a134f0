"""Fake Ollama native API: ``/api/chat``, ``/api/embed``, ``/api/tags`` and ``/``."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Iterator
from typing import Any

from aiohttp import web

from .base import FakeProvider, RequestError, ndjson_line, recorded
from .content import Reply, compose_reply, embed, last_user_text, prompt_tokens, text_of, tool_arguments

# Pretend each token takes this long, so durations are plausible and deterministic.
_NS_PER_TOKEN = 1_000_000


class FakeOllama(FakeProvider):
    """Serves one model; any other model name gets Ollama's 404.

    ``omit_counts`` names token counts its answers leave out, as real Ollama
    does: its JSON drops a zero count, so an answer whose prompt came whole
    from its cache has no ``prompt_eval_count``.
    """

    label = "fake-ollama"
    default_model = "llama3.2"
    stream_content_type = "application/x-ndjson"

    def __init__(
        self,
        *,
        api_key: str | None = None,
        model: str | None = None,
        chunk_delay: float = 0.0,
        omit_counts: Iterable[str] = (),
    ) -> None:
        # Ollama itself takes no key; one can still be required, as behind a proxy.
        super().__init__(api_key=api_key, model=model, chunk_delay=chunk_delay)
        self.omit_counts = frozenset(omit_counts)  # "prompt_eval_count", "eval_count"

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/", self._root),
            web.post("/api/chat", self._chat),
            web.post("/api/embed", self._embed),
            web.get("/api/tags", self._tags),
        ]

    # -- wire format hooks ------------------------------------------------------

    def error_response(self, error: RequestError) -> web.Response:
        return web.json_response({"error": error.message}, status=error.status)

    def check_credentials(self, request: web.Request) -> None:
        if self.api_key is None:
            return
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            raise RequestError(401, "unauthorized")

    def stream_error_event(self, error_type: str, message: str) -> bytes:
        return ndjson_line({"error": f"{error_type}: {message}"})

    def unknown_path_response(self, request: web.Request, exc: web.HTTPException) -> web.Response:
        if exc.status != 404:
            return super().unknown_path_response(request, exc)
        # Ollama's HTTP router answers a path it does not serve in plain text (a base_url ending in /v1).
        return web.Response(status=404, text="404 page not found", content_type="text/plain")

    # -- handlers ---------------------------------------------------------------

    async def _root(self, request: web.Request) -> web.StreamResponse:
        # Health checkers commonly probe "/", which real Ollama answers in plain text.
        return await self.send_response(request, web.Response(text="Ollama is running"))

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = _body(request)
        model = self._require_model(body)
        messages = _messages(body)
        tool = _tool_to_call(body.get("tools"), messages)
        if tool is not None:  # a model that supports tools calls one right after a user turn
            calls = [{"function": {"name": tool["name"],
                                   "arguments": tool_arguments(tool.get("parameters"), last_user_text(messages))}}]
            reply = Reply(("",) * max(1, len(str(calls)) // 4), truncated=False)  # the call's tokens, counted
        else:
            calls = []
            reply = compose_reply(self.label, last_user_text(messages), _num_predict(body))
        counts = self._without_omitted(_counts(prompt_tokens(text_of(m.get("content")) for m in messages), reply))
        if body.get("stream", True) is not False:  # Ollama streams unless told not to
            return await self.send_stream(request, _chat_lines(model, reply, counts, calls))
        final = {**_line(model, reply.text, calls), **counts}
        return await self.send_json(request, final)

    async def _embed(self, request: web.Request) -> web.StreamResponse:
        body = _body(request)
        model = self._require_model(body)
        inputs = _inputs(body.get("input"))
        return await self.send_json(request, self._without_omitted({
            "model": model,
            "embeddings": [embed(text) for text in inputs],
            "total_duration": _NS_PER_TOKEN,
            "load_duration": 0,
            "prompt_eval_count": prompt_tokens(inputs),
        }))

    async def _tags(self, request: web.Request) -> web.StreamResponse:
        name = _full_name(self.model)
        entry = {
            "name": name,
            "model": name,
            "modified_at": "2024-09-25T00:00:00Z",
            "size": 0,
            "digest": hashlib.sha256(name.encode()).hexdigest(),
            "details": {"format": "gguf", "family": "fake", "parameter_size": "0B"},
        }
        return await self.send_json(request, {"models": [entry]})

    def _without_omitted(self, answer: dict[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in answer.items() if key not in self.omit_counts}

    def _require_model(self, body: dict[str, Any]) -> str:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise RequestError(400, "model is required")
        if _full_name(model) != _full_name(self.model):
            raise RequestError(404, f"model '{model}' not found")
        return model


# -- request parsing ------------------------------------------------------------------


def _body(request: web.Request) -> dict[str, Any]:
    body = recorded(request).body
    if not isinstance(body, dict):
        raise RequestError(400, "invalid request body: expected a JSON object")
    return body


def _full_name(model: str) -> str:
    # Ollama treats "llama3.2" and "llama3.2:latest" as the same model.
    return model if ":" in model else f"{model}:latest"


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages") or []
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise RequestError(400, "invalid messages: expected an array of message objects")
    return messages


def _num_predict(body: dict[str, Any]) -> int | None:
    options = body.get("options")
    value = options.get("num_predict") if isinstance(options, dict) else None
    # Ollama reads -1 (and other non-positive values) as "no limit".
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _inputs(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    raise RequestError(400, "invalid input type")


# -- response building ---------------------------------------------------------------


def _tool_to_call(tools: Any, messages: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The function the fake "decides" to call: the first offered, only right after a user turn."""
    if tools is None:
        return None
    if not isinstance(tools, list) or not all(isinstance(t, dict) and isinstance(t.get("function"), dict)
                                              and isinstance(t["function"].get("name"), str) for t in tools):
        raise RequestError(400, "invalid tools: expected an array of {type: function, function: {name, ...}}")
    if not tools or not messages or messages[-1].get("role") != "user":
        return None
    function: dict[str, Any] = tools[0]["function"]
    return function


def _line(model: str, content: str, calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:  # Ollama gives a call's arguments as an object, and no call id
        message["tool_calls"] = calls
    return {
        "model": model,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime()),
        "message": message,
        "done": False,
    }


def _counts(prompt_count: int, reply: Reply) -> dict[str, Any]:
    """The fields only the final object carries."""
    prompt_ns, eval_ns = prompt_count * _NS_PER_TOKEN, reply.completion_tokens * _NS_PER_TOKEN
    return {
        "done": True,
        "done_reason": "length" if reply.truncated else "stop",
        "total_duration": prompt_ns + eval_ns,
        "load_duration": 0,
        "prompt_eval_count": prompt_count,
        "prompt_eval_duration": prompt_ns,
        "eval_count": reply.completion_tokens,
        "eval_duration": eval_ns,
    }


def _chat_lines(model: str, reply: Reply, counts: dict[str, Any],
                calls: list[dict[str, Any]]) -> Iterator[bytes]:
    if calls:  # Ollama streams a tool call whole, in one line
        yield ndjson_line(_line(model, "", calls))
    else:
        for chunk in reply.chunks:
            yield ndjson_line(_line(model, chunk))
    yield ndjson_line({**_line(model, ""), **counts})
