"""The passthrough lane, for real: OpenAI-to-OpenAI requests that Envoy serves without ext_proc.

Two OpenAI-compatible fakes serve the same model under different keys (two
accounts), then an Anthropic fake: a lane request fails over inside the lane
(the next provider's own key, from Envoy's SDS secret) and out of it (the
Anthropic attempt is translated by ext_proc as ever). Whether ext_proc saw a
request is read from Envoy's own ext_proc stats; what the providers got, from
the fakes' records; what was counted, from /metrics (the access log reaches it
a moment after the answer, hence wait_for).
"""

from __future__ import annotations

import json

import openai
import pytest

from hapax.fakes import FakeAnthropic, FakeOpenAI
from hapax.fakes.faults import Status
from tests.conftest import gateway_config, save_config, wait_for
from tests.e2e.test_failover_e2e import envoy_health_flags, provider_states

PRIMARY_KEY = "sk-lane-primary"
SECOND_KEY = "sk-lane-second"
CLAUDE_KEY = "sk-ant-lane"
CLIENT_KEY = "sk-client-of-the-lane"
MODEL = "gpt-4o-mini"
MARKETING = "/v1/marketing/chat/completions"


def lane_fakes(fake_host):
    """Two OpenAI accounts serving the same model under different keys, then Anthropic; stopped after."""
    providers = (fake_host.start(FakeOpenAI(api_key=PRIMARY_KEY, model=MODEL)),
                 fake_host.start(FakeOpenAI(api_key=SECOND_KEY, model=MODEL)),
                 fake_host.start(FakeAnthropic(api_key=CLAUDE_KEY, model="claude-3-haiku")))
    yield providers
    for fake in providers:
        fake_host.run(fake.stop())


@pytest.fixture(scope="module")
def fakes(fake_host):
    yield from lane_fakes(fake_host)


def two_accounts_and_claude(fakes, routes: list[dict]) -> dict:
    """The gateway of the lane tests: ``primary`` (alias "mini"), then ``second``, then ``claude``."""
    primary, second, claude = fakes
    return gateway_config(
        {"primary": {"type": "openai", "model": MODEL, "api_key": PRIMARY_KEY, "base_url": primary.base_url,
                     "aliases": ["mini"]},
         "second": {"type": "openai", "model": MODEL, "api_key": SECOND_KEY, "base_url": second.base_url},
         "claude": {"type": "anthropic", "model": "claude-3-haiku", "api_key": CLAUDE_KEY,
                    "base_url": claude.origin}},
        preference=["primary", "second", "claude"], routes=routes)


@pytest.fixture(scope="module")
def gateway(fakes, start_gateway):
    return start_gateway(two_accounts_and_claude(fakes, [
        {"path": "/v1/chat/completions", "handler": "chat"},
        {"path": "/v1/embeddings", "handler": "embeddings"},
        {"path": MARKETING, "handler": "chat", "metrics_labels": {"department": "marketing"}}]))


def fresh_client(gateway, fakes, api_key: str) -> openai.OpenAI:
    """A client of ``gateway`` whose fakes have forgotten earlier requests and faults."""
    for fake in fakes:
        fake.reset()
        fake.clear_faults()
    return openai.OpenAI(base_url=gateway.base_url, api_key=api_key, max_retries=0, timeout=30)


@pytest.fixture()
def client(gateway, fakes):
    return fresh_client(gateway, fakes, CLIENT_KEY)


def ext_proc_calls(gateway) -> int:
    """gRPC streams Envoy opened to ext_proc, router and upstream steps together."""
    lines = gateway.admin("/stats?filter=ext_proc.streams_started").splitlines()
    return sum(int(line.rsplit(":", 1)[1]) for line in lines if line.strip())


def ask(client, text: str, model: str = MODEL):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}])


def test_a_request_for_an_openai_providers_own_model_never_reaches_ext_proc(gateway, client, fakes):
    primary = fakes[0]
    before = ext_proc_calls(gateway)
    for i in range(5):
        assert ask(client, f"lane {i}").choices[0].message.content.endswith(f"lane {i}")
    assert ext_proc_calls(gateway) == before
    # Envoy did what ext_proc would have: the gateway's key in place of the client's, the body untouched.
    sent = primary.requests[-1]
    assert sent.headers["authorization"] == f"Bearer {PRIMARY_KEY}"
    assert CLIENT_KEY not in json.dumps(sent.headers)
    assert sent.body == {"model": MODEL, "messages": [{"role": "user", "content": "lane 4"}]}
    assert len(primary.requests) == 5


