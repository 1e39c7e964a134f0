"""hapax.yaml parsing and validation: the good file, and each class of bad file."""

from __future__ import annotations

import dataclasses
import pickle
import textwrap

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.scale import config_text
from control_plane.config import (
    DEFAULT_BASE_URLS,
    DEFAULT_ROUTES,
    HANDLERS,
    PROVIDER_TYPES,
    CircuitBreakerConfig,
    ConfigError,
    ConfigIssue,
    HapaxConfig,
    LoggingConfig,
    ProviderConfig,
    RouteConfig,
    ServerConfig,
    load_config,
    parse_config,
    summarize,
)
from control_plane.config.served import MAX_LISTED_PROVIDERS, preference_line, provider_line, route_lines
from control_plane.defaults import default_config_text, needs_fake_providers
from control_plane.pricing import DEFAULT_PRICES, ModelPrice, price_for
from tests.seed import SEED_YAML

SECRET = "sk-test-0123456789abcdef"


def parse(text: str, env: dict[str, str] | None = None) -> HapaxConfig:
    return parse_config(textwrap.dedent(text), env=env or {})


def errors(text: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """path -> message of every error the text produces (it must be invalid)."""
    with pytest.raises(ConfigError) as caught:
        parse(text, env)
    return {issue.path: issue.message for issue in caught.value.issues}


def with_provider(body: str, name: str = "openai") -> str:
    return f"providers:\n  {name}: {body}\n"


def with_route(body: str) -> str:
    return with_provider("{type: openai, model: gpt-4}") + f"routes:\n  - {body}\n"


# --------------------------------------------------------------------------- the good file


def test_seed_example_loads_verbatim():
    config = parse_config(SEED_YAML, source="hapax.yaml", env={})

    assert list(config.providers) == ["anthropic", "openai"]
    assert config.providers["anthropic"] == ProviderConfig(
        "anthropic", "anthropic", "claude-3-haiku", "", DEFAULT_BASE_URLS["anthropic"], 60.0,
        api_key_variables=("ANTHROPIC_API_KEY",)
    )
    assert config.providers["openai"].model == "gpt-4"
    assert config.providers["openai"].base_url == "https://api.openai.com/v1"
    assert config.provider_preference == ("anthropic", "openai")
    assert config.routes == (
        RouteConfig("/v1/marketing/completions", "completion", "v1", {"department": "marketing"}),
        *DEFAULT_ROUTES,  # a department route adds to the standard ones
    )
    assert dict(config.routes[0].metrics_labels) == {"department": "marketing"}
    assert config.server == ServerConfig()
    assert config.source == "hapax.yaml"


def test_seed_example_warns_about_each_missing_api_key_naming_the_variable():
    config = parse_config(SEED_YAML, env={})

    assert [str(w) for w in config.warnings] == [
        "providers.anthropic.api_key: empty (${ANTHROPIC_API_KEY} is not set); "
        "requests to this provider will be rejected",
        "providers.openai.api_key: empty (${OPENAI_API_KEY} is not set); "
        "requests to this provider will be rejected",
    ]


def test_api_key_comes_from_the_environment_and_silences_the_warning():
    config = parse_config(SEED_YAML, env={"OPENAI_API_KEY": SECRET, "ANTHROPIC_API_KEY": "sk-ant"})

    assert config.providers["openai"].api_key == SECRET
    assert config.providers["anthropic"].api_key == "sk-ant"
    assert config.warnings == ()


def test_a_providers_key_source_names_its_variables_and_never_the_value():
    config = parse_config(SEED_YAML, env={"OPENAI_API_KEY": SECRET, "ANTHROPIC_API_KEY": "sk-ant"})

    assert config.providers["openai"].api_key_source == "providers.openai.api_key, from ${OPENAI_API_KEY}"
    literal = parse_config(f"providers:\n  openai: {{type: openai, model: m, api_key: {SECRET}}}\n", env={})
    assert literal.providers["openai"].api_key_source == "providers.openai.api_key"


def test_api_key_set_but_empty_is_named_as_empty():
    config = parse_config(SEED_YAML, env={"OPENAI_API_KEY": "", "ANTHROPIC_API_KEY": "x"})

    assert [w.message for w in config.warnings] == [
        "empty (${OPENAI_API_KEY} is empty); requests to this provider will be rejected"
    ]


def test_ollama_needs_no_api_key():
    config = parse(with_provider("{type: ollama, model: llama3.2}"))

    assert config.providers["openai"].api_key == ""
    assert config.providers["openai"].base_url == "http://localhost:11434"
    assert config.warnings == ()


def test_missing_api_key_on_keyed_provider_is_a_warning_not_an_error():
    config = parse(with_provider("{type: anthropic, model: claude}"))

    assert [(w.path, w.message) for w in config.warnings] == [
        ("providers.openai.api_key", "empty (no api_key given); requests to this provider will be rejected")
    ]


def test_defaults_when_optional_keys_are_absent():
    config = parse(with_provider("{type: openai, model: gpt-4}"))

    assert config.server == ServerConfig(host="0.0.0.0", port=8080, admin_port=None, metrics_port=9464)
    assert config.routes == DEFAULT_ROUTES
    assert [(r.path, r.handler, r.version) for r in DEFAULT_ROUTES] == [
        ("/v1/chat/completions", "chat", "v1"),
        ("/v1/completions", "completion", "v1"),
        ("/v1/embeddings", "embeddings", "v1"),
        ("/v1/models", "models", "v1"),
        ("/v1/messages", "messages", "v1"),
        ("/v1/messages/count_tokens", "count_tokens", "v1"),
        ("/v1/responses", "responses", "v1"),
    ]
    assert config.provider_preference == ("openai",)
    assert config.providers["openai"].timeout == 60.0
    assert config.providers["openai"].aliases == ()


def test_preference_defaults_to_providers_in_file_order():
    config = parse("""
        providers:
          zeta: {type: openai, model: a, api_key: k}
          alpha: {type: ollama, model: b}
    """)

    assert config.provider_preference == ("zeta", "alpha")


def test_full_file_with_every_key():
    config = parse("""
        server: {host: 127.0.0.1, port: 0, admin_port: 0, metrics_port: 0}
        providers:
          local:
            type: ollama
            model: llama3.2
            base_url: http://127.0.0.1:11434/
            timeout: 1m30s
            aliases: [llama, gpt-4]
        provider_preference: [local]
        routes:
          - {path: /v1/chat/completions, handler: chat, version: v2, metrics_labels: {team: a, cost_center: b}}
    """)

    assert config.server == ServerConfig("127.0.0.1", 0, 0, 0)
    local = config.providers["local"]
    assert (local.base_url, local.timeout, local.aliases) == ("http://127.0.0.1:11434", 90.0, ("llama", "gpt-4"))
    assert config.routes[0].version == "v2"
    assert dict(config.routes[0].metrics_labels) == {"team": "a", "cost_center": "b"}


def test_same_model_at_two_providers_is_allowed_for_failover():
    config = parse("""
        providers:
          primary: {type: openai, model: gpt-4, api_key: a, aliases: [fast]}
          backup: {type: openai, model: gpt-4, api_key: b, base_url: "https://backup.example/v1", aliases: [fast]}
    """)

    assert [p.model for p in config.providers.values()] == ["gpt-4", "gpt-4"]


def test_dates_stay_the_strings_that_were_written():
    config = parse(with_route("{path: /v1/x, handler: chat, version: 2024-06-01}"))

    assert config.routes[0].version == "2024-06-01"


def test_yaml_anchors_and_merge_keys_work():
    config = parse("""
        providers:
          a: &base {type: openai, model: gpt-4, api_key: k, timeout: 5}
          b: {<<: *base, model: gpt-4o}
    """)

    assert (config.providers["b"].model, config.providers["b"].timeout) == ("gpt-4o", 5.0)


# --------------------------------------------------------------------------- environment expansion


@pytest.mark.parametrize("env", [{}, {"MODEL": ""}], ids=["unset", "empty"])
def test_env_default_used_when_variable_unset_or_empty(env):
    config = parse(with_provider('{type: ollama, model: "${MODEL:-llama3.2}"}'), env)

    assert config.providers["openai"].model == "llama3.2"


def test_env_value_wins_over_default():
    config = parse(with_provider('{type: ollama, model: "${MODEL:-llama3.2}"}'), {"MODEL": "mistral"})

    assert config.providers["openai"].model == "mistral"


def test_env_expansion_applies_inside_strings_lists_and_labels():
    env = {"HOST": "gpu1", "ALIAS": "big", "DEPT": "sales"}
    config = parse("""
        providers:
          local: {type: ollama, model: m, base_url: "http://${HOST}:11434", aliases: ["${ALIAS}-model"]}
        routes:
          - {path: /v1/x, handler: chat, metrics_labels: {department: "${DEPT}"}}
    """, env)

    assert config.providers["local"].base_url == "http://gpu1:11434"
    assert config.providers["local"].aliases == ("big-model",)
    assert config.routes[0].metrics_labels["department"] == "sales"


def test_double_dollar_escapes_a_literal_dollar():
    config = parse(with_provider('{type: openai, model: gpt-4, api_key: "pa$$word${X}"}'), {"X": "!"})

    assert config.providers["openai"].api_key == "pa$word!"


def test_unset_variable_without_default_expands_to_empty():
    config = parse(with_route('{path: "/v1/x${SUFFIX}", handler: chat}'))

    assert config.routes[0].path == "/v1/x"


def test_env_defaults_to_os_environ(monkeypatch):
    monkeypatch.setenv("HAPAX_TEST_MODEL", "from-os-environ")

    config = parse_config(with_provider('{type: ollama, model: "${HAPAX_TEST_MODEL}"}'))

    assert config.providers["openai"].model == "from-os-environ"


@pytest.mark.parametrize("value", ["${OPENAI", "${1BAD}", "${}", "${A:?err}"])
def test_malformed_variable_reference_is_an_error_at_its_path(value):
    found = errors(with_provider(f'{{type: ollama, model: "{value}"}}'))

    assert "invalid variable reference" in found["providers.openai.model"]


def test_port_from_the_environment_may_be_numeric_text():
    config = parse(with_provider("{type: ollama, model: m}") + 'server: {port: "${PORT:-8081}"}', {"PORT": "9000"})

    assert config.server.port == 9000


def test_non_numeric_port_from_the_environment_names_the_reference_not_the_value():
    found = errors(with_provider("{type: ollama, model: m}") + 'server: {port: "${PORT}"}', {"PORT": "oops"})

    assert found["server.port"] == "expected an integer, got string from '${PORT}'"


# --------------------------------------------------------------------------- syntax and shape


def test_yaml_syntax_error_reports_line_and_column():
    with pytest.raises(ConfigError) as caught:
        parse_config("providers:\n  openai: {type: openai\nroutes: []\n", source="bad.yaml", env={})

    (issue,) = caught.value.issues
    assert issue.path == ""
    assert "line 3, column" in issue.message and issue.message.startswith("invalid YAML")
    assert caught.value.source == "bad.yaml"


def test_yaml_syntax_error_does_not_quote_the_offending_line():
    text = f'providers:\n  openai: {{type: openai, api_key: "{SECRET}\n'

    with pytest.raises(ConfigError) as caught:
        parse_config(text, env={})

    assert SECRET not in str(caught.value)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("- a\n- b\n", "expected a mapping at the top level, got a list"),
        ("just text\n", "expected a mapping at the top level, got string 'just text'"),
        ("", "the file is empty: expected a mapping with at least 'providers'"),
        ("# only a comment\n", "the file is empty: expected a mapping with at least 'providers'"),
    ],
)
def test_top_level_must_be_a_mapping(text, expected):
    assert errors(text) == {"": expected}


