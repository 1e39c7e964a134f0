"""How long `hapax serve` waits for a child to report ready, and what it says when one does not."""

from __future__ import annotations

import sys

import pytest

from hapax import wire
from hapax.supervisor import Child, NotReady, _seconds

# A child that starts and then never reports ready: stuck.
STUCK = "import time; time.sleep(60)"


def _announcing(budget: float, work: float) -> str:
    """A child that announces a step of up to ``budget`` seconds, works ``work`` seconds, then is ready."""
    progress = {"event": wire.PROGRESS_EVENT, "component": "control_plane", "step": "Envoy's validation",
                wire.PROGRESS_BUDGET: budget}
    return (f"import json, time\nprint(json.dumps({progress!r}), flush=True)\ntime.sleep({work})\n"
            f"print(json.dumps({{'event': {wire.READY_EVENT!r}}}), flush=True)\ntime.sleep(60)\n")


async def test_a_child_that_never_reports_ready_is_named_stopped_and_explained():
    child = Child("control_plane", [sys.executable, "-c", STUCK], ready_timeout=0.5)
    with pytest.raises(NotReady) as raised:
        await child.start(wait_ready=True)
    assert child.process is not None and child.process.returncode is not None  # nothing left behind
    message = str(raised.value)
    assert message.startswith("control_plane did not report ready within 0.5 s (it announced no step); "
                              "it is still running, so it is stuck or slower than allowed.")
    assert "--ready-timeout SECONDS; now 0.5" in message
    assert "\n" not in message


async def test_a_step_announced_with_its_budget_lengthens_the_wait():
    # Longer at work than the ready timeout alone, within what it announced.
    child = Child("control_plane", [sys.executable, "-c", _announcing(budget=30, work=1.5)], ready_timeout=0.5)
    try:
        await child.start(wait_ready=True)
        assert child.ready["event"] == wire.READY_EVENT
    finally:
        await child.stop()


async def test_a_child_stuck_past_its_announced_budget_says_on_which_step():
    child = Child("control_plane", [sys.executable, "-c", _announcing(budget=0.5, work=60)], ready_timeout=0.5)
    with pytest.raises(NotReady) as raised:
        await child.start(wait_ready=True)
    assert str(raised.value).startswith("control_plane did not report ready within 1 s (its last step: "
                                        "Envoy's validation, announced to take up to 0.5 s);")


async def test_a_child_that_exits_before_it_is_ready_says_how():
    child = Child("ext_proc", [sys.executable, "-c", "import sys; sys.exit(3)"], ready_timeout=30)
    with pytest.raises(Exception) as raised:
        await child.start(wait_ready=True)
    assert not isinstance(raised.value, NotReady)
    assert str(raised.value) == "ext_proc exited before it was ready (exit code 3)"


def test_a_budget_that_is_not_a_number_of_seconds_counts_as_none():
    budgets = ("forever", None, -1, True, float("inf"), float("nan"), 2, 2.5)
    assert [_seconds(v) for v in budgets] == [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0, 2.5]
