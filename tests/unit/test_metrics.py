"""ext_proc's metrics: batched updates (the access log's) come out as if made one by one."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ext_proc.metrics import GatewayMetrics, observe_all
from ext_proc.outcomes import RequestOutcome
from ext_proc.provider_health import ProviderProber
from ext_proc.runtime import Chain, Provider, Route, RuntimeView

ROUTE = Route("/v1/chat/completions", "chat", "v1", {"department": "marketing"})
PROVIDER = Provider(name="primary", type="openai", model="gpt-4o-mini", aliases=(), base_url="http://x/v1",
                    host="x", base_path="/v1", api_key="", timeout=30.0, price=(0.15, 0.6))
VIEW = RuntimeView(version="v1", providers={"primary": PROVIDER}, routes={ROUTE.path: ROUTE},
                   chain_for_model={}, default_chain=Chain("chain.primary", 2), models_json=b"")


def _metrics() -> GatewayMetrics:
    metrics = GatewayMetrics(ProviderProber(lambda _: None))
    metrics.configure(VIEW)
    return metrics


def _answer_some(metrics: GatewayMetrics) -> None:
    for i in range(40):
        outcome = RequestOutcome.FAILED_OVER if i % 7 == 0 else RequestOutcome.SUCCESS
        metrics.request_answered(ROUTE, PROVIDER, 200, outcome, duration=0.01 * i, overhead=0.0004 * i)
        metrics.tokens_used(ROUTE, PROVIDER, {"prompt_tokens": i, "completion_tokens": 3 * i})
        if i % 7 == 0:
            metrics.retried(ROUTE, PROVIDER)


def test_a_batch_of_updates_is_written_as_if_made_one_by_one():
    one_by_one, batched = _metrics(), _metrics()
    _answer_some(one_by_one)
    with batched.batched():
        _answer_some(batched)
        assert batched.exposition() != one_by_one.exposition()  # written at the end, at once
    assert batched.exposition() == one_by_one.exposition()
    assert b'outcome="failed_over"' in batched.exposition()


def test_observing_many_fills_the_same_buckets_as_observing_each():
    registry_a, registry_b = CollectorRegistry(), CollectorRegistry()
    buckets = (0.5, 1.0, 2.0)
    each = Histogram("h", "", buckets=buckets, registry=registry_a)
    many = Histogram("h", "", buckets=buckets, registry=registry_b)
    amounts = [0.0, 0.5, 0.5000001, 1.0, 1.5, 2.0, 2.5, 99.0]  # bounds themselves go in their own bucket
    for amount in amounts:
        each.observe(amount)
    observe_all(many, amounts)
    assert generate_latest(registry_b) == generate_latest(registry_a)


EMBEDDINGS = Route("/v1/embeddings", "embeddings", "v1", {"department": "marketing"})


def _sample(metrics: GatewayMetrics, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def test_a_token_count_the_answer_lacks_is_counted_as_unknown_never_as_zero():
    metrics = _metrics()
    metrics.tokens_used(ROUTE, PROVIDER, {"completion_tokens": 10})
    assert _sample(metrics, "gen_ai_client_token_usage_count", gen_ai_token_type="input") in (None, 0.0)
    assert _sample(metrics, "gen_ai_client_token_usage_count", gen_ai_token_type="output") == 1.0
    assert _sample(metrics, "hapax_usage_unknown_total", gen_ai_token_type="input", provider="primary",
                   model="gpt-4o-mini", route=ROUTE.path, department="marketing") == 1.0
    assert _sample(metrics, "hapax_usage_unknown_total", gen_ai_token_type="output") in (None, 0.0)
    assert _sample(metrics, "hapax_cost_usd_total") == 10 * 0.6 / 1e6  # the known part only


def test_an_answer_without_usage_has_both_counts_unknown_and_embeddings_have_no_output_to_miss():
    metrics = _metrics()
    metrics.tokens_used(ROUTE, PROVIDER, None)
    metrics.tokens_used(EMBEDDINGS, PROVIDER, {}, has_output=False)
    metrics.tokens_used(EMBEDDINGS, PROVIDER, {"prompt_tokens": 4}, has_output=False)
    assert _sample(metrics, "hapax_usage_unknown_total", route=ROUTE.path, gen_ai_token_type="input") == 1.0
    assert _sample(metrics, "hapax_usage_unknown_total", route=ROUTE.path, gen_ai_token_type="output") == 1.0
    assert _sample(metrics, "hapax_usage_unknown_total", route=EMBEDDINGS.path, gen_ai_token_type="input") == 1.0
    assert _sample(metrics, "hapax_usage_unknown_total", route=EMBEDDINGS.path, gen_ai_token_type="output") is None
    assert _sample(metrics, "gen_ai_client_token_usage_count", route=EMBEDDINGS.path,
                   gen_ai_token_type="input") == 1.0
    assert _sample(metrics, "gen_ai_client_token_usage_count", route=ROUTE.path, gen_ai_token_type="input") in (
        None, 0.0)


class _FailsFirst:
    """A collector whose first reads fail, as a read of a file another worker is writing may."""

    def __init__(self, failures: int) -> None:
        self.failures = failures

    def collect(self):
        if self.failures:
            self.failures -= 1
            raise ValueError("Read beyond file size detected")
        return iter(())


def test_a_read_of_the_metrics_that_fails_once_is_read_again_not_answered_500():
    metrics = _metrics()
    metrics.add_collector(_FailsFirst(failures=1))
    assert b"hapax_provider_healthy" in metrics.exposition()


def test_a_read_that_keeps_failing_still_fails():
    metrics = _metrics()
    metrics.add_collector(_FailsFirst(failures=10))
    with pytest.raises(ValueError):
        metrics.exposition()
