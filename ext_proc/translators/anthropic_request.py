"""Anthropic Messages requests: the canonical OpenAI chat body as a ``POST /v1/messages`` body.

The conversation comes from ``anthropic_content``, tools from ``anthropic_tools``;
this module puts the body together: ``max_tokens`` defaulted because Anthropic
requires it, sampling parameters, extended thinking and the end user's id.

``reasoning_effort`` turns on extended thinking (``thinking: {type: enabled,
budget_tokens}``) with the budget of ``THINKING_BUDGETS``. Thinking tokens count
against ``max_tokens``, as reasoning counts against OpenAI's
``max_completion_tokens``: with no cap from the client, ``max_tokens`` is the
budget plus the usual default for the answer; with one, the cap stays and the
budget shrinks to fit below it (Anthropic wants it under ``max_tokens`` and at
least 1024). What thinking is documented not to combine with (a temperature
other than 1, top_p under 0.95, a forced tool, so also response_format) is a
400, as OpenAI's reasoning models answer. Two turns cannot think: a tool loop
under way (Anthropic wants the signed thinking that led to the calls sent back,
and OpenAI clients do not keep it) and an assistant prefill; they are answered
without thinking. Pure translation, no I/O.
"""

from __future__ import annotations

import hashlib
from typing import Any

from ext_proc.errors import invalid
from ext_proc.translators.anthropic_content import conversation
from ext_proc.translators.anthropic_tools import tooling
from ext_proc.translators.params import FieldRules, message_fields_dropped, reported

# What becomes of each OpenAI chat field (docs/providers.md has the table, and why). Refused:
# what would be missing from the answer. Dropped and reported: what only tunes sampling or
# serves OpenAI's own platform (storage, tiers, caching), the answer being an answer without it.
CHAT_RULES = FieldRules(
    mapped=frozenset({
        "messages", "model", "max_tokens", "max_completion_tokens", "stop", "stream", "stream_options",
        "temperature", "top_p", "tools", "tool_choice", "parallel_tool_calls", "functions", "function_call",
        "user", "safety_identifier", "response_format", "reasoning_effort"}),
    refused={
        "n": "Anthropic returns one choice per request; 'n' must be 1.",
        "logprobs": "Anthropic does not return log probabilities; 'logprobs' cannot be served.",
        "top_logprobs": "Anthropic does not return log probabilities; 'top_logprobs' cannot be served.",
        "modalities": "Anthropic answers in text only; 'modalities' can only be [\"text\"].",
        "audio": "Anthropic does not produce audio; 'audio' cannot be served.",
        "web_search_options": "Web search is not translated for Anthropic; 'web_search_options' cannot be served.",
    },
    dropped=frozenset({
        "frequency_penalty", "presence_penalty", "logit_bias", "seed", "service_tier", "store", "metadata",
        "prediction", "verbosity", "prompt_cache_key", "prompt_cache_retention"}),
)
# The keys of a message that reach Anthropic, by role; any other is reported as dropped.
_SENT = frozenset({"role", "content", "cache_control"})
MESSAGE_KEYS = {"system": _SENT, "developer": _SENT, "user": _SENT,
                "assistant": _SENT | {"tool_calls", "function_call"},
                "tool": _SENT | {"tool_call_id"}, "function": _SENT | {"name"}}

DEFAULT_MAX_TOKENS = 4096
# Anthropic accepts temperature in [0, 1]; OpenAI in [0, 2].
MAX_TEMPERATURE = 1.0
# reasoning_effort -> thinking budget. 1024 is Anthropic's documented minimum and
# 10000 the budget its documentation starts from; high + the default answer room
# (20000) stays under the smallest output limit of the models that think (32000).
THINKING_BUDGETS = {"minimal": 1024, "low": 4096, "medium": 10000, "high": 16000, "xhigh": 24000}
MIN_THINKING_BUDGET = 1024
# With thinking on, Anthropic takes only the default temperature and a top_p this high.
THINKING_TEMPERATURE = 1
MIN_THINKING_TOP_P = 0.95


