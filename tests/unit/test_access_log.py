"""The access log's counting: a flush added up by labels gives the series of counting each answer."""

from __future__ import annotations

from dataclasses import replace

import pytest
from envoy.data.accesslog.v3 import accesslog_pb2
from prometheus_client.parser import text_string_to_metric_families

from ext_proc.access_log import AccessLogCounter
from ext_proc.metrics import GatewayMetrics
from ext_proc.outcomes import outcome_for
from ext_proc.provider_health import ProviderProber
from tests.unit.test_metrics import PROVIDER, ROUTE, VIEW

SECOND = replace(PROVIDER, name="second", price=None)
EMBEDDINGS = replace(ROUTE, path="/v1/embeddings", handler="embeddings")
VIEW_OF_TWO = replace(VIEW, providers={"primary": PROVIDER, "second": SECOND},
                      routes={ROUTE.path: ROUTE, EMBEDDINGS.path: EMBEDDINGS})


def _entry(i: int, *, route: str, provider: str, status: int, attempts: int = 1, usage: dict | None = None,
           lane: str = "passthrough", details: str = "via_upstream") -> accesslog_pb2.HTTPAccessLogEntry:
    entry = accesslog_pb2.HTTPAccessLogEntry()
    common = entry.common_properties
    common.custom_tags.update({"lane": lane, "route": route, "provider": provider})
    common.access_log_type = accesslog_pb2.DownstreamEnd
    common.upstream_request_attempt_count = attempts
    for field, micros in (("time_to_last_downstream_tx_byte", 9000 + i), ("duration", 9500),
                          ("time_to_first_downstream_tx_byte", 8000 + i), ("time_to_first_upstream_rx_byte", 6000),
                          ("time_to_last_upstream_tx_byte", 300 + 7 * i)):
        getattr(common, field).nanos = micros * 1000
    if usage is not None:
        common.metadata.filter_metadata["hapax.usage"].update(usage)
    entry.response.response_code.value = status
    entry.response.response_code_details = details
    return entry


def _entries() -> list[accesslog_pb2.HTTPAccessLogEntry]:
    chat = {"route": ROUTE.path}
    return [
        *(_entry(i, **chat, provider="primary", status=200, usage={"prompt_tokens": i, "completion_tokens": 2 * i})
          for i in range(12)),
        _entry(20, **chat, provider="second", status=200, attempts=2,
               usage={"prompt_tokens": 5, "completion_tokens": 1}),
        _entry(21, **chat, provider="second", status=200, attempts=3, usage={"prompt_tokens": 8}),
        _entry(22, **chat, provider="primary", status=503, attempts=2),
        _entry(23, **chat, provider="primary", status=429),
        _entry(24, **chat, provider="", status=503, details="hapax_no_provider"),
        _entry(25, route=EMBEDDINGS.path, provider="primary", status=200, usage={"prompt_tokens": 40}),
        _entry(29, route=EMBEDDINGS.path, provider="primary", status=200),
        _entry(30, **chat, provider="primary", status=200, usage={"completion_tokens": 6}),
        _entry(26, **chat, provider="primary", status=200, lane="model", attempts=2, usage={"prompt_tokens": 3}),
        _entry(27, route="/gone", provider="primary", status=200),
        _entry(28, **chat, provider="primary", status=0),
    ]


def _count_each(metrics: GatewayMetrics, entry: accesslog_pb2.HTTPAccessLogEntry) -> None:
    """What counting one answer at a time records (the router and upstream steps' calls)."""
    common, tags = entry.common_properties, entry.common_properties.custom_tags
    status, attempts = entry.response.response_code.value, common.upstream_request_attempt_count
    route = VIEW_OF_TWO.routes.get(tags["route"])
    if route is None or status == 0:
        return
    gateway_answered = entry.response.response_code_details.startswith("hapax_")
    provider = None if gateway_answered else VIEW_OF_TWO.providers.get(tags["provider"])
    overhead = None
    if attempts == 1 and provider is not None:
        provider_time = _s(common.time_to_first_upstream_rx_byte) - _s(common.time_to_last_upstream_tx_byte)
        overhead = _s(common.time_to_first_downstream_tx_byte) - provider_time
    duration = _s(common.time_to_last_downstream_tx_byte)
    metrics.request_answered(route, provider, status, outcome_for(status, attempts), duration, overhead)
    if provider is None:
        return
    if tags["lane"] == "passthrough":
        for _ in range(attempts - 1):
            metrics.retried(route, provider)
    usage = common.metadata.filter_metadata.get("hapax.usage")
    if status == 200:
        fields = usage.fields if usage is not None else {}
        metrics.tokens_used(route, provider, {key: value.number_value for key, value in fields.items()},
                            has_output=route.handler != "embeddings")


def _s(duration) -> float:
    return duration.nanos / 1e9  # every duration here is under a second


def _samples(metrics: GatewayMetrics) -> dict[tuple, float]:
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(metrics.exposition().decode()) for sample in family.samples}


def _metrics() -> GatewayMetrics:
    metrics = GatewayMetrics(ProviderProber(lambda _: None))
    metrics.configure(VIEW_OF_TWO)
    return metrics


