"""The targets of issue #8, each next to what this run measured.

Reported, never asserted: the machine is shared, and a benchmark that fails
on noise teaches nothing. A target this run did not measure says so.
"""

from __future__ import annotations

import operator
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial

from bench.measurement import Measurement, role_of
from bench.report import MB, Table, find, find_rounds, size_points
from bench.scenarios import CLOSED, FAST, OPEN, SDK, TIMING


@dataclass(frozen=True)
class Goal:
    what: str
    goal: str
    measured: str
    met: bool | None  # None: not measured in this run

    @property
    def verdict(self) -> str:
        return {True: "met", False: "MISSED", None: "not measured"}[self.met]


def goals(measurements: Sequence[Measurement]) -> list[Goal]:
    out: list[Goal] = []
    g = find(measurements, kind="json", prompt="300B", load=CLOSED, connections=64, client=FAST)
    if g and "B" in g and "C" in g:
        ratio = g["C"].throughput / g["B"].throughput
        out.append(Goal("Throughput C/B, non-streaming, c=64", ">= 0.40", f"{ratio:.3f}", ratio >= 0.40))
    else:
        out.append(Goal("Throughput C/B, non-streaming, c=64", ">= 0.40", "–", None))

    g = find(measurements, kind="json", load=OPEN, peak_fraction=0.5, client=FAST)
    if g and "B" in g and "C" in g:
        rate = g["C"].extra["rate"]
        p50, p99 = g["C"].p50_ms - g["B"].p50_ms, g["C"].p99_ms - g["B"].p99_ms
        out.append(Goal(f"Added latency p50 at half C's peak ({rate:.0f} req/s)", "<= 1.5 ms", f"{p50:.2f} ms",
                        p50 <= 1.5))
        # An open loop measures from each request's due time, so a late generator
        # (starved of CPU on this shared 2-core machine) shows up as the target's tail.
        late = g["C"].extra.get("send_lag_p99_ms")
        note = f" (generator itself {late:.1f} ms late at p99)" if late is not None and late > 5.0 else ""
        out.append(Goal(f"Added latency p99 at half C's peak ({rate:.0f} req/s)", "<= 5 ms", f"{p99:.2f} ms{note}",
                        p99 <= 5.0))
    else:
        out.append(Goal("Added latency at half C's peak", "p50 <= 1.5 ms, p99 <= 5 ms", "–", None))

    g = find(measurements, kind="paced", load=TIMING, connections=1, client=FAST)
    if g and "B" in g and "C" in g:
        c, b = g["C"], g["B"]
        added = c.p50_ms - b.p50_ms
        out.append(Goal("Streaming: added time to first byte (p50, 1 stream)", "<= 2 ms", f"{added:.2f} ms",
                        added <= 2.0))
        gap, chunk = c.extra["gap_ms"], c.extra["transit_p50_ms"] - b.extra["transit_p50_ms"]
        # Buffering would bunch the chunks up (gaps near 0); the added transit is context.
        forwarded = abs(c.extra["gap_p50_ms"] - gap) <= 1.0
        out.append(Goal("Streaming: chunks forwarded as they arrive", f"gap p50 ≈ the fake's {gap:g} ms",
                        f"gap p50 {c.extra['gap_p50_ms']:.2f} ms (each chunk +{chunk:.2f} ms transit)",
                        forwarded))
    else:
        out.append(Goal("Streaming: added time to first byte", "<= 2 ms", "–", None))

    points = size_points(measurements)
    if len(points) == 3:
        (_, s0, a0, _), (_, s1, a1, _), (_, s2, a2, _) = points
        small, large = (a1 - a0) * 1000 / ((s1 - s0) / 1024), (a2 - a1) * 1000 / ((s2 - s1) / 1024)
        # The 300B->10KB step is small, so its slope is noisy: allow 5 µs/KB on top.
        out.append(Goal("200 KB prompts: added latency at most linear in size",
                        "µs/KB (10KB->200KB) <= µs/KB (300B->10KB) + noise",
                        f"{small:.1f} then {large:.1f} µs/KB (+{a2:.2f} ms at 200 KB)",
                        large <= max(small, 0.0) * 1.25 + 5.0))
    else:
        out.append(Goal("200 KB prompts: added latency at most linear", "linear", "–", None))

    peaks = [mem.hwm_kb for m in measurements if m.target == "C"
             for name, mem in m.memory.items() if role_of(name) == "ext_proc"]
    out.append(rss_goal(max(peaks) if peaks else None))
    out.append(soak_goal(None))
    return out


