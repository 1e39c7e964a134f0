"""What the real Messages API rejects, checked the way it documents it.

The fake answers 400 ``invalid_request_error`` for each of these, with a message
in the real API's style (``field.path: what is wrong``), so a translator that
sends something Anthropic would refuse fails against the fake too. Only the
request's shape is checked here; model behaviour lives in ``anthropic.py``.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any, NoReturn

from .base import RequestError

TOP_LEVEL_FIELDS = frozenset({
    "model", "messages", "max_tokens", "system", "metadata", "stop_sequences", "stream",
    "temperature", "top_p", "top_k", "tools", "tool_choice", "thinking", "service_tier",
})
# A token count's: the prompt's fields.
COUNT_FIELDS = frozenset({"model", "messages", "system", "tools", "tool_choice", "thinking"})
# Block type -> the fields it may carry (besides "type").
BLOCK_FIELDS: dict[str, frozenset[str]] = {
    "text": frozenset({"text", "cache_control", "citations"}),
    "image": frozenset({"source", "cache_control"}),
    "document": frozenset({"source", "title", "context", "citations", "cache_control"}),
    "tool_use": frozenset({"id", "name", "input", "cache_control"}),
    "tool_result": frozenset({"tool_use_id", "content", "is_error", "cache_control"}),
    "thinking": frozenset({"thinking", "signature"}),
    "redacted_thinking": frozenset({"data"}),
}
USER_BLOCKS = frozenset({"text", "image", "document", "tool_result"})
ASSISTANT_BLOCKS = frozenset({"text", "tool_use", "thinking", "redacted_thinking"})
TOOL_RESULT_BLOCKS = frozenset({"text", "image", "document"})
TOOL_FIELDS = frozenset({"name", "description", "input_schema", "cache_control", "type"})
IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
MAX_CACHE_BREAKPOINTS = 4
MIN_THINKING_BUDGET = 1024
MAX_USER_ID_LENGTH = 256

_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_TOOL_ID = re.compile(r"^[a-zA-Z0-9_-]+$")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


def check_body(body: dict[str, Any]) -> None:
    """Raises the real API's 400 for the first rule ``body`` breaks."""
    _check_fields(body, TOP_LEVEL_FIELDS, "")
    _check_metadata(body.get("metadata"))
    _check_sampling(body)
    _check_prompt(body)


def check_count_body(body: dict[str, Any]) -> None:
    """The same for a token count (``/v1/messages/count_tokens``): a prompt, without the answer's fields."""
    _check_fields(body, COUNT_FIELDS, "")
    _check_prompt(body)


def _check_prompt(body: dict[str, Any]) -> None:
    _check_system(body.get("system"))
    tools = _check_tools(body.get("tools"))
    _check_tool_choice(body.get("tool_choice"), tools)
    messages = body.get("messages") or []
    for index, message in enumerate(messages):
        _check_message(message, f"messages.{index}")
    _check_tool_pairing(messages)
    if tools is None and any(_block_types(m) & {"tool_use", "tool_result"} for m in messages):
        _reject("Requests which include `tool_use` or `tool_result` blocks must define tools.")
    _check_cache_breakpoints(body)
    _check_thinking(body)


def _reject(message: str) -> NoReturn:
    raise RequestError(400, message)


def _check_fields(value: dict[str, Any], allowed: frozenset[str], where: str) -> None:
    for key in value:
        if key not in allowed:
            _reject(f"{where}{key}: Extra inputs are not permitted")


def _check_metadata(metadata: Any) -> None:
    if metadata is None:
        return
    if not isinstance(metadata, dict):
        _reject("metadata: Input should be a valid dictionary")
    _check_fields(metadata, frozenset({"user_id"}), "metadata.")
    user_id = metadata.get("user_id")
    if user_id is None:
        return
    if not isinstance(user_id, str) or len(user_id) > MAX_USER_ID_LENGTH:
        _reject(f"metadata.user_id: String should have at most {MAX_USER_ID_LENGTH} characters")
    # The API documents user_id as an opaque id (a uuid or a hash) and refuses personal data.
    if _EMAIL.search(user_id):
        _reject("metadata.user_id: user_id looks like an email address; send an opaque id "
                "such as a uuid or a hash instead")


def _check_system(system: Any) -> None:
    if system is None or isinstance(system, str):
        return
    if not isinstance(system, list):
        _reject("system: Input should be a valid string or list of text blocks")
    for index, block in enumerate(system):
        where = f"system.{index}"
        if not isinstance(block, dict) or block.get("type") != "text":
            _reject(f"{where}.type: Input should be 'text'")
        _check_block(block, where, frozenset({"text"}))


def _check_sampling(body: dict[str, Any]) -> None:
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None and not (isinstance(value, (int, float)) and 0 <= value <= 1):
            _reject(f"{name}: Input should be less than or equal to 1")
    for index, stop in enumerate(body.get("stop_sequences") or []):
        if not isinstance(stop, str) or not stop.strip():
            _reject(f"stop_sequences.{index}: each stop sequence must contain non-whitespace")


