"""Client keys: made once, stored as a hash, configured under clients:, checked by Envoy."""

from __future__ import annotations

import re
import textwrap

import pytest
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from control_plane.config import ConfigError, HapaxConfig, parse_config
from control_plane.config.served import access_line
from control_plane.resources import client_keys as envoy_keys
from control_plane.resources.passthrough import JSON_TO_METADATA_FILTER
from control_plane.snapshot import CLUSTER, ENDPOINT, LISTENER, ROUTE, RUNTIME
from hapax import wire
from hapax.cli import main
from hapax.client_keys import KEY_PATTERN, KeyLine, KeyLineError, matches, new_key
from tests.snapshots import SECRETS, snapshot_of

PROVIDERS = """\
providers:
  openai: {type: openai, model: gpt-4o, api_key: "${OPENAI_API_KEY}"}
"""


def parse(text: str) -> HapaxConfig:
    return parse_config(textwrap.dedent(text), env=SECRETS)


def with_clients(lines: dict[str, list[str]], extra: str = "") -> str:
    clients = "".join(f"  {name}:\n    keys: {keys!r}\n{extra}" for name, keys in lines.items())
    return PROVIDERS + "clients:\n" + clients.replace("'", '"')


def filter_names(listener) -> list[str]:
    hcm = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    return [f.name for f in hcm.http_filters]


def errors(text: str) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        parse(text)
    return {issue.path: issue.message for issue in caught.value.issues}


def test_a_new_key_matches_its_line_and_no_other_key_does():
    key, line = new_key()
    assert KEY_PATTERN.match(key)
    assert matches(key, line)
    other, _ = new_key()
    assert not matches(other, line)
    # The same id with another secret: the hash, not the id, decides.
    assert not matches(key[:-1] + ("0" if key[-1] != "0" else "1"), line)


def test_the_line_holds_no_part_of_the_secret():
    key, line = new_key()
    secret = key.rsplit("-", 1)[1]
    assert secret not in line.htpasswd and secret[:12] not in line.htpasswd
    assert KeyLine.parse(line.htpasswd) == line


def test_a_key_pasted_where_its_line_belongs_is_refused_without_being_echoed():
    key, _ = new_key()
    with pytest.raises(KeyLineError) as caught:
        KeyLine.parse(key)
    assert key not in str(caught.value)
    found = errors(with_clients({"search": [key]}))
    assert set(found) == {"clients.search.keys[0]"}
    assert key not in found["clients.search.keys[0]"] and "hapax keys create" in found["clients.search.keys[0]"]


def test_keys_create_prints_the_key_alone_on_stdout_and_the_line_to_add_on_stderr(capsys):
    assert main(["keys", "create", "search"]) == 0
    out, err = capsys.readouterr()
    key = out.strip()
    assert KEY_PATTERN.match(key)
    line = re.search(r'"([0-9a-f]{12}:\{SHA\}[^"]+)"', err)
    assert line is not None and matches(key, KeyLine.parse(line.group(1)))
    assert "clients:" in err and "search:" in err and key not in err


def test_clients_configure_keys_departments_labels_and_limits():
    _, line = new_key()
    config = parse(PROVIDERS + textwrap.dedent(f"""\
        clients:
          search:
            keys: ["{line.htpasswd}"]
            metrics_labels: {{department: search, team: ranking}}
            limits: {{requests_per_minute: 60, tokens_per_day: 100000, budget: {{usd: 12.5, period: day}}}}
        limits:
          store: redis://:hunter2@127.0.0.1:6379/0
          on_store_error: closed
          departments:
            search: {{tokens_per_minute: 5000}}
        """))
    assert config.clients is not None
    client = config.clients["search"]
    assert client.keys == (line,) and client.department_name == "search"
    assert client.limits.requests_per_minute == 60 and client.limits.tokens_per_day == 100000
    assert client.limits.budget is not None and client.limits.budget.usd == 12.5
    assert config.limits.on_store_error == "closed" and config.limits.departments["search"].tokens_per_minute == 5000
    assert config.limited
    assert "hunter2" not in repr(config.limits)


@pytest.mark.parametrize(("body", "path"), [
    ("limits: {tokens_per_minute: 0}", "clients.search.limits.tokens_per_minute"),
    ("limits: {budget: {usd: -1}}", "clients.search.limits.budget.usd"),
    ("limits: {budget: {usd: 5, period: week}}", "clients.search.limits.budget.period"),
    ("limits: {tokens_per_hour: 5}", "clients.search.limits.tokens_per_hour"),
    ("metrics_labels: {provider: x}", "clients.search.metrics_labels.provider"),
])
def test_a_wrong_client_setting_is_named_by_its_key_path(body, path):
    _, line = new_key()
    assert path in errors(with_clients({"search": [line.htpasswd]}, f"    {body}\n"))


