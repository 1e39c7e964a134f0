"""The things measured, A (the fake), B (bare Envoy), C (Hapax) and P (Portkey), and how to start them.

All on 127.0.0.1 with ports the kernel picks. Each target knows, per kind of
request (json, sse, paced, anthropic, and the ways to them: alias, auto,
seed, keys, limits), where a request goes, and which processes serve it, so
that the runner can charge CPU time to them. A target without an endpoint for a kind (Portkey
for everything but Anthropic) sits that scenario out.

With a CorePlan (bench/pinning.py) B, C and P start under ``taskset`` on the
measured core, Envoy with one worker thread and Hapax with one ext_proc worker.
"""

from __future__ import annotations

import functools
import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bench import procstat
from bench.bare_proxy import ENTRY_PREFIXES, bare_proxy_config
from bench.fake_provider import ANTHROPIC_PREFIX, JSON_PREFIX, SSE_PREFIX, fake_provider_config
from bench.payloads import (
    ANTHROPIC_HEADERS,
    MODELS,
    SDK_HEADERS,
    STREAMING,
    chat_request,
    messages_request,
    responses_request,
)
from bench.pinning import CorePlan
from bench.processes import Process, ProcessSet, StartError, start_envoy, wait_until
from control_plane.defaults import default_config_text
from hapax import wire
from hapax.client_keys import new_key

REPO = Path(__file__).resolve().parent.parent
CHAT_PATH = "/v1/chat/completions"
KINDS = ("json", "sse", "paced", "anthropic")  # the kinds of answer, one provider each in C
# Request kinds that get another kind's answer: by an alias of its model, by
# model=auto (the router step: json is first in C's preference), by model=auto
# through the seed's config with Anthropic first (a second Hapax), and the JSON
# answer through a Hapax with client keys, and one with keys + limits.
ALIASED = {"alias": "json", "auto": "json", "seed": "anthropic", "keys": "json", "limits": "json",
           "experiment": "json", "messages": "anthropic", "responses": "json"}
# The kinds whose requests are another client API's (bench/payloads.py: messages_request,
# responses_request), to C's path for that API; A and B get the same body, and the fake answers
# it in that API (an Anthropic message; a Response on a path ending in /responses).
API_PATHS = {"messages": wire.ANTHROPIC_MESSAGES_PATH, "responses": "/v1" + wire.OPENAI_RESPONSES_PATH}
# The kinds C serves from a `hapax serve` of their own (another config), started only when
# a plan has them: C's main gateway's config has no seed routes, no keys and no limits.
APART = ("seed", "keys", "limits", "experiment")
# The kinds whose requests carry the bench client's key (Authorization: Bearer), to A and B too.
KEYED = ("keys", "limits")
# Limits no run comes near (a 10 s run at c=64 reserves some 10^8 tokens, 4096 a request
# for the answer, until each settles), so that every request is checked and none refused.
NEVER_REACHED = 10**12
CLIENT = "bench"  # the client's name in the keyed configs


@dataclass(frozen=True)
class Endpoint:
    port: int
    path: str
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.path}"


@dataclass
class Target:
    key: str  # "A", "B" or "C": the order of every round
    label: str
    endpoints: dict[str, Endpoint]  # kind of answer -> where to send the request
    root: Process | None = None  # the process whose tree serves this target (None: shared fakes)
    fixed_pids: dict[str, int] = field(default_factory=dict)
    kind_roots: dict[str, Process] = field(default_factory=dict)  # kinds another tree serves (C's seed)
    headers: dict[str, str] = field(default_factory=dict)  # added to every request (Portkey's provider)

    def processes(self, kind: str = "") -> dict[str, int]:
        """Name -> pid of every process serving this target's ``kind`` now (ext_proc workers included)."""
        found = dict(self.fixed_pids)
        if kind in self.kind_roots:  # named apart: its memory is not C's main gateway's
            found.update({f"{name} ({kind})": pid for name, pid in name_processes(self.kind_roots[kind].pid).items()})
        elif self.root is not None:
            found.update(name_processes(self.root.pid))
        return found

    def all_processes(self) -> dict[str, int]:
        found = self.processes()
        for kind in self.kind_roots:
            found.update(self.processes(kind))
        return found


