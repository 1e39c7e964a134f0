"""The legacy completions API's answer shape, after the provider's translator.

Translators produce OpenAI chat completions. The legacy completion handler answers in
``text_completion`` shape, so its answers (JSON or SSE) pass through this stage after the
provider's own; a provider's error is already OpenAI's error JSON, and passes as it is.
"""

from __future__ import annotations

import json
from typing import Any

from ext_proc.inbound.answer import AnswerShape, chat_chunk
from ext_proc.sse import encode


def _text_choice(choice: dict[str, Any], text: str | None) -> dict[str, Any]:
    return {"text": text or "", "index": choice.get("index", 0), "logprobs": None,
            "finish_reason": choice.get("finish_reason")}


def _text_completion_id(chat_id: str) -> str:
    """``chatcmpl-X`` -> ``cmpl-X``: OpenAI's prefix for the legacy API, which clients and
    logs use to tell the two apart. A chunk keeps its stream's id, as each maps alike."""
    if chat_id.startswith("cmpl-"):
        return chat_id
    return "cmpl-" + chat_id.removeprefix("chatcmpl-")


def chat_to_text_completion(body: dict[str, Any], *, chunk: bool) -> dict[str, Any]:
    out: dict[str, Any] = {k: body[k] for k in ("id", "created", "model", "usage", "system_fingerprint") if k in body}
    if isinstance(out.get("id"), str):
        out["id"] = _text_completion_id(out["id"])
    out["object"] = "text_completion"
    choices = []
    for choice in body.get("choices") or []:
        text = (choice.get("delta") or {}).get("content") if chunk else (choice.get("message") or {}).get("content")
        choices.append(_text_choice(choice, text))
    out["choices"] = choices
    return out


class TextCompletionStage(AnswerShape):
    def whole(self, body: Any, raw: bytes) -> bytes:
        if self.status >= 400 or not isinstance(body, dict):
            return raw
        return json.dumps(chat_to_text_completion(body, chunk=False)).encode()

    def event(self, data: str) -> bytes:
        return encode(self._convert(data))

    @staticmethod
    def _convert(data: str) -> str:
        chunk = chat_chunk(data)
        if chunk is None or "error" in chunk or "choices" not in chunk:
            return data  # [DONE], an error, anything else: as it came
        return json.dumps(chat_to_text_completion(chunk, chunk=True))
