"""docker-compose.yml, the Prometheus config and the Grafana dashboard agree with
each other and with what the gateway exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from control_plane.config import load_config, parse_config

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
EXAMPLE_CONFIG = REPO / "hapax.example.yaml"
PROMETHEUS = REPO / "observability" / "prometheus.yml"
GRAFANA = REPO / "observability" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "hapax.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yaml"
DASHBOARD_PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "hapax.yaml"

FAKE_KEYS = {"OPENAI_API_KEY": "sk-test-openai", "ANTHROPIC_API_KEY": "sk-ant-test"}

_HISTOGRAMS = (
    "gen_ai_server_request_duration_seconds",
    "gen_ai_server_time_to_first_token_seconds",
    "gen_ai_server_time_per_output_token_seconds",
    "gen_ai_client_token_usage",
    "hapax_gateway_overhead_seconds",
    "envoy_vhost_route_upstream_rq_time",
)
EXPORTED_METRICS = frozenset({
    # ext_proc, on server.metrics_port /metrics
    "hapax_requests_total",
    "hapax_cost_usd_total",
    "hapax_failovers_total",
    "hapax_retries_total",
    "hapax_inflight_requests",
    "hapax_provider_healthy",
    "hapax_provider_health_checks_total",
    "hapax_streams_total",
    "hapax_config_version_info",
    "hapax_config_reloads_total",
    # Envoy, on the admin port /stats/prometheus
    "envoy_vhost_route_upstream_rq_xx",
    "envoy_vhost_route_upstream_rq_total",
    "envoy_vhost_route_upstream_rq_retry",
    "envoy_cluster_upstream_rq_xx",
    *(f"{name}_{suffix}" for name in _HISTOGRAMS for suffix in ("bucket", "sum", "count")),
})

# Exported once their feature is configured (limits, the queue, the ledger), as the end-to-end
# tests of each show (tests/e2e/test_limits_e2e.py, test_queue_e2e.py, test_ledger_e2e.py).
FEATURE_METRICS = frozenset({
    "hapax_admissions_total",
    "hapax_budget_remaining_usd",
    "hapax_queue_waiting",
    "hapax_queue_wait_seconds_bucket",
    "hapax_ledger_records_total",
    "hapax_provider_region_info",  # with regions: (tests/e2e/test_regions_e2e.py)
})

# What an operator opens the dashboard for: each must be on it.
HEADLINE_METRICS = frozenset({
    "hapax_requests_total",
    "gen_ai_server_request_duration_seconds_bucket",
    "gen_ai_server_time_to_first_token_seconds_bucket",
    "gen_ai_client_token_usage_sum",
    "hapax_cost_usd_total",
    "hapax_provider_healthy",
    "hapax_failovers_total",
    "hapax_retries_total",
    "hapax_inflight_requests",
    "hapax_gateway_overhead_seconds_bucket",
    "hapax_streams_total",
    "envoy_vhost_route_upstream_rq_xx",
    "envoy_vhost_route_upstream_rq_retry",
    "hapax_config_version_info",
    "hapax_config_reloads_total",
})


# --------------------------------------------------------------------------- helpers


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def all_panels(panels: list[dict]) -> Iterator[dict]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def targets() -> Iterator[tuple[dict, dict]]:
    for panel in all_panels(dashboard()["panels"]):
        for target in panel.get("targets", []):
            yield panel, target


def exprs() -> list[str]:
    return [target["expr"] for _, target in targets()]


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS_AND_RANGES = re.compile(r"\{[^{}]*\}|\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENTIFIER = re.compile(r"(?<![\w$:.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()")
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "group_left", "group_right", "inf", "nan"})


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, labels and keywords left out)."""
    bare = _GROUPING.sub(" ", _MATCHERS_AND_RANGES.sub(" ", _STRING.sub('""', expr)))
    return {name for name in _IDENTIFIER.findall(bare) if name.lower() not in _KEYWORDS}


_VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))|\[\[(\w+)\]\]")


def variables_used(text: str) -> set[str]:
    return {next(group for group in match if group) for match in _VARIABLE.findall(text)}


def variable_query(variable: dict) -> str:
    query = variable["query"]
    return query if isinstance(query, str) else query["query"]


def compose() -> dict:
    return load_yaml(COMPOSE)


def published_container_ports(service: dict) -> set[int]:
    return {int(str(mapping).rsplit(":", 1)[-1].split("/")[0]) for mapping in service.get("ports", [])}


