"""HTTPS and HTTP/3 at the edge: aioquic and h2 as clients, trustme certificates, real Envoy."""

from __future__ import annotations

import json
import os
import socket
import ssl
import urllib.request

import h2.connection
import h2.events
import pytest
import trustme

from hapax.fakes import FakeOpenAI
from tests.conftest import free_port, gateway_config, wait_for
from tests.h3 import h3_client

ANSWER = "Hello from fake-openai! You said: one two three four five six seven eight"
CHAT = {"model": "auto", "messages": [{"role": "user", "content": "one two three four five six seven eight"}]}



@pytest.fixture(scope="module")
def edge(fake_host, start_gateway, tmp_path_factory):
    folder = tmp_path_factory.mktemp("edge-certs")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.private_key_pem.write_to_path(folder / "gateway.key")
    cert.cert_chain_pems[0].write_to_path(folder / "gateway.pem")
    ca.cert_pem.write_to_path(folder / "ca.pem")
    fake = fake_host.start(FakeOpenAI(api_key="k", model="gpt-4o-mini"))
    udp_port = free_port(socket.SOCK_DGRAM)
    config = gateway_config({"openai": {"type": "openai", "model": "gpt-4o-mini", "api_key": "k",
                                        "base_url": fake.base_url}})
    config["server"]["tls"] = {"cert_file": str(folder / "gateway.pem"), "key_file": str(folder / "gateway.key")}
    config["server"]["http3"] = {"enabled": True, "port": udp_port}
    gateway = start_gateway(config)
    gateway.ca, gateway.cert_folder = ca, folder
    yield gateway, udp_port, str(folder / "ca.pem"), fake
    fake_host.run(fake.stop())


def sse_data(chunks: list[bytes]) -> list[str]:
    text = b"".join(chunks).decode()
    return [block.removeprefix("data: ") for block in text.split("\n\n") if block]


def streamed_text(events: list[str]) -> str:
    return "".join(choice["delta"].get("content") or "" for data in events if data != "[DONE]"
                   for choice in json.loads(data)["choices"])


async def test_a_chat_completion_over_http3(edge):
    gateway, udp_port, ca, _ = edge
    async with h3_client(udp_port, ca) as client:
        response = await client.request("POST", "/v1/chat/completions", json.dumps(CHAT).encode(),
                                        {"content-type": "application/json"})
    assert response.status == 200
    assert response.json()["choices"][0]["message"]["content"] == ANSWER


async def test_a_passthrough_lane_request_over_http3(edge):
    # The provider's own model, no stream: Envoy alone serves it, over QUIC as over TCP.
    _, udp_port, ca, fake = edge
    async with h3_client(udp_port, ca) as client:
        response = await client.request("POST", "/v1/chat/completions",
                                        json.dumps({**CHAT, "model": "gpt-4o-mini"}).encode(),
                                        {"content-type": "application/json", "authorization": "Bearer client"})
    assert response.status == 200
    assert response.json()["choices"][0]["message"]["content"] == ANSWER
    assert fake.requests[-1].headers["authorization"] == "Bearer k"
    assert fake.requests[-1].body["model"] == "gpt-4o-mini"


async def test_a_stream_over_http3_arrives_chunk_by_chunk(edge):
    _, udp_port, ca, _ = edge
    async with h3_client(udp_port, ca) as client:
        response = await client.request("POST", "/v1/chat/completions", json.dumps({**CHAT, "stream": True}).encode(),
                                        {"content-type": "application/json"})
    assert response.status == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = sse_data(response.chunks)
    assert events[-1] == "[DONE]" and streamed_text(events) == ANSWER
    assert len(response.chunks) > 1  # forwarded as they came, not as one buffered body


async def test_a_stream_survives_the_client_moving_to_a_new_udp_port(edge):
    _, udp_port, ca, fake = edge
    fake.chunk_delay = 0.1  # the move happens while the provider is still answering
    try:
        chunks: list[bytes] = []
        async with h3_client(udp_port, ca) as client:
            first_port = client.local_port
            body = json.dumps({**CHAT, "stream": True}).encode()
            moved_to = None
            async for event in client.send("POST", "/v1/chat/completions", body, {"content-type": "application/json"}):
                data = getattr(event, "data", b"")
                if data:
                    chunks.append(data)
                if data and moved_to is None:
                    moved_to = await client.move_to_a_new_local_port()
        assert moved_to is not None and moved_to != first_port
        events = sse_data(chunks)
        # Every chunk once and in order: the text is whole and [DONE] comes once, last.
        assert streamed_text(events) == ANSWER
        assert events.count("[DONE]") == 1 and events[-1] == "[DONE]"
    finally:
        fake.chunk_delay = 0.0


async def test_no_0rtt_is_offered_so_no_request_can_be_replayed(edge):
    _, udp_port, ca, _ = edge
    tickets: list = []
    async with h3_client(udp_port, ca, tickets=tickets) as client:
        assert (await client.request("GET", "/v1/models")).status == 200
    assert tickets, "Envoy issues session tickets"
    assert all(not ticket.max_early_data_size for ticket in tickets)  # none allows early data
    async with h3_client(udp_port, ca, session_ticket=tickets[-1]) as client:  # a returning client still works
        assert (await client.request("GET", "/v1/models")).status == 200


