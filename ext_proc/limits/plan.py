"""What one reserve asks of a backend: the counter each limit reads, and what each is charged.

Both stores build the same plan and turn the backend's answer (what each counter holds)
into a Decision the same way; only the atomic step in between differs (a SQLite
transaction, a Redis script).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ext_proc.limits.model import Decision, Limit, LimitState, Metric, Period, check_amounts, window_bounds

# A reservation outlives the last of its windows by this much, so that a request still
# streaming when its windows end settles as usual (True) rather than as unknown. Its
# counters are gone by then, so it charges nothing more; the margin only keeps the record.
RESERVATION_MARGIN = 60


@dataclass(frozen=True)
class Counter:
    """One window of one scope's metric. Limits that differ only in their number share it."""

    scope: str
    metric: Metric
    period: Period
    start: int  # epoch seconds: the window's start names it


@dataclass(frozen=True)
class Charge:
    limit: Limit
    counter: Counter
    end: int  # epoch seconds: the window's end, when its counter expires
    amount: int  # what a reserve adds to the counter


@dataclass(frozen=True)
class Plan:
    charges: tuple[Charge, ...]  # one per limit, in the order given

    def counters(self) -> dict[Counter, Charge]:
        """The distinct counters: two limits on one counter must not charge it twice."""
        return {charge.counter: charge for charge in self.charges}

    def reservation_expires(self) -> int:
        return max(charge.end for charge in self.charges) + RESERVATION_MARGIN

    def first_refusal(self, used: Sequence[int]) -> int | None:
        """The index of the first limit that ``used`` plus its amount would exceed.

        An amount of 0 refuses only a counter already over its limit (which a settle that
        charged more than was reserved can leave), never one exactly full: one rule for all.
        """
        for index, (charge, before) in enumerate(zip(self.charges, used, strict=True)):
            if before + charge.amount > charge.limit.limit:
                return index
        return None

    def states(self, used: Sequence[int]) -> tuple[LimitState, ...]:
        return tuple(LimitState(charge.limit, count, float(charge.end))
                     for charge, count in zip(self.charges, used, strict=True))

    def decision(self, used: Sequence[int], refused: int | None) -> Decision:
        states = self.states(used)
        return Decision(refused is None, states, None if refused is None else states[refused])


def plan(limits: Sequence[Limit], amounts: Mapping[Metric, int], now: float) -> Plan:
    check_amounts(amounts)
    return Plan(tuple(_charge(limit, amounts.get(limit.metric, 0), now) for limit in limits))


def _charge(limit: Limit, amount: int, now: float) -> Charge:
    start, end = window_bounds(limit.period, now)
    return Charge(limit, Counter(limit.scope, limit.metric, limit.period, start), end, amount)
