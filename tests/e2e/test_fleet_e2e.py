"""A fleet: several Envoys on one control plane, which may restart under them.

The three roles run apart here, as an orchestrator starts them (``hapax control-plane``,
``hapax ext-proc``, ``hapax envoy``; not under ``hapax serve``): one control plane on a fixed
xDS port, ext_procs, two Envoys. A late Envoy gets the current version; a config change
reaches both; an ext_proc killed leaves the traffic to the other; a control plane that stops
leaves both Envoys serving what they have, and one that comes back on the same address
resyncs them, with no request failed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import trustme
import yaml
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from hapax import wire
from hapax.envoy_process import XdsClientTls
from hapax.fakes import FakeOpenAI
from tests.conftest import free_port, gateway_config, save_config, wait_for

TEAM = "/v1/team/chat/completions"
CHAT = {"model": "auto", "messages": [{"role": "user", "content": "fleet"}]}



class Process:
    """A Hapax component started on its own; ``ready`` is its announced addresses."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                     start_new_session=True)
        assert self.proc.stdout
        # Steps it announces on the way (wire.PROGRESS_EVENT) come first: its ready line ends them.
        for line in self.proc.stdout:
            self.ready = json.loads(line)
            if self.ready["event"] == wire.READY_EVENT:
                return
        raise RuntimeError(f"{argv[2]} exited before it was ready")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def hapax(*role: str) -> list[str]:
    return [sys.executable, "-m", "hapax.cli", *role]


class Envoy:
    """``hapax envoy``: the bootstrap for a control plane elsewhere, then Envoy itself (exec)."""

    def __init__(self, name: str, xds_port: int, started: list, xds_tls: XdsClientTls | None = None) -> None:
        admin = f"127.0.0.1:{free_port()}"
        tls = ["--xds-tls-cert", xds_tls.cert_file, "--xds-tls-key", xds_tls.key_file,
               "--xds-tls-ca", xds_tls.ca_file] if xds_tls else []
        self.proc = subprocess.Popen(
            hapax("envoy", "--xds", f"127.0.0.1:{xds_port}", "--node-id", name, "--admin", admin,
                  "--log-level", "error", "--concurrency", "1", *tls),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append(self)  # stopped by the fixture even if it never gets ready
        self.admin = f"http://{admin}"
        wait_for(lambda: self._api_port(), f"{name}'s listener")
        self.url = f"http://127.0.0.1:{self._api_port()}"

    def _api_port(self) -> int | None:
        try:
            with urllib.request.urlopen(self.admin + "/listeners?format=json", timeout=2) as resp:
                listeners = json.load(resp).get("listener_statuses", [])
        except OSError:
            return None
        for listener in listeners:
            if listener["name"] == "hapax_http":
                return listener["local_address"]["socket_address"]["port_value"]
        return None

    def post(self, path: str) -> int:
        request = urllib.request.Request(self.url + path, data=json.dumps(CHAT).encode(),
                                         headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                return resp.status
        except urllib.error.HTTPError as err:
            return err.code
        except OSError:
            # Listed by the admin API a moment before it accepts (a listener still warming):
            # not serving yet, which the caller waits out.
            return 0

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=15)


@pytest.fixture()
def fleet(fake_host, tmp_path):
    fake = fake_host.start(FakeOpenAI(api_key="k", model="gpt-4o-mini"))
    config_path = tmp_path / "hapax.yaml"
    config = gateway_config({"openai": {"type": "openai", "model": "gpt-4o-mini", "api_key": "k",
                                        "base_url": fake.base_url}},
                            routes=[{"path": "/v1/chat/completions", "handler": "chat"}])
    config_path.write_text(yaml.safe_dump(config))
    xds_port = free_port()
    ext_procs = [Process(hapax("ext-proc", "--xds", f"127.0.0.1:{xds_port}", "--log-level", "WARNING"))
                 for _ in range(2)]

    def control_plane() -> Process:
        addresses = [arg for e in ext_procs for arg in ("--ext-proc-grpc", e.ready["grpc"], "--ext-proc-http",
                                                          e.ready["http"], "--ext-proc-verdicts", e.ready["verdicts"])]
        return Process(hapax("control-plane", "--config", str(config_path), "--listen", f"127.0.0.1:{xds_port}",
                             *addresses, "--log-level", "WARNING"))

    started: list = [*ext_procs]
    try:
        yield Fleet(config, config_path, control_plane, started, lambda name: Envoy(name, xds_port, started),
                    ext_procs)
    finally:
        for process in reversed(started):
            process.stop()
        fake_host.run(fake.stop())



@dataclass
class Fleet:
    config: dict
    path: Path
    control_plane: Callable[[], Process]
    started: list
    envoy: Callable[[str], Envoy]
    ext_procs: list[Process]


class Traffic:
    """Requests through every Envoy, one after another per Envoy, until stopped; their statuses."""

    def __init__(self, envoys: list[Envoy], path: str = "/v1/chat/completions") -> None:
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(e, path), daemon=True) for e in envoys]
        for thread in self._threads:
            thread.start()

    def _run(self, envoy: Envoy, path: str) -> None:
        while not self._stop.is_set():
            self.statuses.append(envoy.post(path))

    def stop(self) -> list[int]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)
        return self.statuses


