"""The fleet's limit store: counters in one Redis that every gateway shares.

Reserve and settle are each one Lua script. Redis runs a script whole, no other client's
command between its reads and its writes, so two gateways sharing one Redis can never
both admit the last token.

Keys::

    hapax:limits:counter:<scope>:<metric>:<period>:<window start>   an integer, expiring with its window
    hapax:limits:reservation:<request id>                           JSON [[counter key, metric, amount], ...]

The scope and the request id are percent-encoded, so a ':' in them ('key:search-team')
cannot make two keys one. Expiries are relative (PEXPIRE, PX) and computed from the
caller's ``now``, the same clock that chose the window: a Redis whose clock differs from
the gateway's still drops a counter when the gateway's window ends.

Settle touches the counters its reservation names, keys the script is not given: that
is fine for one Redis (and its replicas), not for Redis Cluster. It needs Redis 6.0 or
later (SET ... KEEPTTL).

A command that fails on a broken connection is retried once, at once: a pooled
connection may have died with a Redis restart. Retrying is safe: a reserve that did run
before its reply was lost finds its reservation and is admitted without a second charge;
a settle that did run answers False the second time.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ext_proc.limits.model import Decision, Limit, LimitState, LimitStoreUnavailable, Metric, check_amounts
from ext_proc.limits.plan import Charge, Counter, Plan, plan

PREFIX = "hapax:limits:"

# KEYS[1]: the reservation; KEYS[1 + i]: limit i's counter (limits may share one).
# ARGV[1]: the reservation's TTL in ms; ARGV[2]: its record; ARGV[3i .. 3i + 2]: limit i's
# number, its amount, its counter's TTL in ms.
# Returns {status, index of the refusing limit or 0, each limit's counter...}; status is
# 1 admitted, 2 admitted before (a retry: nothing charged), 0 refused (nothing charged).
RESERVE = """
local n = #KEYS - 1
local used = {}
for i = 1, n do used[i] = tonumber(redis.call('GET', KEYS[i + 1]) or '0') end
local function answer(status, refused)
  local reply = {status, refused}
  for i = 1, n do reply[i + 2] = used[i] end
  return reply
end
if redis.call('EXISTS', KEYS[1]) == 1 then return answer(2, 0) end
for i = 1, n do
  if used[i] + tonumber(ARGV[3 * i + 1]) > tonumber(ARGV[3 * i]) then return answer(0, i) end
end
local charged = {}
for i = 1, n do
  local key = KEYS[i + 1]
  if charged[key] == nil then
    -- INCRBY 0 still creates the key: the settle adds the actual amount to it.
    charged[key] = redis.call('INCRBY', key, ARGV[3 * i + 1])
    redis.call('PEXPIRE', key, ARGV[3 * i + 2])
  end
  used[i] = charged[key]
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[1])
return answer(1, 0)
"""

# KEYS[1]: the reservation; ARGV: metric, actual amount, metric, actual amount...
# Returns 1 if there was a reservation, else 0.
SETTLE = """
local record = redis.call('GET', KEYS[1])
if not record then return 0 end
local actual = {}
for i = 1, #ARGV, 2 do actual[ARGV[i]] = tonumber(ARGV[i + 1]) end
for _, charge in ipairs(cjson.decode(record)) do
  local key, spent = charge[1], actual[charge[2]]
  -- Never INCRBY a key that expired with its window: it would come back without a TTL.
  if spent ~= nil and redis.call('EXISTS', key) == 1 then
    if redis.call('INCRBY', key, spent - charge[3]) < 0 then
      redis.call('SET', key, 0, 'KEEPTTL')
    end
  end
end
redis.call('DEL', KEYS[1])
return 1
"""


class RedisLimitStore:
    def __init__(self, url: str, *, timeout: float = 1.0) -> None:
        # A Redis that is gone must answer within about a second, so that the caller fails
        # open or closed at once. redis-py's own defaults do not: no timeout before 8.0,
        # and 5 s with ten retries (backoff up to 1 s) in 8.x.
        self._redis = redis.asyncio.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                                   retry=Retry(NoBackoff(), 1))
        self._reserve = self._redis.register_script(RESERVE)
        self._settle = self._redis.register_script(SETTLE)

    async def reserve(self, request_id: str, limits: Sequence[Limit], amounts: Mapping[Metric, int],
                      now: float) -> Decision:
        wanted = plan(limits, amounts, now)
        if not wanted.charges:
            return Decision(True, (), None)
        args: list[int | str] = [_ttl_ms(wanted.reservation_expires(), now), _record(wanted)]
        for charge in wanted.charges:
            args += [charge.limit.limit, charge.amount, _ttl_ms(charge.end, now)]
        keys = [reservation_key(request_id), *(counter_key(charge.counter) for charge in wanted.charges)]
        status, refused, *used = await self._call(self._reserve(keys=keys, args=args))
        return wanted.decision([int(count) for count in used], None if status else int(refused) - 1)

    async def settle(self, request_id: str, actual: Mapping[Metric, int]) -> bool:
        check_amounts(actual)
        args = [part for metric, amount in actual.items() for part in (metric.value, amount)]
        return bool(await self._call(self._settle(keys=[reservation_key(request_id)], args=args)))

    async def states(self, limits: Sequence[Limit], now: float) -> tuple[LimitState, ...]:
        wanted = plan(limits, {}, now)
        if not wanted.charges:
            return ()
        # One MGET: one snapshot of all the counters.
        counts = await self._call(self._redis.mget([counter_key(charge.counter) for charge in wanted.charges]))
        return wanted.states([int(count or 0) for count in counts])

    async def close(self) -> None:
        await self._redis.aclose()

    async def _call(self, command: Any) -> Any:
        try:
            return await command
        except redis.exceptions.RedisError as error:
            raise LimitStoreUnavailable(f"Redis limit store: {error}") from error


def counter_key(counter: Counter) -> str:
    return f"{PREFIX}counter:{_part(counter.scope)}:{counter.metric}:{counter.period}:{counter.start}"


def reservation_key(request_id: str) -> str:
    return f"{PREFIX}reservation:{_part(request_id)}"


def _part(text: str) -> str:
    # ':' becomes %3A and '%' itself %25: one text, one encoding, no ':' inside a part.
    return quote(text, safe="")


def _record(wanted: Plan) -> str:
    return json.dumps([_charge_record(charge) for charge in wanted.counters().values()])


def _charge_record(charge: Charge) -> list[str | int]:
    return [counter_key(charge.counter), charge.counter.metric.value, charge.amount]


def _ttl_ms(end: int, now: float) -> int:
    # At least 1: a TTL of 0 or less would delete the key at once.
    return max(1, math.ceil((end - now) * 1000))
