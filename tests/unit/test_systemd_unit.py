"""deploy/systemd/hapax.service: a unit systemd accepts, running the CLI as it really is."""

from __future__ import annotations

import argparse
import inspect
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from hapax import cli, supervisor

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "systemd" / "hapax.service"


def directives(text: str) -> dict[str, dict[str, list[str]]]:
    """section -> key -> values, in order (a key may be given several times)."""
    sections: dict[str, dict[str, list[str]]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            sections.setdefault(section, {})
            continue
        key, _, value = line.partition("=")
        sections[section].setdefault(key.strip(), []).append(value.strip())
    return sections


SERVICE = directives(UNIT.read_text())["Service"]


def one(key: str) -> str:
    values = SERVICE.get(key, [])
    assert len(values) == 1, f"expected one {key}= in [Service], got {values}"
    return values[0]


def test_exec_start_is_hapax_serve_with_options_the_cli_accepts(monkeypatch: pytest.MonkeyPatch) -> None:
    program, *argv = shlex.split(one("ExecStart"))
    assert Path(program).name == "hapax"
    parsed: list[argparse.Namespace] = []
    monkeypatch.setattr(cli, "_serve", lambda args: parsed.append(args) or 0)
    assert cli.main(argv) == 0  # cli's own argparse: an unknown option would exit 2
    assert parsed[0].command == "serve"
    assert parsed[0].config == "/etc/hapax/hapax.yaml"


def test_reload_sends_sighup_which_hapax_serve_takes_as_reload() -> None:
    assert one("ExecReload") == "/bin/kill -HUP $MAINPID"
    assert "add_signal_handler(signal.SIGHUP, supervisor.reload_config)" in inspect.getsource(supervisor.serve)


def test_keys_come_from_an_environment_file_not_the_unit() -> None:
    assert one("EnvironmentFile") == "/etc/hapax/hapax.env"
    assert not any("API_KEY" in value for value in SERVICE.get("Environment", []))


def test_it_runs_as_a_dedicated_user_and_restarts_on_failure() -> None:
    assert one("User") not in ("", "root")
    assert one("Restart") == "on-failure"


def test_a_reload_that_comes_before_the_supervisor_handles_sighup_still_gets_it_restarted() -> None:
    # Restart=on-failure counts SIGHUP, SIGINT, SIGTERM and SIGPIPE deaths as clean. hapax serve
    # handles SIGTERM and SIGINT from its start (exit 0: a stop), and SIGHUP only from serve():
    # before that, ExecReload's SIGHUP ends it by the signal, which must not leave it down.
    assert "SIGHUP" in one("RestartForceExitStatus").split()
    assert one("ExecReload").startswith("/bin/kill -HUP")


def test_sigterm_reaches_the_supervisor_alone_which_stops_its_children() -> None:
    # control-group (the default) would SIGTERM every child at once, under the supervisor's feet.
    assert one("KillMode") == "mixed"
    stop_grace = supervisor.STOP_GRACE * len(supervisor.STOP_ORDER)
    assert float(one("TimeoutStopSec")) > stop_grace


def test_the_working_directory_and_sockets_go_in_a_runtime_directory() -> None:
    assert one("RuntimeDirectory") == "hapax"
    assert "TMPDIR=/run/hapax" in SERVICE["Environment"]


def test_it_is_hardened_and_may_open_many_files() -> None:
    for key, value in {"NoNewPrivileges": "true", "ProtectSystem": "strict", "PrivateTmp": "true",
                       "ProtectHome": "true"}.items():
        assert one(key) == value, key
    assert int(one("LimitNOFILE")) >= 65536


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    # verify checks that ExecStart's program exists: /opt/hapax is not installed here.
    program = shlex.split(one("ExecStart"))[0]
    unit = tmp_path / "hapax.service"
    unit.write_text(UNIT.read_text().replace(program, shutil.which("true") or "/bin/true"))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if "hapax.service" in line]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr
