"""The queue: a request whose provider is at its concurrency limit waits for a slot, fairly.

Each provider has as many slots as its circuit breaker's ``max_concurrent_requests``; a
request holds one of its chain's first provider from the moment it is let through until its
stream is done (Envoy says so: control_plane/resources/admission.py, the queue's release).
When every slot is taken, the request waits:

- the highest ``priority`` first (a client's, from ``clients.NAME.priority``);
- within one priority, departments in turn, one request each: a department's burst of a
  thousand waits behind itself, and another department's next request is served after at
  most one of the burst's;
- at most ``queue.max_waiting`` requests wait at once, each at most ``queue.timeout``; past
  either, the request is refused (Envoy answers 503 with ``retry-after``).

The queue lives in one process: Envoy sends every queue check and release to the first
ext_proc worker (its own cluster), since a release must find the slot its request took.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum


class Admitted(Enum):
    GO = "go"              # it holds a slot
    FULL = "full"          # max_waiting requests were waiting already
    TIMED_OUT = "timed_out"  # it waited its whole timeout


@dataclass(eq=False)
class _Waiter:
    request_id: str
    provider: str
    department: str
    slot: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class _Line:
    """The requests waiting for one provider: by priority, then by department in turn."""

    def __init__(self) -> None:
        self.levels: dict[int, OrderedDict[str, deque[_Waiter]]] = {}

    def __len__(self) -> int:
        return sum(len(q) for level in self.levels.values() for q in level.values())

    def push(self, waiter: _Waiter, priority: int) -> None:
        level = self.levels.setdefault(priority, OrderedDict())
        level.setdefault(waiter.department, deque()).append(waiter)

    def pop(self) -> _Waiter | None:
        """The next to serve: the highest priority's next department, which then goes last."""
        if not self.levels:
            return None
        priority = max(self.levels)
        level = self.levels[priority]
        department, waiting = next(iter(level.items()))
        waiter = waiting.popleft()
        del level[department]
        if waiting:
            level[department] = waiting  # to the back of the line of departments
        if not level:
            del self.levels[priority]
        return waiter

    def remove(self, waiter: _Waiter) -> None:
        for priority, level in list(self.levels.items()):
            waiting = level.get(waiter.department)
            if waiting is not None and waiter in waiting:
                waiting.remove(waiter)
                if not waiting:
                    del level[waiter.department]
                if not level:
                    del self.levels[priority]
                return


class FairQueue:
    """Slots per provider and the lines that wait for them (one event loop's; not thread-safe)."""

    def __init__(self, capacity: Callable[[str], int],
                 on_wait: Callable[[str, float, Admitted], None] | None = None) -> None:
        self.capacity = capacity  # provider -> its slots, read at each decision (a reload may change it)
        self.on_wait = on_wait  # (department, seconds waited, result), for metrics
        self.held: dict[str, str] = {}  # request id -> the provider whose slot it holds
        self.in_use: dict[str, int] = {}
        self.lines: dict[str, _Line] = {}

    def waiting(self) -> int:
        return sum(len(line) for line in self.lines.values())

    def waiting_by_department(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for line in self.lines.values():
            for level in line.levels.values():
                for department, waiting in level.items():
                    out[department] = out.get(department, 0) + len(waiting)
        return out

    async def acquire(self, request_id: str, provider: str, department: str, priority: int, *,
                      max_waiting: int, timeout: float) -> Admitted:
        if request_id in self.held:
            return Admitted.GO  # asked again (Envoy retried the check): it has its slot
        line = self.lines.setdefault(provider, _Line())
        self._hand_on(provider)  # a reload may have given the provider more slots
        if not line and self.in_use.get(provider, 0) < self.capacity(provider):
            self._take(request_id, provider)
            return Admitted.GO
        if self.waiting() >= max_waiting:
            self._report(department, 0.0, Admitted.FULL)
            return Admitted.FULL
        waiter = _Waiter(request_id, provider, department)
        line.push(waiter, priority)
        started = time.monotonic()
        try:
            await asyncio.wait({waiter.slot}, timeout=timeout)
        except asyncio.CancelledError:  # the client went away while it waited
            self._abandon(waiter)
            raise
        result = Admitted.GO if waiter.slot.done() else Admitted.TIMED_OUT
        if result is Admitted.TIMED_OUT:
            line.remove(waiter)
        self._report(department, time.monotonic() - started, result)
        return result

    def release(self, request_id: str) -> None:
        """Its stream is done: its slot goes to the next in line (unknown ids: nothing)."""
        provider = self.held.pop(request_id, None)
        if provider is None:
            return
        self.in_use[provider] -= 1
        self._hand_on(provider)

    def _take(self, request_id: str, provider: str) -> None:
        self.held[request_id] = provider
        self.in_use[provider] = self.in_use.get(provider, 0) + 1

    def _hand_on(self, provider: str) -> None:
        line = self.lines.get(provider)
        while line and self.in_use.get(provider, 0) < self.capacity(provider):
            waiter = line.pop()
            if waiter is None:
                break
            self._take(waiter.request_id, provider)
            waiter.slot.set_result(None)

    def _abandon(self, waiter: _Waiter) -> None:
        if waiter.slot.done():
            self.release(waiter.request_id)  # it was handed a slot it will never use
        else:
            self.lines[waiter.provider].remove(waiter)

    def _report(self, department: str, seconds: float, result: Admitted) -> None:
        if self.on_wait is not None:
            self.on_wait(department, seconds, result)
