"""Prometheus series of one ext_proc process (served at ``/metrics``).

Every per-request series carries the route's ``metrics_labels`` (``department``...)
plus ``route``, and ``provider`` and ``model`` where a provider is involved.
Label values come from the configuration (``none`` when no provider answered),
never from request contents, so cardinality stays bounded by the config.

Label names follow the configuration too: they are the union of the routes' and
clients' label keys, and ``experiment`` and ``variant`` on a gateway with experiments.
When a new version brings another key, the per-request families are created afresh
with it (their counts restart, which ``rate()`` and ``increase()`` treat as a counter
reset).

Names follow OpenTelemetry's GenAI conventions where they exist
(``gen_ai_client_token_usage``, ``gen_ai_server_request_duration_seconds``,
``gen_ai_server_time_to_first_token_seconds``, time per output token).
"""

from __future__ import annotations

import bisect
import logging
import os
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ext_proc.outcomes import RequestOutcome, StreamOutcome
from ext_proc.provider_health import ProviderProber
from ext_proc.runtime import Provider, Route, RuntimeView, cost_usd
from hapax import wire
from hapax.v1 import runtime_pb2

log = logging.getLogger("hapax.ext_proc.metrics")

# A "_created" series per counter doubles the output for nothing a dashboard uses.
disable_created_metrics()

NONE = "none"  # provider / model of a request that no provider answered
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
EXPOSITION_TRIES = 3

# Buckets: OpenTelemetry's advice for the GenAI histograms; the overhead's spans
# what a Python hop can add, from half a millisecond up.
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
QUEUE_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
OVERHEAD_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25)

class ProviderHealthCollector(Collector):
    """Reads the prober's verdicts at scrape time (no state of its own)."""

    def __init__(self, prober: ProviderProber) -> None:
        self.prober = prober

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        healthy = GaugeMetricFamily(
            "hapax_provider_healthy",
            "1 if the provider gets traffic (passes its health checks, no retry-after pending), else 0",
            labels=["provider"])
        checks = CounterMetricFamily("hapax_provider_health_checks",
                                     "Health probes completed, by result", labels=["provider", "result"])
        for name, state in sorted(self.prober.states().items()):
            healthy.add_metric([name], 1.0 if state.in_rotation() else 0.0)
            checks.add_metric([name, "failure"], state.failures)
            checks.add_metric([name, "success"], state.checks - state.failures)
        yield healthy
        yield checks


class ProviderRegionCollector(Collector):
    """``hapax_provider_region_info{provider, region}``: 1 for each provider with a region (regions:),
    from the runtime this worker serves. Every per-provider series (requests, failovers, retries,
    cost) then adds up by region in a query, without a label of its own."""

    def __init__(self, regions: Callable[[], Mapping[str, str]]) -> None:
        self.regions = regions

    def collect(self) -> Iterator[GaugeMetricFamily]:
        regions = self.regions()
        if not regions:
            return
        family = GaugeMetricFamily("hapax_provider_region_info", "1 for each provider with a region: the region "
                                   "it serves from", labels=["provider", "region"])
        for provider, region in sorted(regions.items()):
            family.add_metric([provider, region], 1.0)
        yield family


class QueueCollector:
    """``hapax_queue_waiting{department}``: requests waiting now, read from the queue at scrape time
    (it lives in the first worker, the one Envoy sends scrapes to)."""

    def __init__(self, waiting: Callable[[], Mapping[str, int]]) -> None:
        self.waiting = waiting

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("hapax_queue_waiting", "Requests waiting in the queue now, by department",
                                   labels=["department"])
        for department, count in sorted(self.waiting().items()):
            family.add_metric([department], count)
        yield family


class ConfigStatusCollector(Collector):
    """The control plane's reload counts, as ext_proc last heard them (ConfigStatus over xDS)."""

    def __init__(self, status: Callable[[], runtime_pb2.ConfigStatus]) -> None:
        self.status = status

    def collect(self) -> Iterator[CounterMetricFamily]:
        status = self.status()
        reloads = CounterMetricFamily("hapax_config_reloads", "Config file reloads by result "
                                      "(applied | unchanged | invalid)", labels=["result"])
        reloads.add_metric(["applied"], status.reloads_applied)
        reloads.add_metric(["unchanged"], status.reloads_unchanged)
        reloads.add_metric(["invalid"], status.reloads_invalid)
        yield reloads


class RestartsCollector(Collector):
    """How often the supervisor restarted each process (``hapax_process_restarts_total{process}``)."""

    def __init__(self, restarts: Callable[[], Mapping[str, int]]) -> None:
        self.restarts = restarts

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("hapax_process_restarts", "Restarts of a dead process by the supervisor "
                                     "(ext_proc-1, ext_proc-2..., control_plane)", labels=["process"])
        for process, count in sorted(self.restarts().items()):
            family.add_metric([process], count)
        yield family


