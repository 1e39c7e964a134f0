"""Admission control's counters: reserve before a request goes upstream, settle when it ends.

Two stores answer the same interface (model.LimitStore), both atomic across processes:
SqliteLimitStore, one file for the ext_proc workers of one gateway, and RedisLimitStore,
one Redis for a fleet of gateways.

reserve(request_id, limits, amounts, now)
    Atomic. Admitted iff for every limit ``used + amounts.get(limit.metric, 0) <= limit.limit``,
    ``used`` being its counter in the window that contains ``now``. If admitted, each
    limit's counter grows by its amount (limits that differ only in their number share
    one counter, charged once) and the reservation is recorded under ``request_id``: which
    counters it charged and how much, expiring a minute after the last of their windows
    ends, so that a request never settled (a crashed process) disappears with its windows.
    If refused, nothing changes anywhere.

    An amount of 0 for a limit's metric (absent from ``amounts``) follows the same rule:
    the limit is reported, refuses only if its counter is already over the limit (a settle
    can charge more than was reserved), never when it is exactly full. Its counter is
    still part of the reservation, with 0 reserved, so that the settle charges it the
    actual amount: tokens unknown before the response are reserved as 0, settled as counted.

    A request_id that already holds a reservation is admitted again without a second
    charge (its states are the counters as they are): a retry after a lost reply, or a
    step that asks twice, must neither pay twice nor be refused for its own reservation.
    A request_id that was refused, settled or expired holds none: reserving it again is a
    new request. Request ids must therefore be unique per request.

    No limits: admitted, nothing recorded (a later settle answers False).

settle(request_id, actual)
    Atomic. For each counter the reservation charged, adds ``actual[metric] - reserved``:
    negative releases what the request did not use, positive charges what it used beyond
    its reservation; a counter never goes below 0. A metric absent from ``actual`` keeps
    its reservation as charged (the estimate stands when the actual is unknown). A counter
    whose window has ended, and so expired, is left alone; others of the same reservation
    are still settled. The reservation is then deleted. Returns True if there was one; a
    second settle, or one of an unknown id, changes nothing and returns False.

states(limits, now)
    Each limit's counter in the window that contains ``now``, changing nothing.

Windows are fixed and aligned to UTC (a minute, a day, a calendar month); a counter is
named by its window's start and expires at its end. Every amount is a non-negative
integer below 2**53: requests, tokens, or spend in micro-USD.

Either store raises LimitStoreUnavailable when its backend cannot answer, promptly (a
Redis that is down, a SQLite file locked past busy_timeout); the caller chooses whether
the request is admitted (fail open) or refused (fail closed).
"""

from __future__ import annotations

from ext_proc.limits.model import (
    LARGEST_AMOUNT,
    Decision,
    Limit,
    LimitState,
    LimitStore,
    LimitStoreUnavailable,
    Metric,
    Period,
    window_bounds,
)
from ext_proc.limits.redis_store import RedisLimitStore
from ext_proc.limits.sqlite_store import SqliteLimitStore

__all__ = ["LARGEST_AMOUNT", "Decision", "Limit", "LimitState", "LimitStore", "LimitStoreUnavailable", "Metric",
           "Period", "RedisLimitStore", "SqliteLimitStore", "store_from_url", "window_bounds"]

SQLITE_SCHEME = "sqlite://"
REDIS_SCHEMES = ("redis://", "rediss://")


def store_from_url(url: str) -> LimitStore:
    """``sqlite:///abs/path`` or a plain path: SQLite; ``redis://...`` or ``rediss://...``: Redis."""
    if url.startswith(REDIS_SCHEMES):
        return RedisLimitStore(url)
    if url.startswith(SQLITE_SCHEME):
        path = url.removeprefix(SQLITE_SCHEME)
        # sqlite://host/path has no meaning here; only the absolute form is unambiguous.
        if not path.startswith("/"):
            raise ValueError(f"limit store {url!r}: a sqlite URL names an absolute path, sqlite:///abs/path")
        return SqliteLimitStore(path)
    if "://" in url:
        raise ValueError(f"limit store {url!r}: expected sqlite:///path, a path, redis:// or rediss://")
    return SqliteLimitStore(url)