def name_processes(root: int) -> dict[str, int]:
    """The process tree of ``hapax serve`` by role, from each child's command line.

    Children are found like ``pgrep -P``; a role seen twice (several ext_proc
    processes) is numbered: ext_proc, ext_proc#2, ...
    """
    named: dict[str, int] = {}
    for pid in [root, *procstat.descendants(root)]:
        try:
            argv = procstat.cmdline(pid)
        except FileNotFoundError:
            continue
        role = _role(argv)
        name, n = role, 1
        while name in named:
            n += 1
            name = f"{role}#{n}"
        named[name] = pid
    return named


def _role(argv: list[str]) -> str:
    if not argv:
        return "unknown"
    if Path(argv[0]).name == "envoy":
        return "envoy"
    if Path(argv[0]).name == "node":
        return "node"
    for i, arg in enumerate(argv):
        if arg == "-m" and i + 1 < len(argv):
            module = argv[i + 1].split(".")[0]
            return "supervisor" if module == "hapax" else module
    return Path(argv[0]).name


@dataclass
class Fakes:
    envoy: Process
    envoy_port: int
    paced: Process
    paced_port: int

    @property
    def pids(self) -> dict[str, int]:
        return {"fake envoy": self.envoy.pid, "paced fake": self.paced.pid}


def start_fakes(procs: ProcessSet, envoy: Path, workdir: Path, gap_ms: float, plan: CorePlan | None) -> Fakes:
    # On the load cores (inherited from the harness): as many workers as those cores.
    threads = len(plan.load) if plan else None
    fake, fake_port = start_envoy(procs, "fake-envoy", fake_provider_config(), envoy, workdir, concurrency=threads)
    paced = procs.start("paced-fake", [sys.executable, "-m", "bench.paced_fake", "--gap-ms", str(gap_ms)],
                        workdir, cwd=REPO)
    line = wait_until(lambda: paced.stdout().strip(), "did not print its port", paced, timeout=30)
    return Fakes(fake, fake_port, paced, int(json.loads(line.splitlines()[0])["port"]))


@functools.cache
def client_key() -> tuple[str, str]:
    """The bench client's key and its config line (``clients.bench.keys``), one per run."""
    key, line = new_key()
    return key, line.htpasswd


def api_request(kind: str, size: int) -> tuple[bytes, dict[str, str]] | None:
    """The body and headers of a kind whose requests are another client API's (API_PATHS), as its SDK sends them."""
    if kind == "messages":
        return messages_request(size, model=MODELS[kind]), ANTHROPIC_HEADERS
    if kind == "responses":
        return responses_request(size, model=MODELS[kind]), SDK_HEADERS
    return None


def kind_headers(kind: str) -> dict[str, str]:
    """Headers a kind's requests carry, whatever the client shape: the key, for the keyed kinds.

    Sent to A and B as well, so that the three get the same request (bare Envoy passes it on).
    """
    return {"authorization": f"Bearer {client_key()[0]}"} if kind in KEYED else {}


def target_a(fakes: Fakes) -> Target:
    answers = {
        "json": Endpoint(fakes.envoy_port, JSON_PREFIX.rstrip("/") + CHAT_PATH),
        "sse": Endpoint(fakes.envoy_port, SSE_PREFIX.rstrip("/") + CHAT_PATH),
        "paced": Endpoint(fakes.paced_port, CHAT_PATH),
        "anthropic": Endpoint(fakes.envoy_port, ANTHROPIC_PREFIX + "v1/messages"),
    }
    endpoints = {**answers, **{kind: answers[of] for kind, of in ALIASED.items()},
                 "responses": Endpoint(fakes.envoy_port, JSON_PREFIX.rstrip("/") + API_PATHS["responses"])}
    return Target("A", "fake provider (direct)", endpoints, fixed_pids=fakes.pids)


