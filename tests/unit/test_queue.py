"""The queue: slots per provider, waiting by priority, departments in turn, bounded in count and time."""

from __future__ import annotations

import asyncio

import pytest
import yaml
from envoy.config.route.v3 import route_components_pb2

from control_plane import resources as res
from control_plane.config import parse_config
from control_plane.plan import make_plan
from control_plane.resources.admission import QUEUE_FILTER
from ext_proc.queue import Admitted, FairQueue

NO_LIMIT = 1000  # waiting requests allowed, when a test is not about the bound
LONG = 30.0  # a wait no test reaches


def queue_with(slots: int, waits: list | None = None) -> FairQueue:
    return FairQueue(lambda provider: slots,
                     (lambda d, s, r: waits.append((d, r))) if waits is not None else None)


async def take(queue: FairQueue, request_id: str, department: str = "d", priority: int = 0, *,
               max_waiting: int = NO_LIMIT, timeout: float = LONG) -> Admitted:
    return await queue.acquire(request_id, "openai", department, priority, max_waiting=max_waiting, timeout=timeout)


async def settle_loop() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_requests_under_the_limit_go_at_once_and_the_next_waits_for_a_release():
    async def scenario() -> None:
        queue = queue_with(2)
        assert await take(queue, "a") is Admitted.GO and await take(queue, "b") is Admitted.GO
        third = asyncio.create_task(take(queue, "c"))
        await settle_loop()
        assert not third.done() and queue.waiting() == 1
        queue.release("a")
        assert await third is Admitted.GO
        assert queue.in_use["openai"] == 2 and set(queue.held) == {"b", "c"}

    asyncio.run(scenario())


def test_one_departments_burst_cannot_starve_another():
    async def scenario() -> list[str]:
        queue = queue_with(1)
        assert await take(queue, "first", "ads") is Admitted.GO
        served: list[str] = []

        async def waiting(request_id: str, department: str) -> None:
            assert await take(queue, request_id, department) is Admitted.GO
            served.append(department)

        burst = [asyncio.create_task(waiting(f"ads-{n}", "ads")) for n in range(20)]
        await settle_loop()
        late = [asyncio.create_task(waiting(f"search-{n}", "search")) for n in range(2)]
        await settle_loop()
        holder = "first"
        for _ in range(22):  # each request in turn finishes, handing its slot on
            queue.release(holder)
            await settle_loop()
            holder = next(iter(queue.held))
        await asyncio.gather(*burst, *late)
        return served

    served = asyncio.run(scenario())
    # The burst came first, yet search's two are served second and fourth, not after twenty.
    assert served[:4] == ["ads", "search", "ads", "search"]
    assert served.count("ads") == 20


def test_a_higher_priority_goes_first():
    async def scenario() -> list[str]:
        queue = queue_with(1)
        await take(queue, "holder")
        order: list[str] = []

        async def waiting(request_id: str, priority: int) -> None:
            await take(queue, request_id, "d", priority)
            order.append(request_id)

        tasks = [asyncio.create_task(waiting("low", 0))]
        await settle_loop()
        tasks.append(asyncio.create_task(waiting("high", 5)))
        await settle_loop()
        for holder in ("holder", "high", "low"):
            queue.release(holder)
            await settle_loop()
        await asyncio.gather(*tasks)
        return order

    assert asyncio.run(scenario()) == ["high", "low"]


def test_a_full_queue_and_a_passed_deadline_refuse_and_say_so():
    waits: list = []

    async def scenario() -> tuple[Admitted, Admitted]:
        queue = queue_with(1, waits)
        await take(queue, "holder")
        waiting = asyncio.create_task(take(queue, "waits", max_waiting=1, timeout=0.05))
        await settle_loop()
        full = await take(queue, "refused", max_waiting=1)
        return full, await waiting

    assert asyncio.run(scenario()) == (Admitted.FULL, Admitted.TIMED_OUT)
    assert waits == [("d", Admitted.FULL), ("d", Admitted.TIMED_OUT)]


def test_a_client_gone_while_waiting_leaves_the_line_and_a_slot_handed_to_it_is_passed_on():
    async def scenario() -> FairQueue:
        queue = queue_with(1)
        await take(queue, "holder")
        gone = asyncio.create_task(take(queue, "gone"))
        after = asyncio.create_task(take(queue, "after"))
        await settle_loop()
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        queue.release("holder")
        assert await after is Admitted.GO
        return queue

    queue = asyncio.run(scenario())
    assert set(queue.held) == {"after"} and queue.waiting() == 0


def test_a_release_of_an_unknown_request_changes_nothing_and_a_second_take_is_no_second_slot():
    async def scenario() -> FairQueue:
        queue = queue_with(2)
        await take(queue, "a")
        await take(queue, "a")  # Envoy asked twice
        queue.release("never-taken")
        return queue

    queue = asyncio.run(scenario())
    assert queue.in_use["openai"] == 1


def test_a_dedup_routes_requests_take_no_slot_and_the_other_routes_do():
    """Followers never reach the provider: a slot held for each would starve the provider's other
    requests in the very burst coalescing is for (control_plane/resources/admission.py: not_queued)."""
    config = {"providers": {"openai": {"type": "openai", "model": "gpt-4o-mini", "api_key": "k",
                                       "base_url": "http://127.0.0.1:9/v1"}},
              "queue": {"timeout": "5s"},
              "routes": [{"path": "/v1/d/chat/completions", "handler": "chat", "dedup": "always"}]}
    routes = res.route_configuration(make_plan(parse_config(yaml.safe_dump(config)))).virtual_hosts[0].routes
    router = {r.match.path: r for r in routes if r.name.startswith("chat:")}
    off = route_components_pb2.FilterConfig()
    router["/v1/d/chat/completions"].typed_per_filter_config[QUEUE_FILTER].Unpack(off)
    assert off.disabled
    assert QUEUE_FILTER not in router["/v1/chat/completions"].typed_per_filter_config
