"""ext_proc's background provider prober, against the real fake providers.

Timing: probes run every 50 ms and tests poll with generous deadlines; exact
counts at a verdict flip are read from the transition log records (written at
the flip), never from wall-clock assertions.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import aiohttp
import pytest

from ext_proc.provider_health import (
    MAX_HOLD_OFF_SECONDS,
    HoldOff,
    HoldOffBoard,
    ProviderHealth,
    ProviderProber,
    VerdictBoard,
    retry_after_seconds,
)
from ext_proc.runtime import HealthCheckSettings, Provider
from ext_proc.translators import translator_for
from hapax.fakes import FakeAnthropic, FakeOllama, FakeOpenAI, Hang, Reset, Status

FAST = HealthCheckSettings(interval=0.05, timeout=0.5, healthy_threshold=2, unhealthy_threshold=3)
LOGGER = "hapax.ext_proc.health"


def provider_for(fake, kind: str, name: str = "p", key: str = "test-key") -> Provider:
    return Provider(name=name, type=kind, model="m", aliases=(), base_url=fake.base_url,
                    host=f"127.0.0.1:{fake.port}", base_path="/v1" if kind == "openai" else "",
                    api_key=key, timeout=30.0)


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def transitions(caplog: pytest.LogCaptureFixture, name: str = "p") -> list[tuple[str, int, str]]:
    return [(r.levelname, r.consecutive, r.reason) for r in caplog.records
            if r.name == LOGGER and getattr(r, "provider", None) == name and hasattr(r, "consecutive")]


def probe_tasks() -> list[asyncio.Task]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("hapax-probe-") and not t.done()]


@pytest.fixture()
async def prober():
    prober = ProviderProber(translator_for)
    yield prober
    await prober.close()


@pytest.fixture()
def transition_log(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    return caplog


# -- what is sent ------------------------------------------------------------------


@pytest.mark.parametrize("fake_cls,kind,path,expected,absent", [
    (FakeOpenAI, "openai", "/v1/models", {"authorization": "Bearer test-key"}, {"x-api-key"}),
    (FakeAnthropic, "anthropic", "/v1/models",
     {"x-api-key": "test-key", "anthropic-version": "2023-06-01"}, {"authorization"}),
    (FakeOllama, "ollama", "/api/tags", {"authorization": "Bearer test-key"}, {"x-api-key"}),
])
async def test_each_provider_type_is_probed_with_its_own_credential_on_its_cheap_endpoint(
        prober, fake_cls, kind, path, expected, absent):
    async with fake_cls() as fake:
        prober.update({"p": provider_for(fake, kind)}, {"p": FAST})
        await until(lambda: prober.state("p").checks >= 1)
        probe = fake.requests[0]
        assert (probe.method, probe.path, probe.raw) == ("GET", path, b"")
        assert {h: probe.headers.get(h) for h in expected} == expected
        assert not absent & set(probe.headers)
        state = prober.state("p")
        assert state.healthy and state.last_error == "" and state.last_checked is not None


@pytest.mark.parametrize("fake_cls,kind", [(FakeOpenAI, "openai"), (FakeOllama, "ollama")])
async def test_a_provider_without_a_key_is_probed_without_credentials(prober, fake_cls, kind):
    async with fake_cls(api_key=None) as fake:
        prober.update({"p": provider_for(fake, kind, key="")}, {"p": FAST})
        await until(lambda: prober.state("p").checks >= 1)
        assert "authorization" not in fake.requests[0].headers
        assert prober.state("p").last_error == ""


@pytest.mark.parametrize("kind,base_path,path", [
    ("openai", "/proxy/v1", "/proxy/v1/models"),
    ("anthropic", "/proxy", "/proxy/v1/models"),
    ("ollama", "/proxy", "/proxy/api/tags"),
])
def test_the_probe_path_keeps_the_base_url_prefix(kind, base_path, path):
    provider = Provider(name="p", type=kind, model="m", aliases=(), base_url=f"https://gw.example{base_path}",
                        host="gw.example", base_path=base_path, api_key="k", timeout=30.0)
    probe = translator_for(kind).health_probe(provider)
    assert (probe.path, probe.body) == (path, b"")


# -- the verdict -------------------------------------------------------------------


def test_a_new_provider_is_healthy_until_proven_down():
    state = ProviderHealth("p")
    assert state.healthy and state.last_checked is None and state.checks == 0
    settings = HealthCheckSettings(unhealthy_threshold=2, healthy_threshold=2)
    assert state.record("HTTP 500", settings) is False and state.healthy
    assert state.record("HTTP 500", settings) is True and not state.healthy
    assert state.record("", settings) is False and not state.healthy
    assert state.record("", settings) is True and state.healthy
    assert (state.checks, state.failures, state.last_error) == (4, 2, "")


async def test_a_provider_is_reported_healthy_before_its_first_probe_completes(prober):
    async with FakeOpenAI() as fake:
        fake.inject(Hang(), times=None)
        prober.update({"p": provider_for(fake, "openai")}, {"p": FAST})
        assert prober.state("p") == ProviderHealth("p")
        await until(lambda: len(fake.requests) >= 1)
        assert prober.state("p").healthy and prober.state("p").checks == 0


async def test_a_503_provider_goes_down_after_exactly_unhealthy_threshold_failures_and_back_after_healthy_threshold(
        prober, transition_log):
    async with FakeOpenAI() as fake:
        fake.inject(Status(503), times=None)
        prober.update({"p": provider_for(fake, "openai")}, {"p": FAST})
        state = prober.state("p")
        await until(lambda: not state.healthy)
        assert state.last_error == "HTTP 503"
        assert transitions(transition_log) == [("WARNING", FAST.unhealthy_threshold, "HTTP 503")]
        fake.clear_faults()
        await until(lambda: state.healthy)
        assert state.last_error == ""
        assert [t[:2] for t in transitions(transition_log)] == [
            ("WARNING", FAST.unhealthy_threshold), ("INFO", FAST.healthy_threshold)]


async def test_fewer_failures_than_the_threshold_never_take_a_provider_down(prober, transition_log):
    async with FakeOpenAI() as fake:
        fake.inject(Status(503), times=FAST.unhealthy_threshold - 1)
        prober.update({"p": provider_for(fake, "openai")}, {"p": FAST})
        state = prober.state("p")
        await until(lambda: state.checks >= FAST.unhealthy_threshold + 2)
        assert state.healthy and state.failures == FAST.unhealthy_threshold - 1
        assert transitions(transition_log) == []


async def test_the_verdict_flips_exactly_at_the_thresholds_both_ways(prober, transition_log):
    settings = HealthCheckSettings(interval=0.05, timeout=0.5, healthy_threshold=3, unhealthy_threshold=2)
    async with FakeOpenAI() as fake:
        # Probes 1-2 fail, 3 on succeed: down at probe 2, up again at probe 5.
        fake.inject(Status(500), times=2)
        prober.update({"p": provider_for(fake, "openai")}, {"p": settings})
        state = prober.state("p")
        await until(lambda: state.checks >= 6)
        assert state.healthy and state.failures == 2
        assert transitions(transition_log) == [("WARNING", 2, "HTTP 500"),
                                               ("INFO", 3, "3 probes in a row passed")]


async def test_refused_connections_count_as_failures_and_a_provider_that_listens_again_recovers(prober):
    settings = HealthCheckSettings(interval=0.05, timeout=0.5, healthy_threshold=1, unhealthy_threshold=1)
    async with FakeOpenAI() as fake:
        await fake.refuse_connections()
        prober.update({"p": provider_for(fake, "openai")}, {"p": settings})
        state = prober.state("p")
        await until(lambda: not state.healthy)
        assert state.last_error == "connection refused"
        await fake.accept_connections()
        await until(lambda: state.healthy)
        assert state.last_error == ""


async def test_a_hanging_provider_fails_on_timeout(prober):
    settings = HealthCheckSettings(interval=0.05, timeout=0.1, healthy_threshold=1, unhealthy_threshold=2)
    async with FakeOpenAI() as fake:
        fake.inject(Hang(), times=None)
        prober.update({"p": provider_for(fake, "openai")}, {"p": settings})
        state = prober.state("p")
        await until(lambda: not state.healthy)
        assert state.last_error == "timed out after 0.1s"
        assert state.consecutive_failures >= 2
        fake.clear_faults()
        await until(lambda: state.healthy)


async def test_a_provider_resetting_connections_fails_and_recovers_on_fresh_connections(prober):
    settings = HealthCheckSettings(interval=0.05, timeout=0.5, healthy_threshold=2, unhealthy_threshold=2)
    async with FakeOpenAI() as fake:
        fake.inject(Reset(), times=None)
        prober.update({"p": provider_for(fake, "openai")}, {"p": settings})
        state = prober.state("p")
        await until(lambda: not state.healthy)
        assert state.last_error == "connection closed by provider"
        fake.clear_faults()
        await until(lambda: state.healthy)
        assert state.last_error == ""


async def test_the_api_key_never_appears_in_what_is_reported(prober, transition_log):
    secret = "sk-WRONG-secret-0123"
    settings = HealthCheckSettings(interval=0.05, timeout=0.1, healthy_threshold=1, unhealthy_threshold=1)
    async with FakeOpenAI(api_key="the-right-key") as wrong, FakeOpenAI() as hanging, FakeOpenAI() as gone:
        hanging.inject(Hang(), times=None)
        await gone.refuse_connections()
        providers = {name: provider_for(fake, "openai", name, key=secret)
                     for name, fake in (("wrong", wrong), ("hanging", hanging), ("gone", gone))}
        prober.update(providers, {name: settings for name in providers})
        await until(lambda: all(not s.healthy for s in prober.states().values()))
        assert prober.state("wrong").last_error == "refused the gateway's key (HTTP 401)"
        assert secret not in repr(prober.states())
        assert secret not in repr(providers)
        assert all(secret not in r.getMessage() and secret not in repr(vars(r)) for r in transition_log.records)


# -- following the configuration ----------------------------------------------------


async def test_a_changed_base_url_moves_probing_to_the_new_endpoint_with_a_fresh_verdict(prober):
    async with FakeOpenAI() as old, FakeOpenAI() as new:
        old.inject(Status(503), times=None)
        prober.update({"p": provider_for(old, "openai")}, {"p": FAST})
        await until(lambda: not prober.state("p").healthy)
        prober.update({"p": provider_for(new, "openai")}, {"p": FAST})
        state = prober.state("p")
        assert state.healthy and state.checks == 0  # another endpoint: its own verdict
        await until(lambda: len(new.requests) >= 2 and state.checks >= 2)
        settled = len(old.requests)
        await asyncio.sleep(0.3)
        assert len(old.requests) <= settled + 1  # at most a probe that was already in flight
        assert state.healthy and state.failures == 0


async def test_changed_settings_restart_probing_but_keep_the_verdict_of_the_same_endpoint(prober):
    async with FakeOpenAI() as fake:
        fake.inject(Status(503), times=None)
        prober.update({"p": provider_for(fake, "openai")}, {"p": FAST})
        state = prober.state("p")
        await until(lambda: not state.healthy)
        slower = HealthCheckSettings(interval=0.1, timeout=0.5, healthy_threshold=1, unhealthy_threshold=3)
        prober.update({"p": provider_for(fake, "openai")}, {"p": slower})
        assert prober.state("p") is state and not state.healthy
        fake.clear_faults()
        await until(lambda: state.healthy)
        assert state.consecutive_successes >= 1


async def test_an_unchanged_update_does_not_restart_probing(prober):
    settings = HealthCheckSettings(interval=60.0, timeout=0.5)
    async with FakeOpenAI() as fake:
        prober.update({"p": provider_for(fake, "openai")}, {"p": settings})
        await until(lambda: prober.state("p").checks == 1)  # the first probe runs at once
        for _ in range(3):
            prober.update({"p": provider_for(fake, "openai")}, {"p": settings})
        await asyncio.sleep(0.2)
        assert len(fake.requests) == 1 and len(probe_tasks()) == 1


async def test_a_removed_provider_stops_being_probed_and_reported(prober):
    async with FakeOpenAI() as kept, FakeOpenAI() as removed:
        prober.update({"kept": provider_for(kept, "openai", "kept"),
                       "removed": provider_for(removed, "openai", "removed")},
                      {"kept": FAST, "removed": FAST})
        await until(lambda: prober.state("removed").checks >= 1)
        prober.update({"kept": provider_for(kept, "openai", "kept")}, {"kept": FAST})
        assert prober.state("removed") is None and set(prober.states()) == {"kept"}
        await asyncio.sleep(0.05)
        count = len(removed.requests)
        await asyncio.sleep(0.3)
        assert len(removed.requests) == count
        assert [t.get_name() for t in probe_tasks()] == ["hapax-probe-kept"]


async def test_a_provider_without_explicit_settings_uses_its_own_health_check(prober):
    async with FakeOpenAI() as fake:
        fake.inject(Status(503), times=None)
        own = HealthCheckSettings(interval=0.05, timeout=0.5, healthy_threshold=1, unhealthy_threshold=1)
        provider = Provider(name="p", type="openai", model="m", aliases=(), base_url=fake.base_url,
                            host=f"127.0.0.1:{fake.port}", base_path="/v1", api_key="test-key",
                            timeout=30.0, health_check=own)
        prober.update({"p": provider}, {})
        await until(lambda: prober.state("p").checks >= 1)
        assert not prober.state("p").healthy  # one failure was enough


def test_unusable_settings_fall_back_to_the_defaults():
    assert HealthCheckSettings(0, 0, 0, 0).effective() == HealthCheckSettings()
    assert FAST.effective() == FAST


async def test_close_cancels_every_probe_and_closes_the_session():
    sessions: list[aiohttp.ClientSession] = []
    reuses_connections: list[bool] = []

    def factory(**kwargs) -> aiohttp.ClientSession:
        reuses_connections.append(not kwargs["connector"].force_close)
        session = aiohttp.ClientSession(**kwargs)
        sessions.append(session)
        return session

    prober = ProviderProber(translator_for, session_factory=factory)
    async with FakeOpenAI() as fast, FakeOpenAI() as hanging:
        hanging.inject(Hang(), times=None)
        prober.update({"a": provider_for(fast, "openai", "a"), "b": provider_for(hanging, "openai", "b")},
                      {"a": FAST, "b": FAST})
        await until(lambda: prober.state("a").checks >= 2 and len(hanging.requests) >= 1)
        await prober.close()
        assert probe_tasks() == []
        assert len(sessions) == 1 and sessions[0].closed  # one session shared by every provider
        assert reuses_connections == [False]
        count = len(fast.requests)
        await asyncio.sleep(0.2)
        assert len(fast.requests) == count
        assert prober.state("a").checks >= 2  # the last verdicts stay readable


# -- retry-after: a provider that says when to come back ------------------------


@pytest.mark.parametrize("value,seconds", [
    ("7", 7.0), (" 0 ", None), ("Thu, 01 Jan 2026 00:00:30 GMT", 30.0),
    ("Thu, 01 Jan 2026 00:00:00 GMT", None), ("-5", None), ("1.5", None), ("soon", None), ("", None),
])
def test_retry_after_is_read_as_delay_seconds_or_an_http_date(value, seconds):
    now = 1767225600.0  # 2026-01-01T00:00:00Z
    assert retry_after_seconds(value, now=now) == seconds


def test_a_hold_off_takes_a_healthy_provider_out_of_rotation_until_it_passes():
    state = ProviderHealth("p")
    state.held_until = 100.0
    assert state.healthy and not state.in_rotation(now=99.0)
    assert state.hold_off_remaining(now=99.0) == 1.0
    assert state.in_rotation(now=100.0)


async def test_hold_off_keeps_the_longest_wait_and_is_capped(prober):
    async with FakeOpenAI() as fake:
        prober.update({"p": provider_for(fake, "openai")}, {"p": HealthCheckSettings(interval=3600)})
    prober.hold_off("p", 30)
    prober.hold_off("p", 5)  # a shorter retry-after does not shorten the first
    assert 29 < prober.state("p").hold_off_remaining() <= 30
    prober.hold_off("p", 10_000)
    assert prober.state("p").hold_off_remaining() <= MAX_HOLD_OFF_SECONDS
    prober.hold_off("unknown", 30)  # a provider no longer configured: nothing to hold
    assert prober.state("unknown") is None


async def test_a_hold_off_seen_by_one_worker_holds_for_every_worker(tmp_path):
    board_dir = tmp_path / "hold-off"
    first = ProviderProber(translator_for, hold_off_board=HoldOffBoard(board_dir))
    second = ProviderProber(translator_for, hold_off_board=HoldOffBoard(board_dir))
    try:
        async with FakeOpenAI() as fake:
            for prober in (first, second):
                prober.update({"p": provider_for(fake, "openai")}, {"p": HealthCheckSettings(interval=3600)})
        first.hold_off("p", 30)
        assert not second.state("p").in_rotation()  # the worker Envoy polls knows
        assert 29 < second.states()["p"].hold_off_remaining() <= 30
    finally:
        await first.close()
        await second.close()


# ---------------------------------------------------------------- why a provider may not serve


@pytest.mark.parametrize(("state", "reason"), [
    (ProviderHealth("p", last_checked=1.0), None),  # serving: nothing to say
    (ProviderHealth("p", last_error="connection refused"), "connection refused"),  # failing, still in
    (ProviderHealth("p", healthy=False, last_error="refused the gateway's key (HTTP 401)"),
     "refused the gateway's key (HTTP 401)"),
    (ProviderHealth("p", held_until=138.2, held_after=429), "holding off for 39 s after a 429"),
    (ProviderHealth("p", held_until=110.0), "holding off for 10 s after its retry-after"),
    (ProviderHealth("p", healthy=False), "recovering: its last probe passed, not yet enough of them in a row"),
])
def test_a_provider_that_may_not_serve_says_why_in_words_a_client_may_read(state, reason):
    assert state.reason(now=100.0) == reason
    assert state.serving(now=100.0) is (reason is None)


async def test_a_refused_key_is_reported_as_such_not_as_a_bare_status(prober):
    async with FakeOpenAI(api_key="the-right-key") as fake:
        prober.update({"p": provider_for(fake, "openai", key="wrong")}, {"p": HealthCheckSettings(interval=3600)})
        await until(lambda: prober.state("p").last_checked is not None)
    assert prober.unavailable_reasons(["p"]) == {"p": "refused the gateway's key (HTTP 401)"}


async def test_a_worker_that_does_not_probe_reports_the_probing_workers_verdicts(tmp_path):
    probing = ProviderProber(translator_for, verdict_board=VerdictBoard(tmp_path / "verdicts"))
    other = ProviderProber(translator_for, verdict_board=VerdictBoard(tmp_path / "verdicts"))  # --no-probe
    try:
        async with FakeOpenAI() as fake:
            await fake.refuse_connections()
            probing.update({"p": provider_for(fake, "openai")},
                           {"p": HealthCheckSettings(interval=0.05, unhealthy_threshold=1)})
            await until(lambda: not probing.state("p").healthy)
        seen = other.state("p")
        assert seen is not None and not seen.healthy and seen.last_error == "connection refused"
        assert other.unavailable_reasons(["p", "unprobed"]) == {"p": "connection refused"}
    finally:
        await probing.close()


async def test_a_hold_off_tells_every_worker_which_status_asked_for_it(tmp_path):
    board = HoldOffBoard(tmp_path / "hold-off")
    ProviderProber(translator_for, hold_off_board=board).hold_off("p", 30, 429)
    assert board.get("p").status == 429
    other = ProviderProber(translator_for, hold_off_board=HoldOffBoard(tmp_path / "hold-off"),
                           verdict_board=VerdictBoard(tmp_path / "verdicts"))
    VerdictBoard(tmp_path / "verdicts").publish(ProviderHealth("p", last_checked=1.0))
    reason = other.unavailable_reasons(["p"])["p"]
    assert reason in ("holding off for 30 s after a 429", "holding off for 29 s after a 429"), reason
    assert HoldOffBoard(None).get("p") == HoldOff()
