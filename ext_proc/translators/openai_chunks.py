"""OpenAI's chat answer, error and stream shapes, for stages that convert into them.

Every converting response stage writes these same shapes; building them in one
place keeps what a client sees identical whichever provider answered. Only the
values (ids, deltas, usage) are the provider's.
"""

from __future__ import annotations

from typing import Any

from ext_proc.errors import error_json
from ext_proc.sse import encode
from ext_proc.translators.base import dumps

# The sentinel OpenAI ends a successful stream with.
DONE = encode("[DONE]")


def error_event(message: str, kind: str = "server_error", code: str | None = None) -> bytes:
    """An error as the SSE event that ends a stream in place of [DONE]."""
    return encode(dumps(error_json(message, kind, code)))


def completion(id_: str, created: int, model: str, message: dict[str, Any],
               finish_reason: str, usage: dict[str, Any]) -> dict[str, Any]:
    """A complete ``chat.completion`` with its single choice."""
    return {"id": id_, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
            "usage": usage}


def chunk(id_: str, created: int, model: str, delta: dict[str, Any],
          finish_reason: str | None = None) -> bytes:
    """One ``chat.completion.chunk`` SSE event carrying ``delta`` for the single choice."""
    return encode(dumps({"id": id_, "object": "chat.completion.chunk", "created": created, "model": model,
                         "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                      "finish_reason": finish_reason}]}))


def stream_end(id_: str, created: int, model: str, usage: dict[str, Any] | None) -> bytes:
    """[DONE], after the usage chunk (no choices) when the client asked for it (``include_usage``)."""
    if usage is None:
        return DONE
    return encode(dumps({"id": id_, "object": "chat.completion.chunk", "created": created, "model": model,
                         "choices": [], "usage": usage})) + DONE
