"""``python -m bench.key_filters``: what each of Envoy's client-key filters costs, on bare Envoy.

Hapax checks client keys (``clients:``) with three filters of Envoy's own
(control_plane/resources/client_keys.py): a Lua filter that turns ``Bearer <key>`` into
Basic credentials, ``basic_auth`` that checks them against the key lines (the virtual
host's per-filter config), and ``header_to_metadata`` that keeps the checked id for the
access log. Here they are added one at a time to bare Envoy (target B, bench/bare_proxy.py),
with the exact configs the control plane generates, so that each one's cost shows apart
from everything else Hapax does:

- ``bare``: B as the benchmark runs it;
- ``lua (empty)``: a Lua filter whose ``envoy_on_request`` does nothing (what running Lua at all costs);
- ``lua``: the key-form script;
- ``basic_auth``: the check alone, the request carrying ``Authorization: Basic`` itself;
- ``lua + basic_auth``, and ``+ header_to_metadata``: all of what a keyed Hapax adds.

Every variant is its own Envoy (one worker thread) on the measured core, the fake and wrk on
the others, as in ``python -m bench``; the variants take turns, round after round, and each
figure is the median over rounds. The request is the SDK's 300B JSON (bench/payloads.py).
"""

from __future__ import annotations

import argparse
import base64
import copy
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format

from bench import procstat
from bench.bare_proxy import bare_proxy_config
from bench.payloads import SDK_HEADERS, sdk_chat_request
from bench.pinning import CorePlan, allowed_cpus, core_plan, pin_harness
from bench.processes import ProcessSet, start_envoy
from bench.report import Table, num
from bench.targets import KEYED, Fakes, client_key, keyed_config, start_fakes
from bench.wrk import run_wrk, write_script
from control_plane.config import parse_config
from control_plane.resources import client_keys
from hapax.client_keys import KEY_PATTERN
from hapax.envoy_process import envoy_binary

EMPTY_LUA = "function envoy_on_request(handle)\nend\n"


