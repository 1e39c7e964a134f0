"""Envoy's validation of a version never stops the control plane from serving (issue 21).

``envoy --mode validate`` of a large configuration takes seconds to minutes. The control
plane's one event loop also serves xDS to every Envoy and ext_proc, so the validation runs
beside it, bounded in time. A slow validator here is a stand-in ``envoy`` (``HAPAX_ENVOY``)
that sleeps when the test asks it to: a slow external tool, not a change to the code path.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from control_plane.snapshot import RUNTIME
from hapax.v1 import runtime_pb2
from hapax.wire import STATUS_TYPE_URL
from tests.conftest import free_port, gateway_config
from tests.xds_harness import AdsClient

SLOW_SECONDS = 20  # longer than a client's wait for an answer (AdsClient.recv: 10 s)


class Validator:
    """A stand-in ``envoy``: counts its runs, and with ``slow()`` sleeps like a large validation."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / "envoy"
        self.path.write_text(f"#!/bin/sh\necho $$ >> {folder}/runs\n"
                             f"[ -e {folder}/slow ] && exec sleep {SLOW_SECONDS}\nexit 0\n")
        self.path.chmod(0o755)

    def slow(self) -> None:
        (self.folder / "slow").touch()

    def runs(self) -> list[int]:
        runs = self.folder / "runs"
        return [int(pid) for pid in runs.read_text().split()] if runs.exists() else []


class ControlPlane:
    """``python -m control_plane`` on a loopback port; its log lines go to a file."""

    def __init__(self, tmp: Path, validator: Validator, *args: str) -> None:
        self.config = tmp / "hapax.yaml"
        self.config.write_text(yaml.safe_dump(_config()))
        self.port = free_port()
        self.log = tmp / "control_plane.log"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "control_plane", "--config", str(self.config),
                 "--listen", f"127.0.0.1:{self.port}", "--ext-proc-grpc", "127.0.0.1:1",
                 "--ext-proc-http", "127.0.0.1:2", "--ext-proc-verdicts", "127.0.0.1:3", *args],
                stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True,
                env={**os.environ, "HAPAX_ENVOY": str(validator.path)})
        self.version = self._ready()["version"]

    def _ready(self) -> dict:
        assert self.proc.stdout
        for line in self.proc.stdout:
            event = json.loads(line)
            if event["event"] == "ready":
                return event
        raise RuntimeError("the control plane exited before it was ready:\n" + self.log.read_text())

    def edit(self) -> None:
        config = _config()
        config["routes"].append({"path": "/v1/team/chat/completions", "handler": "chat"})
        self.config.write_text(yaml.safe_dump(config))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=15)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)


def _config() -> dict:
    return gateway_config({"openai": {"type": "openai", "model": "gpt-4o-mini", "api_key": "k",
                                      "base_url": "http://127.0.0.1:9/v1"}},
                          routes=[{"path": "/v1/chat/completions", "handler": "chat"}])


@pytest.fixture()
def validator(tmp_path):
    return Validator(tmp_path)


async def _until(predicate, what: str, seconds: float = 30.0) -> None:
    for _ in range(int(seconds / 0.05)):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def _runtime_version(client: AdsClient) -> str:
    await client.send(RUNTIME)
    return (await client.recv()).version_info


async def test_clients_are_answered_while_envoy_validates_an_edit(tmp_path, validator):
    plane = ControlPlane(tmp_path, validator)  # the default bound (30 s) is longer than the validation
    client = AdsClient(f"127.0.0.1:{plane.port}", node_id="before")
    try:
        assert await _runtime_version(client) == plane.version
        # The first version was validated in time: nothing is said to be unchecked.
        await client.send(STATUS_TYPE_URL)
        status = runtime_pb2.ConfigStatus()
        (await client.recv()).resources[0].Unpack(status)
        assert status.serving_version == plane.version and not status.unchecked_version
        validator.slow()
        plane.edit()
        await _until(lambda: len(validator.runs()) == 2, "Envoy's validation of the edit to begin")

        late = AdsClient(f"127.0.0.1:{plane.port}", node_id="during")
        try:
            # Answered now, with the version still served, while Envoy is at it for SLOW_SECONDS.
            assert await _runtime_version(late) == plane.version
        finally:
            await late.close()
    finally:
        await client.close()
        plane.stop()
    # The control plane stopped during the validation, and the validator with it.
    validating = validator.runs()[-1]
    await _until(lambda: not _alive(validating), "the validator to be stopped")


async def test_a_validation_past_its_bound_is_stopped_and_the_edit_served_with_a_warning(tmp_path, validator):
    plane = ControlPlane(tmp_path, validator, "--validation-timeout", "1")
    client = AdsClient(f"127.0.0.1:{plane.port}", node_id="ext_proc")
    try:
        await client.send(RUNTIME)
        answer = await client.recv()
        validator.slow()
        plane.edit()
        while answer.version_info == plane.version:  # ACK each answer until the edit's version arrives
            await client.send(RUNTIME, nonce=answer.nonce, version=answer.version_info)
            answer = await asyncio.wait_for(client.call.read(), 30)
        assert _generation(answer.version_info) > _generation(plane.version)
        # And the status says so, for /health: this version went out without Envoy's validation.
        await client.send(STATUS_TYPE_URL)
        status = runtime_pb2.ConfigStatus()
        (await asyncio.wait_for(client.call.read(), 30)).resources[0].Unpack(status)
        assert status.unchecked_version == answer.version_info
    finally:
        await client.close()
        plane.stop()
    assert not _alive(validator.runs()[-1])
    warnings = [json.loads(line) for line in plane.log.read_text().splitlines() if "took longer" in line]
    assert [w["msg"] for w in warnings] == [
        f"Envoy's validation of {plane.config} took longer than 1 s; the configuration is served without it, "
        "guarded by the make-before-break rollout and NACK handling (raise --validation-timeout to wait for it)"]


def _generation(version: str) -> int:
    return int(version.split("-")[0])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has ended; only its parent has not collected it yet.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