def test_roles_apart_serve_through_both_envoys_and_survive_an_ext_proc_and_a_control_plane_restart(fleet):
    plane = fleet.control_plane()
    fleet.started.append(plane)
    first = fleet.envoy("envoy-a")
    # ext_proc may get its first version a moment after Envoy its listeners.
    wait_for(lambda: first.post("/v1/chat/completions") == 200, "the first Envoy to serve")
    second = fleet.envoy("envoy-b")  # a node that connects late gets the current version
    wait_for(lambda: second.post("/v1/chat/completions") == 200, "the late Envoy to serve")

    with_team = {**fleet.config, "routes": [*fleet.config["routes"], {"path": TEAM, "handler": "chat"}]}
    save_config(fleet.path, with_team)
    for node in (first, second):
        wait_for(lambda node=node: node.post(TEAM) == 200, f"{node.admin} to serve the new route")

    # An ext_proc dies (its host, its pod): requests go on through the other.
    traffic = Traffic([first, second], TEAM)
    wait_for(lambda: len(traffic.statuses) >= 20, "traffic through both Envoys")
    fleet.ext_procs[0].proc.kill()
    killed_at = len(traffic.statuses)
    wait_for(lambda: len(traffic.statuses) >= killed_at + 100, "traffic after the kill")
    after_kill = traffic.stop()[killed_at:]
    # What was in flight on the dead one may fail (503 JSON, never a bare 500); then all is served.
    assert set(after_kill) <= {200, 503}, after_kill
    assert after_kill[-60:] == [200] * 60

    # The control plane restarts under load: nothing fails; an edit made meanwhile is applied.
    traffic = Traffic([first, second])
    wait_for(lambda: len(traffic.statuses) >= 20, "traffic before the restart")
    plane.stop()  # Envoy and ext_proc keep serving the last configuration they have
    for node in (first, second):
        assert [node.post(TEAM) for _ in range(5)] == [200] * 5
    save_config(fleet.path, fleet.config)  # edited while the control plane is down: the restarted one serves it
    fleet.started.append(fleet.control_plane())
    for node in (first, second):
        wait_for(lambda node=node: node.post(TEAM) == 404, f"{node.admin} to resync")
    statuses = traffic.stop()
    assert len(statuses) > 40 and set(statuses) == {200}, sorted(set(statuses))


# ---------------------------------------------------------------- mutual TLS between machines


