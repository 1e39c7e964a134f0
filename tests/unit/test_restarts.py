"""The supervisor's restart policy and how ext_proc reports restart counts."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ext_proc.metrics import RestartsCollector
from ext_proc.restarts import RestartCounts
from hapax import wire
from hapax.supervisor import Child, RestartPolicy, ServeOptions, Supervisor


def test_backoff_doubles_from_half_a_second_to_the_cap():
    policy = RestartPolicy(base=0.5, cap=3.0, limit=10, window=60.0)
    assert [policy.next_delay(float(t)) for t in range(6)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


def test_more_than_limit_restarts_within_the_window_gives_up():
    policy = RestartPolicy(limit=5, window=60.0)
    assert all(policy.next_delay(t) is not None for t in (0.0, 1.0, 2.0, 3.0, 4.0))
    assert policy.next_delay(5.0) is None
    assert policy.next_delay(59.0) is None  # the first restart still counts


def test_restarts_leave_the_window_and_the_backoff_starts_over():
    policy = RestartPolicy(base=0.5, limit=5, window=60.0)
    for t in (0.0, 1.0, 2.0, 3.0, 4.0):
        policy.next_delay(t)
    # A minute after the last of them the child has run long enough: a fresh start.
    assert policy.next_delay(64.5) == 0.5


def test_restart_labels_number_the_workers_from_one():
    assert [Child(name, []).label for name in ("ext_proc", "ext_proc#2", "control_plane")] == [
        "ext_proc-1", "ext_proc-2", "control_plane"]


def _restarts_series(counts: RestartCounts) -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(RestartsCollector(counts.read))
    text = generate_latest(registry).decode()
    return {s.labels["process"]: s.value for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == "hapax_process_restarts_total"}


def test_ext_proc_reports_the_counts_the_supervisor_wrote(tmp_path: Path):
    (tmp_path / wire.RESTARTS_FILE).write_text(json.dumps({"ext_proc-1": 2, "control_plane": 0}))
    counts = RestartCounts(tmp_path)
    assert counts.read() == {"ext_proc-1": 2, "control_plane": 0}
    assert _restarts_series(counts) == {"ext_proc-1": 2.0, "control_plane": 0.0}


def test_no_supervisor_or_an_unreadable_file_reports_nothing(tmp_path: Path):
    assert RestartCounts(None).read() == {}
    assert RestartCounts(tmp_path).read() == {}  # no file yet
    (tmp_path / wire.RESTARTS_FILE).write_text("{half a")
    assert RestartCounts(tmp_path).read() == {}
    assert _restarts_series(RestartCounts(tmp_path)) == {}


# A child that dies before it announces itself ready (as ext_proc and the control plane do).
CRASHING_CHILD = "import sys; sys.exit(4)"


def _supervisor(tmp_path: Path, child: Child, **policy: float) -> Supervisor:
    supervisor = Supervisor(ServeOptions(config_path=None))
    supervisor.shared_dir.mkdir()
    supervisor.children.append(child)
    supervisor.restart_policy = lambda: RestartPolicy(base=0.01, **policy)  # type: ignore[assignment]
    return supervisor


# A child that announces itself ready the way ext_proc and the control plane do and lives on;
# with CRASH_FILE present it dies before that instead, and removes the file.
READY_CHILD = """
import json, os, sys, time
crash = os.environ.get("CRASH_FILE")
if crash and os.path.exists(crash):
    os.remove(crash)
    sys.exit(3)
print(json.dumps({"event": "ready"}), flush=True)
time.sleep(60)
"""


async def test_a_dead_child_is_restarted_until_it_is_ready_and_counted(tmp_path: Path):
    crash = tmp_path / "crash"
    child = Child("control_plane", [sys.executable, "-c", READY_CHILD], env={"CRASH_FILE": str(crash)},
                  restartable=True)
    supervisor = _supervisor(tmp_path, child)
    stop = asyncio.Event()
    try:
        await child.start(wait_ready=True)
        first = child.process
        assert first is not None
        waiting = asyncio.create_task(supervisor.wait(stop))
        crash.touch()  # the first restart fails, the second one is ready
        first.kill()
        for _ in range(1000):
            await asyncio.sleep(0.01)
            if child.ready and child.process is not first:
                break
        assert child.restarts == 2 and child.process is not None and child.process.returncode is None
        assert RestartCounts(supervisor.shared_dir).read() == {"control_plane": 2}
        stop.set()
        assert await waiting == 0
    finally:
        await supervisor.stop()
    assert child.process.returncode is not None


async def test_a_stop_during_a_restart_stops_the_restarted_process_too(tmp_path: Path):
    child = Child("ext_proc", [sys.executable, "-c", READY_CHILD], restartable=True)
    supervisor = _supervisor(tmp_path, child)
    stop = asyncio.Event()
    try:
        await child.start(wait_ready=True)
        first = child.process
        assert first is not None
        waiting = asyncio.create_task(supervisor.wait(stop))
        first.kill()
        for _ in range(1000):  # until the restart has begun
            await asyncio.sleep(0.001)
            if child.restarts:
                break
        stop.set()
        assert await waiting == 0
    finally:
        await supervisor.stop()
    assert child.process is not None and child.process.returncode is not None


async def test_restarts_that_keep_failing_give_up_nonzero(tmp_path: Path, caplog):
    child = Child("ext_proc#2", [sys.executable, "-c", CRASHING_CHILD], restartable=True)
    supervisor = _supervisor(tmp_path, child, limit=3)
    try:
        await child.start(wait_ready=False)
        assert await asyncio.wait_for(supervisor.wait(asyncio.Event()), 30) == 1
        assert child.restarts == 3
        assert RestartCounts(supervisor.shared_dir).read() == {"ext_proc-2": 3}
        err = caplog.text
        assert ("hapax: ext_proc#2 died (exit code 4); it was restarted 3 times within 60s (the last time: "
                "ext_proc#2 exited before it was ready (exit code 4)), giving up; stopping.") in err
    finally:
        await supervisor.stop()


async def test_envoy_is_never_restarted(tmp_path: Path, caplog):
    child = Child("envoy", [sys.executable, "-c", "import sys; sys.exit(2)"])
    supervisor = _supervisor(tmp_path, child)
    try:
        await child.start(wait_ready=False)
        assert await asyncio.wait_for(supervisor.wait(asyncio.Event()), 30) == 1
        assert child.restarts == 0
        assert "hapax: envoy died (exit code 2); stopping." in caplog.text
    finally:
        await supervisor.stop()
