"""deploy/kubernetes/: valid for the Kubernetes API, complete, and wired as the fleet must be.

Validated offline against the API's schemas (kubernetes-validate) for the oldest Kubernetes the
manifests are written for and the newest the package knows; then what a schema cannot say: the
files the kustomization lists, the keys the containers reference, the ext_proc beside each
Envoy at the addresses the control plane hands out, the probes, the restricted pods.
"""

from __future__ import annotations

import http.server
import re
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from control_plane.config import load_config
from tests.unit.test_deploy_assets import FLEET_CERTS, final_user, help_flags

REPO = Path(__file__).resolve().parents[2]
KUBERNETES = REPO / "deploy" / "kubernetes"
KUSTOMIZATION = KUBERNETES / "kustomization.yaml"
SECRET_TEMPLATE = KUBERNETES / "secret.example.yaml"
# Native to 1.30: autoscaling/v2, policy/v1, the restricted Pod Security Standard; the newest
# schemas kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
FAKE_KEYS = {"OPENAI_API_KEY": "sk-test-openai", "ANTHROPIC_API_KEY": "sk-ant-test"}


def kustomization() -> dict:
    return yaml.safe_load(KUSTOMIZATION.read_text())


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def resources() -> list[dict]:
    return [doc for name in kustomization()["resources"] for doc in documents(KUBERNETES / name)]


def one(kind: str, name: str | None = None) -> dict:
    found = [doc for doc in resources() if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)]
    assert len(found) == 1, (kind, name, [doc["metadata"]["name"] for doc in found])
    return found[0]


