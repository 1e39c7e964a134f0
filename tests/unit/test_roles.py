"""The roles apart (hapax/roles.py): what each is started with, and what it refuses."""

from __future__ import annotations

import pytest

from control_plane import server as control_plane_server
from hapax import cli


def test_the_control_plane_refuses_an_ext_proc_address_by_name(capsys):
    with pytest.raises(SystemExit) as exited:
        control_plane_server.main(["--config", "hapax.yaml", "--ext-proc-grpc", "ext-proc:9000",
                                   "--ext-proc-http", "unix:/run/hapax/http.sock",
                                   "--ext-proc-verdicts", "127.0.0.1:9502"])
    assert exited.value.code == 2
    assert "not a name" in capsys.readouterr().err


def test_hapax_envoy_refuses_half_of_the_fleet_certificates(capsys):
    assert cli.main(["envoy", "--xds", "control-plane:18000", "--xds-tls-cert", "member.pem"]) == 2
    assert "--xds-tls-cert, --xds-tls-key and --xds-tls-ca go together" in capsys.readouterr().err


@pytest.mark.parametrize("role", ["control-plane", "ext-proc"])
def test_a_roles_help_is_its_processes_own(role, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main([role, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: hapax {role}") and ("--ext-proc-grpc" in out or "--xds" in out)
