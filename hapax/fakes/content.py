"""Deterministic "model" output shared by all fake providers.

Everything here is a pure function of the request, so tests can predict replies,
token counts and embeddings exactly without talking to the fake first.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

EMBEDDING_DIMS = 8

# Split *before* each word that follows whitespace, so every piece keeps its
# trailing spaces and the pieces concatenate back to the exact original text.
_WORD_BOUNDARY = re.compile(r"(?<=\s)(?=\S)")


def count_words(texts: Iterable[str]) -> int:
    return sum(len(text.split()) for text in texts)


def prompt_tokens(texts: Iterable[str]) -> int:
    # Never 0: real providers always bill at least one prompt token.
    return max(1, count_words(texts))


def split_words(text: str) -> list[str]:
    return [piece for piece in _WORD_BOUNDARY.split(text) if piece]


@dataclass(frozen=True)
class Reply:
    chunks: tuple[str, ...]  # one per word; "".join(chunks) == text
    truncated: bool  # cut by max_tokens

    @property
    def text(self) -> str:
        return "".join(self.chunks)

    @property
    def completion_tokens(self) -> int:
        return len(self.chunks)


def compose_reply(label: str, user_text: str, max_tokens: int | None) -> Reply:
    """The reply every fake gives: a greeting echoing the last user text."""
    chunks = split_words(f"Hello from {label}! You said: {user_text}")
    truncated = max_tokens is not None and len(chunks) > max_tokens
    if truncated:
        chunks = chunks[:max_tokens]
        # A cut reply should not end in the space that separated it from the next word.
        chunks[-1] = chunks[-1].rstrip()
    return Reply(tuple(chunks), truncated)


def embed(text: str, dims: int = EMBEDDING_DIMS) -> list[float]:
    """A unit vector derived from a hash: equal texts embed equally, others differ."""
    seed = hashlib.sha256(text.encode()).digest()
    while len(seed) < dims:
        seed += hashlib.sha256(seed).digest()
    raw = [(byte - 127.5) / 127.5 for byte in seed[:dims]]
    norm = math.sqrt(sum(value * value for value in raw)) or 1.0
    return [round(value / norm, 6) for value in raw]


def embedding_base64(vector: list[float]) -> str:
    """OpenAI's ``encoding_format: base64``: little-endian float32 array."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


# A value of each JSON schema type, for the properties a schema requires besides the first.
_TYPED_VALUES: dict[str, Any] = {"number": 1.5, "integer": 1, "boolean": True, "array": [], "object": {},
                                 "null": None}


def tool_arguments(parameters: Any, user_text: str) -> dict[str, Any]:
    """Arguments for the fake tool call, valid against the schema as a real model's are.

    Filling the first declared property (when the schema has one) with the user's text gives the
    arguments real content to stream in pieces, which an empty ``{}`` would not; every other
    property the schema requires gets a value of its type (a strict schema requires them all).
    """
    properties = parameters.get("properties") if isinstance(parameters, dict) else None
    if not isinstance(properties, dict) or not properties:
        return {}
    required = parameters.get("required") if isinstance(parameters.get("required"), list) else []
    first = next(iter(properties))
    out: dict[str, Any] = {first: _typed(properties[first], user_text)}
    for name in required:
        if name in properties and name not in out:
            out[name] = _typed(properties[name], name)
    return out


def _typed(schema: Any, text: str) -> Any:
    kind = schema.get("type") if isinstance(schema, dict) else None
    if isinstance(kind, list):  # ["string", "null"]: the first that is not null
        kind = next((k for k in kind if k != "null"), "string")
    return _TYPED_VALUES.get(kind, text) if isinstance(kind, str) else text


def text_of(content: Any) -> str:
    """Plain text of a message's content: a string, or text parts/blocks.

    Anthropic ``tool_result`` blocks nest their own content, so recurse into it.
    """
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    texts = []
    for block in content:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            texts.append(str(block.get("text", "")))
        elif block.get("type") == "tool_result":
            texts.append(text_of(block.get("content")))
    return " ".join(text for text in texts if text)


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]

    @property
    def arguments_json(self) -> str:
        return json.dumps(self.arguments)

    @property
    def argument_pieces(self) -> list[str]:
        """How the arguments JSON is streamed; the pieces concatenate back to it."""
        return split_words(self.arguments_json)

    @property
    def completion_tokens(self) -> int:
        return len(self.argument_pieces)


def last_user_text(messages: Iterable[Any]) -> str:
    """Text of the latest user message; the fakes echo it back."""
    for message in reversed(list(messages)):
        if isinstance(message, dict) and message.get("role") == "user":
            return text_of(message.get("content"))
    return ""
