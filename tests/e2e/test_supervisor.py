"""``hapax serve`` as a process supervisor: start-up, shutdown and child deaths.

Every test runs the real command (``python -m hapax.cli serve``) and looks at
the real processes it starts: ext_proc, the control plane and Envoy. A child
counts as gone when /proc has no entry for it, or only a zombie entry (it has
exited and merely awaits reaping by whoever adopted it); the start time in
/proc/PID/stat guards against a recycled pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import openai
import pytest
import yaml

from hapax import local_http
from hapax.fakes import FakeOpenAI
from tests.conftest import REPO, Gateway, gateway_config, save_config, wait_for

CHILD_NAMES = ("ext_proc", "control_plane", "envoy")
EXIT_TIMEOUT = 60.0  # generous: the supervisor gives each child 5 s to stop


# ---------------------------------------------------------------- process helpers


@dataclass(frozen=True)
class Proc:
    """One process, identified by pid *and* start time so a reused pid never matches."""

    pid: int
    start_time: str

    @classmethod
    def of(cls, pid: int) -> Proc:
        state, start_time = _stat(pid)
        assert state is not None, f"pid {pid} has no /proc entry"
        return cls(pid, start_time)

    def running(self) -> bool:
        state, start_time = _stat(self.pid)
        return state is not None and state not in ("Z", "X") and start_time == self.start_time


def _stat(pid: int) -> tuple[str | None, str | None]:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None, None
    fields = text.rsplit(")", 1)[1].split()  # the command name may contain spaces and ')'
    return fields[0], fields[19]  # state (field 3), starttime (field 22)


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _child_kind(argv: list[str]) -> str:
    if Path(argv[0]).name == "envoy":
        return "envoy"
    for i, arg in enumerate(argv[:-1]):
        if arg == "-m" and argv[i + 1] in ("ext_proc", "control_plane"):
            return argv[i + 1]
    return "unknown: " + " ".join(argv)


def children_by_kind(pids: list[int]) -> dict[str, Proc]:
    """Children by what they are: ext_proc workers after the first are ext_proc#2, #3..."""
    kinds = {}
    for pid in sorted(int(p) for p in pids):
        kind = _child_kind(_cmdline(pid))
        assert kind == "ext_proc" or kind not in kinds, f"two {kind} children"
        name, n = kind, 1
        while name in kinds:
            n += 1
            name = f"{kind}#{n}"
        kinds[name] = Proc.of(pid)
    return kinds


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


def assert_all_gone(children: dict[str, Proc], timeout: float = 10.0) -> None:
    wait_until(lambda: not any(p.running() for p in children.values()), timeout)
    alive = {name: p.pid for name, p in children.items() if p.running()}
    assert not alive, f"children still running: {alive}"


def assert_refuses_connections(url: str) -> None:
    """``url``: http://host:port, or unix:/path (whose socket may be gone with its directory)."""
    if url.startswith("unix:"):
        with pytest.raises((ConnectionRefusedError, FileNotFoundError)), socket.socket(socket.AF_UNIX) as sock:
            sock.connect(url.removeprefix("unix:"))
        return
    parts = urlsplit(url)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((parts.hostname, parts.port), timeout=5).close()


def accepts_connections(url: str) -> bool:
    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname, parts.port), timeout=5).close()
        return True
    except OSError:
        return False


def processes_with_environ(marker: str) -> list[int]:
    """Live processes whose environment carries ``marker`` (so: descendants of one launch)."""
    found = []
    needle = marker.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes():
                state, _ = _stat(int(entry.name))
                if state not in (None, "Z", "X"):
                    found.append(int(entry.name))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return found


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def provider(fake_host):
    fake = fake_host.start(FakeOpenAI(api_key="sk-supervisor-test", model="gpt-4o-mini"))
    yield fake
    fake_host.run(fake.stop())


@pytest.fixture()
def gateway_tmp(tmp_path) -> Path:
    """TMPDIR of the gateway under test, where the supervisor makes its work directory."""
    path = tmp_path / "gateway-tmp"
    path.mkdir()
    return path


