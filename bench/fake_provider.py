"""The fast fake provider: an Envoy listener that answers from memory (``direct_response``).

Envoy's direct_response is the cheapest HTTP server available here (C++, no
upstream, the answer pre-encoded in the config), so the provider is never what
limits a measurement. It answers, on loopback only:

- ``POST /json/...``: an OpenAI ``chat.completion`` with usage;
- ``POST /sse/...``: an OpenAI SSE stream of ``STREAM_CHUNKS`` chunks, the usage
  chunk and ``data: [DONE]``, sent as ONE body (direct_response cannot pace
  it): streams through this fake measure throughput, not chunk timing (that is
  bench/paced_fake.py's job);
- ``POST /json/.../responses``: an OpenAI ``response`` (what ``/v1/responses`` answers a
  non-streaming request), for the Responses API's lane;
- ``POST /anthropic/...``: an Anthropic ``message`` (what ``/v1/messages`` answers
  a non-streaming request), for Hapax's and Portkey's Anthropic translation;
- ``GET .../models``: 200, which is what Hapax's provider health probe asks.
"""

from __future__ import annotations

from typing import Any

from bench.envoy_static import http_connection_manager, listener, static_bootstrap
from bench.payloads import anthropic_message, chat_completion, models_list, openai_response, sse_events

JSON_PREFIX = "/json/"
SSE_PREFIX = "/sse/"
ANTHROPIC_PREFIX = "/anthropic/"
# The request-body limit of the buffer filter; above the largest prompt.
MAX_REQUEST_BYTES = 16 * 1024 * 1024


def _direct(status: int, body: bytes, content_type: str) -> dict[str, Any]:
    return {
        "direct_response": {"status": status, "body": {"inline_string": body.decode()}},
        "response_headers_to_add": [{"header": {"key": "content-type", "value": content_type},
                                     "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}],
    }


def _get(regex: str) -> dict[str, Any]:
    return {"safe_regex": {"regex": regex},
            "headers": [{"name": ":method", "string_match": {"exact": "GET"}}]}


def routes() -> list[dict[str, Any]]:
    sse = b"".join(sse_events())
    return [
        {"match": _get(r".*/models"), **_direct(200, models_list(), "application/json")},
        {"match": {"safe_regex": {"regex": f"^{JSON_PREFIX}.*/responses$"}},
         **_direct(200, openai_response(), "application/json")},
        {"match": {"prefix": JSON_PREFIX}, **_direct(200, chat_completion(), "application/json")},
        {"match": {"prefix": SSE_PREFIX}, **_direct(200, sse, "text/event-stream")},
        {"match": {"prefix": ANTHROPIC_PREFIX}, **_direct(200, anthropic_message(), "application/json")},
        {"match": {"prefix": "/"}, **_direct(404, b'{"error":{"message":"not a bench path"}}',
                                             "application/json")},
    ]


def fake_provider_config() -> dict[str, Any]:
    # The buffer filter makes the fake read the whole request before it answers,
    # as a real provider does. Without it direct_response answers as soon as the
    # headers arrive, and on HTTP/1.1 Envoy then closes a connection whose
    # request body (200 KB) is still coming in.
    buffer = {"name": "envoy.filters.http.buffer", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
        "max_request_bytes": MAX_REQUEST_BYTES}}
    route_config = {
        "name": "fake",
        # The SSE answer is larger than direct_response's default limit (4 KB).
        "max_direct_response_body_size_bytes": 1024 * 1024,
        "virtual_hosts": [{"name": "fake", "domains": ["*"], "routes": routes()}],
    }
    hcm = http_connection_manager("fake", route_config, [buffer])
    return static_bootstrap([listener("fake_provider", hcm, MAX_REQUEST_BYTES)])
