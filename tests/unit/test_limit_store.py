"""The admission-control counter store, on a real SQLite file and a real redis-server.

Every behaviour runs against both stores (the ``backend`` fixture); the tests of one
store's own means (the file's mode, Redis's keys, a backend that is down) follow them.
Times are passed as ``now``: the windows are the ones of those instants, whatever the clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import multiprocessing
import sqlite3
import stat
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest
import redis.asyncio

from ext_proc.limits import (
    Decision,
    Limit,
    LimitStore,
    LimitStoreUnavailable,
    Metric,
    Period,
    RedisLimitStore,
    SqliteLimitStore,
    store_from_url,
    window_bounds,
)
from tests.redis_server import RedisServer, running_redis

UTC = datetime.UTC
NOON = datetime.datetime(2024, 5, 17, 12, 0, tzinfo=UTC).timestamp()
REQUESTS, TOKENS, SPEND = Metric.REQUESTS, Metric.TOKENS, Metric.SPEND
KEY_TOKENS = Limit("key:search-team", TOKENS, Period.MINUTE, 1000)
KEY_REQUESTS = Limit("key:search-team", REQUESTS, Period.MINUTE, 10)
DEPARTMENT_TOKENS = Limit("department:search", TOKENS, Period.MINUTE, 1000)


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    return datetime.datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    # One server for the module: a start costs more than all the tests that share it.
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


class Backend:
    """The SQLite file or the Redis that the stores of one test share, and what a test does behind their back."""

    def __init__(self, path: Path, server: RedisServer | None) -> None:
        self.path, self.server = path, server
        self.opened: list[LimitStore] = []

    def new_store(self) -> LimitStore:
        store: LimitStore = (SqliteLimitStore(self.path) if self.server is None else RedisLimitStore(self.server.url))
        self.opened.append(store)
        return store

    async def forget_counters(self) -> None:
        """What the end of the windows does (and, for Redis, a failover that lost the last writes)."""
        if self.server is None:
            with contextlib.closing(sqlite3.connect(self.path, isolation_level=None)) as db:
                db.execute("DELETE FROM counters")
            return
        client = redis.asyncio.Redis.from_url(self.server.url)
        keys = await client.keys("hapax:limits:counter:*")
        await client.delete(*keys)
        await client.aclose()


@pytest.fixture(params=["sqlite", "redis"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    server = None
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
        server.command("FLUSHALL")
    shared = Backend(tmp_path / "limits.db", server)
    yield shared
    for store in shared.opened:
        await store.close()


@pytest.fixture
def store(backend: Backend) -> LimitStore:
    return backend.new_store()


async def used(store: LimitStore, limits: Sequence[Limit], now: float = NOON) -> list[int]:
    return [state.used for state in await store.states(limits, now)]


async def used_then_close(store: LimitStore, limits: Sequence[Limit]) -> list[int]:
    counts = await used(store, limits)
    await store.close()
    return counts


async def reserve_tokens(store: LimitStore, request_id: str, tokens: int, limits: Sequence[Limit] = (KEY_TOKENS,),
                         now: float = NOON) -> Decision:
    return await store.reserve(request_id, limits, {TOKENS: tokens}, now)


# ---------------------------------------------------------------- atomicity


async def test_concurrent_reserves_admit_exactly_what_fits(store: LimitStore) -> None:
    decisions = await asyncio.gather(*(reserve_tokens(store, f"r{i}", 100) for i in range(40)))
    assert [d.admitted for d in decisions].count(True) == 10
    refused = [d for d in decisions if not d.admitted]
    assert len(refused) == 30
    assert all(d.refused_by is not None and d.refused_by.limit == KEY_TOKENS for d in refused)
    assert await used(store, [KEY_TOKENS]) == [1000]


async def test_stores_sharing_a_backend_admit_exactly_what_fits_in_total(backend: Backend) -> None:
    stores = [backend.new_store(), backend.new_store()]
    decisions = await asyncio.gather(*(reserve_tokens(stores[i % 2], f"r{i}", 100) for i in range(40)))
    assert [d.admitted for d in decisions].count(True) == 10
    assert await used(stores[0], [KEY_TOKENS]) == await used(stores[1], [KEY_TOKENS]) == [1000]


ROOMY = Limit("key:search-team", TOKENS, Period.MINUTE, 50_000)


def reserve_in_a_process(path: Path, worker: int, start: Barrier, results: Queue[int]) -> None:
    """One process's share of the cross-process test: 500 reserves of 100 tokens against ROOMY."""
    store = SqliteLimitStore(path)

    async def reserve_all() -> int:
        # Both processes hold the file open and run their loop before either reserves.
        start.wait()
        decisions = [await reserve_tokens(store, f"p{worker}-{i}", 100, [ROOMY]) for i in range(500)]
        await store.close()
        return [d.admitted for d in decisions].count(True)

    results.put(asyncio.run(reserve_all()))