@pytest.fixture()
def gateway(provider, start_gateway, gateway_tmp) -> Gateway:
    config = gateway_config({"openai": {"type": "openai", "model": "gpt-4o-mini", "aliases": ["mini"],
                                        "api_key": "sk-supervisor-test", "base_url": provider.base_url}})
    config["ext_proc"] = {"workers": 1}  # one of each child; several workers: see below
    gw = start_gateway(config, env={"TMPDIR": str(gateway_tmp)})
    yield gw
    if gw.proc.poll() is None:
        gw.stop()
    # Whatever a failed test left behind in the gateway's process group.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(gw.proc.pid, signal.SIGKILL)


def three_children(gw: Gateway) -> dict[str, Proc]:
    children = children_by_kind(gw.child_pids())
    assert sorted(children) == sorted(CHILD_NAMES)
    assert all(p.running() for p in children.values())
    return children


def say_hello(base_url: str, model: str = "gpt-4o-mini", text: str = "are you there") -> str:
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=30)
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}])
    return reply.choices[0].message.content


# ---------------------------------------------------------------- clean shutdown


@pytest.mark.parametrize("how", ["sigterm", "sigint", "ctrl-c-to-process-group"])
def test_sigterm_stops_all_three_children_and_frees_the_port(gateway, gateway_tmp, how):
    children = three_children(gateway)
    [workdir] = gateway_tmp.glob("hapax-*")
    assert (workdir / "envoy.yaml").is_file()
    assert say_hello(gateway.base_url).startswith("Hello from fake-openai!")

    if how == "sigterm":
        gateway.proc.send_signal(signal.SIGTERM)
    elif how == "sigint":
        gateway.proc.send_signal(signal.SIGINT)
    else:  # a terminal's Ctrl-C: SIGINT to the supervisor and its children at once
        os.killpg(gateway.proc.pid, signal.SIGINT)
    code = gateway.proc.wait(timeout=EXIT_TIMEOUT)

    assert code == 0, "".join(gateway.stderr)  # 1 would mean a child was taken for dead
    assert_all_gone(children, timeout=1.0)  # the supervisor reaped them before exiting
    for pid in (p.pid for p in children.values()):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert_refuses_connections(gateway.url)
    assert_refuses_connections(gateway.admin_url)
    assert not workdir.exists(), "the supervisor leaves no temporary files behind"


# ---------------------------------------------------------------- a child dies


@pytest.mark.parametrize("victim,sig,how", [
    ("envoy", signal.SIGKILL, "killed by SIGKILL"),
    ("envoy", signal.SIGTERM, "exit code 0"),
])
def test_supervisor_stops_when_envoy_dies_and_exits_nonzero(gateway, gateway_tmp, victim, sig, how):
    # Envoy is what serves: the gateway ends with it (ext_proc and the control plane are restarted).
    children = three_children(gateway)

    os.kill(children[victim].pid, sig)
    code = gateway.proc.wait(timeout=EXIT_TIMEOUT)

    assert code == 1, "".join(gateway.stderr)
    # stderr is read on a thread, which may still be catching up with the exit.
    wait_until(lambda: f"{victim} died" in "".join(gateway.stderr), 5.0)
    stderr = "".join(gateway.stderr)
    assert f"hapax: {victim} died ({how}); stopping." in stderr
    for other in CHILD_NAMES:
        if other != victim:
            assert f"{other} died" not in stderr
    assert_all_gone(children, timeout=1.0)
    assert_refuses_connections(gateway.url)
    assert_refuses_connections(gateway.admin_url)
    assert list(gateway_tmp.glob("hapax-*")) == []


def test_killing_the_supervisor_outright_takes_the_children_down(gateway):
    children = three_children(gateway)

    gateway.proc.kill()
    assert gateway.proc.wait(timeout=EXIT_TIMEOUT) == -signal.SIGKILL

    # PR_SET_PDEATHSIG: the kernel sends each child SIGTERM when its parent dies.
    assert_all_gone(children, timeout=10.0)
    assert wait_until(lambda: not accepts_connections(gateway.url), 10.0)
    assert_refuses_connections(gateway.url)


# ---------------------------------------------------------------- built-in configuration


