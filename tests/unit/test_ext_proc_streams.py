"""ext_proc ends its gRPC streams itself once it has answered the last message it needs.

Envoy then sends nothing more on them (ext_proc's onGrpcClose), instead of
resetting them when the HTTP stream goes; grpc.aio keeps memory for every call
its client cancels, so a gateway whose streams were all reset grew with traffic.
"""

from __future__ import annotations

import asyncio
import json
import time

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from google.protobuf import struct_pb2

from ext_proc.runtime import RuntimeView
from ext_proc.service import Processor
from hapax.v1 import runtime_pb2
from hapax.wire import EXT_PROC_ATTRIBUTES
from hapax.wire import HOST_METADATA_ATTRIBUTE as HOST_METADATA
from hapax.wire import ROUTE_METADATA_ATTRIBUTE as ROUTE_METADATA


def headers(**fields: str) -> pb.HttpHeaders:
    return pb.HttpHeaders(headers=base_pb2.HeaderMap(headers=[
        base_pb2.HeaderValue(key=k.replace("_", "-").replace("colon-", ":"), raw_value=v.encode())
        for k, v in fields.items()]))


def view() -> RuntimeView:
    rt = runtime_pb2.Runtime(config_version="v1")
    rt.providers.add(name="p", type="openai", model="m", base_url="http://127.0.0.1:9/v1", cluster="provider.p")
    rt.routes.add(path="/v1/chat/completions", handler="chat")
    rt.routes.add(path="/v1/models", handler="models")
    rt.chains.add(cluster="chain.p", providers=["p"], attempts=2)
    rt.models.add(name="m", provider="p", chain="chain.p")
    return RuntimeView.from_proto(rt, frozenset({"openai"}))


@pytest.fixture()
async def stub():
    server = grpc.aio.server()
    current = view()
    pb_grpc.add_ExternalProcessorServicer_to_server(Processor(lambda: current, view_for=lambda _: current), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield pb_grpc.ExternalProcessorStub(channel)
    await server.stop(0)


async def exchange(stub, phase: str, messages: list[pb.ProcessingRequest]) -> grpc.StatusCode:
    """Sends the messages one by one as Envoy does, never half-closing; the server must end the call."""
    outbox: asyncio.Queue = asyncio.Queue()

    async def requests():
        while True:
            yield await outbox.get()

    call = stub.Process(requests(), metadata=(("x-hapax-phase", phase),))
    for message in messages:
        await outbox.put(message)
        assert await call.read() is not grpc.aio.EOF
    assert await asyncio.wait_for(call.read(), 5) is grpc.aio.EOF  # ended by the server
    return await call.code()


CHAT = json.dumps({"model": "auto", "messages": [{"role": "user", "content": "hi"}]}).encode()


async def test_the_router_step_ends_its_stream_after_the_response_headers(stub):
    code = await exchange(stub, "router", [
        pb.ProcessingRequest(request_headers=headers(colon_path="/v1/chat/completions")),
        pb.ProcessingRequest(request_body=pb.HttpBody(body=CHAT, end_of_stream=True)),
        pb.ProcessingRequest(response_headers=headers(colon_status="200", content_type="application/json")),
    ])
    assert code == grpc.StatusCode.OK


async def test_the_router_step_ends_its_stream_after_an_immediate_answer(stub):
    code = await exchange(stub, "router", [pb.ProcessingRequest(request_headers=headers(colon_path="/v1/models"))])
    assert code == grpc.StatusCode.OK


async def test_the_upstream_step_ends_its_stream_after_the_last_body_piece(stub):
    first = pb.ProcessingRequest(request_headers=headers(colon_path="/v1/chat/completions",
                                                         x_hapax_start=str(time.time())))
    first.attributes[EXT_PROC_ATTRIBUTES].CopyFrom(struct_pb2.Struct(fields={
        HOST_METADATA: struct_pb2.Value(string_value='filter_metadata { key: "hapax" value { fields { key: '
                                                     '"provider" value { string_value: "p" } } } }'),
        ROUTE_METADATA: struct_pb2.Value(string_value='filter_metadata { key: "hapax" value { fields { key: '
                                                      '"handler" value { string_value: "chat" } } } }')}))
    answer = json.dumps({"id": "c", "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}).encode()
    code = await exchange(stub, "upstream", [
        first,
        pb.ProcessingRequest(request_body=pb.HttpBody(body=CHAT, end_of_stream=True)),
        pb.ProcessingRequest(response_headers=headers(colon_status="200", content_type="application/json")),
        pb.ProcessingRequest(response_body=pb.HttpBody(body=answer, end_of_stream=True)),
    ])
    assert code == grpc.StatusCode.OK
