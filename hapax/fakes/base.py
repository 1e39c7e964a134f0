"""Server machinery shared by the fake providers.

A ``FakeProvider`` owns one aiohttp server on a real socket. Every request goes
through one middleware that records it, takes the next injected fault, acts the
fault out, checks credentials and only then calls the provider's handler.
Subclasses describe their wire format (routes, error JSON, stream framing); this
module decides *when* things happen on the socket, and compresses every answer the
request's ``Accept-Encoding`` allows, as real providers do (``compression.py``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, Self

from aiohttp import web

from .compression import Encoder, compress, negotiate
from .faults import CutStream, Fault, FaultQueue, Hang, Latency, Reset, Status, StreamError

__all__ = [
    "CutStream",
    "Fault",
    "FakeProvider",
    "Hang",
    "Latency",
    "RecordedRequest",
    "RequestError",
    "Reset",
    "Status",
    "StreamError",
    "ndjson_line",
    "recorded",
    "sse_event",
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _request_key(name: str, kind: type) -> Any:
    # web.RequestKey (aiohttp >= 3.13) avoids NotAppKeyWarning; older aiohttp takes strings.
    factory = getattr(web, "RequestKey", None)
    return factory(name, kind) if factory is not None else name


_RECORD = _request_key("hapax.fakes.record", object)
_FAULT = _request_key("hapax.fakes.fault", object)
STREAM_ERROR_MESSAGE = "Injected fault: upstream error"
# Bounds how long stop() waits for a handler still streaming; Hang is released
# explicitly, so this only matters for slow streams.
_SHUTDOWN_TIMEOUT = 2.0


@dataclass
class RecordedRequest:
    method: str
    path: str  # without the query string
    headers: dict[str, str]  # every header received, keys lower-cased (repeats joined with ", ")
    body: Any  # parsed JSON, or None when absent or malformed
    raw: bytes
    target: str = ""  # the request target as sent: the path and its query string, undecoded


class RequestError(Exception):
    """An error to answer in the provider's own format; handlers raise it.

    The middleware also builds one for every error it answers itself (injected
    faults, bad credentials, unknown paths), so each fake renders errors in one place.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str | None = None,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.param = param
        self.code = code


def recorded(request: web.Request) -> RecordedRequest:
    """What the middleware recorded for this request (the body is already read)."""
    record: RecordedRequest = request[_RECORD]
    return record


def sse_event(data: Any, event: str | None = None) -> bytes:
    prefix = f"event: {event}\n" if event else ""
    return f"{prefix}data: {json.dumps(data)}\n\n".encode()


def ndjson_line(data: Any) -> bytes:
    return (json.dumps(data) + "\n").encode()