def _check_tools(tools: Any) -> list[dict[str, Any]] | None:
    if tools is None:
        return None
    if not isinstance(tools, list):
        _reject("tools: Input should be a valid list")
    names = set()
    for index, tool in enumerate(tools):
        where = f"tools.{index}.custom."
        if not isinstance(tool, dict):
            _reject(f"tools.{index}: Input should be a valid dictionary")
        _check_fields(tool, TOOL_FIELDS, where)
        name = tool.get("name")
        if not isinstance(name, str) or not _TOOL_NAME.match(name):
            _reject(f"{where}name: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'")
        schema = tool.get("input_schema")
        if not isinstance(schema, dict) or schema.get("type") != "object":
            _reject(f"{where}input_schema.type: Input should be 'object'")
        _check_cache_control(tool.get("cache_control"), f"{where}cache_control")
        if name in names:
            _reject("tools: Tool names must be unique.")
        names.add(name)
    return tools


def _check_tool_choice(choice: Any, tools: list[dict[str, Any]] | None) -> None:
    if choice is None:
        return
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind not in ("auto", "any", "tool", "none"):
        _reject("tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'")
    allowed = {"type", "disable_parallel_tool_use"} | ({"name"} if kind == "tool" else set())
    _check_fields(choice, frozenset(allowed), "tool_choice.")
    if tools is None:
        _reject("tool_choice may only be specified while providing tools.")
    if kind == "tool" and choice.get("name") not in {t.get("name") for t in tools or []}:
        _reject(f"tool_choice.name: tool '{choice.get('name')}' is not among the tools provided")


def _check_message(message: Any, where: str) -> None:
    if not isinstance(message, dict):
        _reject(f"{where}: Input should be a valid dictionary")
    _check_fields(message, frozenset({"role", "content"}), f"{where}.")
    content = message.get("content")
    if isinstance(content, str):
        if not content:
            _reject(f"{where}: all messages must have non-empty content except for the optional "
                    "final assistant message")
        return
    if not isinstance(content, list):
        _reject(f"{where}.content: Input should be a valid string or list")
    allowed = USER_BLOCKS if message.get("role") == "user" else ASSISTANT_BLOCKS
    for index, block in enumerate(content):
        _check_block(block, f"{where}.content.{index}", allowed)


def _check_block(block: Any, where: str, allowed: frozenset[str]) -> None:
    kind = block.get("type") if isinstance(block, dict) else None
    if not isinstance(kind, str) or kind not in allowed:
        _reject(f"{where}.type: Input tag {kind!r} found using 'type' does not match any of the "
                f"expected tags: {', '.join(sorted(allowed))}")
    _check_fields(block, BLOCK_FIELDS[kind] | {"type"}, f"{where}.{kind}.")
    _check_cache_control(block.get("cache_control"), f"{where}.{kind}.cache_control")
    if kind == "text":
        text = block.get("text")
        if not isinstance(text, str) or not text.strip():
            _reject(f"{where}: text content blocks must contain non-whitespace text")
    elif kind == "image":
        _check_source(block.get("source"), f"{where}.image.source", IMAGE_MEDIA_TYPES)
    elif kind == "document":
        _check_source(block.get("source"), f"{where}.document.source", frozenset({"application/pdf"}))
    elif kind == "tool_use":
        if not isinstance(block.get("id"), str) or not _TOOL_ID.match(block["id"]):
            _reject(f"{where}.tool_use.id: String should match pattern '^[a-zA-Z0-9_-]+$'")
        if not isinstance(block.get("input"), dict):
            _reject(f"{where}.tool_use.input: Input should be a valid dictionary")
    elif kind == "tool_result" and isinstance(block.get("content"), list):
        for index, inner in enumerate(block["content"]):
            _check_block(inner, f"{where}.tool_result.content.{index}", TOOL_RESULT_BLOCKS)


def _check_source(source: Any, where: str, media_types: frozenset[str]) -> None:
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "url":
        if not isinstance(source.get("url"), str):
            _reject(f"{where}.url: Field required")
        return
    if kind != "base64":
        _reject(f"{where}.type: Input should be 'base64' or 'url'")
    if source.get("media_type") not in media_types:
        _reject(f"{where}.media_type: Input should be {' or '.join(sorted(media_types))}")
    try:
        base64.b64decode(source.get("data") or "", validate=True)
    except (binascii.Error, ValueError, TypeError):
        _reject(f"{where}.data: The data is not valid base64")


def _check_cache_control(value: Any, where: str) -> None:
    if value is None:
        return
    if not isinstance(value, dict) or value.get("type") != "ephemeral":
        _reject(f"{where}.type: Input should be 'ephemeral'")
    _check_fields(value, frozenset({"type", "ttl"}), f"{where}.ephemeral.")
    if value.get("ttl", "5m") not in ("5m", "1h"):
        _reject(f"{where}.ephemeral.ttl: Input should be '5m' or '1h'")


