"""Shared fixtures: fake providers on a background loop, and a real gateway.

The gateway is the real thing: ``hapax serve --config FILE`` as a subprocess,
which starts ext_proc, the control plane and Envoy on ephemeral loopback ports.
Fake providers run on their own event loop in a thread so that tests may use
blocking clients (the official ``openai`` SDK) as well as asyncio ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import settings
from prometheus_client.parser import text_string_to_metric_families

from hapax import local_http

# Property tests explore new examples on a developer's machine; in CI they run
# a fixed, derandomized set so that a green main stays green.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

REPO = Path(__file__).resolve().parent.parent
# The xDS harness's fixtures (``ads``, ``plane_at``), for the unit and the end-to-end tests.
pytest_plugins = ["tests.xds_harness"]


def save_config(path: Path, config: dict) -> None:
    """Writes the config as most editors save: a new file renamed over the old one."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(config, sort_keys=False))
    os.replace(tmp, path)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    """Polls until ``predicate`` holds; the timeout only bounds a broken run."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class FakeHost:
    """Runs fake providers on a private event loop in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def start(self, fake):
        self.run(fake.start())
        return fake

    @contextlib.contextmanager
    def serving(self, *fakes):
        """``fakes``, started, for the ``with`` block; stopped after it."""
        try:
            yield tuple(self.start(fake) for fake in fakes)
        finally:
            for fake in fakes:
                self.run(fake.stop())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


@pytest.fixture(scope="session")
def fake_host():
    host = FakeHost()
    yield host
    host.close()


class Gateway:
    """A running ``hapax serve`` process and what it printed."""

    def __init__(self, config: dict, tmp: Path, env: dict[str, str] | None = None) -> None:
        self.config_path = tmp / "hapax.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.output: list[str] = []
        full_env = {**os.environ, **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hapax.cli", "serve", "--config", str(self.config_path),
             "--log-level", "WARNING", *os.environ.get("HAPAX_TEST_SERVE_ARGS", "").split()],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env,
            start_new_session=True,
        )
        self.stderr: list[str] = []
        threading.Thread(target=self._collect_stderr, daemon=True).start()
        self.url = self._wait_ready()
        self.admin_url = self._line_value("Envoy admin:").split()[0]  # unix:/path unless admin_port is set
        self.envoy_stats_url = self._line_value("Envoy stats:")

    def admin(self, path: str, timeout: float = 10.0) -> str:
        """GET ``path`` from Envoy's admin (on its Unix socket); the body of a 200."""
        return local_http.get(self.admin_url, path, timeout).decode()

    def _collect_stderr(self) -> None:
        assert self.proc.stderr
        for line in self.proc.stderr:
            self.stderr.append(line)

    def _wait_ready(self, timeout: float = 90.0) -> str:
        assert self.proc.stdout
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("hapax serve exited before ready:\n" + "".join(self.stderr[-40:]))
            self.output.append(line)
            if line.startswith("Press Ctrl-C"):
                return self._line_value("OpenAI API:").removesuffix("/v1")
        raise RuntimeError("hapax serve was not ready in time")

    def _line_value(self, label: str) -> str:
        for line in self.output:
            if line.strip().startswith(label):
                return line.split(label, 1)[1].strip()
        raise KeyError(label)

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    @property
    def metrics_url(self) -> str:
        return self._line_value("Metrics:")

    def metric(self, name: str, **labels: str) -> float:
        """The value of one series on Hapax's /metrics (0 when it does not exist yet)."""
        with urllib.request.urlopen(self.metrics_url, timeout=5) as resp:
            text = resp.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return sample.value
        return 0.0

    def metric_total(self, name: str, **labels: str) -> float:
        """The sum of every series of ``name`` with ``labels`` (whatever their other labels)."""
        with urllib.request.urlopen(self.metrics_url, timeout=5) as resp:
            text = resp.read().decode()
        return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
                   if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()))

    def child_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)


def gateway_config(providers: dict[str, dict], *, preference: list[str] | None = None,
                   routes: list[dict] | None = None) -> dict:
    config: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0, "metrics_port": 0},
        "providers": providers,
    }
    if preference is not None:
        config["provider_preference"] = preference
    if routes is not None:
        config["routes"] = routes
    return config


# Every gateway a test module started; stopped when the module ends, since each one
# (Envoy, ext_proc workers, control plane, their health checks) keeps using CPU, and on
# two cores a suite that kept them all running got slower with every module.
_STARTED: list[Gateway] = []


@pytest.fixture(scope="session")
def start_gateway(tmp_path_factory) -> Callable[..., Gateway]:
    def start(config: dict, env: dict[str, str] | None = None) -> Gateway:
        gw = Gateway(config, tmp_path_factory.mktemp("gw"), env)
        _STARTED.append(gw)
        return gw

    yield start
    _stop_all()


@pytest.fixture(scope="module", autouse=True)
def _stop_the_modules_gateways():
    """Set up before the module's own fixtures, so torn down after them: its gateways go last."""
    yield
    _stop_all()


def _stop_all() -> None:
    while _STARTED:
        _STARTED.pop().stop()
