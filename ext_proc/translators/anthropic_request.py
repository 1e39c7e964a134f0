"""Anthropic Messages requests: the canonical OpenAI chat body as a ``POST /v1/messages`` body.

The conversation comes from ``anthropic_content``, tools from ``anthropic_tools``;
this module puts the body together: ``max_tokens`` defaulted because Anthropic
requires it, sampling parameters, and the end user's id. Pure translation, no I/O.
"""

from __future__ import annotations

import hashlib
from typing import Any

from ext_proc.errors import invalid
from ext_proc.translators.anthropic_content import conversation
from ext_proc.translators.anthropic_tools import tooling

DEFAULT_MAX_TOKENS = 4096
# Anthropic accepts temperature in [0, 1]; OpenAI in [0, 2].
MAX_TEMPERATURE = 1.0


def messages_body(chat: dict[str, Any], model: str, stream: bool) -> dict[str, Any]:
    """The Anthropic Messages body for one canonical OpenAI chat body."""
    n = chat.get("n")
    if n is not None and n != 1:
        raise invalid("Anthropic returns one choice per request; 'n' must be 1.", param="n")
    system, messages = conversation(chat.get("messages") or [])
    body: dict[str, Any] = {"model": model, "messages": messages}
    if system:
        body["system"] = system
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
    body.update(tooling(chat, messages))
    user_id = _user_id(chat)
    if user_id:
        body["metadata"] = {"user_id": user_id}
    return body


def _user_id(chat: dict[str, Any]) -> str | None:
    """The end user as an opaque, stable id: the SHA-256 hex of what the client sent.

    Anthropic wants a uuid or hash there and refuses personal data such as an
    e-mail address, which is what clients often put in OpenAI's ``user``. The
    hash still tells one user from another (per-user abuse tracking keeps
    working) without the user's identity leaving the gateway.
    """
    for field in ("safety_identifier", "user"):  # the first is OpenAI's successor to the second
        value = chat.get(field)
        if isinstance(value, str) and value:
            return hashlib.sha256(value.encode()).hexdigest()
    return None


def _stop_sequences(stop: Any) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    # Anthropic rejects empty and whitespace-only stop sequences ("each stop
    # sequence must contain non-whitespace"); they cannot be expressed, so they
    # are dropped rather than failing the whole request.
    return [s for s in stops if isinstance(s, str) and s.strip()]
