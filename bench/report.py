"""Tables from measurements: printed to the terminal and written to bench/results.md."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from bench.machine import MachineInfo
from bench.measurement import Measurement, role_of
from bench.payloads import PROMPT_SIZES
from bench.pinning import CorePlan, cores_of
from bench.scenarios import CLOSED, FAST, OPEN, TIMING, Scenario
from bench.targets import Target

TARGET_LABELS = {"A": "A fake", "B": "B Envoy", "C": "C Hapax", "P": "P Portkey"}
COMPARED = ("C", "P")  # the gateways compared with bare Envoy (B)
HAPAX_ROLES = ("supervisor", "control_plane", "ext_proc", "envoy")
MB = 1024  # procstat reports kB
NUMBER = re.compile(r"^([+-]?[\d,]+(\.\d+)?( / [\d,]+)?|–|)$")  # what num(), _signed() and memory print


# ---------------------------------------------------------------- formatting


def num(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.{digits}f}"


def _rate(value: float) -> str:
    return num(value, 0 if value >= 100 else 1)


def _signed(value: float | None, digits: int = 2) -> str:
    if value is None or math.isnan(value):
        return "–"
    return f"{value:+,.{digits}f}"


@dataclass(frozen=True)
class Table:
    title: str
    headers: Sequence[str]
    rows: Sequence[Sequence[str]]
    note: str = ""

    def _numeric(self, column: int) -> bool:
        return all(NUMBER.match(row[column]) for row in self.rows)

    def text(self) -> str:
        widths = [max(len(h), *(len(r[i]) for r in self.rows)) if self.rows else len(h)
                  for i, h in enumerate(self.headers)]
        right = [self._numeric(i) for i in range(len(self.headers))]

        def line(cells: Sequence[str]) -> str:
            padded = (c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True))
            return "  ".join(padded).rstrip()

        out = [self.title, line(self.headers), "  ".join("-" * w for w in widths)]
        out += [line(r) for r in self.rows]
        if self.note:
            out.append(self.note)
        return "\n".join(out)

    def markdown(self) -> str:
        out = [f"### {self.title}", "", "| " + " | ".join(self.headers) + " |",
               "|" + "|".join("---:" if self._numeric(i) else ":---" for i in range(len(self.headers))) + "|"]
        out += ["| " + " | ".join(r) + " |" for r in self.rows]
        if self.note:
            out += ["", self.note]
        return "\n".join(out)


# ---------------------------------------------------------------- grouping


def by_scenario(measurements: Sequence[Measurement]) -> list[tuple[Scenario, dict[str, Measurement]]]:
    groups: dict[Scenario, dict[str, Measurement]] = {}
    for m in measurements:
        groups.setdefault(m.scenario, {})[m.target] = m
    return list(groups.items())


def find(measurements: Sequence[Measurement], **want: object) -> dict[str, Measurement] | None:
    """The first round's measurements of the scenario matching ``want`` (A, B, C... by target)."""
    found = find_rounds(measurements, **want)
    return found[0] if found else None


def find_rounds(measurements: Sequence[Measurement], **want: object) -> list[dict[str, Measurement]]:
    """Every round's measurements of the scenario matching ``want``, in round order."""
    return [group for scenario, group in by_scenario(measurements)
            if all(getattr(scenario, k) == v for k, v in want.items())]


def _label(scenario: Scenario, group: dict[str, Measurement]) -> str:
    if scenario.load == OPEN:
        rate = next(iter(group.values())).extra.get("rate", math.nan)
        return f"{scenario.name} = {rate:.0f} req/s"
    if scenario.load == TIMING:
        return f"{scenario.name} (TTFB)"
    return scenario.name


# ---------------------------------------------------------------- tables


def main_table(measurements: Sequence[Measurement]) -> Table:
    rows = []
    for scenario, group in by_scenario(measurements):
        b = group.get("B")
        for key in TARGET_LABELS:
            m = group.get(key)
            if m is None:
                continue
            ratio = added50 = added99 = ext_proc = None
            if key in COMPARED and b is not None:
                ratio = m.throughput / b.throughput if b.throughput else None
                added50, added99 = m.p50_ms - b.p50_ms, m.p99_ms - b.p99_ms
            if key == "C":
                ext_proc = m.cpu_per_1k("ext_proc")
            label = TARGET_LABELS[key]
            if scenario.load == OPEN and "send_lag_p99_ms" in m.extra:
                label += f" (sender late p99 {num(m.extra['send_lag_p99_ms'])} ms)"
            rows.append([
                _label(scenario, group) if key == "A" else "", label,
                _rate(m.throughput), num(m.p50_ms), num(m.p90_ms), num(m.p99_ms), str(m.errors),
                num(ext_proc, 3), num(ratio, 3), _signed(added50), _signed(added99),
            ])
    return Table(
        "Throughput and latency (A B C interleaved per scenario)",
        ["scenario", "target", "req/s", "p50 ms", "p90 ms", "p99 ms", "errors",
         "ext_proc CPU s/1k req", "÷B req/s", "−B p50 ms", "−B p99 ms"],
        rows,
        "errors: responses >= 400 plus socket errors (connect, read, write, timeout); for stream timing also "
        "streams that did not end with [DONE]. −B: difference of the percentiles from B's. Latency of a paced "
        "stream is its time to first byte. 'fast:' scenarios are the fast lanes (model named, usage "
        "requested); 'sdk:' ones are the OpenAI SDK's own requests.",
    )


