"""Admission in ext_proc: what a request reserves, which limits hold it, and the answers Envoy gets.

The runtime comes from a real config through the control plane (as ext_proc receives it);
the counters are the real embedded store (SQLite) in a temporary directory.
"""

from __future__ import annotations

import asyncio
import json
import math
import textwrap

from envoy.service.ratelimit.v3 import rls_pb2

from control_plane.config import parse_config
from control_plane.resources.admission import ADMISSION_FILTER, limited_key_ids
from control_plane.snapshot import LISTENER, ROUTE, RUNTIME
from ext_proc.admission import Admission, AdmissionService, request_limits, worst_case
from ext_proc.limits import Metric, Period
from ext_proc.runtime import RuntimeView
from ext_proc.translators import TRANSLATORS
from hapax import wire
from hapax.client_keys import new_key
from hapax.wire import AdmissionEntry
from tests.snapshots import SECRETS, snapshot_of

SEARCH_KEY, SEARCH = new_key()
ADS_KEY, ADS = new_key()
CONFIG = textwrap.dedent(f"""\
    providers:
      openai: {{type: openai, model: gpt-4o-mini, api_key: "${{OPENAI_API_KEY}}"}}
      claude: {{type: anthropic, model: claude-3-haiku, api_key: "${{ANTHROPIC_API_KEY}}"}}
    pricing:
      gpt-4o-mini: {{input: 1, output: 2}}
      claude-3-haiku: {{input: 10, output: 20}}
    routes:
      - {{path: /v1/chat/completions, handler: chat}}
      - {{path: /marketing/v1/chat/completions, handler: chat, metrics_labels: {{department: marketing}}}}
      - {{path: /v1/embeddings, handler: embeddings}}
    clients:
      search:
        keys: ["{SEARCH.htpasswd}"]
        metrics_labels: {{department: search}}
        limits: {{requests_per_minute: 3, tokens_per_day: 1000}}
      ads:
        keys: ["{ADS.htpasswd}"]
    limits:
      default_max_tokens: 500
      departments:
        search: {{budget: {{usd: 1, period: day}}}}
        marketing: {{requests_per_day: 2}}
    """)


def view(config: str = CONFIG) -> RuntimeView:
    return RuntimeView.from_proto(snapshot_of(config).of_type(RUNTIME)["hapax"], frozenset(TRANSLATORS))


def entries(key_id: str = SEARCH.key_id, route: str = "/v1/chat/completions", request_id: str = "r1",
            **more: str) -> dict[str, str]:
    return {AdmissionEntry.REQUEST_ID: request_id, AdmissionEntry.KEY_ID: key_id, AdmissionEntry.ROUTE: route,
            AdmissionEntry.MODEL: "gpt-4o-mini", **more}


def test_a_request_reserves_its_size_in_tokens_its_answers_limit_and_the_dearest_price_of_its_chain():
    v = view()
    route = v.routes["/v1/chat/completions"]
    amounts = worst_case(v, route, entries(bytes="400", max_tokens="100"))
    assert amounts[Metric.REQUESTS] == 1 and amounts[Metric.TOKENS] == 100 + 100
    # gpt-4o-mini's chain fails over to claude: priced as claude, the dearer (micro-dollars).
    assert amounts[Metric.SPEND] == 100 * 10 + 100 * 20
    # max_completion_tokens wins over max_tokens; neither: the configured default.
    assert worst_case(v, route, entries(bytes="4", max_tokens="100", max_completion_tokens="7"))[Metric.TOKENS] == 8
    assert worst_case(v, route, entries(bytes="4"))[Metric.TOKENS] == 1 + 500
    # Embeddings have no answer to reserve.
    assert worst_case(v, v.routes["/v1/embeddings"], entries(bytes="40"))[Metric.TOKENS] == 10


