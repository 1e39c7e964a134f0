"""ext_proc failing under a request in flight: the client gets error JSON, never a bare 500.

Before: a worker that died while a request's stream was open made Envoy's ext_proc filter
answer an empty 500 (``ext_proc_error_gRPC_error_14``, not an overflow). Now every ext_proc
failure is a 503 in OpenAI error JSON with retry-after (control_plane/resources/listeners.py:
_overload_mappers), and any other empty 500 of Envoy's own gets JSON too.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import threading
from urllib.parse import urlsplit

import pytest

from hapax.fakes import FakeAnthropic, Latency
from tests.conftest import gateway_config, wait_for

MODEL = "claude-3-5-haiku-latest"


@pytest.fixture(scope="module")
def fake(fake_host):
    with fake_host.serving(FakeAnthropic(api_key="k", model=MODEL)) as (anthropic,):
        yield anthropic


@pytest.fixture(scope="module")
def gateway(fake, start_gateway):
    config = gateway_config({"anthropic": {"type": "anthropic", "model": MODEL, "api_key": "k",
                                           "base_url": fake.base_url}})
    config["ext_proc"] = {"workers": 1}
    return start_gateway(config)


def chat(gateway, answers: list) -> None:
    url = urlsplit(gateway.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        conn.request("POST", "/v1/chat/completions", json.dumps(
            {"model": "auto", "messages": [{"role": "user", "content": "hold on"}]}),
            {"content-type": "application/json"})
        resp = conn.getresponse()
        answers.append((resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()))
    finally:
        conn.close()


def ext_proc_pids(gateway) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(gateway.proc.pid), "-f", "--", "-m ext_proc "],
                         capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_a_worker_killed_under_a_request_answers_503_json_with_retry_after(gateway, fake):
    fake.requests.clear()
    fake.inject(Latency(3.0), method="POST")
    answers: list = []
    client = threading.Thread(target=chat, args=(gateway, answers))
    client.start()
    # The request is at the provider: its upstream step's stream to the worker is open.
    wait_for(lambda: any(r.method == "POST" for r in fake.requests), "the request to reach the provider")
    [worker] = ext_proc_pids(gateway)
    os.kill(worker, signal.SIGKILL)
    client.join(timeout=30)

    [(status, headers, body)] = answers
    assert status == 503, body
    assert headers["content-type"] == "application/json"
    assert headers["retry-after"] == "1"
    error = json.loads(body)["error"]
    assert error["code"] == "gateway_error" and error["type"] == "server_error"
    # The worker is restarted and the next request is served.
    wait_for(lambda: len(ext_proc_pids(gateway)) == 1 and ext_proc_pids(gateway) != [worker], "a new worker")
    retry: list = []
    wait_for(lambda: (retry.clear(), chat(gateway, retry), retry[0][0] == 200)[-1], "a request served again")