def cpu_table(measurements: Sequence[Measurement]) -> Table:
    rows = []
    for scenario, group in by_scenario(measurements):
        b, c = group.get("B"), group.get("C")
        if c is None:
            continue
        other = sum(c.cpu_per_1k(r) for r in ("supervisor", "control_plane"))
        ext_proc_cores = sum(v for k, v in c.cpu_seconds.items() if role_of(k) == "ext_proc") / c.seconds
        rows.append([
            scenario.name,
            num(b.cpu_per_1k("envoy"), 3) if b else "–",
            num(c.cpu_per_1k("envoy"), 3), num(c.cpu_per_1k("ext_proc"), 3), num(other, 3),
            num(c.cpu_per_1k("fake envoy") + c.cpu_per_1k("paced fake"), 3), num(c.cpu_per_1k("client"), 3),
            num(ext_proc_cores, 2),
            num(sum(c.cpu_seconds.values()) / c.seconds, 2),
            num(max(0.0, c.extra["machine_busy_s"] - sum(c.cpu_seconds.values())) / c.seconds, 2),
        ])
    return Table(
        "Where the CPU goes (CPU seconds per 1,000 requests = CPU ms per request)",
        ["scenario", "B envoy", "C envoy", "C ext_proc", "C sup.+control plane", "fake (in C run)",
         "client (in C run)", "C ext_proc cores busy (all)", "cores busy, ours (C run)", "cores busy, others (C run)"],
        rows,
        "From /proc/<pid>/stat (utime+stime) before and after each run. 'cores busy' is CPU seconds per "
        "second of the run: one Python ext_proc process cannot use more than 1.0 (the column adds up every "
        "ext_proc process). 'ours' is every process of the run (Hapax, fakes, load generator); 'others' is "
        "the rest of the machine (/proc/stat), which is shared.",
    )


def stream_table(measurements: Sequence[Measurement]) -> Table | None:
    rows = []
    for scenario, group in by_scenario(measurements):
        if scenario.load != TIMING:
            continue
        b = group.get("B")
        for key in TARGET_LABELS:
            m = group.get(key)
            if m is None:
                continue
            e = m.extra
            added_ttfb = added_chunk = None
            if key == "C" and b is not None:
                added_ttfb = m.p50_ms - b.p50_ms
                added_chunk = e["transit_p50_ms"] - b.extra["transit_p50_ms"]
            rows.append([scenario.name if key == "A" else "", TARGET_LABELS[key], str(m.requests),
                         num(m.p50_ms), num(m.p99_ms), num(e["transit_p50_ms"]), num(e["transit_p99_ms"]),
                         num(e["gap_p50_ms"]), num(e["gap_p99_ms"]), _signed(added_ttfb), _signed(added_chunk)])
    if not rows:
        return None
    gap = next(m.extra["gap_ms"] for m in measurements if m.scenario.load == TIMING)
    return Table(
        f"Streams, chunk by chunk (paced fake: one event every {gap:g} ms)",
        ["scenario", "target", "streams", "TTFB p50 ms", "TTFB p99 ms", "transit p50 ms", "transit p99 ms",
         "gap p50 ms", "gap p99 ms", "C−B TTFB p50", "C−B transit p50"],
        rows,
        "transit: from the fake writing a chunk (its send time travels in the chunk) to the client reading it. "
        f"gap: time between consecutive events at the client (the fake sends them {gap:g} ms apart; a proxy "
        "that buffered the stream would show gaps near 0).",
    )


def size_points(measurements: Sequence[Measurement]) -> list[tuple[str, int, float, float]]:
    """(prompt, bytes, C−B p50 ms, ext_proc CPU s/1k) for non-streaming JSON at one connection."""
    points = []
    for scenario, group in by_scenario(measurements):
        if scenario.kind == "json" and scenario.client == FAST and scenario.load == CLOSED \
                and scenario.connections == 1 \
                and "B" in group and "C" in group:
            b, c = group["B"], group["C"]
            points.append((scenario.prompt, PROMPT_SIZES[scenario.prompt], c.p50_ms - b.p50_ms,
                           c.cpu_per_1k("ext_proc")))
    return sorted(points, key=lambda p: p[1])


