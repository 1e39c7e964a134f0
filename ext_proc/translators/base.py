"""The one interface every provider type implements.

A translator turns the canonical (OpenAI) client request into the provider's
request, and gives back a response stage that turns the provider's answer
(JSON, SSE or NDJSON, and errors) into OpenAI's chat shape. Adding a provider
is adding one module that implements this; no other translator changes.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from ext_proc.client_request import ClientRequest
from ext_proc.errors import error_json
from ext_proc.outcomes import StreamOutcome
from ext_proc.runtime import Provider
from hapax.wire import Handler


@dataclass(frozen=True)
class ProviderRequest:
    path: str
    body: bytes | None  # None: the client's body, as it is
    set_headers: dict[str, str] = field(default_factory=dict)
    # The client's fields this body leaves out (ext_proc/translators/params.py), sorted: the
    # client is told of them (x-hapax-dropped-params). A body sent as it is drops none.
    dropped: tuple[str, ...] = ()


class ResponseStage(ABC):
    """Rewrites one attempt's response; stateful across the body's pieces."""

    # Set when the body shows the provider's status was wrong for what it sent
    # (a 200 with an unreadable body); applied only to responses read whole.
    status_override: int | None = None
    # Set by a streaming stage once its stream has ended.
    stream_outcome: StreamOutcome | None = None
    # The answer's token usage in OpenAI's shape (prompt_tokens, completion_tokens), once seen.
    usage: dict[str, Any] | None = None

    @property
    def streams(self) -> bool:
        """After headers(): True to convert piece by piece, False to read the body whole."""
        return True

    @property
    def reads_body(self) -> bool:
        """After headers(): False when this response passes to the client untouched."""
        return True

    @property
    def reads_json_only_for_usage(self) -> bool:
        """After headers(): True when a JSON answer passes unchanged and is read only for its usage,
        which Envoy reads too (json_to_metadata) on routes that have it."""
        return False

    @abstractmethod
    def headers(self, status: int, content_type: str) -> dict[str, str]:
        """Called once with the provider's status; returns headers to set."""

    @abstractmethod
    def body(self, piece: bytes, end_of_stream: bool) -> bytes:
        """Called for every piece as it arrives; returns what the client gets now."""


class ConvertingResponseStage(ResponseStage):
    """The skeleton of a stage for a provider that answers in its own shape.

    The status and content type decide how the body is read: an error (status
    400 and up) or a JSON body is converted once it is complete; a stream
    (``stream_media_type``) is converted piece by piece as it arrives.
    """

    stream_media_type: ClassVar[str]

    def __init__(self, *, stream: bool, include_usage: bool = False) -> None:
        self.mode: Literal["json", "stream", "error"] = "stream" if stream else "json"
        self.status = 200
        # The usage chunk ends a stream only when the client asked for it:
        # clients that did not may read choices[0] of every chunk.
        self.include_usage = include_usage
        self._buffer = bytearray()

    def headers(self, status: int, content_type: str) -> dict[str, str]:
        self.status = status
        media = content_type.split(";", 1)[0].strip().lower()
        if status >= 400:
            self.mode = "error"
        elif media == self.stream_media_type:
            self.mode = "stream"
        else:
            self.mode = "json"
        return {"content-type": "text/event-stream" if self.mode == "stream" else "application/json"}

    @property
    def streams(self) -> bool:
        return self.mode == "stream"

    def unreadable(self, error_body: bytes) -> bytes:
        """An answer the provider sent but no client could use: a 502, not a 200."""
        self.status_override = 502
        return error_body

    def body(self, piece: bytes, end_of_stream: bool) -> bytes:
        if self.mode == "stream":
            return self.stream_piece(piece, end_of_stream)
        self._buffer += piece
        if not end_of_stream:
            return b""
        raw, self._buffer = bytes(self._buffer), bytearray()
        return self.error_body(raw) if self.mode == "error" else self.json_body(raw)

    @abstractmethod
    def json_body(self, raw: bytes) -> bytes:
        """The provider's complete JSON answer, in OpenAI's shape."""

    @abstractmethod
    def error_body(self, raw: bytes) -> bytes:
        """The provider's complete error body, as OpenAI error JSON."""

    @abstractmethod
    def stream_piece(self, piece: bytes, end_of_stream: bool) -> bytes:
        """One piece of the provider's stream, as the OpenAI SSE it completes."""


