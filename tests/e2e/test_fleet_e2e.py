"""A fleet: several Envoys on one control plane, which may restart under them.

The three processes run on their own here, as in a fleet deployment (not
under ``hapax serve``): one ext_proc, one control plane on a fixed xDS port,
two Envoys. A late Envoy gets the current version; a config change reaches
both; a control plane that stops leaves both serving what they have, and one
that comes back on the same address resyncs them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
import trustme
import yaml
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from hapax import wire
from hapax.envoy_process import XdsClientTls, envoy_binary, render_bootstrap
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


class Envoy:
    def __init__(self, tmp: Path, name: str, xds_port: int, started: list, xds_tls: XdsClientTls | None = None) -> None:
        bootstrap = tmp / f"{name}.yaml"
        bootstrap.write_text(render_bootstrap(node_id=name, admin="127.0.0.1:0", xds=f"127.0.0.1:{xds_port}",
                                              xds_tls=xds_tls))
        admin = tmp / f"{name}.admin"
        self.proc = subprocess.Popen(
            [str(envoy_binary()), "-c", str(bootstrap), "--admin-address-path", str(admin),
             "--disable-hot-restart", "--log-level", "error", "--base-id", str(free_port())],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append(self)  # stopped by the fixture even if it never gets ready
        wait_for(lambda: admin.exists() and admin.read_text().strip(), f"{name}'s admin address")
        self.admin = "http://" + admin.read_text().strip()
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
    py = sys.executable
    ext_proc = Process([py, "-m", "ext_proc", "--xds", f"127.0.0.1:{xds_port}", "--log-level", "WARNING"])

    def control_plane() -> Process:
        return Process([py, "-m", "control_plane", "--config", str(config_path), "--listen", f"127.0.0.1:{xds_port}",
                        "--ext-proc-grpc", ext_proc.ready["grpc"], "--ext-proc-http", ext_proc.ready["http"],
                        "--ext-proc-verdicts", ext_proc.ready["verdicts"],
                        "--log-level", "WARNING"])

    started: list = [ext_proc]
    try:
        yield config, config_path, control_plane, started, lambda name: Envoy(tmp_path, name, xds_port, started)
    finally:
        for process in reversed(started):
            process.stop()
        fake_host.run(fake.stop())



def test_envoys_converge_and_survive_a_control_plane_restart(fleet):
    config, path, control_plane, started, envoy = fleet
    plane = control_plane()
    started.append(plane)
    first = envoy("envoy-a")
    # ext_proc may get its first version a moment after Envoy its listeners.
    wait_for(lambda: first.post("/v1/chat/completions") == 200, "the first Envoy to serve")
    second = envoy("envoy-b")  # a node that connects late gets the current version
    wait_for(lambda: second.post("/v1/chat/completions") == 200, "the late Envoy to serve")

    with_team = {**config, "routes": [*config["routes"], {"path": TEAM, "handler": "chat"}]}
    save_config(path, with_team)
    for node in (first, second):
        wait_for(lambda node=node: node.post(TEAM) == 200, f"{node.admin} to serve the new route")

    plane.stop()  # Envoy keeps serving the last configuration it has
    for node in (first, second):
        assert [node.post(TEAM) for _ in range(5)] == [200] * 5

    save_config(path, config)  # edited while the control plane is down: the restarted one serves it
    started.append(control_plane())
    for node in (first, second):
        wait_for(lambda node=node: node.post(TEAM) == 404, f"{node.admin} to resync")
        assert node.post("/v1/chat/completions") == 200


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
    py = sys.executable
    member = ["--xds-tls-cert", str(tmp_path / "member.pem"), "--xds-tls-key", str(tmp_path / "member.key"),
              "--xds-tls-ca", str(tmp_path / "fleet-ca.pem")]
    started: list = []
    try:
        ext_proc = Process([py, "-m", "ext_proc", "--xds", f"127.0.0.1:{xds_port}", *member, "--log-level", "WARNING"])
        started.append(ext_proc)
        # No --listen: the control plane listens where the config says, with its TLS.
        started.append(Process([py, "-m", "control_plane", "--config", str(tmp_path / "hapax.yaml"),
                                "--ext-proc-grpc", ext_proc.ready["grpc"], "--ext-proc-http", ext_proc.ready["http"],
                                "--ext-proc-verdicts", ext_proc.ready["verdicts"], "--log-level", "WARNING"]))
        yield tmp_path, xds_port, started
    finally:
        for process in reversed(started):
            process.stop()
        fake_host.run(fake.stop())


def test_a_fleet_with_the_ca_s_certificates_is_served_over_mutual_tls(tls_fleet):
    tmp, xds_port, started = tls_fleet
    envoy = Envoy(tmp, "envoy-tls", xds_port, started, XdsClientTls(
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
