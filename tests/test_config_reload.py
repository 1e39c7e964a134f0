"""The control plane follows the file: valid edits take effect, invalid ones change nothing."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

import pytest
import yaml

from hapax.fakes import FakeOpenAI
from tests.conftest import gateway_config, wait_for


def post(url: str, body: dict) -> int:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def health(gateway) -> dict:
    with urllib.request.urlopen(gateway.url + "/health", timeout=10) as resp:
        return json.load(resp)


def save_by_rename(path, text: str) -> None:
    tmp = path.with_suffix(".swp")
    tmp.write_text(text)
    os.replace(tmp, path)  # how vim and most editors save


@pytest.fixture(scope="module")
def fake(fake_host):
    fake = fake_host.start(FakeOpenAI(api_key="k", model="gpt-4o-mini"))
    yield fake
    fake_host.run(fake.stop())


def test_valid_edit_is_served_and_invalid_edit_keeps_the_last_good_version(fake, start_gateway):
    config = gateway_config({"openai": {"type": "openai", "model": "gpt-4o-mini", "api_key": "k",
                                        "base_url": fake.base_url}},
                            routes=[{"path": "/v1/chat/completions", "handler": "chat"}])
    gateway = start_gateway(config)
    chat = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
    assert post(gateway.url + "/v1/sales/chat", chat) == 404
    first_version = health(gateway)["components"]["control_plane"]["config_version"]

    config["routes"].append({"path": "/v1/sales/chat", "handler": "chat", "metrics_labels": {"department": "sales"}})
    save_by_rename(gateway.config_path, yaml.safe_dump(config))
    wait_for(lambda: post(gateway.url + "/v1/sales/chat", chat) == 200, "the new route")
    second_version = health(gateway)["components"]["control_plane"]["config_version"]
    assert second_version != first_version

    broken = dict(config, providers={"openai": {"type": "opnai", "model": "gpt-4o-mini"}})
    save_by_rename(gateway.config_path, yaml.safe_dump(broken))
    wait_for(lambda: any("config rejected" in line for line in gateway.stderr), "the rejection to be logged")
    rejection = next(line for line in gateway.stderr if "config rejected" in line)
    assert "providers.openai.type: unknown provider type 'opnai'" in rejection
    assert post(gateway.url + "/v1/sales/chat", chat) == 200
    assert post(gateway.url + "/v1/chat/completions", chat) == 200
    assert health(gateway)["components"]["control_plane"]["config_version"] == second_version