def test_an_experiments_request_reserves_at_the_dearest_model_any_variant_may_send():
    experiment = CONFIG.replace("routes:", """experiments:
  summary-test:
    model: summary
    variants:
      cheap: {provider: openai, weight: 50}
      dear: {provider: openai, model: gpt-4o, weight: 50}
routes:""").replace("{type: openai, model: gpt-4o-mini,", "{type: openai, model: gpt-4o-mini, "
                    "models: {gpt-4o-mini: {}, gpt-4o: {}},").replace(
        "gpt-4o-mini: {input: 1, output: 2}", "gpt-4o-mini: {input: 1, output: 2}\n  gpt-4o: {input: 50, output: 60}")
    v = view(experiment)
    amounts = worst_case(v, v.routes["/v1/chat/completions"], entries(bytes="400", max_tokens="100", model="summary"))
    # Envoy picks the variant after the check: priced as variant dear's gpt-4o, the dearest sent.
    assert amounts[Metric.SPEND] == 100 * 50 + 100 * 60


def test_a_clients_limits_and_its_departments_both_hold_it():
    v = view()
    client = v.client(SEARCH.key_id)
    assert v.admission is not None and client is not None
    limits = request_limits(v.admission, client, v.routes["/v1/chat/completions"])
    assert {(lim.scope, lim.metric, lim.period, lim.limit) for lim in limits} == {
        ("client:search", Metric.REQUESTS, Period.MINUTE, 3), ("client:search", Metric.TOKENS, Period.DAY, 1000),
        ("department:search", Metric.SPEND, Period.DAY, 1_000_000)}
    # A client without a department of its own takes the route's.
    ads = v.client(ADS.key_id)
    marketing = request_limits(v.admission, ads, v.routes["/marketing/v1/chat/completions"])
    assert [(lim.scope, lim.limit) for lim in marketing] == [("department:marketing", 2)]
    assert request_limits(v.admission, ads, v.routes["/v1/chat/completions"]) == []


def check(service: AdmissionService, **fields: str) -> rls_pb2.RateLimitResponse:
    descriptor = rls_pb2.RateLimitRequest(domain=wire.ADMISSION_DOMAIN)
    entry = descriptor.descriptors.add()
    for key, value in entries(**fields).items():
        entry.entries.add(key=key, value=value)
    return asyncio.run(service.ShouldRateLimit(descriptor, None))


def test_admitted_answers_carry_openais_headers_and_refused_ones_a_429_body(tmp_path):
    v = view()
    service = AdmissionService(lambda: v, Admission(None, tmp_path))
    ok = check(service, request_id="a", bytes="40", max_tokens="10")
    assert ok.overall_code == rls_pb2.RateLimitResponse.OK
    headers = {h.key: h.value for h in ok.response_headers_to_add}
    assert headers["x-ratelimit-limit-requests"] == "3" and headers["x-ratelimit-remaining-requests"] == "2"
    assert headers["x-ratelimit-limit-tokens"] == "1000" and headers["x-ratelimit-remaining-tokens"] == str(1000 - 20)
    assert ok.dynamic_metadata.fields[wire.RESERVED_KEY].bool_value
    refused = check(service, request_id="b", bytes="4000", max_tokens="10")  # 1,010 tokens: over the day's 1,000
    assert refused.overall_code == rls_pb2.RateLimitResponse.OVER_LIMIT
    error = json.loads(refused.raw_body)["error"]
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "tokens" and "client search" in error["message"]
    headers = {h.key: h.value for h in refused.response_headers_to_add}
    assert int(headers["retry-after"]) >= 1 and headers["content-type"] == "application/json"


def test_a_refusal_on_a_messages_route_is_anthropics_error_shape(tmp_path):
    v = view()
    service = AdmissionService(lambda: v, Admission(None, tmp_path))
    refused = check(service, route="/v1/messages", bytes="4000", max_tokens="10")  # over the day's 1,000 tokens
    assert refused.overall_code == rls_pb2.RateLimitResponse.OVER_LIMIT
    body = json.loads(refused.raw_body)
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
    assert "client search" in body["error"]["message"]


