"""The three things measured, A (the fake), B (bare Envoy) and C (Hapax), and how to start them.

All on 127.0.0.1 with ports the kernel picks. Each target knows, per kind of
answer (json, sse, paced), where a request goes, and which processes serve
it, so that the runner can charge CPU time to them.
"""

from __future__ import annotations

import functools
import json
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bench import procstat
from bench.bare_proxy import ENTRY_PREFIXES, bare_proxy_config
from bench.fake_provider import JSON_PREFIX, SSE_PREFIX, fake_provider_config
from bench.payloads import MODELS, STREAMING, chat_request
from bench.processes import Process, ProcessSet, StartError, start_envoy, wait_until

REPO = Path(__file__).resolve().parent.parent
CHAT_PATH = "/v1/chat/completions"
KINDS = ("json", "sse", "paced")  # the kinds of answer, one provider each in C
ALIASED = {"alias": "json"}  # request kinds that get another kind's answer, by an alias of its model


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

    def processes(self) -> dict[str, int]:
        """Name -> pid of every process serving this target now (ext_proc workers included)."""
        found = dict(self.fixed_pids)
        if self.root is not None:
            found.update(name_processes(self.root.pid))
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


def start_fakes(procs: ProcessSet, envoy: Path, workdir: Path, gap_ms: float) -> Fakes:
    fake, fake_port = start_envoy(procs, "fake-envoy", fake_provider_config(), envoy, workdir)
    paced = procs.start("paced-fake", [sys.executable, "-m", "bench.paced_fake", "--gap-ms", str(gap_ms)],
                        workdir, cwd=REPO)
    line = wait_until(lambda: paced.stdout().strip(), "did not print its port", paced, timeout=30)
    return Fakes(fake, fake_port, paced, int(json.loads(line.splitlines()[0])["port"]))


def target_a(fakes: Fakes) -> Target:
    return Target("A", "fake provider (direct)", {
        "json": Endpoint(fakes.envoy_port, JSON_PREFIX.rstrip("/") + CHAT_PATH),
        "sse": Endpoint(fakes.envoy_port, SSE_PREFIX.rstrip("/") + CHAT_PATH),
        "paced": Endpoint(fakes.paced_port, CHAT_PATH),
        "alias": Endpoint(fakes.envoy_port, JSON_PREFIX.rstrip("/") + CHAT_PATH),
    }, fixed_pids=fakes.pids)


def start_bare_envoy(procs: ProcessSet, envoy: Path, workdir: Path, fakes: Fakes) -> Target:
    proc, port = start_envoy(procs, "bare-envoy", bare_proxy_config(fakes.envoy_port, fakes.paced_port),
                             envoy, workdir)
    endpoints = {kind: Endpoint(port, ENTRY_PREFIXES[ALIASED.get(kind, kind)] + "chat/completions")
                 for kind in (*KINDS, *ALIASED)}
    return Target("B", "bare Envoy -> fake", endpoints, root=proc, fixed_pids=fakes.pids)


def hapax_config(fakes: Fakes) -> dict:
    """One openai-type provider per kind of answer, told apart by the request's model.

    Hapax picks a provider from the body (model), bare Envoy cannot; the
    providers differ only in base_url. A JSON request takes the passthrough lane
    (Envoy alone), a stream or an aliased request the model lane (ext_proc's
    upstream step).
    """
    fake = f"http://127.0.0.1:{fakes.envoy_port}"
    base_urls = {"json": f"{fake}/json/v1", "sse": f"{fake}/sse/v1",
                 "paced": f"http://127.0.0.1:{fakes.paced_port}/v1"}
    return {
        "server": {"host": "127.0.0.1", "port": 0, "metrics_port": 0},
        "logging": {"level": "warning", "access_log": False},
        "providers": {kind: {"type": "openai", "model": MODELS[kind], "api_key": "bench-key",
                             "base_url": base_urls[kind],
                             "aliases": [MODELS[alias] for alias, of in ALIASED.items() if of == kind]}
                      for kind in KINDS},
        "provider_preference": list(KINDS),
    }


def hapax_command(config_path: Path) -> list[str]:
    return [sys.executable, "-m", "hapax.cli", "serve", "--config", str(config_path), "--log-level", "WARNING"]


def start_hapax(procs: ProcessSet, workdir: Path, fakes: Fakes) -> Target:
    config_path = workdir / "hapax.yaml"
    config_path.write_text(yaml.safe_dump(hapax_config(fakes), sort_keys=False))
    proc = procs.start("hapax", hapax_command(config_path), workdir, cwd=REPO)
    # The banner tests/conftest.py's Gateway reads too; its last line says it is ready.
    banner = wait_until(lambda: "Press Ctrl-C" in proc.stdout() and proc.stdout(), "printed no banner", proc)
    url = _banner_value(banner, "OpenAI API:").removesuffix("/v1")
    port = int(url.rsplit(":", 1)[1])
    target = Target("C", "Hapax (hapax serve)", {kind: Endpoint(port, CHAT_PATH) for kind in (*KINDS, *ALIASED)},
                    root=proc, fixed_pids=fakes.pids)
    _wait_answers(target, proc)
    return target


def _banner_value(banner: str, label: str) -> str:
    for line in banner.splitlines():
        if line.strip().startswith(label):
            return line.split(label, 1)[1].strip().split()[0]
    raise StartError(f"hapax serve printed no '{label}' line:\n{banner}")


def _wait_answers(target: Target, proc: Process) -> None:
    """Until every kind of request gets a 200: the providers' first health verdicts take a moment."""
    for kind in (*KINDS, *ALIASED):
        url, body = target.endpoints[kind].url, chat_request(300, model=MODELS[kind], stream=kind in STREAMING)
        wait_until(functools.partial(_post_ok, url, body), f"no 200 for a {kind} request", proc, timeout=60)


def _post_ok(url: str, body: bytes) -> bool:
    request = urllib.request.Request(url, data=body, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            resp.read()
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        time.sleep(0.2)
        return False