def test_processes_sharing_a_sqlite_file_admit_exactly_what_fits_in_total(tmp_path: Path) -> None:
    # More reserves than the other tests so that the two processes overlap while admitting.
    spawn = multiprocessing.get_context("spawn")
    start, results = spawn.Barrier(2, timeout=30), spawn.Queue()  # the timeout bounds a broken run
    workers = [spawn.Process(target=reserve_in_a_process, args=(tmp_path / "limits.db", n, start, results))
               for n in range(2)]
    for worker in workers:
        worker.start()
    # Joined before their results are read, so that a worker that failed fails the test at
    # once (a few small ints fit the queue's pipe: the workers can exit before they are read).
    for worker in workers:
        worker.join(timeout=60)
    assert [worker.exitcode for worker in workers] == [0, 0]
    admitted = [results.get(timeout=5) for _ in workers]
    assert sum(admitted) == 500
    assert asyncio.run(used_then_close(SqliteLimitStore(tmp_path / "limits.db"), [ROOMY])) == [50_000]


# ---------------------------------------------------------------- reserve


async def test_a_request_is_refused_when_any_of_its_limits_would_be_exceeded(store: LimitStore) -> None:
    colleague = Limit("key:colleague", TOKENS, Period.MINUTE, 1000)
    assert (await reserve_tokens(store, "colleague", 1000, [colleague, DEPARTMENT_TOKENS])).admitted
    decision = await reserve_tokens(store, "mine", 1, [KEY_TOKENS, DEPARTMENT_TOKENS])
    assert not decision.admitted
    assert decision.refused_by == decision.states[1]
    assert decision.refused_by.limit == DEPARTMENT_TOKENS
    assert [(s.used, s.remaining) for s in decision.states] == [(0, 1000), (1000, 0)]


async def test_a_refused_request_charges_no_counter(store: LimitStore) -> None:
    await reserve_tokens(store, "first", 900, [DEPARTMENT_TOKENS])
    limits = [KEY_REQUESTS, KEY_TOKENS, DEPARTMENT_TOKENS]
    decision = await store.reserve("second", limits, {REQUESTS: 1, TOKENS: 200}, NOON)
    assert not decision.admitted
    assert await used(store, limits) == [0, 0, 900]
    assert not await store.settle("second", {TOKENS: 200})  # nothing was recorded either


async def test_an_admitted_request_reports_its_limits_as_it_leaves_them(store: LimitStore) -> None:
    decision = await store.reserve("r", [KEY_REQUESTS, KEY_TOKENS], {REQUESTS: 1, TOKENS: 300}, NOON)
    assert decision.admitted and decision.refused_by is None
    assert [(s.limit, s.used, s.remaining) for s in decision.states] == [(KEY_REQUESTS, 1, 9), (KEY_TOKENS, 300, 700)]


async def test_reserving_the_same_request_twice_charges_it_once(store: LimitStore) -> None:
    assert (await reserve_tokens(store, "r", 600)).admitted
    again = await reserve_tokens(store, "r", 600)  # 600 more would not fit: it is the same request
    assert again.admitted and again.refused_by is None
    assert [s.used for s in again.states] == [600]
    assert await store.settle("r", {TOKENS: 600})
    assert await used(store, [KEY_TOKENS]) == [600]


async def test_a_request_reserved_again_after_its_settle_is_a_new_request(store: LimitStore) -> None:
    await reserve_tokens(store, "r", 600)
    await store.settle("r", {TOKENS: 500})
    assert not (await reserve_tokens(store, "r", 600)).admitted
    assert (await reserve_tokens(store, "r", 500)).admitted
    assert await used(store, [KEY_TOKENS]) == [1000]


