"""Provider outages are invisible to clients: failover, health checks, all-down.

Real Envoy, control plane and ext_proc; the primary is a fake OpenAI that is
made to fail, the secondary a fake Anthropic (so every failover also proves
the retry was rewritten for the other provider's format).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from hapax.fakes import (
    CutStream,
    FakeAnthropic,
    FakeOpenAI,
    Hang,
    Latency,
    Reset,
    Status,
    StreamError,
)
from hapax.fakes.base import STREAM_ERROR_MESSAGE
from tests.conftest import gateway_config, wait_for

INTERVAL = 0.2  # health check interval; thresholds below are in these units
UNHEALTHY, HEALTHY = 2, 2


@pytest.fixture(scope="module")
def fakes(fake_host):
    with fake_host.serving(FakeOpenAI(api_key="k-primary", model="gpt-4o-mini"),
                           FakeAnthropic(api_key="k-secondary", model="claude-3-haiku")) as fakes:
        yield fakes


def failover_config(fakes) -> dict:
    primary, secondary = fakes
    config = gateway_config(
        {"primary": {"type": "openai", "model": "gpt-4o-mini", "api_key": "k-primary",
                     "base_url": primary.base_url},
         "secondary": {"type": "anthropic", "model": "claude-3-haiku", "api_key": "k-secondary",
                       "base_url": secondary.base_url}},
        preference=["primary", "secondary"])
    config["health_check"] = {"interval": f"{int(INTERVAL * 1000)}ms", "timeout": "150ms",
                              "unhealthy_threshold": UNHEALTHY, "healthy_threshold": HEALTHY}
    return config


@pytest.fixture(scope="module")
def gateway(fakes, start_gateway):
    return start_gateway(failover_config(fakes))


def _ready_client(gateway, fakes) -> openai.OpenAI:
    for fake in fakes:
        fake.reset()
    wait_for(lambda: provider_states(gateway) == {"primary": "healthy", "secondary": "healthy"},
             "both providers healthy")
    # Envoy's view too: an earlier test's failures may have had a provider ejected.
    wait_for(lambda: all(envoy_health_flags(gateway, p) == "healthy" for p in ("primary", "secondary")),
             "Envoy to route to both providers")
    return openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0, timeout=30)


@pytest.fixture()
def client(gateway, fakes):
    return _ready_client(gateway, fakes)


@pytest.fixture()
def own_client(fakes, start_gateway):
    """A gateway of the test's own, for a test whose failures get the primary ejected by Envoy's outlier
    detection (10 s): every later test on the module's gateway would wait that out (a fresh gateway
    starts in less)."""
    gateway = start_gateway(failover_config(fakes))
    yield _ready_client(gateway, fakes)
    gateway.stop()


def provider_states(gateway) -> dict[str, str]:
    try:
        with urllib.request.urlopen(gateway.url + "/health", timeout=5) as resp:
            report = json.load(resp)
    except urllib.error.HTTPError as err:  # 503 degraded: no provider may serve
        report = json.load(err)
    return {name: p["status"] for name, p in report["providers"].items()}


def envoy_health_flags(gateway, provider: str) -> str:
    lines = gateway.admin("/clusters").splitlines()
    return next(line.rsplit("::", 1)[1] for line in lines
                if line.startswith(f"provider.{provider}::") and "::health_flags::" in line)


def chat_requests(fake) -> list:
    return [r for r in fake.requests if r.method == "POST"]


REQUESTS = 200


@pytest.mark.parametrize("fault", [Status(500), Status(503), Status(429, retry_after=1), Reset(), "refuse"],
                         ids=["500", "503", "429", "reset", "refused"])
def test_failover_survives_primary_failures(own_client, fakes, fake_host, fault):
    client = own_client
    primary, secondary = fakes
    if fault == "refuse":
        fake_host.run(primary.refuse_connections())
    else:
        primary.inject(fault, times=None)
    try:
        for i in range(REQUESTS):
            messages = [{"role": "user", "content": f"n{i}"}]
            if i % 2:
                stream = client.chat.completions.create(model="auto", messages=messages, stream=True)
                text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            else:
                text = client.chat.completions.create(model="auto", messages=messages).choices[0].message.content
            assert text == f"Hello from fake-anthropic! You said: n{i}"
    finally:
        primary.clear_faults()
        if fault == "refuse":
            fake_host.run(primary.accept_connections())
    served = chat_requests(secondary)
    assert len(served) == REQUESTS
    assert all(r.path == "/v1/messages" and r.headers["x-api-key"] == "k-secondary" for r in served)


def test_health_check_takes_a_failing_provider_out_and_brings_it_back(client, gateway, fakes):
    primary, secondary = fakes
    primary.inject(Status(503), times=None)
    wait_for(lambda: provider_states(gateway)["primary"] == "unhealthy", "ext_proc to mark the primary unhealthy")
    wait_for(lambda: "failed_active_hc" in envoy_health_flags(gateway, "primary"), "Envoy to take the verdict")
    # Out of rotation: requests go straight to the secondary, the primary sees only probes.
    before = len(chat_requests(primary))
    for _ in range(5):
        client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "x"}])
    wait_for(lambda: len(chat_requests(secondary)) >= 5, "secondary to serve")
    assert len(chat_requests(primary)) == before
    assert [r.path for r in fakes[0].requests if r.method == "GET"]  # the probes kept going
    primary.clear_faults()
    wait_for(lambda: provider_states(gateway)["primary"] == "healthy", "primary back")
    wait_for(lambda: _served_by_primary(client), "traffic back on the primary")


def test_a_retry_after_keeps_traffic_off_the_provider_until_it_passes(client, gateway, fakes):
    primary, _ = fakes
    primary.inject(Status(429, retry_after=3), method="POST")  # once: later requests would be answered
    reply = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "quota?"}])
    assert reply.choices[0].message.content == "Hello from fake-anthropic! You said: quota?"
    assert provider_states(gateway)["primary"] == "holding_off"
    wait_for(lambda: "failed_active_hc" in envoy_health_flags(gateway, "primary"), "Envoy to hold the primary off")
    held_at = len(chat_requests(primary))
    for i in range(5):
        reply = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": f"h{i}"}])
        assert reply.choices[0].message.content.startswith("Hello from fake-anthropic")
    assert len(chat_requests(primary)) == held_at  # not called again before its retry-after passed
    wait_for(lambda: provider_states(gateway)["primary"] == "healthy", "the retry-after to pass")
    wait_for(lambda: _served_by_primary(client), "traffic back on the primary")


def test_health_flips_after_exactly_the_thresholds_while_traffic_flows(client, gateway, fakes):
    primary, _ = fakes
    errors: list[Exception] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            try:
                client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "flow"}])
            except Exception as err:  # noqa: BLE001 - every client-visible failure is collected
                errors.append(err)

    def probes() -> int:
        return len([r for r in primary.requests if r.method == "GET"])

    with ThreadPoolExecutor(2) as pool:
        for _ in range(2):
            pool.submit(traffic)
        try:
            probes_before = probes()
            primary.inject(Status(503), times=None)
            wait_for(lambda: provider_states(gateway)["primary"] == "unhealthy", "the primary marked unhealthy")
            # Taken out by exactly the threshold's probes: within unhealthy_threshold
            # x interval. (Slack of two probes: one in flight at the injection,
            # one started before this thread saw the verdict.)
            assert UNHEALTHY <= probes() - probes_before <= UNHEALTHY + 2
            primary.clear_faults()
            probes_before = probes()
            wait_for(lambda: provider_states(gateway)["primary"] == "healthy", "the primary back")
            assert HEALTHY <= probes() - probes_before <= HEALTHY + 2
            wait_for(lambda: _served_by_primary(client), "traffic back on the primary")
        finally:
            stop.set()
    assert errors == []  # failover covered the whole outage


def _served_by_primary(client) -> bool:
    reply = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "back?"}])
    return reply.choices[0].message.content.startswith("Hello from fake-openai")


def test_all_providers_down_is_a_fast_clean_503(client, gateway, fakes):
    for fake in fakes:
        fake.inject(Status(503), times=None)
    try:
        wait_for(lambda: set(provider_states(gateway).values()) == {"unhealthy"}, "both unhealthy")
        wait_for(lambda: all("failed_active_hc" in envoy_health_flags(gateway, p) for p in ("primary", "secondary")),
                 "Envoy to take both verdicts")
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as err:
            client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "anyone?"}])
        assert err.value.status_code == 503
        assert err.value.body["code"] == "provider_unavailable", err.value.body
        assert time.monotonic() - started < 10  # no hang: answered without waiting on a provider timeout
        assert all(not chat_requests(fake) for fake in fakes)
    finally:
        for fake in fakes:
            fake.clear_faults()


def test_a_hanging_provider_fails_over_after_its_timeout(fake_host, start_gateway):
    hanging = fake_host.start(FakeOpenAI(api_key="k", model="slow"))
    backup = fake_host.start(FakeOpenAI(api_key="k", model="quick"))
    try:
        hanging.inject(Hang(), times=None)
        config = gateway_config(
            {"slow": {"type": "openai", "model": "slow", "api_key": "k", "base_url": hanging.base_url,
                      "timeout": "1s", "health_check": {"interval": "1h"}},
             "quick": {"type": "openai", "model": "quick", "api_key": "k", "base_url": backup.base_url,
                       "timeout": "1s"}},
            preference=["slow", "quick"])
        gateway = start_gateway(config)
        client = openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0, timeout=30)
        for stream in (False, True):
            reply = client.chat.completions.create(model="auto", stream=stream,
                                                   messages=[{"role": "user", "content": "hurry"}])
            text = reply.choices[0].message.content if not stream else "".join(
                c.choices[0].delta.content or "" for c in reply if c.choices)
            assert text == "Hello from fake-openai! You said: hurry"
        assert len([r for r in hanging.requests if r.method == "POST"]) == 2
        assert len([r for r in backup.requests if r.method == "POST"]) == 2
    finally:
        fake_host.run(hanging.stop())
        fake_host.run(backup.stop())


PRIMARY_ANSWER = "Hello from fake-openai! You said: one two three four"


def read_stream(client, text: str) -> tuple[str, list, Exception | None]:
    """What a streaming client got: the text, the finish reasons, and the error that ended it."""
    received, finish_reasons = [], []
    try:
        for chunk in client.chat.completions.create(model="auto", stream=True,
                                                    messages=[{"role": "user", "content": text}]):
            for choice in chunk.choices:
                received.append(choice.delta.content or "")
                finish_reasons.append(choice.finish_reason)
    except Exception as err:  # noqa: BLE001 - the SDK's APIError or its HTTP layer's transport error
        return "".join(received), finish_reasons, err
    return "".join(received), finish_reasons, None


@pytest.fixture()
def slow_primary(fakes):
    # Chunks far enough apart that the first ones have reached the client when
    # the fault strikes: from then on no failover is possible.
    primary, _ = fakes
    primary.chunk_delay = 0.3
    yield primary
    primary.chunk_delay = 0.0


def test_a_stream_reset_after_bytes_were_sent_fails_loudly_and_counts_as_interrupted(client, gateway, fakes,
                                                                                      slow_primary):
    before = gateway.metric("hapax_streams_total", provider="primary", outcome="interrupted")
    slow_primary.inject(CutStream(after_chunks=3), method="POST")
    text, finish_reasons, error = read_stream(client, "one two three four")
    # Envoy can only reset the client's stream once bytes have gone out: an
    # error the client cannot miss, never a stream that looks whole.
    assert text and PRIMARY_ANSWER.startswith(text) and text != PRIMARY_ANSWER
    assert error is not None
    assert not any(finish_reasons)
    assert chat_requests(fakes[1]) == []
    wait_for(lambda: gateway.metric("hapax_streams_total", provider="primary", outcome="interrupted") == before + 1,
             "the interrupted stream to be counted")


def test_a_stream_that_ends_early_gets_an_error_event_and_counts_as_an_error(client, gateway, fakes, slow_primary):
    before = gateway.metric("hapax_streams_total", provider="primary", outcome="ended_early")
    slow_primary.inject(CutStream(after_chunks=3, reset=False), method="POST")
    text, finish_reasons, error = read_stream(client, "one two three four")
    assert text and PRIMARY_ANSWER.startswith(text) and text != PRIMARY_ANSWER
    assert isinstance(error, openai.APIError) and "ended unexpectedly" in str(error)
    assert not any(finish_reasons)
    assert chat_requests(fakes[1]) == []
    wait_for(lambda: gateway.metric("hapax_streams_total", provider="primary", outcome="ended_early") == before + 1,
             "the stream to be counted as ended early")


def test_a_provider_error_mid_stream_reaches_the_client_and_counts_as_an_error(client, gateway, slow_primary):
    before = gateway.metric("hapax_streams_total", provider="primary", outcome="provider_error")
    slow_primary.inject(StreamError(after_chunks=3), method="POST")
    text, _, error = read_stream(client, "one two three four")
    assert text and PRIMARY_ANSWER.startswith(text) and text != PRIMARY_ANSWER
    assert isinstance(error, openai.APIError) and str(error) == STREAM_ERROR_MESSAGE  # the provider's own words
    wait_for(lambda: gateway.metric("hapax_streams_total", provider="primary",
                                    outcome="provider_error") == before + 1,
             "the stream to be counted as a provider error")


def test_a_whole_stream_counts_as_completed(client, gateway):
    before = gateway.metric("hapax_streams_total", provider="primary", outcome="completed")
    text, finish_reasons, error = read_stream(client, "all of it")
    assert error is None and text == "Hello from fake-openai! You said: all of it"
    assert finish_reasons[-1] == "stop"
    wait_for(lambda: gateway.metric("hapax_streams_total", provider="primary", outcome="completed") == before + 1,
             "the stream to be counted as completed")


def test_a_slow_provider_cannot_absorb_more_than_its_circuit_breaker_allows(fake_host, start_gateway):
    slow = fake_host.start(FakeOpenAI(api_key="k", model="slow"))
    spare = fake_host.start(FakeOpenAI(api_key="k", model="spare"))
    try:
        slow.inject(Latency(1.5), times=None)
        config = gateway_config(
            {"slow": {"type": "openai", "model": "slow", "api_key": "k", "base_url": slow.base_url,
                      "circuit_breaker": {"max_concurrent_requests": 2, "max_pending_requests": 1}},
             "spare": {"type": "openai", "model": "spare", "api_key": "k", "base_url": spare.base_url}},
            preference=["slow", "spare"])
        gateway = start_gateway(config)

        def ask(i: int):
            client = openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0, timeout=30)
            try:
                return client.chat.completions.create(
                    model="auto", messages=[{"role": "user", "content": f"r{i}"}]).choices[0].message.content
            except openai.APIStatusError as err:
                return err.status_code, err.body["code"], err.response.headers.get("retry-after")

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(ask, range(8)))
        at_slow = len([r for r in slow.requests if r.method == "POST"])
        assert at_slow <= 3  # 2 in flight + 1 pending, never all 8
        served = [r for r in results if isinstance(r, str)]
        refused = [r for r in results if not isinstance(r, str)]
        assert all(text.startswith("Hello from fake-openai") for text in served)
        # Beyond the limits, Envoy answers at once (it never retries an overflow,
        # so these do not fail over; they do not queue behind the slow provider).
        # A client may come back a second later (docs/operations.md: Overload).
        assert refused and set(refused) == {(503, "overloaded", "1")}
        assert len(served) + len(refused) == 8
    finally:
        fake_host.run(slow.stop())
        fake_host.run(spare.stop())


def test_max_attempts_one_means_no_failover(fake_host, start_gateway):
    primary = fake_host.start(FakeOpenAI(api_key="k", model="a"))
    secondary = fake_host.start(FakeOpenAI(api_key="k", model="b"))
    try:
        primary.inject(Status(503), times=None)
        config = gateway_config(
            {"a": {"type": "openai", "model": "a", "api_key": "k", "base_url": primary.base_url,
                   "health_check": {"interval": "1h"}},
             "b": {"type": "openai", "model": "b", "api_key": "k", "base_url": secondary.base_url}},
            preference=["a", "b"])
        config["retry"] = {"max_attempts": 1}
        client = openai.OpenAI(base_url=start_gateway(config).base_url, api_key="unused", max_retries=0)
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "once"}])
        assert len(chat_requests(primary)) == 1 and chat_requests(secondary) == []
    finally:
        fake_host.run(primary.stop())
        fake_host.run(secondary.stop())


def test_concurrent_requests_all_fail_over(own_client, fakes):
    client = own_client
    # Retries in flight are counted against the chain cluster: a default limit
    # of 3 would leave most of 24 concurrent failovers unserved.
    primary, secondary = fakes
    primary.inject(Status(503), times=None)
    try:
        def ask(i: int) -> str:
            return client.chat.completions.create(
                model="auto", messages=[{"role": "user", "content": f"c{i}"}]).choices[0].message.content
        with ThreadPoolExecutor(24) as pool:
            replies = list(pool.map(ask, range(24)))
    finally:
        primary.clear_faults()
    assert sorted(replies) == sorted(f"Hello from fake-anthropic! You said: c{i}" for i in range(24))


def test_a_failover_moves_the_failover_retry_and_request_counters(client, gateway, fakes):
    primary, _ = fakes
    route = {"route": "/v1/chat/completions"}
    answered = {**route, "provider": "secondary", "model": "claude-3-haiku"}

    def counts() -> tuple[float, ...]:
        return (gateway.metric("hapax_retries_total", **route, provider="secondary"),
                gateway.metric("hapax_failovers_total", **route, provider="secondary"),
                gateway.metric("hapax_requests_total", **answered, status_class="2xx", outcome="failed_over"))

    before = counts()
    primary.inject(Status(503), method="POST")
    client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "count me"}])
    wait_for(lambda: counts() == tuple(n + 1 for n in before), "one retry, one failover, one failed-over request")
    assert gateway.metric("hapax_provider_healthy", provider="primary") == 1.0
    assert gateway.metric("hapax_provider_health_checks_total", provider="primary", result="success") >= 1
