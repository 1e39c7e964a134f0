"""Fake LLM providers for end-to-end tests and the gateway's demo mode.

Each fake is a real HTTP server on 127.0.0.1 speaking one provider's wire
format (OpenAI, Anthropic Messages, Ollama). It checks credentials, records
every request for assertions, and acts out injected faults::

    async with FakeOpenAI() as fake:
        fake.inject(Status(503, retry_after=1))
        ...  # point the gateway at fake.base_url
        assert fake.requests[-1].body["model"] == "gpt-4o-mini"
"""

from .anthropic import FakeAnthropic
from .base import FakeProvider, RecordedRequest
from .faults import CutStream, Fault, Hang, Latency, Reset, Status, StreamError
from .ollama import FakeOllama
from .openai import FakeOpenAI

__all__ = [
    "CutStream",
    "FakeAnthropic",
    "FakeOllama",
    "FakeOpenAI",
    "FakeProvider",
    "Fault",
    "Hang",
    "Latency",
    "RecordedRequest",
    "Reset",
    "Status",
    "StreamError",
]
