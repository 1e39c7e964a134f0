"""Faults a fake provider can be told to inject, and the queue that hands them out.

Faults are plain values so tests can build them inline and compare them; how each
one is acted out on the wire lives in ``base.FakeProvider``.

Refusing connections is not a per-request fault (there is no request to attach it
to): use ``FakeProvider.refuse_connections()`` / ``accept_connections()``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Status:
    """Answer with this HTTP status and the provider's own error JSON (or ``body``)."""

    code: int
    body: dict[str, Any] | None = None
    retry_after: float | None = None


@dataclass(frozen=True)
class Latency:
    """Wait ``seconds`` before handling the request normally."""

    seconds: float


@dataclass(frozen=True)
class Reset:
    """Abort the TCP connection without writing a response."""


@dataclass(frozen=True)
class Hang:
    """Never answer; released when the client leaves or the fake stops."""


@dataclass(frozen=True)
class CutStream:
    """Send ``after_chunks`` stream events, then abort the connection.

    With ``reset=False`` the HTTP body ends properly instead, without the
    stream's own end (no ``[DONE]``, ``message_stop`` or ``done``), as when a
    proxy in front of the provider gives up on a long stream.
    A non-streaming request gets a ``Reset`` instead.
    """

    after_chunks: int
    reset: bool = True


@dataclass(frozen=True)
class StreamError:
    """Send ``after_chunks`` stream events, then a provider error event, then end.

    A non-streaming request gets an HTTP error in the provider's format instead.
    """

    after_chunks: int
    error_type: str = "overloaded_error"


Fault = Status | Latency | Reset | Hang | CutStream | StreamError


@dataclass
class _Armed:
    fault: Fault
    remaining: int | None  # None: until cleared
    method: str | None = None  # only requests with this method (None: all)


class FaultQueue:
    """FIFO of faults, each armed for a number of requests."""

    def __init__(self) -> None:
        self._queue: deque[_Armed] = deque()

    def push(self, fault: Fault, times: int | None, method: str | None = None) -> None:
        if times is not None and times < 1:
            raise ValueError("times must be >= 1, or None for every request")
        self._queue.append(_Armed(fault, times, method))

    def take(self, method: str | None = None) -> Fault | None:
        """The fault for a request arriving now with ``method``, consuming one use of it."""
        if not self._queue:
            return None
        head = self._queue[0]
        if head.method is not None and head.method != method:
            return None
        if head.remaining is not None:
            head.remaining -= 1
            if head.remaining == 0:
                self._queue.popleft()
        return head.fault

    def clear(self) -> None:
        self._queue.clear()
