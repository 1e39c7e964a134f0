"""Geographic routing and data residency (``regions:``), through the real Envoy.

Two regional deployments of one provider, fake OpenAI servers ``eu`` and ``us`` (each
records every request it gets), behind a gateway whose home region is ``us``. Requests come
from different loopback addresses: 127.0.0.1 is the trusted edge, 127.0.0.2 an untrusted
client, 127.0.0.3 a client a (test-made) MaxMind database places in Germany.

Each behaviour is checked on the three ways a request takes (docs/architecture.md: which way
a request goes): a named OpenAI model takes the passthrough lane (Envoy alone), an alias the
model lane (the upstream step), no model the ordinary route (the router step).
"""

from __future__ import annotations

import http.client
import json
import sqlite3
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from hapax import wire
from hapax.client_keys import new_key
from hapax.fakes import FakeOpenAI, Status
from tests.conftest import gateway_config, save_config, wait_for
from tests.e2e.test_failover_e2e import envoy_health_flags, provider_states
from tests.mmdb import write_country_db

INTERVAL = 0.2  # health check interval
EDGE, STRANGER, GERMAN = "127.0.0.1", "127.0.0.2", "127.0.0.3"
MESSAGES = [{"role": "user", "content": "hello"}]
# The three ways a request goes: passthrough lane, model lane, router step.
BODIES = {"passthrough": {"model": "gpt-4o", "messages": MESSAGES},
          "model_lane": {"model": "smart", "messages": MESSAGES},
          "router_step": {"messages": MESSAGES}}
ADS_ROUTE = "/v1/ads/chat/completions"
WEB_KEY, WEB_LINE = new_key()
ADS_KEY, ADS_LINE = new_key()  # a client of the ads department, on any route


@pytest.fixture(scope="module")
def fakes(fake_host):
    with fake_host.serving(FakeOpenAI(api_key="k-eu", model="gpt-4o"),
                           FakeOpenAI(api_key="k-us", model="gpt-4o")) as pair:
        yield dict(zip(("eu", "us"), pair, strict=True))


@pytest.fixture(scope="module")
def gateway(fakes, start_gateway, tmp_path_factory):
    database = write_country_db(tmp_path_factory.mktemp("geoip") / "countries.mmdb", {f"{GERMAN}/32": "DE"})
    config = gateway_config(
        {name: {"type": "openai", "model": "gpt-4o", "aliases": ["smart"], "api_key": f"k-{name}",
                "base_url": fake.base_url, "region": name} for name, fake in fakes.items()},
        routes=[{"path": ADS_ROUTE, "handler": "chat", "metrics_labels": {"department": "ads"}}])
    config["health_check"] = {"interval": f"{int(INTERVAL * 1000)}ms", "timeout": "150ms",
                              "unhealthy_threshold": 2, "healthy_threshold": 2}
    config["clients"] = {"web": {"keys": [WEB_LINE.htpasswd]},
                         "ads-app": {"keys": [ADS_LINE.htpasswd], "metrics_labels": {"department": "ads"}}}
    config["regions"] = {"home": "us", "trusted_sources": [f"{EDGE}/32"],
                         "geoip": {"database": str(database), "countries": {"DE": "eu"}},
                         "residency": {"ads": "eu"}}
    config["ledger"] = {"directory": str(tmp_path_factory.mktemp("ledger"))}
    return start_gateway(config)


@pytest.fixture()
def ready(gateway, fakes, fake_host):
    for fake in fakes.values():
        fake.reset()
        fake_host.run(fake.accept_connections())
    wait_for(lambda: provider_states(gateway) == {"eu": "healthy", "us": "healthy"}, "both providers healthy")
    wait_for(lambda: all(envoy_health_flags(gateway, p) == "healthy" for p in fakes), "Envoy to route to both")
    return gateway


