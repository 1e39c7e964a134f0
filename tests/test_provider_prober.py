"""ext_proc's provider prober against the real fake providers."""

from __future__ import annotations

import asyncio

import pytest

from ext_proc.provider_health import HealthCheckSettings, ProviderHealth, ProviderProber
from ext_proc.providers import translator_for
from ext_proc.runtime import Provider
from hapax.fakes import FakeAnthropic, FakeOllama, FakeOpenAI, Hang, Status

FAST = HealthCheckSettings(interval=0.05, timeout=0.5, healthy_threshold=2, unhealthy_threshold=3)


def provider_for(fake, kind: str, name: str = "p", key: str = "test-key") -> Provider:
    base_path = "/v1" if kind == "openai" else ""
    return Provider(name=name, type=kind, model="m", aliases=(), base_url=fake.base_url,
                    host=f"127.0.0.1:{fake.port}", base_path=base_path, api_key=key, timeout=30.0)


async def until(predicate, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


@pytest.fixture()
async def prober():
    prober = ProviderProber(translator_for)
    yield prober
    await prober.close()


@pytest.mark.parametrize("fake_cls,kind,path,header", [
    (FakeOpenAI, "openai", "/v1/models", ("authorization", "Bearer test-key")),
    (FakeAnthropic, "anthropic", "/v1/models", ("x-api-key", "test-key")),
    (FakeOllama, "ollama", "/api/tags", None),
])
async def test_each_provider_type_is_probed_on_its_cheap_endpoint_with_its_credential(
        prober, fake_cls, kind, path, header):
    async with fake_cls() as fake:
        prober.update({"p": provider_for(fake, kind)}, {"p": FAST})
        await until(lambda: prober.state("p").checks >= 1)
        probe = fake.requests[0]
        assert (probe.method, probe.path) == ("GET", path)
        if header:
            assert probe.headers[header[0]] == header[1]
        assert prober.state("p").healthy and prober.state("p").last_error == ""


async def test_a_failing_provider_flips_after_the_thresholds_both_ways(prober):
    async with FakeOpenAI() as fake:
        fake.inject(Status(503), times=None)
        prober.update({"p": provider_for(fake, "openai")}, {"p": FAST})
        state = prober.state("p")
        await until(lambda: not state.healthy)
        assert state.consecutive_failures == FAST.unhealthy_threshold  # not one probe earlier
        assert state.last_error == "HTTP 503"
        fake.clear_faults()
        await until(lambda: state.healthy)
        assert state.consecutive_successes == FAST.healthy_threshold


async def test_refused_connections_and_hangs_count_as_failures(prober):
    async with FakeOpenAI() as refusing, FakeOpenAI() as hanging:
        await refusing.refuse_connections()
        hanging.inject(Hang(), times=None)
        settings = HealthCheckSettings(interval=0.2, timeout=0.1, healthy_threshold=1, unhealthy_threshold=1)
        prober.update({"a": provider_for(refusing, "openai", "a"), "b": provider_for(hanging, "openai", "b")},
                      {"a": settings, "b": settings})
        await until(lambda: not prober.state("a").healthy and not prober.state("b").healthy)
        assert prober.state("a").last_error == "connection refused"
        assert prober.state("b").last_error == "timed out after 0.1s"
        await refusing.accept_connections()


async def test_the_key_never_appears_in_the_reported_error(prober):
    async with FakeOpenAI(api_key="the-right-key") as fake:
        prober.update({"p": provider_for(fake, "openai", key="sk-WRONG-secret")}, {"p": FAST})
        await until(lambda: not prober.state("p").healthy)
        assert prober.state("p").last_error == "HTTP 401"
        assert "sk-WRONG-secret" not in repr(prober.states())


async def test_update_follows_changed_and_removed_providers(prober):
    async with FakeOpenAI() as old, FakeOpenAI() as new:
        prober.update({"p": provider_for(old, "openai")}, {"p": FAST})
        await until(lambda: len(old.requests) >= 1)
        prober.update({"p": provider_for(new, "openai")}, {"p": FAST})
        await until(lambda: len(new.requests) >= 1)
        settled = len(old.requests)
        await asyncio.sleep(0.3)
        assert len(old.requests) <= settled + 1  # at most a probe already in flight
        prober.update({}, {})
        assert prober.state("p") is None
        count = len(new.requests)
        await asyncio.sleep(0.3)
        assert len(new.requests) <= count + 1


def test_verdict_starts_healthy_until_proven_down():
    state = ProviderHealth("p")
    assert state.healthy and state.last_checked is None
    settings = HealthCheckSettings(unhealthy_threshold=2)
    assert state.record("HTTP 500", settings) is False and state.healthy
    assert state.record("HTTP 500", settings) is True and not state.healthy