class _RequestFamilies:
    """The per-request families for one set of route label keys."""

    def __init__(self, registry: CollectorRegistry, keys: tuple[str, ...]) -> None:
        self.keys = keys
        self.registry = registry
        self._children: dict[tuple[int, tuple[str, ...]], tuple[Any, bool]] = {}  # -> (child, batchable)
        self.pending: dict[tuple[int, tuple[str, ...]], _Pending] | None = None  # inside GatewayMetrics.batched()
        route = [*keys, "route"]
        answered = [*route, "provider", "model"]
        self.all = [
            requests := Counter("hapax_requests", "Requests answered, by status class and outcome "
                                f"({' | '.join(RequestOutcome)})",
                                [*answered, "status_class", "outcome"], registry=registry),
            duration := Histogram("gen_ai_server_request_duration_seconds",
                                  "Time from the request's arrival to the end of its answer",
                                  answered, buckets=DURATION_BUCKETS, registry=registry),
            ttft := Histogram("gen_ai_server_time_to_first_token_seconds",
                              "Streams: time from the request's arrival to the first chunk",
                              answered, buckets=TTFT_BUCKETS, registry=registry),
            tpot := Histogram("gen_ai_server_time_per_output_token_seconds",
                              "Streams: time per output token after the first chunk",
                              answered, buckets=TPOT_BUCKETS, registry=registry),
            tokens := Histogram("gen_ai_client_token_usage", "Tokens per answer, by gen_ai_token_type (input | output)",
                                [*answered, "gen_ai_token_type"], buckets=TOKEN_BUCKETS, registry=registry),
            cost := Counter("hapax_cost_usd", "What the answers cost, from the config's price table (US dollars)",
                            answered, registry=registry),
            unknown := Counter("hapax_usage_unknown",
                               "Answers whose provider gave no token count of this gen_ai_token_type (input | output): "
                               "they are in neither gen_ai_client_token_usage nor hapax_cost_usd",
                               [*answered, "gen_ai_token_type"], registry=registry),
            failovers := Counter("hapax_failovers", "Requests answered by a provider after earlier attempts failed",
                                 [*route, "provider"], registry=registry),
            retries := Counter("hapax_retries", "Attempts after the first, by the provider they went to",
                               [*route, "provider"], registry=registry),
            inflight := Gauge("hapax_inflight_requests", "Requests being answered now", route, registry=registry,
                              multiprocess_mode="livesum"),
            overhead := Histogram("hapax_gateway_overhead_seconds",
                                  "Time a request spent in the gateway itself, the provider's time excluded "
                                  "(requests answered at the first attempt)",
                                  route, buckets=OVERHEAD_BUCKETS, registry=registry),
        ]
        self.requests, self.duration, self.ttft, self.tpot, self.tokens = requests, duration, ttft, tpot, tokens
        self.cost, self.failovers, self.retries, self.inflight, self.overhead = (
            cost, failovers, retries, inflight, overhead)
        self.unknown = unknown

    def child(self, family: Any, *values: str) -> Any:
        """``family.labels(*values)``, remembered: label values come from the config, so few."""
        key = (id(family), values)
        known = self._children.get(key)
        if known is None:
            known = self._children[key] = (family.labels(*values), isinstance(family, (Counter, Histogram)))
        child, batchable = known
        if self.pending is None or not batchable:
            return child
        pending = self.pending.get(key)
        if pending is None:
            pending = self.pending[key] = _Pending(child)
        return pending

    def route_values(self, route: Route) -> list[str]:
        return [*(route.labels.get(key, "") for key in self.keys), route.path]

    def unregister(self) -> None:
        for family in self.all:
            self.registry.unregister(family)


def _status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status < 600 else "unknown"