def test_duplicate_keys_are_an_error_not_silently_overwritten():
    found = errors("""
        providers:
          openai: {type: openai, model: a}
          openai: {type: openai, model: b}
    """)

    assert found == {"": "invalid YAML at line 4, column 3: duplicate key 'openai' (first defined on line 3)"}


def test_self_referencing_alias_is_a_config_error():
    assert errors("providers: &a [*a]\n")[""] == (
        "invalid YAML at line 1, column 12: an alias refers to the node that holds it"
    )


BILLION_LAUGHS = "".join(
    [f'a: &a [{", ".join(["lol"] * 9)}]\n']
    + [f"{k}: &{k} [{', '.join([f'*{p}'] * 9)}]\n" for p, k in zip("abcdefgh", "bcdefghi", strict=True)]
)


def test_an_alias_bomb_is_refused_where_it_explodes():
    # 9**9 "lol"s once expanded; the cap stops it at composition, before anything walks it.
    assert len(BILLION_LAUGHS) < 600
    assert errors(BILLION_LAUGHS) == {
        "": "invalid YAML at line 6, column 4: aliases expand this node to more than 100,000 values (an alias bomb?)"
    }


def test_aliases_within_the_cap_still_work():
    text = "x: &x [1, 2]\n" + "".join(f"y{i}: *x\n" for i in range(50))
    assert set(errors(text)) >= {"x", "y0", "providers"}  # unknown keys, but read


def test_a_config_file_over_the_size_cap_is_refused(tmp_path):
    from control_plane.config.load import MAX_CONFIG_BYTES

    big = tmp_path / "hapax.yaml"
    big.write_text("#" * (MAX_CONFIG_BYTES + 1))
    with pytest.raises(ConfigError) as caught:
        load_config(big)
    assert [i.message for i in caught.value.issues] == [
        "the file is larger than 1024 KiB; a configuration is a few KiB"
    ]


def test_explicit_tag_with_bad_value_is_reported_with_its_line():
    found = errors("providers: {}\nserver: {port: !!int eighty}\n")

    assert found[""].startswith("invalid YAML at line 2, column 16")


# --------------------------------------------------------------------------- unknown keys


def test_unknown_key_suggests_close_match():
    found = errors(SEED_YAML.replace("provider_preference", "provider_preferance"))

    assert found == {
        "provider_preferance": "unknown key 'provider_preferance' (did you mean 'provider_preference'?)"
    }