def size_table(measurements: Sequence[Measurement]) -> Table | None:
    points = size_points(measurements)
    if len(points) < 2:
        return None
    rows = []
    for i, (prompt, size, added, cpu) in enumerate(points):
        slope = cpu_slope = None
        if i:
            _, size0, added0, cpu0 = points[i - 1]
            kb = (size - size0) / 1024
            slope, cpu_slope = (added - added0) * 1000 / kb, (cpu - cpu0) * 1000 / kb
        rows.append([prompt, num(added), _signed(slope, 1), num(cpu, 3), _signed(cpu_slope, 1)])
    return Table(
        "Prompt size (non-streaming, 1 connection)",
        ["prompt", "C−B p50 ms", "µs per extra KB", "ext_proc CPU ms/req", "ext_proc CPU µs per extra KB"],
        rows,
        "Linear growth shows as a steady 'per extra KB' from one size to the next; a larger figure for the "
        "larger step would mean superlinear cost (e.g. a body copied or parsed once more per size).",
    )


def process_table(measurements: Sequence[Measurement]) -> Table | None:
    final: dict[str, tuple[int, int, float]] = {}  # name -> (peak kB, last RSS kB, total CPU s)
    for m in measurements:
        if m.target != "C":
            continue
        for name, mem in m.memory.items():
            if role_of(name) not in HAPAX_ROLES:
                continue
            peak, _, cpu = final.get(name, (0, 0, 0.0))
            final[name] = (max(peak, mem.hwm_kb), mem.rss_kb, cpu + m.cpu_seconds.get(name, 0.0))
    if not final:
        return None
    rows = [[name, num(peak / MB, 1), num(rss / MB, 1), num(cpu, 1)] for name, (peak, rss, cpu) in final.items()]
    return Table("Hapax processes", ["process", "peak RSS MB (VmHWM)", "RSS MB at the end", "CPU s in C runs"],
                 rows)


def memory_table(measurements: Sequence[Measurement]) -> Table | None:
    """Each Hapax process's memory after each C run: which scenario raised the peak, and what stayed."""
    runs = [m for m in measurements if m.target == "C"]
    names = list(dict.fromkeys(n for m in runs for n in m.memory if role_of(n) in HAPAX_ROLES))
    if not names:
        return None
    rows = []
    for m in runs:
        cells = []
        for name in names:
            mem = m.memory.get(name)
            cells.append(f"{mem.rss_kb / MB:.0f} / {mem.hwm_kb / MB:.0f}" if mem else "–")
        rows.append([m.scenario.name, *cells])
    return Table("Hapax memory after each C run (RSS / peak RSS, MB)", ["scenario", *names], rows,
                 "RSS is VmRSS, peak is VmHWM (the most since the process started), from /proc/<pid>/status.")


def pinning_table(targets: Sequence[Target], harness: int) -> Table:
    """The cores each process may run on, read back from the kernel (not what was asked for)."""
    rows = [["harness (wrk, open-loop and stream clients)", str(harness), cores_of(harness)]]
    seen = {harness}
    for target in targets:
        for name, pid in target.all_processes().items():
            if pid in seen:
                continue
            seen.add(pid)
            owner = "" if name in ("fake envoy", "paced fake") else f"{target.key}: "
            rows.append([owner + name, str(pid), cores_of(pid)])
    return Table("Pinning (each process's CPU affinity, from sched_getaffinity)", ["process", "pid", "cores"], rows)


def cores_table(measurements: Sequence[Measurement], plan: CorePlan | None) -> Table | None:
    if plan is None:
        return None
    rows = [[m.scenario.name, TARGET_LABELS[m.target], num(m.extra.get("measured_core_busy"), 2),
             num(m.extra.get("load_cores_busy"), 2)] for m in measurements]
    return Table(
        f"Cores busy during each run (measured core {plan.measured}; load cores {','.join(map(str, plan.load))})",
        ["scenario", "target", "measured core busy", "load cores busy"], rows,
        "CPU seconds per second from /proc/stat's cpuN lines, all processes included (the machine is shared). "
        "A measured core near 1.0 means the target used its core; load cores near their count mean the "
        "generator and the fake were the limit, and B's (or C's) figure is a floor.",
    )


# ---------------------------------------------------------------- the file


def machine_lines(info: MachineInfo) -> list[str]:
    return [
        (f"- Machine: {info.cpu_model}, {info.cpu_count} CPUs (/proc/cpuinfo), Linux {info.kernel}; "
         f"load average when the run started: {info.load_before} (the machine is shared)"),
        f"- Versions: Python {info.python}, Envoy {info.envoy}, {info.wrk}, Hapax {info.hapax}",
    ]


def results_markdown(*, title: str, started: str, elapsed: float, info: MachineInfo, invocation: str,
                     tables: Sequence[Table], method: Sequence[str], commands: Sequence[str]) -> str:
    out = [f"# {title}", "", f"- Date: {started} (took {elapsed / 60:.1f} min)", *machine_lines(info),
           f"- Command: `{invocation}` (what `./dev bench` runs), from the repository's root", ""]
    for table in tables:
        out += [table.markdown(), ""]
    out += ["## Method", "", *[f"- {line}" for line in method], "", "## Commands", "",
            "Every process and load run, in order (temporary paths are per run):", "", "```"]
    out += [*commands, "```", ""]
    return "\n".join(out)