class ServeProcess:
    """``hapax serve`` with arbitrary arguments; stdout is read on a thread."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hapax.cli", "serve", *args], cwd=REPO,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
            start_new_session=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, None), daemon=True).start()

    def _pump(self, stream, sink: queue.Queue | None) -> None:
        for line in stream:
            if sink is None:
                self.stderr.append(line)
            else:
                sink.put(line)
        if sink is not None:
            sink.put(None)  # end of output

    def wait_ready(self, timeout: float = 90.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    "hapax serve was not ready in time:\n" + "".join(self.stdout + self.stderr)
                ) from None
            if line is None:
                raise AssertionError("hapax serve exited before ready:\n" + "".join(self.stdout + self.stderr))
            self.stdout.append(line)
            if line.startswith("Press Ctrl-C"):
                break
        banner = {}
        for line in self.stdout:
            label, sep, value = line.strip().partition(":")
            if sep and line.startswith("  "):
                banner[label] = value.strip()
        return banner

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def test_default_config_serves_with_built_in_fake_providers():
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY")}
    serve = ServeProcess(["--port", "0", "--admin-port", "0", "--metrics-port", "0", "--log-level", "WARNING"], env)
    try:
        banner = serve.wait_ready()
        # The built-in config binds every interface: the banner says so, and where to connect.
        bound, note = banner["OpenAI API"].split(" ", 1)
        port = urlsplit(bound).port
        assert bound == f"http://0.0.0.0:{port}/v1"
        base_url = f"http://127.0.0.1:{port}/v1"
        assert note == f"(all interfaces; e.g. {base_url})"
        metrics_port = urlsplit(banner["Metrics"].split()[0]).port
        assert banner["Metrics"] == (f"http://0.0.0.0:{metrics_port}/metrics "
                                     f"(all interfaces; e.g. http://127.0.0.1:{metrics_port}/metrics)")
        assert banner["Config"].startswith("built-in default")
        assert banner["Preference"] == "openai > anthropic > ollama"
        assert banner["Routes"].split() == ["/v1/marketing/completions", "completion", "(department=marketing)"]
        assert any(line.split()[:3] == ["/v1/chat/completions", "chat", "(standard)"] for line in serve.stdout)
        children = children_by_kind(subprocess.run(
            ["pgrep", "-P", str(serve.proc.pid)], capture_output=True, text=True).stdout.split())
        workers = os.cpu_count() or 1  # the default: one ext_proc per CPU
        extra = [f"ext_proc#{n}" for n in range(2, workers + 1)]
        assert sorted(children) == sorted([*CHILD_NAMES, *extra])  # the fakes run inside the supervisor

        expected_label = {"auto": "fake-openai", "gpt-4o-mini": "fake-openai",
                          "claude-3-5-haiku-latest": "fake-anthropic", "llama3.2": "fake-ollama"}
        for model, label in expected_label.items():
            text = f"hi {model}"
            assert say_hello(base_url, model, text) == f"Hello from {label}! You said: {text}"

        client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=30)
        for model, label in expected_label.items():
            stream = client.chat.completions.create(
                model=model, stream=True, messages=[{"role": "user", "content": "stream please"}])
            chunks = [c.choices[0].delta.content or "" for c in stream if c.choices]
            assert len([c for c in chunks if c]) > 1, chunks
            assert "".join(chunks) == f"Hello from {label}! You said: stream please"

        serve.proc.send_signal(signal.SIGTERM)
        code = serve.proc.wait(timeout=EXIT_TIMEOUT)
        assert code == 0, "".join(serve.stderr)
        assert_all_gone(children, timeout=1.0)
        assert_refuses_connections(base_url)
    finally:
        serve.close()


# ---------------------------------------------------------------- bad configuration


def test_invalid_config_fails_fast_with_key_paths(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(
        "server: {port: 0, admin_port: 0, metrics_port: 0}\n"
        "providers:\n"
        "  openai: {type: opnai, model: gpt-4, api_key: sk-whatever}\n")
    marker = f"HAPAX_SUPERVISOR_TEST_MARKER={uuid.uuid4().hex}"
    name, value = marker.split("=")
    result = subprocess.run(
        [sys.executable, "-m", "hapax.cli", "serve", "--config", str(config)], cwd=REPO,
        capture_output=True, text=True, timeout=60, env={**os.environ, name: value},
    )
    assert result.returncode == 1, result.stderr
    assert "providers.openai.type: unknown provider type 'opnai'" in result.stderr
    assert "Traceback" not in result.stderr
    assert "Hapax is ready" not in result.stdout
    # Nothing was started: no process carries the launch's marker or the config's path.
    assert processes_with_environ(marker) == []
    assert [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
            if str(config) in " ".join(_cmdline(pid))] == []


# ---------------------------------------------------------------- ports already in use


def serve_on(provider, tmp_path: Path, server: dict) -> subprocess.Popen:
    config = tmp_path / "hapax.yaml"
    save_config(config, {"server": server, "providers": {"openai": {
        "type": "openai", "model": "gpt-4o-mini", "api_key": "test-key", "base_url": provider.base_url}}})
    return subprocess.Popen([sys.executable, "-m", "hapax.cli", "serve", "--config", str(config)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def ended(serve: subprocess.Popen) -> tuple[int, str, str]:
    """Its exit code, stdout and stderr, once it has exited; sooner than its 60 s ready timeout."""
    try:
        stdout, stderr = serve.communicate(timeout=45)
    except subprocess.TimeoutExpired:
        os.killpg(serve.pid, signal.SIGKILL)
        stdout, stderr = serve.communicate()
        raise AssertionError(f"hapax serve still waiting on a port in use:\n{stderr}") from None
    return serve.returncode, stdout, stderr


@pytest.mark.parametrize("key", ["port", "metrics_port"])
def test_a_port_in_use_fails_start_up_at_once_naming_the_port_and_its_key(provider, tmp_path, key):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        serve = serve_on(provider, tmp_path, {"host": "127.0.0.1", "port": 0, "metrics_port": 0, key: taken})
        code, stdout, stderr = ended(serve)

    assert code == 1, stderr
    assert f"TCP port {taken} (server.{key}) on 127.0.0.1 is already in use" in stderr
    assert "Hapax is ready" not in stdout
    assert "Traceback" not in stderr


def test_a_port_taken_after_the_check_fails_start_up_as_soon_as_envoy_refuses_it(provider, tmp_path):
    with socket.socket() as holder:
        # Bound but not listening, with SO_REUSEADDR: the check before start-up can bind it too...
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", 0))
        taken = holder.getsockname()[1]
        serve = serve_on(provider, tmp_path, {"host": "127.0.0.1", "port": taken, "metrics_port": 0})
        # ...and once the first child runs, the check is over: listening, it holds the port against Envoy.
        assert wait_until(lambda: subprocess.run(["pgrep", "-P", str(serve.pid)],
                                                 capture_output=True, text=True).stdout.strip(), 30)
        holder.listen()
        code, stdout, stderr = ended(serve)

    assert code == 1, stderr
    assert f"TCP port {taken} (server.port) on 127.0.0.1 is one Envoy could not open" in stderr
    assert "Hapax is ready" not in stdout


# ---------------------------------------------------------------- a child that never gets ready


def test_a_control_plane_stuck_at_start_up_ends_serve_with_a_message_not_a_traceback(provider, tmp_path):
    # The control plane's Envoy freezes it (SIGSTOP) when asked to validate: alive, and stuck for good,
    # right after it announced its validation, with its bound, to the supervisor.
    freezer = tmp_path / "envoy"
    freezer.write_text("#!/bin/sh\nkill -STOP $PPID\n")
    freezer.chmod(0o755)
    config = tmp_path / "hapax.yaml"
    save_config(config, {"server": {"host": "127.0.0.1", "port": 0, "metrics_port": 0}, "ext_proc": {"workers": 1},
                         "providers": {"openai": {"type": "openai", "model": "gpt-4o-mini", "api_key": "k",
                                                  "base_url": provider.base_url}}})
    serve = subprocess.Popen(
        [sys.executable, "-m", "hapax.cli", "serve", "--config", str(config), "--ready-timeout", "10",
         "--validation-timeout", "1"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True, env={**os.environ, "HAPAX_ENVOY": str(freezer)})
    code, stdout, stderr = ended(serve)

    assert code == 1, stderr
    assert ("hapax: could not start: control_plane did not report ready within 11 s (its last step: Envoy's "
            "validation, announced to take up to 1 s); it is still running, so it is stuck or slower than "
            "allowed.") in stderr
    assert "Traceback" not in stderr
    assert "Hapax is ready" not in stdout


# ---------------------------------------------------------------- empty keys


def test_a_provider_whose_key_variable_is_unset_is_a_warning_in_the_banner_and_the_log(provider, tmp_path):
    config = tmp_path / "hapax.yaml"
    save_config(config, {"server": {"host": "127.0.0.1", "port": 0, "metrics_port": 0}, "providers": {
        "claude": {"type": "anthropic", "model": "claude-3-haiku", "api_key": "${HAPAX_TEST_UNSET_KEY}",
                   "base_url": provider.base_url.removesuffix("/v1")},
        "openai": {"type": "openai", "model": "gpt-4o-mini", "api_key": "k", "base_url": provider.base_url}}})
    env = {k: v for k, v in os.environ.items() if k != "HAPAX_TEST_UNSET_KEY"}
    serve = ServeProcess(["--config", str(config)], env)
    try:
        serve.wait_ready()
        warning = ("providers.claude.api_key: empty (${HAPAX_TEST_UNSET_KEY} is not set); "
                   "requests to this provider will be rejected")
        assert f"  Warning:      {warning}\n" in serve.stdout
        assert wait_until(lambda: any(warning in line for line in serve.stderr), 10), "".join(serve.stderr)
    finally:
        serve.close()


# ---------------------------------------------------------------- signals during start-up


def test_sigterm_during_start_up_stops_what_started_and_cleans_up(provider, tmp_path):
    config = tmp_path / "hapax.yaml"
    config.write_text(
        "server: {host: 127.0.0.1, port: 0, admin_port: 0, metrics_port: 0}\n"
        "providers:\n"
        f"  openai: {{type: openai, model: gpt-4o-mini, api_key: test-key, base_url: '{provider.base_url}'}}\n")
    workdirs = tmp_path / "tmp"
    workdirs.mkdir()
    serve = ServeProcess(["--config", str(config), "--log-level", "WARNING"], {**os.environ, "TMPDIR": str(workdirs)})
    try:
        # As soon as the first child exists the supervisor is mid-start-up.
        assert wait_until(lambda: subprocess.run(["pgrep", "-P", str(serve.proc.pid)],
                                                 capture_output=True, text=True).stdout.strip(), 60)
        started = children_by_kind(subprocess.run(["pgrep", "-P", str(serve.proc.pid)],
                                                  capture_output=True, text=True).stdout.split())
        serve.proc.send_signal(signal.SIGTERM)
        assert serve.proc.wait(timeout=EXIT_TIMEOUT) == 0, "".join(serve.stderr)
        assert_all_gone(started, timeout=1.0)
        assert list(workdirs.iterdir()) == []
        assert "Traceback" not in "".join(serve.stderr)
    finally:
        serve.close()


def test_ext_proc_workers_share_the_load_and_one_scrape_counts_them_all(provider, start_gateway, gateway_tmp):
    # Asked for by an alias, the model name is rewritten: every request goes through ext_proc's upstream step.
    config = gateway_config({"openai": {"type": "openai", "model": "gpt-4o-mini", "aliases": ["mini"],
                                        "api_key": "sk-supervisor-test", "base_url": provider.base_url}})
    config["ext_proc"] = {"workers": 2}
    gw = start_gateway(config, env={"TMPDIR": str(gateway_tmp)})
    children = children_by_kind(gw.child_pids())
    assert sorted(children) == sorted([*CHILD_NAMES, "ext_proc#2"])
    for i in range(40):
        assert say_hello(gw.base_url, model="mini", text=f"worker {i}").startswith("Hello from fake-openai!")
    # Every scrape lands on one worker, and each reports all 40 (their counts are added up),
    # once the access log that counts them has reached whichever worker it goes to.
    route = {"route": "/v1/chat/completions", "provider": "openai", "outcome": "success"}
    wait_for(lambda: gw.metric("hapax_requests_total", **route) == 40.0, "the 40 requests counted")
    assert [gw.metric("hapax_requests_total", **route) for _ in range(4)] == [40.0] * 4
    # Envoy spread the ext_proc calls over both workers (its per-host counts).
    lines = gw.admin("/clusters").splitlines()
    per_worker = [int(line.rsplit("::", 1)[1]) for line in lines
                  if line.startswith("hapax_ext_proc::") and "::rq_total::" in line]
    assert len(per_worker) == 2 and all(n > 0 for n in per_worker), per_worker
    gw.stop()
    assert_all_gone(children)


# ---------------------------------------------------------------- restarts


class Load:
    """Chat requests sent one after another on a thread, for as long as it runs; counts failures.

    The model is asked for by an alias, so every request crosses ext_proc (its name is
    rewritten); the provider's own model name would take the passthrough lane, which does not.
    """

    def __init__(self, base_url: str, model: str = "mini") -> None:
        self.url = base_url + "/chat/completions"
        self.model = model
        self.sent = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        body = json.dumps({"model": self.model, "messages": [{"role": "user", "content": "load"}]}).encode()
        while not self._stop.is_set():
            request = urllib.request.Request(self.url, body, {"content-type": "application/json"})
            self.sent += 1
            try:
                with urllib.request.urlopen(request, timeout=30) as resp:
                    resp.read()
            except urllib.error.HTTPError as err:
                self.failures.append(f"{err.code}: {err.read()[:200]!r}")
            except (OSError, ValueError) as err:
                self.failures.append(f"{type(err).__name__}: {err}")

    def wait_sent(self, count: int, timeout: float = 60.0) -> None:
        assert wait_until(lambda: self.sent >= count, timeout), f"only {self.sent} requests sent"


def worker_ok(address: str) -> bool:
    """The worker's own /health (not through Envoy, on its Unix socket): 200 once it has its configuration."""
    try:
        return local_http.request(address, "/health", timeout=2)[0] == 200
    except OSError:
        return False


