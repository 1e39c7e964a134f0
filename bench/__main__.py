"""``python -m bench`` (or ``./dev bench``): Hapax against bare Envoy against the fake provider.

    ./dev bench            full run, about 10 minutes -> bench/results.md
    ./dev bench --quick    about 3 minutes            -> bench/results-quick.md
    ./dev bench --soak     10 minutes of Hapax alone  -> bench/results-soak.md

Everything listens on 127.0.0.1 and everything started is stopped at the
end, on Ctrl-C and on errors too.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from bench import procstat
from bench.goals import goals, goals_table, rss_goal, sdk_goals, sdk_goals_table, soak_goal
from bench.machine import MachineInfo, machine_info
from bench.pinning import CorePlan, allowed_cpus, core_plan, pin_harness
from bench.portkey import start_portkey
from bench.processes import ProcessSet, StartError
from bench.report import (
    Table,
    cores_table,
    cpu_table,
    main_table,
    memory_table,
    pinning_table,
    process_table,
    results_markdown,
    size_table,
    stream_table,
)
from bench.runner import Runner
from bench.scenarios import full_plan, in_rounds, quick_plan
from bench.soak import run_soak, soak_tables
from bench.targets import APART, REPO, start_bare_envoy, start_fakes, start_hapax, target_a
from bench.wrk import WrkError, wrk_binary
from hapax.envoy_process import envoy_binary

HERE = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="fewer scenarios, shorter runs (about 3 min)")
    mode.add_argument("--soak", action="store_true", help="Hapax alone at a fixed rate, RSS every 10 s")
    parser.add_argument("--output", type=Path, help="where to write the markdown results")
    parser.add_argument("--only", metavar="TEXT", action="append",
                        help="run only the scenarios whose name contains TEXT (e.g. 'paced stream'); "
                             "repeated, those whose name contains any of them")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the plan this many times in a row; issue #20's targets report the median")
    parser.add_argument("--no-pin", action="store_true",
                        help="do not pin: every process on every core (the runs before issue #20)")
    parser.add_argument("--portkey", metavar="DIR", type=Path, default=os.environ.get("HAPAX_BENCH_PORTKEY"),
                        help="a directory with @portkey-ai/gateway installed (npm): Portkey joins the "
                             "Anthropic scenarios (env HAPAX_BENCH_PORTKEY)")
    parser.add_argument("--gap-ms", type=float, default=10.0, help="paced fake: time between SSE events")
    parser.add_argument("--soak-minutes", type=float, default=10.0)
    parser.add_argument("--soak-rate", type=float, default=100.0, help="soak requests per second")
    parser.add_argument("--soak-warmup", type=float, default=120.0, help="seconds before growth is counted")
    return parser.parse_args(argv)


def _stop_on_sigterm() -> None:
    # SIGTERM takes the same way out as Ctrl-C, through every finally/with block.
    def handler(_sig: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def method_lines(args: argparse.Namespace, plan: CorePlan | None = None) -> list[str]:
    pinning = (f"Pinned (issue #20): {plan.describe()}. B is Envoy with --concurrency 1; C is all of "
               "`hapax serve` (supervisor, control plane, one ext_proc worker, Envoy with --envoy-concurrency 1) "
               "under one `taskset -c`; so C/B is per core, whatever the machine's core count. B and C take "
               "turns on the same core, so neither inherits a faster or quieter core than the other."
               if plan else "Not pinned (--no-pin): every process may run on every core.")
    return [
        pinning,
        ("A: the fake provider called directly, an Envoy listener with pre-encoded `direct_response` answers "
         "(bench/fake_provider.py): chat.completion JSON with usage under /json/, an SSE stream of 20 chunks + "
         "usage + [DONE] under /sse/ (sent as one body), 200 on GET .../models."),
        ("B: bare Envoy with Hapax's listener settings (HCM, codec AUTO, buffer limits, timeouts) and a route "
         "with prefix_rewrite to the fake, no ext_proc (bench/bare_proxy.py)."),
        ("C: `hapax serve` (supervisor, control plane, ext_proc, Envoy) with one provider per kind of answer "
         "(openai-type, and one anthropic-type at the fake's Anthropic answer), selected by the request's "
         "model, or by the preference order for model=auto; log level WARNING, access log off. The seed "
         "scenario runs a second `hapax serve` on the configuration `hapax serve` writes when given none "
         "(control_plane/defaults.py), Anthropic first in its preference, same logging. The keyed scenarios "
         "run a `hapax serve` each on C's configuration plus `clients:` with one client key ('json with client "
         "keys': Envoy's Lua + basic_auth check on every request), and plus limits on that client at 10^12 "
         "requests and tokens per minute and per day ('json with keys + limits': Envoy's rate limit filter asks "
         "ext_proc's admission service, embedded SQLite store, settled from the access log); their requests "
         "(to A and B too) carry `Authorization: Bearer <that key>` instead of the SDK's placeholder. The "
         "experiment scenario runs a `hapax serve` on C's configuration plus an A/B experiment on its model "
         "(two variants of the JSON provider, 50/50, no user header: Envoy's weighted clusters, then the "
         "upstream step). Each "
         "gateway apart is started only when the plan has its scenarios; its processes alone are measured in "
         "them."),
        ("P (with --portkey): Portkey's gateway (Node), pinned like C, told `x-portkey-provider: anthropic` and "
         "`x-portkey-custom-host` = the fake's Anthropic answer; in the Anthropic scenarios only."),
        ("Clients: 'fast' is the fast lanes of issue #8 (the provider's model named, streams asking for the "
         "usage chunk with stream_options, no SDK headers): Hapax passes those bodies through untouched. 'sdk' "
         "is what the OpenAI Python SDK 3.63.0 sends (captured from a real call: its accept-encoding, "
         "authorization, user-agent and x-stainless-* headers; body {model, stream, messages}, stream=false "
         "too, no stream_options), the lanes real clients take."),
        ("Each scenario runs against A, B, C back to back before the next scenario (A B C A B C ...), so "
         "drift on the shared machine hits all three alike."),
        ("Closed loop: wrk, 1 thread, keep-alive, fixed connections (1, 16, 64) and duration, a Lua script for "
         "the POST body; percentiles from wrk (latency of completed requests)."),
        ("Open loop: an asyncio generator (bench/openloop.py) sends on a fixed timetable at half of C's peak "
         "(max C req/s over the closed-loop runs of the same request) and measures from each request's "
         "scheduled time, so a stall counts against every request due during it (no coordinated omission)."),
        (f"Streams: throughput with the one-body SSE fake through wrk; timing with a paced raw-asyncio fake "
         f"(bench/paced_fake.py, one event every {args.gap_ms:g} ms) and an asyncio client recording every "
         "event's arrival."),
        ("CPU per process from /proc/<pid>/stat (utime+stime) around each run; Hapax's processes found from "
         "the supervisor with pgrep -P and named by command line; peak RSS is VmHWM from /proc/<pid>/status."),
        ("Pinned, the generator and the fakes share the load core(s): when they are full (the 'Cores busy' "
         "table) they, not Envoy, bound A and B. " if plan else
         "Everything (generator, fake, target) shares the machine's CPUs: A and B are bounded by that, not "
         "by Envoy alone. ") + "Numbers are for comparing A, B and C within one run.",
    ]


def print_tables(tables: list[Table]) -> None:
    for table in tables:
        print()
        print(table.text())


def benchmark(args: argparse.Namespace, procs: ProcessSet, envoy: Path, workdir: Path,
              log) -> tuple[list[Table], list[str]]:
    plan = args.core_plan
    if plan:
        pin_harness(plan)  # before anything starts: wrk, the fakes and the generators inherit it
        log(f"pinned: {plan.describe()}")
    scenarios = quick_plan() if args.quick else full_plan()
    if args.only:
        scenarios = [s for s in scenarios if any(text in s.name for text in args.only)]
    scenarios = in_rounds(scenarios, args.rounds)
    # A gateway of C's own per kind of APART (the seed's config, keys, keys + limits), if the plan has it.
    apart = {s.kind for s in scenarios} & set(APART)
    fakes = start_fakes(procs, envoy, workdir, args.gap_ms, plan)
    targets = [target_a(fakes), start_bare_envoy(procs, envoy, workdir, fakes, plan),
               start_hapax(procs, workdir, fakes, plan, apart)]
    if args.portkey:
        targets.append(start_portkey(procs, workdir, args.portkey, fakes, plan))
    log("targets up: " + ", ".join(f"{t.key} {next(iter(t.endpoints.values())).url}" for t in targets))
    runner = Runner(targets, workdir, args.gap_ms / 1000, log, plan)
    runner.warm_up(1 if args.quick else 2)
    measurements = runner.run(scenarios)
    tables = [sdk_goals_table(sdk_goals(measurements, portkey=bool(args.portkey))), goals_table(goals(measurements)),
              main_table(measurements), cpu_table(measurements), pinning_table(targets, os.getpid())]
    tables += [t for t in (cores_table(measurements, plan),) if t]
    tables += [t for t in (stream_table(measurements), size_table(measurements), process_table(measurements),
                           memory_table(measurements)) if t]
    return tables, procs.commands() + [m.command for m in measurements]


def soak(args: argparse.Namespace, procs: ProcessSet, envoy: Path, workdir: Path,
         log) -> tuple[list[Table], list[str]]:
    fakes = start_fakes(procs, envoy, workdir, args.gap_ms, None)
    hapax = start_hapax(procs, workdir, fakes, apart=())
    seconds = args.soak_minutes * 60
    log(f"soak: {args.soak_rate:g} req/s for {seconds:.0f} s against {hapax.endpoints['json'].url}")
    result = run_soak(hapax, args.soak_rate, seconds, min(args.soak_warmup, seconds / 2), log)
    peaks = [procstat.memory(pid).hwm_kb for name, pid in hapax.processes().items()
             if name.split("#")[0] == "ext_proc"]
    goal_list = [rss_goal(max(peaks) if peaks else None), soak_goal(result.growth())]
    command = (f"python -m bench (open loop: POST {hapax.endpoints['json'].url}, {args.soak_rate:g} req/s "
               f"for {seconds:.0f} s, mix of 300B/10KB/200KB JSON, JSON by alias and streams)")
    return [goals_table(goal_list), *soak_tables(result)], procs.commands() + [command]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Decided once, before the harness pins itself to the load cores.
    args.core_plan = None if args.no_pin or args.soak else core_plan(allowed_cpus())
    _stop_on_sigterm()
    try:
        envoy, _ = envoy_binary(), wrk_binary()
    except (WrkError, OSError) as err:
        print(f"bench: {err}", file=sys.stderr)
        return 2
    mode = "soak" if args.soak else "quick" if args.quick else "full"
    output = args.output or HERE / {"full": "results.md", "quick": "results-quick.md", "soak": "results-soak.md"}[mode]
    info: MachineInfo = machine_info(envoy, REPO)
    invocation = shlex.join(["python", "-m", "bench", *(sys.argv[1:] if argv is None else argv)])
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    t0 = time.monotonic()

    def log(line: str) -> None:
        print(f"{time.monotonic() - t0:6.1f}s  {line}", flush=True)

    log(f"{mode} run; {info.cpu_model} x{info.cpu_count}; load average {info.load_before}")
    workdir = Path(tempfile.mkdtemp(prefix="hapax-bench-"))
    try:
        with ProcessSet() as procs:
            run = soak if args.soak else benchmark
            tables, commands = run(args, procs, envoy, workdir, log)
            log("stopping everything")
    except KeyboardInterrupt:
        print("\nbench: interrupted; every process it started has been stopped", file=sys.stderr)
        return 130
    except (StartError, WrkError) as err:
        print(f"bench: {err}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.monotonic() - t0
    print_tables(tables)
    title = {"full": "Hapax benchmark", "quick": "Hapax benchmark (quick)", "soak": "Hapax soak"}[mode]
    output.write_text(results_markdown(
        title=title, started=started, elapsed=elapsed, info=info, invocation=invocation, tables=tables,
        method=method_lines(args, args.core_plan),
        commands=commands))
    print(f"\nwrote {output} ({elapsed / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
