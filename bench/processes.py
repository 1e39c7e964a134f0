"""Starting and stopping the processes a run needs, so that none outlives it.

Every process gets its own session (so a Ctrl-C at the terminal reaches the
harness, which then stops them in order rather than all at once) and, on Linux,
``PR_SET_PDEATHSIG`` (so even a harness killed outright takes them along).
Stopping sends SIGTERM to the process (``hapax serve`` then stops its own
children in its order), waits, then SIGKILLs whatever is left of its group.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shlex
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

STOP_GRACE = 15.0  # hapax serve stops Envoy, ext_proc and the control plane in turn


class StartError(RuntimeError):
    pass


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Process:
    """One child process; its stdout and stderr go to files in the run's work directory."""

    def __init__(self, name: str, argv: list[str], workdir: Path, cwd: Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = argv
        self.stdout_path = workdir / f"{name}.stdout"
        self.stderr_path = workdir / f"{name}.stderr"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=cwd,
                env={**os.environ, **(env or {})}, start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def check(self) -> None:
        """Raises (with the end of its stderr) if the process has exited."""
        code = self.popen.poll()
        if code is not None:
            tail = self.stderr_path.read_text(errors="replace").strip().splitlines()[-30:]
            raise StartError(f"{self.name} exited ({code}):\n" + "\n".join(tail))

    def stop(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=STOP_GRACE)
        # Whatever is left of its group (a grandchild the parent could not stop).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)


def wait_until(predicate: Callable[[], Any], what: str, proc: Process, timeout: float = 90.0) -> Any:
    """Polls ``predicate`` until it returns something truthy; fails early if ``proc`` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.check()
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise StartError(f"{proc.name}: {what} within {timeout:.0f}s")


def http_get(url: str, timeout: float = 2.0) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.read() if resp.status == 200 else None
    except OSError:
        return None


class ProcessSet:
    """Processes started for one run, stopped in reverse order of start, whatever happens."""

    def __init__(self) -> None:
        self._started: list[Process] = []

    def start(self, name: str, argv: list[str], workdir: Path, **kwargs: Any) -> Process:
        proc = Process(name, argv, workdir, **kwargs)
        self._started.append(proc)
        return proc

    def commands(self) -> list[str]:
        return [shlex.join(p.argv) for p in self._started]

    def stop_all(self) -> None:
        # A second Ctrl-C while stopping must not leave the rest running.
        with _signals_ignored():
            while self._started:
                self._started.pop().stop()

    def __enter__(self) -> ProcessSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def start_envoy(procs: ProcessSet, name: str, config: dict[str, Any], envoy: Path, workdir: Path,
                prefix: list[str] | None = None, concurrency: int | None = None) -> tuple[Process, int]:
    """Runs Envoy on a static config; returns it and the port of its (only) listener.

    ``prefix``: what starts it (taskset); ``concurrency``: its worker threads (default: one per CPU).
    """
    config_path = workdir / f"{name}.json"
    config_path.write_text(json.dumps(config))  # JSON is YAML to Envoy
    admin_file = workdir / f"{name}.admin"
    threads = [] if concurrency is None else ["--concurrency", str(concurrency)]
    proc = procs.start(name, [
        *(prefix or []), str(envoy), "-c", str(config_path), "--admin-address-path", str(admin_file),
        "--disable-hot-restart", "--log-level", "warning", *threads,
    ], workdir)

    def admin() -> str:
        return admin_file.read_text().strip() if admin_file.exists() else ""

    admin_url = "http://" + wait_until(admin, "no admin address", proc)
    wait_until(lambda: http_get(admin_url + "/ready"), "not LIVE", proc)
    listeners = json.loads(http_get(admin_url + "/listeners?format=json") or b"{}")
    ports = [int(lst["local_address"]["socket_address"]["port_value"])
             for lst in listeners.get("listener_statuses", [])]
    if len(ports) != 1:
        raise StartError(f"{name}: expected one listener, Envoy reports {listeners}")
    return proc, ports[0]
