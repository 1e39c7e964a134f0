"""ext_proc's metrics: batched updates (the access log's) come out as if made one by one."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest

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