@pytest.fixture()
def tls_fleet(fake_host, tmp_path):
    """A control plane on TCP with mutual TLS (control_plane.tls), and the files of a fleet CA
    (for the Envoys and ext_procs) and of another CA (for an intruder)."""
    fleet_ca, other_ca = trustme.CA(), trustme.CA()
    files = {"fleet-ca.pem": fleet_ca.cert_pem, "other-ca.pem": other_ca.cert_pem}
    for name, ca in (("control-plane", fleet_ca), ("member", fleet_ca), ("intruder", other_ca)):
        issued = ca.issue_cert("127.0.0.1", "localhost")
        files[f"{name}.pem"], files[f"{name}.key"] = issued.cert_chain_pems[0], issued.private_key_pem
    for name, blob in files.items():
        blob.write_to_path(tmp_path / name)
    xds_port = free_port()
    fake = fake_host.start(FakeOpenAI(api_key="k", model="gpt-4o-mini"))
    config = gateway_config({"openai": {"type": "openai", "model": "gpt-4o-mini", "api_key": "k",
                                        "base_url": fake.base_url}})
    config["control_plane"] = {"listen": f"127.0.0.1:{xds_port}", "tls": {
        "cert_file": "control-plane.pem", "key_file": "control-plane.key", "client_ca_file": "fleet-ca.pem"}}
    save_config(tmp_path / "hapax.yaml", config)
    member = ["--xds-tls-cert", str(tmp_path / "member.pem"), "--xds-tls-key", str(tmp_path / "member.key"),
              "--xds-tls-ca", str(tmp_path / "fleet-ca.pem")]
    started: list = []
    try:
        ext_proc = Process(hapax("ext-proc", "--xds", f"127.0.0.1:{xds_port}", *member, "--log-level", "WARNING"))
        started.append(ext_proc)
        # No --listen: the control plane listens where the config says, with its TLS.
        started.append(Process(hapax("control-plane", "--config", str(tmp_path / "hapax.yaml"),
                                     "--ext-proc-grpc", ext_proc.ready["grpc"], "--ext-proc-http",
                                     ext_proc.ready["http"], "--ext-proc-verdicts", ext_proc.ready["verdicts"],
                                     "--log-level", "WARNING")))
        yield tmp_path, xds_port, started
    finally:
        for process in reversed(started):
            process.stop()
        fake_host.run(fake.stop())


def test_a_fleet_with_the_ca_s_certificates_is_served_over_mutual_tls(tls_fleet):
    tmp, xds_port, started = tls_fleet
    envoy = Envoy("envoy-tls", xds_port, started, XdsClientTls(
        str(tmp / "member.pem"), str(tmp / "member.key"), str(tmp / "fleet-ca.pem")))
    # Envoy got its listeners over TLS, and ext_proc its runtime (the request is translated by it).
    wait_for(lambda: envoy.post("/v1/chat/completions") == 200, "the Envoy to serve over mutual TLS")


@pytest.mark.parametrize("client", ["plaintext", "no_certificate", "another_ca_certificate"])
def test_a_client_without_the_fleet_s_certificate_gets_nothing_from_the_control_plane(tls_fleet, client):
    tmp, xds_port, _ = tls_fleet
    fleet_ca = (tmp / "fleet-ca.pem").read_bytes()
    credentials = {
        "plaintext": None,
        "no_certificate": grpc.ssl_channel_credentials(root_certificates=fleet_ca),
        "another_ca_certificate": grpc.ssl_channel_credentials(
            root_certificates=fleet_ca, private_key=(tmp / "intruder.key").read_bytes(),
            certificate_chain=(tmp / "intruder.pem").read_bytes()),
    }[client]
    target = f"127.0.0.1:{xds_port}"
    channel = grpc.insecure_channel(target) if credentials is None else grpc.secure_channel(target, credentials)
    request = discovery_pb2.DiscoveryRequest(node=base_pb2.Node(id="intruder", cluster="hapax-ext-proc"),
                                             type_url=wire.RUNTIME_TYPE_URL)
    with channel, pytest.raises(grpc.RpcError) as refused:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        next(iter(stub.StreamAggregatedResources(iter([request]), timeout=5)))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_control_plane_beyond_loopback_without_tls_is_refused(tmp_path):
    config = gateway_config({"openai": {"type": "openai", "model": "gpt-4o-mini", "api_key": "k"}})
    config["control_plane"] = {"listen": "0.0.0.0:18000"}
    save_config(tmp_path / "hapax.yaml", config)
    result = subprocess.run([sys.executable, "-m", "hapax.cli", "validate", "--config", str(tmp_path / "hapax.yaml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "control_plane.tls" in result.stdout + result.stderr
    assert "mutual TLS" in result.stdout + result.stderr
