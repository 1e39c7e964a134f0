"""Counts the passthrough lane's requests from Envoy's gRPC access log.

A request on the lane (see control_plane/resources/passthrough.py) is served by Envoy
alone; ext_proc hears of it afterwards, when Envoy sends its access log entry
(in batches, every quarter second or 64 KiB). Each lane entry is counted as
the router and upstream steps count the other routes' requests: by outcome,
with its duration and the gateway's own share of it, a failover, and the
token usage and cost Envoy read from the answer (json_to_metadata).

The model lane (control_plane/resources/model_lane.py) has no router step either; its
upstream step counts a stream it delivered (with its tokens) and every
attempt's retries; this log counts every other answer on that lane, a JSON
answer with the tokens Envoy read from it (whichever provider's API it was
translated from), provider errors, Envoy's own replies, and the client errors
the upstream step answered.

Entries of other routes are ignored: their steps counted them already.

The router also logs each lane attempt answered 429 or 503: one with a
retry-after holds its provider off, as the upstream step does for the
attempts it sees.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc
from google.protobuf import struct_pb2

from ext_proc.admission import Admission, reserved
from ext_proc.experiments import Variant, requested_model
from ext_proc.ledger import Ledger, LedgerRecord, labels_json
from ext_proc.metrics import GatewayMetrics, token_count
from ext_proc.outcomes import RequestOutcome, outcome_for
from ext_proc.provider_health import retry_after_seconds
from ext_proc.runtime import Provider, Route, RuntimeView, cost_usd
from hapax import wire
from hapax.wire import Handler, Lane, LogTag

log = logging.getLogger("hapax.ext_proc")

# Route path and its client's labels, provider, model, status, outcome: the labels answers
# counted together share.
_AnswerKey = tuple[str, tuple[tuple[str, str], ...], str, str, int, RequestOutcome]


class AccessLogCounter(als_pb2_grpc.AccessLogServiceServicer):
    def __init__(self, current_view: Callable[[], RuntimeView | None], metrics: GatewayMetrics,
                 hold_off: Callable[[str, float, int], None] | None = None,
                 admission: Admission | None = None, ledger: Ledger | None = None) -> None:
        self.current_view = current_view
        self.metrics = metrics
        self.hold_off = hold_off
        self.admission = admission
        self.ledger = ledger

    async def StreamAccessLogs(self, request_iterator: AsyncIterator[als_pb2.StreamAccessLogsMessage],
                               context: Any) -> als_pb2.StreamAccessLogsResponse:
        async for message in request_iterator:
            self.count_batch(message.http_logs.log_entry)
        return als_pb2.StreamAccessLogsResponse()

    def count_batch(self, entries: Iterable[accesslog_pb2.HTTPAccessLogEntry]) -> None:
        """A flush's entries, added up by labels first: a flush brings hundreds, mostly alike."""
        view = self.current_view()
        answers: dict[_AnswerKey, _Answers] = {}
        for entry in entries:
            try:
                self.count(entry, view, answers)
            except Exception:  # one odd entry must not end the stream (Envoy would drop the batch)
                log.exception("could not count an access log entry")
        with self.metrics.batched():
            for alike in answers.values():
                alike.report(self.metrics)

    def count(self, entry: accesslog_pb2.HTTPAccessLogEntry, view: RuntimeView | None,
              answers: dict[_AnswerKey, _Answers]) -> None:
        common = entry.common_properties
        lane = common.custom_tags.get(LogTag.LANE)
        if common.access_log_type == accesslog_pb2.UpstreamEnd:
            # Holding off again is harmless: the model lane's upstream step reads the retry-after
            # too, except on a stream it sent as it is (whose answer's headers it does not read).
            if lane in (Lane.PASSTHROUGH, Lane.MODEL):
                self._honour_retry_after(entry)
            return
        delivered_stream = _delivered_stream(entry)  # its upstream step counts, records and settles it
        if lane == Lane.PASSTHROUGH:
            self._count_answer(entry, view, answers, retries_counted=False)
        elif lane == Lane.MODEL and not delivered_stream:
            self._count_answer(entry, view, answers, retries_counted=True)
        coalesced = wire.COALESCED_HEADER in entry.response.response_headers
        if self.ledger is not None and view is not None and (coalesced or not delivered_stream):
            self._write_ledger(entry, view, coalesced)
        if self.admission is not None and view is not None:
            if coalesced:
                # The answer and its cost are its leader's: this request used none of its reservation.
                self.admission.settle_later(view, entry.request.request_id, None, 0, 0)
            elif not delivered_stream:
                self._settle(entry, view)

    def _write_ledger(self, entry: accesslog_pb2.HTTPAccessLogEntry, view: RuntimeView, coalesced: bool) -> None:
        """The request's one ledger record (ext_proc/ledger.py); requests of no route (404, /health) have none."""
        assert self.ledger is not None
        common, tags = entry.common_properties, entry.common_properties.custom_tags
        route = view.routes.get(tags.get(LogTag.ROUTE, ""))
        status = entry.response.response_code.value
        if route is None or status == 0:
            return
        key_id = tags.get(LogTag.KEY_ID, "")
        client = view.client(key_id)
        variant = _variant(entry, view)
        provider = _answering(entry, view, route, variant)
        inputs = outputs = cached = None
        if 200 <= status < 300 and not coalesced:
            inputs, outputs, cached = _usage(entry)
        outcome = RequestOutcome.COALESCED if coalesced else outcome_for(
            status, common.upstream_request_attempt_count or 1)
        self.ledger.record(LedgerRecord(
            time=_seconds(common.start_time), request_id=entry.request.request_id, route=route.path,
            labels=labels_json(view.labelled(route, key_id).labels), key_id=key_id,
            client=client.name if client is not None else "", provider=provider.name if provider else "",
            model=provider.model if provider else "", input_tokens=0 if coalesced else inputs,
            output_tokens=0 if coalesced else outputs, cached_tokens=cached,
            cost_usd=0.0 if coalesced else cost_usd(provider.price if provider else None, inputs, outputs),
            price_version=view.version, status=status, outcome=outcome.value,
            experiment=variant.experiment if variant else "", variant=variant.name if variant else "",
            region=provider.region if provider else ""))

    def _settle(self, entry: accesslog_pb2.HTTPAccessLogEntry, view: RuntimeView) -> None:
        """A request that held a reservation: it becomes the usage Envoy read from the answer."""
        common = entry.common_properties
        if not reserved(common.metadata.filter_metadata):
            return
        assert self.admission is not None
        if not 200 <= entry.response.response_code.value < 300:
            self.admission.settle_later(view, entry.request.request_id, None, 0, 0)  # nothing was answered
            return
        prompt, completion, _ = _usage(entry)
        route = view.routes.get(common.custom_tags.get(LogTag.ROUTE, ""))
        answering = _answering(entry, view, route, _variant(entry, view))
        self.admission.settle_later(view, entry.request.request_id, answering, prompt, completion or 0)

    def _count_answer(self, entry: accesslog_pb2.HTTPAccessLogEntry, view: RuntimeView | None,
                      answers: dict[_AnswerKey, _Answers], *, retries_counted: bool) -> None:
        """``retries_counted``: an upstream step saw every attempt and counted their retries."""
        common, tags = entry.common_properties, entry.common_properties.custom_tags
        status = entry.response.response_code.value
        route = view.routes.get(tags.get(LogTag.ROUTE, "")) if view is not None else None
        if view is None or route is None or status == 0:
            return  # a route gone with a newer version; a client gone before any answer (as the steps do)
        variant = _variant(entry, view)
        route = view.labelled(route, tags.get(LogTag.KEY_ID), variant)  # its client's labels, its variant's
        provider = _answering(entry, view, route, variant)
        attempts = common.upstream_request_attempt_count or 1
        outcome = outcome_for(status, attempts)
        key = (route.path, tuple(route.labels.items()), provider.name if provider is not None else "",
               provider.model if provider else "", status, outcome)
        alike = answers.get(key)
        if alike is None:
            alike = answers[key] = _Answers(route, provider, status, outcome)
        alike.durations.append(_seconds(common.time_to_last_downstream_tx_byte) or _seconds(common.duration))
        if provider is None:
            return
        if attempts == 1:
            overhead = _overhead(common)
            if overhead is not None:
                alike.overheads.append(overhead)
        elif not retries_counted:
            # The log names only the provider that answered; in a chain of two, the one retry went there.
            alike.retries += attempts - 1
        if 200 <= status < 300:
            # A count Envoy did not find in the answer (or an answer without usage) is unknown, not 0.
            prompt, completion, _ = _usage(entry)
            if prompt is None:
                alike.unknown_inputs += 1
            else:
                alike.inputs.append(prompt)
            if route.handler != Handler.EMBEDDINGS:  # embeddings have no output
                if completion is None:
                    alike.unknown_outputs += 1
                else:
                    alike.outputs.append(completion)

    def _honour_retry_after(self, attempt: accesslog_pb2.HTTPAccessLogEntry) -> None:
        """An attempt the router logged for its 429 or 503 (control_plane/resources/passthrough.py: hold_off_logger)."""
        retry_after = attempt.response.response_headers.get("retry-after", "")
        provider = attempt.common_properties.custom_tags.get(LogTag.PROVIDER, "")
        seconds = retry_after_seconds(retry_after) if retry_after else None
        if seconds and provider and self.hold_off is not None:
            self.hold_off(provider, seconds, attempt.response.response_code.value)


