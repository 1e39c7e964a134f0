"""``hapax serve``: starts ext_proc, the control plane and Envoy, and watches them.

Start order follows the dependencies: ext_proc first (it binds its ports and
reports them), then the control plane (which must know where ext_proc listens
to tell Envoy), then Envoy (which asks the control plane for everything).

Policy when a child dies (like an nginx master): a dead ext_proc worker or
control plane is restarted with backoff on the same addresses while Envoy keeps
serving (its last xDS configuration; the other workers). Each restart is
counted where ext_proc reports it (``hapax_process_restarts_total``, /health).
When Envoy itself dies, or restarts keep failing (RestartPolicy), the
supervisor says which child and how, stops the others and exits non-zero, so
the service manager above us (systemd, Kubernetes) sees the failure rather
than a crash loop hidden here.

SIGHUP is passed on to the control plane, which reads its file again.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from hapax import local_http, log_relay, logs, ports, wire
from hapax.envoy_process import envoy_binary, render_bootstrap
from hapax.ports import GatewayPort, PortInUse

log = logging.getLogger("hapax.supervisor")

# Seconds a child has to report ready, on top of the budgets of the steps it announces
# (wire.PROGRESS_EVENT); each other start-up wait gets as long (hapax serve --ready-timeout).
READY_TIMEOUT = 60.0
# Envoy's own log lines in the shape of Hapax's JSON lines (hapax/logs.py).
ENVOY_JSON_LOG_FORMAT = '{"ts":"%Y-%m-%dT%T.%eZ","level":"%l","component":"envoy","logger":"%n","msg":"%j"}'
STOP_ORDER = ("envoy", "ext_proc", "control_plane")
LISTENERS = (wire.LISTENER, wire.METRICS_LISTENER)
STOP_GRACE = 5.0
# Envoy's count of listener updates (LDS) it refused; a port it could not bind is one.
ENVOY_LDS_REJECTED = "listener_manager.lds.update_rejected"
# The longest path a Unix socket can have (sun_path, Linux), less its terminating NUL.
MAX_SOCKET_PATH = 107


@dataclass
class RestartPolicy:
    """Backoff between restarts of one child, and when to give up on it.

    The delay doubles from ``base`` to ``cap`` while the child keeps dying;
    more than ``limit`` restarts within ``window`` seconds is a crash loop,
    which is the service manager's to see.
    """

    base: float = 0.5
    cap: float = 10.0
    limit: int = 5
    window: float = 60.0
    _times: list[float] = field(default_factory=list)

    def next_delay(self, now: float) -> float | None:
        """The wait before the next restart, or None to give up. Records the restart."""
        self._times = [t for t in self._times if now - t < self.window]
        if len(self._times) >= self.limit:
            return None
        delay = min(self.cap, self.base * 2 ** len(self._times))
        self._times.append(now)
        return delay


def url_host(host: str) -> str:
    """An IP address as a URL spells it: an IPv6 one in brackets."""
    return f"[{host}]" if ":" in host else host


# An address that means every interface, and the loopback address a local client can use for it.
ALL_INTERFACES = {"0.0.0.0": "127.0.0.1", "::": "::1"}


def reach_note(host: str, url: str) -> str:
    """After a URL whose host means every interface (which no client can connect to), one it can."""
    loopback = ALL_INTERFACES.get(host)
    if loopback is None:
        return ""
    return f" (all interfaces; e.g. {url.replace(url_host(host), url_host(loopback), 1)})"


class GiveUp(Exception):
    """A child the gateway cannot go on without: the message says which and why."""


class StartupError(Exception):
    pass


class NotReady(StartupError):
    """A child still running that did not report ready within its wait: stuck, or slower than allowed."""

    def __init__(self, child: str, waited: float, step: str, ready_timeout: float) -> None:
        super().__init__(
            f"{child} did not report ready within {waited:g} s ({step}); it is still running, so it "
            f"is stuck or slower than allowed. Check its log lines above for the step it is on; a "
            f"configuration that takes longer to build needs a longer wait (hapax serve "
            f"--ready-timeout SECONDS; now {ready_timeout:g})")


class LocalChannels:
    """Where Hapax's processes reach each other: Unix sockets in a directory only Hapax's user
    can open (the supervisor's working directory, or one of their own; mkdtemp makes it 0700,
    and each socket is 0600).

    A process running as another local user can reach none of them: not the control plane's
    xDS (the runtime carries the providers' keys), not ext_proc's gRPC (it injects them), not
    Envoy's admin (POST /quitquitquit). The one exception is each worker's provider verdicts,
    on a loopback TCP port because Envoy health-checks IP addresses only; they are read-only,
    and what public /health shows anyway. docs/operations.md: Local channels.
    """

    def __init__(self, workdir: Path) -> None:
        # A Unix socket's path has at most 107 bytes: under a long TMPDIR the sockets get a
        # private directory of their own in /tmp (removed with the working directory).
        self.directory = workdir if self._fits(workdir) else Path(tempfile.mkdtemp(prefix="hapax-", dir="/tmp"))
        if not self._fits(self.directory):
            raise StartupError(f"no directory short enough for Unix sockets ({self.directory})")

    @staticmethod
    def _fits(directory: Path) -> bool:
        return len(str(directory / "ext_proc-999.grpc.sock")) <= MAX_SOCKET_PATH

    def _path(self, name: str) -> Path:
        return self.directory / f"{name}.sock"

    def _address(self, name: str) -> str:
        return f"{wire.UNIX_SOCKET_PREFIX}{self._path(name)}"

    @property
    def xds(self) -> str:
        return self._address("xds")

    @property
    def envoy_admin(self) -> str:
        return self._address("envoy-admin")

    def ext_proc_grpc(self, worker: int) -> str:
        return self._address(f"ext_proc-{worker}.grpc")

    def ext_proc_http(self, worker: int) -> str:
        return self._address(f"ext_proc-{worker}.http")


def _seconds(value: object) -> float:
    """A step's announced budget; anything but a finite, non-negative number counts as none."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return 0.0
    return max(0.0, float(value))


def _child_setup() -> None:
    # If the supervisor is killed outright, the kernel sends SIGTERM to the
    # children: no orphaned Envoy keeps a port bound.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    # What the children create (sockets, files) is Hapax's user's alone.
    os.umask(0o077)


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str] | None = None  # added to the supervisor's environment
    process: asyncio.subprocess.Process | None = None
    ready: dict = field(default_factory=dict)
    ready_timeout: float = READY_TIMEOUT  # its wait for the ready line, beyond its steps' budgets
    restartable: bool = False  # Envoy is not: it is what serves, and the gateway ends with it
    restarts: int = 0
    relay_stdout: bool = False  # Envoy's stdout is its access log; a Python child's, its ready line
    json_lines: bool = True  # logging.format: json, so what it relays is JSON lines too
    _drain: asyncio.Task | None = None  # held so the task is not garbage-collected
    _relays: list[asyncio.Task] = field(default_factory=list)

    @property
    def label(self) -> str:
        """The ``process`` label of its restart count: ext_proc-1, ext_proc-2..., control_plane."""
        kind, _, n = self.name.partition("#")
        return f"{kind}-{n or 1}" if kind == "ext_proc" else kind

    async def start(self, wait_ready: bool) -> None:
        self.ready = {}  # a restart announces itself afresh
        creating = asyncio.ensure_future(asyncio.create_subprocess_exec(
            *self.argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            # A pipe of its own, which only the supervisor relays: hapax/log_relay.py says why.
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=_child_setup if sys.platform == "linux" else None,
            env={**os.environ, **self.env} if self.env else None,
        ))
        try:
            self.process = await asyncio.shield(creating)
        except asyncio.CancelledError:
            # Stopped while a restart was starting it: the process exists all the same, and
            # is kept here so that stop() stops it rather than leaving it running untracked.
            self.process = await creating
            self._relay()
            raise
        self._relay()
        if wait_ready:
            try:
                self.ready = await self._ready_line()
            except StartupError:
                await self.stop()  # a restart that failed leaves nothing behind
                raise
        if not self.relay_stdout:
            self._drain = asyncio.create_task(self._drain_stdout())

    def _relay(self) -> None:
        assert self.process and self.process.stderr and self.process.stdout
        kind = self.name.split("#")[0]
        streams = [self.process.stderr, *([self.process.stdout] if self.relay_stdout else [])]
        self._relays = [asyncio.create_task(log_relay.relay(stream, logs.STDERR, kind, self.json_lines))
                        for stream in streams]

    async def relayed(self) -> None:
        """Waits (briefly) until its last lines are relayed, once it has exited."""
        relays, self._relays = self._relays, []
        if relays:
            await asyncio.wait(relays, timeout=STOP_GRACE)

    async def _ready_line(self) -> dict:
        """Its ready line; NotReady past ``ready_timeout`` plus the budget of each step it announced.

        The wait scales with the work the child says it has (the control plane's validation of
        a large configuration, say) and stays bounded: a child announces a step with its bound.
        """
        assert self.process and self.process.stdout
        loop = asyncio.get_running_loop()
        began = loop.time()
        deadline, step = began + self.ready_timeout, "it announced no step"
        while True:
            try:
                line = await asyncio.wait_for(self.process.stdout.readline(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise NotReady(self.name, deadline - began, step, self.ready_timeout) from None
            if not line:
                await self.process.wait()  # so that describe_exit() says how it ended
                raise StartupError(f"{self.name} exited before it was ready ({self.describe_exit()})")
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if event.get("event") == wire.READY_EVENT:
                return event
            if event.get("event") == wire.PROGRESS_EVENT:
                budget = _seconds(event.get(wire.PROGRESS_BUDGET))
                deadline += budget
                step = f"its last step: {event.get('step', 'unnamed')}, announced to take up to {budget:g} s"

    async def _drain_stdout(self) -> None:
        assert self.process and self.process.stdout
        while await self.process.stdout.readline():
            pass

    def describe_exit(self) -> str:
        code = self.process.returncode if self.process else None
        if code is None:
            return "still running"
        if code < 0:
            return f"killed by {signal.Signals(-code).name}"
        return f"exit code {code}"

    async def stop(self) -> None:
        proc = self.process
        if proc is None:
            return
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), STOP_GRACE)
            except TimeoutError:
                log.warning("child did not stop in time; killing it", extra={"child": self.name})
                proc.kill()
                await proc.wait()
        await self.relayed()


