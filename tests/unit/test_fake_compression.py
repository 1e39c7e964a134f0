"""The fakes compress their answers as real providers do, and record every header they receive.

The client here never decompresses (``auto_decompress=False``): what it reads is
what a gateway forwarding the client's ``Accept-Encoding`` would have to read.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from hapax.fakes import FakeAnthropic, FakeOllama, FakeOpenAI, FakeProvider, Status
from hapax.fakes.compression import negotiate

KEY = "test-key"
HELLO = [{"role": "user", "content": "tell me a joke"}]
# zlib window bits that read each coding back.
READ = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def openai_call(fake: FakeProvider, stream: bool) -> tuple[str, dict[str, Any], dict[str, str]]:
    body = {"model": "gpt-4o-mini", "messages": HELLO, "stream": stream}
    return f"{fake.base_url}/chat/completions", body, {"Authorization": f"Bearer {KEY}"}


def anthropic_call(fake: FakeProvider, stream: bool) -> tuple[str, dict[str, Any], dict[str, str]]:
    body = {"model": "claude-test", "max_tokens": 100, "messages": HELLO, "stream": stream}
    return f"{fake.origin}/v1/messages", body, {"x-api-key": KEY, "anthropic-version": "2023-06-01"}


def ollama_call(fake: FakeProvider, stream: bool) -> tuple[str, dict[str, Any], dict[str, str]]:
    return f"{fake.origin}/api/chat", {"model": "llama3.2", "messages": HELLO, "stream": stream}, {}


CALLS = {FakeOpenAI: openai_call, FakeAnthropic: anthropic_call, FakeOllama: ollama_call}
# Where each answer says how many tokens it used: the field a gateway must be able to read.
USAGE = {FakeOpenAI: "usage", FakeAnthropic: "usage", FakeOllama: "eval_count"}


@pytest.fixture
async def raw() -> AsyncIterator[aiohttp.ClientSession]:
    # No Accept-Encoding of aiohttp's own: each test says what it accepts.
    async with aiohttp.ClientSession(auto_decompress=False, skip_auto_headers=["Accept-Encoding"],
                                     timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


def decode(body: bytes, coding: str) -> bytes:
    return zlib.decompress(body, READ[coding])


@pytest.mark.parametrize(("header", "coding"), [
    ("gzip, deflate", "gzip"),       # the OpenAI SDK
    ("deflate", "deflate"),
    ("GZIP", "gzip"),
    ("gzip;q=0, deflate", "deflate"),
    ("*", "gzip"),
    ("br", None),                    # the fakes cannot produce Brotli
    ("identity", None),
    ("*;q=0", None),
    ("", None),
])
def test_the_coding_follows_the_requests_accept_encoding(header, coding):
    assert negotiate(header) == coding


@pytest.mark.parametrize("fake_type", [FakeOpenAI, FakeAnthropic, FakeOllama])
@pytest.mark.parametrize("coding", ["gzip", "deflate"])
async def test_every_fake_compresses_its_json_answer_when_the_request_allows_it(raw, fake_type, coding):
    async with fake_type(api_key=KEY if fake_type is not FakeOllama else None) as fake:
        url, body, headers = CALLS[fake_type](fake, False)
        async with raw.post(url, json=body, headers={**headers, "Accept-Encoding": coding}) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Encoding"] == coding
            wire = await resp.read()
    assert int(resp.headers["Content-Length"]) == len(wire)
    assert USAGE[fake_type] in json.loads(decode(wire, coding))


@pytest.mark.parametrize("accept", [None, "identity", "br"])
async def test_an_answer_is_plain_when_the_request_allows_no_coding_the_fake_has(raw, accept):
    async with FakeAnthropic(api_key=KEY) as fake:
        url, body, headers = anthropic_call(fake, False)
        extra = {"Accept-Encoding": accept} if accept else {}
        async with raw.post(url, json=body, headers={**headers, **extra}) as resp:
            assert "Content-Encoding" not in resp.headers
            assert json.loads(await resp.read())["usage"]["input_tokens"] > 0


@pytest.mark.parametrize("fake_type", [FakeOpenAI, FakeAnthropic, FakeOllama])
async def test_a_stream_is_compressed_and_each_event_decodes_as_it_arrives(raw, fake_type):
    async with fake_type(api_key=KEY if fake_type is not FakeOllama else None, chunk_delay=0.2) as fake:
        url, body, headers = CALLS[fake_type](fake, True)
        async with raw.post(url, json=body, headers={**headers, "Accept-Encoding": "gzip, deflate"}) as resp:
            assert resp.headers["Content-Encoding"] == "gzip"
            reader = zlib.decompressobj(READ["gzip"])
            # The first event is flushed on its own: it decodes whole before the next is written.
            first = reader.decompress(await resp.content.readany())
            rest = reader.decompress(await resp.content.read()) + reader.flush()
    separator = b"\n" if fake_type is FakeOllama else b"\n\n"  # ndjson lines, SSE events
    events = (first + rest).split(separator)
    assert first == events[0] + separator  # exactly the first event, whole
    assert len(events) > 3
    assert reader.eof  # the compressed stream was ended, not cut


async def test_an_error_answer_is_compressed_too(raw):
    async with FakeOpenAI(api_key=KEY) as fake:
        fake.inject(Status(429, retry_after=1))
        url, body, headers = openai_call(fake, False)
        async with raw.post(url, json=body, headers={**headers, "Accept-Encoding": "gzip"}) as resp:
            assert (resp.status, resp.headers["Content-Encoding"]) == (429, "gzip")
            error = json.loads(decode(await resp.read(), "gzip"))
    assert error["error"]["code"] == "rate_limit_exceeded"


async def test_every_header_a_fake_receives_is_recorded(raw):
    async with FakeOpenAI(api_key=KEY) as fake:
        url, body, headers = openai_call(fake, False)
        sent = {**headers, "Accept-Encoding": "gzip, deflate", "X-Stainless-Lang": "python",
                "User-Agent": "probe/1", "X-Anything-At-All": "kept"}
        async with raw.post(url, json=body, headers=sent) as resp:
            assert resp.status == 200
    recorded = fake.requests[-1].headers
    for name, value in sent.items():
        assert recorded[name.lower()] == value
    assert {"host", "content-type", "content-length"} <= set(recorded)
