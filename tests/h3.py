"""A small HTTP/3 client on aioquic for the tests: requests, streams, a path change."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import QuicEvent
from aioquic.tls import SessionTicket


@dataclass
class Response:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    chunks: list[bytes] = field(default_factory=list)  # DATA as it arrived

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    def json(self):
        return json.loads(self.body)


class H3Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.http = H3Connection(self._quic)
        self._events: dict[int, asyncio.Queue[H3Event]] = {}

    def quic_event_received(self, event: QuicEvent) -> None:
        for http_event in self.http.handle_event(event):
            queue = self._events.get(getattr(http_event, "stream_id", -1))
            if queue is not None:
                queue.put_nowait(http_event)

    async def send(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
                   ) -> AsyncIterator[H3Event]:
        stream_id = self._quic.get_next_available_stream_id()
        self._events[stream_id] = queue = asyncio.Queue()
        host = self._quic.configuration.server_name or "localhost"
        fields = [(b":method", method.encode()), (b":scheme", b"https"), (b":authority", host.encode()),
                  (b":path", path.encode()), (b"user-agent", b"hapax-tests-aioquic")]
        fields += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
        self.http.send_headers(stream_id, fields, end_stream=not body)
        if body:
            self.http.send_data(stream_id, body, end_stream=True)
        self.transmit()
        while True:
            event = await asyncio.wait_for(queue.get(), 30)
            yield event
            if event.stream_ended:
                return

    async def request(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
                      ) -> Response:
        response = Response()
        async for event in self.send(method, path, body, headers):
            if isinstance(event, HeadersReceived) and not response.status:
                response.headers = {k.decode(): v.decode() for k, v in event.headers}
                response.status = int(response.headers[":status"])
            elif isinstance(event, DataReceived) and event.data:
                response.chunks.append(event.data)
        return response

    async def move_to_a_new_local_port(self) -> int:
        """As a phone changing networks: send from a new UDP socket, with a new connection ID."""
        old = self._transport
        # The same kind of socket aioquic's connect() made: IPv6 with IPv4-mapped addresses.
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::ffff:127.0.0.1", 0, 0, 0))
        transport, _ = await self._loop.create_datagram_endpoint(lambda: self, sock=sock)
        self._transport = transport
        self._quic.change_connection_id()
        self.transmit()
        if old is not None:
            old.close()
        return transport.get_extra_info("sockname")[1]

    @property
    def local_port(self) -> int:
        assert self._transport is not None
        return self._transport.get_extra_info("sockname")[1]


@asynccontextmanager
async def h3_client(port: int, cafile: str, session_ticket: SessionTicket | None = None,
                    tickets: list[SessionTicket] | None = None):
    configuration = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name="localhost",
                                      verify_mode=ssl.CERT_REQUIRED)
    configuration.load_verify_locations(cafile)
    configuration.session_ticket = session_ticket
    async with connect("127.0.0.1", port, configuration=configuration, create_protocol=H3Client,
                       session_ticket_handler=(tickets.append if tickets is not None else None)) as client:
        yield client
