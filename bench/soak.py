"""Soak: Hapax alone at a moderate fixed rate for minutes, its memory sampled every 10 s.

A leak shows as resident memory that keeps growing once caches, pools and
allocator arenas have filled: growth is measured from the end of the warm-up
(the mean of the first three samples after it) to the end (the mean of the last
three), per process. The load is the open-loop generator cycling through a mix
of requests (mostly small JSON, some 10 KB and 200 KB prompts, some streams),
so every code path that could hold on to memory is exercised.
"""

from __future__ import annotations

import asyncio
import statistics
from dataclasses import dataclass, field

from bench import procstat
from bench.http1 import encode_request
from bench.measurement import percentile
from bench.openloop import OpenLoopResult, open_loop
from bench.payloads import MODELS, PROMPT_SIZES, STREAMING, chat_request
from bench.report import HAPAX_ROLES, MB, Table, num
from bench.targets import Target

SAMPLE_EVERY = 10.0
# (kind, prompt) in the proportions sent: 50 % small JSON, 20 % 10 KB, 20 % streams, 10 % 200 KB.
# Both lanes: JSON on the passthrough lane; streams and the aliased JSON through ext_proc's upstream step.
MIX = ([("json", "300B")] * 4 + [("json", "10KB")] * 2 + [("sse", "300B")] * 2
       + [("alias", "300B")] + [("json", "200KB")])


@dataclass
class SoakResult:
    rate: float
    seconds: float
    warmup: float
    samples: list[tuple[float, dict[str, int]]] = field(default_factory=list)  # (t, name -> RSS kB)
    load: OpenLoopResult | None = None

    def growth(self) -> dict[str, float]:
        """Per process: % RSS growth from the end of the warm-up to the end of the soak."""
        after = [s for s in self.samples if s[0] >= self.warmup]
        if len(after) < 4:
            return {}
        out = {}
        for name in after[0][1]:
            base = statistics.mean(s[1].get(name, 0) for s in after[:3])
            end = statistics.mean(s[1].get(name, 0) for s in after[-3:])
            out[name] = (end - base) / base * 100 if base else 0.0
        return out


def _hapax_rss(target: Target) -> dict[str, int]:
    out = {}
    for name, pid in target.processes().items():
        if name.split("#")[0] in HAPAX_ROLES:
            try:
                out[name] = procstat.memory(pid).rss_kb
            except FileNotFoundError:
                continue
    return out


async def _soak(target: Target, rate: float, seconds: float, warmup: float, log) -> SoakResult:
    result = SoakResult(rate, seconds, warmup)
    ep = target.endpoints["json"]  # Hapax serves every kind on one path, told apart by model
    raws = [encode_request("POST", ep.host, ep.port, ep.path,
                           chat_request(PROMPT_SIZES[prompt], model=MODELS[kind], stream=kind in STREAMING))
            for kind, prompt in MIX]
    loop = asyncio.get_running_loop()
    load = asyncio.create_task(open_loop(ep.host, ep.port, raws, rate, seconds))
    start = loop.time()
    while not load.done():
        t = loop.time() - start
        rss = _hapax_rss(target)
        result.samples.append((t, rss))
        log(f"soak {t:5.0f}s  " + "  ".join(f"{k} {v / MB:.1f} MB" for k, v in rss.items()))
        await asyncio.wait({load}, timeout=max(0.0, start + len(result.samples) * SAMPLE_EVERY - loop.time()))
    result.samples.append((loop.time() - start, _hapax_rss(target)))
    result.load = load.result()
    return result


def run_soak(target: Target, rate: float, seconds: float, warmup: float, log=print) -> SoakResult:
    return asyncio.run(_soak(target, rate, seconds, warmup, log))


def soak_tables(result: SoakResult) -> list[Table]:
    load = result.load
    assert load is not None
    lat = load.latencies
    summary = Table("Soak load", ["rate req/s", "sent", "answered", "p50 ms", "p99 ms", "errors", "send lag p99 ms"], [[
        num(result.rate, 0), str(load.scheduled), str(len(lat)), num(percentile(lat, 50) * 1000),
        num(percentile(lat, 99) * 1000), str(load.status_errors + load.socket_errors),
        num(percentile(load.send_lag, 99) * 1000)]])
    growth = result.growth()
    names = list(result.samples[0][1]) if result.samples else []
    growth_table = Table(
        f"RSS growth after a {result.warmup:.0f} s warm-up", ["process", "growth %", "RSS MB at the end"],
        [[n, f"{growth.get(n, float('nan')):+.2f}", num(result.samples[-1][1].get(n, 0) / MB, 1)] for n in names],
        "Mean of the first three samples after the warm-up against the mean of the last three.")
    samples = Table("RSS samples (MB)", ["t s", *names],
                    [[f"{t:.0f}", *(num(rss.get(n, 0) / MB, 1) for n in names)] for t, rss in result.samples])
    return [summary, growth_table, samples]
