"""The fake Anthropic API refuses what the real one documents as invalid, in its error JSON.

Each rejected body below is one the real Messages API answers with a 400
``invalid_request_error``; the accepted ones are documented features the fake
must not refuse (cache_control, PDF documents, extended thinking).
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from hapax.fakes import FakeAnthropic

KEY = "test-key"
AUTH = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
HELLO = [{"role": "user", "content": "tell me a joke"}]
TOOL = {"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}
PDF = base64.b64encode(b"%PDF-1.4 fake").decode()
EPHEMERAL = {"type": "ephemeral"}
TOOL_ROUND = [
    {"role": "user", "content": "weather in Paris?"},
    {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                       "input": {"city": "Paris"}}]},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"}]},
]
THINKING = {"type": "enabled", "budget_tokens": 1024}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as client:
        yield client


@pytest.fixture
async def anthropic() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic() as fake:
        yield fake


async def post(session: aiohttp.ClientSession, fake: FakeAnthropic, **body: Any) -> tuple[int, Any]:
    payload = {"model": "claude-test", "max_tokens": 2048, "messages": HELLO, **body}
    async with session.post(f"{fake.base_url}/v1/messages", json=payload, headers=AUTH) as response:
        raw = await response.read()
        return response.status, raw if payload.get("stream") else json.loads(raw)


REJECTED = {
    "tool-blocks-without-tools": ({"messages": TOOL_ROUND}, "must define tools"),
    "email-user-id": ({"metadata": {"user_id": "ada@example.com"}}, "metadata.user_id"),
    "long-user-id": ({"metadata": {"user_id": "x" * 257}}, "metadata.user_id"),
    "unknown-metadata-key": ({"metadata": {"user": "u"}}, "metadata.user: Extra inputs are not permitted"),
    "unknown-top-level-field": ({"response_format": {"type": "json_object"}},
                                "response_format: Extra inputs are not permitted"),
    "unknown-message-field": ({"messages": [{**HELLO[0], "name": "ada"}]},
                              "messages.0.name: Extra inputs are not permitted"),
    "unknown-block-field": ({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "hi", "reasoning_content": "x"}]}]}, "messages.0.content.0.text.reasoning_content"),
    "blank-text-block": ({"messages": [{"role": "user", "content": [{"type": "text", "text": " "}]}]},
                         "non-whitespace"),
    "tool-use-in-user-turn": ({"tools": [TOOL], "messages": [{"role": "user", "content": [
        TOOL_ROUND[1]["content"][0]]}]}, "messages.0.content.0.type"),
    "unanswered-tool-result-id": ({"tools": [TOOL], "messages": [
        *TOOL_ROUND, {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_9"}]}]},
        "unexpected `tool_use_id`"),
    "unanswered-tool-use": ({"tools": [TOOL], "messages": [*TOOL_ROUND[:2], *HELLO]}, "without `tool_result`"),
    "tool-choice-without-tools": ({"tool_choice": {"type": "auto"}}, "tool_choice"),
    "forced-tool-not-offered": ({"tools": [TOOL], "tool_choice": {"type": "tool", "name": "nope"}},
                                "tool_choice.name"),
    "duplicate-tool-names": ({"tools": [TOOL, TOOL]}, "unique"),
    "tool-schema-not-object": ({"tools": [{**TOOL, "input_schema": {"type": "array"}}]},
                               "input_schema.type"),
    "tool-extra-field": ({"tools": [{**TOOL, "parameters": {}}]}, "tools.0.custom.parameters"),
    "cache-control-wrong-type": ({"system": [{"type": "text", "text": "s", "cache_control": {"type": "forever"}}]},
                                 "cache_control"),
    "cache-control-bad-ttl": ({"tools": [{**TOOL, "cache_control": {"type": "ephemeral", "ttl": "2h"}}]}, "ttl"),
    "five-cache-breakpoints": ({"system": [{"type": "text", "text": f"s{i}", "cache_control": EPHEMERAL}
                                           for i in range(5)]}, "maximum of 4"),
    "document-not-pdf": ({"messages": [{"role": "user", "content": [{"type": "document", "source": {
        "type": "base64", "media_type": "application/msword", "data": PDF}}]}]}, "media_type"),
    "document-bad-base64": ({"messages": [{"role": "user", "content": [{"type": "document", "source": {
        "type": "base64", "media_type": "application/pdf", "data": "%%%"}}]}]}, "base64"),
    "thinking-budget-below-minimum": ({"thinking": {"type": "enabled", "budget_tokens": 512}}, "1024"),
    "thinking-budget-not-below-max-tokens": ({"max_tokens": 1024, "thinking": THINKING}, "max_tokens"),
    "thinking-with-temperature": ({"thinking": THINKING, "temperature": 0.2}, "temperature"),
    "thinking-with-top-k": ({"thinking": THINKING, "top_k": 5}, "top_k"),
    "thinking-with-forced-tool": ({"thinking": THINKING, "tools": [TOOL], "tool_choice": {"type": "any"}},
                                  "forces tool use"),
    "thinking-with-prefill": ({"thinking": THINKING, "messages": [*HELLO, {"role": "assistant", "content": "So"}]},
                              "Prefill"),
    "thinking-mid-tool-loop-without-thinking-block": ({"thinking": THINKING, "tools": [TOOL],
                                                       "messages": TOOL_ROUND}, "must start with a thinking block"),
}


@pytest.mark.parametrize("body, fragment", list(REJECTED.values()), ids=list(REJECTED))
async def test_the_fake_rejects_what_the_real_api_rejects(session, anthropic, body, fragment):
    status, answer = await post(session, anthropic, **body)
    assert status == 400, answer
    assert answer["type"] == "error" and answer["error"]["type"] == "invalid_request_error"
    assert fragment in answer["error"]["message"]


ACCEPTED = {
    "opaque-user-id": {"metadata": {"user_id": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}},
    "tool-round-with-tools": {"tools": [TOOL], "messages": TOOL_ROUND},
    "cache-control-everywhere": {
        "tools": [{**TOOL, "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
        "system": [{"type": "text", "text": "be brief", "cache_control": EPHEMERAL}],
        "messages": [{"role": "user", "content": [
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": PDF},
             "title": "report.pdf", "cache_control": EPHEMERAL},
            {"type": "text", "text": "summarise", "cache_control": EPHEMERAL}]}]},
    "thinking-with-top-p": {"thinking": THINKING, "top_p": 0.95, "temperature": 1},
    "thinking-with-tool-choice-none": {"thinking": THINKING, "tools": [TOOL], "tool_choice": {"type": "none"}},
}


@pytest.mark.parametrize("body", list(ACCEPTED.values()), ids=list(ACCEPTED))
async def test_the_fake_accepts_documented_features(session, anthropic, body):
    status, answer = await post(session, anthropic, **body)
    assert status == 200, answer


async def test_thinking_opens_the_answer_with_a_signed_thinking_block(session, anthropic):
    _, answer = await post(session, anthropic, thinking=THINKING)
    thinking, text = answer["content"]
    assert thinking["type"] == "thinking" and thinking["thinking"] == "Thinking it over: tell me a joke"
    assert thinking["signature"]
    assert text == {"type": "text", "text": "Hello from fake-anthropic! You said: tell me a joke"}
    assert answer["usage"]["output_tokens"] == 7 + 9  # the thinking is billed as output


async def test_streamed_thinking_arrives_as_thinking_and_signature_deltas(session, anthropic):
    _, raw = await post(session, anthropic, thinking=THINKING, stream=True)
    payloads = [json.loads(line[6:]) for line in raw.decode().split("\n") if line.startswith("data: ")]
    starts = [p["content_block"]["type"] for p in payloads if p["type"] == "content_block_start"]
    assert starts == ["thinking", "text"]
    deltas = [p["delta"] for p in payloads if p["type"] == "content_block_delta" and p["index"] == 0]
    assert "".join(d.get("thinking", "") for d in deltas) == "Thinking it over: tell me a joke"
    assert deltas[-1]["type"] == "signature_delta" and deltas[-1]["signature"]


async def test_a_forced_tool_is_called_even_after_a_tool_result(session, anthropic):
    # The response_format technique forces a tool on any turn, tool rounds included.
    _, answer = await post(session, anthropic, tools=[TOOL], messages=TOOL_ROUND,
                           tool_choice={"type": "tool", "name": "get_weather"})
    assert answer["stop_reason"] == "tool_use"
    assert answer["content"][0]["name"] == "get_weather"