async def test_a_limit_asked_for_nothing_is_reported_and_refuses_only_when_over(store: LimitStore) -> None:
    limits = [KEY_REQUESTS, KEY_TOKENS]
    await reserve_tokens(store, "fills the tokens", 1000)
    exactly_full = await store.reserve("r1", limits, {REQUESTS: 1}, NOON)
    assert exactly_full.admitted
    assert [(s.used, s.remaining) for s in exactly_full.states] == [(1, 9), (1000, 0)]
    # Its tokens were reserved as 0; the settle charges what the response counted.
    assert await store.settle("r1", {REQUESTS: 1, TOKENS: 50})
    over = await store.reserve("r2", limits, {REQUESTS: 1}, NOON)
    assert not over.admitted
    assert over.refused_by is not None and over.refused_by.limit == KEY_TOKENS and over.refused_by.used == 1050


async def test_limits_on_one_counter_charge_it_once(store: LimitStore) -> None:
    tighter = Limit(KEY_TOKENS.scope, TOKENS, Period.MINUTE, 500)
    first = await reserve_tokens(store, "r1", 400, [KEY_TOKENS, tighter])
    assert first.admitted and [s.used for s in first.states] == [400, 400]
    second = await reserve_tokens(store, "r2", 200, [KEY_TOKENS, tighter])
    assert second.refused_by is not None and second.refused_by.limit == tighter
    assert await used(store, [KEY_TOKENS]) == [400]


async def test_scopes_that_differ_only_in_punctuation_have_counters_of_their_own(store: LimitStore) -> None:
    scopes = ["team:a", "team%3Aa", "team_a", "team:a:tokens"]
    limits = [Limit(scope, TOKENS, Period.MINUTE, 1000) for scope in scopes]
    for n, limit in enumerate(limits):
        assert (await reserve_tokens(store, f"r{n}", 1000, [limit])).admitted
    assert await used(store, limits) == [1000] * len(scopes)


async def test_no_limits_admit_and_record_nothing(store: LimitStore) -> None:
    assert await store.reserve("r", [], {TOKENS: 100}, NOON) == Decision(True, (), None)
    assert await store.states([], NOON) == ()
    assert not await store.settle("r", {TOKENS: 100})


async def test_states_change_nothing(store: LimitStore) -> None:
    await reserve_tokens(store, "r", 400)
    for _ in range(3):
        assert await used(store, [KEY_TOKENS, DEPARTMENT_TOKENS]) == [400, 0]


async def test_amounts_are_non_negative_integers(store: LimitStore) -> None:
    for amount in (-1, 1.5, 2**53):
        with pytest.raises(ValueError):
            await store.reserve("r", [KEY_TOKENS], {TOKENS: amount}, NOON)  # type: ignore[dict-item]
        with pytest.raises(ValueError):
            await store.settle("r", {TOKENS: amount})  # type: ignore[dict-item]
    with pytest.raises(ValueError):
        Limit("key:a", TOKENS, Period.MINUTE, -1)
    assert await used(store, [KEY_TOKENS]) == [0]


# ---------------------------------------------------------------- settle


async def test_settle_releases_the_unused_reservation(store: LimitStore) -> None:
    assert (await reserve_tokens(store, "big", 1000)).admitted
    assert await store.settle("big", {TOKENS: 300})
    assert not (await reserve_tokens(store, "too much", 701)).admitted
    assert (await reserve_tokens(store, "the rest", 700)).admitted


async def test_settle_charges_what_was_used_beyond_the_reservation(store: LimitStore) -> None:
    await reserve_tokens(store, "r", 100)
    assert await store.settle("r", {TOKENS: 1250})
    [state] = await store.states([KEY_TOKENS], NOON)
    assert (state.used, state.remaining) == (1250, 0)


async def test_settle_applies_each_metric_to_every_counter_it_reserved(store: LimitStore) -> None:
    limits = [KEY_REQUESTS, KEY_TOKENS, DEPARTMENT_TOKENS, Limit("key:search-team", SPEND, Period.MONTH, 10**9)]
    await store.reserve("r", limits, {REQUESTS: 1, TOKENS: 800, SPEND: 50_000}, NOON)
    await store.settle("r", {REQUESTS: 1, TOKENS: 120, SPEND: 7_500})
    assert await used(store, limits) == [1, 120, 120, 7_500]