def post(gateway, body: dict, *, source: str = EDGE, region: str | None = None, path: str = "/v1/chat/completions",
         key: str = WEB_KEY) -> tuple[int, dict]:
    """POST from ``source`` (a loopback address of this host): the gateway sees it as the peer."""
    url = urlsplit(gateway.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30, source_address=(source, 0))
    headers = {"content-type": "application/json", "authorization": f"Bearer {key}"}
    if region is not None:
        headers["x-hapax-region"] = region
    try:
        conn.request("POST", path, json.dumps(body), headers)
        resp = conn.getresponse()
        raw = resp.read()
        if resp.getheader("content-type", "").startswith("text/event-stream"):
            return resp.status, {"stream": raw.decode()}
        return resp.status, json.loads(raw or b"null")
    finally:
        conn.close()


def posts(fake) -> list:
    return [r for r in fake.requests if r.method == "POST"]


def test_a_trusted_region_header_sends_every_lane_to_that_region(ready, fakes):
    for lane, body in BODIES.items():
        status, answer = post(ready, body, region="eu")
        assert status == 200, (lane, answer)
    assert len(posts(fakes["eu"])) == len(BODIES)
    assert posts(fakes["us"]) == []
    assert all("x-hapax-region" not in r.headers for r in posts(fakes["eu"]))  # the region is the gateway's


def test_a_stream_follows_its_region_and_fails_over_from_it(ready, fakes):
    stream = {"model": "smart", "messages": MESSAGES, "stream": True}
    status, answer = post(ready, stream, region="eu")
    assert status == 200 and "data: [DONE]" in answer["stream"], answer
    assert [r.body["stream"] for r in posts(fakes["eu"])] == [True]
    fakes["eu"].inject(Status(503), method="POST")  # once: before the stream's first byte
    status, answer = post(ready, stream, region="eu")
    assert status == 200 and "data: [DONE]" in answer["stream"], answer
    assert len(posts(fakes["eu"])) == 2
    assert len(posts(fakes["us"])) == 1


def test_a_request_without_a_region_goes_to_the_home_region(ready, fakes):
    for lane, body in BODIES.items():
        assert post(ready, body)[0] == 200, lane
    assert len(posts(fakes["us"])) == len(BODIES)
    assert posts(fakes["eu"]) == []


def test_an_untrusted_peers_region_header_is_ignored(ready, fakes):
    for lane, body in BODIES.items():
        assert post(ready, body, source=STRANGER, region="eu")[0] == 200, lane
    assert len(posts(fakes["us"])) == len(BODIES)
    assert posts(fakes["eu"]) == []


def test_the_client_address_country_picks_the_region_when_no_trusted_header_does(ready, fakes):
    for lane, body in BODIES.items():
        # Its own header (us) is not trusted: Germany is eu's.
        assert post(ready, body, source=GERMAN, region="us")[0] == 200, lane
    assert len(posts(fakes["eu"])) == len(BODIES)
    assert posts(fakes["us"]) == []


def test_a_pinned_department_is_served_in_its_region_whatever_the_header_says(ready, fakes):
    for lane, body in BODIES.items():
        assert post(ready, body, region="us", path=ADS_ROUTE)[0] == 200, lane
    assert post(ready, BODIES["model_lane"], region="us", key=ADS_KEY)[0] == 200  # a pinned client, any route
    assert len(posts(fakes["eu"])) == len(BODIES) + 1
    assert posts(fakes["us"]) == []


def test_a_pinned_department_gets_a_503_and_never_the_other_region_when_its_region_is_down(ready, fakes, fake_host):
    fake_host.run(fakes["eu"].refuse_connections())
    wait_for(lambda: "failed_active_hc" in envoy_health_flags(ready, "eu"), "Envoy to take eu out")
    answers = [post(ready, body, region=region, path=ADS_ROUTE)
               for body in BODIES.values() for region in (None, "us")]
    answers += [post(ready, body, key=ADS_KEY) for body in BODIES.values()]  # the pinned client, standard route
    for status, answer in answers:
        assert status == 503, answer
        assert answer["error"]["code"] == "provider_unavailable", answer
        assert answer["error"]["type"] == "server_error", answer
    # Each says where the request must stay; the router step's also why, naming only the region's
    # providers (on the lanes, the chain of one provider, retried once, has no member for the
    # reasons: Envoy's reply says where, in its own words).
    said = [a["error"]["message"] for _, a in answers]
    assert all(m.startswith("No provider in region eu, which this request's department may not leave")
               for m in said), said
    assert [m for m in said if m.endswith("could serve the request: eu: connection refused.")], said
    assert posts(fakes["us"]) == []
    # Anyone else still fails over.
    assert post(ready, BODIES["model_lane"], region="eu")[0] == 200
    assert len(posts(fakes["us"])) == 1


