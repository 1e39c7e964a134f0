"""The Anthropic Messages API as clients send it to Hapax (``POST /v1/messages``): its requests.

One translation core: a Messages request becomes the canonical OpenAI chat body every provider
translator already takes (``chat_body``); the answer goes back through messages_answer.py. So
adding this API added no provider translator, as the legacy completions API did not.

Errors are Anthropic's shape (``{"type": "error", "error": {"type", "message"}}``): the
gateway's own (``error_body``) and, in messages_answer.py, the providers'. Pure translation.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from ext_proc.errors import GatewayError, invalid
from ext_proc.inbound.translated import Translated, asked, untranslatable
from hapax import wire

ROLES = ("user", "assistant")
TOOL_CHOICES = ("auto", "any", "tool", "none")
# Fields of a Messages request no chat can say (Anthropic's sampling and service): a translation
# drops them, and reports those set to ask for something (not these values).
IGNORED: dict[str, tuple[Any, ...]] = {"service_tier": ("auto",), "context_management": (), "top_k": ()}
# Fields only Anthropic can serve (it runs the container, calls the MCP servers).
ANTHROPIC_RUN = ("container", "mcp_servers")
KNOWN = frozenset({"model", "messages", "max_tokens", "system", "stream", "temperature", "top_p",
                   "stop_sequences", "tools", "tool_choice", "metadata", "thinking", *IGNORED, *ANTHROPIC_RUN})
# What a token count request takes: the prompt's fields, not the answer's.
COUNT_KNOWN = frozenset({"model", "messages", "system", "tools", "tool_choice", "thinking", "context_management",
                         *ANTHROPIC_RUN})


def error_json(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": wire.anthropic_error_type(status), "message": message}}


def error_body(err: GatewayError) -> bytes:
    return json.dumps(error_json(err.status, err.message)).encode()


def chat_body(body: dict[str, Any]) -> Translated:
    """The canonical OpenAI chat body of a Messages request; a 400 for what Anthropic's API refuses."""
    _check_known(body, KNOWN)
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise invalid("max_tokens: Field required" if max_tokens is None
                      else "max_tokens: Input should be an integer greater than or equal to 1", param="max_tokens")
    translated = _translated(body)
    chat = translated.chat
    chat["max_tokens"] = max_tokens
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise invalid("stream: Input should be a valid boolean", param="stream")
    if stream:  # the usage chunk is what message_delta's usage comes from
        chat.update(stream=True, stream_options={"include_usage": True})
    _sampling(body, chat)
    metadata = body.get("metadata")
    user = metadata.get("user_id") if isinstance(metadata, dict) else None
    if isinstance(user, str) and user:
        chat["user"] = user
    return replace(translated, dropped=asked(body, IGNORED))


def count_body(body: dict[str, Any]) -> Translated:
    """A token count request (``/v1/messages/count_tokens``): the prompt of a Messages request, as a chat."""
    _check_known(body, COUNT_KNOWN)
    return _translated(body)


def _check_known(body: dict[str, Any], known: frozenset[str]) -> None:
    unknown = sorted(set(body) - known)
    if unknown:
        raise invalid(f"{unknown[0]}: Extra inputs are not permitted", param=unknown[0])


