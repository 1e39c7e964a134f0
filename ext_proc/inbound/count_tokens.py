"""The gateway's own count of a prompt's tokens, for a Messages API token count
(``/v1/messages/count_tokens``) that no provider can make.

Anthropic counts a prompt exactly (its count endpoint, which its provider is sent as the client
wrote it). OpenAI's chat and Ollama have no such endpoint, and the gateway ships no tokenizer:
a model's tokenizer is the provider's. So for them the gateway estimates, at the rule of thumb
of four characters a token, with each message's role and separators and an image at the most
Anthropic documents; the answer says it is an estimate (``wire.TOKEN_COUNT_HEADER``). Clients use
the count to decide when a conversation must be compacted: an estimate that errs high is safe.
"""

from __future__ import annotations

import json
import math
from typing import Any

CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD_TOKENS = 4  # the role and the separators around each message
IMAGE_TOKENS = 1600  # Anthropic's cost of an image at its largest (about 1.15 megapixels)


def estimate(chat: dict[str, Any]) -> int:
    """The input tokens of a canonical chat's prompt, estimated: its messages and its tools."""
    chars = 0
    tokens = 0
    for message in chat.get("messages") or []:
        tokens += MESSAGE_OVERHEAD_TOKENS
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        for part in content if isinstance(content, list) else ():
            if part.get("type") == "image_url":
                tokens += IMAGE_TOKENS
            elif part.get("type") == "file":
                chars += len(str((part.get("file") or {}).get("file_data", ""))) * 3 // 4  # base64's bytes
            else:
                chars += len(str(part.get("text", "")))
        for call in message.get("tool_calls") or []:
            function = call.get("function") or {}
            chars += len(function.get("name", "")) + len(function.get("arguments", ""))
    if chat.get("tools"):
        chars += len(json.dumps(chat["tools"], separators=(",", ":")))
    return tokens + math.ceil(chars / CHARS_PER_TOKEN)
