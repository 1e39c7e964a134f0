"""The bytes on the wire: client requests of fixed prompt sizes, and the fake provider's answers.

Everything is encoded once, up front, so neither the load generators nor the
fake providers spend time on JSON during a run.
"""

from __future__ import annotations

import json

# Prompt sizes the issue asks for: the size of the message content, in bytes.
PROMPT_SIZES = {"300B": 300, "10KB": 10 * 1024, "200KB": 200 * 1024}
STREAM_CHUNKS = 20  # content chunks in a fake SSE answer (plus the usage chunk and [DONE])
# Model names in the requests: Hapax picks the provider (and so the kind of
# answer) by model; the fake and bare Envoy ignore the field.
MODELS = {"json": "bench-json", "sse": "bench-sse", "paced": "bench-paced",
          # The JSON answer again, asked for by an alias of its model: Hapax rewrites
          # the body, so the request takes ext_proc's upstream step (the model lane).
          "alias": "bench-alias",
          # The router step: no model named, the first provider of the preference that can serve.
          "auto": "auto", "seed": "auto",
          "anthropic": "bench-anthropic",
          # The JSON answer again, through a Hapax whose config has client keys (and limits):
          # the passthrough lane, with Envoy's key check (and the admission check) on the way.
          "keys": "bench-json", "limits": "bench-json",
          # The JSON answer again, through a Hapax whose config splits this name between two
          # variants (both the JSON provider): Envoy's weighted clusters, then the upstream step.
          "experiment": "bench-experiment",
          # Anthropic's Messages API in, to the Anthropic provider's own model: its lane, the body
          # as it came (control_plane/resources/passthrough.py), beside the OpenAI lane's "json".
          "messages": "bench-anthropic",
          # OpenAI's Responses API in, to the JSON provider's own model: the OpenAI lane to its
          # /responses, the body as it came, beside the chat lane's "json".
          "responses": "bench-json"}
STREAMING = frozenset({"sse", "paced"})  # the kinds whose requests ask for a stream
CREATED = 1_700_000_000  # a fixed timestamp: answers are byte-identical from run to run
# Where the paced fake writes each chunk's send time (time.monotonic(), the
# clock every process on the machine shares) into the chunk's id, fixed width.
STAMP = b"@" * 17
STAMP_FORMAT = "{:017.6f}"