@pytest.mark.parametrize(
    "text, path, message",
    [
        (with_provider("{type: openai, model: m, modle: x}"), "providers.openai.modle",
         "unknown key 'modle' (did you mean 'model'?)"),
        (with_route("{path: /x, handler: chat, metric_labels: {}}"), "routes[0].metric_labels",
         "unknown key 'metric_labels' (did you mean 'metrics_labels'?)"),
        (with_provider("{type: ollama, model: m}") + "server: {prot: 80}", "server.prot",
         "unknown key 'prot' (did you mean 'port'?)"),
        (with_provider("{type: ollama, model: m}") + "xyzzy: []", "xyzzy",
         "unknown key 'xyzzy' (expected one of: server, providers, provider_preference, routes, default_routes, "
         "health_check, retry, pricing, logging, ext_proc, control_plane, clients, limits, queue, ledger, "
         "experiments, regions)"),
        (with_provider("{type: ollama, model: m}") + "1: x", "1", "expected a string key, got integer 1"),
    ],
)
def test_unknown_keys_are_errors_at_every_level(text, path, message):
    assert errors(text) == {path: message}


# --------------------------------------------------------------------------- providers


def test_unknown_provider_type_lists_expected_types():
    found = errors(with_provider("{type: opnai, model: gpt-4}"))

    assert found == {
        "providers.openai.type": "unknown provider type 'opnai' (expected one of: anthropic, ollama, openai)"
    }
    assert PROVIDER_TYPES == ("anthropic", "ollama", "openai")


@pytest.mark.parametrize(
    "providers, path, message",
    [
        ("server: {port: 1}", "providers", "is required: define at least one provider"),
        ("providers: {}", "providers", "must define at least one provider"),
        ("providers: [openai]", "providers", "expected a mapping, got a list"),
        ("providers: {openai: gpt-4}", "providers.openai", "expected a mapping, got string 'gpt-4'"),
        ("providers: {openai: {model: m}}", "providers.openai.type", "is required"),
        ("providers: {openai: {type: openai}}", "providers.openai.model", "is required"),
        ("providers: {openai: {type: openai, model: '  '}}", "providers.openai.model", "must not be empty"),
        ("providers: {openai: {type: openai, model: 4}}", "providers.openai.model", "expected a string, got integer 4"),
    ],
)
def test_provider_structure_errors(providers, path, message):
    assert errors(providers + "\n") == {path: message}


@pytest.mark.parametrize("name", ["OpenAI", "open ai", "-x", "a.b", "ü"])
def test_provider_names_must_be_usable_as_cluster_names(name):
    found = errors(with_provider("{type: openai, model: m}", name=f'"{name}"'))

    assert found[f"providers.{name}"].startswith(f"invalid provider name {name!r}")


@pytest.mark.parametrize(
    "url, expected",
    [
        ("https://api.example.com/v1/", "https://api.example.com/v1"),
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("http://localhost:11434//", "http://localhost:11434"),
    ],
)
def test_base_url_trailing_slash_is_stripped(url, expected):
    config = parse(with_provider(f'{{type: openai, model: m, base_url: "{url}"}}'))

    assert config.providers["openai"].base_url == expected


@pytest.mark.parametrize(
    "url, message",
    [
        ("ftp://example.com", "expected an http:// or https:// URL, got 'ftp://example.com'"),
        ("api.openai.com/v1", "expected an http:// or https:// URL, got 'api.openai.com/v1'"),
        ("https:///v1", "URL 'https:///v1' has no host"),
        ("http://host:99999", "invalid URL: Port out of range 0-65535"),
        ("http://host/v1?x=1", "URL 'http://host/v1?x=1' must not have a query string or fragment"),
        ("http://ho st", "must not contain whitespace or control characters"),
    ],
)
def test_invalid_base_url(url, message):
    assert errors(with_provider(f'{{type: openai, model: m, base_url: "{url}"}}')) == {
        "providers.openai.base_url": message
    }


def test_base_url_with_credentials_is_rejected_without_echoing_them():
    found = errors(with_provider(f'{{type: openai, model: m, base_url: "https://u:{SECRET}@host"}}'))

    assert found == {"providers.openai.base_url": "must not contain credentials (user:password@); use api_key"}


@pytest.mark.parametrize("kind, url, message", [
    ("openai", "https://api.openai.com/",
     "has no path, and the gateway appends /chat/completions, /embeddings and /models to it: OpenAI's API, "
     "like most compatible servers', is under /v1 (https://api.openai.com/v1)"),
    ("anthropic", "https://api.anthropic.com/v1",
     "ends in /v1, and the gateway appends /v1/messages and /v1/models to it itself: requests would go to "
     ".../v1/v1/messages; leave the /v1 out"),
    ("ollama", "http://localhost:11434/v1/",
     "ends in /v1, and the gateway appends /api/chat, /api/embed and /api/tags to it itself: requests would go "
     "to .../v1/api/chat; leave the /v1 out (for Ollama's OpenAI-compatible API under /v1, use type: openai)"),
    ("ollama", "http://localhost:11434/api",
     "ends in /api, and the gateway appends /api/chat, /api/embed and /api/tags to it itself: requests would go "
     "to .../api/api/chat; leave the /api out"),
])
def test_a_base_url_against_its_types_convention_is_a_warning_saying_what_the_gateway_appends(kind, url, message):
    config = parse(with_provider(f'{{type: {kind}, model: m, api_key: k, base_url: "{url}"}}'))

    assert [(w.path, w.message) for w in config.warnings] == [("providers.openai.base_url", message)]


@pytest.mark.parametrize("kind, url", [
    ("openai", "https://api.openai.com/v1"),
    ("openai", "http://10.0.0.5:8000/v1"),
    ("openai", "https://gateway.example/openai/v2"),
    ("anthropic", "https://api.anthropic.com"),
    ("anthropic", "https://proxy.example/anthropic"),
    ("ollama", "http://localhost:11434"),
    ("ollama", "https://gpu.example/ollama"),
])
def test_a_base_url_that_follows_its_types_convention_draws_no_warning(kind, url):
    assert parse(with_provider(f'{{type: {kind}, model: m, api_key: k, base_url: "{url}"}}')).warnings == ()


@pytest.mark.parametrize(
    "value, seconds",
    [("30", 30.0), ("2.5", 2.5), ("30s", 30.0), ("500ms", 0.5), ("2m", 120.0), ("1m30s", 90.0), ("1h", 3600.0)],
)
def test_timeout_accepts_seconds_or_a_duration(value, seconds):
    assert parse(with_provider(f"{{type: ollama, model: m, timeout: {value}}}")).providers["openai"].timeout == seconds


@pytest.mark.parametrize(
    "value, message",
    [
        ("0", "must be a positive, finite number of seconds, got integer 0"),
        ("-1s", "expected a number of seconds or a duration such as '30s', '500ms' or '1m30s', got string '-1s'"),
        ("'30'", "expected a number of seconds or a duration such as '30s', '500ms' or '1m30s', got string '30'"),
        ("10 years", "expected a number of seconds or a duration such as '30s', '500ms' or '1m30s', "
                     "got string '10 years'"),
        ("true", "expected a number of seconds or a duration such as '30s', '500ms' or '1m30s', got boolean true"),
        (".inf", "must be a positive, finite number of seconds, got number inf"),
    ],
)
def test_invalid_timeout(value, message):
    assert errors(with_provider(f"{{type: ollama, model: m, timeout: {value}}}")) == {
        "providers.openai.timeout": message
    }