def _translated(body: dict[str, Any]) -> Translated:
    """What a Messages request and a count request share: the model, the conversation, tools and thinking."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("model: Field required" if model is None else "model: Input should be a valid string",
                      param="model")
    chat: dict[str, Any] = {"model": model,
                            "messages": [*_system(body.get("system")), *_conversation(body.get("messages"))]}
    reasons = [f"'{name}'" for name in ANTHROPIC_RUN if body.get(name)]
    _tools(body, chat, reasons)
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        chat["reasoning_effort"] = _effort(thinking.get("budget_tokens"))
    return Translated(chat, untranslatable(reasons, "Messages API", "Anthropic runs it"))


def _system(system: Any) -> list[dict[str, Any]]:
    if system is None:
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}] if system else []
    if isinstance(system, list) and all(isinstance(b, dict) and b.get("type") == "text" for b in system):
        return [{"role": "system", "content": [_text_part(b, "system") for b in system]}]
    raise invalid("system: Input should be a valid string or a list of text blocks", param="system")


def _conversation(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise invalid("messages: Field required" if messages is None
                      else "messages: at least one message is required", param="messages")
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        where = f"messages.{i}"
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise invalid(f"{where}.role: Input should be 'user' or 'assistant'", param="messages")
        content = message.get("content")
        if isinstance(content, str):
            out.append({"role": message["role"], "content": content})
        elif isinstance(content, list):
            out += _blocks(message["role"], content, where)
        else:
            raise invalid(f"{where}.content: Input should be a valid string or a list of blocks", param="messages")
    return out


def _blocks(role: str, blocks: list[Any], where: str) -> list[dict[str, Any]]:
    """One Anthropic message's blocks as chat messages: tool results become tool messages (before the
    user's own words, as Anthropic requires them first), tool uses an assistant's tool calls."""
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        at = f"{where}.content.{j}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append(_text_part(block, at))
        elif kind == "image" and role == "user":
            parts.append(_image_part(block, at))
        elif kind == "document" and role == "user":
            parts.append(_document_part(block, at))
        elif kind == "tool_use" and role == "assistant":
            calls.append(_tool_call(block, at))
        elif kind == "tool_result" and role == "user":
            results.append(_tool_message(block, at))
        elif kind in ("thinking", "redacted_thinking") and role == "assistant":
            continue  # the chat form has no place for it; a provider thinks again
        else:
            raise invalid(f"{at}.type: a {role} message cannot hold a {kind!r} block", param="messages")
    out = list(results)
    if parts or calls:
        message: dict[str, Any] = {"role": role, "content": parts if parts else None}
        if calls:
            message["tool_calls"] = calls
        out.append(message)
    return out


def _text_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(block.get("text"), str):
        raise invalid(f"{where}.text: Input should be a valid string", param="messages")
    part: dict[str, Any] = {"type": "text", "text": block["text"]}
    if isinstance(block.get("cache_control"), dict):
        part["cache_control"] = block["cache_control"]
    return part


def _image_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source")
    if isinstance(source, dict) and source.get("type") == "base64" and isinstance(source.get("data"), str):
        url = f"data:{source.get('media_type', 'image/png')};base64,{source['data']}"
    elif isinstance(source, dict) and source.get("type") == "url" and isinstance(source.get("url"), str):
        url = source["url"]
    else:
        raise invalid(f"{where}.source: an image needs a base64 or url source", param="messages")
    return {"type": "image_url", "image_url": {"url": url}}


def _document_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source")
    if isinstance(source, dict) and source.get("type") == "text" and isinstance(source.get("data"), str):
        return {"type": "text", "text": source["data"]}
    if isinstance(source, dict) and source.get("type") == "base64" and isinstance(source.get("data"), str):
        data = f"data:{source.get('media_type', 'application/pdf')};base64,{source['data']}"
        return {"type": "file", "file": {"file_data": data, "filename": block.get("title") or "document"}}
    raise invalid(f"{where}.source: a document needs a text or base64 source", param="messages")


def _tool_call(block: dict[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
        raise invalid(f"{where}: a tool_use block needs an id and a name", param="messages")
    return {"id": block["id"], "type": "function",
            "function": {"name": block["name"], "arguments": json.dumps(block.get("input") or {})}}


def _tool_message(block: dict[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(block.get("tool_use_id"), str):
        raise invalid(f"{where}.tool_use_id: Field required", param="messages")
    content = block.get("content", "")
    if isinstance(content, list):
        content = "".join(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")
    text = content if isinstance(content, str) else json.dumps(content)
    if block.get("is_error"):
        text = f"Error: {text}"
    return {"role": "tool", "tool_call_id": block["tool_use_id"], "content": text}


def _sampling(body: dict[str, Any], chat: dict[str, Any]) -> None:
    temperature = body.get("temperature")
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not 0 <= temperature <= 1:
            raise invalid("temperature: Input should be between 0 and 1", param="temperature")
        chat["temperature"] = temperature
    if body.get("top_p") is not None:
        chat["top_p"] = body["top_p"]
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise invalid("stop_sequences: Input should be a valid list of strings", param="stop_sequences")
        if stops:
            chat["stop"] = stops


def _tools(body: dict[str, Any], chat: dict[str, Any], reasons: list[str]) -> None:
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise invalid("tools: Input should be a valid list", param="tools")
        functions = []
        for i, tool in enumerate(tools):
            if isinstance(tool, dict) and tool.get("type") not in (None, "custom"):
                reasons.append(f"the server tool {tool['type']!r}")  # Anthropic runs it
            else:
                functions.append(_tool(tool, i))
        if functions:
            chat["tools"] = functions
    choice = body.get("tool_choice")
    if choice is None:
        return
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind not in TOOL_CHOICES:
        raise invalid(f"tool_choice.type: Input should be one of {', '.join(TOOL_CHOICES)}", param="tool_choice")
    if kind == "tool":
        chat["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    else:
        chat["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[kind]
    if choice.get("disable_parallel_tool_use"):
        chat["parallel_tool_calls"] = False


def _tool(tool: Any, i: int) -> dict[str, Any]:
    if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
        raise invalid(f"tools.{i}.name: Field required", param="tools")
    function: dict[str, Any] = {"name": tool["name"], "parameters": tool.get("input_schema") or {"type": "object"}}
    if isinstance(tool.get("description"), str):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _effort(budget: Any) -> str:
    """The reasoning effort whose budget (translators/anthropic_request.py) is closest below ``budget``."""
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1024:
        raise invalid("thinking.budget_tokens: Input should be greater than or equal to 1024", param="thinking")
    return "minimal" if budget < 4096 else "low" if budget < 10000 else "medium" if budget < 16000 else "high"
