"""Client keys through the real Envoy: who may call, checked before any provider is touched.

One gateway with two clients in front of a fake OpenAI and a fake Anthropic. Every lane
(passthrough, model lane, the router step's route) refuses a missing or unknown key with
OpenAI's 401 JSON and serves a good one, from ``Authorization: Bearer`` or ``x-api-key``;
the providers never see the client's key; a key removed from the file is refused on the
next request of a connection that was open; the client's labels are on its series.
"""

from __future__ import annotations

import http.client
import json
import time

import openai
import pytest
import yaml

from hapax.client_keys import new_key
from hapax.fakes import FakeAnthropic, FakeOpenAI
from tests.conftest import gateway_config, wait_for
from tests.raw_http import Answer, connect, send

SEARCH_KEY, SEARCH_LINE = new_key()
ADS_KEY, ADS_LINE = new_key()
INTERN_KEY, INTERN_LINE = new_key()  # confined to one model and one route
# (model, what serves it): the passthrough lane, the model lane (translated), the router step.
LANES = [("gpt-4o-mini", "passthrough"), ("claude-3-5-haiku-latest", "model lane"), ("no-such-model", "router")]


@pytest.fixture(scope="module")
def fakes(fake_host):
    openai_fake = fake_host.start(FakeOpenAI(api_key="provider-openai-key", model="gpt-4o-mini"))
    anthropic_fake = fake_host.start(FakeAnthropic(api_key="provider-anthropic-key", model="claude-3-5-haiku-latest"))
    yield openai_fake, anthropic_fake
    fake_host.run(openai_fake.stop())
    fake_host.run(anthropic_fake.stop())


def keyed_config(fakes, lines: dict[str, str]) -> dict:
    openai_fake, anthropic_fake = fakes
    config = gateway_config({
        "openai": {"type": "openai", "model": "gpt-4o-mini", "api_key": "provider-openai-key",
                   "base_url": openai_fake.base_url},
        "anthropic": {"type": "anthropic", "model": "claude-3-5-haiku-latest", "api_key": "provider-anthropic-key",
                      "base_url": anthropic_fake.base_url}})
    labels = {"search": {"department": "search"}, "ads": {"department": "ads"}, "intern": {"department": "ads"}}
    config["clients"] = {name: {"keys": [line], "metrics_labels": labels[name]} for name, line in lines.items()}
    if "intern" in config["clients"]:
        config["clients"]["intern"].update(models=["gpt-4o-mini"], routes=["/v1/chat/completions"])
    return config


@pytest.fixture(scope="module")
def gateway(fakes, start_gateway):
    return start_gateway(keyed_config(fakes, {"search": SEARCH_LINE.htpasswd, "ads": ADS_LINE.htpasswd,
                                              "intern": INTERN_LINE.htpasswd}))


def chat(gateway, model: str, headers: dict[str, str],
         connection: http.client.HTTPConnection | None = None) -> Answer:
    """A chat request, on ``connection`` (kept open) or on a connection of its own."""
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return send(gateway, "POST", "/v1/chat/completions", body, headers, connection)


@pytest.mark.parametrize(("model", "lane"), LANES)
@pytest.mark.parametrize(("headers", "code"), [
    ({}, "missing_api_key"),
    ({"authorization": "Bearer sk-not-a-hapax-key"}, "missing_api_key"),
    ({"authorization": f"Bearer {SEARCH_KEY[:-4]}0000"}, "invalid_api_key"),
    ({"x-api-key": f"hpx-{'0' * 12}-{'1' * 48}"}, "invalid_api_key"),
])
def test_a_missing_or_unknown_key_gets_openais_401_before_any_provider(gateway, fakes, model, lane, headers, code):
    for fake in fakes:
        fake.requests.clear()
    answer = chat(gateway, model, headers)
    assert answer.status == 401, (lane, answer.body)
    assert answer.headers["content-type"] == "application/json"
    assert answer.error()["code"] == code and answer.error()["type"] == "invalid_request_error"
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert not any(fake.requests for fake in fakes)


