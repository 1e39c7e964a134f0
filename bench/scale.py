"""``python -m bench.scale``: how the generated configuration grows with the config file (issue 21).

For each size (N providers, M department routes) it generates a config (openai,
anthropic and ollama providers in turn, each on a loopback address nothing listens
on, all of them in ``provider_preference``; M routes spread over the chat,
completion and embeddings handlers), builds its snapshot as the control plane does,
and prints per size: the build time, the serialised bytes per xDS type, the
clusters, aggregate members and routes, the control plane's resident memory growth
while holding the snapshot, how long Envoy takes to validate it
(``envoy --mode validate`` on the static bootstrap ``hapax validate --envoy`` writes),
with ``--clients K`` how long the first version and then an edit (one route more)
take to reach the last of K xDS clients (bench/xds_fanout.py), and with ``--serve`` how
long a whole ``hapax serve`` with the config takes to print its ready banner, and its
control plane's resident memory then.

    python -m bench.scale                 the default sizes
    python -m bench.scale --quick         two small sizes
    python -m bench.scale --providers 100 --routes 2000 --clients 200 --serve
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from bench.xds_fanout import measure_fanout
from control_plane.config import parse_config
from control_plane.config.model import HapaxConfig
from control_plane.resources.names import Address, ExtProcEndpoints
from control_plane.resources.stats import envoy_stats_tags, stats_label_keys
from control_plane.snapshot import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    RUNTIME,
    SECRET,
    Snapshot,
    _aggregate_members,
    build_snapshot,
)
from control_plane.static_bootstrap import rejection_of, validate_command, write_bootstrap

SIZES = ((10, 100), (25, 100), (50, 100), (100, 100), (100, 1000), (10, 2000), (100, 2000))
QUICK_SIZES = ((10, 100), (25, 100))
# One validation over this is not worth waiting for at the next, larger size either.
VALIDATION_LIMIT_S = 60.0
SERVE_LIMIT_S = 120.0
REPO = Path(__file__).resolve().parent.parent
TYPES = {"listeners": LISTENER, "routes": ROUTE, "clusters": CLUSTER, "endpoints": ENDPOINT,
         "secrets": SECRET, "runtime": RUNTIME}
HANDLERS = ("chat", "completion", "embeddings")
ENDPOINTS = ExtProcEndpoints(grpc=(Address("127.0.0.1", 1),), http=(Address("127.0.0.1", 2),),
                             verdicts=(Address("127.0.0.1", 3),))


def config_text(providers: int, routes: int) -> str:
    """N providers of the three types in turn, M department routes; every provider preferred."""
    lines = ["providers:"]
    names = []
    for i in range(providers):
        kind = ("openai", "anthropic", "ollama")[i % 3]
        name = f"p{i:03d}"
        names.append(name)
        base = f"http://127.0.0.1:{20000 + i}" + ("/v1" if kind == "openai" else "")
        key = ", api_key: k" if kind != "ollama" else ""
        lines.append(f"  {name}: {{type: {kind}, model: m{i:03d}, base_url: \"{base}\"{key}}}")
    lines.append(f"provider_preference: [{', '.join(names)}]")
    lines.append("routes:")
    for j in range(routes):
        handler = HANDLERS[j % len(HANDLERS)]
        path = {"chat": "chat/completions", "completion": "completions", "embeddings": "embeddings"}[handler]
        lines.append(f"  - {{path: /v1/dept{j:04d}/{path}, handler: {handler}, "
                     f"metrics_labels: {{department: dept{j:04d}}}}}")
    return "\n".join(lines) + "\n"


def make_config(providers: int, routes: int) -> HapaxConfig:
    return parse_config(config_text(providers, routes), env={})


@dataclass
class Row:
    providers: int
    routes: int
    build_s: float
    bytes_by_type: dict[str, int]
    clusters: int
    aggregates: int
    members: int
    envoy_routes: int
    rss_mb: float
    validate: str
    fanout: str = "–"  # seconds to the last of K clients: the first version / an edit
    serve: str = "–"  # `hapax serve` with the config: seconds to its ready banner, its control plane's RSS


def resource_bytes(snapshot: Snapshot) -> dict[str, int]:
    return {label: sum(m.ByteSize() for m in snapshot.of_type(url).values()) for label, url in TYPES.items()}


def aggregate_members(snapshot: Snapshot) -> tuple[int, int]:
    """(aggregate clusters, their members in all)."""
    lists = [m for c in snapshot.of_type(CLUSTER).values() if (m := _aggregate_members(c))]
    return len(lists), sum(len(m) for m in lists)


def envoy_route_count(snapshot: Snapshot) -> int:
    return sum(len(vh.routes) for rc in snapshot.of_type(ROUTE).values() for vh in rc.virtual_hosts)


def _rss_mb() -> float:
    # Resident pages of this process (/proc/self/statm's second field), in MB.
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 1e6


def timed_build(config: HapaxConfig) -> tuple[Snapshot, float, float]:
    """The snapshot, its build time, and how much resident memory holding it added."""
    gc.collect()
    before = _rss_mb()
    start = time.perf_counter()
    snapshot = build_snapshot(config, "bench", ENDPOINTS)
    return snapshot, time.perf_counter() - start, _rss_mb() - before


def envoy_validate(envoy: Path, snapshot: Snapshot, config: HapaxConfig, limit: float) -> tuple[str, float]:
    """("ok"/"rejected: ..."/"skipped ...", seconds): Envoy's validation of the static bootstrap
    ``hapax validate --envoy`` writes (control_plane/static_bootstrap.py), on one worker thread."""
    with tempfile.TemporaryDirectory() as tmp:
        path = write_bootstrap(snapshot, Path(tmp), envoy_stats_tags(stats_label_keys(config)))
        start = time.perf_counter()
        try:
            result = subprocess.run([*validate_command(envoy, path), "--concurrency", "1"],
                                    capture_output=True, text=True, timeout=limit)
        except subprocess.TimeoutExpired:
            return f"skipped (over {limit:.0f} s)", limit
        took = time.perf_counter() - start
    rejection = rejection_of(result.returncode, result.stdout, result.stderr)
    return ("rejected: " + _reason(rejection) if rejection else "ok"), took


def _reason(rejection: str) -> str:
    """Envoy's last line without its log prefix, nor the bootstrap file's name."""
    text = re.sub(r"^(\[[^\]]*\]\s*)+", "", rejection.splitlines()[-1])
    return text.split("': ", 1)[-1][:90]


def fanout(config: HapaxConfig, providers: int, routes: int, clients: int) -> str:
    first = build_snapshot(config, "v1", ENDPOINTS)
    edited = build_snapshot(make_config(providers, routes + 1), "v2", ENDPOINTS)
    result = asyncio.run(measure_fanout(first, edited, clients))
    return f"{result.first_s:.2f} s / {result.edit_s:.2f} s"


def serve_ready(config_text_: str, limit: float = SERVE_LIMIT_S) -> str:
    """Starts ``hapax serve`` with the config (ports 0: any free one; its providers are not running),
    times it to its ready banner, reads its control plane's resident memory, and stops it."""
    with tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp) / "hapax.yaml"
        config_path.write_text(config_text_)
        out = Path(tmp) / "serve.out"
        start = time.monotonic()
        with out.open("wb") as sink:
            proc = subprocess.Popen([sys.executable, "-m", "hapax.cli", "serve", "--config", str(config_path),
                                     "--port", "0", "--metrics-port", "0", "--admin-port", "0",
                                     "--log-level", "WARNING"], stdout=sink, stderr=subprocess.STDOUT,
                                    cwd=REPO, start_new_session=True)
        try:
            while b"Press Ctrl-C" not in out.read_bytes():
                if proc.poll() is not None or time.monotonic() - start > limit:
                    return f"not ready ({'exit ' + str(proc.returncode) if proc.returncode is not None else 'timeout'})"
                time.sleep(0.05)
            ready = time.monotonic() - start
            return f"{ready:.1f} s, control plane {_control_plane_rss_mb(proc.pid):.0f} MB"
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)


