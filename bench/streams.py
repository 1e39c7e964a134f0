"""Stream timing against the paced fake: time to first byte, chunk transit, gaps between chunks.

The paced fake sends event i at ``t + i * gap`` and writes the moment it sent
it into the event (same machine, same monotonic clock). Per stream:

- TTFB: request written -> first body byte (the request's way through the
  proxy, the fake's answer, the first chunk's way back);
- transit: each chunk's arrival minus its send time in the fake: the time a
  chunk spends in the proxy (C - B of it is what Hapax adds per chunk);
- gaps: between consecutive events at the client; a proxy that forwards chunks
  as they arrive keeps them ``gap`` apart, one that buffers shows gaps near 0.

Closed loop at low concurrency on purpose: this measures how a stream is
carried, not how many streams fit.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from dataclasses import dataclass, field

from bench.http1 import Connection

TIMEOUT = 10.0
STAMPED = re.compile(rb'"id":"t(\d+\.\d+)"')  # see payloads.STAMP


@dataclass
class StreamResult:
    streams: int = 0
    ttfb: list[float] = field(default_factory=list)  # seconds
    transit: list[float] = field(default_factory=list)  # seconds, per stamped chunk
    gaps: list[float] = field(default_factory=list)
    status_errors: int = 0
    socket_errors: int = 0
    incomplete: int = 0  # 200, but the stream did not end with [DONE]
    seconds: float = 0.0


async def stream_timing(host: str, port: int, raw: bytes, connections: int, seconds: float) -> StreamResult:
    loop = asyncio.get_running_loop()
    result = StreamResult()
    start = loop.time()
    deadline = start + seconds

    async def worker() -> None:
        conn: Connection | None = None
        while loop.time() < deadline:
            try:
                conn = conn or await Connection.open(host, port)
                sent = loop.time()
                resp = await asyncio.wait_for(conn.request(raw, time_events=True), TIMEOUT)
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
                result.socket_errors += 1
                if conn is not None:
                    conn.close()
                conn = None
                continue
            if not 200 <= resp.status < 300:
                result.status_errors += 1
            elif not resp.events or resp.events[-1][1].strip() != b"data: [DONE]" or resp.first_byte is None:
                result.incomplete += 1
            else:
                result.streams += 1
                result.ttfb.append(resp.first_byte - sent)
                result.gaps += [b[0] - a[0] for a, b in itertools.pairwise(resp.events)]
                for arrived, event in resp.events:
                    stamp = STAMPED.search(event)
                    if stamp:
                        result.transit.append(arrived - float(stamp.group(1)))
            if not resp.keep_alive:
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    result.seconds = loop.time() - start
    return result
