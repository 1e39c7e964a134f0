"""A minimal HTTP/1.1 keep-alive client on asyncio streams, for the harness's own generators.

Why not aiohttp or httpx: per request they cost several times what this does
(header objects, middleware, compression checks), and at a few hundred
requests per second that client time would sit inside every latency measured.
This one sends pre-encoded request bytes and reads exactly one response:
status, Content-Length or chunked body, and, when asked, the arrival time of
every SSE event (``\\n\\n``-terminated) in it. The loop's clock is
``time.monotonic()``, shared by every process on the machine.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field


def encode_request(method: str, host: str, port: int, path: str, body: bytes = b"",
                   content_type: str = "application/json", headers: dict[str, str] | None = None) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nhost: {host}:{port}\r\n"
    extra = {k: v for k, v in (headers or {}).items() if k.lower() != "content-type"}
    head += "".join(f"{k}: {v}\r\n" for k, v in extra.items())
    if body:
        head += f"content-type: {content_type}\r\ncontent-length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


@dataclass
class Response:
    status: int
    body_bytes: int = 0
    keep_alive: bool = True
    first_byte: float | None = None  # loop time when the first body byte arrived
    events: list[tuple[float, bytes]] = field(default_factory=list)  # (loop time it completed, SSE event)


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port)  # asyncio sets TCP_NODELAY
        return cls(reader, writer)

    def close(self) -> None:
        self.writer.close()

    async def request(self, raw: bytes, *, time_events: bool = False) -> Response:
        self.writer.write(raw)
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        resp = Response(status=int(lines[0].split(" ", 2)[1]))
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
        resp.keep_alive = headers.get("connection", "").lower() != "close"
        events = _EventClock(resp) if time_events else None
        loop = asyncio.get_running_loop()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await self.reader.readuntil(b"\r\n")  # no trailers: just the final CRLF
                    break
                data = (await self.reader.readexactly(size + 2))[:-2]
                self._got(resp, data, loop.time(), events)
        elif "content-length" in headers:
            length = int(headers["content-length"])
            if length:
                self._got(resp, await self.reader.readexactly(length), loop.time(), events)
        else:  # delimited by the end of the connection
            self._got(resp, await self.reader.read(), loop.time(), events)
            resp.keep_alive = False
        return resp

    @staticmethod
    def _got(resp: Response, data: bytes, now: float, events: _EventClock | None) -> None:
        if resp.first_byte is None and data:
            resp.first_byte = now
        resp.body_bytes += len(data)
        if events is not None:
            events.feed(data, now)


class _EventClock:
    """Timestamps each SSE event when its terminating blank line arrives."""

    def __init__(self, resp: Response) -> None:
        self.resp = resp
        self.pending = b""

    def feed(self, data: bytes, now: float) -> None:
        self.pending += data
        *complete, self.pending = self.pending.split(b"\n\n")
        self.resp.events += [(now, event) for event in complete]