def test_aliases_must_be_a_list_of_strings():
    found = errors("""
        providers:
          a: {type: ollama, model: m, aliases: gpt-4}
          b: {type: ollama, model: m, aliases: [ok, 3, ""]}
    """)

    assert found == {
        "providers.a.aliases": "expected a list, got string 'gpt-4'",
        "providers.b.aliases[1]": "expected a string, got integer 3",
        "providers.b.aliases[2]": "must not be empty",
    }


# --------------------------------------------------------------------------- forward_headers


def test_forward_headers_default_to_none_and_are_lowercased():
    config = parse("""
        providers:
          openai: {type: openai, model: gpt-4, api_key: a, forward_headers: [OpenAI-Organization, X-Trace-Id]}
          claude: {type: anthropic, model: claude, api_key: b}
    """)

    assert config.providers["openai"].forward_headers == ("openai-organization", "x-trace-id")
    assert config.providers["claude"].forward_headers == ()
    assert config.warnings == ()


def test_forward_headers_that_could_never_be_forwarded_are_errors_with_their_key_path():
    found = errors("""
        providers:
          a: {type: ollama, model: m, forward_headers: x-trace-id}
          b:
            type: ollama
            model: m
            forward_headers: [Authorization, cookie, x_api_key, ":path", "bad header", Host, x-envoy-retry-on,
                              x-hapax-chain, "", 3, x-trace-id, X-Trace-Id]
    """)

    credential = "is a client credential: a provider is sent the gateway's own key, never what the client " \
                 "authenticates with"
    assert found == {
        "providers.a.forward_headers": "expected a list, got string 'x-trace-id'",
        "providers.b.forward_headers[0]": f"cannot forward 'Authorization': {credential}",
        "providers.b.forward_headers[1]": f"cannot forward 'cookie': {credential}",
        "providers.b.forward_headers[2]": "cannot forward 'x_api_key': names with underscores are dropped "
                                          "from every request",
        "providers.b.forward_headers[3]": "cannot forward ':path': a pseudo-header is the gateway's to set",
        "providers.b.forward_headers[4]": "cannot forward 'bad header': not an HTTP header name",
        "providers.b.forward_headers[5]": "cannot forward 'Host': belongs to the connection: the gateway sets "
                                          "it for each provider itself",
        "providers.b.forward_headers[6]": "cannot forward 'x-envoy-retry-on': the gateway's own headers are "
                                          "never taken from a client",
        "providers.b.forward_headers[7]": "cannot forward 'x-hapax-chain': the gateway's own headers are never "
                                          "taken from a client",
        "providers.b.forward_headers[8]": "cannot forward '': not an HTTP header name",
        "providers.b.forward_headers[9]": "expected a string, got integer 3",
        "providers.b.forward_headers[11]": "'x-trace-id' is listed twice (first at providers.b.forward_headers[10])",
    }


def test_forwarding_a_header_every_provider_gets_is_a_warning():
    config = parse(with_provider("{type: ollama, model: m, forward_headers: [content-type, x-trace-id]}"))

    assert config.providers["openai"].forward_headers == ("content-type", "x-trace-id")
    assert [str(w) for w in config.warnings] == [
        "providers.openai.forward_headers[0]: 'content-type' is sent to every provider already; "
        "listing it changes nothing"]


# --------------------------------------------------------------------------- provider_preference

TWO_PROVIDERS = """\
providers:
  openai: {type: openai, model: gpt-4, api_key: a}
  anthropic: {type: anthropic, model: claude, api_key: b}
"""


def test_preference_naming_an_unknown_provider_suggests_a_close_match():
    found = errors(TWO_PROVIDERS + "provider_preference: [opena, anthropic]\n")

    assert found == {
        "provider_preference[0]": "unknown provider 'opena' (defined: openai, anthropic); did you mean 'openai'?"
    }


def test_preference_may_not_list_a_provider_twice():
    found = errors(TWO_PROVIDERS + "provider_preference: [openai, anthropic, openai]\n")

    assert found == {"provider_preference[2]": "provider 'openai' is listed twice (first at provider_preference[0])"}


@pytest.mark.parametrize(
    "value, message",
    [
        ("[]", "must list at least one provider (omit the key to use every provider in file order)"),
        ("openai", "expected a list, got string 'openai'"),
    ],
)
def test_preference_must_be_a_non_empty_list(value, message):
    assert errors(TWO_PROVIDERS + f"provider_preference: {value}\n") == {"provider_preference": message}


def test_provider_missing_from_preference_is_valid_but_warned_about():
    config = parse(TWO_PROVIDERS + "provider_preference: [anthropic]\n")

    assert config.provider_preference == ("anthropic",)
    assert "openai" in config.providers
    assert [(w.path, w.message) for w in config.warnings] == [
        ("provider_preference", "not listed, so never used for failover: openai")
    ]


# --------------------------------------------------------------------------- routes


@pytest.mark.parametrize(
    "path, message",
    [
        ("/health", "path /health is reserved for the gateway health endpoint"),
        ("v1/chat", "path 'v1/chat' must start with '/'"),
        ("/v1/a b", "path '/v1/a b' must not contain whitespace or control characters"),
        ("/v1/a?x=1", "path '/v1/a?x=1' must not contain '?' or '#' (routes match the path only)"),
        ("/v1/a#top", "path '/v1/a#top' must not contain '?' or '#' (routes match the path only)"),
    ],
)
def test_invalid_route_path(path, message):
    assert errors(with_route(f'{{path: "{path}", handler: chat}}')) == {"routes[0].path": message}


def test_route_paths_must_be_unique():
    found = errors(with_route("{path: /v1/a, handler: chat}\n  - {path: /v1/b, handler: chat}\n"
                              "  - {path: /v1/a, handler: completion}"))

    assert found == {"routes[2].path": "duplicate path /v1/a (already used by routes[0])"}


def test_unknown_handler_lists_handlers_and_suggests_one():
    found = errors(with_route("{path: /v1/x, handler: chta}"))

    assert found == {
        "routes[0].handler": "unknown handler 'chta' (expected one of: chat, completion, embeddings, models, "
                             "messages, responses, count_tokens); did you mean 'chat'?"
    }
    assert HANDLERS == ("chat", "completion", "embeddings", "models", "messages", "responses", "count_tokens")


def test_department_routes_add_to_the_standard_openai_routes():
    config = parse(with_route("{path: /v1/sales/chat/completions, handler: chat, metrics_labels: {department: sales}}"))

    assert [r.path for r in config.routes] == ["/v1/sales/chat/completions", *(r.path for r in DEFAULT_ROUTES)]
    assert config.routes[1:] == DEFAULT_ROUTES


def test_a_route_on_a_standard_path_replaces_the_standard_one_without_a_warning():
    config = parse(with_provider("{type: ollama, model: m}") + "routes:\n  - {path: /v1/chat/completions, "
                   "handler: chat, version: v2, metrics_labels: {department: eng}}\n")

    [chat] = [r for r in config.routes if r.path == "/v1/chat/completions"]
    assert chat == RouteConfig("/v1/chat/completions", "chat", "v2", {"department": "eng"})
    assert len(config.routes) == len(DEFAULT_ROUTES)
    assert config.warnings == ()


def test_default_routes_false_serves_only_the_configured_routes():
    config = parse("default_routes: false\n" + with_route("{path: /v1/sales/completions, handler: completion}"))

    assert config.routes == (RouteConfig("/v1/sales/completions", "completion"),)