@pytest.mark.parametrize(("section", "path"), [("limits: {store: 'postgres://user:hunter2@db/x'}", "limits.store"),
                                              ("ledger: {store: 'redis://:hunter2@db/0'}", "ledger.store")])
def test_a_store_of_the_wrong_kind_is_refused_without_echoing_its_url(section, path):
    found = errors(PROVIDERS + section + "\n")
    assert set(found) == {path} and "hunter2" not in found[path]


def test_one_key_id_in_two_clients_is_refused():
    _, line = new_key()
    found = errors(with_clients({"a": [line.htpasswd], "b": [line.htpasswd]}))
    assert "clients.b.keys[0]" in found and "clients.a.keys[0]" in found["clients.b.keys[0]"]


def test_without_clients_the_gateway_is_open_and_the_banner_says_so():
    config = parse(PROVIDERS)
    assert config.clients is None and not config.limited
    assert access_line(config).startswith("OPEN")
    listener = snapshot_of(PROVIDERS).of_type(LISTENER)[wire.LISTENER]
    assert not {envoy_keys.FORM_FILTER, envoy_keys.CHECK_FILTER} & set(filter_names(listener))


def test_with_clients_envoy_checks_hashes_on_every_route_but_health_and_is_given_no_key():
    key, line = new_key()
    text = with_clients({"search": [line.htpasswd]})
    assert access_line(parse(text)).startswith("client keys required (1 clients, 1 keys")
    snapshot = snapshot_of(text)
    listener = snapshot.of_type(LISTENER)[wire.LISTENER]
    routes = snapshot.of_type(ROUTE)["hapax_routes"]
    secret = key.rsplit("-", 1)[1]
    for message in (listener, routes, snapshot.of_type(RUNTIME)["hapax"]):
        assert secret.encode() not in message.SerializeToString()
    names = filter_names(listener)
    # The form filter runs before the check, and both before anything reads the body.
    assert names.index(envoy_keys.FORM_FILTER) + 1 == names.index(envoy_keys.CHECK_FILTER)
    assert names.index(envoy_keys.CHECK_FILTER) < names.index(JSON_TO_METADATA_FILTER)
    vhost = routes.virtual_hosts[0]
    assert line.htpasswd.encode() in vhost.typed_per_filter_config[envoy_keys.CHECK_FILTER].SerializeToString()
    health = next(r for r in vhost.routes if r.name == "health")
    assert set(envoy_keys.no_key_needed(parse(text))) <= set(health.typed_per_filter_config)
    runtime = snapshot.of_type(RUNTIME)["hapax"]
    assert runtime.keys_required and [list(c.key_ids) for c in runtime.clients] == [[line.key_id]]


def test_the_limit_stores_password_reaches_ext_proc_only():
    _, line = new_key()
    text = with_clients({"search": [line.htpasswd]}, "    limits: {requests_per_day: 5}\n")
    text += "limits: {store: 'redis://:hunter2@127.0.0.1:6379/0'}\n"
    snapshot = snapshot_of(text)
    for type_url in (CLUSTER, ENDPOINT, LISTENER, ROUTE):
        for message in snapshot.of_type(type_url).values():
            assert b"hunter2" not in message.SerializeToString(), type_url
    assert "hunter2" in snapshot.of_type(RUNTIME)["hapax"].admission.store


def test_a_clients_models_and_routes_must_be_served_ones():
    _, line = new_key()
    found = errors(with_clients({"search": [line.htpasswd]},
                                "    models: [gpt-4o, gpt-5x]\n    routes: [/v1/chat/completions, /v2/chat]\n"))
    assert set(found) == {"clients.search.models[1]", "clients.search.routes[1]"}
    assert "did you mean" in found["clients.search.models[1]"]
    config = parse(with_clients({"search": [line.htpasswd]}, "    models: [gpt-4o, auto]\n"))
    assert config.clients is not None and config.clients["search"].models == ("gpt-4o", "auto")
    assert config.reads_request_bodies and not config.limited


def test_a_confined_client_gets_a_deny_policy_on_its_key_ids_and_the_others_none():
    _, confined = new_key()
    _, free = new_key()
    text = PROVIDERS + textwrap.dedent(f"""\
        clients:
          intern: {{keys: ["{confined.htpasswd}"], models: [gpt-4o]}}
          search: {{keys: ["{free.htpasswd}"]}}
        """)
    snapshot = snapshot_of(text)
    assert envoy_keys.SCOPE_FILTER in filter_names(snapshot.of_type(LISTENER)[wire.LISTENER])
    vhost = snapshot.of_type(ROUTE)["hapax_routes"].virtual_hosts[0]
    rules = vhost.typed_per_filter_config[envoy_keys.SCOPE_FILTER].SerializeToString()
    assert b"client:intern" in rules and confined.key_id.encode() in rules
    assert b"client:search" not in rules and free.key_id.encode() not in rules