async def test_large_amounts_add_up_exactly(store: LimitStore) -> None:
    budget = Limit("department:search", SPEND, Period.MONTH, 2**53 - 1)  # micro-USD: $9 billion
    await store.reserve("r", [budget], {SPEND: 10**15 + 1}, NOON)
    assert await store.settle("r", {SPEND: 3 * 10**15 + 7})
    assert await used(store, [budget]) == [3 * 10**15 + 7]
    await store.reserve("r2", [budget], {SPEND: 10**15 + 1}, NOON)
    assert await store.settle("r2", {SPEND: 1})
    assert await used(store, [budget]) == [3 * 10**15 + 8]


async def test_a_metric_missing_from_the_settle_keeps_its_reservation(store: LimitStore) -> None:
    await store.reserve("r", [KEY_REQUESTS, KEY_TOKENS], {REQUESTS: 1, TOKENS: 500}, NOON)
    assert await store.settle("r", {TOKENS: 100})
    assert await used(store, [KEY_REQUESTS, KEY_TOKENS]) == [1, 100]


async def test_a_second_settle_changes_nothing(store: LimitStore) -> None:
    await reserve_tokens(store, "r", 500)
    assert await store.settle("r", {TOKENS: 200})
    assert not await store.settle("r", {TOKENS: 100})
    assert await used(store, [KEY_TOKENS]) == [200]


async def test_settling_an_unknown_request_returns_false(store: LimitStore) -> None:
    assert not await store.settle("never reserved", {TOKENS: 100})
    assert await used(store, [KEY_TOKENS]) == [0]


async def test_settling_a_counter_that_expired_does_not_bring_it_back(backend: Backend, store: LimitStore) -> None:
    await reserve_tokens(store, "r", 100)
    await backend.forget_counters()
    assert await store.settle("r", {TOKENS: 300})
    assert await used(store, [KEY_TOKENS]) == [0]


async def test_a_counter_never_goes_below_zero(backend: Backend, store: LimitStore) -> None:
    await reserve_tokens(store, "r1", 600)
    await backend.forget_counters()  # say a Redis failover lost the charge, not the reservation
    await reserve_tokens(store, "r2", 100)
    assert await store.settle("r1", {TOKENS: 0})
    assert await used(store, [KEY_TOKENS]) == [0]
    assert (await reserve_tokens(store, "r3", 1000)).admitted


# ---------------------------------------------------------------- windows


async def test_reserves_either_side_of_a_minute_boundary_land_in_different_windows(store: LimitStore) -> None:
    before, after = at(2024, 5, 17, 12, 0, 59), at(2024, 5, 17, 12, 1, 0)
    first = await reserve_tokens(store, "r1", 1000, now=before)
    second = await reserve_tokens(store, "r2", 1000, now=after)
    assert first.admitted and second.admitted
    assert first.states[0].reset_at == after
    assert second.states[0].reset_at == at(2024, 5, 17, 12, 2, 0)
    assert await used(store, [KEY_TOKENS], before) == await used(store, [KEY_TOKENS], after) == [1000]


async def test_reset_at_is_the_end_of_each_window(store: LimitStore) -> None:
    now = at(2024, 12, 31, 23, 59, 30)
    limits = [Limit("key:a", TOKENS, period, 1000) for period in (Period.MINUTE, Period.DAY, Period.MONTH)]
    decision = await reserve_tokens(store, "r", 1, limits, now)
    assert [s.reset_at for s in decision.states] == [at(2025, 1, 1)] * 3
    decision = await reserve_tokens(store, "r2", 1, limits, at(2024, 2, 10, 8, 30))
    assert [s.reset_at for s in decision.states] == [at(2024, 2, 10, 8, 31), at(2024, 2, 11), at(2024, 3, 1)]


async def test_an_unsettled_reservation_stops_counting_when_its_window_ends(store: LimitStore) -> None:
    assert (await reserve_tokens(store, "crashed", 1000)).admitted
    assert not (await reserve_tokens(store, "same minute", 1, now=NOON + 59.9)).admitted
    next_minute = await reserve_tokens(store, "next minute", 1000, now=NOON + 60)
    assert next_minute.admitted and next_minute.states[0].used == 1000


async def test_a_settle_after_its_window_ended_leaves_the_new_window_alone(store: LimitStore) -> None:
    daily = Limit("key:search-team", TOKENS, Period.DAY, 100_000)
    await reserve_tokens(store, "long", 1000, [KEY_TOKENS, daily])
    await reserve_tokens(store, "next minute", 300, [KEY_TOKENS, daily], NOON + 60)
    assert await store.settle("long", {TOKENS: 100})
    assert await used(store, [KEY_TOKENS, daily], NOON + 60) == [300, 400]


