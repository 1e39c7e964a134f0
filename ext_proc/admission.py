"""Admission: whether a request's client (and its department) may spend what it asks for.

Envoy's rate limit filter asks here, once per request under limits, before the request goes
on (``envoy.service.ratelimit.v3``, control_plane/resources/admission.py); its one descriptor
says what Envoy knows of the request (``wire.AdmissionEntry``). The answer:

- **Reserve.** The request's worst case is reserved on every limit that applies, atomically
  (ext_proc/limits/): one request, its input tokens (estimated from the body's size: four
  bytes a token, which over-counts JSON) plus the most it may be answered (``max_completion_tokens``,
  ``max_tokens``, else ``limits.default_max_tokens``), and what that would cost at the most
  expensive price of the providers that may serve it. If any limit would be passed, nothing
  is reserved and the client gets a 429 naming it, with ``retry-after`` at its window's end.
  So concurrent requests never pass a limit by more than what one answer exceeds its
  reservation.
- **Settle.** When the answer has ended, the reservation becomes what the provider reported
  (its usage, priced by the provider that answered) and the rest is released: the access log
  settles every request but a delivered stream, which the upstream step settles at its end.
  An answer whose usage is unknown keeps its reservation: it may have cost that much.

Every answer under limits carries OpenAI's ``x-ratelimit-*`` headers for the tightest limit of
each kind. When the store cannot answer, ``limits.on_store_error`` decides: ``open`` admits
(and counts it, ``hapax_admissions_total{result="unchecked"}``), ``closed`` fails the check,
which Envoy answers with a 503.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from google.protobuf import struct_pb2

from ext_proc.inbound import shapes
from ext_proc.limits import (
    LARGEST_AMOUNT,
    Limit,
    LimitState,
    LimitStore,
    LimitStoreUnavailable,
    Metric,
    Period,
    store_from_url,
)
from ext_proc.metrics import GatewayMetrics
from ext_proc.queue import Admitted, FairQueue
from ext_proc.runtime import AdmissionSettings, Chain, Client, LimitSettings, Provider, Route, RuntimeView
from hapax import wire
from hapax.wire import AdmissionEntry, Handler

log = logging.getLogger("hapax.ext_proc")

BYTES_PER_TOKEN = 4  # an estimate that over-counts: JSON's quotes and keys are no tokens
MICRO = 1_000_000  # spend is counted in micro-dollars (integers)
EMBEDDED_STORE = "limits.sqlite"

_HANDLERS = frozenset(Handler)


def limits_of(scope: str, settings: LimitSettings) -> list[Limit]:
    """The counters one client or department is held to."""
    wanted = [(Metric.REQUESTS, Period.MINUTE, settings.requests_per_minute),
              (Metric.REQUESTS, Period.DAY, settings.requests_per_day),
              (Metric.TOKENS, Period.MINUTE, settings.tokens_per_minute),
              (Metric.TOKENS, Period.DAY, settings.tokens_per_day)]
    if settings.budget_usd > 0:
        wanted.append((Metric.SPEND, Period(settings.budget_period or Period.MONTH),
                       round(settings.budget_usd * MICRO)))
    return [Limit(scope, metric, period, int(limit)) for metric, period, limit in wanted if limit]


def department_of(client: Client | None, route: Route) -> str:
    """A client's department, else the route's ``department`` label."""
    return (client.department if client is not None and client.department else "") or route.labels.get(
        "department", "")


def request_limits(settings: AdmissionSettings, client: Client | None, route: Route) -> list[Limit]:
    out = limits_of(f"client:{client.name}", client.limits) if client is not None else []
    department = department_of(client, route)
    if department and department in settings.departments:
        out += limits_of(f"department:{department}", settings.departments[department])
    return out


def _int(text: str | None) -> int | None:
    """A number the body gave, as a count the store can hold: a huge one is the largest (which no
    limit admits), never an error (which would let the request through unchecked)."""
    try:
        number = float(text) if text else None
    except ValueError:
        return None
    if number is None or math.isnan(number):
        return None
    return _amount(number)


def _amount(number: float) -> int:
    return int(max(0.0, min(number, LARGEST_AMOUNT - 1)))


def worst_case(view: RuntimeView, route: Route, entries: Mapping[str, str]) -> dict[Metric, int]:
    """What a request may spend at most: one request, its tokens in and out, their cost."""
    settings = view.admission or AdmissionSettings()
    size = _int(entries.get(AdmissionEntry.BYTES))
    inputs = math.ceil(size / BYTES_PER_TOKEN) if size is not None else settings.default_max_tokens
    outputs = 0
    if route.handler not in (Handler.EMBEDDINGS, Handler.COUNT_TOKENS):  # neither is answered in tokens
        asked = next((value for field in wire.RESERVATION_FIELDS if (value := _int(entries.get(field)))), None)
        outputs = asked if asked and asked > 0 else settings.default_max_tokens
    price = _highest_price(view, route, entries)
    spend = math.ceil(inputs * price[0] + outputs * price[1]) if price else 0  # per million tokens = micro-USD
    return {Metric.REQUESTS: 1, Metric.TOKENS: _amount(inputs + outputs), Metric.SPEND: _amount(spend)}


def _chain(view: RuntimeView, route: Route, entries: Mapping[str, str]) -> tuple[str, Chain | None]:
    """The request's family and the chain its model takes (None: the route serves no provider family);
    with regions, in the request's region, as Envoy and the router step pick it."""
    family = wire.FAMILY_OF_HANDLER.get(Handler(route.handler)) if route.handler in _HANDLERS else None
    if family is None:
        return "", None
    model = entries.get(AdmissionEntry.MODEL)
    region_view = None
    if view.regions is not None:
        headers = {view.regions.header: entries.get(AdmissionEntry.REGION, ""),
                   wire.GEO_COUNTRY_HEADER: entries.get(AdmissionEntry.COUNTRY, ""),
                   wire.KEY_ID_HEADER: entries.get(AdmissionEntry.KEY_ID, "")}
        region_view = view.region_view(headers, route.labels.get("department"))
    return family, view.chain_in(region_view, family, None if model in (None, "", wire.AUTO_MODEL) else model)