def test_default_routes_true_is_what_leaving_it_out_means():
    text = with_route("{path: /v1/sales/completions, handler: completion}")

    assert parse("default_routes: true\n" + text).routes == parse(text).routes


@pytest.mark.parametrize(
    "text, message",
    [
        ("default_routes: false\n", "false leaves nothing to serve: list the routes to serve under 'routes'"),
        ("default_routes: no-thanks\n", "expected true or false, got string 'no-thanks'"),
    ],
)
def test_default_routes_errors(text, message):
    assert errors(with_provider("{type: ollama, model: m}") + text) == {"default_routes": message}


def test_the_banner_names_a_screenful_of_providers_and_counts_the_rest():
    # A hundred providers made a banner line of 3 KB: the first eight are named, the rest counted.
    config = parse_config(config_text(100, 1), env={})
    line, order = provider_line(config), preference_line(config)
    assert line.startswith("p000 (openai, http://127.0.0.1:20000/v1), p001 (anthropic, http://127.0.0.1:20001), ")
    assert line.count("(") == MAX_LISTED_PROVIDERS + 1 and line.endswith(", ... and 92 more (100 in all)")
    assert order == " > ".join(f"p{i:03d}" for i in range(MAX_LISTED_PROVIDERS)) + " > ... and 92 more (100 in all)"
    # A config that fits is listed whole, as before.
    few = parse_config(config_text(3, 1), env={})
    assert preference_line(few) == "p000 > p001 > p002" and "more" not in provider_line(few)


def test_route_lines_name_each_path_its_handler_and_where_it_comes_from():
    config = parse(with_route("{path: /v1/sales/completions, handler: completion, "
                              "metrics_labels: {department: sales, team: emea}}\n"
                              "  - {path: /v1/models, handler: models}\n"
                              "  - {path: /v1/chat/completions, handler: chat, metrics_labels: {department: all}}"))

    assert route_lines(config) == [
        "/v1/sales/completions      completion (department=sales, team=emea)",
        "/v1/models                 models (standard)",  # configured exactly as the standard one
        "/v1/chat/completions       chat (department=all)",  # replaces the standard one
        "/v1/completions            completion (standard)",
        "/v1/embeddings             embeddings (standard)",
        "/v1/messages               messages (standard)",
        "/v1/messages/count_tokens  count_tokens (standard)",
        "/v1/responses              responses (standard)",
    ]


def test_route_lines_list_the_first_routes_and_count_the_rest():
    many = "\n".join(f"  - {{path: /v1/team{i}/chat/completions, handler: chat}}" for i in range(20))
    config = parse(with_provider("{type: ollama, model: m}") + "default_routes: false\nroutes:\n" + many + "\n")

    lines = route_lines(config, limit=3)
    assert lines[:3] == [f"/v1/team{i}/chat/completions  chat" for i in range(3)]
    assert lines[3:] == ["... and 17 more (20 routes in all)"]
    assert len(route_lines(config)) == 12 + 1


@pytest.mark.parametrize(
    "routes, path, message",
    [
        ("routes: []", "routes", "must define at least one route (omit the key for the default routes)"),
        ("routes: {path: /x}", "routes", "expected a list, got a mapping"),
        ("routes: [/v1/x]", "routes[0]", "expected a mapping, got string '/v1/x'"),
        ("routes: [{handler: chat}]", "routes[0].path", "is required"),
        ("routes: [{path: /x}]", "routes[0].handler", "is required"),
        ("routes: [{path: /x, handler: chat, version: 1}]", "routes[0].version", "expected a string, got integer 1"),
    ],
)
def test_route_structure_errors(routes, path, message):
    assert errors(with_provider("{type: ollama, model: m}") + routes + "\n") == {path: message}


@pytest.mark.parametrize(
    "labels, path, message",
    [
        ("{department: 7}", "department", "expected a string, got integer 7"),
        ("{department: ''}", "department", "must not be empty"),
        ("{provider: x}", "provider",
         "label 'provider' is reserved: Hapax sets it itself "
         "(reserved: provider, model, route, status, status_class, outcome, handler, gen_ai_token_type, version, "
         "result, le, quantile, experiment, variant)"),
        ("{__name: x}", "__name", "invalid label name '__name': names starting with '__' are reserved by Prometheus"),
        ("{'team-name': x}", "team-name",
         "invalid label name 'team-name' (Prometheus label names match [a-zA-Z_][a-zA-Z0-9_]*)"),
        ("{1: x}", "1", "label names must be strings, got integer 1"),
        (f"{{team: {'x' * 65}}}", "team", "label value is 65 characters long; at most 64 are allowed"),
    ],
)
def test_invalid_metrics_labels(labels, path, message):
    found = errors(with_route(f"{{path: /v1/x, handler: chat, metrics_labels: {labels}}}"))

    assert found == {f"routes[0].metrics_labels.{path}": message}


def test_reserved_label_names_are_all_rejected():
    for name in ("provider", "model", "route", "status", "handler", "le", "quantile", "experiment", "variant"):
        found = errors(with_route(f"{{path: /v1/x, handler: chat, metrics_labels: {{{name}: x}}}}"))
        assert f"routes[0].metrics_labels.{name}" in found


def test_at_most_eight_metrics_labels():
    eight = ", ".join(f"l{i}: v" for i in range(8))
    assert parse(with_route(f"{{path: /v1/x, handler: chat, metrics_labels: {{{eight}}}}}")).routes[0].metrics_labels

    found = errors(with_route(f"{{path: /v1/x, handler: chat, metrics_labels: {{{eight}, l8: v}}}}"))

    assert found == {"routes[0].metrics_labels": "at most 8 labels are allowed, got 9 "
                                                 "(each label multiplies the number of time series)"}


# --------------------------------------------------------------------------- server


@pytest.mark.parametrize(
    "server, path, message",
    [
        ("{port: abc}", "server.port", "expected an integer, got string 'abc'"),
        ("{port: true}", "server.port", "expected an integer, got boolean true"),
        ("{port: 80.5}", "server.port", "expected an integer, got number 80.5"),
        ("{port: 65536}", "server.port", "port 65536 is out of range (0..65535; 0 picks a free port)"),
        ("{admin_port: -1}", "server.admin_port", "port -1 is out of range (0..65535; 0 picks a free port)"),
        ("{host: localhost}", "server.host", "expected an IP address such as 0.0.0.0 or 127.0.0.1, got 'localhost'"),
        ("[8080]", "server", "expected a mapping, got a list"),
    ],
)
def test_invalid_server_settings(server, path, message):
    assert errors(with_provider("{type: ollama, model: m}") + f"server: {server}\n") == {path: message}


def test_ports_must_be_distinct_unless_zero():
    base = with_provider("{type: ollama, model: m}")

    assert parse(base + "server: {port: 0, admin_port: 0, metrics_port: 0}").server.port == 0
    assert errors(base + "server: {port: 7000, metrics_port: 7000}") == {
        "server.metrics_port": "port 7000 is already used by server.port"
    }


def test_port_clash_with_a_default_is_reported_at_the_key_that_was_written():
    found = errors(with_provider("{type: ollama, model: m}") + "server: {port: 9464}")

    assert found == {"server.port": "port 9464 is already used by server.metrics_port (its default)"}


