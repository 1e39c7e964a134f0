"""What reaches a provider, for real: headers are an allow-list, the query string stays behind.

A client sends what it should not be able to pass on to a provider with the
gateway's key: ``Cookie``, ``OpenAI-Organization`` and ``OpenAI-Project`` (which
organisation the key bills), ``anthropic-beta`` (beta features), ``x_api_key``
(an underscore name some servers read as ``x-api-key``), SDK fingerprints and a
query string. The fakes record every header they receive and the request target
with its query string; every lane is tried, streaming and not, with failover
between providers (a retry must not carry what the first attempt was given).

A passthrough-lane request with a query string takes the model lane (Envoy's
rewrite would keep the query string; the upstream step sets the whole path).

One gateway forwards nothing; a second one forwards what its config lists, to
the provider that lists it only. Envoy hands a retry the headers as the previous
attempt left them, so a failover reaches a provider with only what every provider
tried before it forwards too (fail closed).
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator

import openai
import pytest

from hapax.fakes import FakeAnthropic, FakeOllama, FakeOpenAI, RecordedRequest, Status
from tests.conftest import gateway_config

OPENAI_KEY, CLAUDE_KEY = "sk-openai-of-the-gateway", "sk-ant-of-the-gateway"
CLIENT_KEY = "sk-the-clients-own"
GPT, CLAUDE, LLAMA = "gpt-4o-mini", "claude-3-haiku", "llama3.2"

# What the client adds to every request (the SDK adds its own x-stainless-* and user-agent).
CLIENT_HEADERS = {
    "Cookie": "session=the-clients-session",
    "anthropic-beta": "prompt-caching-2024-07-31",
    "X-Forwarded-For": "10.1.2.3",
    "Forwarded": "for=10.1.2.3",
    "X-Real-IP": "10.1.2.3",
    "X-Custom-Trace": "trace-me",
}
CLIENT_QUERY = {"api-version": "2024-10-21", "organization": "org-of-the-client"}

# What each provider may be sent, besides the request id and the transport's own headers.
TRANSPORT = {"host", "content-type", "content-length", "accept", "accept-encoding", "x-request-id"}
PROVIDER_OWN = {
    "openai": {"authorization"},
    "anthropic": {"x-api-key", "anthropic-version"},
    "ollama": set(),
}


def three_fakes(fake_host) -> Iterator[dict[str, FakeOpenAI | FakeAnthropic | FakeOllama]]:
    fakes = {"openai": fake_host.start(FakeOpenAI(api_key=OPENAI_KEY, model=GPT)),
             "anthropic": fake_host.start(FakeAnthropic(api_key=CLAUDE_KEY, model=CLAUDE)),
             "ollama": fake_host.start(FakeOllama(api_key=None, model=LLAMA))}
    yield fakes
    for fake in fakes.values():
        fake_host.run(fake.stop())


@pytest.fixture(scope="module")
def fakes(fake_host):
    yield from three_fakes(fake_host)


def three_providers(fakes, forward: dict[str, list[str]] | None = None) -> dict:
    """OpenAI (alias "mini"), then Anthropic, then Ollama; ``forward``: forward_headers by provider."""
    providers = {
        "openai": {"type": "openai", "model": GPT, "api_key": OPENAI_KEY, "base_url": fakes["openai"].base_url,
                   "aliases": ["mini"]},
        "anthropic": {"type": "anthropic", "model": CLAUDE, "api_key": CLAUDE_KEY,
                      "base_url": fakes["anthropic"].origin},
        "ollama": {"type": "ollama", "model": LLAMA, "base_url": fakes["ollama"].base_url},
    }
    for name, headers in (forward or {}).items():
        providers[name]["forward_headers"] = headers
    return gateway_config(providers, preference=["openai", "anthropic", "ollama"])


@pytest.fixture(scope="module")
def gateway(fakes, start_gateway):
    return start_gateway(three_providers(fakes))


def sdk_client(gateway, fakes, *, query: bool = True) -> openai.OpenAI:
    """The official SDK, told to send the organisation, project, cookies and (``query``) a query string."""
    for fake in fakes.values():
        fake.reset()
    return openai.OpenAI(base_url=gateway.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=30,
                         organization="org-of-the-client", project="proj-of-the-client",
                         default_headers=CLIENT_HEADERS, default_query=CLIENT_QUERY if query else None)


def sent_to_providers(fakes) -> list[tuple[str, RecordedRequest]]:
    """Every API call the providers received (not the gateway's health probes, which are GETs)."""
    return [(name, r) for name, fake in fakes.items() for r in fake.requests if r.method == "POST"]


def allowed(provider: str, forwarded: set[str] = frozenset()) -> set[str]:
    return TRANSPORT | PROVIDER_OWN[provider] | forwarded


def assert_only_allowed(fakes, providers: list[str], forwarded: dict[str, set[str]] | None = None) -> None:
    """Each of ``providers`` got one call, in order, with nothing but its allow-list and no query string."""
    sent = sent_to_providers(fakes)
    assert [name for name, _ in sent] == providers
    for name, request in sent:
        extra = set(request.headers) - allowed(name, (forwarded or {}).get(name, set()))
        assert not extra, f"{name} was sent {sorted(extra)}: {request.headers}"
        assert "?" not in request.target, f"{name} was sent the query string: {request.target}"
        assert CLIENT_KEY not in json.dumps(request.headers)


def ask(client: openai.OpenAI, model: str, stream: bool, **options) -> str:
    messages = [{"role": "user", "content": "who pays?"}]
    if not stream:
        reply = client.chat.completions.create(model=model, messages=messages, **options)
        return reply.choices[0].message.content or ""
    chunks = client.chat.completions.create(model=model, messages=messages, stream=True, **options)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def ext_proc_streams(gateway) -> int:
    lines = gateway.admin("/stats?filter=ext_proc.streams_started").splitlines()
    return sum(int(line.rsplit(":", 1)[1]) for line in lines if line.strip())


# (model, stream, SDK options, providers that fail first with a 429, the providers that get a call)
CASES = {
    # The passthrough lane: Envoy alone (the SDK sends no query string: one takes the model lane).
    "passthrough": (GPT, False, {}, [], ["openai"]),
    "passthrough, with a query string": (GPT, False, {}, [], ["openai"]),
    # ...and an attempt that leaves it, translated by the upstream step.
    "passthrough, failing over": (GPT, False, {}, ["openai"], ["openai", "anthropic"]),
    # The model lane: a body sent as it is, and translated ones.
    "model lane, body as sent, stream": (GPT, True, {"stream_options": {"include_usage": True}}, [], ["openai"]),
    "model lane, openai stream": (GPT, True, {}, [], ["openai"]),
    "model lane, alias": ("mini", False, {}, [], ["openai"]),
    "model lane, anthropic": (CLAUDE, False, {}, [], ["anthropic"]),
    "model lane, anthropic stream": (CLAUDE, True, {}, [], ["anthropic"]),
    "model lane, ollama": (LLAMA, False, {}, [], ["ollama"]),
    "model lane, ollama stream": (LLAMA, True, {}, [], ["ollama"]),
    "model lane, failing over, stream": (GPT, True, {}, ["openai"], ["openai", "anthropic"]),
    # The router step.
    "router step": ("auto", False, {}, [], ["openai"]),
    "router step, stream": ("auto", True, {}, [], ["openai"]),
    "router step, failing over twice": ("auto", False, {}, ["openai", "anthropic"],
                                        ["openai", "anthropic", "ollama"]),
    "router step, failing over, stream": ("auto", True, {}, ["openai"], ["openai", "anthropic"]),
}


@pytest.mark.parametrize("case", CASES)
def test_a_provider_gets_only_its_allow_list(gateway, fakes, case):
    model, stream, options, failing, reached = CASES[case]
    client = sdk_client(gateway, fakes, query=not case.startswith("passthrough"))
    for name in failing:
        fakes[name].inject(Status(429), method="POST")
    before = ext_proc_streams(gateway)
    assert "who pays?" in ask(client, model, stream, **options)
    if case == "passthrough":  # it did take the lane: ext_proc saw nothing
        assert ext_proc_streams(gateway) == before
    assert_only_allowed(fakes, reached)
    for _, request in sent_to_providers(fakes):
        assert request.headers.get("x-request-id")  # correlation with the gateway's logs


def raw_post(gateway, model: str, headers: dict[str, str], query: str = "") -> dict:
    """A plain HTTP/1.1 client: it sends header names as they are written, underscores included."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "who pays?"}]}).encode()
    request = urllib.request.Request(gateway.base_url + "/chat/completions" + query, data=body,
                                     method="POST", headers={"Content-Type": "application/json", **headers})
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.loads(resp.read())


@pytest.mark.parametrize("model,provider", [(GPT, "openai"), (CLAUDE, "anthropic"), ("auto", "openai")],
                         ids=["passthrough", "model lane", "router step"])
def test_an_underscore_header_reaches_no_provider(gateway, fakes, model, provider):
    for fake in fakes.values():
        fake.reset()
    answer = raw_post(gateway, model, {"Authorization": f"Bearer {CLIENT_KEY}", "x_api_key": "sk-smuggled",
                                       "Cookie": "session=1"}, "" if model == GPT else "?key=in-the-query")
    assert "who pays?" in answer["choices"][0]["message"]["content"]
    assert_only_allowed(fakes, [provider])
    assert "sk-smuggled" not in json.dumps(sent_to_providers(fakes)[0][1].headers)


# ---------------------------------------------------------------- forward_headers

FORWARD = {"openai": ["openai-organization", "x-custom-trace"], "anthropic": ["anthropic-beta"]}


@pytest.fixture(scope="module")
def forwarding_gateway(fakes, start_gateway):
    return start_gateway(three_providers(fakes, FORWARD))


def reaching(providers: list[str]) -> dict[str, set[str]]:
    """What each provider tried in turn is sent of FORWARD: its own, less what an earlier one removed."""
    out, left = {}, set(CLIENT_HEADERS_LOWER)
    for name in providers:
        out[name] = left & set(FORWARD.get(name, ()))
        left = out[name]  # the attempt removed the rest, for every attempt after it too
    return out


CLIENT_HEADERS_LOWER = {*(h.lower() for h in CLIENT_HEADERS), "openai-organization", "openai-project"}


@pytest.mark.parametrize("case", ["passthrough", "passthrough, failing over", "model lane, anthropic stream",
                                  "model lane, ollama", "router step, failing over twice"])
def test_a_configured_header_reaches_the_provider_that_forwards_it_only(forwarding_gateway, fakes, case):
    model, stream, options, failing, reached = CASES[case]
    client = sdk_client(forwarding_gateway, fakes, query=not case.startswith("passthrough"))
    for name in failing:
        fakes[name].inject(Status(429), method="POST")
    assert "who pays?" in ask(client, model, stream, **options)
    forwarded = reaching(reached)
    assert_only_allowed(fakes, reached, forwarded)
    for name, request in sent_to_providers(fakes):
        assert forwarded[name] <= set(request.headers), f"{name} was not sent {forwarded[name]}"
    if "openai" in reached:
        sent = dict(sent_to_providers(fakes))["openai"]
        assert sent.headers["openai-organization"] == "org-of-the-client"
        assert sent.headers["x-custom-trace"] == "trace-me"