def health(gw: Gateway) -> dict:
    """The /health body, also when it is a 503 (the control plane is down)."""
    try:
        with urllib.request.urlopen(gw.url + "/health", timeout=5) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as err:
        return json.load(err)


@pytest.fixture()
def two_workers(provider, start_gateway, gateway_tmp) -> Gateway:
    config = gateway_config({"openai": {"type": "openai", "model": "gpt-4o-mini", "aliases": ["mini"],
                                        "api_key": "sk-supervisor-test", "base_url": provider.base_url}})
    config["ext_proc"] = {"workers": 2}
    gw = start_gateway(config, env={"TMPDIR": str(gateway_tmp)})
    yield gw
    gw.stop()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(gw.proc.pid, signal.SIGKILL)


def children_by_role(pids: list[int]) -> dict[str, Proc]:
    """Children by what they are, workers by their node id (ext_proc-1, ext_proc-2), which a
    restarted worker keeps (its pid, and so its place in pid order, changes)."""
    found = {}
    for pid in pids:
        argv = _cmdline(pid)
        if not argv:
            continue  # a zombie, just killed
        kind = _child_kind(argv)
        if kind == "ext_proc":
            kind = "ext_proc-" + argv[argv.index("--node-id") + 1].rsplit("-", 1)[1]
        with contextlib.suppress(AssertionError):  # gone meanwhile
            found[kind] = Proc.of(pid)
    return found