def test_envoy_admin_has_no_tcp_port_unless_the_config_opts_in():
    assert parse(with_provider("{type: ollama, model: m}")).server.admin_port is None
    assert parse(with_provider("{type: ollama, model: m}") + "server: {admin_port: 9901}").server.admin_port == 9901


def test_invalid_port_does_not_also_report_a_clash():
    found = errors(with_provider("{type: ollama, model: m}") + "server: {port: abc, admin_port: 8080}")

    assert list(found) == ["server.port"]


def test_ipv6_host_is_accepted_and_summarized_in_brackets():
    config = parse(with_provider("{type: ollama, model: m}") + "server: {host: '::1', port: 8000}")

    assert summarize(config).endswith("listening on [::1]:8000")


# --------------------------------------------------------------------------- all errors at once


def test_every_error_is_reported_with_its_key_path():
    found = errors("""
        server: {port: abc, metrics_port: 70000}
        providers:
          openai: {type: opnai, model: gpt-4, base_url: "ftp://x"}
          anthropic: {type: anthropic, timeout: never}
        provider_preference: [openai, claude]
        routes:
          - {path: /health, handler: chat}
          - {path: /v1/x, handler: chta, metrics_labels: {department: 1}}
        extra: true
    """)

    assert set(found) == {
        "server.port",
        "server.metrics_port",
        "providers.openai.type",
        "providers.openai.base_url",
        "providers.anthropic.model",
        "providers.anthropic.timeout",
        "provider_preference[1]",
        "routes[0].path",
        "routes[1].handler",
        "routes[1].metrics_labels.department",
        "extra",
    }


def test_config_error_renders_source_count_and_one_line_per_issue():
    err = ConfigError("hapax.yaml", [ConfigIssue("a.b", "bad"), ConfigIssue("", "worse")])

    assert str(err) == "hapax.yaml: 2 errors\n  a.b: bad\n  worse"
    assert str(ConfigIssue("providers.openai.type", "x")) == "providers.openai.type: x"
    assert str(ConfigError("f", [ConfigIssue("p", "m")])).startswith("f: 1 error\n")


def test_config_error_survives_pickling():
    err = ConfigError("hapax.yaml", [ConfigIssue("a", "b")])

    copy = pickle.loads(pickle.dumps(err))

    assert (copy.source, copy.issues) == (err.source, err.issues)


# --------------------------------------------------------------------------- secrets and immutability


def test_api_key_never_in_error_or_repr():
    env = {"OPENAI_API_KEY": SECRET}
    config = parse_config(SEED_YAML.replace("${ANTHROPIC_API_KEY}", SECRET), env=env)
    assert SECRET not in repr(config) and SECRET not in str(config.providers["openai"])
    assert SECRET not in summarize(config)

    broken = SEED_YAML.replace("type: openai", "type: opnai").replace("gpt-4", "''")
    with pytest.raises(ConfigError) as caught:
        parse_config(broken.replace("${ANTHROPIC_API_KEY}", SECRET), env=env)
    assert SECRET not in str(caught.value) and SECRET not in repr(caught.value)


def test_api_key_of_wrong_type_is_reported_without_its_value():
    found = errors(with_provider("{type: openai, model: m, api_key: 1234567890123}"))

    assert found == {"providers.openai.api_key": "expected a string, got integer"}


def test_config_objects_are_immutable_and_hashable():
    config = parse_config(SEED_YAML, env={})

    with pytest.raises(dataclasses.FrozenInstanceError):
        config.source = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.providers["x"] = config.providers["openai"]  # type: ignore[index]
    with pytest.raises(TypeError):
        config.routes[0].metrics_labels["department"] = "sales"  # type: ignore[index]
    assert hash(config) == hash(parse_config(SEED_YAML, env={}))


def test_replace_keeps_the_config_frozen():
    config = parse_config(SEED_YAML, env={})

    changed = dataclasses.replace(config, server=dataclasses.replace(config.server, port=1))

    assert changed.server.port == 1 and changed.providers == config.providers
    assert isinstance(hash(changed), int)


def test_constructors_normalise_mutable_inputs():
    route = RouteConfig("/x", "chat", metrics_labels={"team": "a"})
    provider = ProviderConfig("p", "openai", "m", "k", "https://h", aliases=["a"])  # type: ignore[arg-type]

    assert hash(route) and provider.aliases == ("a",)
    assert route.metrics_labels == {"team": "a"}


# --------------------------------------------------------------------------- files and summary


def test_load_config_reads_the_file_and_names_it_as_source(tmp_path):
    path = tmp_path / "hapax.yaml"
    path.write_text(SEED_YAML)

    config = load_config(path, env={})

    assert config.source == str(path)
    assert summarize(config) == (
        f"{path}: valid — 2 providers (anthropic, openai), preference anthropic > openai, "
        "8 routes, listening on 0.0.0.0:8080"
    )


def test_unreadable_file_is_a_config_error_at_the_root(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "missing.yaml")

    (issue,) = caught.value.issues
    assert issue.path == "" and issue.message == "cannot read the file: No such file or directory"


def test_file_errors_name_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(with_provider("{type: opnai, model: m}"))

    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})

    assert str(caught.value).splitlines()[0] == f"{path}: 1 error"


# --------------------------------------------------------------------------- built-in default

FAKE_URLS = {"openai": "http://127.0.0.1:1/v1", "anthropic": "http://127.0.0.1:2", "ollama": "http://127.0.0.1:3"}


def test_default_config_uses_fake_providers_without_keys():
    assert needs_fake_providers({}) and needs_fake_providers({"OPENAI_API_KEY": ""})

    config = parse_config(default_config_text({}, FAKE_URLS), source="<default>", env={})

    assert config.provider_preference == ("openai", "anthropic", "ollama")
    assert {n: (p.model, p.api_key, p.base_url) for n, p in config.providers.items()} == {
        "openai": ("gpt-4o-mini", "fake-openai-key", "http://127.0.0.1:1/v1"),
        "anthropic": ("claude-3-5-haiku-latest", "fake-anthropic-key", "http://127.0.0.1:2"),
        "ollama": ("llama3.2", "", "http://127.0.0.1:3"),
    }
    assert config.warnings == ()


def test_default_config_has_default_routes_plus_the_marketing_route():
    config = parse_config(default_config_text({}, FAKE_URLS), env={})

    assert config.routes == (RouteConfig("/v1/marketing/completions", "completion", "v1", {"department": "marketing"}),
                             *DEFAULT_ROUTES)
    assert config.server.port == 8080


@pytest.mark.parametrize(
    "env, providers",
    [
        ({"OPENAI_API_KEY": SECRET}, ("openai",)),
        ({"ANTHROPIC_API_KEY": SECRET}, ("anthropic",)),
        ({"OPENAI_API_KEY": SECRET, "ANTHROPIC_API_KEY": SECRET}, ("openai", "anthropic")),
    ],
)
def test_default_config_uses_real_providers_for_the_keys_that_are_set(env, providers):
    assert not needs_fake_providers(env)

    text = default_config_text(env, None)
    config = parse_config(text, env=env)

    assert SECRET not in text
    assert config.provider_preference == providers
    assert all(p.api_key == SECRET and p.base_url == DEFAULT_BASE_URLS[p.type] for p in config.providers.values())
    assert [p.model for p in config.providers.values()] == [
        {"openai": "gpt-4o-mini", "anthropic": "claude-3-5-haiku-latest"}[name] for name in providers
    ]


