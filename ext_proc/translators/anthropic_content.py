"""Anthropic conversations: OpenAI messages as Anthropic's ``system`` and ``messages``.

System and developer messages are lifted to the top-level ``system``; roles are
merged so they alternate and open with a user turn; content parts become
Anthropic blocks (text, images, PDF documents), tool calls ``tool_use`` blocks
and tool messages ``tool_result`` blocks. Pure translation, no I/O.
"""

from __future__ import annotations

import re
from typing import Any

from ext_proc.errors import invalid
from ext_proc.translators.base import tool_arguments

# Anthropic's conversation must open with a user turn; OpenAI's may open with an
# assistant turn (or hold only system messages). This neutral turn fills the gap.
PLACEHOLDER_USER_TEXT = "(continue)"

_DATA_URL = re.compile(r"^data:(?P<media>[^;,]+)(?:;[^,;]*)*;base64,(?P<data>.*)$", re.DOTALL)
_TOOL_ID_UNSAFE = re.compile(r"[^a-zA-Z0-9_-]")


def conversation(messages: list[Any]) -> tuple[str | list[dict[str, Any]] | None, list[dict[str, Any]]]:
    """The top-level ``system`` (None when there is none) and the alternating ``messages``."""
    system: list[list[dict[str, Any]]] = []
    turns: list[dict[str, Any]] = []
    legacy_calls: dict[str, str] = {}  # function name -> id given to its legacy function_call
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if msg.get("role") in ("system", "developer"):
            # A breakpoint on a whole message (as clients mark string content) is one on its last block.
            system.append(_cached(_system_blocks(msg.get("content"), where), msg, where))
            continue
        role, blocks = _turn(msg, where, i, legacy_calls)
        blocks = _cached(blocks, msg, where)
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
    return _system(system), turns


def _turn(msg: dict[str, Any], where: str, i: int,
          legacy_calls: dict[str, str]) -> tuple[str, list[dict[str, Any]]]:
    """The Anthropic role and blocks of one user, assistant, tool or function message."""
    role = msg.get("role")
    if role == "user":
        return "user", _content_blocks(msg.get("content"), where, media=True)
    if role == "assistant":
        return "assistant", _assistant_blocks(msg, where, i, legacy_calls)
    if role == "tool":
        call_id = msg.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id:
            raise invalid(f"'{where}.tool_call_id' is required for a tool message.", param=f"{where}.tool_call_id")
        return "user", [_tool_result(_tool_id(call_id), msg.get("content"), where)]
    if role == "function":  # legacy function calling
        legacy_id = legacy_calls.get(msg.get("name") or "")
        if legacy_id is None:
            raise invalid(f"'{where}' answers a function call that no assistant message made.", param=where)
        return "user", [_tool_result(legacy_id, msg.get("content"), where)]
    raise invalid(f"'{where}.role' {role!r} cannot be sent to Anthropic.", param=f"{where}.role")


def _system(messages: list[list[dict[str, Any]]]) -> str | list[dict[str, Any]] | None:
    """A string, as before prompt caching; text blocks when any of them marks a cache breakpoint."""
    blocks = [block for message in messages for block in message]
    if any("cache_control" in block for block in blocks):
        return blocks
    texts = ["\n".join(block["text"] for block in message) for message in messages]
    return "\n\n".join(text for text in texts if text.strip()) or None


def _system_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if content is None or isinstance(content, str):
        return _text_block(content)
    blocks = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text":
            raise invalid(f"'{where}.content[{j}]' must be a text part here.", param=f"{where}.content")
        blocks += _cached(_text_block(part.get("text")), part, f"{where}.content[{j}]")
    return blocks


def cache_control(value: Any, where: str) -> dict[str, Any]:
    """A prompt-caching breakpoint, as Anthropic takes it: ephemeral, for 5 minutes or an hour."""
    if not isinstance(value, dict) or value.get("type") != "ephemeral" or value.get("ttl", "5m") not in ("5m", "1h"):
        raise invalid(f"'{where}' must be {{type: ephemeral}} or {{type: ephemeral, ttl: 5m | 1h}}.", param=where)
    return {"type": "ephemeral", **({"ttl": value["ttl"]} if "ttl" in value else {})}


def _cached(blocks: list[dict[str, Any]], part: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """``blocks`` (those of one part) with the part's cache_control on the last, where it has one."""
    if part.get("cache_control") is not None and blocks:
        blocks[-1] = {**blocks[-1], "cache_control": cache_control(part["cache_control"], f"{where}.cache_control")}
    return blocks


def _trim_final_assistant(turns: list[dict[str, Any]]) -> None:
    """A final assistant turn is a prefill; Anthropic rejects trailing whitespace in it."""
    blocks = turns[-1]["content"]
    if blocks and blocks[-1]["type"] == "text":
        text = blocks[-1]["text"].rstrip()
        if text:
            blocks[-1] = {**blocks[-1], "text": text}
        else:
            blocks.pop()
    if not blocks:
        turns.pop()


def _text_block(text: Any) -> list[dict[str, Any]]:
    # Anthropic rejects empty and whitespace-only text blocks.
    return [{"type": "text", "text": text}] if isinstance(text, str) and text.strip() else []


def _content_blocks(content: Any, where: str, *, media: bool) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return _text_block(content)
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            found = _text_block(part.get("text"))
        elif kind == "refusal":
            found = _text_block(part.get("refusal"))
        elif kind == "image_url" and media:
            found = [_image_block(part.get("image_url"), at)]
        elif kind == "file" and media:
            found = [_document_block(part.get("file"), at)]
        else:
            raise invalid(f"'{at}' of type {kind!r} cannot be sent to Anthropic.", param=at)
        blocks += _cached(found, part, at)
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


def _document_block(file: Any, where: str) -> dict[str, Any]:
    """A PDF sent inline (``file_data`` as a base64 data URL) as Anthropic's document block."""
    data = file.get("file_data") if isinstance(file, dict) else None
    match = _DATA_URL.match(data) if isinstance(data, str) else None
    if not match or match["media"] != "application/pdf":
        raise invalid(f"'{where}': Anthropic takes files as PDFs sent inline: file.file_data must be "
                      "data:application/pdf;base64,... (a file_id cannot be read from Anthropic).", param=where)
    source = {"type": "base64", "media_type": "application/pdf", "data": match["data"]}
    block: dict[str, Any] = {"type": "document", "source": source}
    if isinstance(file.get("filename"), str) and file["filename"]:
        block["title"] = file["filename"]  # the model may cite the document by it
    return block


def _tool_id(call_id: str) -> str:
    # Anthropic tool ids match ^[a-zA-Z0-9_-]+$; ids minted elsewhere may not.
    return _TOOL_ID_UNSAFE.sub("_", call_id)


def _assistant_blocks(msg: dict[str, Any], where: str, i: int,
                      legacy_calls: dict[str, str]) -> list[dict[str, Any]]:
    blocks = _content_blocks(msg.get("content"), where, media=False)
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
        parts = _content_blocks(content, where, media=True)
        if parts:
            block["content"] = parts
    return block