def deployment(component: str) -> dict:
    found = [doc for doc in resources() if doc["kind"] == "Deployment"
             and doc["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == component]
    assert len(found) == 1, component
    return found[0]


def pod(component: str) -> dict:
    return deployment(component)["spec"]["template"]["spec"]


def containers(component: str) -> dict[str, dict]:
    return {c["name"]: c for c in pod(component)["containers"]}


def all_containers() -> Iterator[tuple[str, dict, dict]]:
    for doc in resources():
        if doc["kind"] == "Deployment":
            spec = doc["spec"]["template"]["spec"]
            for container in spec.get("initContainers", []) + spec["containers"]:
                yield doc["metadata"]["name"], spec, container


def flag(args: list[str], name: str) -> str:
    values = [args[i + 1] for i, word in enumerate(args) if word == name]
    assert len(values) == 1, (name, args)
    return values[0]


def hapax_config() -> dict:
    return yaml.safe_load(one("ConfigMap", "hapax-config")["data"]["hapax.yaml"])


def secret_templates() -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in documents(SECRET_TEMPLATE)}


# --------------------------------------------------------------------------- the files


def test_every_file_the_kustomization_lists_exists():
    for name in kustomization()["resources"]:
        assert (KUBERNETES / name).is_file(), name


def test_every_manifest_in_the_directory_is_listed_or_is_the_secret_template():
    listed = set(kustomization()["resources"]) | {KUSTOMIZATION.name}

    assert {p.name for p in KUBERNETES.glob("*.yaml")} - listed == {SECRET_TEMPLATE.name}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_is_valid_for_the_kubernetes_api(version):
    docs = resources() + documents(SECRET_TEMPLATE)
    problems = {}
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            problems[f"{doc['kind']}/{doc['metadata']['name']}"] = f"{list(err.path)}: {err.message}"

    assert len(docs) >= 9
    assert not problems


def test_the_schema_check_catches_a_misplaced_field():
    broken = deployment("gateway")
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/health"

    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


def test_the_kustomization_sets_the_namespace_the_namespace_manifest_creates():
    assert kustomization()["namespace"] == one("Namespace")["metadata"]["name"]
    assert one("Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


# --------------------------------------------------------------------------- keys and config


def test_every_config_map_and_secret_key_a_container_references_exists():
    config_maps = {doc["metadata"]["name"]: set(doc["data"]) for doc in resources() if doc["kind"] == "ConfigMap"}
    secrets = {name: set(doc["stringData"]) for name, doc in secret_templates().items()}
    referenced = 0
    for name, spec, container in all_containers():
        for env in container.get("env", []):
            source = env.get("valueFrom", {})
            for kind, known in (("secretKeyRef", secrets), ("configMapKeyRef", config_maps)):
                if kind in source:
                    ref = source[kind]
                    assert ref["key"] in known.get(ref["name"], set()), (name, container["name"], ref)
                    assert not ref.get("optional", False)
                    referenced += 1
        assert not container.get("envFrom"), "each key by name, so that this test sees it"
        for volume in spec.get("volumes", []):
            for kind, known, field in (("secret", secrets, "secretName"), ("configMap", config_maps, "name")):
                if kind in volume:
                    source = volume[kind]
                    assert source[field] in known, (name, volume)
                    for item in source.get("items", []):
                        assert item["key"] in known[source[field]], (name, volume["name"], item)
                    referenced += 1

    assert referenced >= 6


def test_the_secret_template_holds_no_value_and_is_never_applied_by_the_kustomization():
    for doc in secret_templates().values():
        assert doc["kind"] == "Secret"
        assert "data" not in doc
        assert set(doc["stringData"].values()) == {""}
    assert SECRET_TEMPLATE.name not in kustomization()["resources"]
    assert not [doc for doc in resources() if doc["kind"] == "Secret"]


def test_no_manifest_holds_a_key():
    text = "\n".join(p.read_text() for p in KUBERNETES.glob("*.yaml"))

    assert not re.search(r"sk-[A-Za-z0-9]{8,}|BEGIN [A-Z ]*PRIVATE KEY", text)


def test_the_config_map_config_loads_with_the_tls_files_the_control_plane_mounts(tmp_path):
    plane = containers("control-plane")["control-plane"]
    tls_mount = next(m for m in plane["volumeMounts"] if m["name"] == "xds-tls")["mountPath"]
    service = one("Service", "hapax-control-plane")
    dialled = flag(containers("gateway")["envoy"]["args"], "--xds").rsplit(":", 1)[0]
    subprocess.run(["sh", str(FLEET_CERTS), str(tmp_path / "tls"), dialled], check=True, capture_output=True,
                   timeout=120)
    config_file = tmp_path / "hapax.yaml"
    config_file.write_text(one("ConfigMap", "hapax-config")["data"]["hapax.yaml"]
                           .replace(f"{tls_mount}/", f"{tmp_path / 'tls'}/"))

    config = load_config(config_file, env=FAKE_KEYS)

    assert config.control_plane.tls is not None
    assert dialled == f"{service['metadata']['name']}.{kustomization()['namespace']}.svc.cluster.local"
    assert f"fleet-certs.sh ./xds-tls {dialled}" in SECRET_TEMPLATE.read_text()
    assert config.warnings == ()


def test_the_config_map_is_mounted_as_a_directory_so_that_its_updates_arrive():
    plane = containers("control-plane")["control-plane"]
    config_volume = next(v["name"] for v in pod("control-plane")["volumes"] if "configMap" in v)
    mount = next(m for m in plane["volumeMounts"] if m["name"] == config_volume)

    assert "subPath" not in mount and "subPathExpr" not in mount  # a subPath mount is never updated
    assert flag(plane["args"], "--config") == f"{mount['mountPath']}/hapax.yaml"


# --------------------------------------------------------------------------- the topology


def test_the_control_plane_is_one_replica_replaced_not_rolled():
    plane = deployment("control-plane")

    assert plane["spec"]["replicas"] == 1
    assert plane["spec"]["strategy"] == {"type": "Recreate"}
    scaled = [doc["spec"]["scaleTargetRef"]["name"] for doc in resources() if doc["kind"] == "HorizontalPodAutoscaler"]
    assert plane["metadata"]["name"] not in scaled


def test_each_gateway_pod_has_its_ext_proc_at_the_addresses_the_control_plane_hands_out():
    plane = containers("control-plane")["control-plane"]["args"]
    gateway = containers("gateway")
    envoy, ext_proc = gateway["envoy"], gateway["ext-proc"]

    assert flag(ext_proc["args"], "--listen") == flag(plane, "--ext-proc-grpc")
    assert flag(ext_proc["args"], "--health-listen") == flag(plane, "--ext-proc-http")
    assert flag(ext_proc["args"], "--verdict-listen") == flag(plane, "--ext-proc-verdicts")
    assert flag(plane, "--ext-proc-verdicts").startswith("127.0.0.1:")  # the pod's own loopback
    socket_dirs = {Path(flag(ext_proc["args"], f).removeprefix("unix:")).parent
                   for f in ("--listen", "--health-listen")}
    run = {m["mountPath"]: m["name"] for m in envoy["volumeMounts"]}
    assert socket_dirs == {Path("/run/hapax")}
    assert {"mountPath": "/run/hapax", "name": run["/run/hapax"]} in ext_proc["volumeMounts"]
    assert "emptyDir" in next(v for v in pod("gateway")["volumes"] if v["name"] == run["/run/hapax"])


def test_envoy_and_ext_proc_dial_the_control_plane_service_over_mutual_tls():
    service = one("Service", "hapax-control-plane")
    port = service["spec"]["ports"][0]
    plane = containers("control-plane")["control-plane"]
    address = f"{service['metadata']['name']}.{kustomization()['namespace']}.svc.cluster.local:{port['port']}"

    assert flag(plane["args"], "--listen").endswith(f":{port['port']}")
    assert port["targetPort"] in {p["name"] for p in plane["ports"]}
    for name in ("envoy", "ext-proc"):
        args = containers("gateway")[name]["args"]
        assert flag(args, "--xds") == address
        tls_mount = next(m for m in containers("gateway")[name]["volumeMounts"] if m["name"] == "xds-tls")["mountPath"]
        assert [flag(args, f) for f in ("--xds-tls-cert", "--xds-tls-key", "--xds-tls-ca")] == [
            f"{tls_mount}/member.pem", f"{tls_mount}/member.key", f"{tls_mount}/ca.pem"]


def test_each_envoy_is_a_node_of_its_own_named_after_its_pod():
    envoy = containers("gateway")["envoy"]
    env = {e["name"]: e for e in envoy["env"]}
    variable = re.fullmatch(r"\$\((\w+)\)", flag(envoy["args"], "--node-id")).group(1)

    assert env[variable]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_the_role_commands_use_only_the_flags_each_role_takes():
    from control_plane.server import main as control_plane_main
    from ext_proc.server import main as ext_proc_main
    from tests.unit.test_deploy_assets import ENVOY_ROLE_FLAGS

    accepted = {"control-plane": help_flags(control_plane_main), "ext-proc": help_flags(ext_proc_main),
                "envoy": ENVOY_ROLE_FLAGS}
    for name, _, container in all_containers():
        role, *args = container["args"]
        assert {word for word in args if word.startswith("--")} <= accepted[role], (name, container["name"])


def test_the_services_select_the_pods_and_reach_named_ports():
    for service in (doc for doc in resources() if doc["kind"] == "Service"):
        selected = [doc for doc in resources() if doc["kind"] == "Deployment" and
                    service["spec"]["selector"].items() <= doc["spec"]["template"]["metadata"]["labels"].items()]
        assert len(selected) == 1, service["metadata"]["name"]
        ports = {p["name"]: p["containerPort"] for c in selected[0]["spec"]["template"]["spec"]["containers"]
                 for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports


def test_the_gateway_service_exposes_the_api_port_and_not_the_metrics_port():
    server = hapax_config()["server"]
    ports = {p["name"]: p["containerPort"] for p in containers("gateway")["envoy"]["ports"]}
    service_ports = one("Service", "hapax")["spec"]["ports"]

    assert ports == {"http": server["port"], "metrics": server["metrics_port"]}
    assert [p["targetPort"] for p in service_ports] == ["http"]


def test_prometheus_annotations_point_at_the_metrics_port():
    annotations = deployment("gateway")["spec"]["template"]["metadata"]["annotations"]

    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == hapax_config()["server"]["metrics_port"]
    assert annotations["prometheus.io/path"] == "/metrics"


# --------------------------------------------------------------------------- probes


def test_readiness_is_get_health_on_the_api_port():
    envoy = containers("gateway")["envoy"]

    assert envoy["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}


def probe_command(container: dict, probe: str) -> list[str]:
    return container[probe]["exec"]["command"]


def test_liveness_never_depends_on_the_control_plane():
    gateway = containers("gateway")
    admin = flag(gateway["envoy"]["args"], "--admin")
    health = flag(gateway["ext-proc"]["args"], "--health-listen")
    envoy_live, ext_proc_live = probe_command(gateway["envoy"], "livenessProbe"), probe_command(
        gateway["ext-proc"], "livenessProbe")

    # Envoy: its admin's /ready. ext_proc: an answer on its socket, any status (its /health is 503
    # while the control plane is away).
    assert f"local_http.get('{admin}', '/ready'" in envoy_live[-1]
    assert f"local_http.request('{health}', '/health'" in ext_proc_live[-1]
    for container in gateway.values():
        assert container["startupProbe"] == {**container["livenessProbe"], "periodSeconds": 2, "failureThreshold": 60}
    assert containers("control-plane")["control-plane"]["livenessProbe"]["tcpSocket"] == {"port": "xds"}


class _Answer(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(self.status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass

    def address_string(self) -> str:
        return "unix"


@pytest.fixture
def unix_server(tmp_path):
    """An HTTP server on a Unix socket that answers every GET with ``status``."""
    started = []

    def serve(status: int) -> Path:
        path = tmp_path / f"answer-{status}.sock"
        handler = type("Answer", (_Answer,), {"status": status})
        server = socketserver.ThreadingUnixStreamServer(str(path), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        started.append(server)
        return path

    yield serve
    for server in started:
        server.shutdown()
        server.server_close()


def run_probe(command: list[str], socket_path: str, replacement: Path) -> int:
    program, *args = command
    assert program == "python"
    code = args[-1].replace(socket_path, str(replacement))
    return subprocess.run([sys.executable, *args[:-1], code], capture_output=True, timeout=30,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}).returncode


def test_envoy_s_liveness_probe_passes_on_200_and_fails_on_503_or_silence(unix_server, tmp_path):
    envoy = containers("gateway")["envoy"]
    admin = flag(envoy["args"], "--admin").removeprefix("unix:")
    command = probe_command(envoy, "livenessProbe")

    assert run_probe(command, admin, unix_server(200)) == 0
    assert run_probe(command, admin, unix_server(503)) != 0
    assert run_probe(command, admin, tmp_path / "nothing.sock") != 0


def test_ext_proc_s_liveness_probe_passes_on_any_answer_and_fails_on_silence(unix_server, tmp_path):
    ext_proc = containers("gateway")["ext-proc"]
    health = flag(ext_proc["args"], "--health-listen").removeprefix("unix:")
    command = probe_command(ext_proc, "livenessProbe")

    assert run_probe(command, health, unix_server(200)) == 0
    assert run_probe(command, health, unix_server(503)) == 0
    assert run_probe(command, health, tmp_path / "nothing.sock") != 0


# --------------------------------------------------------------------------- security and sizing


def test_every_pod_runs_restricted_as_the_image_s_user():
    uid, gid = (int(part) for part in final_user().split(":"))
    for name, spec, container in all_containers():
        pod_security = spec["securityContext"]
        security = container["securityContext"]

        assert pod_security["runAsNonRoot"] is True and pod_security["runAsUser"] == uid, name
        assert pod_security["runAsGroup"] == gid and pod_security["fsGroup"] == gid
        assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}
        assert security == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}}, (name, container["name"])
        assert spec["automountServiceAccountToken"] is False


def test_the_only_writable_paths_are_empty_dirs():
    for name, spec, container in all_containers():
        volumes = {v["name"]: v for v in spec["volumes"]}
        writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
        for mount in container["volumeMounts"]:
            if not mount.get("readOnly"):
                assert "emptyDir" in volumes[mount["name"]], (name, mount)
        assert "/tmp" in writable, (name, container["name"])  # TMPDIR


def test_every_container_requests_cpu_and_memory_and_has_a_memory_limit():
    for name, _, container in all_containers():
        resources_ = container["resources"]

        assert {"cpu", "memory"} <= set(resources_["requests"]), (name, container["name"])
        assert "memory" in resources_["limits"]
        assert "cpu" not in resources_["limits"]  # throttling is latency


def test_the_autoscaler_scales_the_gateway_on_cpu_and_the_budget_keeps_one_serving():
    hpa = one("HorizontalPodAutoscaler")
    pdb = one("PodDisruptionBudget")
    gateway = deployment("gateway")

    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": gateway["metadata"]["name"]}
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert hpa["spec"]["minReplicas"] >= 2
    assert pdb["spec"]["selector"]["matchLabels"] == gateway["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]