def _dict(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def key_filters(fakes: Fakes) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """The control plane's three filters by name, and the virtual host's per-filter config (the key lines)."""
    config = parse_config(yaml.safe_dump(keyed_config(fakes)), env={})
    filters = {f.name: _dict(f) for f in client_keys.key_filters(config)}
    per_filter = {name: _dict(any_) for name, any_ in client_keys.virtual_host_keys(config).items()}
    return filters, per_filter


def variants(fakes: Fakes) -> dict[str, tuple[dict[str, Any], str]]:
    """Name -> (bare Envoy's config with some of the key filters, the Authorization header to send)."""
    filters, per_filter = key_filters(fakes)
    form, check, keep = (filters[n] for n in (client_keys.FORM_FILTER, client_keys.CHECK_FILTER,
                                               client_keys.KEPT_FILTER))
    empty = copy.deepcopy(form)
    empty["typed_config"]["default_source_code"] = {"inline_string": EMPTY_LUA}
    key = client_key()[0]
    match = KEY_PATTERN.match(key)
    assert match is not None
    bearer = f"Bearer {key}"
    basic = "Basic " + base64.b64encode(f"{match.group(1)}:{match.group(2)}".encode()).decode()
    chosen = {"bare": ([], bearer), "lua (empty)": ([empty], bearer), "lua": ([form], bearer),
              "basic_auth": ([check], basic), "lua + basic_auth": ([form, check], bearer),
              "lua + basic_auth + header_to_metadata": ([form, check, keep], bearer)}
    out = {}
    for name, (added, authorization) in chosen.items():
        config = bare_proxy_config(fakes.envoy_port, fakes.paced_port)
        hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["http_filters"] = [*added, *hcm["http_filters"]]  # first, as in Hapax (after its compressor)
        if check in added:
            hcm["route_config"]["virtual_hosts"][0]["typed_per_filter_config"] = per_filter
        out[name] = (config, authorization)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.key_filters", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args(argv)
    plan = core_plan(allowed_cpus())
    if plan:
        pin_harness(plan)
    envoy = envoy_binary()
    body = sdk_chat_request(300, model="bench-json", stream=False)
    workdir = Path(tempfile.mkdtemp(prefix="hapax-key-filters-"))
    # name -> per round: req/s, Envoy CPU ms/req, errors, measured core busy, load cores busy
    runs: dict[str, list[tuple[float, float, int, float, float]]] = {}
    try:
        _run(args, plan, envoy, body, workdir, runs)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    _print(args, runs)
    return 0


def _run(args: argparse.Namespace, plan: CorePlan | None, envoy: Path, body: bytes, workdir: Path,
         runs: dict[str, list[tuple[float, float, int, float, float]]]) -> None:
    measured, load = ((plan.measured,), plan.load) if plan else ((), ())
    with ProcessSet() as procs:
        fakes = start_fakes(procs, envoy, workdir, 10.0, plan)
        started = {}
        for i, (name, (config, authorization)) in enumerate(variants(fakes).items()):
            proc, port = start_envoy(procs, f"envoy-{i}", config, envoy, workdir,
                                     prefix=plan.taskset() if plan else [], concurrency=1 if plan else None)
            script = write_script(body, f"v{i}", workdir, {**SDK_HEADERS, "authorization": authorization})
            started[name] = (proc, f"http://127.0.0.1:{port}/v1/chat/completions", script)
            run_wrk(started[name][1], script, 16, 1)  # warm-up
        for r in range(1, args.rounds + 1):
            for name, (proc, url, script) in started.items():
                before = procstat.cpu_seconds(proc.pid)
                cores_before = procstat.core_busy_seconds(measured), procstat.core_busy_seconds(load)
                result = run_wrk(url, script, args.connections, args.seconds)
                cpu_ms = (procstat.cpu_seconds(proc.pid) - before) * 1000 / max(result.requests, 1)
                busy, load_busy = ((procstat.core_busy_seconds(cores) - b) / result.seconds
                                   for cores, b in zip((measured, load), cores_before, strict=True))
                errors = result.status_errors + result.socket_errors
                runs.setdefault(name, []).append((result.throughput, cpu_ms, errors, busy, load_busy))
                print(f"round {r} {name:<40} {result.throughput:9.1f} req/s  Envoy {cpu_ms:.4f} ms/req  "
                      f"cores busy {busy:.2f} (measured) {load_busy:.2f} (load)  errors {errors}", flush=True)


def _print(args: argparse.Namespace, runs: dict[str, list[tuple[float, float, int, float, float]]]) -> None:
    bare = runs["bare"]
    rows = []
    for name, values in runs.items():
        rate, cpu = statistics.median(v[0] for v in values), statistics.median(v[1] for v in values)
        # Paired with bare in the same round: the machine's drift from round to round cancels out.
        ratio = statistics.median(v[0] / b[0] for v, b in zip(values, bare, strict=True))
        added = statistics.median(v[1] - b[1] for v, b in zip(values, bare, strict=True))
        rows.append([name, num(rate, 0), num(ratio, 3), num(cpu, 4), f"{added:+.4f}",
                     " ".join(f"{v[1]:.4f}" for v in values), num(statistics.median(v[3] for v in values)),
                     num(statistics.median(v[4] for v in values)), str(sum(v[2] for v in values))])
    table = Table(f"Client-key filters on bare Envoy (c={args.connections}, {args.seconds} s x {args.rounds} "
                  f"rounds, medians; kinds {', '.join(KEYED)} of python -m bench)",
                  ["variant", "req/s", "÷bare", "Envoy CPU ms/req", "+ms/req over bare", "Envoy ms/req each round",
                   "measured core busy", "load cores busy", "errors"], rows,
                  "÷bare and +ms/req: the median over rounds of each round's figure against bare's in that "
                  "round. Envoy CPU: its process's utime+stime (/proc/<pid>/stat), without the kernel's softirq "
                  "work for its sockets; cores busy from /proc/stat (a load core near 1.0: wrk and the fake set "
                  "the pace).")
    print()
    print(table.text())


if __name__ == "__main__":
    sys.exit(main())