class _Answers:
    """The answers of one flush that share their labels (route, provider, status, outcome)."""

    __slots__ = ("route", "provider", "status", "outcome", "durations", "overheads", "retries", "inputs", "outputs",
                 "unknown_inputs", "unknown_outputs")

    def __init__(self, route: Route, provider: Provider | None, status: int, outcome: RequestOutcome) -> None:
        self.route, self.provider, self.status, self.outcome = route, provider, status, outcome
        self.durations: list[float] = []
        self.overheads: list[float] = []  # of those answered at the first attempt
        self.retries = 0
        self.inputs: list[int] = []  # token counts of those whose usage Envoy read
        self.outputs: list[int] = []
        self.unknown_inputs = self.unknown_outputs = 0  # answers whose count Envoy did not find

    def report(self, metrics: GatewayMetrics) -> None:
        metrics.requests_answered(self.route, self.provider, self.status, self.outcome,
                                  self.durations, self.overheads)
        if self.provider is None:
            return
        if self.retries:
            metrics.retried(self.route, self.provider, self.retries)
        if self.inputs or self.outputs or self.unknown_inputs or self.unknown_outputs:
            metrics.tokens_counted(self.route, self.provider, self.inputs, self.outputs,
                                   unknown_inputs=self.unknown_inputs, unknown_outputs=self.unknown_outputs)