def _control_plane_rss_mb(serve_pid: int) -> float:
    """The resident memory of ``hapax serve``'s control plane child (from /proc)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(fields[1]) == serve_pid and b"control_plane" in cmdline:
            return int((stat.parent / "statm").read_text().split()[1]) * 4096 / 1e6
    return float("nan")


def measure(providers: int, routes: int, envoy: Path | None, validate: bool, clients: int = 0,
            serve: bool = False) -> Row:
    config = make_config(providers, routes)
    snapshot, build_s, rss = timed_build(config)
    aggregates, members = aggregate_members(snapshot)
    if envoy is None:
        verdict = "no envoy"
    elif not validate:
        verdict = "skipped"
    else:
        outcome, took = envoy_validate(envoy, snapshot, config, VALIDATION_LIMIT_S)
        verdict = outcome if outcome.startswith("skipped") else f"{took:.1f} s {outcome}"
    spread = fanout(config, providers, routes, clients) if clients else "–"
    ready = serve_ready(config_text(providers, routes)) if serve else "–"
    return Row(providers, routes, build_s, resource_bytes(snapshot), len(snapshot.of_type(CLUSTER)),
               aggregates, members, envoy_route_count(snapshot), rss, verdict, spread, ready)


def table(rows: Iterable[Row]) -> str:
    head = ["providers", "routes", "build s", *(f"{t} KB" for t in TYPES), "total KB", "clusters",
            "aggregates", "agg. members", "envoy routes", "RSS +MB", "envoy validate", "to K clients: first / edit",
            "hapax serve: ready"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        kb = [f"{r.bytes_by_type[t] / 1000:.1f}" for t in TYPES]
        cells = [r.providers, r.routes, f"{r.build_s:.2f}", *kb, f"{sum(r.bytes_by_type.values()) / 1000:.1f}",
                 r.clusters, r.aggregates, r.members, r.envoy_routes, f"{r.rss_mb:.0f}", r.validate, r.fanout, r.serve]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def _envoy() -> Path | None:
    from hapax.envoy_process import EnvoyNotFound, envoy_binary

    try:
        return envoy_binary()
    except EnvoyNotFound:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.splitlines()[0])
    parser.add_argument("--providers", type=int, help="one size: this many providers (with --routes)")
    parser.add_argument("--routes", type=int, help="one size: this many department routes")
    parser.add_argument("--clients", type=int, default=0,
                        help="xDS clients: time for the first version and an edit to reach the last of them")
    parser.add_argument("--quick", action="store_true", help="two small sizes")
    parser.add_argument("--no-envoy", action="store_true", help="skip Envoy's validation")
    parser.add_argument("--serve", action="store_true",
                        help="also start `hapax serve` with each config: seconds to ready, control-plane memory")
    args = parser.parse_args(argv)
    if args.providers or args.routes:
        sizes: tuple[tuple[int, int], ...] = ((args.providers or 10, args.routes or 100),)
    else:
        sizes = QUICK_SIZES if args.quick else SIZES
    envoy = None if args.no_envoy else _envoy()
    rows, validate = [], True
    for providers, routes in sizes:
        row = measure(providers, routes, envoy, validate, args.clients, args.serve)
        # Past the limit once, larger sizes are skipped (sizes grow in providers, then routes).
        validate = validate and not row.validate.startswith("skipped")
        rows.append(row)
        print(f"measured {providers} providers, {routes} routes", flush=True)
    print()
    print(table(rows))
    if args.clients:
        print(f"\nK = {args.clients} state-of-the-world ADS streams (clusters, listeners, routes) in one "
              "process of their own, ACKing what they get.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
