"""Helpers shared by the provider translator tests.

Each translator test builds requests the same way, feeds a response stage its
body the same way (whole, or cut into arbitrary pieces as TCP would) and reads
the OpenAI SSE that comes out; only the provider-side fixtures differ.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from hypothesis import strategies as st

from ext_proc.client_request import ClientRequest
from ext_proc.runtime import Provider
from ext_proc.translators.base import ResponseStage

# What the translators' injected clocks are built from: "created" must be it, truncated.
NOW = 1_700_000_000


def make_provider(type_: str, name: str, model: str, base_url: str, *,
                  api_key: str, base_path: str) -> Provider:
    return Provider(name=name, type=type_, model=model, aliases=(), base_url=base_url,
                    host=urlsplit(base_url).netloc, base_path=base_path, api_key=api_key, timeout=30.0)


def client_request(model: str, body: dict[str, Any], *, stream: bool = False,
                   handler: str = "chat") -> ClientRequest:
    return ClientRequest(handler, model, stream, {"model": model, **body})


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def pieces_of(raw: bytes, size: int | None) -> list[bytes]:
    """``raw`` whole, or cut every ``size`` bytes and closed by an empty end-of-stream piece."""
    if size is None:
        return [raw]
    return [raw[i:i + size] for i in range(0, len(raw), size)] + [b""]


def run_stage(stage: ResponseStage, status: int, content_type: str,
              pieces: list[bytes]) -> tuple[dict[str, str], bytes]:
    """The headers the stage sets and everything it writes, the last piece ending the stream."""
    headers = stage.headers(status, content_type)
    out = bytearray()
    for i, piece in enumerate(pieces):
        out += stage.body(piece, i == len(pieces) - 1)
    return headers, bytes(out)


def sse_events(out: bytes) -> list[Any]:
    """The data of each SSE event, JSON-decoded except the [DONE] sentinel.

    Every event must be a single ``data:`` line: that is all OpenAI clients are
    promised, and JSON without newlines always fits on one.
    """
    assert out.endswith(b"\n\n") or not out
    result = []
    for block in out.decode().split("\n\n")[:-1]:
        assert block.startswith("data: ") and "\n" not in block, block
        data = block[6:]
        result.append(data if data == "[DONE]" else json.loads(data))
    return result


def assert_one_stream(chunks: list[Any], chunk_id: str, model: str) -> None:
    """Every chunk carries the same id, creation time and model, as OpenAI's do."""
    for chunk in chunks:
        assert chunk["id"] == chunk_id
        assert chunk["object"] == "chat.completion.chunk"
        assert chunk["created"] == NOW and chunk["model"] == model


safe_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)


@st.composite
def chat_requests(draw: st.DrawFn, tool: dict[str, Any],
                  tool_choices: Sequence[str] = ()) -> dict[str, Any]:
    """A valid OpenAI chat body: any mix of roles, content parts and tool rounds.

    ``tool`` is offered at random; with ``tool_choices`` a tool_choice is drawn too.
    """
    messages: list[dict[str, Any]] = []
    for i in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["system", "developer", "user", "user_parts", "assistant", "tool_round"]))
        if kind == "user_parts":
            parts = draw(st.lists(safe_text, min_size=1, max_size=3))
            messages.append({"role": "user", "content": [{"type": "text", "text": p} for p in parts]})
        elif kind == "tool_round":
            call_id = f"call_{i}"
            messages.append({"role": "assistant", "content": draw(st.one_of(st.none(), safe_text)),
                             "tool_calls": [{"id": call_id, "type": "function", "function": {
                                 "name": "f", "arguments": draw(st.sampled_from(['{"a": 1}', "", "{bad"]))}}]})
            messages.append({"role": "tool", "tool_call_id": call_id, "content": draw(safe_text)})
        else:
            messages.append({"role": kind, "content": draw(safe_text)})
    body: dict[str, Any] = {"messages": messages}
    if draw(st.booleans()):
        body["max_tokens"] = draw(st.integers(1, 10_000))
    if draw(st.booleans()):
        body["temperature"] = draw(st.floats(0, 2))
    if draw(st.booleans()):
        body["stop"] = draw(st.one_of(safe_text, st.lists(safe_text, max_size=4)))
    if draw(st.booleans()):
        body["tools"] = [tool]
        if tool_choices:
            body["tool_choice"] = draw(st.sampled_from(list(tool_choices)))
    return body