def _compact(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def prompt(size: int) -> str:
    # Words rather than one repeated letter: closer to real text for any
    # parser or compressor on the way, and still exactly `size` bytes.
    words = "the quick brown fox jumps over the lazy dog "
    return (words * (size // len(words) + 1))[:size]


def chat_request(size: int, *, model: str, stream: bool) -> bytes:
    """An OpenAI chat request whose single user message has `size` bytes of content."""
    body: dict[str, object] = {"model": model, "messages": [{"role": "user", "content": prompt(size)}]}
    if stream:
        # With the usage chunk asked for, every target passes the same events
        # (Hapax drops the usage chunk for a client that did not ask for it).
        body.update(stream=True, stream_options={"include_usage": True})
    return _compact(body)


# What the official OpenAI Python SDK (openai 3.63.0, the one in this repository's
# virtualenv) sends, captured from a real call against a local socket
# (docs/benchmarks.md says how): these headers, and a compact body with the keys
# in this order, "stream" always present (false too) and no stream_options.
# Host, Connection and Content-Length are the client's own (wrk, bench/http1.py).
SDK_VERSION = "3.63.0"
SDK_HEADERS = {
    "accept-encoding": "gzip, deflate",
    "authorization": "Bearer sk-bench",
    "accept": "application/json",
    "content-type": "application/json",
    "user-agent": f"OpenAI/Python {SDK_VERSION}",
    "x-stainless-lang": "python",
    "x-stainless-package-version": SDK_VERSION,
    "x-stainless-os": "Linux",
    "x-stainless-arch": "x64",
    "x-stainless-runtime": "CPython",
    "x-stainless-runtime-version": "3.11.7",
    "x-stainless-async": "false",
    "x-stainless-retry-count": "0",
    "x-stainless-read-timeout": "600",
}


def sdk_chat_request(size: int, *, model: str, stream: bool) -> bytes:
    """``client.chat.completions.create(model=..., messages=[...], stream=...)`` as the SDK encodes it."""
    return _compact({"model": model, "stream": stream, "messages": [{"role": "user", "content": prompt(size)}]})


# What the official anthropic Python SDK (anthropic 2.17.0) sends, captured as SDK_HEADERS were
# (bench/sdk_capture.py): its key as Authorization: Bearer, its own API version, x-stainless-*.
ANTHROPIC_SDK_VERSION = "2.17.0"
ANTHROPIC_HEADERS = {
    "accept-encoding": "gzip, deflate",
    "x-stainless-timeout": "600",
    "x-stainless-retry-count": "0",
    "x-stainless-read-timeout": "600",
    "accept": "application/json",
    "content-type": "application/json",
    "user-agent": f"Anthropic/Python {ANTHROPIC_SDK_VERSION}",
    "x-stainless-lang": "python",
    "x-stainless-package-version": ANTHROPIC_SDK_VERSION,
    "x-stainless-os": "Linux",
    "x-stainless-arch": "x64",
    "x-stainless-runtime": "CPython",
    "x-stainless-runtime-version": "3.11.7",
    "authorization": "Bearer sk-bench",
    "x-stainless-async": "false",
    "anthropic-version": "2026-10-21",
}


def responses_request(size: int, *, model: str) -> bytes:
    """``client.responses.create(model=..., input=...)``: a Responses body."""
    return _compact({"model": model, "input": prompt(size)})


def messages_request(size: int, *, model: str) -> bytes:
    """``client.messages.create(model=..., max_tokens=..., messages=[...])``: a Messages body."""
    return _compact({"max_tokens": 256, "messages": [{"role": "user", "content": prompt(size)}], "model": model})


USAGE = {"prompt_tokens": 75, "completion_tokens": STREAM_CHUNKS, "total_tokens": 75 + STREAM_CHUNKS}


def chat_completion() -> bytes:
    """A non-streaming answer, with usage (ext_proc reads it to count tokens)."""
    return _compact({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": CREATED, "model": "bench",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "word " * STREAM_CHUNKS}}],
        "usage": USAGE,
    })


def openai_response() -> bytes:
    """What OpenAI's POST /v1/responses answers for a non-streaming request: the same text and usage."""
    return _compact({
        "id": "resp_bench", "object": "response", "created_at": CREATED, "status": "completed", "model": "bench",
        "output": [{"type": "message", "id": "msg_bench", "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": "word " * STREAM_CHUNKS, "annotations": []}]}],
        "usage": {"input_tokens": USAGE["prompt_tokens"], "output_tokens": USAGE["completion_tokens"],
                  "total_tokens": USAGE["total_tokens"]},
    })


def anthropic_message() -> bytes:
    """What Anthropic's POST /v1/messages answers for a non-streaming request: the same text and usage."""
    return _compact({
        "id": "msg_bench", "type": "message", "role": "assistant", "model": "bench",
        "content": [{"type": "text", "text": "word " * STREAM_CHUNKS}],
        "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": USAGE["prompt_tokens"], "output_tokens": USAGE["completion_tokens"]},
    })


def _chunk(delta: dict[str, str], finish: str | None, chunk_id: str) -> dict[str, object]:
    return {"id": chunk_id, "object": "chat.completion.chunk", "created": CREATED, "model": "bench",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def sse_events(chunks: int = STREAM_CHUNKS, *, stamped: bool = False) -> list[bytes]:
    """One SSE event per element: `chunks` content chunks, the usage chunk, ``[DONE]``.

    ``stamped``: each content chunk's id holds ``STAMP``, for the sender to overwrite with its send time.
    """
    chunk_id = "t" + STAMP.decode() if stamped else "chatcmpl-bench"
    events = []
    for i in range(chunks):
        delta = {"role": "assistant", "content": "word "} if i == 0 else {"content": "word "}
        events.append(_chunk(delta, "stop" if i == chunks - 1 else None, chunk_id))
    # The usage chunk OpenAI sends last when the request asks for
    # stream_options.include_usage (Hapax always asks, to count tokens).
    events.append({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": CREATED,
                   "model": "bench", "choices": [], "usage": USAGE})
    return [b"data: " + _compact(e) + b"\n\n" for e in events] + [b"data: [DONE]\n\n"]


def models_list() -> bytes:
    """What GET .../models answers: Hapax's health probe only needs a 200."""
    return _compact({"object": "list", "data": [{"id": "bench", "object": "model", "owned_by": "bench"}]})