def test_https_on_tcp_speaks_http2_by_alpn_and_advertises_http3(edge):
    gateway, udp_port, ca, _ = edge
    context = ssl.create_default_context(cafile=ca)
    context.set_alpn_protocols(["h2", "http/1.1"])
    port = int(gateway.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        assert tls.selected_alpn_protocol() == "h2"
        status, headers, body = _h2_post(tls, "/v1/chat/completions", json.dumps(CHAT).encode())
    assert status == 200 and json.loads(body)["choices"][0]["message"]["content"] == ANSWER
    assert headers["alt-svc"] == f'h3=":{udp_port}"; ma=86400'


def test_a_stream_over_http2_arrives_as_over_http3(edge):
    gateway, _, ca, _ = edge
    context = ssl.create_default_context(cafile=ca)
    context.set_alpn_protocols(["h2"])
    port = int(gateway.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        status, headers, body = _h2_post(tls, "/v1/chat/completions", json.dumps({**CHAT, "stream": True}).encode())
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = sse_data([body])
    assert events[-1] == "[DONE]" and streamed_text(events) == ANSWER


def test_https_http11_clients_are_answered_too(edge):
    gateway, udp_port, ca, _ = edge
    assert gateway.url.startswith("https://")
    request = urllib.request.Request(gateway.url + "/v1/chat/completions", data=json.dumps(CHAT).encode(),
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10, context=ssl.create_default_context(cafile=ca)) as resp:
        assert json.load(resp)["choices"][0]["message"]["content"] == ANSWER
        assert resp.headers["alt-svc"] == f'h3=":{udp_port}"; ma=86400'


def _h2_post(sock: ssl.SSLSocket, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
    conn = h2.connection.H2Connection()
    conn.initiate_connection()
    stream_id = conn.get_next_available_stream_id()
    conn.send_headers(stream_id, [(":method", "POST"), (":scheme", "https"), (":authority", "localhost"),
                                  (":path", path), ("content-type", "application/json")])
    conn.send_data(stream_id, body, end_stream=True)
    sock.sendall(conn.data_to_send())
    headers: dict[str, str] = {}
    data = bytearray()
    while True:
        received = sock.recv(65536)
        if not received:
            raise AssertionError("the connection closed before the response ended")
        for event in conn.receive_data(received):
            if isinstance(event, h2.events.ResponseReceived):
                headers = {k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v
                           for k, v in event.headers}
            elif isinstance(event, h2.events.DataReceived):
                data += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                return int(headers[":status"]), headers, bytes(data)
        sock.sendall(conn.data_to_send())


def served_certificate(gateway, ca_file: str) -> bytes:
    port = int(gateway.url.rsplit(":", 1)[1])
    context = ssl.create_default_context(cafile=ca_file)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        return tls.getpeercert(binary_form=True)


def reloads(gateway, result: str) -> float:
    return gateway.metric("hapax_config_reloads_total", result=result)


async def test_a_renewed_certificate_is_served_without_a_restart_and_a_broken_one_is_refused(edge):
    gateway, udp_port, ca_file, _ = edge
    folder = gateway.cert_folder
    before = served_certificate(gateway, ca_file)
    renewed = gateway.ca.issue_cert("localhost", "127.0.0.1")
    renewed.private_key_pem.write_to_path(folder / "gateway.key.new")
    renewed.cert_chain_pems[0].write_to_path(folder / "gateway.pem.new")
    os.replace(folder / "gateway.key.new", folder / "gateway.key")
    os.replace(folder / "gateway.pem.new", folder / "gateway.pem")
    expected = ssl.PEM_cert_to_DER_cert(renewed.cert_chain_pems[0].bytes().decode())
    wait_for(lambda: served_certificate(gateway, ca_file) == expected, "the renewed certificate on HTTPS")
    assert expected != before
    async with h3_client(udp_port, ca_file) as client:  # HTTP/3 shares it and keeps working
        assert (await client.request("GET", "/v1/models")).status == 200

    invalid = reloads(gateway, "invalid")
    stranger = trustme.CA().issue_cert("localhost")
    stranger.private_key_pem.write_to_path(folder / "gateway.key")  # a key that does not match
    wait_for(lambda: reloads(gateway, "invalid") > invalid, "the mismatched key to be refused")
    assert served_certificate(gateway, ca_file) == expected  # the last good certificate keeps serving
    renewed.private_key_pem.write_to_path(folder / "gateway.key")
    wait_for(lambda: "last_error" not in health(gateway), "the repaired pair to be accepted")


def health(gateway) -> dict:
    with urllib.request.urlopen(gateway.url + "/health", timeout=10,
                                context=ssl.create_default_context(cafile=str(gateway.cert_folder / "ca.pem"))) as resp:
        return json.load(resp)["components"]["control_plane"]