class FakeProvider(ABC):
    """One fake upstream on a real socket; see the package docstring for the tour."""

    label: ClassVar[str] = "fake"
    default_model: ClassVar[str] = "fake-model"
    api_path: ClassVar[str] = ""  # appended to origin to make base_url
    stream_content_type: ClassVar[str] = "text/event-stream"
    # Status used when a StreamError fault hits a non-streaming request.
    error_statuses: ClassVar[dict[str, int]] = {
        "invalid_request_error": 400,
        "authentication_error": 401,
        "permission_error": 403,
        "not_found_error": 404,
        "rate_limit_error": 429,
        "api_error": 500,
        "overloaded_error": 503,
    }

    def __init__(
        self,
        *,
        api_key: str | None = "test-key",
        model: str | None = None,
        chunk_delay: float = 0.0,
    ) -> None:
        self.api_key = api_key
        self.model = model or self.default_model
        self.chunk_delay = chunk_delay
        self.requests: list[RecordedRequest] = []
        self._faults = FaultQueue()
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._host = "127.0.0.1"
        self._port: int | None = None
        self._stopping = asyncio.Event()

    # -- the wire format, supplied by each provider --------------------------

    @abstractmethod
    def routes(self) -> list[web.RouteDef]: ...

    @abstractmethod
    def error_response(self, error: RequestError) -> web.Response:
        """``error`` as the provider's error JSON, with its status."""

    @abstractmethod
    def check_credentials(self, request: web.Request) -> None:
        """Raises RequestError when the request's credentials are wrong."""

    @abstractmethod
    def stream_error_event(self, error_type: str, message: str) -> bytes: ...

    def unknown_path_response(self, request: web.Request, exc: web.HTTPException) -> web.Response:
        """An unknown path or a wrong method, as the provider answers it: by default its error JSON."""
        return self.error_response(RequestError(exc.status, exc.reason))

    # -- lifecycle ------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        if self._runner is not None:
            raise RuntimeError(f"{self.label} is already running")
        # Real providers take prompts of several MB; aiohttp would stop at 1 MB.
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024 * 1024)
        app.add_routes(self.routes())
        # handler_cancellation: a client that goes away cancels its handler,
        # which is what releases a Hang without waiting for stop().
        runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT
        )
        await runner.setup()
        self._runner, self._host = runner, host
        self._stopping = asyncio.Event()
        await self._listen(port)

    async def stop(self) -> None:
        if self._runner is None:
            return
        self._stopping.set()  # wakes hung handlers so shutdown need not wait them out
        await self._runner.cleanup()
        self._runner = self._site = None

    async def refuse_connections(self) -> None:
        """Stop listening (new connects get ECONNREFUSED) and drop open connections.

        Open keep-alive connections are dropped too: a crashed upstream takes them
        with it, and a client reusing one would otherwise never see the outage.
        """
        if self._site is not None:
            await self._site.stop()
            self._site = None
        server = self._require_runner().server
        for connection in server.connections if server is not None else []:
            if connection.transport is not None:
                connection.transport.abort()

    async def accept_connections(self) -> None:
        """Listen again on the same port as before."""
        if self._site is None:
            await self._listen(self.port)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"{self.label} has not been started")
        return self._port

    @property
    def origin(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        return self.origin + self.api_path

    # -- faults and recordings ----------------------------------------------

    def inject(self, fault: Fault, *, times: int | None = 1, method: str | None = None) -> None:
        """Apply ``fault`` to the next ``times`` requests (None: until cleared).

        With ``method`` ("POST": the API calls), only requests with that method
        get it: a gateway's health probes (GET) then neither see nor use it up.
        Faults queue up in order: a second inject starts after the first runs out.
        """
        self._faults.push(fault, times, method)

    def clear_faults(self) -> None:
        self._faults.clear()

    def reset(self) -> None:
        self.requests.clear()
        self.clear_faults()

    def next_id(self, prefix: str) -> str:
        # Sequential ids keep runs reproducible while staying unique per fake.
        return f"{prefix}{next(self._ids):06d}"

    # -- responses handlers build with ---------------------------------------

    async def send_json(self, request: web.Request, payload: Any) -> web.StreamResponse:
        return await self.send_response(request, web.json_response(payload))

    async def send_response(
        self, request: web.Request, response: web.Response
    ) -> web.StreamResponse:
        """A non-streaming success; stream faults fall back to their non-stream form."""
        fault = request.get(_FAULT)
        if isinstance(fault, CutStream):
            return _abort(request)
        if isinstance(fault, StreamError):
            status = self.error_statuses.get(fault.error_type, 500)
            error = RequestError(status, STREAM_ERROR_MESSAGE, error_type=fault.error_type)
            return self.error_response(error)
        return response

    async def send_stream(
        self, request: web.Request, events: Iterable[bytes]
    ) -> web.StreamResponse:
        """Write each event as soon as it is produced, honouring stream faults."""
        fault = request.get(_FAULT)
        stop_at = fault.after_chunks if isinstance(fault, (CutStream, StreamError)) else None
        coding = negotiate(request.headers.get("Accept-Encoding", ""))
        headers = {"Content-Type": self.stream_content_type, "Cache-Control": "no-cache"}
        response = web.StreamResponse(headers={**headers, **_encoding_headers(coding)})
        await response.prepare(request)
        body = _StreamBody(response, coding)
        for index, event in enumerate(events):
            if index == stop_at:
                return await self._break_stream(request, body, fault)
            if index and self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
            await body.write(event)
        return await body.end()

    async def _break_stream(
        self, request: web.Request, body: _StreamBody, fault: Fault | None
    ) -> web.StreamResponse:
        if isinstance(fault, StreamError):
            # The HTTP body ends cleanly: the client must notice the error event itself.
            await body.write(self.stream_error_event(fault.error_type, STREAM_ERROR_MESSAGE))
            return await body.end()
        if isinstance(fault, CutStream) and not fault.reset:
            return await body.end()
        _abort(request)
        return body.response

    # -- the per-request pipeline ---------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        request[_RECORD] = await self._record(request)
        fault = self._faults.take(request.method)
        request[_FAULT] = fault
        early = await self._act_before_handling(request, fault)
        response = early if early is not None else await self._serve(request, handler)
        return _compressed(request, response)

    async def _record(self, request: web.Request) -> RecordedRequest:
        raw = await request.read()
        headers: dict[str, str] = {}
        for name, value in request.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        record = RecordedRequest(request.method, request.path, headers, _parse_json(raw), raw,
                                 target=request.raw_path)
        self.requests.append(record)
        return record

    async def _act_before_handling(
        self, request: web.Request, fault: Fault | None
    ) -> web.StreamResponse | None:
        match fault:
            case Latency(seconds=seconds):
                await asyncio.sleep(seconds)
            case Status():
                return self._status_response(fault)
            case Reset():
                return _abort(request)
            case Hang():
                await self._stopping.wait()
                return _abort(request)
        return None

    async def _serve(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            self.check_credentials(request)
            return await handler(request)
        except RequestError as exc:
            return self.error_response(exc)
        except web.HTTPException as exc:
            return self.unknown_path_response(request, exc)

    def _status_response(self, fault: Status) -> web.Response:
        if fault.body is None:
            error = RequestError(fault.code, f"Injected fault: HTTP {fault.code}")
            response = self.error_response(error)
        else:
            response = web.json_response(fault.body, status=fault.code)
        if fault.retry_after is not None:
            response.headers["retry-after"] = _format_seconds(fault.retry_after)
        return response

    async def _listen(self, port: int) -> None:
        runner = self._require_runner()
        # reuse_address lets accept_connections() re-bind the port while sockets
        # from the previous listener linger in TIME_WAIT.
        site = web.TCPSite(runner, self._host, port, reuse_address=True)
        await site.start()
        self._site = site
        self._port = runner.addresses[0][1]

    def _require_runner(self) -> web.AppRunner:
        if self._runner is None:
            raise RuntimeError(f"{self.label} has not been started")
        return self._runner


class _StreamBody:
    """A streamed body, compressed piece by piece when the request allows it."""

    def __init__(self, response: web.StreamResponse, coding: str | None) -> None:
        self.response = response
        self._encoder = Encoder(coding) if coding else None

    async def write(self, data: bytes) -> None:
        await self.response.write(self._encoder.chunk(data) if self._encoder else data)

    async def end(self) -> web.StreamResponse:
        if self._encoder is not None:
            await self.response.write(self._encoder.end())
        await self.response.write_eof()
        return self.response


def _encoding_headers(coding: str | None) -> dict[str, str]:
    return {"Content-Encoding": coding, "Vary": "Accept-Encoding"} if coding else {}


def _compressed(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """A whole answer (success or error) in the coding the request allows.

    A stream is already on the wire, compressed by ``_StreamBody``; an aborted
    connection has nothing to compress.
    """
    coding = negotiate(request.headers.get("Accept-Encoding", ""))
    if coding is None or not isinstance(response, web.Response) or response.prepared:
        return response
    if not isinstance(response.body, bytes) or not response.body:
        return response
    response.body = compress(response.body, coding)
    response.headers.popall("Content-Length", None)  # recomputed from the new body
    response.headers.update(_encoding_headers(coding))
    return response


def _abort(request: web.Request) -> web.Response:
    """Drop the connection without a byte of response, as a crashed upstream would."""
    if request.transport is not None:
        request.transport.abort()
    # aiohttp wants a return value; nothing of it reaches the client.
    return web.Response()


def _parse_json(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _format_seconds(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else str(seconds)
