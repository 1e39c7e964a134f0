"""A real Prometheus scrapes the gateway and answers PromQL by department.

Prometheus is Debian's package (``./dev test`` installs it when it can); it
scrapes Hapax's /metrics and Envoy's /stats/prometheus every second, and its
HTTP API must report per-department counts equal to the traffic sent.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from urllib.parse import urlsplit

import openai
import pytest
import yaml

from hapax.fakes import FakeOpenAI
from tests.conftest import free_port, gateway_config, wait_for

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None,
    reason="Debian's prometheus package is not installed (./dev test installs it when run as root with apt-get)")



@pytest.fixture(scope="module")
def gateway(fake_host, start_gateway):
    fake = fake_host.start(FakeOpenAI(api_key="k", model="gpt-4o-mini"))
    config = gateway_config({"openai": {"type": "openai", "model": "gpt-4o-mini", "api_key": "k",
                                        "base_url": fake.base_url}})
    config["routes"] = [
        {"path": "/v1/marketing/completions", "handler": "completion", "metrics_labels": {"department": "marketing"}},
        {"path": "/v1/engineering/chat/completions", "handler": "chat",
         "metrics_labels": {"department": "engineering"}},
    ]
    yield start_gateway(config)
    fake_host.run(fake.stop())


@pytest.fixture(scope="module")
def prometheus(gateway, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prometheus")
    metrics = urlsplit(gateway.metrics_url)
    (tmp / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [
            {"job_name": "hapax", "metrics_path": metrics.path, "static_configs": [{"targets": [metrics.netloc]}]},
            # Envoy's own stats, through the metrics port's read-only route to its admin.
            {"job_name": "envoy", "metrics_path": "/stats/prometheus",
             "static_configs": [{"targets": [metrics.netloc]}]},
        ],
    }))
    port = free_port()
    proc = subprocess.Popen(
        [PROMETHEUS, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _ready(url), "Prometheus to start")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/-/ready", timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False


def promql(url: str, query: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': query})}",
                                timeout=5) as resp:
        body = json.load(resp)
    assert body["status"] == "success", body
    return {r["metric"].get("department", ""): float(r["value"][1]) for r in body["data"]["result"]}


def test_promql_counts_requests_per_department_as_sent(gateway, prometheus):
    for i in range(3):
        openai.OpenAI(base_url=gateway.url + "/v1/marketing", api_key="x", max_retries=0).completions.create(
            model="auto", prompt=f"slogan {i}")
    for i in range(2):
        openai.OpenAI(base_url=gateway.url + "/v1/engineering", api_key="x", max_retries=0).chat.completions.create(
            model="auto", messages=[{"role": "user", "content": f"review {i}"}])
    expected = {"marketing": 3.0, "engineering": 2.0}
    hapax = 'sum by (department) (hapax_requests_total{outcome="success"})'
    # The standard routes served beside the departments have route stats too, with no department.
    envoy = 'sum by (department) (envoy_vhost_route_upstream_rq_total{department!=""})'
    wait_for(lambda: promql(prometheus, hapax) == expected, "Prometheus to scrape Hapax's counts", timeout=60)
    wait_for(lambda: promql(prometheus, envoy) == expected, "Prometheus to scrape Envoy's counts", timeout=60)
    tokens = promql(prometheus, 'sum by (department) (gen_ai_client_token_usage_sum{gen_ai_token_type="output"})')
    assert set(tokens) == {"marketing", "engineering"} and all(v > 0 for v in tokens.values())
