"""Prometheus series of one ext_proc process (served at ``/metrics``).

Label values come from the configuration (provider names), never from request
contents, so cardinality stays bounded.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ext_proc.provider_health import ProviderProber


class ProviderHealthCollector(Collector):
    """Reads the prober's verdicts at scrape time (no state of its own)."""

    def __init__(self, prober: ProviderProber) -> None:
        self.prober = prober

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        healthy = GaugeMetricFamily("hapax_provider_healthy",
                                    "1 if the provider gets traffic (passes its health checks, no retry-after pending), else 0", labels=["provider"])
        checks = CounterMetricFamily("hapax_provider_health_checks",
                                     "Health probes completed, by result", labels=["provider", "result"])
        for name, state in sorted(self.prober.states().items()):
            healthy.add_metric([name], 1.0 if state.in_rotation() else 0.0)
            checks.add_metric([name, "failure"], state.failures)
            checks.add_metric([name, "success"], state.checks - state.failures)
        yield healthy
        yield checks


class GatewayMetrics:
    def __init__(self, prober: ProviderProber) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(ProviderHealthCollector(prober))
        self.attempts = Counter(
            "hapax_provider_attempts", "Requests sent to a provider; attempt=retry counts failovers and retries",
            ["provider", "attempt"], registry=self.registry)
        self.streams = Counter(
            "hapax_streams", "Streams a client received, by how they ended: only 'completed' is a success",
            ["provider", "outcome"], registry=self.registry)

    def attempt(self, provider: str, number: int) -> None:
        self.attempts.labels(provider, "first" if number <= 1 else "retry").inc()

    def stream_ended(self, provider: str, outcome: str) -> None:
        self.streams.labels(provider, outcome).inc()
