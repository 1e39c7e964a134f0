"""Open-loop load: requests sent on a fixed timetable, latency measured from the timetable.

A closed-loop generator (wrk) sends the next request only when a connection
is free, so when the server stalls it stops sending: the requests that would
have waited are never issued and the stall shows up as one slow request
instead of many ("coordinated omission"). Here request i is due at
``start + i / rate`` whatever happened before; it takes an idle keep-alive
connection or opens a new one, and its latency runs from the moment it was
DUE, not from when it was sent. A stall therefore counts against every request
scheduled during it, as it would for real users arriving at that rate.

The generator's own lateness (the event loop waking after a request was due)
is reported as ``send_lag``: if its p99 is large, the client, not the target,
limits the measurement.

It shares the two cores with what it measures, so it is written on asyncio
Protocols: one callback per read, no task or stream reader per request
(measured against the stream-based version at 3,000 req/s: 0.05 instead of
0.08-0.10 ms of CPU per request).
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

TIMEOUT = 10.0  # a request still unanswered after this counts as an error
MAX_CONNECTIONS = 256
# A connection left idle longer than this is closed, not reused, as HTTP clients
# do: well under the gateway's own idle timeout (300 s), which otherwise closes it
# as it is being reused (a lost request: 1 in 60,000 in a 10-minute soak).
CLIENT_IDLE_SECONDS = 30.0
SWEEP_SECONDS = 0.1  # how often requests past their timeout are looked for


@dataclass
class OpenLoopResult:
    scheduled: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds, from due time to full response
    send_lag: list[float] = field(default_factory=list)  # seconds, from due time to the write
    status_errors: int = 0  # answered, but not 2xx
    socket_errors: int = 0  # connect/read failures and timeouts
    seconds: float = 0.0  # from the first due time to the last answer
    connections: int = 0  # the most connections open at once

    @property
    def settled(self) -> int:
        return len(self.latencies) + self.status_errors + self.socket_errors


class _Exchange(asyncio.Protocol):
    """One keep-alive connection: one request at a time, its response read by Content-Length or chunks."""

    def __init__(self, load: _OpenLoop) -> None:
        self.load = load
        self.transport: asyncio.Transport | None = None
        self.due: float | None = None  # the request in flight
        self.idle_since = 0.0
        self._buffer = bytearray()
        self._end = -1  # where the response ends in the buffer; -1 unknown, -2 chunked
        self._status = 0
        self._keep_alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a TCP connection's

    def is_closing(self) -> bool:
        assert self.transport is not None  # connected: create_connection returned it
        return self.transport.is_closing()

    def close(self) -> None:
        assert self.transport is not None  # connected: create_connection returned it
        self.transport.close()

    def send(self, raw: bytes, due: float) -> None:
        assert self.transport is not None
        self.due, self._end = due, -1
        self._buffer.clear()
        self.transport.write(raw)

    def data_received(self, data: bytes) -> None:
        if self.due is None:
            return  # nothing asked: not an answer
        self._buffer += data
        if self._end == -1 and not self._read_head():
            return
        if self._end == -2:
            if not self._buffer.endswith(b"\r\n0\r\n\r\n"):
                return
        elif len(self._buffer) < self._end:
            return
        due, self.due = self.due, None
        self.load.answered(self, due, self._status, self._keep_alive)

    def _read_head(self) -> bool:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = bytes(self._buffer[:end]).lower()
        self._status = int(head[9:12])
        self._keep_alive = b"\r\nconnection: close" not in head
        at = head.find(b"\r\ncontent-length:")
        if at >= 0:
            stop = head.find(b"\r\n", at + 2)
            self._end = end + 4 + int(head[at + 17:stop if stop >= 0 else len(head)])
        elif b"\r\ntransfer-encoding: chunked" in head:
            self._end = -2
        else:
            raise ValueError("a response without Content-Length or chunks")  # the fakes never send one
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.load.lost(self)


class _OpenLoop:
    def __init__(self, host: str, port: int, result: OpenLoopResult) -> None:
        self.loop = asyncio.get_running_loop()
        self.host, self.port, self.result = host, port, result
        self.idle: list[_Exchange] = []
        self.busy: set[_Exchange] = set()
        self.waiting: deque[tuple[bytes, float]] = deque()  # due, but every connection is busy
        self.opening = 0
        self.last_settled = 0.0  # loop time of the last answer or error

    async def prewarm(self, n: int) -> None:
        for _ in range(n):
            _, conn = await self.loop.create_connection(lambda: _Exchange(self), self.host, self.port)
            conn.idle_since = self.loop.time()
            self.idle.append(conn)
        self.result.connections = n

    def submit(self, raw: bytes, due: float) -> None:
        now = self.loop.time()
        while self.idle:
            conn = self.idle.pop()
            if now - conn.idle_since < CLIENT_IDLE_SECONDS and not conn.is_closing():
                self._send(conn, raw, due)
                return
            conn.close()
        if len(self.busy) + self.opening < MAX_CONNECTIONS:
            self.opening += 1
            self.loop.create_task(self._open(raw, due))
        else:
            self.waiting.append((raw, due))

    async def _open(self, raw: bytes, due: float) -> None:
        try:
            _, conn = await self.loop.create_connection(lambda: _Exchange(self), self.host, self.port)
        except OSError:
            self.result.socket_errors += 1
            return
        finally:
            self.opening -= 1
        self._send(conn, raw, due)
        self.result.connections = max(self.result.connections, len(self.busy) + len(self.idle))

    def _send(self, conn: _Exchange, raw: bytes, due: float) -> None:
        self.result.send_lag.append(self.loop.time() - due)
        self.busy.add(conn)
        conn.send(raw, due)

    def answered(self, conn: _Exchange, due: float, status: int, keep_alive: bool) -> None:
        self.last_settled = self.loop.time()
        self.result.latencies.append(self.last_settled - due)
        if not 200 <= status < 300:
            self.result.status_errors += 1
        self.busy.discard(conn)
        if not keep_alive:
            conn.close()
        elif self.waiting:
            self._send(conn, *self.waiting.popleft())
        else:
            conn.idle_since = self.loop.time()
            self.idle.append(conn)

    def lost(self, conn: _Exchange) -> None:
        if conn.due is not None:  # closed with its answer unread
            conn.due = None
            self.result.socket_errors += 1
            self.last_settled = self.loop.time()
        self.busy.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)

    def sweep(self) -> None:
        """Requests unanswered after TIMEOUT are errors; their connections are closed."""
        late = self.loop.time() - TIMEOUT
        for conn in [c for c in self.busy if c.due is not None and c.due < late]:
            conn.close()  # connection_lost counts it
        while self.waiting and self.waiting[0][1] < late:
            self.waiting.popleft()
            self.result.socket_errors += 1

    def close(self) -> None:
        for conn in (*self.idle, *self.busy):
            conn.close()


async def open_loop(host: str, port: int, requests: Sequence[bytes], rate: float, seconds: float,
                    prewarm: int = 8) -> OpenLoopResult:
    """Sends ``rate * seconds`` requests (cycling through ``requests``) at ``rate`` per second."""
    loop = asyncio.get_running_loop()
    result = OpenLoopResult(scheduled=int(rate * seconds))
    load = _OpenLoop(host, port, result)
    # A few connections before the clock starts, so the first requests do not
    # all pay for a TCP handshake; more are opened only if the target falls behind.
    await load.prewarm(prewarm)
    start = loop.time() + 0.05
    next_sweep = start + SWEEP_SECONDS
    cycle = itertools.cycle(requests)
    for i in range(result.scheduled):
        due = start + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        # When the loop wakes late, every request already due goes out now (its
        # lateness is in its latency): the timetable never slips.
        load.submit(next(cycle), due)
        if due >= next_sweep:
            load.sweep()
            next_sweep = due + SWEEP_SECONDS
    while result.settled < result.scheduled:
        await asyncio.sleep(SWEEP_SECONDS)
        load.sweep()
    result.seconds = max(load.last_settled, start) - start
    load.close()
    return result
