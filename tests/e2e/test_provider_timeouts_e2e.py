"""Each provider's ``timeout`` bounds the attempts that go to it, streams included.

The seed's shape: the primary (Anthropic) has a short timeout, the secondary
(OpenAI) the default 60 s. Real Envoy, control plane and ext_proc; the providers
are fakes. Elapsed times are only ever checked against generous bounds: what is
asserted is who was asked, in which order, and who answered.
"""

from __future__ import annotations

import json
import time
import urllib.request

import openai
import pytest
import yaml

from hapax import wire
from hapax.fakes import FakeAnthropic, FakeOpenAI, Hang
from tests.conftest import gateway_config, wait_for

PRIMARY_TIMEOUT = 2.0
# Well under the 60 s the secondary's (the longest) timeout would have let the primary hang.
BOUND = 30.0


class Arrivals(list):
    """A fake's request list that also notes, in one log shared by the fakes, who got a POST when."""

    def __init__(self, name: str, log: list[tuple[str, float]]) -> None:
        super().__init__()
        self.name, self.log = name, log

    def append(self, request) -> None:
        if request.method == "POST":
            self.log.append((self.name, time.monotonic()))
        super().append(request)


@pytest.fixture(scope="module")
def fakes(fake_host):
    with fake_host.serving(FakeAnthropic(api_key="k-primary", model="claude-3-haiku"),
                           FakeOpenAI(api_key="k-secondary", model="gpt-4o-mini")) as fakes:
        yield fakes


def timeouts_config(fakes) -> dict:
    primary, secondary = fakes
    return gateway_config(
        {"primary": {"type": "anthropic", "model": "claude-3-haiku", "api_key": "k-primary",
                     "base_url": primary.base_url, "timeout": f"{PRIMARY_TIMEOUT:g}s"},
         "secondary": {"type": "openai", "model": "gpt-4o-mini", "api_key": "k-secondary",
                       "base_url": secondary.base_url}},
        preference=["primary", "secondary"])


@pytest.fixture(scope="module")
def gateway(fakes, start_gateway):
    return start_gateway(timeouts_config(fakes))


@pytest.fixture()
def arrivals(fakes):
    log: list[tuple[str, float]] = []
    for name, fake in zip(("primary", "secondary"), fakes, strict=True):
        fake.reset()
        fake.chunk_delay = 0.0
        fake.requests = Arrivals(name, log)
    yield log
    for fake in fakes:
        fake.clear_faults()
        fake.chunk_delay = 0.0


@pytest.fixture()
def client(gateway):
    # A primary that timed out three times in a row is ejected for a while (outlier
    # detection); the tests that need it run first, and this waits out an ejection.
    wait_for(lambda: envoy_health_flags(gateway, "primary") == "healthy", "Envoy to route to the primary")
    return openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture()
def own_client(fakes, start_gateway):
    """A gateway of the test's own, for a test after those that get the primary ejected (10 s): a
    fresh gateway starts in less than the wait."""
    gateway = start_gateway(timeouts_config(fakes))
    yield openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0, timeout=120)
    gateway.stop()


def envoy_health_flags(gateway, provider: str) -> str:
    lines = gateway.admin("/clusters").splitlines()
    return next(line.rsplit("::", 1)[1] for line in lines
                if line.startswith(f"provider.{provider}::") and "::health_flags::" in line)


def ask(client, text: str, *, stream: bool, max_tokens: int | None = None) -> str:
    extra = {} if max_tokens is None else {"max_tokens": max_tokens}
    reply = client.chat.completions.create(model="auto", stream=stream, messages=[{"role": "user", "content": text}],
                                           **extra)
    if stream:
        return "".join(c.choices[0].delta.content or "" for c in reply if c.choices)
    return reply.choices[0].message.content


def test_the_primary_streams_for_longer_than_its_timeout_while_chunks_keep_coming(client, fakes, arrivals):
    primary, _ = fakes
    primary.chunk_delay = PRIMARY_TIMEOUT * 0.6  # each silence within the limit, the stream well beyond it
    started = time.monotonic()
    text = ask(client, "keep going", stream=True, max_tokens=1)  # Anthropic's six events: five silences
    assert text == "Hello"
    assert time.monotonic() - started > PRIMARY_TIMEOUT * 1.5  # the stream did outlast the timeout
    assert [name for name, _ in arrivals] == ["primary"]


