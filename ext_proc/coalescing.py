"""Coalescing: identical requests in flight at once go to the provider once (a route's ``dedup``).

On a route with ``dedup``, the router step of every request runs in the first ext_proc worker
(control_plane/resources/routes.py), so identical requests meet here. The first of a kind
leads: it goes to its provider as any request does, and its router step hands each piece of
the answer to its ``Flight`` as it passes (a stream's events from the first one on). A request
identical to one in flight follows: the router step sends it to this worker's HTTP side
(``wire.FIRST_WORKER_HTTP_CLUSTER``) with the flight's id, where ``stream_answer`` writes the
leader's answer to it as it arrives, under an id of its own.

Identical: the same client (the key's client, or anyone on an open gateway), the same route,
and the same body once parsed (key order and spacing aside). ``dedup: true`` coalesces only
requests whose answer is determined (``temperature`` 0, or a ``seed``); ``always`` any.

A leader that fails passes its error on; a leader that goes away without an answer ends its
followers with a 502, so a follower never waits on nothing. The answer's cost is the leader's;
followers are counted with the outcome ``coalesced`` (and settle no tokens against limits).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from hapax import wire

# How long a finished flight stays reachable by its id: a follower's request reaches the HTTP
# side a moment after its router step named the flight, and the leader may end meanwhile.
FINISHED_FLIGHT_SECONDS = 30.0
# The leader's answer headers a follower gets (the rest are the leader's own, or hop-by-hop).
FOLLOWED_HEADERS = ("content-type", "cache-control")
LOST_LEADER = json.dumps({"error": {
    "message": "The identical request this one was sharing ended without an answer; send it again.",
    "type": "server_error", "param": None, "code": "coalesced_request_lost"}}).encode()


def coalescing_key(scope: str, route: str, body: Any) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{scope}\0{route}\0{canonical}".encode()).hexdigest()


def determined(body: Mapping[str, Any]) -> bool:
    """Whether a request's answer is meant to be the same every time: temperature 0, or a seed."""
    return body.get("seed") is not None or body.get("temperature") == 0


@dataclass(eq=False)
class Flight:
    """One leader's answer as it arrives, for its followers."""

    id: str
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    pieces: list[bytes] = field(default_factory=list)
    ended: bool = False
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def answer_started(self, status: int, headers: Mapping[str, str]) -> None:
        self.status = status
        self.headers = {k: v for k, v in headers.items() if k in FOLLOWED_HEADERS}
        self._notify()

    def add(self, piece: bytes) -> None:
        if piece:
            self.pieces.append(piece)
            self._notify()

    def end(self) -> None:
        self.ended = True
        self._notify()

    def fail(self, status: int, body: bytes) -> None:
        """The leader got no answer to pass on (or went away before one): its followers get this."""
        if self.ended:
            return
        if not self.status:
            self.answer_started(status, {"content-type": "application/json"})
            self.pieces.append(body)
        self.end()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def started(self) -> None:
        while not self.status and not self.ended:
            await self._changed.wait()

    async def follow(self) -> AsyncIterator[bytes]:
        """Every piece, those already there first, until the leader's answer ends."""
        sent = 0
        while True:
            while sent < len(self.pieces):
                sent += 1
                yield self.pieces[sent - 1]
            if self.ended:
                return
            await self._changed.wait()


class Coalescer:
    """The flights in progress (by key) and those recently ended (by id). One event loop's."""

    def __init__(self) -> None:
        self.in_flight: dict[str, Flight] = {}
        self.by_id: dict[str, Flight] = {}

    def join(self, key: str) -> tuple[Flight, bool]:
        """The flight of ``key`` and whether the caller leads it (none was in flight)."""
        flight = self.in_flight.get(key)
        if flight is not None and not flight.ended:
            return flight, False
        flight = Flight(uuid.uuid4().hex)
        self.in_flight[key] = self.by_id[flight.id] = flight
        return flight, True

    def landed(self, key: str, flight: Flight) -> None:
        """The leader's answer has ended: new requests of its key lead again; its id lingers."""
        if self.in_flight.get(key) is flight:
            del self.in_flight[key]
        asyncio.get_running_loop().call_later(FINISHED_FLIGHT_SECONDS, self.by_id.pop, flight.id, None)

    def flight(self, flight_id: str) -> Flight | None:
        return self.by_id.get(flight_id)


class IdRewriter:
    """The leader's answer with a follower's own id: a JSON answer whole, a stream event by event."""

    def __init__(self, stream: bool) -> None:
        self.stream = stream
        self.buffer = b""
        self.new_id: str | None = None

    def feed(self, piece: bytes) -> bytes:
        self.buffer += piece
        if not self.stream:
            return b""
        events, _, self.buffer = self.buffer.rpartition(b"\n\n")
        return b"".join(self._event(e) + b"\n\n" for e in events.split(b"\n\n")) if events else b""

    def end(self) -> bytes:
        rest, self.buffer = self.buffer, b""
        if self.stream:
            return rest
        return self._json(rest)

    def _event(self, event: bytes) -> bytes:
        lines = event.split(b"\n")
        return b"\n".join(b"data: " + self._json(line[5:].strip()) if line.startswith(b"data:") and
                          line[5:].strip() != b"[DONE]" else line for line in lines)

    def _json(self, data: bytes) -> bytes:
        try:
            body = json.loads(data)
        except ValueError:
            return data  # not JSON (an error page): as it is
        if not isinstance(body, dict) or not isinstance(body.get("id"), str):
            return data
        if self.new_id is None:
            prefix = body["id"].rsplit("-", 1)[0] if "-" in body["id"] else "chatcmpl"
            self.new_id = f"{prefix}-{uuid.uuid4().hex[:24]}"
        body["id"] = self.new_id
        return json.dumps(body).encode()


def follower_handler(coalescer: Coalescer) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """This worker's HTTP side for a coalesced request (whatever its path): the leader's answer."""

    async def answer(request: web.Request) -> web.StreamResponse:
        flight = coalescer.flight(request.headers.get(wire.COALESCE_HEADER, ""))
        if flight is None:
            return web.Response(status=502, body=LOST_LEADER, content_type="application/json")
        await flight.started()
        headers = {**flight.headers, wire.COALESCED_HEADER: "true"}
        stream = flight.headers.get("content-type", "").startswith("text/event-stream")
        response = web.StreamResponse(status=flight.status, headers=headers)
        await response.prepare(request)
        rewriter = IdRewriter(stream)
        async for piece in flight.follow():
            out = rewriter.feed(piece)
            if out:
                await response.write(out)
        await response.write(rewriter.end())
        await response.write_eof()
        return response

    return answer
