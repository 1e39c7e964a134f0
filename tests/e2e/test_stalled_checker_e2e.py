"""A health checker in trouble is "unknown", not "every provider is down".

Envoy polls the first ext_proc worker for each provider's verdict. A poll that
gets no answer (the worker paused) counts towards unhealthy_threshold; only a
503 from the worker takes a provider out at once. So a worker stopped for 2 s
costs the passthrough lane, which never needs Python, not one request.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import openai

from hapax.fakes import FakeOpenAI
from tests.conftest import gateway_config
from tests.e2e.test_failover_e2e import envoy_health_flags

MODEL = "gpt-4o-mini"


def probing_worker(gateway) -> int:
    """The ext_proc worker Envoy polls: the one started without --no-probe."""
    for pid in gateway.child_pids():
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"ext_proc" in argv and b"--no-probe" not in argv:
            return pid
    raise AssertionError("no probing ext_proc worker")


def test_a_stalled_checker_leaves_the_passthrough_lane_serving(fake_host, start_gateway):
    fake = fake_host.start(FakeOpenAI(api_key="k", model=MODEL))
    try:
        gateway = start_gateway(gateway_config(
            {"openai": {"type": "openai", "model": MODEL, "api_key": "k", "base_url": fake.base_url}}))
        client = openai.OpenAI(base_url=gateway.base_url, api_key="c", max_retries=0, timeout=10)
        worker = probing_worker(gateway)
        answered, failed = 0, []
        os.kill(worker, signal.SIGSTOP)
        try:
            stop_at = time.monotonic() + 2.0
            while time.monotonic() < stop_at:
                try:
                    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
                    answered += 1
                except openai.APIStatusError as err:
                    failed.append(err.status_code)
                time.sleep(0.02)
            flags_while_stopped = envoy_health_flags(gateway, "openai")
        finally:
            os.kill(worker, signal.SIGCONT)
        assert failed == [] and answered > 10
        assert flags_while_stopped == "healthy"
    finally:
        fake_host.run(fake.stop())
