"""Department-labelled metrics, Envoy's own stats, and logs, through the real gateway.

Two department routes (the seed's marketing completions, an engineering chat
route) in front of a fake OpenAI and a fake Anthropic. The tests scrape
Hapax's /metrics and Envoy's /stats/prometheus and compare them with exactly
the traffic they sent: counts, token sums (from the usage the clients got),
cost from the configured prices.
"""

from __future__ import annotations

import contextlib
import json
import re
import urllib.error
import urllib.request

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hapax.fakes import FakeAnthropic, FakeOpenAI, Status
from tests.conftest import gateway_config, wait_for
from tests.unit.test_observability_assets import EXPORTED_METRICS

PRIMARY_KEY, SECONDARY_KEY = "sk-primary-SECRET-0123456789", "sk-ant-secondary-SECRET-9876543210"
MARKETING, ENGINEERING = "/v1/marketing/completions", "/v1/engineering/chat/completions"
# USD per million tokens: round numbers so that expected costs are exact.
PRICES = {"gpt-4o-mini": (1000.0, 2000.0), "claude-3-haiku": (3000.0, 5000.0)}


@pytest.fixture(scope="module")
def fakes(fake_host):
    primary = fake_host.start(FakeOpenAI(api_key=PRIMARY_KEY, model="gpt-4o-mini"))
    secondary = fake_host.start(FakeAnthropic(api_key=SECONDARY_KEY, model="claude-3-haiku"))
    yield primary, secondary
    for fake in (primary, secondary):
        fake_host.run(fake.stop())


def two_providers(primary, secondary) -> dict:
    return gateway_config(
        {"primary": {"type": "openai", "model": "gpt-4o-mini", "api_key": PRIMARY_KEY, "base_url": primary.base_url},
         "secondary": {"type": "anthropic", "model": "claude-3-haiku", "api_key": SECONDARY_KEY,
                       "base_url": secondary.base_url}},
        preference=["primary", "secondary"])


@pytest.fixture(scope="module")
def gateway(fakes, start_gateway):
    config = two_providers(*fakes)
    config["routes"] = [
        {"path": MARKETING, "handler": "completion", "metrics_labels": {"department": "marketing"}},
        {"path": ENGINEERING, "handler": "chat", "metrics_labels": {"department": "engineering"}},
    ]
    config["pricing"] = {model: {"input": i, "output": o} for model, (i, o) in PRICES.items()}
    return start_gateway(config)