@pytest.mark.parametrize(("model", "lane"), LANES[:2])
def test_a_good_key_is_served_on_every_lane_and_no_provider_sees_it(gateway, fakes, model, lane):
    for fake in fakes:
        fake.requests.clear()
    client = openai.OpenAI(base_url=gateway.base_url, api_key=SEARCH_KEY, max_retries=0)
    answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content
    seen = [r for fake in fakes for r in fake.requests]
    assert len(seen) == 1, lane
    secret = SEARCH_KEY.rsplit("-", 1)[1]
    dumped = json.dumps(seen[0].headers)
    assert secret not in dumped and SEARCH_KEY not in dumped and "Basic " not in dumped
    assert "x-hapax-key-id" not in seen[0].headers


def test_a_confined_client_gets_403_for_another_model_or_route_before_any_provider(gateway, fakes):
    for fake in fakes:
        fake.requests.clear()
    bearer = {"authorization": f"Bearer {INTERN_KEY}"}
    assert chat(gateway, "gpt-4o-mini", bearer).status == 200
    other_model = chat(gateway, "claude-3-5-haiku-latest", bearer)
    assert other_model.status == 403
    assert other_model.error()["code"] == "not_allowed"
    assert "claude-3-5-haiku-latest" in other_model.error()["message"]
    embeddings = send(gateway, "POST", "/v1/embeddings", {"model": "gpt-4o-mini", "input": "hi"}, bearer)
    assert embeddings.status == 403 and embeddings.error()["code"] == "not_allowed"
    assert len([r for fake in fakes for r in fake.requests if r.method == "POST"]) == 1
    # Another client's key is not confined by this one's scope.
    assert chat(gateway, "claude-3-5-haiku-latest", {"authorization": f"Bearer {ADS_KEY}"}).status == 200


@pytest.mark.parametrize(("model", "lane"), LANES[:2])
def test_the_anthropic_sdks_header_carries_a_key_too_and_no_provider_sees_it(gateway, fakes, model, lane):
    for fake in fakes:
        fake.requests.clear()
    answer = chat(gateway, model, {"x-api-key": ADS_KEY})
    assert answer.status == 200, answer.body
    [seen] = [r for fake in fakes for r in fake.requests]
    assert ADS_KEY.rsplit("-", 1)[1] not in json.dumps(seen.headers), lane


def test_health_needs_no_key(gateway):
    assert send(gateway, "GET", "/health").status == 200


def test_a_clients_requests_are_counted_under_its_department(gateway):
    client = openai.OpenAI(base_url=gateway.base_url, api_key=ADS_KEY, max_retries=0)

    def counted(model: str) -> float:
        return gateway.metric("hapax_requests_total", department="ads", model=model)

    models = ("gpt-4o-mini", "claude-3-5-haiku-latest")  # the passthrough lane, the model lane
    time.sleep(0.5)  # the earlier tests' requests are counted (the access log comes in batches)
    before = {model: counted(model) for model in models}
    # Another client's request beside each: counted in the same batch, under its own labels.
    other = openai.OpenAI(base_url=gateway.base_url, api_key=SEARCH_KEY, max_retries=0)
    for model in models:
        other.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    wait_for(lambda: all(counted(model) >= before[model] + 1 for model in models), "ads' two requests counted")
    time.sleep(0.5)
    assert all(counted(model) == before[model] + 1 for model in models)


def test_a_key_removed_from_the_file_is_refused_on_a_connection_already_open(gateway, fakes):
    connection = connect(gateway)
    try:
        assert chat(gateway, "gpt-4o-mini", {"authorization": f"Bearer {ADS_KEY}"}, connection).status == 200
        gateway.config_path.write_text(yaml.safe_dump(keyed_config(fakes, {"search": SEARCH_LINE.htpasswd})))
        deadline = time.monotonic() + 30
        status = 200
        while status == 200 and time.monotonic() < deadline:
            status = chat(gateway, "gpt-4o-mini", {"authorization": f"Bearer {ADS_KEY}"}, connection).status
            time.sleep(0.1)
        assert status == 401
        # The same connection, the key still in the file: served.
        assert chat(gateway, "gpt-4o-mini", {"authorization": f"Bearer {SEARCH_KEY}"}, connection).status == 200
    finally:
        connection.close()

