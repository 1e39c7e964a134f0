"""Anthropic tools: what the model is offered and how its choice is constrained.

The client's ``tools`` (or legacy ``functions``) and ``tool_choice`` (or
``function_call``) become Anthropic's ``tools`` and ``tool_choice``. The request
also decides the answer's shape (``AnswerShape``): legacy clients read
``function_call`` rather than ``tool_calls``. Pure translation, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ext_proc.errors import invalid


@dataclass(frozen=True)
class AnswerShape:
    """Where the answer's tool_use blocks go in OpenAI's shape; set by the request."""

    legacy_functions: bool = False  # the one call is ``message.function_call``, finish "function_call"

    @classmethod
    def of(cls, chat: dict[str, Any]) -> AnswerShape:
        return cls(legacy_functions=bool(chat.get("functions")) and not chat.get("tools"))


def tooling(chat: dict[str, Any], messages: list[dict[str, Any]]) -> dict[str, Any]:
    """``tools`` and ``tool_choice`` for the body (none when nothing is offered or used)."""
    tools, choice = _offered(chat)
    if not tools:
        return _declared_tools(messages)
    return {"tools": tools, **({"tool_choice": choice} if choice else {})}


def _offered(chat: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The client's tools and tool_choice, from ``tools`` or the legacy ``functions``."""
    if chat.get("functions"):
        if chat.get("tools"):
            raise invalid("Send 'tools' or the legacy 'functions', not both.", param="functions")
        tools = [_legacy_function(f, i) for i, f in enumerate(chat["functions"])]
        choice = _function_call(chat.get("function_call"))
        one_call = True  # the legacy API answers with at most one function_call
    else:
        tools = [_tool(t, i) for i, t in enumerate(chat.get("tools") or [])]
        choice = _tool_choice(chat.get("tool_choice")) if tools else None
        one_call = chat.get("parallel_tool_calls") is False
    if tools and one_call and (choice or {}).get("type") != "none":
        choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
    return tools, choice


def _legacy_function(fn: Any, i: int) -> dict[str, Any]:
    if not isinstance(fn, dict) or not fn.get("name"):
        raise invalid(f"'functions[{i}]' must be {{name, description?, parameters?}}.", param=f"functions[{i}]")
    return _function(fn)


def _function_call(choice: Any) -> dict[str, Any] | None:
    if choice is None or choice == "auto":
        return None if choice is None else {"type": "auto"}
    if choice == "none":
        return {"type": "none"}
    if isinstance(choice, dict) and choice.get("name"):
        return {"type": "tool", "name": choice["name"]}
    raise invalid("'function_call' must be 'auto', 'none' or {name}.", param="function_call")


def _tool(tool: Any, i: int) -> dict[str, Any]:
    where = f"tools[{i}]"
    if not isinstance(tool, dict) or tool.get("type", "function") != "function" \
            or not isinstance(tool.get("function"), dict) or not tool["function"].get("name"):
        raise invalid(f"'{where}' must be {{type: function, function: {{name, ...}}}}; "
                      "Anthropic serves only function tools.", param=where)
    return _function(tool["function"])


def _function(fn: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"name": fn["name"]}
    if fn.get("description"):
        out["description"] = fn["description"]
    out["input_schema"] = fn.get("parameters") or _open_schema()
    return out


def _open_schema() -> dict[str, Any]:
    """The input schema of a tool whose parameters are unknown or unconstrained."""
    return {"type": "object", "properties": {}}


def _declared_tools(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """Tools for a conversation that used some but offers none now.

    Anthropic refuses tool_use / tool_result blocks in a request without tools.
    Rewriting past rounds as text would lose which result answered which call and
    invite the model to imitate calls in prose; declaring the tools it already
    used (with an open object schema, the only thing known of them) keeps the
    rounds as they are, and ``tool_choice: none`` keeps the model from calling a
    tool this client no longer offers.
    """
    names = [block["name"] for turn in messages if turn["role"] == "assistant"
             for block in turn["content"] if block["type"] == "tool_use"]
    if not names:
        return {}
    return {"tools": [{"name": name, "input_schema": _open_schema()} for name in dict.fromkeys(names)],
            "tool_choice": {"type": "none"}}


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