def bind_mounts(service: dict) -> dict[str, str]:
    """Host path -> container path of a service's bind mounts (named volumes left out)."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts[source] = target
    return mounts


def prometheus_listen_port() -> int:
    command = compose()["services"]["prometheus"]["command"]
    flags = [arg.split("=", 1)[1] for arg in command if arg.startswith("--web.listen-address=")]
    assert len(flags) == 1, command
    return int(flags[0].rsplit(":", 1)[1])


def example_config():
    return load_config(EXAMPLE_CONFIG, env=FAKE_KEYS)


def scrape_jobs() -> dict[str, dict]:
    return {job["job_name"]: job for job in load_yaml(PROMETHEUS)["scrape_configs"]}


@pytest.fixture
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    return path


# --------------------------------------------------------------------------- the dashboard


def test_metric_name_extraction_finds_selected_series_only():
    expr = ('histogram_quantile(0.99, sum by (department, le) (rate(a_bucket{x=~"$y", z!="q{w}"}[5m])))'
            ' / on (le) group_left b + max without (p) (c offset 5m) > bool 0')

    assert metric_names(expr) == {"a_bucket", "b", "c"}


def test_dashboard_is_json_with_schema_version_39():
    board = dashboard()

    assert board["schemaVersion"] == 39
    assert board["uid"] == "hapax"
    assert list(all_panels(board["panels"]))


def test_panel_ids_are_unique():
    ids = [panel["id"] for panel in all_panels(dashboard()["panels"])]

    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


def test_every_query_uses_only_metric_names_the_gateway_exports():
    unknown = {expr: metric_names(expr) - EXPORTED_METRICS - FEATURE_METRICS for expr in exprs()}

    assert all(expr.strip() for expr in exprs())
    assert not {expr: names for expr, names in unknown.items() if names}


def test_every_variable_query_uses_an_exported_metric():
    for variable in dashboard()["templating"]["list"]:
        metric = re.fullmatch(r"label_values\((\w+),\s*\w+\)", variable_query(variable))

        assert metric, variable_query(variable)
        assert metric.group(1) in EXPORTED_METRICS


def test_dashboard_shows_every_headline_series():
    used = set().union(*map(metric_names, exprs()))

    assert HEADLINE_METRICS - used == set()


def test_every_variable_a_query_uses_is_defined():
    defined = {variable["name"] for variable in dashboard()["templating"]["list"]}
    used = set().union(*map(variables_used, exprs()))

    assert {"department", "provider"} <= defined
    assert {name for name in used if not name.startswith("__")} - defined == set()


def test_every_defined_variable_filters_some_query():
    used = set().union(*map(variables_used, exprs()))

    for variable in dashboard()["templating"]["list"]:
        assert variable["name"] in used


def test_every_panel_queries_the_provisioned_datasource():
    uid = load_yaml(DATASOURCES)["datasources"][0]["uid"]
    board = dashboard()
    refs = [panel["datasource"] for panel in all_panels(board["panels"]) if "targets" in panel]
    refs += [target["datasource"] for _, target in targets()]
    refs += [variable["datasource"] for variable in board["templating"]["list"]]

    assert refs
    assert all(ref == {"type": "prometheus", "uid": uid} for ref in refs), refs


def test_promtool_parses_every_dashboard_query(promtool, tmp_path):
    substitutions = {"$__rate_interval": "1m", "$__range": "1h", "$__interval": "1m"}
    rules = []
    for panel, target in targets():
        expr = target["expr"]
        for variable, value in substitutions.items():
            expr = expr.replace(variable, value)
        expr = _VARIABLE.sub(".*", expr)
        rules.append({"record": f"dashboard:panel_{panel['id']}_{target['refId']}", "expr": expr})
    rules_file = tmp_path / "dashboard_rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))

    result = subprocess.run([promtool, "check", "rules", str(rules_file)],
                            check=False, capture_output=True, text=True)

    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- Prometheus


def test_prometheus_scrapes_hapax_metrics_and_envoy_stats_from_the_metrics_port_every_5s():
    config = example_config()
    jobs = scrape_jobs()
    target = f"hapax:{config.server.metrics_port}"  # the compose service, by name

    assert load_yaml(PROMETHEUS)["global"]["scrape_interval"] == "5s"
    assert jobs["hapax"]["metrics_path"] == "/metrics"
    assert jobs["hapax"]["static_configs"][0]["targets"] == [target]
    assert jobs["envoy"]["metrics_path"] == "/stats/prometheus"
    # Envoy's admin is on a Unix socket; its stats reach Prometheus through the metrics port.
    assert jobs["envoy"]["static_configs"][0]["targets"] == [target]


def test_promtool_accepts_the_prometheus_config(promtool):
    result = subprocess.run([promtool, "check", "config", str(PROMETHEUS)],
                            check=False, capture_output=True, text=True)

    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- docker-compose.yml


def test_compose_defines_hapax_prometheus_and_grafana():
    services = compose()["services"]
    always = {name for name, service in services.items() if "profiles" not in service}

    assert always == {"hapax", "prometheus", "grafana"}
    assert services["hapax"]["build"] == "."
    assert services["prometheus"]["image"].startswith("prom/prometheus:")
    assert services["grafana"]["image"].startswith("grafana/grafana:")


def test_every_host_path_compose_mounts_exists_in_the_repo():
    document = compose()
    named = set(document.get("volumes") or {})
    for name, service in document["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (REPO / source).resolve().exists(), f"{name}: {source}"
            else:
                assert source in named, f"{name}: undeclared volume {source}"


def test_hapax_reads_the_mounted_example_config_where_the_image_looks_for_one():
    dockerfile = DOCKERFILE.read_text(encoding="utf-8")
    config_path = re.search(r"HAPAX_CONFIG=(\S+)", dockerfile).group(1)

    assert bind_mounts(compose()["services"]["hapax"]) == {"./hapax.example.yaml": config_path}


def test_prometheus_has_a_network_of_its_own_shared_with_the_gateway_it_scrapes():
    services = compose()["services"]
    target_host = scrape_jobs()["hapax"]["static_configs"][0]["targets"][0].rsplit(":", 1)[0]

    assert "network_mode" not in services["prometheus"]
    assert services["prometheus"]["networks"] == ["monitoring"]
    assert "monitoring" in services[target_host]["networks"]
    assert prometheus_listen_port() in published_container_ports(services["prometheus"])
    assert prometheus_listen_port() not in published_container_ports(services["hapax"])


def test_hapax_publishes_the_ports_its_config_listens_on():
    server = example_config().server
    published = published_container_ports(compose()["services"]["hapax"])

    assert server.host == "0.0.0.0"
    assert {server.port, server.metrics_port} <= published
    assert server.admin_port is None  # no TCP admin at all


def test_grafana_datasource_reaches_prometheus_where_it_listens():
    datasource = load_yaml(DATASOURCES)["datasources"][0]
    grafana = compose()["services"]["grafana"]

    assert datasource["type"] == "prometheus"
    assert datasource["url"] == f"http://prometheus:{prometheus_listen_port()}"
    assert set(grafana["networks"]) & set(compose()["services"]["prometheus"]["networks"])
    assert 3000 in published_container_ports(grafana)


def test_grafana_provisions_the_dashboard_from_its_mounted_directory():
    grafana = compose()["services"]["grafana"]
    mounts = bind_mounts(grafana)
    provider = load_yaml(DASHBOARD_PROVIDERS)["providers"][0]
    dashboards_dir = mounts[f"./{DASHBOARD.parent.relative_to(REPO)}"]

    assert mounts[f"./{DATASOURCES.parent.parent.relative_to(REPO)}"] == "/etc/grafana/provisioning"
    assert dashboards_dir == provider["options"]["path"]
    assert grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == f"{dashboards_dir}/{DASHBOARD.name}"


# --------------------------------------------------------------------------- the example config


def test_example_config_loads_with_a_route_per_department():
    config = example_config()

    assert list(config.providers) == ["openai", "anthropic"]
    assert config.providers["openai"].api_key == FAKE_KEYS["OPENAI_API_KEY"]
    assert config.providers["anthropic"].api_key == FAKE_KEYS["ANTHROPIC_API_KEY"]
    assert config.provider_preference == ("openai", "anthropic")
    departments = {route.path: (route.handler, dict(route.metrics_labels)) for route in config.routes}
    assert departments["/v1/marketing/completions"] == ("completion", {"department": "marketing"})
    assert departments["/v1/engineering/chat/completions"] == ("chat", {"department": "engineering"})
    assert config.warnings == ()


def test_example_config_loads_without_api_keys():
    config = parse_config(EXAMPLE_CONFIG.read_text(encoding="utf-8"), env={})

    assert config.providers["openai"].api_key == ""
    assert config.warnings


def test_dashboard_variables_are_labels_the_example_routes_set():
    label_keys = {key for route in example_config().routes for key in route.metrics_labels}
    per_route_labels = {"provider"}

    for variable in dashboard()["templating"]["list"]:
        label = re.fullmatch(r"label_values\(\w+,\s*(\w+)\)", variable_query(variable)).group(1)
        assert label in label_keys | per_route_labels


# What a monitoring stack beside Hapax listens on: Prometheus, Pushgateway, Alertmanager (and its
# cluster port), node_exporter, Grafana, Envoy's admin.
MONITORING_STACK_PORTS = {9090, 9091, 9093, 9094, 9100, 3000, 9901}


def test_the_default_metrics_port_is_none_of_the_monitoring_stacks_own():
    from control_plane.config import ServerConfig

    assert ServerConfig().metrics_port not in MONITORING_STACK_PORTS
    assert example_config().server.metrics_port not in MONITORING_STACK_PORTS


def test_prometheus_in_compose_listens_on_its_own_port():
    assert prometheus_listen_port() == 9090
