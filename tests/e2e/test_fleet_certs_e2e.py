"""A fleet member as docker-compose.yml's fleet profile and deploy/kubernetes/ run one.

The xDS channel's certificates are those deploy/compose/fleet-certs.sh writes, the control plane
is dialled by a host name (a compose service, a Kubernetes Service: here ``localhost``), and
Envoy reaches its ext_proc at the fixed addresses the control plane hands out: Unix sockets in
a directory the two share, the verdicts on loopback. The role commands are not used here: the
processes are started as tests/e2e/test_fleet_e2e.py starts them.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from hapax.envoy_process import XdsClientTls, envoy_binary, render_bootstrap
from hapax.fakes import FakeOpenAI
from tests.conftest import free_port, gateway_config, save_config, wait_for
from tests.e2e.test_fleet_e2e import Envoy, Process

REPO = Path(__file__).resolve().parents[2]
FLEET_CERTS = REPO / "deploy" / "compose" / "fleet-certs.sh"
CONTROL_PLANE_NAME = "localhost"


class NamedEnvoy(Envoy):
    """Envoy dialling the control plane by ``host``, not by IP address."""

    def __init__(self, tmp: Path, name: str, xds: str, started: list, xds_tls: XdsClientTls) -> None:
        bootstrap = tmp / f"{name}.yaml"
        bootstrap.write_text(render_bootstrap(node_id=name, admin="127.0.0.1:0", xds=xds, xds_tls=xds_tls))
        admin = tmp / f"{name}.admin"
        self.proc = subprocess.Popen(
            [str(envoy_binary()), "-c", str(bootstrap), "--admin-address-path", str(admin),
             "--disable-hot-restart", "--log-level", "error", "--base-id", str(free_port())],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append(self)
        wait_for(lambda: admin.exists() and admin.read_text().strip(), f"{name}'s admin address")
        self.admin = "http://" + admin.read_text().strip()
        wait_for(lambda: self._api_port(), f"{name}'s listener")
        self.url = f"http://127.0.0.1:{self._api_port()}"

    def get_status(self, path: str) -> int:
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as resp:
                return resp.status
        except urllib.error.HTTPError as err:
            return err.code


@pytest.fixture()
def member(fake_host, tmp_path):
    tls = tmp_path / "tls"
    subprocess.run(["sh", str(FLEET_CERTS), str(tls), CONTROL_PLANE_NAME], check=True, capture_output=True,
                   timeout=120)
    fake = fake_host.start(FakeOpenAI(api_key="k", model="gpt-4o-mini"))
    xds_port = free_port()
    config = gateway_config({"openai": {"type": "openai", "model": "gpt-4o-mini", "api_key": "k",
                                        "base_url": fake.base_url}})
    config["control_plane"] = {"listen": f"127.0.0.1:{xds_port}", "tls": {
        "cert_file": str(tls / "control-plane.pem"), "key_file": str(tls / "control-plane.key"),
        "client_ca_file": str(tls / "ca.pem")}}
    save_config(tmp_path / "hapax.yaml", config)
    # The pod's fixed addresses: a socket directory Envoy and ext_proc share, verdicts on loopback.
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    grpc_socket, http_socket = f"unix:{run}/ext-proc.sock", f"unix:{run}/ext-proc-http.sock"
    verdicts = f"127.0.0.1:{free_port()}"
    member_tls = XdsClientTls(str(tls / "member.pem"), str(tls / "member.key"), str(tls / "ca.pem"))
    xds = f"{CONTROL_PLANE_NAME}:{xds_port}"
    py = sys.executable
    started: list = []
    try:
        started.append(Process([py, "-m", "ext_proc", "--xds", xds, "--listen", grpc_socket,
                                "--health-listen", http_socket, "--verdict-listen", verdicts,
                                "--xds-tls-cert", member_tls.cert_file, "--xds-tls-key", member_tls.key_file,
                                "--xds-tls-ca", member_tls.ca_file, "--log-level", "WARNING"]))
        started.append(Process([py, "-m", "control_plane", "--config", str(tmp_path / "hapax.yaml"),
                                "--ext-proc-grpc", grpc_socket, "--ext-proc-http", http_socket,
                                "--ext-proc-verdicts", verdicts, "--log-level", "WARNING"]))
        yield tmp_path, xds, member_tls, started
    finally:
        for process in reversed(started):
            process.stop()
        fake_host.run(fake.stop())


def test_a_member_with_the_script_s_certificates_is_served_by_a_control_plane_dialled_by_name(member):
    tmp, xds, member_tls, started = member
    envoy = NamedEnvoy(tmp, "envoy-a", xds, started, member_tls)

    # Envoy got its listeners from the control plane by name over mutual TLS, and its ext_proc its
    # runtime (/health crosses ext_proc at the fixed socket; 200 needs its xDS stream up too).
    wait_for(lambda: envoy.post("/v1/chat/completions") == 200, "the Envoy to serve over mutual TLS")
    assert envoy.get_status("/health") == 200