def _highest_price(view: RuntimeView, route: Route, entries: Mapping[str, str]) -> tuple[float, float] | None:
    """The dearest provider of the request's chain, at the model each would be sent: failover may go there."""
    model = entries.get(AdmissionEntry.MODEL)
    family, chain = _chain(view, route, entries)
    if not family:
        return None
    experiment = view.experiment_for(route.path, model)
    if experiment is not None:  # Envoy picks the variant after this check: any of them may serve it
        sent = [(name, variant.requested(name)) for variant in experiment.variants
                for name in view.chains[variant.chain].providers]
    else:
        sent = [(name, model) for name in (chain.providers if chain is not None else tuple(view.providers))]
    prices = [p.serving(family, requested).price for name, requested in sent
              if (p := view.providers.get(name)) is not None]
    known = [price for price in prices if price is not None]
    return (max(p[0] for p in known), max(p[1] for p in known)) if known else None


def actual_spend(provider: Provider | None, prompt: int, completion: int) -> int:
    if provider is None or provider.price is None:
        return 0
    return _amount(math.ceil(prompt * provider.price[0] + completion * provider.price[1]))


class Admission:
    """The store of the runtime's ``limits``, with reserve and settle; one per ext_proc process."""

    def __init__(self, metrics: GatewayMetrics | None, shared_dir: Path | None,
                 open_store: Callable[[str], LimitStore] = store_from_url) -> None:
        self.metrics = metrics
        self.shared_dir = shared_dir
        self.open_store = open_store
        self._store: LimitStore | None = None
        self._store_url: str | None = None
        self._settling: set[asyncio.Task[None]] = set()

    def store(self, settings: AdmissionSettings) -> LimitStore:
        url = settings.store or str(self._embedded_path())
        if self._store is None or url != self._store_url:
            old, self._store, self._store_url = self._store, self.open_store(url), url
            if old is not None:
                self._later(old.close())
        return self._store

    def _embedded_path(self) -> Path:
        if self.shared_dir is None:
            # One ext_proc on its own: its limits are its own (a fleet shares Redis).
            self.shared_dir = Path(tempfile.mkdtemp(prefix="hapax-limits-"))
            log.warning("no shared directory: this ext_proc's limits count its own requests only",
                        extra={"directory": str(self.shared_dir)})
        return self.shared_dir / EMBEDDED_STORE

    async def reserve(self, view: RuntimeView, entries: Mapping[str, str]) -> rls_pb2.RateLimitResponse:
        settings, route = view.admission, view.routes.get(entries.get(AdmissionEntry.ROUTE, ""))
        if settings is None or route is None or route.handler == Handler.MODELS:
            return _ok()
        client = view.client(entries.get(AdmissionEntry.KEY_ID))
        limits = request_limits(settings, client, route)
        if not limits:
            return _ok()
        scope = limits[0].scope
        try:
            decision = await self.store(settings).reserve(
                entries.get(AdmissionEntry.REQUEST_ID, ""), limits, worst_case(view, route, entries), time.time())
        except LimitStoreUnavailable as err:
            self._count(scope, "unchecked")
            log.warning("the limits' store did not answer; %s", "refusing" if settings.fail_closed else "admitting",
                        extra={"error": str(err)})
            if settings.fail_closed:
                raise
            return _ok()
        self._report_budgets(decision.states)
        if not decision.admitted:
            refused = decision.refused_by
            assert refused is not None
            self._count(refused.limit.scope, "refused", refused.limit.metric.value)
            return _refused(refused, decision.states)
        self._count(scope, "admitted")
        response = _ok(decision.states)
        response.dynamic_metadata.update({wire.RESERVED_KEY: True})
        return response

    def settle_later(self, view: RuntimeView, request_id: str, provider: Provider | None,
                     prompt: int | None, completion: int | None) -> None:
        """Off the request path: the reservation of ``request_id`` becomes what was used.

        Unknown usage (None) keeps the reservation: the answer may have cost that much."""
        if view.admission is None or not request_id or prompt is None:
            return
        actual = {Metric.REQUESTS: 1, Metric.TOKENS: _amount(prompt + (completion or 0)),
                  Metric.SPEND: actual_spend(provider, prompt, completion or 0)}
        self._later(self._settle(view.admission, request_id, actual))

    async def _settle(self, settings: AdmissionSettings, request_id: str, actual: dict[Metric, int]) -> None:
        try:
            await self.store(settings).settle(request_id, actual)
        except LimitStoreUnavailable as err:
            # Its window's end releases it: a reservation outlives no window.
            log.warning("could not settle a reservation", extra={"request_id": request_id, "error": str(err)})

    def _later(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def drain(self) -> None:
        """Waits for the settlements under way (tests, shutdown)."""
        while self._settling:
            await asyncio.gather(*list(self._settling), return_exceptions=True)

    async def close(self) -> None:
        await self.drain()
        if self._store is not None:
            await self._store.close()

    def _count(self, scope: str, result: str, limit: str = "") -> None:
        if self.metrics is not None:
            self.metrics.admitted(scope, result, limit)

    def _report_budgets(self, states: Sequence[LimitState]) -> None:
        if self.metrics is None:
            return
        for state in states:
            if state.limit.metric == Metric.SPEND:
                self.metrics.budget_remaining.labels(state.limit.scope, state.limit.period.value).set(
                    state.remaining / MICRO)


class AdmissionService(rls_pb2_grpc.RateLimitServiceServicer):
    """Envoy's rate limit service: limits (``Admission``) and, under its own domain, the queue."""

    def __init__(self, current_view: Callable[[], RuntimeView | None], admission: Admission,
                 queue: FairQueue | None = None) -> None:
        self.current_view = current_view
        self.admission = admission
        self.queue = queue

    async def ShouldRateLimit(self, request: rls_pb2.RateLimitRequest, context: Any) -> rls_pb2.RateLimitResponse:
        view = self.current_view()
        if view is None or not request.descriptors:
            return _ok()
        entries = {entry.key: entry.value for entry in request.descriptors[0].entries}
        if request.domain == wire.QUEUE_DOMAIN:
            return _shaped(view, entries, await self._queue(view, entries), QUEUE_REFUSED_STATUS)
        if request.domain != wire.ADMISSION_DOMAIN:
            return _ok()
        try:
            return _shaped(view, entries, await self.admission.reserve(view, entries), LIMIT_REFUSED_STATUS)
        except LimitStoreUnavailable:
            # limits.on_store_error: closed. Envoy answers a failed check with its status_on_error.
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the limits' store did not answer")
            raise  # unreachable: abort raises


    async def _queue(self, view: RuntimeView, entries: Mapping[str, str]) -> rls_pb2.RateLimitResponse:
        request_id = entries.get(AdmissionEntry.REQUEST_ID, "")
        if self.queue is None or not request_id:
            return _ok()
        if entries.get(AdmissionEntry.CHECK) == wire.QUEUE_RELEASE:
            self.queue.release(request_id)
            return _ok()
        route = view.routes.get(entries.get(AdmissionEntry.ROUTE, ""))
        provider = _first_provider(view, route, entries) if route is not None else None
        if view.queue is None or route is None or provider is None:
            return _ok()
        client = view.client(entries.get(AdmissionEntry.KEY_ID))
        result = await self.queue.acquire(
            request_id, provider, department_of(client, route), client.priority if client is not None else 0,
            max_waiting=view.queue.max_waiting, timeout=view.queue.timeout)
        if result is Admitted.GO:
            return _ok()
        return _queue_refused(result, provider, view.queue.timeout)


# The statuses Envoy's rate limit filters answer a refusal with (control_plane/resources/admission.py).
LIMIT_REFUSED_STATUS, QUEUE_REFUSED_STATUS = 429, 503


def _shaped(view: RuntimeView, entries: Mapping[str, str], response: rls_pb2.RateLimitResponse,
            status: int) -> rls_pb2.RateLimitResponse:
    """A refusal in the error shape of the request's route's API (Anthropic's on a Messages route)."""
    route = view.routes.get(entries.get(AdmissionEntry.ROUTE, ""))
    if response.overall_code == rls_pb2.RateLimitResponse.OVER_LIMIT and route is not None and response.raw_body:
        response.raw_body = shapes.reshaped_error(route.handler, status, response.raw_body)
    return response


def _first_provider(view: RuntimeView, route: Route, entries: Mapping[str, str]) -> str | None:
    """Where the request goes first: the provider whose slots it waits for."""
    _, chain = _chain(view, route, entries)
    return chain.providers[0] if chain is not None and chain.providers else None


# How long a client refused by the queue should wait before it tries again.
QUEUE_RETRY_AFTER_SECONDS = 1


def _queue_refused(result: Admitted, provider: str, timeout: float) -> rls_pb2.RateLimitResponse:
    if result is Admitted.FULL:
        message = (f"The gateway's queue is full: provider '{provider}' is at its concurrency limit and "
                   "queue.max_waiting requests are waiting already. Try again shortly.")
        code = "queue_full"
    else:
        message = (f"The request waited {timeout:g}s (queue.timeout) for provider '{provider}', which stayed at "
                   "its concurrency limit. Try again shortly.")
        code = "queue_timeout"
    error = {"message": message, "type": "server_error", "param": None, "code": code}
    headers = [_header("retry-after", str(QUEUE_RETRY_AFTER_SECONDS)), _header("content-type", "application/json")]
    return rls_pb2.RateLimitResponse(overall_code=rls_pb2.RateLimitResponse.OVER_LIMIT,
                                     response_headers_to_add=headers, raw_body=json.dumps({"error": error}).encode())


def _ok(states: Sequence[LimitState] = ()) -> rls_pb2.RateLimitResponse:
    return rls_pb2.RateLimitResponse(overall_code=rls_pb2.RateLimitResponse.OK,
                                     response_headers_to_add=_rate_headers(states))


def _refused(refused: LimitState, states: Sequence[LimitState]) -> rls_pb2.RateLimitResponse:
    wait = max(1, math.ceil(refused.reset_at - time.time()))
    limit = refused.limit
    who = limit.scope.replace(":", " ", 1)
    if limit.metric == Metric.SPEND:
        message = (f"Budget reached for {who}: ${limit.limit / MICRO:.2f} per {limit.period.value}, "
                   f"${refused.used / MICRO:.2f} spent or reserved. It resets in {_duration(wait)} "
                   f"(at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(refused.reset_at))}).")
        error = {"message": message, "type": "insufficient_quota", "param": None, "code": "budget_exceeded"}
    else:
        kind = limit.metric.value
        message = (f"Rate limit reached for {kind} per {limit.period.value} ({who}): limit {limit.limit}, "
                   f"used or reserved {refused.used}. Please try again in {_duration(wait)}.")
        error = {"message": message, "type": kind, "param": None, "code": "rate_limit_exceeded"}
    headers = [*_rate_headers(states), _header("retry-after", str(wait)), _header("content-type", "application/json")]
    return rls_pb2.RateLimitResponse(overall_code=rls_pb2.RateLimitResponse.OVER_LIMIT,
                                     response_headers_to_add=headers, raw_body=json.dumps({"error": error}).encode())


def _rate_headers(states: Sequence[LimitState]) -> list[base_pb2.HeaderValue]:
    """OpenAI's x-ratelimit-{limit,remaining,reset}-{requests,tokens}: the tightest limit of each kind."""
    headers = []
    now = time.time()
    for metric in (Metric.REQUESTS, Metric.TOKENS):  # OpenAI's suffixes are these metrics' names
        of_kind = [s for s in states if s.limit.metric == metric]
        if not of_kind:
            continue
        tightest = min(of_kind, key=lambda s: (s.remaining, s.reset_at))
        headers += [_header(f"x-ratelimit-limit-{metric.value}", str(tightest.limit.limit)),
                    _header(f"x-ratelimit-remaining-{metric.value}", str(tightest.remaining)),
                    _header(f"x-ratelimit-reset-{metric.value}", _duration(max(0.0, tightest.reset_at - now)))]
    return headers


def _header(key: str, value: str) -> base_pb2.HeaderValue:
    return base_pb2.HeaderValue(key=key, value=value)


def _duration(seconds: float) -> str:
    """As OpenAI writes its resets: 1s, 6m0s, 1h2m3s."""
    whole = math.ceil(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def reserved(metadata: Mapping[str, struct_pb2.Struct]) -> bool:
    """Whether an access log entry's request holds a reservation (the admission service said so)."""
    namespace = metadata.get(wire.ADMISSION_NAMESPACE)
    return namespace is not None and namespace.fields.get(wire.RESERVED_KEY) is not None