@pytest.mark.parametrize("victim", ["ext_proc-2", "ext_proc-1"])  # -1 also answers Envoy's health checks
def test_a_killed_worker_is_restarted_on_its_ports_while_envoy_serves(two_workers, victim):
    gw = two_workers
    children = children_by_role(gw.child_pids())
    assert sorted(children) == ["control_plane", "envoy", "ext_proc-1", "ext_proc-2"]
    assert health(gw)["restarts"] == {"control_plane": 0, "ext_proc-1": 0, "ext_proc-2": 0}

    def restarted() -> bool:
        """A new process in the victim's place, answering on the victim's HTTP port with its configuration."""
        now = children_by_role(gw.child_pids()).get(victim)
        if now is None or now == children[victim]:
            return False
        argv = _cmdline(now.pid)
        return "--health-listen" in argv and worker_ok(argv[argv.index("--health-listen") + 1])

    with Load(gw.base_url) as load:
        load.wait_sent(100)
        os.kill(children[victim].pid, signal.SIGKILL)
        assert wait_until(restarted, 30.0)
        load.wait_sent(load.sent + 300)

    assert gw.proc.poll() is None, "".join(gw.stderr)
    now = children_by_role(gw.child_pids())
    assert all(now[name] == proc for name, proc in children.items() if name != victim)
    label = victim
    print(f"worker {victim} killed: {len(load.failures)} of {load.sent} requests failed")
    assert len(load.failures) < load.sent / 100, load.failures[:5]
    assert gw.metric("hapax_process_restarts_total", process=label) == 1.0
    assert gw.metric("hapax_process_restarts_total", process="control_plane") == 0.0
    assert health(gw)["restarts"][label] == 1
    # Envoy's ext_proc calls reach the restarted worker on its old address again
    # (set aside for a second or two after its connect failures, it is taken back).
    argv = _cmdline(now[victim].pid)
    address = argv[argv.index("--listen") + 1]
    before = ext_proc_calls(gw, address)

    def envoy_calls_it() -> bool:
        assert say_hello(gw.base_url, model="mini").startswith("Hello from fake-openai!")
        return ext_proc_calls(gw, address) > before

    assert wait_until(envoy_calls_it, 15.0, interval=0.05)
    # And it stops like the others, on time.
    assert gw.stop() == 0, "".join(gw.stderr)
    assert_all_gone(now, timeout=1.0)