def test_minute_and_day_windows_are_aligned_to_utc() -> None:
    just_before = at(2024, 5, 17, 12, 0, 59) + 0.999
    assert window_bounds(Period.MINUTE, just_before) == (at(2024, 5, 17, 12), at(2024, 5, 17, 12, 1))
    assert window_bounds(Period.MINUTE, at(2024, 5, 17, 12, 1)) == (at(2024, 5, 17, 12, 1), at(2024, 5, 17, 12, 2))
    assert window_bounds(Period.DAY, at(2024, 5, 17, 23, 59, 59)) == (at(2024, 5, 17), at(2024, 5, 18))
    assert window_bounds(Period.DAY, at(2024, 5, 18)) == (at(2024, 5, 18), at(2024, 5, 19))


def test_month_windows_are_calendar_months() -> None:
    assert window_bounds(Period.MONTH, at(2024, 12, 31, 23, 59, 59)) == (at(2024, 12, 1), at(2025, 1, 1))
    assert window_bounds(Period.MONTH, at(2025, 1, 1)) == (at(2025, 1, 1), at(2025, 2, 1))
    leap = window_bounds(Period.MONTH, at(2024, 2, 29, 12))
    assert leap == (at(2024, 2, 1), at(2024, 3, 1)) and leap[1] - leap[0] == 29 * 86_400
    common = window_bounds(Period.MONTH, at(2023, 2, 28, 12))
    assert common == (at(2023, 2, 1), at(2023, 3, 1)) and common[1] - common[0] == 28 * 86_400


# ---------------------------------------------------------------- SQLite's own


async def test_the_sqlite_file_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    store = SqliteLimitStore(tmp_path / "limits.db")
    await reserve_tokens(store, "r", 100)  # the -wal and -shm files exist while a connection is open
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in tmp_path.iterdir()}
    await store.close()
    assert modes == {"limits.db": 0o600, "limits.db-wal": 0o600, "limits.db-shm": 0o600}