def test_a_primary_silent_too_long_between_chunks_has_its_stream_cut(client, fakes, arrivals):
    primary, _ = fakes
    primary.chunk_delay = PRIMARY_TIMEOUT + 1.5  # the secondary's 60 s would have let it through
    received: list[str] = []
    started = time.monotonic()
    with pytest.raises(Exception):  # noqa: B017 - the SDK's APIError or its HTTP layer's transport error
        for chunk in client.chat.completions.create(model="auto", stream=True, max_tokens=3,
                                                    messages=[{"role": "user", "content": "and then?"}]):
            received += [c.delta.content or "" for c in chunk.choices]
    assert time.monotonic() - started < BOUND
    # Bytes had reached the client: no failover, an error it cannot miss.
    assert "".join(received) != "Hello from fake-anthropic!"
    assert [name for name, _ in arrivals] == ["primary"]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_hanging_primary_fails_over_after_its_own_timeout_not_the_longest(client, fakes, arrivals, stream):
    primary, _ = fakes
    primary.inject(Hang(), times=None, method="POST")  # its health probes still answer
    started = time.monotonic()
    text = ask(client, "who answers?", stream=stream)
    elapsed = time.monotonic() - started
    assert text == "Hello from fake-openai! You said: who answers?"
    assert [name for name, _ in arrivals] == ["primary", "secondary"]
    waited = arrivals[1][1] - arrivals[0][1]
    # The primary was given its whole timeout (not failed at once), and no more than
    # a fraction of the secondary's 60 s.
    assert PRIMARY_TIMEOUT / 2 < waited < BOUND
    assert elapsed < BOUND


def test_the_secondary_keeps_its_own_longer_limit_between_chunks(own_client, fakes, arrivals):
    client = own_client
    primary, secondary = fakes
    primary.inject(Hang(), times=None, method="POST")
    secondary.chunk_delay = PRIMARY_TIMEOUT + 0.5  # silences the primary would not be allowed
    text = ask(client, "take your time", stream=True, max_tokens=1)
    assert text == "Hello"
    assert [name for name, _ in arrivals] == ["primary", "secondary"]


def test_the_last_attempt_timing_out_gets_the_gateways_timeout_answer(fake_host, start_gateway):
    # Both providers of the chain are held to timeouts shorter than the longest (the
    # third provider's), so the client's answer comes from the last one's attempt listener.
    first = fake_host.start(FakeOpenAI(api_key="k", model="first"))
    second = fake_host.start(FakeAnthropic(api_key="k", model="second"))
    spare = fake_host.start(FakeOpenAI(api_key="k", model="spare"))
    try:
        for fake in (first, second):
            fake.inject(Hang(), times=None, method="POST")
        gateway = start_gateway(gateway_config(
            {"first": {"type": "openai", "model": "first", "api_key": "k", "base_url": first.base_url,
                       "timeout": "1s"},
             "second": {"type": "anthropic", "model": "second", "api_key": "k", "base_url": second.base_url,
                        "timeout": "1s"},
             "spare": {"type": "openai", "model": "spare", "api_key": "k", "base_url": spare.base_url}},
            preference=["first", "second"]))
        client = openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0, timeout=120)
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as err:
            client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "anyone?"}])
        assert time.monotonic() - started < BOUND
        assert err.value.status_code == 504
        assert err.value.body["code"] == "timeout", err.value.body  # as Envoy's own timeout answer says it
        assert wire.GATEWAY_ANSWER_HEADER not in err.value.response.headers
        assert [len([r for r in fake.requests if r.method == "POST"]) for fake in (first, second, spare)] == [1, 1, 0]
    finally:
        for fake in (first, second, spare):
            fake_host.run(fake.stop())


def test_a_timeout_edited_while_running_applies_to_the_next_requests(fake_host, start_gateway):
    # The attempt listener arrives with the cluster that names it, and leaves with it.
    first = fake_host.start(FakeOpenAI(api_key="k", model="first"))
    second = fake_host.start(FakeOpenAI(api_key="k", model="second"))
    log: list[tuple[str, float]] = []
    first.requests, second.requests = Arrivals("first", log), Arrivals("second", log)
    try:
        config = gateway_config(
            {"first": {"type": "openai", "model": "first", "api_key": "k", "base_url": first.base_url},
             "second": {"type": "openai", "model": "second", "api_key": "k", "base_url": second.base_url}},
            preference=["first", "second"])
        gateway = start_gateway(config)
        client = openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0, timeout=120)
        before = served_version(gateway)
        config["providers"]["first"]["timeout"] = "1s"
        gateway.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        wait_for(lambda: served_version(gateway) != before, "the edit to be rolled out")
        first.inject(Hang(), times=None, method="POST")
        started = time.monotonic()
        assert ask(client, "quick", stream=False) == "Hello from fake-openai! You said: quick"
        assert time.monotonic() - started < BOUND
        assert [name for name, _ in log] == ["first", "second"]

        first.clear_faults()
        before = served_version(gateway)
        del config["providers"]["first"]["timeout"]
        gateway.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        wait_for(lambda: served_version(gateway) != before, "the edit back to be rolled out")
        assert ask(client, "direct", stream=False) == "Hello from fake-openai! You said: direct"
        assert [name for name, _ in log] == ["first", "second", "first"]
        # Through its attempt listener or not, the provider is sent the same headers.
        held, direct = [r for r in first.requests if r.method == "POST"]
        assert sorted(held.headers) == sorted(direct.headers)
    finally:
        for fake in (first, second):
            fake_host.run(fake.stop())


def served_version(gateway) -> str:
    """The config version every consumer has been served to its last stage."""
    with urllib.request.urlopen(gateway.url + "/health", timeout=10) as resp:
        return json.load(resp)["components"]["control_plane"]["config_version"]