def start_bare_envoy(procs: ProcessSet, envoy: Path, workdir: Path, fakes: Fakes, plan: CorePlan | None) -> Target:
    proc, port = start_envoy(procs, "bare-envoy", bare_proxy_config(fakes.envoy_port, fakes.paced_port),
                             envoy, workdir, prefix=plan.taskset() if plan else [], concurrency=1 if plan else None)
    endpoints = {kind: Endpoint(port, ENTRY_PREFIXES[ALIASED.get(kind, kind)]
                                + ("responses" if kind == "responses" else "chat/completions"))
                 for kind in (*KINDS, *ALIASED)}
    return Target("B", "bare Envoy -> fake", endpoints, root=proc, fixed_pids=fakes.pids)


def _fake_urls(fakes: Fakes) -> dict[str, str]:
    fake = f"http://127.0.0.1:{fakes.envoy_port}"
    # An anthropic-type base_url has no /v1: Hapax appends /v1/messages.
    return {"json": f"{fake}/json/v1", "sse": f"{fake}/sse/v1", "anthropic": f"{fake}/anthropic",
            "paced": f"http://127.0.0.1:{fakes.paced_port}/v1"}


def _bench_settings(config: dict, plan: CorePlan | None) -> dict:
    """Ports the kernel picks, quiet logs (no access log), one ext_proc worker when pinned to one core."""
    config["server"] = {"host": "127.0.0.1", "port": 0, "metrics_port": 0}
    config["logging"] = {"level": "warning", "access_log": False}
    if plan:
        config["ext_proc"] = {"workers": 1}
    return config


def hapax_config(fakes: Fakes, plan: CorePlan | None = None) -> dict:
    """One openai-type provider per kind of answer, told apart by the request's model.

    Hapax picks a provider from the body (model), bare Envoy cannot; the
    providers differ only in base_url. A JSON request takes the passthrough lane
    (Envoy alone), a stream or an aliased request the model lane (ext_proc's
    upstream step).
    """
    base_urls = _fake_urls(fakes)
    providers = {kind: {"type": "anthropic" if kind == "anthropic" else "openai", "model": MODELS[kind],
                        "api_key": "bench-key", "base_url": base_urls[kind],
                        "aliases": [MODELS[alias] for alias, of in ALIASED.items() if of == kind and alias == "alias"]}
                 for kind in KINDS}
    return _bench_settings({"providers": providers, "provider_preference": list(KINDS)}, plan)


def seed_config(fakes: Fakes, plan: CorePlan | None = None) -> dict:
    """The configuration ``hapax serve`` writes when given none (its fakes' shape), Anthropic first.

    The seed's providers, models and department route as they are; the fakes at the
    bench's fake provider (Ollama's answers 404: it is last and never chosen).
    """
    fake = f"http://127.0.0.1:{fakes.envoy_port}"
    urls = {"openai": _fake_urls(fakes)["json"], "anthropic": _fake_urls(fakes)["anthropic"],
            "ollama": f"{fake}/ollama"}
    config = yaml.safe_load(default_config_text({}, urls))
    preference = config["provider_preference"]
    config["provider_preference"] = ["anthropic", *(p for p in preference if p != "anthropic")]
    return _bench_settings(config, plan)


def keyed_config(fakes: Fakes, plan: CorePlan | None = None, limits: bool = False) -> dict:
    """C's config with one client and its key (``clients:``); with ``limits``, limits on it too.

    The limits are every count a client may have, per minute and per day, at ``NEVER_REACHED``:
    each request takes the admission check (one gRPC call from Envoy to ext_proc, a reservation
    in the embedded SQLite store, settled from the access log) and none is refused. No budget:
    the bench's models have no price, so a budget would count nothing.
    """
    config = hapax_config(fakes, plan)
    client: dict = {"keys": [client_key()[1]]}
    if limits:
        client["limits"] = {name: NEVER_REACHED for name in ("requests_per_minute", "requests_per_day",
                                                              "tokens_per_minute", "tokens_per_day")}
    config["clients"] = {CLIENT: client}
    return config


def apart_config(kind: str, fakes: Fakes, plan: CorePlan | None = None) -> dict:
    """The config of the gateway that serves ``kind`` (one of ``APART``)."""
    if kind == "seed":
        return seed_config(fakes, plan)
    if kind == "experiment":
        return experiment_config(fakes, plan)
    return keyed_config(fakes, plan, limits=kind == "limits")


