"""The configurations an operator starts from serve the standard OpenAI API and their departments.

The seed's example, ``hapax.example.yaml`` and the README's config each list a
department route; each is run as written (its routes and preference), with only
its providers pointed at local fakes and its server at free loopback ports, and
the official ``openai`` SDK must get an answer from every path it should serve.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import yaml

from hapax.fakes import FakeAnthropic, FakeOllama, FakeOpenAI
from hapax.fakes.base import FakeProvider
from tests.conftest import REPO
from tests.seed import SEED_YAML

CLIENT_KEY = "sk-client"
STANDARD_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models")
FAKES = {"openai": FakeOpenAI, "anthropic": FakeAnthropic, "ollama": FakeOllama}
# The path each handler's SDK call ends with: a route's SDK base URL is its path without it.
SDK_SUFFIX = {"chat": "/chat/completions", "completion": "/completions", "models": "/models",
              "embeddings": "/embeddings"}


def _readme_config() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Configuration in brief", 1)[1]
    match = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert match, "the README's 'Configuration in brief' has no yaml block"
    return match.group(1)


EXAMPLES = {
    "seed": SEED_YAML,
    "hapax.example.yaml": (REPO / "hapax.example.yaml").read_text(),
    "README": _readme_config(),
}


@pytest.fixture()
def faked(fake_host) -> Iterator[Any]:
    """``faked(text)``: the config with each provider at a fake of its type, fakes stopped after."""
    started: list[FakeProvider] = []

    def fake_providers(text: str) -> dict:
        config = yaml.safe_load(text)
        config["server"] = {"host": "127.0.0.1", "port": 0, "metrics_port": 0}
        for provider in config["providers"].values():
            key = None if provider["type"] == "ollama" else "fake-key"
            fake = fake_host.start(FAKES[provider["type"]](api_key=key, model=provider["model"]))
            started.append(fake)
            provider.update(base_url=fake.base_url, **({"api_key": key} if key else {}))
        return config

    yield fake_providers
    for fake in started:
        fake_host.run(fake.stop())


def _serves(client: openai.OpenAI, handler: str) -> None:
    """One call of ``handler``'s kind through the SDK; it raises unless the gateway answers 2xx."""
    if handler == "chat":
        reply = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content
    elif handler == "completion":
        assert client.completions.create(model="auto", prompt="hi").choices[0].text
    elif handler == "models":
        assert list(client.models.list())
    else:
        assert client.embeddings.create(model="auto", input="hi").data


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_an_example_config_serves_the_standard_endpoints_and_its_department_routes(name, faked, start_gateway):
    config = faked(EXAMPLES[name])
    gateway = start_gateway(config)
    try:
        banner = "".join(gateway.output)
        for path in {*STANDARD_PATHS, *(route["path"] for route in config["routes"])}:
            assert f" {path} " in banner, banner  # the banner lists what is served
        client = openai.OpenAI(base_url=gateway.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=30)
        _serves(client, "chat")
        _serves(client, "models")
        for route in config["routes"]:
            base = gateway.url + route["path"].removesuffix(SDK_SUFFIX[route["handler"]])
            _serves(openai.OpenAI(base_url=base, api_key=CLIENT_KEY, max_retries=0, timeout=30), route["handler"])
    finally:
        gateway.stop()  # one gateway at a time on a shared machine