def test_a_department_route_reaches_the_providers_api_path_and_host(gateway, fakes):
    primary = fakes[0]
    primary.reset()
    marketing = openai.OpenAI(base_url=gateway.url + "/v1/marketing", api_key=CLIENT_KEY, max_retries=0)
    assert ask(marketing, "campaign").choices[0].message.content.endswith("campaign")
    sent = primary.requests[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["host"] == primary.origin.removeprefix("http://")


def test_a_lane_failover_goes_to_the_next_provider_with_its_own_key(gateway, client, fakes):
    primary, second, _ = fakes
    labels = {"route": "/v1/chat/completions", "provider": "second", "outcome": "failed_over"}
    failovers = gateway.metric("hapax_requests_total", **labels)
    primary.inject(Status(500), times=1, method="POST")
    before = ext_proc_calls(gateway)
    assert ask(client, "primary is down").choices[0].message.content.endswith("primary is down")
    assert ext_proc_calls(gateway) == before
    assert [r.headers["authorization"] for r in second.requests] == [f"Bearer {SECOND_KEY}"]
    wait_for(lambda: gateway.metric("hapax_requests_total", **labels) == failovers + 1, "the failover counted")


def test_a_retry_after_on_the_lane_keeps_traffic_off_the_provider_until_it_passes(gateway, client, fakes):
    primary, second, _ = fakes
    primary.inject(Status(429, retry_after=2), times=1, method="POST")
    assert ask(client, "quota?").choices[0].message.content.endswith("quota?")
    assert len(second.requests) == 1
    # Envoy logged the 429 attempt with its retry-after; ext_proc held the provider off.
    wait_for(lambda: provider_states(gateway)["primary"] == "holding_off", "the primary held off")
    wait_for(lambda: "failed_active_hc" in envoy_health_flags(gateway, "primary"), "Envoy to hold the primary off")
    held_at = len(primary.requests)
    for i in range(3):
        ask(client, f"held {i}")
    assert len(primary.requests) == held_at
    wait_for(lambda: provider_states(gateway)["primary"] == "healthy", "the retry-after to pass")
    wait_for(lambda: "failed_active_hc" not in envoy_health_flags(gateway, "primary"), "the primary back in Envoy")


def test_a_lane_request_failing_over_to_anthropic_is_translated_by_ext_proc(gateway, client, fakes):
    primary, second, claude = fakes
    labels = {"route": "/v1/chat/completions", "provider": "claude", "gen_ai_token_type": "input"}
    answered = {"route": "/v1/chat/completions", "provider": "claude", "outcome": "failed_over"}
    counted = gateway.metric("gen_ai_client_token_usage_count", **labels)
    requests = gateway.metric("hapax_requests_total", **answered)
    primary.inject(Status(500), times=1, method="POST")
    second.inject(Status(503), times=1, method="POST")
    reply = ask(client, "both openai accounts are down")
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.content.endswith("both openai accounts are down")
    [sent] = claude.requests
    assert sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == CLAUDE_KEY
    assert "authorization" not in sent.headers
    assert sent.body["model"] == "claude-3-haiku"
    # Counted once, by the access log, though ext_proc translated the answer.
    wait_for(lambda: gateway.metric("hapax_requests_total", **answered) == requests + 1, "the request counted")
    assert gateway.metric("gen_ai_client_token_usage_count", **labels) == counted + 1


def test_lane_requests_are_counted_per_department_with_their_tokens_and_cost(gateway, fakes):
    marketing = openai.OpenAI(base_url=gateway.url + "/v1/marketing", api_key=CLIENT_KEY, max_retries=0)
    answered = {"department": "marketing", "route": MARKETING, "provider": "primary", "model": MODEL}
    series = {"requests": ("hapax_requests_total", {"status_class": "2xx", "outcome": "success"}),
              "input": ("gen_ai_client_token_usage_sum", {"gen_ai_token_type": "input"}),
              "output": ("gen_ai_client_token_usage_sum", {"gen_ai_token_type": "output"}),
              "cost": ("hapax_cost_usd_total", {}),
              "durations": ("gen_ai_server_request_duration_seconds_count", {})}

    def read() -> dict[str, float]:
        return {key: gateway.metric(name, **answered, **extra) for key, (name, extra) in series.items()}

    before = read()
    replies = [ask(marketing, f"quarterly numbers {i}") for i in range(3)]
    wait_for(lambda: read()["requests"] == before["requests"] + 3, "three lane requests counted")
    after = read()
    assert after["input"] - before["input"] == sum(r.usage.prompt_tokens for r in replies)
    assert after["output"] - before["output"] == sum(r.usage.completion_tokens for r in replies)
    assert after["cost"] > before["cost"]
    assert after["durations"] - before["durations"] == 3


def test_streams_and_aliases_still_go_through_ext_proc(gateway, client, fakes):
    before = ext_proc_calls(gateway)
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "stream it"}],
                                            stream=True)
    chunks = [c for c in stream]
    assert all(c.choices for c in chunks)  # the usage chunk the gateway asked for stays with it
    assert ext_proc_calls(gateway) > before
    streamed = ext_proc_calls(gateway)
    assert ask(client, "by alias", model="mini").model == MODEL
    assert fakes[0].requests[-1].body["model"] == MODEL  # rewritten from "mini"
    assert ext_proc_calls(gateway) > streamed


def test_embeddings_take_the_lane(gateway, client, fakes):
    before = ext_proc_calls(gateway)
    reply = client.embeddings.create(model=MODEL, input=["a", "b"])
    assert [d.index for d in reply.data] == [0, 1]
    assert ext_proc_calls(gateway) == before
    assert fakes[0].requests[-1].path == "/v1/embeddings"


def test_a_rotated_provider_key_reaches_the_lane_without_a_restart(fake_host, start_gateway):
    provider = fake_host.start(FakeOpenAI(api_key="sk-before-rotation", model=MODEL))
    try:
        config = gateway_config({"openai": {"type": "openai", "model": MODEL, "api_key": "sk-before-rotation",
                                            "base_url": provider.base_url}})
        gw = start_gateway(config)
        client = openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=30)
        before = ext_proc_calls(gw)
        ask(client, "old key")
        provider.api_key = "sk-after-rotation"  # the provider now refuses the old key
        config["providers"]["openai"]["api_key"] = "sk-after-rotation"
        save_config(gw.config_path, config)

        def new_key_works() -> bool:
            try:
                return ask(client, "new key").choices[0].message.content.endswith("new key")
            except openai.APIStatusError:
                return False

        wait_for(new_key_works, "the new key in Envoy's secret")
        assert provider.requests[-1].headers["authorization"] == "Bearer sk-after-rotation"
        assert ext_proc_calls(gw) == before  # still the lane: the key came as a new SDS secret version
        assert "sk-after-rotation" not in "".join(gw.stderr)
    finally:
        fake_host.run(provider.stop())
