"""A reload never cuts a request in flight: what it started on drains."""

from __future__ import annotations

import openai

from hapax.fakes import FakeOpenAI
from tests.conftest import gateway_config, save_config, wait_for


def test_a_stream_on_a_provider_removed_mid_answer_completes(fake_host, start_gateway):
    leaving = fake_host.start(FakeOpenAI(api_key="k1", model="leaving"))
    staying = fake_host.start(FakeOpenAI(api_key="k2", model="staying"))
    leaving.chunk_delay = 0.3  # a stream of ~4 s: the reload lands in its middle
    try:
        both = gateway_config(
            {"leaving": {"type": "openai", "model": "leaving", "api_key": "k1", "base_url": leaving.base_url},
             "staying": {"type": "openai", "model": "staying", "api_key": "k2", "base_url": staying.base_url}},
            preference=["leaving", "staying"])
        gateway = start_gateway(both)
        client = openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0, timeout=30)
        stream = client.chat.completions.create(
            model="auto", stream=True,
            messages=[{"role": "user", "content": "a long answer with many words to stream slowly"}])
        chunks = [next(stream)]
        only_staying = {**both, "providers": {"staying": both["providers"]["staying"]},
                        "provider_preference": ["staying"]}
        save_config(gateway.config_path, only_staying)
        wait_for(lambda: [m.id for m in client.models.list().data] == ["staying"], "the new version")
        chunks += list(stream)  # the rest arrives although "leaving" is gone from the config
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "Hello from fake-openai! You said: a long answer with many words to stream slowly"
        assert chunks[-1].choices[0].finish_reason == "stop"
        reply = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "who?"}])
        assert reply.model == "staying"
        assert len([r for r in leaving.requests if r.method == "POST"]) == 1
    finally:
        fake_host.run(leaving.stop())
        fake_host.run(staying.stop())