class GatewayMetrics:
    """This process's series; with several ext_proc workers, every worker's together.

    Several workers share a directory (``PROMETHEUS_MULTIPROC_DIR``, set by the
    supervisor before any of them starts) where prometheus_client keeps each
    process's values; a scrape, which lands on any one worker, adds them up.
    """

    def __init__(self, prober: ProviderProber) -> None:
        self.registry = CollectorRegistry()
        self._provider_regions: Mapping[str, str] = {}
        self.collectors: list[Collector] = [ProviderHealthCollector(prober),
                                            ProviderRegionCollector(lambda: self._provider_regions)]
        self.streams = Counter(
            "hapax_streams",
            f"Streams a client received, by how they ended: only '{StreamOutcome.COMPLETED}' is a success",
            ["provider", "outcome"], registry=self.registry)
        self.config_version = Gauge("hapax_config_version_info",
                                    "1 for the configuration version ext_proc serves (0 for earlier ones)",
                                    ["version"], registry=self.registry, multiprocess_mode="livemax")
        self.admissions = Counter(
            "hapax_admissions", "Admission checks of requests under limits, by result (admitted | refused | "
            "unchecked: the counters' store could not answer) and the kind of limit that refused "
            "(requests | tokens | spend)", ["scope", "result", "limit"], registry=self.registry)
        # The most recent worker's reading: each reservation and settlement reads the shared store.
        self.budget_remaining = Gauge(
            "hapax_budget_remaining_usd", "What is left of a budget in its current period (US dollars), as of "
            "the last request under it", ["scope", "period"], registry=self.registry,
            multiprocess_mode="mostrecent")
        self.queue_waits = Histogram(
            "hapax_queue_wait_seconds", "Time requests waited in the queue for a provider's slot, by how the wait "
            "ended (go | full | timed_out)", ["department", "result"], buckets=QUEUE_WAIT_BUCKETS,
            registry=self.registry)
        self.ledger_records = Counter(
            "hapax_ledger_records", "Cost ledger records, by what became of them (written | dropped: the batch "
            "was full | failed: the write failed)", ["result"], registry=self.registry)
        self._families = _RequestFamilies(self.registry, ())
        self._version = ""

    def queue_waited(self, department: str, seconds: float, result: str) -> None:
        self.queue_waits.labels(department, result).observe(seconds)

    def admitted(self, scope: str, result: str, limit: str = "") -> None:
        self.admissions.labels(scope, result, limit).inc()

    def add_collector(self, collector: Collector) -> None:
        """A collector of state this process reads at scrape time (not added up across workers)."""
        self.collectors.append(collector)

    def exposition(self) -> bytes:
        # Seen once in CI: /metrics answered 500 just after a gateway started. The suspected
        # cause is the multiprocess directory read while another worker creates its files;
        # such a read is retried, and logged so that the cause can be confirmed.
        for attempt in range(1, EXPOSITION_TRIES + 1):
            try:
                return self._exposition()
            except Exception:
                if attempt == EXPOSITION_TRIES:
                    raise
                log.warning("could not read the metrics; reading again", exc_info=True)
                time.sleep(0.01)
        raise AssertionError("unreachable")

    def _exposition(self) -> bytes:
        registry = CollectorRegistry()
        if os.environ.get(MULTIPROCESS_DIR):
            multiprocess.MultiProcessCollector(registry)
        else:
            registry.register(_Registered(self.registry))
        for collector in self.collectors:
            registry.register(collector)
        return generate_latest(registry)

    def configure(self, view: RuntimeView) -> None:
        """Called with each runtime version: label names follow its routes."""
        # Set to 0 rather than removed: several workers' values cannot be removed.
        if self._version and self._version != view.version:
            self.config_version.labels(self._version).set(0)
        self._version = view.version
        self.config_version.labels(view.version).set(1)
        self._provider_regions = {p.name: p.region for p in view.providers.values() if p.region}
        keys = tuple(sorted({key for route in view.routes.values() for key in route.labels}
                            | {key for client in view.clients.values() for key in client.labels}
                            | set(wire.EXPERIMENT_LABELS if view.experiments else ())))
        if keys != self._families.keys:
            self._families.unregister()
            self._families = _RequestFamilies(self.registry, keys)

    @contextmanager
    def batched(self) -> Iterator[None]:
        """Counter and histogram updates inside are added up and written once, at the end.

        In multiprocess mode prometheus_client writes every update to a shared
        file; the access log brings requests by the dozen, mostly with the same labels.
        """
        f = self._families
        f.pending = {}
        try:
            yield
        finally:
            pending, f.pending = f.pending, None
            for update in pending.values():
                update.write()

    # -- per request (router step) ----------------------------------------------

    def request_started(self, route: Route) -> None:
        f = self._families
        f.child(f.inflight, *f.route_values(route)).inc()

    def request_ended(self, route: Route) -> None:
        f = self._families
        f.child(f.inflight, *f.route_values(route)).dec()

    def request_answered(self, route: Route, provider: Provider | None, status: int, outcome: RequestOutcome,
                         duration: float, overhead: float | None = None) -> None:
        self.requests_answered(route, provider, status, outcome, [duration], [] if overhead is None else [overhead])

    def requests_answered(self, route: Route, provider: Provider | None, status: int, outcome: RequestOutcome,
                          durations: list[float], overheads: list[float]) -> None:
        """``len(durations)`` answers alike; ``overheads``: those of the ones answered at the first attempt."""
        f = self._families
        values = f.route_values(route)
        answered = [*values, provider.name if provider else NONE, provider.model if provider else NONE]
        f.child(f.requests, *answered, _status_class(status), outcome.value).inc(len(durations))
        _observe(f.child(f.duration, *answered), durations)
        if outcome == RequestOutcome.FAILED_OVER and provider is not None:
            f.child(f.failovers, *values, provider.name).inc(len(durations))
        if overheads:
            _observe(f.child(f.overhead, *values), [max(0.0, overhead) for overhead in overheads])

    # -- per attempt (upstream step) ----------------------------------------------

    def retried(self, route: Route, provider: Provider, times: int = 1) -> None:
        f = self._families
        f.child(f.retries, *f.route_values(route), provider.name).inc(times)

    def tokens_used(self, route: Route, provider: Provider, usage: Mapping[str, Any] | None, *,
                    has_output: bool = True) -> None:
        """One answer's token usage, in OpenAI's shape (None: the answer had none).

        ``has_output``: False for an answer that has no output tokens (embeddings).
        A count the answer does not give is unknown, never 0 (see tokens_counted).
        """
        usage = usage or {}
        prompt = token_count(usage.get("prompt_tokens"))
        completion = token_count(usage.get("completion_tokens")) if has_output else None
        self.tokens_counted(route, provider, [] if prompt is None else [prompt],
                            [] if completion is None else [completion],
                            unknown_inputs=int(prompt is None), unknown_outputs=int(has_output and completion is None))

    def tokens_counted(self, route: Route, provider: Provider, inputs: list[int], outputs: list[int], *,
                       unknown_inputs: int = 0, unknown_outputs: int = 0) -> None:
        """Answers' token counts, and how many answers did not give theirs.

        A missing count is not zero: counting it as 0 would make the token and cost series
        look complete while they fall short. It is left out of both, and counted in
        ``hapax_usage_unknown_total`` instead, so the gap shows (and can be estimated from
        the answers that did give theirs). Every token counted is the provider's own count.
        """
        f = self._families
        answered = [*f.route_values(route), provider.name, provider.model]
        if inputs:
            _observe(f.child(f.tokens, *answered, "input"), inputs)
        if outputs:
            _observe(f.child(f.tokens, *answered, "output"), outputs)
        if unknown_inputs:
            f.child(f.unknown, *answered, "input").inc(unknown_inputs)
        if unknown_outputs:
            f.child(f.unknown, *answered, "output").inc(unknown_outputs)
        if provider.price is not None and (inputs or outputs):
            f.child(f.cost, *answered).inc(cost_usd(provider.price, sum(inputs), sum(outputs)))

    def stream_timing(self, route: Route, provider: Provider, first_chunk: float,
                      per_output_token: float | None) -> None:
        f = self._families
        answered = [*f.route_values(route), provider.name, provider.model]
        f.child(f.ttft, *answered).observe(first_chunk)
        if per_output_token is not None:
            f.child(f.tpot, *answered).observe(per_output_token)

    def stream_ended(self, provider: str, outcome: StreamOutcome) -> None:
        self.streams.labels(provider, outcome.value).inc()