def client_for(gateway, department: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1/{department}", api_key="client-key", max_retries=0)


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Exposition lines as written: name, labels, value. (prometheus_client's parser
    renames counters to *_total, which merges Envoy's upstream_rq with upstream_rq_total.)"""
    out = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and not line.startswith("#"):
            out.append((match[1], dict(_LABEL.findall(match[2] or "")), float(match[3])))
    return out


def envoy_stat(gateway, name: str, **labels: str) -> float:
    return sum(value for sample, have, value in samples(scrape(gateway.envoy_stats_url))
               if sample == name and all(have.get(k) == v for k, v in labels.items()))


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode()


class Ledger:
    """What the clients of one department sent and were told."""

    def __init__(self) -> None:
        self.input_tokens = self.output_tokens = 0

    def add(self, usage) -> None:
        self.input_tokens += usage.prompt_tokens
        self.output_tokens += usage.completion_tokens

    def cost(self, model: str) -> float:
        per_input, per_output = PRICES[model]
        return (self.input_tokens * per_input + self.output_tokens * per_output) / 1e6


def test_department_routes_are_counted_exactly_with_tokens_and_cost(gateway):
    series = {"model": "gpt-4o-mini", "provider": "primary"}
    marketing = {"department": "marketing", "route": MARKETING, **series}
    engineering = {"department": "engineering", "route": ENGINEERING, **series}

    def snapshot() -> dict[str, float]:
        m = gateway.metric
        return {
            "marketing_ok": m("hapax_requests_total", **marketing, status_class="2xx", outcome="success"),
            "engineering_ok": m("hapax_requests_total", **engineering, status_class="2xx", outcome="success"),
            "marketing_in": m("gen_ai_client_token_usage_sum", **marketing, gen_ai_token_type="input"),
            "marketing_out": m("gen_ai_client_token_usage_sum", **marketing, gen_ai_token_type="output"),
            "engineering_in": m("gen_ai_client_token_usage_sum", **engineering, gen_ai_token_type="input"),
            "engineering_out": m("gen_ai_client_token_usage_sum", **engineering, gen_ai_token_type="output"),
            "marketing_cost": m("hapax_cost_usd_total", **marketing),
            "engineering_cost": m("hapax_cost_usd_total", **engineering),
            "engineering_ttft": m("gen_ai_server_time_to_first_token_seconds_count", **engineering),
            "engineering_durations": m("gen_ai_server_request_duration_seconds_count", **engineering),
            "envoy_marketing": envoy_stat(gateway, "envoy_vhost_route_upstream_rq_total", department="marketing"),
            "envoy_engineering": envoy_stat(gateway, "envoy_vhost_route_upstream_rq_total",
                                            department="engineering"),
        }

    before = snapshot()
    sales, eng = Ledger(), Ledger()
    for i in range(3):
        sales.add(client_for(gateway, "marketing").completions.create(
            model="auto", prompt=f"write a slogan number {i}").usage)
    for i in range(2):
        eng.add(client_for(gateway, "engineering").chat.completions.create(
            model="auto", messages=[{"role": "user", "content": f"review pull request {i}"}]).usage)
    for i in range(2):
        chunks = list(client_for(gateway, "engineering").chat.completions.create(
            model="auto", messages=[{"role": "user", "content": f"stream the build log {i}"}], stream=True,
            stream_options={"include_usage": True}))
        eng.add(chunks[-1].usage)

    expected = {
        "marketing_ok": 3, "engineering_ok": 4,
        "marketing_in": sales.input_tokens, "marketing_out": sales.output_tokens,
        "engineering_in": eng.input_tokens, "engineering_out": eng.output_tokens,
        "marketing_cost": sales.cost("gpt-4o-mini"), "engineering_cost": eng.cost("gpt-4o-mini"),
        "engineering_ttft": 2, "engineering_durations": 4,
        "envoy_marketing": 3, "envoy_engineering": 4,
    }
    def counted() -> dict[str, float]:
        after = snapshot()
        return {k: after[k] - before[k] for k in expected}

    # ext_proc counts a stream when it sees it end, Envoy its route's request when it
    # completes: each a moment after the client has the last chunk. Poll, then compare all.
    with contextlib.suppress(AssertionError):
        wait_for(lambda: counted() == pytest.approx(expected), "every count")
    assert counted() == pytest.approx(expected)
    assert sales.input_tokens > 0 and eng.output_tokens > 0


def test_a_failover_is_counted_for_its_department(gateway, fakes):
    primary, _ = fakes
    labels = {"department": "engineering", "route": ENGINEERING}
    failed_over = {**labels, "provider": "secondary", "model": "claude-3-haiku", "status_class": "2xx",
                   "outcome": "failed_over"}

    def counts() -> tuple[float, ...]:
        return (gateway.metric("hapax_failovers_total", **labels, provider="secondary"),
                gateway.metric("hapax_retries_total", **labels, provider="secondary"),
                gateway.metric("hapax_requests_total", **failed_over),
                envoy_stat(gateway, "envoy_vhost_route_upstream_rq_retry", department="engineering"))

    before = counts()
    primary.inject(Status(503), method="POST")
    reply = client_for(gateway, "engineering").chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "fail me over"}])
    assert reply.choices[0].message.content.startswith("Hello from fake-anthropic")
    wait_for(lambda: counts() == tuple(n + 1 for n in before), "one failover, one retry, in both views")