def ext_proc_calls(gw: Gateway, address: str) -> int:
    """Envoy's count of ext_proc calls to the worker at ``address`` (its per-host rq_total)."""
    lines = gw.admin("/clusters").splitlines()
    [count] = [int(line.rsplit("::", 1)[1]) for line in lines
               if line.startswith(f"hapax_ext_proc::{address.removeprefix('unix:')}::rq_total::")]
    return count


def test_a_killed_control_plane_is_restarted_and_no_request_fails(gateway, provider):
    children = three_children(gateway)

    with Load(gateway.base_url) as load:
        load.wait_sent(50)
        os.kill(children["control_plane"].pid, signal.SIGKILL)
        assert wait_until(lambda: children_by_role(gateway.child_pids()).get("control_plane")
                          not in (None, children["control_plane"]), 30.0)
        # Serving again means connected again: ext_proc's /health says so.
        assert wait_until(lambda: health(gateway)["components"]["control_plane"]["status"] == "up", 30.0)
        load.wait_sent(load.sent + 100)

    assert gateway.proc.poll() is None, "".join(gateway.stderr)
    print(f"control plane killed: {len(load.failures)} of {load.sent} requests failed")
    assert load.failures == []
    assert gateway.metric("hapax_process_restarts_total", process="control_plane") == 1.0
    assert health(gateway)["restarts"]["control_plane"] == 1
    # Its first version (same content, a later generation) was taken by everyone: nothing refused.
    assert "rejected_versions" not in health(gateway)["components"]["control_plane"]
    # The restarted control plane watches the file: an edit still reaches Envoy and ext_proc.
    config = yaml.safe_load(gateway.config_path.read_text())
    config["providers"]["openai"]["aliases"] = ["mini", "after-restart"]
    save_config(gateway.config_path, config)
    assert wait_until(lambda: _answers(gateway, "after-restart"), 30.0)
    assert health(gateway)["components"]["control_plane"]["reloads"]["applied"] >= 1
    restarted = children_by_role(gateway.child_pids())
    assert gateway.stop() == 0, "".join(gateway.stderr)
    assert_all_gone(restarted, timeout=1.0)