async def test_a_sqlite_file_locked_past_busy_timeout_raises_limit_store_unavailable(tmp_path: Path) -> None:
    store = SqliteLimitStore(tmp_path / "limits.db", busy_timeout=0.05)
    other = sqlite3.connect(tmp_path / "limits.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another worker holding the write lock
    with pytest.raises(LimitStoreUnavailable, match="locked"):
        await reserve_tokens(store, "r", 100)
    with pytest.raises(LimitStoreUnavailable):
        await store.settle("r", {TOKENS: 100})
    other.execute("ROLLBACK")
    other.close()
    assert (await reserve_tokens(store, "r", 100)).admitted
    await store.close()


async def test_a_reserve_waits_for_the_write_lock_without_blocking_the_event_loop(tmp_path: Path) -> None:
    store = SqliteLimitStore(tmp_path / "limits.db", busy_timeout=30)
    other = sqlite3.connect(tmp_path / "limits.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    waiting = asyncio.create_task(reserve_tokens(store, "r", 100))
    for _ in range(5):
        await asyncio.sleep(0.001)  # the loop runs on while the reserve waits
    assert not waiting.done()
    other.execute("ROLLBACK")
    other.close()
    assert (await waiting).admitted
    await store.close()


async def test_sqlite_rows_are_deleted_once_their_windows_have_ended(tmp_path: Path) -> None:
    store = SqliteLimitStore(tmp_path / "limits.db", prune_every=1)
    await reserve_tokens(store, "never settled", 100)
    await reserve_tokens(store, "an hour later", 100, now=NOON + 3600)
    await store.close()
    with contextlib.closing(sqlite3.connect(tmp_path / "limits.db")) as db:
        rows = {table: db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                for table in ("counters", "reservations")}
    assert rows == {"counters": 1, "reservations": 1}


# ---------------------------------------------------------------- Redis's own


async def test_every_redis_key_expires(redis_server: RedisServer) -> None:
    redis_server.command("FLUSHALL")
    store = RedisLimitStore(redis_server.url)
    daily = Limit("key:search-team", TOKENS, Period.DAY, 100_000)
    await reserve_tokens(store, "unsettled", 100, [KEY_TOKENS, daily], now=NOON)
    await reserve_tokens(store, "settled", 100, [KEY_TOKENS, daily], now=NOON)
    await store.settle("settled", {TOKENS: 500})
    await store.close()
    client = redis.asyncio.Redis.from_url(redis_server.url, decode_responses=True)
    ttls = {key: await client.pttl(key) for key in await client.keys("*")}
    await client.aclose()
    minute = f"hapax:limits:counter:key%3Asearch-team:tokens:minute:{int(NOON)}"
    day = f"hapax:limits:counter:key%3Asearch-team:tokens:day:{int(at(2024, 5, 17))}"
    assert set(ttls) == {minute, day, "hapax:limits:reservation:unsettled"}
    # In ms, counted from NOON: to the end of each window; the reservation's a minute past the day's end.
    assert 0 < ttls[minute] <= 60_000 < ttls[day] <= 12 * 3_600_000
    assert ttls[day] < ttls["hapax:limits:reservation:unsettled"] <= 12 * 3_600_000 + 60_000


async def test_a_redis_that_is_not_there_raises_limit_store_unavailable(tmp_path: Path) -> None:
    with running_redis(tmp_path) as server:
        url = server.url  # a port that answered, now closed
    store = RedisLimitStore(url)
    # wait_for only bounds a broken run (a hang); the socket timeouts are what answer.
    with pytest.raises(LimitStoreUnavailable):
        await asyncio.wait_for(reserve_tokens(store, "r", 100), 30)
    with pytest.raises(LimitStoreUnavailable):
        await asyncio.wait_for(store.settle("r", {TOKENS: 100}), 30)
    with pytest.raises(LimitStoreUnavailable):
        await asyncio.wait_for(store.states([KEY_TOKENS], NOON), 30)
    await store.close()


async def test_a_redis_that_stops_raises_limit_store_unavailable(tmp_path: Path) -> None:
    with running_redis(tmp_path) as server:
        store = RedisLimitStore(server.url)
        assert (await reserve_tokens(store, "r1", 100)).admitted
    # Its pooled connection is now dead, and a new one refused.
    with pytest.raises(LimitStoreUnavailable):
        await asyncio.wait_for(reserve_tokens(store, "r2", 100), 30)
    await store.close()


async def test_a_redis_that_does_not_answer_raises_limit_store_unavailable(tmp_path: Path) -> None:
    with running_redis(tmp_path) as server:
        store = RedisLimitStore(server.url, timeout=0.2)  # shorter than the default 1 s: the same path, sooner
        assert (await reserve_tokens(store, "r1", 100)).admitted
        server.freeze()
        with pytest.raises(LimitStoreUnavailable, match="[Tt]imeout"):
            await asyncio.wait_for(reserve_tokens(store, "r2", 100), 30)
        server.thaw()
        await store.close()


# ---------------------------------------------------------------- store_from_url


async def test_store_from_url_chooses_the_store_by_scheme(tmp_path: Path) -> None:
    stores = [store_from_url(f"sqlite://{tmp_path / 'a.db'}"), store_from_url(str(tmp_path / "b.db")),
              store_from_url("redis://127.0.0.1:1/0"), store_from_url("rediss://127.0.0.1:1/0")]
    assert [type(s) for s in stores] == [SqliteLimitStore, SqliteLimitStore, RedisLimitStore, RedisLimitStore]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.db", "a.db-shm", "a.db-wal", "b.db", "b.db-shm",
                                                          "b.db-wal"]
    for store in stores:
        await store.close()
    for url in ("sqlite://relative.db", "http://127.0.0.1/limits"):
        with pytest.raises(ValueError):
            store_from_url(url)


def test_workers_opening_a_new_sqlite_file_at_once_all_open_it(tmp_path: Path) -> None:
    """ext_proc's workers start together and open the same embedded store. Switching a new file to WAL
    needs it to itself, and SQLite answers a second switcher "locked" at once, without its busy handler:
    it failed about one start in seven with four openers, before the switch was tried again."""
    for round_ in range(40):
        start, failures = threading.Barrier(4), []
        openers = [threading.Thread(target=_open_at_once, args=(tmp_path / f"limits-{round_}.db", start, failures))
                   for _ in range(4)]
        for opener in openers:
            opener.start()
        for opener in openers:
            opener.join(timeout=10)
        assert failures == [], f"round {round_}"


def _open_at_once(path: Path, start: threading.Barrier, failures: list[str]) -> None:
    start.wait()
    try:
        asyncio.run(SqliteLimitStore(path).close())
    except LimitStoreUnavailable as error:
        failures.append(str(error))