class _Pending:
    """A counter's or histogram's updates during GatewayMetrics.batched()."""

    __slots__ = ("child", "total", "observed")

    def __init__(self, child: Any) -> None:
        self.child = child
        self.total = 0.0
        self.observed: list[float] = []

    def inc(self, amount: float = 1.0) -> None:
        self.total += amount

    def observe(self, amount: float) -> None:
        self.observed.append(amount)

    def write(self) -> None:
        if self.total:
            self.child.inc(self.total)
        if self.observed:
            observe_all(self.child, self.observed)


def _observe(child: Any, amounts: Sequence[float]) -> None:
    if isinstance(child, _Pending):
        child.observed.extend(amounts)
    else:
        observe_all(child, amounts)


def observe_all(histogram: Any, amounts: Sequence[float]) -> None:
    """``histogram.observe(a) for a in amounts``, with one write per bucket touched.

    prometheus_client has no bulk observe; this adds to the same per-bucket
    values its ``observe`` does (the first bucket whose bound is >= the amount),
    and falls back to ``observe`` if those internals are not there.
    """
    buckets, bounds, total = (getattr(histogram, name, None) for name in ("_buckets", "_upper_bounds", "_sum"))
    if buckets is None or bounds is None or total is None:
        for amount in amounts:
            histogram.observe(amount)
        return
    for index, count in Tally(bisect.bisect_left(bounds, amount) for amount in amounts).items():
        buckets[index].inc(count)
    total.inc(sum(amounts))


class _Registered(Collector):
    """A registry's own metrics, as one collector of another registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterable[Metric]:
        return self.registry.collect()


def token_count(value: Any) -> int | None:
    """A token count as a provider gives it (an integer, 0 or more; JSON may say 12.0), else None: unknown."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not value.is_integer():
        return None
    return int(value) if value >= 0 else None