def test_regions_turned_on_and_off_by_a_reload_route_without_a_failed_request(fakes, start_gateway, fake_host):
    """The regional clusters arrive before the lookups that name them (make before break): every
    request during both reloads is answered."""
    for fake in fakes.values():  # as an earlier test may have left them
        fake.reset()
        fake_host.run(fake.accept_connections())
    providers = {name: {"type": "openai", "model": "gpt-4o", "aliases": ["smart"], "api_key": f"k-{name}",
                        "base_url": fake.base_url} for name, fake in fakes.items()}
    config = gateway_config(providers, preference=["us", "eu"])
    gateway = start_gateway(config)
    wait_for(lambda: provider_states(gateway) == {"eu": "healthy", "us": "healthy"}, "both providers healthy")
    statuses = []

    def reaches(region: str) -> bool:
        before = len(posts(fakes[region]))
        for body in BODIES.values():
            status, _ = post(gateway, body, region="eu", key="unused")
            statuses.append(status)
        return len(posts(fakes[region])) == before + len(BODIES)

    assert reaches("us")  # no regions: the header means nothing
    regional = {**config, "providers": {name: {**p, "region": name} for name, p in providers.items()},
                "regions": {"home": "us", "trusted_sources": [f"{EDGE}/32"]}}
    save_config(gateway.config_path, regional)
    wait_for(lambda: reaches("eu"), "the regions to apply")
    save_config(gateway.config_path, config)
    wait_for(lambda: reaches("us"), "the regions to go")
    assert set(statuses) == {200}


def test_the_ledger_names_the_region_that_served_each_request(ready, fakes):
    started = time.time()
    assert post(ready, BODIES["passthrough"], region="eu")[0] == 200
    assert post(ready, BODIES["passthrough"])[0] == 200  # no region: home's (us)
    directory = Path(yaml.safe_load(ready.config_path.read_text())["ledger"]["directory"])

    def regions() -> list[str]:
        found = []
        for path in directory.glob("ledger-*.sqlite"):
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
                found += [row[0] for row in db.execute(
                    f"SELECT region FROM {wire.LEDGER_TABLE} WHERE time >= ? ORDER BY time", (started,))]
        return found

    wait_for(lambda: len(regions()) == 2, "both requests' records")
    assert regions() == ["eu", "us"]


# Last: its failures get EU ejected by Envoy (10 s), which every later test would wait out.
def test_eu_down_fails_over_to_us_and_the_failover_is_counted(ready, fakes):
    before = ready.metric_total("hapax_failovers_total", provider="us")
    fakes["eu"].inject(Status(503), times=None, method="POST")  # its API down; its probe still answers
    for lane, body in BODIES.items():
        status, answer = post(ready, body, region="eu")
        assert status == 200, (lane, answer)
    assert len(posts(fakes["eu"])) == len(BODIES)  # each tried eu first
    assert len(posts(fakes["us"])) == len(BODIES)
    wait_for(lambda: ready.metric_total("hapax_failovers_total", provider="us") == before + len(BODIES),
             "every failover counted (the lanes' from Envoy's access log)")
    # Each provider's region, to add any per-provider series up by region in a query.
    assert ready.metric("hapax_provider_region_info", provider="us", region="us") == 1
    assert ready.metric("hapax_provider_region_info", provider="eu", region="eu") == 1
