"""Anthropic tools: what the model is offered and how its choice is constrained.

The client's ``tools`` (or legacy ``functions``) and ``tool_choice`` (or
``function_call``) become Anthropic's ``tools`` and ``tool_choice``.

``response_format`` is honoured with the known technique: an extra tool,
``json_response``, whose input schema is the client's schema (any object for
``json_object``), and a ``tool_choice`` that makes the model call it. Its input
is then the answer's content. With tools of the client's own, the model may call
one of those or answer in the format (``tool_choice: any``), as OpenAI allows. A
format this cannot express (a schema whose root is not an object) is a 400:
never a 200 that ignored it.

The request also decides the answer's shape (``AnswerShape``): legacy clients
read ``function_call`` rather than ``tool_calls``. Pure translation, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ext_proc.errors import invalid
from ext_proc.translators.anthropic_content import cache_control

# The tool whose input is the answer, for response_format.
ANSWER_TOOL = "json_response"


@dataclass(frozen=True)
class AnswerShape:
    """Where the answer's tool_use blocks go in OpenAI's shape; set by the request."""

    legacy_functions: bool = False  # the one call is ``message.function_call``, finish "function_call"
    answer_tool: str | None = None  # this tool's input is the content (response_format), finish "stop"

    @classmethod
    def of(cls, chat: dict[str, Any]) -> AnswerShape:
        fmt = chat.get("response_format")
        formatted = isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema")
        return cls(legacy_functions=bool(chat.get("functions")) and not chat.get("tools"),
                   answer_tool=ANSWER_TOOL if formatted else None)


def tooling(chat: dict[str, Any], messages: list[dict[str, Any]]) -> dict[str, Any]:
    """``tools`` and ``tool_choice`` for the body (none when nothing is offered or used)."""
    tools, choice = _offered(chat)
    answer = _answer_tool(chat.get("response_format"))
    if answer is None and not tools:
        return _declared_tools(messages)
    if answer is None:
        return {"tools": tools, "tool_choice": choice} if choice else {"tools": tools}
    if any(tool["name"] == ANSWER_TOOL for tool in tools):
        raise invalid(f"A tool may not be named '{ANSWER_TOOL}' together with 'response_format': "
                      "on Anthropic that tool carries the formatted answer.", param="tools")
    known = tools or _declared_tools(messages).get("tools", [])
    return {"tools": [*known, answer], "tool_choice": _answer_choice(choice, offered=bool(tools))}


def _answer_tool(fmt: Any) -> dict[str, Any] | None:
    """The tool that carries a formatted answer, or None for plain text."""
    kind = fmt.get("type") if isinstance(fmt, dict) else fmt
    if fmt is None or kind == "text":
        return None
    if kind == "json_object":
        return {"name": ANSWER_TOOL, "description": "Give your answer as this tool's input: a JSON object.",
                "input_schema": {"type": "object"}}
    spec = fmt.get("json_schema") if kind == "json_schema" else None
    if not isinstance(spec, dict):
        raise invalid("'response_format' must be {type: text}, {type: json_object} or "
                      "{type: json_schema, json_schema: {name, schema}}.", param="response_format")
    schema = spec.get("schema") if spec.get("schema") is not None else {"type": "object"}
    if not isinstance(schema, dict) or schema.get("type", "object") != "object":
        raise invalid("Anthropic can honour a 'response_format' schema only when its root is an object "
                      "(type: object).", param="response_format")
    about = f"Give your answer as this tool's input, following the '{spec.get('name') or 'response'}' schema."
    if spec.get("description"):
        about += f" {spec['description']}"
    return {"name": ANSWER_TOOL, "description": about, "input_schema": {"type": "object", **schema}}


def _answer_choice(choice: dict[str, Any] | None, *, offered: bool) -> dict[str, Any]:
    """Make the model answer through the answer tool, or call one of the client's tools."""
    kind = (choice or {}).get("type")
    if kind == "tool":
        return dict(choice or {})  # the client forced one of its own tools
    if not offered or kind == "none":
        return {"type": "tool", "name": ANSWER_TOOL}
    single = {"disable_parallel_tool_use": True} if (choice or {}).get("disable_parallel_tool_use") else {}
    return {"type": "any", **single}


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
    out = _function(tool["function"])
    # Clients put a tool's cache breakpoint beside "function" or inside it.
    mark = tool.get("cache_control", tool["function"].get("cache_control"))
    if mark is not None:
        out["cache_control"] = cache_control(mark, f"{where}.cache_control")
    return out


def _function(fn: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"name": fn["name"]}
    if fn.get("description"):
        out["description"] = fn["description"]
    parameters = fn.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise invalid(f"The parameters of function '{fn['name']}' must be a JSON Schema object.", param="tools")
    # Anthropic requires the schema's type, which OpenAI lets clients leave implicit.
    out["input_schema"] = {"type": "object", **parameters} if parameters else _open_schema()
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