def dropped_fields(chat: dict[str, Any]) -> tuple[str, ...]:
    """The client's fields Anthropic is not sent; raises the 400 of a refused one."""
    dropped = CHAT_RULES.check(chat)
    if _stop_list(chat.get("stop")) != _stop_sequences(chat.get("stop")):
        dropped.append("stop")
    return reported(dropped, message_fields_dropped(chat.get("messages") or [], MESSAGE_KEYS))


def messages_body(chat: dict[str, Any], model: str, stream: bool) -> dict[str, Any]:
    """The Anthropic Messages body for one canonical OpenAI chat body (``dropped_fields`` checked)."""
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
    _think(chat, body)
    user_id = _user_id(chat)
    if user_id:
        body["metadata"] = {"user_id": user_id}
    return body


def _think(chat: dict[str, Any], body: dict[str, Any]) -> None:
    """Extended thinking for ``reasoning_effort``, where Anthropic can take it."""
    effort = chat.get("reasoning_effort")
    if effort is None or effort == "none":
        return
    if effort not in THINKING_BUDGETS:
        raise invalid(f"'reasoning_effort' must be one of none, {', '.join(THINKING_BUDGETS)}.",
                      param="reasoning_effort")
    _check_thinking_compatible(chat, body)
    if not _can_think(body["messages"]):
        return
    cap_field = "max_completion_tokens" if chat.get("max_completion_tokens") else "max_tokens"
    cap = chat.get(cap_field)
    budget = min(THINKING_BUDGETS[effort], cap - 1) if cap else THINKING_BUDGETS[effort]
    if budget < MIN_THINKING_BUDGET:
        raise invalid(f"With 'reasoning_effort', '{cap_field}' must be above {MIN_THINKING_BUDGET}: on Anthropic "
                      f"it covers thinking (at least {MIN_THINKING_BUDGET} tokens) and the answer.", param=cap_field)
    body["max_tokens"] = cap or budget + DEFAULT_MAX_TOKENS
    body["thinking"] = {"type": "enabled", "budget_tokens": budget}


def _check_thinking_compatible(chat: dict[str, Any], body: dict[str, Any]) -> None:
    temperature, top_p = chat.get("temperature"), chat.get("top_p")
    if temperature is not None and temperature != THINKING_TEMPERATURE:
        raise invalid(f"With 'reasoning_effort', 'temperature' can only be {THINKING_TEMPERATURE} (Anthropic's "
                      "extended thinking does not take another).", param="temperature")
    if top_p is not None and top_p < MIN_THINKING_TOP_P:
        raise invalid(f"With 'reasoning_effort', 'top_p' must be at least {MIN_THINKING_TOP_P} on Anthropic.",
                      param="top_p")
    if (body.get("tool_choice") or {}).get("type") in ("any", "tool"):
        raise invalid("'reasoning_effort' cannot be combined with a forced tool ('tool_choice' required or a "
                      "function) or with 'response_format' on Anthropic: extended thinking does not allow "
                      "forced tool use.", param="reasoning_effort")


def _can_think(turns: list[dict[str, Any]]) -> bool:
    """False for a prefill, and for a tool loop under way (its signed thinking is not in the history)."""
    if turns[-1]["role"] == "assistant":
        return False
    last_assistant = next((t for t in reversed(turns) if t["role"] == "assistant"), None)
    return last_assistant is None or all(b["type"] != "tool_use" for b in last_assistant["content"])


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


def _stop_list(stop: Any) -> list[str]:
    return [stop] if isinstance(stop, str) else list(stop or [])


def _stop_sequences(stop: Any) -> list[str]:
    # Anthropic rejects empty and whitespace-only stop sequences ("each stop
    # sequence must contain non-whitespace"); they cannot be expressed. They are
    # dropped (and "stop" reported) rather than failing the whole request: "\n" is
    # a common stop, and the answer only runs on past it.
    return [s for s in _stop_list(stop) if isinstance(s, str) and s.strip()]