def test_default_config_without_keys_or_fakes_is_a_programming_error():
    with pytest.raises(ValueError, match="fake provider URLs"):
        default_config_text({}, None)


# --------------------------------------------------------------------------- properties

_KEYS = st.sampled_from([
    "server", "providers", "provider_preference", "routes", "host", "port", "admin_port", "metrics_port",
    "type", "model", "api_key", "base_url", "timeout", "aliases", "path", "handler", "version",
    "metrics_labels", "openai", "anthropic", "department", "provider", "__x",
])
_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
    st.text(max_size=12), st.sampled_from([*PROVIDER_TYPES, *HANDLERS, "/v1/x", "/health", "30s", "${X}", "${",
                                           "$$", "http://h"]),
)
_TREES = st.recursive(
    _SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(_KEYS, st.text(max_size=6), st.integers(0, 3)), children, max_size=5),
    ),
    max_leaves=30,
)


def _section(keys: list[str], values: st.SearchStrategy) -> st.SearchStrategy:
    return st.dictionaries(st.sampled_from(keys), values, max_size=len(keys))


_NAMES = st.sampled_from(["openai", "anthropic", "local", "Bad Name"])
# The secret only ever appears as an api_key, literally or through the environment.
_API_KEYS = st.one_of(st.sampled_from([SECRET, "${SECRET_KEY}", "pre-${SECRET_KEY}", "${SECRET_KEY:-x}"]), _SCALARS)
_PROVIDER = st.fixed_dictionaries({}, optional={
    "api_key": _API_KEYS,
    **{key: st.one_of(_SCALARS, st.lists(_SCALARS, max_size=2))
       for key in ("type", "model", "base_url", "timeout", "aliases", "forward_headers", "modle")},
})
# Shaped like a real file, so that most examples get past the top level into each section.
_NEAR_VALID = st.fixed_dictionaries({}, optional={
    "server": _section(["host", "port", "admin_port", "metrics_port"], st.one_of(_SCALARS, st.integers(0, 9))),
    "providers": st.dictionaries(_NAMES, _PROVIDER, max_size=3),
    "provider_preference": st.lists(st.one_of(_NAMES, _SCALARS), max_size=3),
    "routes": st.lists(_section(["path", "handler", "version", "metrics_labels"],
                                st.one_of(_SCALARS, st.dictionaries(_KEYS, _SCALARS, max_size=3))), max_size=3),
})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=st.one_of(_NEAR_VALID, st.dictionaries(_KEYS, _TREES, max_size=5)))
def test_random_mappings_only_ever_raise_config_error(tree):
    text = yaml.safe_dump(tree, allow_unicode=True)
    try:
        config = parse_config(text, env={"X": "1", "SECRET_KEY": SECRET})
    except ConfigError as err:
        assert err.issues, "a ConfigError always says what is wrong"
        assert all(isinstance(i.path, str) and i.message for i in err.issues)
        assert SECRET not in str(err)
    else:
        assert isinstance(config, HapaxConfig) and config.providers
        assert SECRET not in repr(config)


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200))
def test_arbitrary_text_only_ever_raises_config_error(text):
    try:
        parse_config(text, env={})
    except ConfigError as err:
        assert err.issues


# --------------------------------------------------------------------------- health checks and circuit breakers


def test_health_check_defaults_apply_and_providers_override_key_by_key():
    config = parse_config(
        "health_check: {interval: 2s, unhealthy_threshold: 5}\n"
        "providers:\n"
        "  a: {type: ollama, model: m}\n"
        "  b: {type: ollama, model: m, health_check: {interval: 500ms, timeout: 100ms}}\n", env={})
    a, b = config.providers["a"].health_check, config.providers["b"].health_check
    assert (a.interval, a.healthy_threshold, a.unhealthy_threshold) == (2.0, 2, 5)
    assert a.timeout == 2.0  # the 5 s default shrinks to the shorter interval
    assert (b.interval, b.timeout, b.unhealthy_threshold) == (0.5, 0.1, 5)


@pytest.mark.parametrize("block,path,message", [
    ("{interval: soon}", "providers.a.health_check.interval", "expected a number of seconds"),
    ("{healthy_threshold: 0}", "providers.a.health_check.healthy_threshold", "must be at least 1"),
    ("{interval: 1s, timeout: 2s}", "providers.a.health_check.timeout", "must not exceed the interval"),
    ("{intervall: 1s}", "providers.a.health_check.intervall", "did you mean 'interval'"),
])
def test_bad_health_check_settings_name_their_key(block, path, message):
    with pytest.raises(ConfigError) as err:
        parse_config(f"providers:\n  a: {{type: ollama, model: m, health_check: {block}}}\n", env={})
    assert any(i.path == path and message in i.message for i in err.value.issues), err.value.issues


def test_circuit_breaker_limits_are_positive_integers():
    config = parse_config("providers:\n  a: {type: ollama, model: m, circuit_breaker: {max_pending_requests: 8}}\n",
                          env={})
    assert config.providers["a"].circuit_breaker == CircuitBreakerConfig(max_pending_requests=8)
    with pytest.raises(ConfigError) as err:
        parse_config("providers:\n  a: {type: ollama, model: m, circuit_breaker: {max_retries: -1}}\n", env={})
    assert [i.path for i in err.value.issues] == ["providers.a.circuit_breaker.max_retries"]


def test_retry_max_attempts_is_optional_and_positive():
    assert parse_config("providers:\n  a: {type: ollama, model: m}\n", env={}).retry.max_attempts is None
    config = parse_config("retry: {max_attempts: 4}\nproviders:\n  a: {type: ollama, model: m}\n", env={})
    assert config.retry.max_attempts == 4
    with pytest.raises(ConfigError) as err:
        parse_config("retry: {max_attempts: 0, backoff: 1s}\nproviders:\n  a: {type: ollama, model: m}\n", env={})
    assert sorted(i.path for i in err.value.issues) == ["retry.backoff", "retry.max_attempts"]


def test_retry_backoff_defaults_to_envoys_and_can_be_tuned():
    default = parse_config("providers:\n  a: {type: ollama, model: m}\n", env={}).retry
    assert (default.backoff_base, default.backoff_max) == (0.025, 0.25)
    only_base = parse_config("retry: {backoff: {base_interval: 100ms}}\nproviders:\n  a: {type: ollama, model: m}\n",
                             env={}).retry
    assert (only_base.backoff_base, only_base.backoff_max) == (0.1, 1.0)  # Envoy's rule: 10 x base
    both = parse_config("retry: {backoff: {base_interval: 10ms, max_interval: 2s}}\n"
                        "providers:\n  a: {type: ollama, model: m}\n", env={}).retry
    assert (both.backoff_base, both.backoff_max) == (0.01, 2.0)