def test_over_budget_the_429_names_the_budget(tmp_path):
    v = view(CONFIG.replace("budget: {usd: 1, period: day}", "budget: {usd: 0.01, period: day}"))
    service = AdmissionService(lambda: v, Admission(None, tmp_path))
    # 900 output tokens at claude's price: within the token limit, over the department's cent a day.
    refused = check(service, bytes="40", max_tokens="900")
    error = json.loads(refused.raw_body)["error"]
    assert error["code"] == "budget_exceeded" and error["type"] == "insufficient_quota"
    assert "department search" in error["message"] and "$0.01 per day" in error["message"]


def test_settling_releases_what_the_answer_did_not_use(tmp_path):
    v = view()
    admission = Admission(None, tmp_path)
    service = AdmissionService(lambda: v, admission)

    async def scenario() -> list[int]:
        codes = []
        for n in range(2):  # 2 x 500 reserved fills the day's 1,000 tokens
            response = await service.ShouldRateLimit(_request(f"r{n}", max_tokens="496"), None)
            codes.append(response.overall_code)
        codes.append((await service.ShouldRateLimit(_request("r2", max_tokens="496"), None)).overall_code)
        admission.settle_later(v, "r0", v.providers["openai"], 3, 7)  # used 10 of its 500
        await admission.drain()
        codes.append((await service.ShouldRateLimit(_request("r3", max_tokens="486"), None)).overall_code)
        await admission.close()
        return codes

    ok, over = rls_pb2.RateLimitResponse.OK, rls_pb2.RateLimitResponse.OVER_LIMIT
    assert asyncio.run(scenario()) == [ok, ok, over, ok]


def _request(request_id: str, **fields: str) -> rls_pb2.RateLimitRequest:
    request = rls_pb2.RateLimitRequest(domain=wire.ADMISSION_DOMAIN)
    entry = request.descriptors.add()
    # 16 bytes: 4 tokens; with max_tokens 496, 500 a request. The minute's 3 requests allow the four checks
    # only because the refused one reserves nothing.
    for key, value in entries(request_id=request_id, bytes="16", route="/v1/chat/completions", **fields).items():
        entry.entries.add(key=key, value=value)
    return request


def test_a_request_without_limits_is_admitted_without_a_reservation(tmp_path):
    v = view()
    service = AdmissionService(lambda: v, Admission(None, tmp_path))
    response = check(service, key_id=ADS.key_id, bytes="40")
    assert response.overall_code == rls_pb2.RateLimitResponse.OK
    assert not response.response_headers_to_add and wire.RESERVED_KEY not in response.dynamic_metadata.fields
    assert math.isclose(0, len(list(tmp_path.iterdir())))  # no store was even opened


def test_envoy_asks_only_about_keys_and_routes_a_limit_may_hold():
    snapshot = snapshot_of(CONFIG)
    listener = snapshot.of_type(LISTENER)[wire.LISTENER].SerializeToString()
    # search has limits of its own; ads has none and no department: its key is never asked about.
    assert SEARCH.key_id.encode() in listener and ADS.key_id.encode() not in listener
    assert limited_key_ids(parse_config(CONFIG, env=SECRETS)) == [SEARCH.key_id]
    vhost = snapshot.of_type(ROUTE)["hapax_routes"].virtual_hosts[0]
    always = {r.match.path for r in vhost.routes
              if r.typed_per_filter_config[ADMISSION_FILTER].type_url.endswith("RateLimitPerRoute")}
    assert always == {"/marketing/v1/chat/completions"}  # a limited department's label: every request


def test_an_absurd_max_tokens_is_refused_not_an_error_that_would_let_it_through(tmp_path):
    v = view()
    for n, absurd in enumerate(("100000000000000000000", "1e400", "-5", "NaN", "seven")):
        (tmp_path / str(n)).mkdir()
        service = AdmissionService(lambda: v, Admission(None, tmp_path / str(n)))  # a store of its own
        response = check(service, request_id=f"r-{absurd}", bytes="40", max_tokens=absurd)
        # Huge: the largest count, which no limit admits; nonsense: the configured default (500 fits).
        expected = rls_pb2.RateLimitResponse.OVER_LIMIT if absurd[0].isdigit() else rls_pb2.RateLimitResponse.OK
        assert response.overall_code == expected, absurd
