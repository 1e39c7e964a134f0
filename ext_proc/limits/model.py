"""What a limit is, the windows it counts in, and what a store answers about it.

A limit caps one metric of one scope (``key:search-team``, ``department:search``)
over a fixed window aligned to UTC: a minute, a day or a calendar month. Every
number is an integer: requests, tokens, or spend in micro-USD, so that the two
stores (and Redis's Lua) add them exactly.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

# Redis's Lua numbers are doubles: above 2**53 integers stop being exact. 2**53 micro-USD
# is $9 billion, far beyond any budget, so the bound only catches a unit mistake.
LARGEST_AMOUNT = 2**53


class Metric(StrEnum):
    REQUESTS = "requests"
    TOKENS = "tokens"
    SPEND = "spend"  # micro-USD


class Period(StrEnum):
    MINUTE = "minute"
    DAY = "day"
    MONTH = "month"


def window_bounds(period: Period, now: float) -> tuple[int, int]:
    """(start, end) in epoch seconds of the ``period`` window that contains ``now``, in UTC."""
    if period is Period.MINUTE:
        return _fixed_bounds(60, now)
    if period is Period.DAY:
        # Epoch seconds have no leap seconds: every UTC day is 86,400 of them.
        return _fixed_bounds(86_400, now)
    return _month_bounds(now)


def _fixed_bounds(length: int, now: float) -> tuple[int, int]:
    start = int(now // length) * length
    return start, start + length


def _month_bounds(now: float) -> tuple[int, int]:
    moment = datetime.datetime.fromtimestamp(now, datetime.UTC)
    start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return int(start.timestamp()), int(end.timestamp())


def check_amount(name: str, value: int) -> None:
    """Refuses what no counter should hold: a negative number, a float, one beyond exact integers."""
    if type(value) is not int or not 0 <= value < LARGEST_AMOUNT:
        raise ValueError(f"{name} must be an integer in [0, 2**53), not {value!r}")


def check_amounts(amounts: Mapping[Metric, int]) -> None:
    for metric, value in amounts.items():
        check_amount(f"amount of {metric}", value)


@dataclass(frozen=True)
class Limit:
    scope: str  # who it limits, e.g. "key:search-team" or "department:search"
    metric: Metric
    period: Period
    limit: int  # requests, tokens, or micro-USD per window

    def __post_init__(self) -> None:
        check_amount("limit", self.limit)


@dataclass(frozen=True)
class LimitState:
    """One limit as a request leaves it."""

    limit: Limit
    used: int  # in this window, reservations included (after this request if admitted)
    reset_at: float  # epoch seconds when its window ends

    @property
    def remaining(self) -> int:
        # A settle that charged more than was reserved can leave a counter above its limit.
        return max(0, self.limit.limit - self.used)


@dataclass(frozen=True)
class Decision:
    admitted: bool
    states: tuple[LimitState, ...]  # every limit asked about, in the order given
    refused_by: LimitState | None  # the first limit that refused (None when admitted)


class LimitStoreUnavailable(Exception):
    """The store's backend did not answer (Redis down, SQLite locked past busy_timeout).

    The caller chooses what a request gets then: admitted (fail open) or refused (fail closed).
    """


class LimitStore(Protocol):
    async def reserve(self, request_id: str, limits: Sequence[Limit], amounts: Mapping[Metric, int],
                      now: float) -> Decision: ...

    async def settle(self, request_id: str, actual: Mapping[Metric, int]) -> bool: ...

    async def states(self, limits: Sequence[Limit], now: float) -> tuple[LimitState, ...]: ...

    async def close(self) -> None: ...
