"""Coalescing's parts: which requests are identical, flights, and a follower's own id."""

from __future__ import annotations

import asyncio
import json
import textwrap

import pytest

from control_plane.config import ConfigError, parse_config
from ext_proc.coalescing import Coalescer, IdRewriter, coalescing_key, determined


def test_identical_means_same_client_route_and_parsed_body():
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    reordered = {"temperature": 0, "messages": [{"content": "hi", "role": "user"}], "model": "m"}
    assert coalescing_key("a", "/v1/chat/completions", body) == coalescing_key("a", "/v1/chat/completions", reordered)
    assert coalescing_key("a", "/v1/chat/completions", body) != coalescing_key("b", "/v1/chat/completions", body)
    assert coalescing_key("a", "/v1/chat/completions", body) != coalescing_key("a", "/x/v1/chat/completions", body)
    assert coalescing_key("a", "/r", body) != coalescing_key("a", "/r", {**body, "user": "u2"})


def test_only_a_determined_answer_is_coalesced_by_default():
    assert determined({"temperature": 0}) and determined({"seed": 7, "temperature": 1.2})
    assert not determined({}) and not determined({"temperature": 0.2})


def test_the_first_leads_the_next_follow_and_after_landing_a_new_one_leads():
    async def scenario() -> None:
        coalescer = Coalescer()
        flight, leading = coalescer.join("k")
        second, follows = coalescer.join("k")
        assert leading and second is flight and not follows
        flight.answer_started(200, {"content-type": "application/json", "x-hapax-provider": "p"})
        flight.add(b'{"id": "chatcmpl-1"}')
        flight.end()
        coalescer.landed("k", flight)
        assert coalescer.flight(flight.id) is flight  # late followers still find it
        third, leads_again = coalescer.join("k")
        assert leads_again and third is not flight
        assert flight.headers == {"content-type": "application/json"}  # the leader's own headers stay its own
        assert [piece async for piece in flight.follow()] == [b'{"id": "chatcmpl-1"}']

    asyncio.run(scenario())


def test_a_follower_waiting_on_a_leader_that_fails_gets_its_error():
    async def scenario() -> list[bytes]:
        flight, _ = Coalescer().join("k")
        pieces = asyncio.create_task(_collect(flight))
        await asyncio.sleep(0)
        flight.fail(504, b'{"error": {}}')
        return await pieces

    async def _collect(flight) -> list[bytes]:
        await flight.started()
        assert flight.status == 504
        return [piece async for piece in flight.follow()]

    assert asyncio.run(scenario()) == [b'{"error": {}}']


def test_a_follower_gets_the_answer_under_an_id_of_its_own():
    answer = {"id": "chatcmpl-abc123", "object": "chat.completion", "choices": []}
    rewriter = IdRewriter(stream=False)
    assert rewriter.feed(json.dumps(answer).encode()[:10]) == b""
    rewriter.feed(json.dumps(answer).encode()[10:])
    out = json.loads(rewriter.end())
    assert out["id"].startswith("chatcmpl-") and out["id"] != answer["id"] and out["object"] == "chat.completion"


def test_a_followed_stream_keeps_its_events_whole_across_pieces_and_one_id_throughout():
    events = [{"id": "chatcmpl-x", "choices": [{"delta": {"content": c}}]} for c in ("a", "b")]
    stream = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
    rewriter = IdRewriter(stream=True)
    out = b"".join(rewriter.feed(stream[i:i + 7]) for i in range(0, len(stream), 7)) + rewriter.end()
    lines = [line for line in out.decode().split("\n\n") if line]
    assert lines[-1] == "data: [DONE]"
    ids = {json.loads(line[6:])["id"] for line in lines[:-1]}
    assert len(ids) == 1 and ids != {"chatcmpl-x"}


def test_dedup_is_true_false_or_always_on_a_route_that_calls_a_provider():
    def route(dedup: str, handler: str = "chat") -> str:
        return textwrap.dedent(f"""\
            providers:
              openai: {{type: openai, model: m}}
            routes:
              - {{path: /x, handler: {handler}, dedup: {dedup}}}
            """)
    assert parse_config(route("true")).routes[0].dedup == "on"
    assert parse_config(route("always")).routes[0].dedup == "always"
    assert parse_config(route("false")).routes[0].dedup == "off"
    for wrong, handler in (("sometimes", "chat"), ("true", "models")):
        with pytest.raises(ConfigError) as caught:
            parse_config(route(wrong, handler))
        assert [issue.path for issue in caught.value.issues] == ["routes[0].dedup"]