def test_client_errors_are_counted_without_a_provider(gateway):
    series = {"department": "marketing", "route": MARKETING, "provider": "none", "model": "none",
              "status_class": "4xx", "outcome": "client_error"}
    before = gateway.metric("hapax_requests_total", **series)
    request = urllib.request.Request(gateway.url + MARKETING, data=b"{not json", method="POST",
                                     headers={"content-type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=10)
    assert err.value.code == 400
    assert gateway.metric("hapax_requests_total", **series) == before + 1


def test_every_series_takes_its_label_values_from_the_config(gateway):
    client_for(gateway, "marketing").completions.create(model="auto", prompt="make sure there is traffic")
    per_request = [sample for family in text_string_to_metric_families(scrape(gateway.metrics_url))
                   for sample in family.samples if "route" in sample.labels]
    assert per_request
    for sample in per_request:
        assert sample.labels["department"] in ("marketing", "engineering"), sample
        assert sample.labels["route"] in (MARKETING, ENGINEERING), sample
        assert sample.labels.get("provider", "none") in ("primary", "secondary", "none"), sample


def test_the_dashboards_metric_names_are_all_exported(gateway, fakes):
    # Traffic of every kind the dashboard shows: answers, a stream, a failover.
    client_for(gateway, "marketing").completions.create(model="auto", prompt="dashboards")
    list(client_for(gateway, "engineering").chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "stream for the dashboard"}], stream=True))
    fakes[0].inject(Status(503), method="POST")
    client_for(gateway, "engineering").chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "fail over for the dashboard"}])
    names = {name for text in (scrape(gateway.metrics_url), scrape(gateway.envoy_stats_url))
             for name, _, _ in samples(text)}
    assert EXPORTED_METRICS - names == set()


def access_log(gateway) -> list[dict]:
    lines = [line for line in gateway.stderr if '"logger":"access"' in line]
    return [json.loads(line) for line in lines]


def test_every_access_log_line_is_json_with_the_request_fields(gateway):
    reply = client_for(gateway, "marketing").completions.create(model="auto", prompt="log me")
    assert reply.choices
    wait_for(lambda: access_log(gateway), "access log lines")
    lines = access_log(gateway)
    for line in lines:
        assert {"ts", "request_id", "method", "route", "status", "duration_ms", "response_flags",
                "provider", "attempts", "upstream_first_byte_ms"} <= line.keys(), line
    marketing = [line for line in lines if line["path"] == MARKETING and line["status"] == 200]
    assert marketing and all(line["department"] == "marketing" and line["provider"] == "primary"
                             for line in marketing)


def test_one_request_id_ties_envoys_access_log_to_ext_procs_lines(gateway, fakes):
    primary, _ = fakes
    primary.inject(Status(503), method="POST")
    client_for(gateway, "engineering").chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "trace me"}])

    def failure_lines() -> list[dict]:
        found = []
        for line in gateway.stderr:
            if '"component": "ext_proc"' in line and "provider answered with an error" in line:
                found.append(json.loads(line))
        return found

    wait_for(failure_lines, "ext_proc's line about the failed attempt")
    request_id = failure_lines()[-1]["request_id"]
    assert failure_lines()[-1]["provider"] == "primary"
    wait_for(lambda: [line for line in access_log(gateway) if line["request_id"] == request_id],
             "the access log line of the same request")
    [line] = [line for line in access_log(gateway) if line["request_id"] == request_id]
    assert (line["provider"], line["attempts"], line["status"], line["department"]) == (
        "secondary", 2, 200, "engineering")


def test_api_keys_never_appear_in_logs_or_metrics(gateway):
    client_for(gateway, "engineering").chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "keep my secrets"}])
    everything = "".join(gateway.stderr) + scrape(gateway.metrics_url) + \
        scrape(gateway.envoy_stats_url) + gateway.admin("/config_dump")
    for secret in (PRIMARY_KEY, SECONDARY_KEY, "client-key"):
        assert secret not in everything


def test_text_logs_when_the_config_asks_for_them(fakes, start_gateway):
    config = two_providers(*fakes)
    config["logging"] = {"format": "text", "access_log": False}
    gateway = start_gateway(config)
    fakes[0].inject(Status(503), method="POST")
    openai.OpenAI(base_url=gateway.base_url, api_key="client-key", max_retries=0).chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "plain text please"}])

    def ext_proc_lines() -> list[str]:
        return [line for line in gateway.stderr if "provider answered with an error" in line]

    wait_for(ext_proc_lines, "ext_proc's warning")
    [line] = ext_proc_lines()
    assert not line.startswith("{") and "WARNING ext_proc: provider answered with an error" in line
    assert 'provider="primary"' in line and "request_id=" in line
    assert not [line for line in gateway.stderr if '"logger":"access"' in line]  # access_log: false
