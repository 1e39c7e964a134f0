"""How a request, and a stream, ended: the two fixed vocabularies of ext_proc's metrics.

They are two vocabularies, not one: a stream's ``provider_error`` (the provider
sent an error event mid-stream) is not a request's ``provider_error`` (the
final answer was a 5xx or a 429). Their values are Prometheus label values, so
they never change spelling.
"""

from __future__ import annotations

from enum import StrEnum


class RequestOutcome(StrEnum):
    """The ``outcome`` of ``hapax_requests_total``: how a request's final answer went."""

    SUCCESS = "success"
    CLIENT_ERROR = "client_error"
    PROVIDER_ERROR = "provider_error"
    FAILED_OVER = "failed_over"        # a success, from a provider after earlier attempts failed
    STREAM_ABORTED = "stream_aborted"  # a stream that began well and did not reach its end
    COALESCED = "coalesced"            # a success: an identical request's answer, shared (dedup)

    @classmethod
    def answered(cls, attempt: int) -> RequestOutcome:
        """A successful answer, given at ``attempt``."""
        return cls.FAILED_OVER if attempt > 1 else cls.SUCCESS


def outcome_for(status: int, attempt: int) -> RequestOutcome:
    """The outcome of a request whose final answer has ``status``, given at ``attempt``."""
    if status < 400:
        return RequestOutcome.answered(attempt)
    if status < 500 and status != 429:
        return RequestOutcome.CLIENT_ERROR
    return RequestOutcome.PROVIDER_ERROR


class StreamOutcome(StrEnum):
    """The ``outcome`` of ``hapax_streams_total``: how a stream the client received ended.

    A stream that ends any other way than COMPLETED is an error for metrics, never a success.
    """

    COMPLETED = "completed"            # the provider's own end ([DONE], message_stop, done)
    PROVIDER_ERROR = "provider_error"  # the provider sent an error (or unreadable) event
    ENDED_EARLY = "ended_early"        # the body ended before the provider's end of stream
    # Its ext_proc call ended before its end: the provider's connection was cut,
    # or the client went away (Envoy then resets the other side).
    INTERRUPTED = "interrupted"