@pytest.mark.parametrize("backoff,path", [
    ("{base_interval: 1s, max_interval: 100ms}", "retry.backoff.max_interval"),
    ("{base_interval: -1}", "retry.backoff.base_interval"),
    ("{jitter: true}", "retry.backoff.jitter"),
])
def test_retry_backoff_errors_name_the_key(backoff, path):
    with pytest.raises(ConfigError) as err:
        parse_config(f"retry: {{backoff: {backoff}}}\nproviders:\n  a: {{type: ollama, model: m}}\n", env={})
    assert [i.path for i in err.value.issues] == [path]


def test_pricing_adds_and_overrides_models_over_the_built_in_table():
    config = parse_config("pricing:\n  my-llm: {input: 1, output: 2.5}\n  gpt-4o: {input: 0, output: 0}\n"
                          "providers:\n  a: {type: ollama, model: m}\n", env={})
    assert config.pricing["my-llm"] == ModelPrice(1.0, 2.5)
    assert config.pricing["gpt-4o"] == ModelPrice(0.0, 0.0)
    assert config.pricing["claude-3-haiku"] == DEFAULT_PRICES["claude-3-haiku"]


@pytest.mark.parametrize("entry,path", [
    ("{input: 1}", "pricing.m"),
    ("{input: -1, output: 1}", "pricing.m.input"),
    ("{input: 1, output: cheap}", "pricing.m.output"),
    ("{input: 1, output: 1, currency: EUR}", "pricing.m.currency"),
    ("3", "pricing.m"),
])
def test_pricing_errors_name_the_key(entry, path):
    with pytest.raises(ConfigError) as err:
        parse_config(f"pricing:\n  m: {entry}\nproviders:\n  a: {{type: ollama, model: m}}\n", env={})
    assert [i.path for i in err.value.issues] == [path]


@pytest.mark.parametrize("model,entry", [
    ("gpt-4o", "gpt-4o"), ("gpt-4o-2024-08-06", "gpt-4o"), ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
    ("claude-3-5-haiku-latest", "claude-3-5-haiku"), ("gpt-4.5-preview", None), ("llama3.2", None),
])
def test_a_model_takes_its_own_price_or_that_of_the_model_it_is_a_variant_of(model, entry):
    assert price_for(model, DEFAULT_PRICES) == (DEFAULT_PRICES[entry] if entry else None)


def test_logging_defaults_to_json_at_info_with_access_logs():
    default = parse_config("providers:\n  a: {type: ollama, model: m}\n", env={})
    assert default.logging == LoggingConfig("info", "json", True)
    config = parse_config("logging: {level: DEBUG, format: text, access_log: false}\n"
                          "providers:\n  a: {type: ollama, model: m}\n", env={})
    assert config.logging == LoggingConfig("debug", "text", False)


@pytest.mark.parametrize("node,path,message", [
    ("{level: loud}", "logging.level", "unknown log level 'loud'"),
    ("{format: xml}", "logging.format", "unknown log format 'xml'"),
    ("{access_log: yes please}", "logging.access_log", "expected true or false"),
    ("{colour: true}", "logging.colour", "unknown key 'colour'"),
])
def test_logging_errors_name_the_key(node, path, message):
    with pytest.raises(ConfigError) as err:
        parse_config(f"logging: {node}\nproviders:\n  a: {{type: ollama, model: m}}\n", env={})
    [issue] = err.value.issues
    assert issue.path == path and message in issue.message


def test_ext_proc_workers_default_to_one_per_cpu_and_are_bounded():
    assert parse_config("providers:\n  a: {type: ollama, model: m}\n", env={}).ext_proc.workers is None
    assert parse_config("ext_proc: {workers: 3}\nproviders:\n  a: {type: ollama, model: m}\n",
                        env={}).ext_proc.workers == 3
    for bad in ("0", "1000", "many"):
        with pytest.raises(ConfigError) as err:
            parse_config(f"ext_proc: {{workers: {bad}}}\nproviders:\n  a: {{type: ollama, model: m}}\n", env={})
        assert [i.path for i in err.value.issues] == ["ext_proc.workers"]


# --------------------------------------------------------------------------- edge limits


def test_request_timeout_defaults_to_a_minute_and_may_be_set():
    assert parse(with_provider("{type: ollama, model: m}")).server.request_timeout == 60
    config = parse(with_provider("{type: ollama, model: m}") + "server: {request_timeout: 5}")
    assert config.server.request_timeout == 5


def test_request_timeout_must_be_a_positive_integer():
    found = errors(with_provider("{type: ollama, model: m}") + "server: {request_timeout: 0}")
    assert found["server.request_timeout"] == "must be at least 1, got 0"


def test_ext_proc_streams_per_worker_default_to_1024_and_must_be_positive():
    ollama = "providers:\n  a: {type: ollama, model: m}\n"
    assert parse_config(ollama, env={}).ext_proc.max_streams_per_worker == 1024
    config = parse_config("ext_proc: {max_streams_per_worker: 8}\n" + ollama, env={})
    assert (config.ext_proc.workers, config.ext_proc.max_streams_per_worker) == (None, 8)
    config = parse_config("ext_proc: {workers: 2, max_streams_per_worker: 8}\n" + ollama, env={})
    assert (config.ext_proc.workers, config.ext_proc.max_streams_per_worker) == (2, 8)
    with pytest.raises(ConfigError) as err:
        parse_config("ext_proc: {max_streams_per_worker: 0}\n" + ollama, env={})
    assert [i.path for i in err.value.issues] == ["ext_proc.max_streams_per_worker"]


# --------------------------------------------------------------------------- secrets in errors


PASTED_KEY = "sk-proj-Zx81fQk29LmP0wX7vB3nT6yR4sH5"


@pytest.mark.parametrize(("yaml_text", "path"), [
    (f"providers:\n  openai: {{type: openai, model: m, timeout: {PASTED_KEY}}}\n", "providers.openai.timeout"),
    (f"providers:\n  openai: {{type: openai, model: m, base_url: {PASTED_KEY}}}\n", "providers.openai.base_url"),
    (f"providers:\n  openai: {{type: openai, model: m, base_url: 'http://h:{PASTED_KEY}'}}\n",
     "providers.openai.base_url"),
    (f"providers:\n  openai: {{type: {PASTED_KEY}, model: m}}\n", "providers.openai.type"),
    (f"providers:\n  openai: {{type: openai, model: m, forward_headers: ['{PASTED_KEY}:']}}\n",
     "providers.openai.forward_headers[0]"),
    (f"providers:\n  openai: {{type: openai, model: m, {PASTED_KEY}: 1}}\n", "providers.openai.<hidden>"),
    (f"providers:\n  openai: {{type: openai, model: m}}\nprovider_preference: [{PASTED_KEY}]\n",
     "provider_preference[0]"),
    (f"providers:\n  openai: {{type: openai, model: m}}\nserver: {{host: {PASTED_KEY}}}\n", "server.host"),
    (f"providers:\n  openai: {{type: openai, model: m}}\nroutes: [{{path: {PASTED_KEY}}}]\n", "routes[0].path"),
])
def test_a_key_pasted_into_the_wrong_field_is_never_quoted(yaml_text, path):
    found = errors(yaml_text)
    assert path in found
    shown = "\n".join(f"{where}: {message}" for where, message in found.items())
    assert "Zx81fQk29" not in shown  # not even its beginning


def test_ordinary_wrong_values_are_still_quoted():
    assert "'opnai'" in errors("providers:\n  openai: {type: opnai, model: m}\n")["providers.openai.type"]
