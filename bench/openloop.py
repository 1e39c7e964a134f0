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
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.http1 import Connection

TIMEOUT = 10.0  # a request still unanswered after this counts as an error
MAX_CONNECTIONS = 256
# A connection left idle longer than this is closed, not reused, as HTTP clients
# do: well under the gateway's own idle timeout (300 s), which otherwise closes it
# as it is being reused (a lost request: 1 in 60,000 in a 10-minute soak).
CLIENT_IDLE_SECONDS = 30.0


@dataclass
class OpenLoopResult:
    scheduled: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds, from due time to full response
    send_lag: list[float] = field(default_factory=list)  # seconds, from due time to the write
    status_errors: int = 0  # answered, but not 2xx
    socket_errors: int = 0  # connect/read failures and timeouts
    seconds: float = 0.0  # from the first due time to the last answer
    connections: int = 0  # the most connections open at once


class _Pool:
    """Idle keep-alive connections; a new one when none is idle, up to a cap."""

    def __init__(self, host: str, port: int, cap: int) -> None:
        self.host, self.port = host, port
        self.idle: list[tuple[Connection, float]] = []  # with when it became idle
        self.slots = asyncio.Semaphore(cap)
        self.open = 0
        self.most = 0

    async def get(self) -> Connection:
        await self.slots.acquire()
        now = asyncio.get_running_loop().time()
        while self.idle:
            conn, since = self.idle.pop()
            if now - since < CLIENT_IDLE_SECONDS and not conn.reader.at_eof():
                return conn
            conn.close()
            self.open -= 1
        try:
            conn = await Connection.open(self.host, self.port)
        except BaseException:
            self.slots.release()
            raise
        self.open += 1
        self.most = max(self.most, self.open)
        return conn

    def put(self, conn: Connection, reusable: bool) -> None:
        if reusable:
            self.idle.append((conn, asyncio.get_running_loop().time()))
        else:
            conn.close()
            self.open -= 1
        self.slots.release()

    def close(self) -> None:
        for conn, _ in self.idle:
            conn.close()


async def open_loop(host: str, port: int, requests: Sequence[bytes], rate: float, seconds: float,
                    prewarm: int = 8) -> OpenLoopResult:
    """Sends ``rate * seconds`` requests (cycling through ``requests``) at ``rate`` per second."""
    loop = asyncio.get_running_loop()
    pool = _Pool(host, port, MAX_CONNECTIONS)
    # A few connections before the clock starts, so the first requests do not
    # all pay for a TCP handshake; more are opened only if the target falls behind.
    warm = await asyncio.gather(*(pool.get() for _ in range(prewarm)))
    for conn in warm:
        pool.put(conn, True)
    result = OpenLoopResult(scheduled=int(rate * seconds))
    tasks: set[asyncio.Task[None]] = set()

    async def one(raw: bytes, due: float) -> None:
        # One deadline for the whole request (asyncio.timeout_at: wait_for would
        # wrap each await in a task of its own, the generator's largest CPU cost).
        conn = None
        try:
            async with asyncio.timeout_at(due + TIMEOUT):
                conn = await pool.get()
                result.send_lag.append(loop.time() - due)
                resp = await conn.request(raw)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
            result.socket_errors += 1
            if conn is not None:
                pool.put(conn, False)
            return
        result.latencies.append(loop.time() - due)
        if not 200 <= resp.status < 300:
            result.status_errors += 1
        pool.put(conn, resp.keep_alive)

    start = loop.time() + 0.05
    cycle = itertools.cycle(requests)
    for i in range(result.scheduled):
        due = start + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        # When the loop wakes late, every request already due goes out now (its
        # lateness is in its latency): the timetable never slips.
        task = asyncio.create_task(one(next(cycle), due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks)
    result.seconds = loop.time() - start
    result.connections = pool.most
    pool.close()
    return result
