"""The whole path, for real: openai SDK -> Envoy -> ext_proc -> fake provider.

One gateway (``hapax serve`` with its three processes) and two fake
OpenAI-compatible providers serve every test in this module.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import openai
import pytest

from hapax.fakes import FakeOpenAI
from tests.conftest import gateway_config

PRIMARY_KEY = "sk-primary-secret"
BACKUP_KEY = "sk-backup-secret"
CLIENT_KEY = "sk-client-should-never-leave"

ROUTES = [
    {"path": "/v1/chat/completions", "handler": "chat"},
    {"path": "/v1/completions", "handler": "completion"},
    {"path": "/v1/embeddings", "handler": "embeddings"},
    {"path": "/v1/models", "handler": "models"},
    # The seed's department route, verbatim.
    {"path": "/v1/marketing/completions", "handler": "completion", "version": "v1",
     "metrics_labels": {"department": "marketing"}},
]


@pytest.fixture(scope="module")
def fakes(fake_host):
    primary = fake_host.start(FakeOpenAI(api_key=PRIMARY_KEY, model="gpt-4o-mini"))
    backup = fake_host.start(FakeOpenAI(api_key=BACKUP_KEY, model="llama-3-70b"))
    yield primary, backup
    fake_host.run(primary.stop())
    fake_host.run(backup.stop())


@pytest.fixture(scope="module")
def gateway(fakes, start_gateway):
    primary, backup = fakes
    config = gateway_config(
        {
            "primary": {"type": "openai", "model": "gpt-4o-mini", "api_key": "${TEST_PRIMARY_KEY}",
                        "base_url": primary.base_url},
            "backup": {"type": "openai", "model": "llama-3-70b", "api_key": "${TEST_BACKUP_KEY}",
                       "base_url": backup.base_url, "aliases": ["llama"]},
        },
        preference=["primary", "backup"],
        routes=ROUTES,
    )
    return start_gateway(config, env={"TEST_PRIMARY_KEY": PRIMARY_KEY, "TEST_BACKUP_KEY": BACKUP_KEY})


@pytest.fixture()
def client(gateway, fakes):
    for fake in fakes:
        fake.reset()
    return openai.OpenAI(base_url=gateway.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=30)


def raw(gateway, method: str, path: str, body: bytes | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, dict, dict]:
    req = urllib.request.Request(gateway.url + path, data=body, method=method,
                                 headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read())


def only_request(fake):
    assert len(fake.requests) == 1, [r.path for r in fake.requests]
    return fake.requests[0]


# ---------------------------------------------------------------- happy paths


def test_chat_completion_through_gateway_with_openai_sdk(client, fakes):
    primary, _ = fakes
    reply = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "ping from the sdk"}])
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.content == "Hello from fake-openai! You said: ping from the sdk"
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens > 0
    sent = only_request(primary)
    assert sent.path == "/v1/chat/completions"
    assert sent.body["model"] == "gpt-4o-mini"


def test_provider_gets_its_own_credential_and_never_the_clients(client, fakes):
    primary, _ = fakes
    client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}],
                                   extra_headers={"x-api-key": CLIENT_KEY})
    sent = only_request(primary)
    assert sent.headers["authorization"] == f"Bearer {PRIMARY_KEY}"
    assert CLIENT_KEY not in json.dumps(sent.headers)
    assert not any(k.startswith("x-hapax-") for k in sent.headers)
    assert "x-envoy-max-retries" not in sent.headers  # consumed by Envoy's router
    assert "x-envoy-attempt-count" not in sent.headers  # read by ext_proc, then removed


def test_streaming_chat_completion_arrives_as_sse_chunks(client, fakes):
    primary, _ = fakes
    expected = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "stream me please"}]
    ).choices[0].message.content
    primary.reset()
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "stream me please"}], stream=True)
    chunks = list(stream)
    # Every chunk has a choice: the usage chunk the gateway asks the provider
    # for (to count tokens) is not passed to a client that did not ask for it.
    assert all(c.choices for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == expected
    assert len([c for c in chunks if c.choices[0].delta.content]) > 3
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert only_request(primary).body["stream_options"] == {"include_usage": True}


def test_a_client_that_asks_for_usage_gets_the_usage_chunk(client):
    chunks = list(client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "count my tokens"}], stream=True,
        stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert all(c.choices for c in chunks[:-1])


def test_model_picks_the_provider_that_serves_it(client, fakes):
    primary, backup = fakes
    reply = client.chat.completions.create(model="llama", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content.startswith("Hello from fake-openai")
    assert primary.requests == []
    sent = only_request(backup)
    assert sent.body["model"] == "llama-3-70b"
    assert sent.headers["authorization"] == f"Bearer {BACKUP_KEY}"


def test_legacy_completion_answers_in_text_completion_shape(client, fakes):
    primary, _ = fakes
    reply = client.completions.create(model="gpt-4o-mini", prompt="complete this", max_tokens=50)
    assert reply.object == "text_completion"
    assert reply.id.startswith("cmpl-"), reply.id  # the fake provider's chat id is chatcmpl-
    assert reply.choices[0].text == "Hello from fake-openai! You said: complete this"
    sent = only_request(primary)
    assert sent.path == "/v1/chat/completions"
    assert sent.body["messages"] == [{"role": "user", "content": "complete this"}]


def test_legacy_completion_streams_text_chunks(client):
    stream = client.completions.create(model="gpt-4o-mini", prompt="stream legacy", stream=True)
    chunks = [c for c in stream if c.choices]
    assert all(c.object == "text_completion" for c in chunks)
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].id.startswith("cmpl-"), chunks[0].id
    assert "".join(c.choices[0].text for c in chunks) == "Hello from fake-openai! You said: stream legacy"


@pytest.mark.parametrize("body", [{"input": "original hapax input"},
                                  {"messages": [{"role": "user", "content": "original hapax input"}]}])
def test_completion_accepts_the_original_hapax_body_shapes(gateway, client, body):
    status, _, reply = raw(gateway, "POST", "/v1/completions", json.dumps(body).encode())
    assert status == 200
    assert reply["object"] == "text_completion"
    assert reply["choices"][0]["text"] == "Hello from fake-openai! You said: original hapax input"


def test_department_route_from_the_seed_example_serves_completions(gateway, client, fakes):
    marketing = openai.OpenAI(base_url=gateway.url + "/v1/marketing", api_key=CLIENT_KEY, max_retries=0)
    reply = marketing.completions.create(model="auto", prompt="launch copy")
    assert reply.choices[0].text == "Hello from fake-openai! You said: launch copy"
    assert only_request(fakes[0]).path == "/v1/chat/completions"


def test_embeddings_pass_through_to_the_provider(client, fakes):
    reply = client.embeddings.create(model="gpt-4o-mini", input=["a", "b"])
    assert [d.index for d in reply.data] == [0, 1]
    assert len(reply.data[0].embedding) > 0
    assert only_request(fakes[0]).path == "/v1/embeddings"


def test_models_are_listed_from_the_configuration(client, fakes):
    ids = sorted(m.id for m in client.models.list())
    assert ids == ["gpt-4o-mini", "llama", "llama-3-70b"]
    assert fakes[0].requests == [] and fakes[1].requests == []


def test_health_reports_envoy_control_plane_and_ext_proc_up(gateway):
    status, _, body = raw(gateway, "GET", "/health")
    assert status == 200
    assert body["status"] == "ok"
    assert {k: v["status"] for k, v in body["components"].items()} == {
        "envoy": "up", "ext_proc": "up", "control_plane": "up", "providers": "up"}
    assert body["components"]["control_plane"]["config_version"]


# ---------------------------------------------------------------- client errors


def _assert_openai_error(status, headers, body, expected_status, code=None):
    assert status == expected_status, body
    assert headers.get("content-type", headers.get("Content-Type", "")).startswith("application/json")
    assert set(body["error"]) >= {"message", "type", "code"}
    if code is not None:
        assert body["error"]["code"] == code


def test_malformed_json_gets_400_without_calling_a_provider(gateway, client, fakes):
    status, headers, body = raw(gateway, "POST", "/v1/chat/completions", b'{"model": "gpt-4o-mini", "messages": [')
    _assert_openai_error(status, headers, body, 400, "invalid_json")
    assert fakes[0].requests == [] and fakes[1].requests == []


# "llama" is an alias: the body must be rewritten, so ext_proc reads it (and checks it).
@pytest.mark.parametrize("payload,param", [
    ({"model": "llama"}, "messages"),
    ({"model": "llama", "messages": "hi"}, "messages"),
    ({"model": "llama", "messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"model": "llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "ten"}, "max_tokens"),
    ({"model": 42, "messages": [{"role": "user", "content": "hi"}]}, "model"),
    # Not a boolean: keeps the request off the passthrough lane even with the provider's own model name.
    ({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, "stream"),
])
def test_invalid_chat_requests_get_400_naming_the_parameter(gateway, client, fakes, payload, param):
    status, headers, body = raw(gateway, "POST", "/v1/chat/completions", json.dumps(payload).encode())
    _assert_openai_error(status, headers, body, 400)
    assert body["error"]["param"] == param
    assert fakes[0].requests == [] and fakes[1].requests == []


@pytest.mark.parametrize("payload,param", [
    ({"model": "gpt-4o-mini"}, "messages"),
    ({"model": "gpt-4o-mini", "messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
])
def test_passthrough_requests_are_checked_by_the_provider_whose_api_they_use(gateway, client, fakes, payload, param):
    # The provider's own model name and no stream: Envoy forwards the body as it is,
    # and the OpenAI-compatible provider's error reaches the client unchanged.
    status, headers, body = raw(gateway, "POST", "/v1/chat/completions", json.dumps(payload).encode())
    _assert_openai_error(status, headers, body, 400)
    assert body["error"]["param"] == param
    assert only_request(fakes[0]).body == payload


def test_unknown_model_gets_404_model_not_found(client, fakes):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-17", messages=[{"role": "user", "content": "hi"}])
    assert err.value.body["code"] == "model_not_found"
    assert "gpt-4o-mini" in err.value.body["message"]
    assert fakes[0].requests == []


def test_unknown_path_gets_404_in_openai_error_shape(gateway):
    status, headers, body = raw(gateway, "POST", "/v1/nonsense", b"{}")
    _assert_openai_error(status, headers, body, 404, "unknown_url")
    assert "/v1/chat/completions" in body["error"]["message"]


def test_wrong_method_gets_405_with_allow_header(gateway):
    status, headers, body = raw(gateway, "GET", "/v1/chat/completions")
    _assert_openai_error(status, headers, body, 405, "method_not_allowed")
    assert headers.get("allow") == "POST"


def test_oversized_body_gets_413_and_gateway_keeps_serving(gateway, client, fakes):
    huge = json.dumps({"model": "gpt-4o-mini",
                       "messages": [{"role": "user", "content": "x" * (9 * 1024 * 1024)}]}).encode()
    status, headers, body = raw(gateway, "POST", "/v1/chat/completions", huge)
    _assert_openai_error(status, headers, body, 413, "request_too_large")
    assert fakes[0].requests == []
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "still up?"}])
    assert reply.choices[0].message.content.endswith("still up?")


# ---------------------------------------------------------------- secrets


def test_api_keys_never_reach_envoy_config_or_logs(gateway, client):
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    dump = gateway.admin("/config_dump?include_eds")
    assert "provider.primary" in dump  # the dump is the real one
    for secret in (PRIMARY_KEY, BACKUP_KEY):
        assert secret not in dump
        assert secret not in "".join(gateway.stderr) + "".join(gateway.output)


def test_health_accepts_get_only(gateway):
    status, headers, body = raw(gateway, "POST", "/health", b"{}")
    _assert_openai_error(status, headers, body, 405, "method_not_allowed")
    assert headers.get("allow") == "GET"


@pytest.mark.parametrize("handler,words", [("chat", 600_000), ("completion", 600_000)])
def test_large_prompts_are_served(client, fakes, handler, words):
    # 3 MB each way (the fake echoes the prompt). The legacy completion's answer
    # is converted by ext_proc: a body that pushed the ext_proc connection over
    # its write watermark used to crash Envoy 1.40 (see ext_proc_grpc_cluster).
    prompt = "word " * words
    if handler == "chat":
        reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}])
        text = reply.choices[0].message.content
    else:
        text = client.completions.create(model="gpt-4o-mini", prompt=prompt).choices[0].text
    assert text.startswith("Hello from fake-openai! You said: word word")
    sent = only_request(fakes[0])
    assert sent.body["messages"][-1]["content"] == prompt
