"""Runs a plan: every scenario against A, B and C in turn, charging CPU time to each process."""

from __future__ import annotations

import asyncio
import os
import resource
from collections.abc import Callable
from pathlib import Path

from bench import procstat
from bench.http1 import encode_request
from bench.measurement import Measurement, percentile
from bench.openloop import open_loop
from bench.payloads import (
    MODELS,
    PROMPT_SIZES,
    SDK_HEADERS,
    chat_request,
    sdk_chat_request,
)
from bench.pinning import CorePlan
from bench.scenarios import CLOSED, FAST, OPEN, SDK, TIMING, Scenario
from bench.streams import stream_timing
from bench.targets import Target, api_request, kind_headers
from bench.wrk import run_wrk, write_script

CLIENT = "client"  # the load generator: wrk (a child) or this process's asyncio generators


def _client_cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    waited = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk runs are the only children we wait for
    return own.ru_utime + own.ru_stime + waited.ru_utime + waited.ru_stime


def _ms(seconds: float) -> float:
    return seconds * 1000


class Runner:
    def __init__(self, targets: list[Target], workdir: Path, gap: float,
                 log: Callable[[str], None] = print, plan: CorePlan | None = None) -> None:
        self.targets = targets
        self.plan = plan
        self.workdir = workdir
        self.gap = gap  # the paced fake's time between events
        self.log = log
        self.measurements: list[Measurement] = []
        self._scripts: dict[tuple[str, str, str, str], Path] = {}

    # -- the plan

    def warm_up(self, seconds: int) -> None:
        """Connections, pools and caches of every target, before anything is recorded."""
        for target in self.targets:
            kind = "json" if "json" in target.endpoints else next(iter(target.endpoints))
            run_wrk(target.endpoints[kind].url, self._script(Scenario(kind, "300B", CLOSED, seconds, client=SDK),
                                                             target), 16, seconds)

    def run(self, plan: list[Scenario]) -> list[Measurement]:
        for i, scenario in enumerate(plan, 1):
            for target in self.targets:  # A B C, then the next scenario: A B C ...
                if scenario.kind not in target.endpoints:
                    continue  # Portkey: the Anthropic scenarios only
                m = self.measure(scenario, target)
                self.measurements.append(m)
                self.log(f"[{i}/{len(plan)}] {scenario.name:<32} {target.key}  {m.throughput:9.1f} req/s  "
                         f"p50 {m.p50_ms:7.2f} ms  p99 {m.p99_ms:7.2f} ms  errors {m.errors}")
        return self.measurements

    def c_peak(self, kind: str, prompt: str, client: str = FAST) -> float:
        rates = [m.throughput for m in self.measurements if m.target == "C" and m.scenario.load == CLOSED
                 and m.scenario.kind == kind and m.scenario.prompt == prompt and m.scenario.client == client]
        if not rates:
            raise RuntimeError(f"an open-loop {kind} {prompt} scenario needs a closed-loop one before it")
        return max(rates)

    # -- one measurement

    def measure(self, scenario: Scenario, target: Target) -> Measurement:
        pids = target.processes(scenario.kind)
        cpu_before = procstat.cpu_snapshot(pids)
        client_before = _client_cpu()
        machine_before = procstat.machine_busy_seconds()
        cores_before = self._cores_busy()
        if scenario.load == CLOSED:
            m = self._closed(scenario, target)
        elif scenario.load == OPEN:
            m = self._open(scenario, target)
        elif scenario.load == TIMING:
            m = self._timing(scenario, target)
        else:
            raise ValueError(scenario.load)
        cpu_after = procstat.cpu_snapshot(pids)
        m.extra["machine_busy_s"] = procstat.machine_busy_seconds() - machine_before
        if self.plan and m.seconds:
            measured, load = (after - before for after, before in zip(self._cores_busy(), cores_before, strict=True))
            m.extra["measured_core_busy"], m.extra["load_cores_busy"] = measured / m.seconds, load / m.seconds
        m.cpu_seconds = {name: cpu_after[name] - cpu_before[name] for name in cpu_after if name in cpu_before}
        m.cpu_seconds[CLIENT] = _client_cpu() - client_before
        m.memory = {}
        for name, pid in pids.items():
            try:
                m.memory[name] = procstat.memory(pid)
            except FileNotFoundError:
                continue
        return m

    def _cores_busy(self) -> tuple[float, float]:
        if not self.plan:
            return 0.0, 0.0
        return procstat.core_busy_seconds((self.plan.measured,)), procstat.core_busy_seconds(self.plan.load)

    def _body(self, scenario: Scenario) -> bytes:
        request = api_request(scenario.kind, PROMPT_SIZES[scenario.prompt])
        if request is not None:
            return request[0]
        shape = sdk_chat_request if scenario.client == SDK else chat_request
        return shape(PROMPT_SIZES[scenario.prompt], model=MODELS[scenario.kind], stream=scenario.stream)

    def _headers(self, scenario: Scenario, target: Target) -> dict[str, str]:
        # The keyed kinds' key replaces the SDK's placeholder (Bearer sk-bench), for A, B and C alike.
        request = api_request(scenario.kind, PROMPT_SIZES[scenario.prompt])
        if request is not None:
            return {**request[1], **target.headers}
        return {**(SDK_HEADERS if scenario.client == SDK else {}), **kind_headers(scenario.kind), **target.headers}

    def _script(self, scenario: Scenario, target: Target) -> Path:
        key = (scenario.kind, scenario.prompt, scenario.client, target.key)
        if key not in self._scripts:
            name = "-".join(key)
            self._scripts[key] = write_script(self._body(scenario), name, self.workdir, self._headers(scenario, target))
        return self._scripts[key]

    def _closed(self, scenario: Scenario, target: Target) -> Measurement:
        r = run_wrk(target.endpoints[scenario.kind].url, self._script(scenario, target),
                    scenario.connections, scenario.seconds)
        return Measurement(scenario, target.key, r.requests, r.seconds, r.p50_ms, r.p90_ms, r.p99_ms,
                           r.status_errors, r.socket_errors, command=r.command)

    def _open(self, scenario: Scenario, target: Target) -> Measurement:
        rate = scenario.peak_fraction * self.c_peak(scenario.kind, scenario.prompt, scenario.client)
        ep = target.endpoints[scenario.kind]
        raw = encode_request("POST", ep.host, ep.port, ep.path, self._body(scenario),
                             headers=self._headers(scenario, target))
        r = asyncio.run(open_loop(ep.host, ep.port, [raw], rate, scenario.seconds))
        lat = r.latencies
        return Measurement(
            scenario, target.key, len(lat), r.seconds,
            _ms(percentile(lat, 50)), _ms(percentile(lat, 90)), _ms(percentile(lat, 99)),
            r.status_errors, r.socket_errors,
            extra={"rate": rate, "scheduled": r.scheduled, "connections": r.connections,
                   "send_lag_p50_ms": _ms(percentile(r.send_lag, 50)),
                   "send_lag_p99_ms": _ms(percentile(r.send_lag, 99))},
            command=f"python -m bench (open loop: POST {ep.url}, {rate:.0f} req/s for {scenario.seconds} s, "
                    f"pid {os.getpid()})",
        )

    def _timing(self, scenario: Scenario, target: Target) -> Measurement:
        ep = target.endpoints[scenario.kind]
        raw = encode_request("POST", ep.host, ep.port, ep.path, self._body(scenario),
                             headers=self._headers(scenario, target))
        r = asyncio.run(stream_timing(ep.host, ep.port, raw, scenario.connections, scenario.seconds))
        return Measurement(
            scenario, target.key, r.streams, r.seconds,
            _ms(percentile(r.ttfb, 50)), _ms(percentile(r.ttfb, 90)), _ms(percentile(r.ttfb, 99)),
            r.status_errors + r.incomplete, r.socket_errors,
            extra={"gap_ms": _ms(self.gap),
                   "gap_p50_ms": _ms(percentile(r.gaps, 50)), "gap_p99_ms": _ms(percentile(r.gaps, 99)),
                   "transit_p50_ms": _ms(percentile(r.transit, 50)),
                   "transit_p99_ms": _ms(percentile(r.transit, 99))},
            command=f"python -m bench (stream timing: POST {ep.url}, {scenario.connections} connection(s), "
                    f"{scenario.seconds} s)",
        )