def experiment_config(fakes: Fakes, plan: CorePlan | None = None) -> dict:
    """C's config with an A/B experiment on ``MODELS["experiment"]``: two variants of the JSON provider,
    split 50/50 (the requests carry no user header: each is assigned at random)."""
    config = hapax_config(fakes, plan)
    variants = {name: {"provider": "json", "weight": 50} for name in ("a", "b")}
    config["experiments"] = {"bench": {"model": MODELS["experiment"], "variants": variants}}
    return config


def hapax_command(config_path: Path, plan: CorePlan | None = None) -> list[str]:
    pinned = [*plan.taskset()] if plan else []
    envoy = ["--envoy-concurrency", "1"] if plan else []
    return [*pinned, sys.executable, "-m", "hapax.cli", "serve", "--config", str(config_path),
            "--log-level", "WARNING", *envoy]


def _start_gateway(procs: ProcessSet, workdir: Path, name: str, config: dict,
                   plan: CorePlan | None) -> tuple[Process, int]:
    config_path = workdir / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    proc = procs.start(name, hapax_command(config_path, plan), workdir, cwd=REPO)
    # The banner tests/conftest.py's Gateway reads too; its last line says it is ready.
    banner = wait_until(lambda: "Press Ctrl-C" in proc.stdout() and proc.stdout(), "printed no banner", proc)
    url = _banner_value(banner, "OpenAI API:").removesuffix("/v1")
    return proc, int(url.rsplit(":", 1)[1])


def start_hapax(procs: ProcessSet, workdir: Path, fakes: Fakes, plan: CorePlan | None = None,
                apart: Collection[str] = ("seed",)) -> Target:
    """C: Hapax on the bench's config, and a Hapax of its own for each kind of ``apart`` (of ``APART``).

    Each of those (the seed's config; client keys; keys + limits) is another ``hapax serve``,
    its processes charged to its kind's runs alone (``Target.kind_roots``); a kind not in
    ``apart`` has no endpoint in C, and its scenarios cannot run.
    """
    proc, port = _start_gateway(procs, workdir, "hapax", hapax_config(fakes, plan), plan)
    endpoints = {kind: Endpoint(port, API_PATHS.get(kind, CHAT_PATH))
                 for kind in (*KINDS, *ALIASED) if kind not in APART}
    target = Target("C", "Hapax (hapax serve)", endpoints, root=proc, fixed_pids=fakes.pids)
    _wait_answers(target, proc, list(endpoints))
    for kind in (k for k in APART if k in apart):
        kind_proc, kind_port = _start_gateway(procs, workdir, f"hapax-{kind}", apart_config(kind, fakes, plan), plan)
        target.endpoints[kind] = Endpoint(kind_port, CHAT_PATH)
        target.kind_roots[kind] = kind_proc
        _wait_answers(target, kind_proc, [kind])
    return target


def _banner_value(banner: str, label: str) -> str:
    for line in banner.splitlines():
        if line.strip().startswith(label):
            return line.split(label, 1)[1].strip().split()[0]
    raise StartError(f"hapax serve printed no '{label}' line:\n{banner}")


def _wait_answers(target: Target, proc: Process, kinds: list[str]) -> None:
    """Until every kind of request gets a 200: the providers' first health verdicts take a moment."""
    for kind in kinds:
        url = target.endpoints[kind].url
        request = api_request(kind, 300)
        if request is not None:
            body, headers = request[0], {**request[1], **target.headers}
        else:
            body = chat_request(300, model=MODELS[kind], stream=kind in STREAMING)
            headers = {**kind_headers(kind), **target.headers}
        wait_until(functools.partial(post_ok, url, body, headers), f"no 200 for a {kind} request", proc,
                   timeout=60)


def post_ok(url: str, body: bytes, headers: dict[str, str] | None = None) -> bool:
    request = urllib.request.Request(url, data=body, headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            resp.read()
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        time.sleep(0.2)
        return False
