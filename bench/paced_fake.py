"""A paced SSE provider: raw asyncio, one event every ``gap`` milliseconds.

The Envoy fake sends a whole stream as one body, so chunk timing through it
says nothing. This one sends event i at ``start + i * gap`` on a fixed timetable
(never ``sleep(gap)`` after each write, which would drift), each event in its own
HTTP chunk, with the moment it was written (``time.monotonic()``) in the
chunk's id. A client then sees how long the first event takes to arrive (time
to first byte), how long each chunk took from this process to it (transit),
and whether the events keep their spacing (a proxy that buffered the stream
would deliver them bunched up at the end).

It is only used at low concurrency (streams take ``events * gap`` each), where
one Python process keeps its timetable well within a millisecond.

Run: ``python -m bench.paced_fake [--gap-ms 10]``; prints ``{"port": N}`` once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys

from bench.payloads import STAMP, STAMP_FORMAT, models_list, sse_events

SSE_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
            b"transfer-encoding: chunked\r\n\r\n")


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _fixed(status: str, body: bytes) -> bytes:
    return (f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
            .encode() + body)


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> None:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)  # the data and its CRLF
            if size == 0:
                return
    length = int(headers.get("content-length", "0") or 0)
    if length:
        await reader.readexactly(length)


class PacedSse:
    def __init__(self, gap: float) -> None:
        self.gap = gap
        self.events = sse_events(stamped=True)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # HTTP/1.1 keep-alive: one request after the other
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                request_line, *lines = head.split("\r\n")
                method, path, _ = request_line.split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines if ln)}
                await _read_body(reader, headers)
                if method == "GET" and path.split("?")[0].endswith("/models"):
                    writer.write(_fixed("200 OK", models_list()))
                elif method == "POST":
                    await self._stream(writer)
                else:
                    writer.write(_fixed("404 Not Found", b'{"error":{"message":"not a bench path"}}'))
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    return
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            return  # the client went away; nothing to answer
        finally:
            writer.close()

    async def _stream(self, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()  # its clock is time.monotonic()
        start = loop.time()
        writer.write(SSE_HEAD)
        for i, event in enumerate(self.events):
            if i:
                await asyncio.sleep(max(0.0, start + i * self.gap - loop.time()))
            writer.write(_chunk(event.replace(STAMP, STAMP_FORMAT.format(loop.time()).encode())))
            await writer.drain()
        writer.write(b"0\r\n\r\n")


async def serve(gap: float, port: int) -> None:
    fake = PacedSse(gap)
    server = await asyncio.start_server(fake.handle, "127.0.0.1", port)
    print(json.dumps({"port": server.sockets[0].getsockname()[1]}), flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.paced_fake")
    parser.add_argument("--gap-ms", type=float, default=10.0, help="time between two SSE events")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.gap_ms / 1000, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