@dataclass(frozen=True)
class ServeOptions:
    config_path: Path | None
    port: int | None = None          # overrides server.port
    admin_port: int | None = None    # overrides server.admin_port (an opt-in to a loopback TCP admin)
    metrics_port: int | None = None  # overrides server.metrics_port
    envoy_log_level: str = "warning"
    envoy_max_heap_mb: int = 1024    # the overload manager's heap ceiling (envoy/bootstrap.yaml)
    envoy_concurrency: int | None = None  # Envoy's worker threads; None: one per CPU (Envoy's default)
    log_level: str | None = None     # overrides logging.level
    ready_timeout: float = READY_TIMEOUT  # each start-up wait, beyond what a child announces it needs
    validation_timeout: float | None = None  # the control plane's bound on Envoy's validation (its default)


class Supervisor:
    def __init__(self, options: ServeOptions) -> None:
        self.options = options
        self.children: list[Child] = []
        self.fakes: list = []
        self.workdir = Path(tempfile.mkdtemp(prefix="hapax-"))  # mode 0700
        self.channels = LocalChannels(self.workdir)
        self.host = ""  # what the listeners bind: the banner prints it as it is
        self.listen_url = ""
        self.metrics_url = ""
        self.admin_url = ""  # unix:/path, or http://127.0.0.1:port with server.admin_port
        self.log_args: list[str] = []
        self.log_format = "json"
        self.metrics_dir = self.workdir / "metrics"
        self.shared_dir = self.workdir / "shared"
        self.restart_policy = RestartPolicy  # a factory: one policy per child

    # -- start

    async def start(self) -> None:
        from control_plane.config.load import load_config  # validated before anything starts
        from control_plane.resources.stats import envoy_stats_tags, stats_label_keys

        config_path = self.options.config_path or await self._default_config()
        config = load_config(config_path)
        level = self.options.log_level or config.logging.level
        self.log_args = ["--log-level", level, "--log-format", config.logging.format]
        logs.setup("supervisor", level, config.logging.format)
        self.log_format = config.logging.format
        admin_port = config.server.admin_port if self.options.admin_port is None else self.options.admin_port
        port = config.server.port if self.options.port is None else self.options.port
        opened = ports.gateway_ports(config.server, port=self.options.port, metrics_port=self.options.metrics_port,
                                     admin_port=self.options.admin_port)
        held = ports.taken(opened)
        if held:  # before anything starts: Envoy would only log it, and never be ready
            raise PortInUse(held)
        plane_args = [] if self.options.port is None else ["--port", str(self.options.port)]
        if self.options.metrics_port is not None:
            plane_args += ["--metrics-port", str(self.options.metrics_port)]
        if self.options.validation_timeout is not None:
            plane_args += ["--validation-timeout", str(self.options.validation_timeout)]
        py = sys.executable
        workers = await self._start_ext_procs(config.ext_proc.workers or os.cpu_count() or 1)
        endpoints = [arg for w in workers for arg in ("--ext-proc-grpc", w.ready["grpc"],
                                                      "--ext-proc-http", w.ready["http"],
                                                      "--ext-proc-verdicts", w.ready["verdicts"])]
        control_plane = Child("control_plane", [
            py, "-m", "control_plane", "--config", str(config_path),
            "--listen", self.channels.xds, *endpoints, *plane_args, *self.log_args],
            # Restarted on the same ADS address: Envoy and ext_proc reconnect by themselves.
            restartable=True)
        await self._start(control_plane)
        self._write_restarts()  # every count at 0 from the start: a series that exists before it rises
        await self._start_envoy(admin_port, envoy_stats_tags(stats_label_keys(config)))
        bound = await self._listener_ports(port, [p for p in opened if p.listener])
        for worker in workers:
            await self._wait_ext_proc_configured(worker)
        self.host = config.server.host
        scheme = "https" if config.server.tls is not None else "http"
        self.listen_url = f"{scheme}://{url_host(self.host)}:{bound[wire.LISTENER]}"
        self.metrics_url = f"http://{url_host(self.host)}:{bound[wire.METRICS_LISTENER]}{wire.METRICS_PATH}"
        self._print_ready(config, control_plane.ready.get("version", ""))

    async def _start_ext_procs(self, count: int) -> list[Child]:
        """``count`` ext_proc workers, started together; they share metrics and retry-after state.
        A restarted worker binds the same sockets: they are Envoy's endpoints (EDS)."""
        metrics_dir, shared_dir = self.metrics_dir, self.shared_dir
        metrics_dir.mkdir()
        shared_dir.mkdir()
        workers = [Child("ext_proc" if i == 0 else f"ext_proc#{i + 1}",
                         [sys.executable, "-m", "ext_proc", "--xds", self.channels.xds,
                          "--listen", self.channels.ext_proc_grpc(i + 1),
                          "--health-listen", self.channels.ext_proc_http(i + 1),
                          "--node-id", f"ext_proc-{os.getpid()}-{i + 1}", "--shared-dir", str(shared_dir),
                          # The first worker probes: Envoy polls its verdicts and /health is its.
                          *(["--no-probe"] if i else []), *self.log_args],
                         env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})
                   for i in range(count)]
        await asyncio.gather(*(self._start(worker) for worker in workers))
        for worker in workers:
            # The verdicts' port was picked at start; a restarted worker binds it again.
            worker.argv += ["--verdict-listen", worker.ready["verdicts"]]
            worker.restartable = True
        return workers

    async def _start(self, child: Child, wait_ready: bool = True) -> None:
        child.json_lines = self.log_format == "json"
        child.ready_timeout = self.options.ready_timeout
        self.children.append(child)
        await child.start(wait_ready)
        assert child.process is not None  # start() created it
        ports = {k: v for k, v in child.ready.items() if k not in ("event", "component")}
        log.info("child started", extra={"child": child.name, "pid": child.process.pid, **ports})

    async def _start_envoy(self, admin_port: int | None, stats_tags: list[dict[str, str]]) -> None:
        if admin_port is None:
            admin = self.channels.envoy_admin
        else:
            admin = f"127.0.0.1:{admin_port}"
            log.warning("Envoy's admin is on a loopback TCP port (server.admin_port): any local user can "
                        "reach it, and POST /quitquitquit stops the gateway; leave server.admin_port out "
                        "to keep it on a Unix socket only Hapax can open", extra={"admin_port": admin_port})
        bootstrap = self.workdir / "envoy.yaml"
        bootstrap.write_text(render_bootstrap(
            node_id=f"hapax-envoy-{os.getpid()}", admin=admin, xds=self.channels.xds, stats_tags=stats_tags,
            max_heap_bytes=self.options.envoy_max_heap_mb << 20))
        admin_file = self.workdir / "admin.address"
        envoy = Child("envoy", [
            str(envoy_binary()), "-c", str(bootstrap), "--admin-address-path", str(admin_file),
            "--disable-hot-restart", "--log-level", self.options.envoy_log_level,
            # Envoy counts the machine's CPUs, not the ones it may run on: pinned to one
            # core (taskset), one worker thread is what that core can use.
            *([] if self.options.envoy_concurrency is None else ["--concurrency", str(self.options.envoy_concurrency)]),
            # The custom_response filter (provider auth failures -> 502) is marked
            # work-in-progress upstream and Envoy says so on every config push.
            "--component-log-level", "misc:error",
            *(["--log-format", ENVOY_JSON_LOG_FORMAT] if self.log_format == "json" else []),
        ], relay_stdout=True)  # its access log (control_plane/resources/listeners.py)
        await self._start(envoy, wait_ready=False)
        written = await self._wait_file(admin_file, envoy)  # the admin's path, or host:port
        self.admin_url = admin if admin_port is None else f"http://{written}"

    async def _wait_file(self, path: Path, child: Child) -> str:
        deadline = time.monotonic() + self.options.ready_timeout
        while time.monotonic() < deadline:
            if child.process and child.process.returncode is not None:
                raise StartupError(f"{child.name} exited during start-up ({child.describe_exit()})")
            if path.exists() and path.read_text().strip():
                return path.read_text().strip()
            await asyncio.sleep(0.05)
        raise StartupError(f"{child.name} did not start within {self.options.ready_timeout:g} s "
                           "(hapax serve --ready-timeout); see the logs above")

    async def _listener_ports(self, configured: int, listeners: list[GatewayPort]) -> dict[str, int]:
        """Waits until Envoy has its listeners from the control plane and is LIVE.

        A listener Envoy cannot bind (a port taken since the check before start-up) is a
        rejected listener update, never a listener: that ends the wait at once, naming its port.
        """
        envoy = self.children[-1]
        deadline = time.monotonic() + self.options.ready_timeout
        while time.monotonic() < deadline:
            if envoy.process and envoy.process.returncode is not None:
                raise StartupError(f"envoy exited during start-up ({envoy.describe_exit()})")
            bound = await asyncio.to_thread(self._admin_listener_ports)
            if set(bound) >= set(LISTENERS):
                return bound
            if await asyncio.to_thread(self._listeners_rejected):
                missing = [p for p in listeners if p.listener not in bound]
                raise PortInUse([(p, "one Envoy could not open (its log above says why: most likely another "
                                     "process holds it)") for p in missing])
            await asyncio.sleep(0.1)
        raise StartupError(f"Envoy did not get its listeners (port {configured}) from the control plane "
                           f"within {self.options.ready_timeout:g} s (hapax serve --ready-timeout); "
                           "see the logs above")

    async def _wait_ext_proc_configured(self, ext_proc: Child) -> None:
        """Waits until ext_proc has its runtime configuration from the control plane.

        Envoy being LIVE is not enough: ext_proc subscribes on its own stream (and
        backs off while the control plane starts), and answers every request with
        503 until its first configuration arrives. Its /health says so; its status
        alone does not, since it is also 503 while no provider can serve (which a
        gateway may well start with: its providers' reasons are then what it serves).
        """
        deadline = time.monotonic() + self.options.ready_timeout
        while time.monotonic() < deadline:
            for child in self.children:
                if child.process and child.process.returncode is not None:
                    raise StartupError(f"{child.name} exited during start-up ({child.describe_exit()})")
            if await asyncio.to_thread(self._configured, ext_proc.ready["http"]):
                return
            await asyncio.sleep(0.1)
        raise StartupError(f"ext_proc did not get its configuration from the control plane "
                           f"within {self.options.ready_timeout:g} s (hapax serve --ready-timeout); "
                           "see the logs above")

    @staticmethod
    def _configured(address: str) -> bool:
        """ext_proc's /health names the configuration version it serves once it has one."""
        try:
            _, body = local_http.request(address, wire.HEALTH_PATH, timeout=1)
            control_plane = json.loads(body)["components"]["control_plane"]
        except (OSError, ValueError, KeyError, TypeError):
            return False
        return bool(control_plane.get("config_version"))

    def _admin_listener_ports(self) -> dict[str, int]:
        try:
            local_http.get(self.admin_url, "/ready", timeout=1)
            listeners = json.loads(local_http.get(self.admin_url, "/listeners?format=json", timeout=1)
                                   ).get("listener_statuses", [])
        except (OSError, ValueError):
            return {}
        return {lst["name"]: int(lst["local_address"]["socket_address"]["port_value"])
                for lst in listeners if lst.get("name") in LISTENERS}

    def _listeners_rejected(self) -> bool:
        """Whether Envoy refused a listener update from the control plane (a NACK): the listener
        it could not add, a port it could not bind above all, is not among its listeners."""
        try:
            text = local_http.get(self.admin_url, f"/stats?filter={ENVOY_LDS_REJECTED}", timeout=1).decode()
        except (OSError, UnicodeDecodeError):
            return False
        counts = (line.partition(": ") for line in text.splitlines())
        return any(name == ENVOY_LDS_REJECTED and value.strip() not in ("", "0") for name, _, value in counts)

    async def _default_config(self) -> Path:
        from control_plane.defaults import default_config_text, needs_fake_providers

        fake_urls = None
        if needs_fake_providers(os.environ):
            fake_urls = await self._start_fakes()
        path = self.workdir / "hapax.default.yaml"
        path.write_text(default_config_text(os.environ, fake_urls))
        return path

    async def _start_fakes(self) -> dict[str, str]:
        from hapax.fakes import FakeAnthropic, FakeOllama, FakeOpenAI

        fakes = {
            "openai": FakeOpenAI(api_key="fake-openai-key", model="gpt-4o-mini"),
            "anthropic": FakeAnthropic(api_key="fake-anthropic-key", model="claude-3-5-haiku-latest"),
            "ollama": FakeOllama(model="llama3.2"),
        }
        for fake in fakes.values():
            await fake.start()
            self.fakes.append(fake)
        return {name: fake.base_url for name, fake in fakes.items()}

    def _print_ready(self, config, version: str) -> None:
        from control_plane.config.served import (
            access_line,
            experiment_lines,
            preference_line,
            provider_line,
            route_lines,
        )

        first, *more = route_lines(config)  # a config serves at least one route
        lines = [
            "Hapax is ready.",
            f"  OpenAI API:   {self.listen_url}/v1{reach_note(self.host, f'{self.listen_url}/v1')}",
            f"  Routes:       {first}",
            *(f"                {line}" for line in more),
            f"  Health:       {self.listen_url}{wire.HEALTH_PATH}",
            f"  Metrics:      {self.metrics_url}{reach_note(self.host, self.metrics_url)}",
            *([f"  HTTP/3:       udp port {config.server.http3_port} (QUIC)"] if config.server.http3.enabled else []),
            f"  Envoy stats:  {self.metrics_url.removesuffix(wire.METRICS_PATH)}{wire.ENVOY_STATS_PATH}",
            f"  Envoy admin:  {self.admin_url} ({self._admin_reach()})",
            f"  Providers:    {provider_line(config)}",
            f"  Preference:   {preference_line(config)}",
            f"  Access:       {access_line(config)}",
            *(f"  {'Experiments:' if n == 0 else '':<14}{line}" for n, line in enumerate(experiment_lines(config))),
            f"  Config:       {self.options.config_path or 'built-in default'} (version {version})",
            # What the control plane has logged, where the operator looks first: an empty key above all.
            *(f"  Warning:      {warning}" for warning in config.warnings),
            "Press Ctrl-C to stop.",
        ]
        print("\n".join(lines), flush=True)

    def _admin_reach(self) -> str:
        if self.admin_url.startswith(wire.UNIX_SOCKET_PREFIX):
            return "this user only"
        return "loopback TCP: any local user can reach it; see server.admin_port"

    # -- run and stop

    def reload_config(self) -> None:
        """SIGHUP: the control plane reads its file again; nothing else restarts."""
        child = next((c for c in self.children if c.name == "control_plane"), None)
        if child is None or not child.ready or child.process is None or child.process.returncode is not None:
            # It has not announced itself yet: it reads the file (and watches it) as it starts.
            log.info("SIGHUP before the control plane is up; it reads the config as it starts")
            return
        log.info("SIGHUP: the control plane reloads the config", extra={"pid": child.process.pid})
        child.process.send_signal(signal.SIGHUP)

    async def wait(self, stop: asyncio.Event) -> int:
        """Returns when ``stop`` is set by a signal (0), or when Envoy dies or a child cannot be kept up (1)."""
        keepers = [asyncio.create_task(self._keep(c)) for c in self.children]
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({stopper, *keepers}, return_when=asyncio.FIRST_COMPLETED)
        for task in (stopper, *keepers):
            task.cancel()
        # A restart under way ends here, so that stop() sees every process there is.
        await asyncio.gather(*keepers, return_exceptions=True)
        if stopper in done:
            log.info("stopping on signal")
            return 0
        for task in done:
            error = None if task.cancelled() else task.exception()
            if error is not None:
                reason = str(error) if isinstance(error, GiveUp) else f"watching the children failed: {error!r}"
                self._say_stopping(reason)
        return 1

    def _say_stopping(self, reason: str) -> None:
        """The gateway's last word, said once: a JSON line with ``logging.format: json``."""
        last = f"hapax: {reason}; stopping."
        if self.log_format == "json":
            log.error(last, extra={"reason": reason})
        else:
            log.error("stopping the gateway", extra={"reason": reason})
            print(last, file=sys.stderr, flush=True)

    async def _keep(self, child: Child) -> None:
        """Watches ``child`` and restarts it when it dies; raises GiveUp when it may not or cannot."""
        policy = self.restart_policy()
        while True:
            assert child.process is not None
            await child.process.wait()
            await child.relayed()  # its last words (a traceback, say) before "child died"
            how = child.describe_exit()
            if not child.restartable:
                raise GiveUp(f"{child.name} died ({how})")
            log.warning("child died; restarting it", extra={"child": child.name, "how": how})
            if child.label.startswith("ext_proc"):
                self._forget_metrics(child.process.pid)
            await self._restart(child, policy, how)

    async def _restart(self, child: Child, policy: RestartPolicy, how: str) -> None:
        """Starts ``child`` again after the policy's backoff, until it is ready or the policy gives up."""
        failure = ""
        while (delay := policy.next_delay(time.monotonic())) is not None:
            await asyncio.sleep(delay)
            child.restarts += 1
            self._write_restarts()
            try:
                await child.start(wait_ready=True)
            except (StartupError, OSError) as err:
                failure = str(err) or "not ready in time"
                log.warning("restart failed", extra={"child": child.name, "error": failure})
                continue
            assert child.process is not None
            log.warning("child restarted", extra={"child": child.name, "pid": child.process.pid,
                                                   "restarts": child.restarts})
            return
        last = f" (the last time: {failure})" if failure else ""
        raise GiveUp(f"{child.name} died ({how}); it was restarted {policy.limit} times "
                     f"within {policy.window:.0f}s{last}, giving up")

    def _write_restarts(self) -> None:
        """Each process's restart count, where ext_proc reads it (hapax_process_restarts_total, /health).

        Written whole and renamed into place: a reader sees the old file or the new one.
        """
        counts = {c.label: c.restarts for c in self.children if c.restartable}
        if not self.shared_dir.is_dir():
            return
        tmp = self.shared_dir / f".{wire.RESTARTS_FILE}.tmp"
        tmp.write_text(json.dumps(counts, sort_keys=True))
        tmp.replace(self.shared_dir / wire.RESTARTS_FILE)

    def _forget_metrics(self, pid: int) -> None:
        """A dead worker's live gauges (requests in flight) leave the shared metrics with it."""
        if self.metrics_dir.is_dir():
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid, str(self.metrics_dir))

    async def stop(self) -> None:
        # Envoy first (no new requests), then ext_proc, then the control plane,
        # which the other two are clients of.
        for child in sorted(self.children, key=lambda c: STOP_ORDER.index(c.name.split("#")[0])):
            await child.stop()
        for fake in self.fakes:
            await fake.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
        shutil.rmtree(self.channels.directory, ignore_errors=True)


async def serve(options: ServeOptions) -> int:
    # Signals are handled from the first moment: a SIGTERM during start-up
    # stops what has started and cleans up, like one after it.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    supervisor = Supervisor(options)
    # SIGHUP is the conventional "reload your config": forwarded to the control plane.
    loop.add_signal_handler(signal.SIGHUP, supervisor.reload_config)
    try:
        if not await _start_unless_stopped(supervisor, stop):
            log.info("stopped during start-up")
            return 0
        return await supervisor.wait(stop)
    finally:
        await supervisor.stop()
        print("Hapax stopped.", flush=True)


async def _start_unless_stopped(supervisor: Supervisor, stop: asyncio.Event) -> bool:
    starting = asyncio.create_task(supervisor.start())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if starting.done():
        starting.result()  # raises what start-up raised
        return True
    starting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await starting
    return False
