"""What the client-API end-to-end modules share (the Messages and Responses APIs): one fake of each
provider type, a gateway over them in a given order, and what a fake was asked."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from hapax.fakes import FakeAnthropic, FakeOllama, FakeOpenAI
from hapax.fakes.base import FakeProvider, RecordedRequest
from tests.conftest import gateway_config

MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-3-5-haiku-latest", "ollama": "llama3.2"}


@contextmanager
def one_fake_per_type(fake_host) -> Iterator[dict[str, FakeProvider]]:
    with fake_host.serving(FakeOpenAI(api_key="k", model=MODELS["openai"]),
                           FakeAnthropic(api_key="k", model=MODELS["anthropic"]),
                           FakeOllama(model=MODELS["ollama"])) as (openai_fake, anthropic_fake, ollama_fake):
        yield {"openai": openai_fake, "anthropic": anthropic_fake, "ollama": ollama_fake}


def one_provider_per_type(fakes: dict[str, FakeProvider], preference: list[str]) -> dict:
    providers = {kind: {"type": kind, "model": MODELS[kind], "base_url": fake.base_url,
                        **({"api_key": "k"} if kind != "ollama" else {})} for kind, fake in fakes.items()}
    return gateway_config(providers, preference=preference)


def posted(fake: FakeProvider) -> list[RecordedRequest]:
    """What the fake was asked, its health checks (GET) aside: one may land at any time."""
    return [r for r in fake.requests if r.method == "POST"]