class Translator(ABC):
    type: ClassVar[str]
    handlers: ClassVar[frozenset[Handler]]
    # The client APIs besides the canonical ones this provider speaks itself (OpenAI: the Responses
    # API): a request in one goes to it as the client sent it, but for its model (native_request),
    # and the answer comes back as the provider gave it (native_response). Every other provider
    # gets the canonical request its translator translates.
    native: ClassVar[frozenset[Handler]] = frozenset()
    # The client's request headers a native request keeps (its API's version and betas): the
    # client's own value wins over the one native_request sets.
    native_headers: ClassVar[frozenset[str]] = frozenset()

    @abstractmethod
    def request(self, req: ClientRequest, provider: Provider) -> ProviderRequest:
        """The provider's path, headers (credentials included) and body."""

    def request_as_sent(self, req: ClientRequest, provider: Provider) -> ProviderRequest | None:
        """The provider's path and headers if it takes the client's body unchanged (body None), else None.

        Asked before the body is read, with what Envoy read of it (``ClientRequest.as_read``):
        a body that goes as it is costs no ext_proc message. The provider checks it then.
        """
        return None

    def response(self, req: ClientRequest, provider: Provider) -> ResponseStage | None:
        """None when the provider's answer reaches the client untouched."""
        return None

    def native_request(self, api: Handler, body: dict[str, Any], provider: Provider) -> ProviderRequest:
        """The request in the client's own API ``api`` (one of ``native``), to this provider."""
        raise NotImplementedError(f"{self.type} speaks no client API of its own")

    def native_response(self, api: Handler, provider: Provider) -> ResponseStage:
        """The stage that reads (and passes) this provider's answer in ``api``."""
        raise NotImplementedError(f"{self.type} speaks no client API of its own")

    @abstractmethod
    def health_probe(self, provider: Provider) -> ProviderRequest:
        """The cheapest authenticated GET that proves the provider serves (a model list)."""


def tool_arguments(raw: Any) -> dict[str, Any]:
    """OpenAI tool-call ``arguments`` (a JSON string) as the object providers want.

    Models sometimes emit invalid or non-object JSON; the call still goes through
    with empty arguments rather than failing the whole request.
    """
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw) if isinstance(raw, str) and raw.strip() else {}
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def dumps(value: Any) -> str:
    """Compact JSON; non-ASCII text stays as it is rather than growing into escapes."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def json_or_none(raw: bytes | str) -> Any:
    """The JSON value in ``raw``, or None: a provider's body can be anything (a proxy's HTML, a cut stream)."""
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


def http_error_text(raw: bytes, status: int) -> str:
    """The message for an error body that is not the provider's own error JSON."""
    # Kept short: it may be a whole HTML page from a proxy in front of the provider.
    text = raw.decode("utf-8", errors="replace").strip()[:500]
    return f"Provider returned HTTP {status}" + (f": {text}" if text else "")


_ABOUT_A_MODEL = re.compile(r"\bmodel\b", re.IGNORECASE)


def provider_not_found(provider: Provider, convention: str, raw: bytes, message: str | None,
                       *, about_model: bool = False) -> dict[str, Any]:
    """OpenAI error JSON for a provider's 404: the gateway's configuration, never the client's request.

    The gateway answers a model it does not know itself (404 ``model_not_found``),
    and sends each provider only its configured path and its configured model;
    so a 404 from the provider means one of them is wrong, and the client gets
    a 502 naming the provider (the stage sets the status). It is a model if the
    provider's own error JSON says so (``message``: its error message, None when
    the body is not its error JSON: a plain or HTML page), else the path, which
    comes from ``base_url``; ``convention``: what the gateway appends to this
    type's ``base_url``.
    """
    if about_model or (message is not None and _ABOUT_A_MODEL.search(message)):
        return error_json(f"The provider '{provider.name}' does not serve the model '{provider.model}' the "
                          f"gateway's configuration names for it ({message}). This is a gateway configuration "
                          "problem, not the client's: check that provider's model.",
                          "server_error", "provider_model_not_found")
    said = message if message is not None else http_error_text(raw, 404)
    return error_json(f"The provider '{provider.name}' answered HTTP 404 for the path the gateway sent it "
                      f"({said}): its base_url is likely wrong ({convention}). This is a gateway "
                      "configuration problem, not the client's.",
                      "server_error", "provider_path_not_found")
