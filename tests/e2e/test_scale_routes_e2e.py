"""Hundreds of department routes through the real Envoy (issue #21).

Fifty providers and 500 department routes: Envoy accepts the generated configuration
(it validates every version before serving it), every route answers a chat through it,
each provider's model reaches its provider from every route, an edit is served on the new
route's lanes and the old ones', and a path that is not served gets a 404 whose list of
paths is bounded: Envoy refuses a ``direct_response`` body over 4 KB, and listing every
path made one of 27 KB at 200 routes.
"""

from __future__ import annotations

import asyncio
import json
import re

import aiohttp
import pytest
import yaml

from bench.scale import config_text, serve_ready
from hapax.fakes import FakeOpenAI
from tests.conftest import gateway_config, wait_for
from tests.e2e.test_config_reload import save_by_rename

PROVIDERS = 50
DEPARTMENTS = 500
CONCURRENCY = 25
ENVOY_DIRECT_RESPONSE_MAX_BYTES = 4096


def _path(department: int) -> str:
    return f"/v1/department-{department:03d}/chat/completions"


def _model(provider: int) -> str:
    return f"model-{provider}"


@pytest.fixture(scope="module")
def fakes(fake_host):
    with fake_host.serving(*(FakeOpenAI(api_key=f"k-{i}", model=_model(i)) for i in range(PROVIDERS))) as fakes:
        yield fakes


@pytest.fixture(scope="module")
def gateway(fakes, start_gateway):
    providers = {f"provider-{i}": {"type": "openai", "model": _model(i), "api_key": f"k-{i}",
                                   "base_url": fake.base_url} for i, fake in enumerate(fakes)}
    routes = [{"path": _path(d), "handler": "chat", "metrics_labels": {"department": f"department-{d:03d}"}}
              for d in range(DEPARTMENTS)]
    return start_gateway(gateway_config(providers, routes=routes))


async def _chat_on_every_route(url: str) -> dict[str, tuple[int, dict]]:
    """Each department's path, asked for one provider's model in turn: path -> (status, answer)."""
    queue = iter(range(DEPARTMENTS))
    answers: dict[str, tuple[int, dict]] = {}

    async def client(session: aiohttp.ClientSession) -> None:
        for department in queue:
            body = {"model": _model(department % PROVIDERS), "messages": [{"role": "user", "content": "hi"}]}
            async with session.post(url + _path(department), json=body) as resp:
                answers[_path(department)] = (resp.status, await resp.json(content_type=None))

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        await asyncio.gather(*(client(session) for _ in range(CONCURRENCY)))
    return answers


def test_every_one_of_500_department_routes_answers_a_chat_through_envoy(gateway, fakes):
    answers = asyncio.run(_chat_on_every_route(gateway.url))

    failed = {path: answer for path, answer in answers.items() if answer[0] != 200}
    assert len(answers) == DEPARTMENTS and not failed, list(failed.items())[:3]
    assert all(answer["object"] == "chat.completion" for _, answer in answers.values())
    # Each provider answered its model's share: every one is reachable from the routes.
    for i, fake in enumerate(fakes):
        chats = [r.body["model"] for r in fake.requests if r.path == "/v1/chat/completions"]
        assert chats == [_model(i)] * (DEPARTMENTS // PROVIDERS), fake.base_url


def test_an_unknown_path_among_500_routes_gets_a_bounded_404_naming_the_first_paths_and_counting_the_rest(gateway):
    async def ask() -> tuple[int, str, bytes]:
        async with aiohttp.ClientSession() as session, session.post(
                gateway.url + "/v1/department-999/chat/completions", json={}) as resp:
            return resp.status, resp.headers["content-type"], await resp.read()

    status, content_type, raw = asyncio.run(ask())

    assert (status, content_type) == (404, "application/json")
    assert len(raw) < ENVOY_DIRECT_RESPONSE_MAX_BYTES
    error = json.loads(raw)["error"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", None, "unknown_url")
    served = sorted([_path(d) for d in range(DEPARTMENTS)]
                    + ["/health", "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models",
                       "/v1/messages", "/v1/messages/count_tokens", "/v1/responses"])
    listed = error["message"].split(": ", 1)[1].split(" and ", 1)[0].split(", ")
    assert listed == served[:len(listed)] and len(listed) > 1
    assert f" and {len(served) - len(listed)} more " in error["message"]


def test_an_edit_to_500_routes_is_served_on_the_new_route_and_every_lane_of_an_old_one(gateway, fakes):
    # Last in this module: it changes the module's gateway. One department more; the lanes'
    # cluster lookups are shared by every route, so the new route reaches every provider too.
    config = yaml.safe_load(gateway.config_path.read_text())
    config["routes"].append({"path": "/v1/department-new/chat/completions", "handler": "chat",
                             "metrics_labels": {"department": "department-new"}})
    save_by_rename(gateway.config_path, yaml.safe_dump(config, sort_keys=False))

    async def chat(path: str, model: str, stream: bool) -> int:
        async with aiohttp.ClientSession() as session, session.post(gateway.url + path, json={
                "model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}) as resp:
            await resp.read()
            return resp.status

    wait_for(lambda: asyncio.run(chat("/v1/department-new/chat/completions", _model(0), False)) == 200,
             "the new route served", timeout=60)
    # JSON takes the passthrough lane, a stream the model lane: both look the provider up by model.
    for i in range(PROVIDERS):
        for stream in (False, True):
            assert asyncio.run(chat("/v1/department-new/chat/completions", _model(i), stream)) == 200
            assert asyncio.run(chat(_path(DEPARTMENTS - 1), _model(i), stream)) == 200
    for fake in fakes:
        assert {r.body.get("stream", False) for r in fake.requests[-4:]} == {False, True}, fake.base_url


def test_the_scale_benchmark_times_a_real_serve_to_ready():
    # bench/scale.py --serve: the start-up to ready it prints for the sizes, here at a small one.
    assert re.fullmatch(r"\d+\.\d s, control plane \d+ MB", serve_ready(config_text(3, 5), limit=60))