def _answering(entry: accesslog_pb2.HTTPAccessLogEntry, view: RuntimeView, route: Route | None,
               variant: Variant | None) -> Provider | None:
    """The provider that answered, with the model it was sent (the one named, or its variant's, if
    it serves it, else its first of the family); None when the gateway answered, not a provider."""
    if entry.response.response_code_details.startswith(wire.GATEWAY_DETAILS_PREFIX):
        return None
    tags = entry.common_properties.custom_tags
    provider = view.providers.get(tags.get(LogTag.PROVIDER, ""))
    if provider is not None and route is not None and route.handler in wire.FAMILY_OF_HANDLER:
        provider = provider.serving(wire.FAMILY_OF_HANDLER[Handler(route.handler)],
                                    requested_model(variant, provider.name, tags.get(LogTag.MODEL)))
    return provider


def _variant(entry: accesslog_pb2.HTTPAccessLogEntry, view: RuntimeView) -> Variant | None:
    """The experiment variant that served the request, as its answer says (only one this version has)."""
    headers = entry.response.response_headers
    return view.variant(headers.get(wire.EXPERIMENT_HEADER), headers.get(wire.VARIANT_HEADER))


def _usage(entry: accesslog_pb2.HTTPAccessLogEntry) -> tuple[int | None, int | None, int | None]:
    """The prompt, completion and cached tokens Envoy read from the answer (None: not found)."""
    usage = entry.common_properties.metadata.filter_metadata.get(wire.USAGE_NAMESPACE)
    fields = usage.fields if usage is not None else {}
    return (_tokens(fields.get(wire.PROMPT_TOKENS)), _tokens(fields.get(wire.COMPLETION_TOKENS)),
            _tokens(fields.get(wire.CACHED_TOKENS)))


def _delivered_stream(entry: accesslog_pb2.HTTPAccessLogEntry) -> bool:
    """A stream the upstream step watched to its end, and counted there."""
    content_type = entry.response.response_headers.get("content-type", "")
    return 200 <= entry.response.response_code.value < 300 and content_type.startswith("text/event-stream")


def _seconds(d) -> float:
    return d.seconds + d.nanos / 1e9


def _overhead(common: accesslog_pb2.AccessLogCommon) -> float | None:
    """Time to the first byte sent to the client, less the provider's time to its first byte."""
    if not (common.HasField("time_to_first_downstream_tx_byte") and common.HasField("time_to_first_upstream_rx_byte")
            and common.HasField("time_to_last_upstream_tx_byte")):
        return None
    provider_time = _seconds(common.time_to_first_upstream_rx_byte) - _seconds(common.time_to_last_upstream_tx_byte)
    return _seconds(common.time_to_first_downstream_tx_byte) - provider_time


def _tokens(value: struct_pb2.Value | None) -> int | None:
    """A count Envoy read, or None: unknown (absent, or not a count)."""
    return token_count(value.number_value) if value is not None and value.HasField("number_value") else None
