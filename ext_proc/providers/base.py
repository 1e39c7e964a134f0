"""The one interface every provider type implements.

A translator turns the canonical (OpenAI) client request into the provider's
request, and gives back a response stage that turns the provider's answer
(JSON, SSE or NDJSON, and errors) into OpenAI's chat shape. Adding a provider
is adding one module that implements this; no other translator changes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

from ext_proc.client_request import ClientRequest
from ext_proc.runtime import Provider


@dataclass(frozen=True)
class ProviderRequest:
    path: str
    body: bytes
    set_headers: dict[str, str] = field(default_factory=dict)


class ResponseStage(ABC):
    """Rewrites one attempt's response; stateful across the body's pieces."""

    @abstractmethod
    def headers(self, status: int, content_type: str) -> dict[str, str]:
        """Called once with the provider's status; returns headers to set."""

    @abstractmethod
    def body(self, piece: bytes, end_of_stream: bool) -> bytes:
        """Called for every piece as it arrives; returns what the client gets now."""


class Translator(ABC):
    type: ClassVar[str]
    handlers: ClassVar[frozenset[str]]
    # True when the provider already answers in OpenAI's shape: Envoy then
    # streams its responses to the client without crossing ext_proc.
    answers_in_openai_shape: ClassVar[bool] = False
    # Headers this translator may set (credentials, versions); removed from an
    # attempt that goes to another provider.
    provider_headers: ClassVar[frozenset[str]] = frozenset({"authorization"})

    @abstractmethod
    def request(self, req: ClientRequest, provider: Provider) -> ProviderRequest:
        """The provider's path, headers (credentials included) and body."""

    def response(self, req: ClientRequest, provider: Provider) -> ResponseStage | None:
        """None when the provider already answers in OpenAI's shape."""
        return None