def test_a_flush_added_up_by_labels_gives_the_series_of_counting_each_answer():
    each, flushed = _metrics(), _metrics()
    for entry in _entries():
        _count_each(each, entry)
    AccessLogCounter(lambda: VIEW_OF_TWO, flushed).count_batch(_entries())
    assert _samples(flushed) == pytest.approx(_samples(each))  # sums may differ in the last bit
    text = flushed.exposition()
    # The cases are there: a failover with its retries, tokens without an output count, the gateway's answer.
    assert b'hapax_retries_total{department="marketing",provider="second",route="/v1/chat/completions"} 3.0' in text
    assert b'outcome="failed_over",provider="second"' in text
    assert b'gen_ai_token_type="output",model="gpt-4o-mini",provider="primary",route="/v1/embeddings"' not in text
    assert b'model="none",outcome="provider_error",provider="none"' in text
    assert b'gen_ai_token_type="input",model="gpt-4o-mini",provider="primary",route="/v1/embeddings"} 1.0' in text


def test_a_token_count_envoy_did_not_find_in_an_answer_is_unknown_not_zero():
    metrics = _metrics()
    AccessLogCounter(lambda: VIEW_OF_TWO, metrics).count_batch([
        _entry(0, route=ROUTE.path, provider="primary", status=200, usage={"completion_tokens": 6}),
        _entry(1, route=ROUTE.path, provider="primary", status=200),
        _entry(2, route=EMBEDDINGS.path, provider="primary", status=200, usage={"prompt_tokens": 4}),
        _entry(3, route=ROUTE.path, provider="primary", status=503),
    ])
    samples = _samples(metrics)

    def value(name: str, route: str, kind: str) -> float | None:
        labels = {"department": "marketing", "gen_ai_token_type": kind, "model": "gpt-4o-mini",
                  "provider": "primary", "route": route}
        return samples.get((name, tuple(sorted(labels.items()))))

    assert value("hapax_usage_unknown_total", ROUTE.path, "input") == 2  # never observed as 0 tokens
    assert value("gen_ai_client_token_usage_count", ROUTE.path, "input") is None
    assert value("hapax_usage_unknown_total", ROUTE.path, "output") == 1
    assert value("gen_ai_client_token_usage_sum", ROUTE.path, "output") == 6
    assert value("hapax_usage_unknown_total", EMBEDDINGS.path, "output") is None  # embeddings have no output


class _RoutesThatFailOn(dict):
    def get(self, key, default=None):
        if key == "/boom":
            raise RuntimeError("an entry nobody foresaw")
        return super().get(key, default)


def test_an_entry_that_cannot_be_counted_does_not_lose_the_rest_of_its_flush():
    view = replace(VIEW_OF_TWO, routes=_RoutesThatFailOn(VIEW_OF_TWO.routes))
    with_boom, without = _metrics(), _metrics()
    boom = _entry(0, route="/boom", provider="primary", status=200)
    AccessLogCounter(lambda: view, with_boom).count_batch([*_entries()[:6], boom, *_entries()[6:]])
    AccessLogCounter(lambda: view, without).count_batch(_entries())
    assert _samples(with_boom) == _samples(without)
    assert b"hapax_requests_total" in without.exposition()


def test_a_lane_answer_counts_under_the_model_its_body_named_with_that_models_price():
    models = {"gpt-4o-mini": frozenset({"chat"}), "gpt-4o": frozenset({"chat"}),
              "text-embedding-3-small": frozenset({"embeddings"})}
    several = replace(PROVIDER, models=models, prices={"gpt-4o-mini": (0.15, 0.6), "gpt-4o": (2.5, 10.0)})
    view = replace(VIEW_OF_TWO, providers={"primary": several, "second": SECOND})
    metrics = GatewayMetrics(ProviderProber(lambda _: None))
    metrics.configure(view)
    named = _entry(0, route=ROUTE.path, provider="primary", status=200,
                   usage={"prompt_tokens": 1_000_000, "completion_tokens": 0})
    named.common_properties.custom_tags["model"] = "gpt-4o"
    AccessLogCounter(lambda: view, metrics).count_batch([named])
    text = metrics.exposition()
    assert b'model="gpt-4o",outcome="success",provider="primary"' in text
    assert b'model="gpt-4o-mini"' not in text
    # A million input tokens of gpt-4o, not of the default model.
    assert (b'hapax_cost_usd_total{department="marketing",model="gpt-4o",provider="primary",'
            b'route="/v1/chat/completions"} 2.5') in text


def test_each_routed_answer_is_one_ledger_record_with_its_cached_tokens_and_cost(tmp_path):
    from ext_proc.ledger import Ledger
    from ext_proc.runtime import LedgerSettings

    ledger = Ledger()
    ledger.configure(LedgerSettings(tmp_path, 400))
    view = replace(VIEW_OF_TWO, ledger=LedgerSettings(tmp_path, 400))
    entries = _entries()
    for n, entry in enumerate(entries):
        entry.request.request_id = f"r{n}"
    entries[0].common_properties.metadata.filter_metadata["hapax.usage"].update({"cached_tokens": 7})
    pending: list = []

    async def scenario() -> None:
        AccessLogCounter(lambda: view, _metrics(), ledger=ledger).count_batch(entries)
        pending.extend(ledger.pending)
        await ledger.close()

    import asyncio
    asyncio.run(scenario())
    # Every entry but the one of a route gone with a newer version and the one no answer reached.
    assert [r.request_id for r in pending] == [f"r{n}" for n in range(len(entries) - 2)]
    first = pending[0]
    assert (first.input_tokens, first.output_tokens, first.cached_tokens) == (0, 0, 7)
    failover = pending[12]
    assert failover.provider == "second" and failover.outcome == "failed_over" and failover.cost_usd == 0.0
    priced = pending[1]
    assert priced.cost_usd == pytest.approx((1 * PROVIDER.price[0] + 2 * PROVIDER.price[1]) / 1e6)
