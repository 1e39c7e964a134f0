"""Per-core measurement: every gateway measured on one core, the load generator and the fakes on the others.

Unpinned, a gateway's figures depend on how many cores the machine has and
on what the load generator takes from them. Pinned, bare Envoy (one worker
thread) and Hapax (Envoy with one worker thread, one ext_proc worker, the
control plane and the supervisor, all of them) each get the same single core,
one after the other, and C/B is a per-core ratio.

Why the SAME core for every target, and not one each: the targets are
measured one after the other anyway (A B C rounds), so each has the core
alone while it is measured, and sharing it removes any difference between
cores (frequency, cache, interrupts) from C/B. The generator and the fakes
keep the other core(s): they never compete with what is measured, though on
a 2-core machine one core of generator + fake can itself become the limit
of bare Envoy (the 'load cores busy' column says when).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class CorePlan:
    measured: int  # the core every target (B, C, Portkey) runs on
    load: tuple[int, ...]  # the cores of the harness: wrk, the open-loop generator, the fakes

    def taskset(self) -> list[str]:
        """The prefix that starts a target's process (and, inherited, all its children) on the measured core."""
        return ["taskset", "-c", str(self.measured)]

    def describe(self) -> str:
        return (f"targets (B, C, Portkey) on core {self.measured}; load generator and fakes on core(s) "
                f"{','.join(map(str, self.load))}")


def core_plan(cpus: Sequence[int]) -> CorePlan | None:
    """The last allowed CPU measures, the rest load; None with fewer than two CPUs (nothing to keep apart)."""
    ordered = sorted(set(cpus))
    if len(ordered) < 2:
        return None
    return CorePlan(measured=ordered[-1], load=tuple(ordered[:-1]))


def allowed_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def pin_harness(plan: CorePlan) -> None:
    """This process (and so wrk, the fakes and everything else it starts unprefixed) on the load cores."""
    os.sched_setaffinity(0, plan.load)


def cores_of(pid: int) -> str:
    """The CPUs a running process may use, as taskset -c prints them (e.g. '1' or '0,1')."""
    try:
        return ",".join(map(str, sorted(os.sched_getaffinity(pid))))
    except (ProcessLookupError, PermissionError):
        return "–"
