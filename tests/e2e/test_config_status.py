"""What the control plane did with each edit is visible: /health, metrics, never a push.

A refused edit (our validation, or Envoy's own, which can only fail on a
running Envoy: a port already taken) leaves every consumer on the last good
version; where it is wrong is on the public /health, the reasons on the admin
side (``server.metrics_port``), and the reload counter moves.
"""

from __future__ import annotations

import json
import socket
import urllib.request

import pytest

from hapax.fakes import FakeOpenAI
from tests.conftest import gateway_config, save_config, wait_for


def health(gateway) -> dict:
    with urllib.request.urlopen(gateway.url + "/health", timeout=10) as resp:
        return json.load(resp)["components"]["control_plane"]


def admin_health(gateway) -> dict:
    url = gateway.metrics_url.rsplit("/metrics", 1)[0] + "/health"
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.load(resp)["components"]["control_plane"]



@pytest.fixture()
def setup(fake_host, start_gateway):
    fake = fake_host.start(FakeOpenAI(api_key="k", model="gpt-4o-mini"))
    config = gateway_config({"openai": {"type": "openai", "model": "gpt-4o-mini", "api_key": "k",
                                        "base_url": fake.base_url}})
    yield start_gateway(config), config
    fake_host.run(fake.stop())


def reloads(gateway, result: str) -> float:
    return gateway.metric("hapax_config_reloads_total", result=result)


def test_refused_and_unchanged_edits_are_reported_and_never_pushed(setup):
    gateway, config = setup
    version = health(gateway)["config_version"]

    save_config(gateway.config_path, {**config, "providers": {"openai": {"type": "opnai", "model": "m"}}})
    wait_for(lambda: reloads(gateway, "invalid") == 1, "the refused edit to be counted")
    status = health(gateway)
    assert status["last_refused_edit"] == {"file": str(gateway.config_path), "at": ["providers.openai.type"]}
    assert "last_error" not in status  # the reasons are the admin side's
    detailed = admin_health(gateway)
    assert "providers.openai.type: unknown provider type 'opnai'" in detailed["last_error"]
    assert str(gateway.config_path) in detailed["last_error"]
    assert status["config_version"] == version and status["reloads"]["invalid"] == 1

    save_config(gateway.config_path, config)  # back to what is served: nothing new to push
    wait_for(lambda: reloads(gateway, "unchanged") == 1, "the unchanged save to be counted")
    assert health(gateway)["config_version"] == version

    routes = [{"path": "/v1/chat/completions", "handler": "chat"}, {"path": "/v1/team/chat", "handler": "chat"}]
    save_config(gateway.config_path, {**config, "routes": routes})
    wait_for(lambda: reloads(gateway, "applied") == 1, "the valid edit to be applied")
    # Counted when accepted; its version is the one served once rolled out to Envoy and ext_proc.
    wait_for(lambda: health(gateway)["config_version"] != version, "the new version to be rolled out")
    status = health(gateway)
    assert status["config_version"] != version and "last_refused_edit" not in status
    assert int(status["config_version"].split("-")[0]) > int(version.split("-")[0])  # monotonic


def test_a_version_envoy_rejects_is_reported_and_not_sent_again(setup):
    gateway, config = setup
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # Valid by every check that can run before Envoy binds: only the running Envoy can refuse it.
        save_config(gateway.config_path, {**config, "server": {**config["server"], "metrics_port": port}})
        wait_for(lambda: health(gateway).get("rejected_versions"), "Envoy's NACK to be reported")
        [rejection] = health(gateway)["rejected_versions"]
        assert rejection["type_url"].endswith("Listener") and rejection["node"].startswith("hapax-envoy")
        assert "reason" not in rejection and admin_health(gateway)["rejected_versions"][0]["reason"]
        # The API keeps serving on the last good listeners.
        with urllib.request.urlopen(gateway.url + "/v1/models", timeout=10) as resp:
            assert resp.status == 200
        # Another push (the status, to ext_proc) does not re-send Envoy the version it refused...
        attempts = admin_stat(gateway, "listener_manager.lds.update_attempt")
        save_config(gateway.config_path, {**config, "providers": {"openai": {"type": "opnai", "model": "m"}}})
        wait_for(lambda: reloads(gateway, "invalid") == 1, "the refused edit to be counted")
        assert admin_stat(gateway, "listener_manager.lds.update_attempt") == attempts
    # ...and the next good version reaches it as usual.
    accepted = admin_stat(gateway, "listener_manager.lds.update_success")
    save_config(gateway.config_path, config)
    wait_for(lambda: admin_stat(gateway, "listener_manager.lds.update_success") == accepted + 1,
             "Envoy to take the next version")
    assert admin_stat(gateway, "listener_manager.lds.update_rejected") == 1


def admin_stat(gateway, name: str) -> int:
    line = gateway.admin(f"/stats?filter=^{name}$").strip()
    return int(line.rsplit(":", 1)[1])


PASTED_KEY = "sk-proj-Zx81fQk29LmP0wX7vB3nT6yR4sH5"


def test_a_key_pasted_into_the_wrong_field_is_never_shown(setup):
    gateway, config = setup
    provider = {**config["providers"]["openai"], "base_url": PASTED_KEY, "timeout": PASTED_KEY}
    save_config(gateway.config_path, {**config, "providers": {"openai": provider}})
    wait_for(lambda: reloads(gateway, "invalid") == 1, "the refused edit to be counted")
    status = health(gateway)
    assert status["last_refused_edit"]["at"] == ["providers.openai.base_url", "providers.openai.timeout"]
    detailed = admin_health(gateway)
    assert "providers.openai.timeout" in detailed["last_error"]
    for where in (gateway.url + "/health", gateway.metrics_url.rsplit("/metrics", 1)[0] + "/health"):
        with urllib.request.urlopen(where, timeout=10) as resp:
            assert "Zx81fQk29" not in resp.read().decode()