# Portkey's figures are compared with only when this run measured them (--portkey DIR).
NO_PORTKEY = "Portkey not measured in this run (python -m bench --portkey DIR, docs/benchmarks.md)"


def sdk_goals(measurements: Sequence[Measurement], portkey: bool = False) -> list[Goal]:
    """Issue #20's targets, on the requests the OpenAI SDK sends, per core when pinned.

    With several rounds (--rounds), each target's verdict is on the median round, and every
    round's figure is listed: the machine is shared, so one round proves little.
    """
    out = [_ratio_goal(measurements, "json", "JSON, OpenAI provider, model named (c=64): C/B", 0.40),
           _ratio_goal(measurements, "auto", "JSON, OpenAI provider, model=auto (c=64): C/B", 0.40),
           _ratio_goal(measurements, "anthropic", "JSON, Anthropic provider (c=64): C/B", 0.15),
           _ratio_goal(measurements, "seed", "JSON, seed config, Anthropic first (c=64): C/B", 0.15),
           _kept_goal(measurements, "keys", "JSON with client keys (c=64): C/B, of the plain lane's"),
           _kept_goal(measurements, "limits", "JSON with keys + limits (c=64): C/B, of the plain lane's"),
           # Issue #25: Anthropic's lane (a Messages body to an Anthropic provider, as it came) keeps
           # the OpenAI lane's ratio to bare Envoy, within the same fraction.
           _kept_goal(measurements, "messages", "Anthropic Messages to Anthropic (c=64): C/B, of the OpenAI lane's"),
           _kept_goal(measurements, "responses", "OpenAI Responses to OpenAI (c=64): C/B, of the chat lane's"),
           _portkey_goal(measurements, portkey)]
    for streams, limit in ((1, 2.0), (8, 3.0)):
        rounds = _with_b_and_c(find_rounds(measurements, kind="paced", load=TIMING, connections=streams, client=SDK))
        what = f"SDK stream: added time to first byte (p50, {streams} stream{'s' if streams > 1 else ''})"
        added = [g["C"].p50_ms - g["B"].p50_ms for g in rounds]
        # partial(ge, limit)(v) is limit >= v: bound now, not when the loop has moved on
        out.append(_median_goal(what, f"<= {limit:g} ms", added, "{:.2f} ms", partial(operator.ge, limit)))
    rounds = _with_b_and_c(find_rounds(measurements, kind="json", load=OPEN, peak_fraction=0.5, client=SDK))
    rate = f" ({rounds[0]['C'].extra['rate']:.0f} req/s)" if rounds else ""
    out.append(_median_goal(f"SDK JSON: added p99 at half C's peak{rate}", "<= 5 ms",
                            [g["C"].p99_ms - g["B"].p99_ms for g in rounds], "{:.2f} ms", lambda v: v <= 5.0))
    return out


def _with_b_and_c(rounds: list[dict[str, Measurement]]) -> list[dict[str, Measurement]]:
    return [g for g in rounds if "B" in g and "C" in g and g["B"].requests]


def _median_goal(what: str, goal: str, values: Sequence[float], fmt: str, met: Callable[[float], bool],
                 detail: str = "") -> Goal:
    """The median round's value against the goal; every round's listed when there are several."""
    if not values:
        return Goal(what, goal, "–", None)
    median = statistics.median(values)
    measured = fmt.format(median) + detail
    if len(values) > 1:
        measured += f" (median of {', '.join(fmt.format(v) for v in values)})"
    return Goal(what, goal, measured, met(median))


def _ratio_goal(measurements: Sequence[Measurement], kind: str, what: str, floor: float) -> Goal:
    rounds = _with_b_and_c(find_rounds(measurements, kind=kind, prompt="300B", load=CLOSED, connections=64,
                                       client=SDK))
    ratios = [g["C"].throughput / g["B"].throughput for g in rounds]
    if not rounds:
        return Goal(what, f">= {floor:.2f}", "–", None)
    first = rounds[0]
    detail = "" if len(rounds) > 1 else f" ({first['C'].throughput:,.0f} / {first['B'].throughput:,.0f} req/s)"
    return _median_goal(what, f">= {floor:.2f}", ratios, "{:.3f}", lambda v: v >= floor, detail)