def _answers(gw: Gateway, model: str) -> bool:
    try:
        return say_hello(gw.base_url, model=model).startswith("Hello from fake-openai!")
    except openai.APIError:
        return False


def test_a_control_plane_whose_restarts_keep_failing_stops_the_gateway(gateway, gateway_tmp):
    # An edit that breaks the file is refused while the control plane runs (the last good
    # version keeps serving); a control plane that dies then cannot start again with it.
    children = three_children(gateway)
    gateway.config_path.write_text("providers: [this is not a provider map\n")
    os.kill(children["control_plane"].pid, signal.SIGKILL)

    code = gateway.proc.wait(timeout=120)  # the backoff: 0.5 + 1 + 2 + 4 + 8 s

    assert code == 1, "".join(gateway.stderr)
    wait_until(lambda: "giving up" in "".join(gateway.stderr), 5.0)
    stderr = "".join(gateway.stderr)
    assert "hapax: control_plane died (killed by SIGKILL); it was restarted 5 times within 60s " \
           "(the last time: control_plane exited before it was ready (exit code 1)), giving up; " \
           "stopping." in stderr, stderr[-3000:]
    assert_all_gone(children, timeout=1.0)
    assert_refuses_connections(gateway.url)
    assert list(gateway_tmp.glob("hapax-*")) == []