def _check_cache_breakpoints(body: dict[str, Any]) -> None:
    found = sum(1 for block in _all_cacheable(body) if block.get("cache_control"))
    if found > MAX_CACHE_BREAKPOINTS:
        _reject(f"A maximum of {MAX_CACHE_BREAKPOINTS} blocks with cache_control may be provided. "
                f"Found {found}.")


def _all_cacheable(body: dict[str, Any]) -> list[dict[str, Any]]:
    found = list(body.get("tools") or [])
    found += body["system"] if isinstance(body.get("system"), list) else []
    for message in body.get("messages") or []:
        for block in message["content"] if isinstance(message["content"], list) else []:
            found.append(block)
            inner = block.get("content") if block.get("type") == "tool_result" else None
            found += inner if isinstance(inner, list) else []
    return found


def _block_types(message: dict[str, Any]) -> set[Any]:
    content = message.get("content")
    return {b.get("type") for b in content if isinstance(b, dict)} if isinstance(content, list) else set()


def _ids(message: dict[str, Any], kind: str, key: str) -> list[Any]:
    content = message.get("content")
    blocks = content if isinstance(content, list) else []
    return [b.get(key) for b in blocks if isinstance(b, dict) and b.get("type") == kind]


def _check_tool_pairing(messages: list[dict[str, Any]]) -> None:
    """Each tool_use is answered in the very next user turn, and each tool_result answers one."""
    for index, message in enumerate(messages):
        results = _ids(message, "tool_result", "tool_use_id")
        previous = messages[index - 1] if index else {}
        asked = _ids(previous, "tool_use", "id")
        unexpected = [r for r in results if r not in asked]
        if unexpected:
            _reject(f"messages.{index}.content: unexpected `tool_use_id` found in `tool_result` blocks: "
                    f"{unexpected[0]}. Each `tool_result` block must have a corresponding `tool_use` "
                    "block in the previous message.")
        following = messages[index + 1] if index + 1 < len(messages) else None
        unanswered = [a for a in _ids(message, "tool_use", "id")
                      if following is not None and a not in _ids(following, "tool_result", "tool_use_id")]
        if unanswered:
            _reject(f"messages.{index + 1}: `tool_use` ids were found without `tool_result` blocks "
                    f"immediately after: {unanswered[0]}. Each `tool_use` block must have a "
                    "corresponding `tool_result` block in the next message.")


def _check_thinking(body: dict[str, Any]) -> None:
    thinking = body.get("thinking")
    if thinking is None:
        return
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    if kind == "disabled":
        return
    if kind != "enabled":
        _reject("thinking.type: Input should be 'enabled' or 'disabled'")
    _check_fields(thinking, frozenset({"type", "budget_tokens"}), "thinking.enabled.")
    budget = thinking.get("budget_tokens")
    if not isinstance(budget, int) or budget < MIN_THINKING_BUDGET:
        _reject(f"thinking.enabled.budget_tokens: Input should be greater than or equal to {MIN_THINKING_BUDGET}")
    if "max_tokens" in body and budget >= body["max_tokens"]:  # a count has no max_tokens
        _reject("max_tokens must be greater than thinking.budget_tokens")
    _check_thinking_compatibility(body)


def _check_thinking_compatibility(body: dict[str, Any]) -> None:
    """The features extended thinking is documented not to work with."""
    if body.get("temperature") not in (None, 1):
        _reject("temperature may only be set to 1 when thinking is enabled")
    if body.get("top_k") is not None:
        _reject("top_k cannot be set when thinking is enabled")
    if body.get("top_p") is not None and body["top_p"] < 0.95:
        _reject("top_p must be between 0.95 and 1 when thinking is enabled")
    choice = body.get("tool_choice") or {}
    if choice.get("type") in ("any", "tool"):
        _reject("Thinking may not be enabled when tool_choice forces tool use.")
    messages = body.get("messages") or []
    if messages and messages[-1].get("role") == "assistant":
        _reject("Prefilling the assistant message is not supported when thinking is enabled.")
    _check_final_assistant_thinks(messages)


def _check_final_assistant_thinks(messages: list[dict[str, Any]]) -> None:
    """A tool loop under way must show the thinking that led to its tool calls."""
    assistants = [(i, m) for i, m in enumerate(messages) if m.get("role") == "assistant"]
    if not assistants:
        return
    index, last = assistants[-1]
    content = last.get("content")
    if "tool_use" not in _block_types(last) or not isinstance(content, list):
        return
    if content[0].get("type") not in ("thinking", "redacted_thinking"):
        _reject(f"messages.{index}.content.0.type: Expected `thinking` or `redacted_thinking`, but found "
                f"`{content[0].get('type')}`. When `thinking` is enabled, a final `assistant` message must "
                "start with a thinking block.")