# The passthrough lane keeps its ratio to bare Envoy with keys (and limits) on: within this
# fraction of the plain lane's C/B measured in the same round.
KEPT_FRACTION = 0.90


def _c64_rounds(measurements: Sequence[Measurement], kind: str) -> dict[int, dict[str, Measurement]]:
    """Round -> B and C's measurements of the SDK's 300B request of ``kind`` at c=64."""
    return {g["C"].scenario.round: g for g in _with_b_and_c(find_rounds(
        measurements, kind=kind, prompt="300B", load=CLOSED, connections=64, client=SDK))}


def _kept_goal(measurements: Sequence[Measurement], kind: str, what: str) -> Goal:
    """C/B of ``kind`` over the plain JSON lane's C/B, round by round (the same lane, the same machine).

    C's own req/s over the plain lane's is given too: B's figure moves more than C's from
    one run to the next on a shared machine, and it divides both.
    """
    plain, keyed = _c64_rounds(measurements, "json"), _c64_rounds(measurements, kind)
    rounds = sorted(set(plain) & set(keyed))

    def ratio(g: dict[str, Measurement]) -> float:
        return g["C"].throughput / g["B"].throughput

    goal = _median_goal(what, f">= {KEPT_FRACTION:.2f}x", [ratio(keyed[r]) / ratio(plain[r]) for r in rounds],
                        "{:.2f}x", lambda v: v >= KEPT_FRACTION)
    if not rounds:
        return goal
    first, alone = rounds[0], [keyed[r]["C"].throughput / plain[r]["C"].throughput for r in rounds]
    single = f" ({ratio(keyed[first]):.3f} vs {ratio(plain[first]):.3f})" if len(rounds) == 1 else ""
    return replace(goal, measured=f"{goal.measured}{single}; C's req/s alone {statistics.median(alone):.2f}x")


def _portkey_goal(measurements: Sequence[Measurement], portkey: bool) -> Goal:
    what, goal = "JSON, Anthropic provider (c=64): Hapax ahead of Portkey", "C req/s > P req/s and C p50 < P p50"
    rounds = [g for g in find_rounds(measurements, kind="anthropic", prompt="300B", load=CLOSED, connections=64,
                                     client=SDK) if "P" in g and "C" in g]
    if not portkey or not rounds:
        return Goal(what, goal, NO_PORTKEY if not portkey else "–", None)
    c_rate = statistics.median(g["C"].throughput for g in rounds)
    p_rate = statistics.median(g["P"].throughput for g in rounds)
    c_p50 = statistics.median(g["C"].p50_ms for g in rounds)
    p_p50 = statistics.median(g["P"].p50_ms for g in rounds)
    of = f" (medians of {len(rounds)} rounds)" if len(rounds) > 1 else ""
    return Goal(what, goal, f"C {c_rate:,.0f} req/s, p50 {c_p50:.2f} ms; P {p_rate:,.0f} req/s, "
                f"p50 {p_p50:.2f} ms{of}", c_rate > p_rate and c_p50 < p_p50)


def sdk_goals_table(items: Sequence[Goal]) -> Table:
    return Table("Targets from issue #20: what clients send, per core (reported, not asserted)",
                 ["target", "goal", "measured", "verdict"], [[g.what, g.goal, g.measured, g.verdict] for g in items])


def rss_goal(ext_proc_peak_kb: int | None) -> Goal:
    if ext_proc_peak_kb is None:
        return Goal("ext_proc peak RSS (VmHWM)", "< 200 MB", "–", None)
    mb = ext_proc_peak_kb / MB
    return Goal("ext_proc peak RSS (VmHWM)", "< 200 MB", f"{mb:.1f} MB", mb < 200)


def soak_goal(growth: dict[str, float] | None) -> Goal:
    what = "RSS growth under soak, after warm-up"
    if not growth:
        return Goal(what, "< 5 %", "– (./dev bench --soak)", None)
    return Goal(what, "< 5 % (every Hapax process)", ", ".join(f"{k} {v:+.1f} %" for k, v in growth.items()),
                max(growth.values()) < 5.0)


def goals_table(items: Sequence[Goal]) -> Table:
    return Table("Targets from issue #8 (reported, not asserted)", ["target", "goal", "measured", "verdict"],
                 [[g.what, g.goal, g.measured, g.verdict] for g in items])
