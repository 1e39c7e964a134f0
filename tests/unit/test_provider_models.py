"""One provider, several models: ``models:`` in the config, and the chains and owners the plan makes of it."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from control_plane.config import ConfigError, HapaxConfig, parse_config
from control_plane.config.validate.providers import _MODEL_KEYS, _PROVIDER_KEYS
from control_plane.plan import make_plan

ONE_ACCOUNT = """\
providers:
  openai:
    type: openai
    model: gpt-4o-mini
    api_key: sk-a
    aliases: [fast]
    models:
      text-embedding-3-small: {handler: embeddings}
      gpt-4o: {}
"""


def parse(text: str) -> HapaxConfig:
    return parse_config(textwrap.dedent(text), env={})


def errors(text: str) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        parse(text)
    return {issue.path: issue.message for issue in caught.value.issues}


def provider_with_models(models: str, kind: str = "openai") -> str:
    return f"providers:\n  p: {{type: {kind}, model: m, models: {models}}}\n"


# --------------------------------------------------------------------------- the config


def test_models_lists_what_a_provider_serves_with_model_first_as_a_chat_model():
    models = parse(ONE_ACCOUNT).providers["openai"].models
    assert dict(models) == {"gpt-4o-mini": ("chat",), "text-embedding-3-small": ("embeddings",), "gpt-4o": ("chat",)}


def test_a_provider_without_models_serves_its_model_for_every_family_its_type_serves():
    config = parse("""
        providers:
          openai: {type: openai, model: gpt-4o-mini}
          claude: {type: anthropic, model: claude-3-haiku}
    """)
    assert dict(config.providers["openai"].models) == {"gpt-4o-mini": ("chat", "embeddings")}
    assert dict(config.providers["claude"].models) == {"claude-3-haiku": ("chat",)}  # Anthropic has no embeddings


def test_model_listed_in_models_takes_the_handler_given_there():
    provider = parse(provider_with_models("{m: {handler: embeddings}, chat-model: {}}")).providers["p"]
    assert dict(provider.models) == {"m": ("embeddings",), "chat-model": ("chat",)}
    assert (provider.default_model("chat"), provider.default_model("embeddings")) == ("chat-model", "m")


def test_a_models_entry_may_be_empty_meaning_a_chat_model():
    assert dict(parse(provider_with_models("{other: }")).providers["p"].models) == {"m": ("chat",), "other": ("chat",)}


@pytest.mark.parametrize(("models", "path", "message"), [
    ("[a, b]", "providers.p.models", "expected a mapping, got a list"),
    ("{}", "providers.p.models", "must list at least one model (omit the key to serve 'model' alone)"),
    ("{a: {handler: chatt}}", "providers.p.models.a.handler",
     "unknown handler 'chatt' (expected one of: chat, embeddings); did you mean 'chat'?"),
    ("{a: {handler: completion}}", "providers.p.models.a.handler",
     "the gateway sends a legacy completion to providers as a chat, so a chat model serves both: use handler: chat"),
    ("{a: {handler: 3}}", "providers.p.models.a.handler", "expected a string, got integer 3"),
    ("{a: {handlr: chat}}", "providers.p.models.a.handlr", "unknown key 'handlr' (did you mean 'handler'?)"),
    ("{a: embeddings}", "providers.p.models.a", "expected a mapping, got string 'embeddings'"),
    ("{3: {}}", "providers.p.models.3", "model names must be non-empty strings, got integer 3"),
])
def test_invalid_models_are_reported_at_their_key(models, path, message):
    assert errors(provider_with_models(models)) == {path: message}


def test_an_anthropic_provider_cannot_list_an_embeddings_model():
    assert errors(provider_with_models("{e: {handler: embeddings}}", kind="anthropic")) == {
        "providers.p.models.e.handler": "a provider of type anthropic serves no embeddings: its API has none"}


def test_a_name_cannot_be_both_an_alias_and_a_listed_model():
    found = errors("providers:\n  p: {type: openai, model: m, aliases: [fast], models: {fast: {}}}\n")
    assert found == {"providers.p.models.fast": "'fast' is also one of this provider's aliases (another name for "
                                                "its 'model'); list it in one place"}


# --------------------------------------------------------------------------- the plan


TWO_PROVIDERS = ONE_ACCOUNT + """\
  claude: {type: anthropic, model: claude-3-haiku, api_key: sk-b}
  local:
    type: ollama
    model: llama3.2
    models: {nomic-embed-text: {handler: embeddings}}
provider_preference: [claude, openai, local]
"""


def test_every_listed_model_goes_to_its_provider_in_its_family():
    plan = make_plan(parse(ONE_ACCOUNT))
    owned = {(m.name, m.family): (m.owner, m.chain.cluster) for m in plan.models}
    assert owned == {("gpt-4o-mini", "chat"): ("openai", "chain.openai"), ("fast", "chat"): ("openai", "chain.openai"),
                     ("gpt-4o", "chat"): ("openai", "chain.openai"),
                     ("text-embedding-3-small", "embeddings"): ("openai", "chain.openai")}


def test_a_chain_holds_only_providers_serving_its_family():
    plan = make_plan(parse(TWO_PROVIDERS))
    chat = {first: chain.providers for first, chain in plan.family_chains["chat"].items()}
    embeddings = {first: chain.providers for first, chain in plan.family_chains["embeddings"].items()}
    assert chat == {"claude": ("claude", "openai", "local"), "openai": ("openai", "claude", "local"),
                    "local": ("local", "claude", "openai")}
    # Claude has no embeddings model: an embeddings request never fails over to it.
    assert embeddings == {"openai": ("openai", "local"), "local": ("local", "openai")}
    assert plan.family_chains["embeddings"]["openai"].cluster == "chain.openai.embeddings"


def test_auto_takes_the_preference_order_of_the_requests_family():
    plan = make_plan(parse(TWO_PROVIDERS))
    auto = {family: chain.providers for family, chain in plan.auto_chains.items()}
    # Claude goes first for chat; the first provider serving embeddings goes first for them.
    assert auto == {"chat": ("claude", "openai", "local"), "embeddings": ("openai", "local")}
    assert plan.default_chain is plan.auto_chains["chat"]


def test_an_embeddings_chain_equal_to_the_chat_chain_is_the_same_cluster():
    # Every provider serves both families: the chains (and clusters) a config has always had.
    plan = make_plan(parse("""
        providers:
          a: {type: openai, model: m1}
          b: {type: ollama, model: m2}
    """))
    assert list(plan.chains) == ["chain.a", "chain.b"]
    assert plan.family_chains["embeddings"]["a"] == plan.family_chains["chat"]["a"]


def test_every_openai_model_of_a_provider_takes_the_passthrough_lane_of_its_family():
    config = parse(ONE_ACCOUNT + "routes:\n  - {path: /v1/chat/completions, handler: chat}\n"
                   "  - {path: /v1/embeddings, handler: embeddings}\n")
    lanes = {lane.model: (lane.family, lane.cluster, lane.providers) for lane in make_plan(config).lane_models}
    # Not the alias: its body must be rewritten. Both chat models share the chat chain's lane cluster.
    assert lanes == {"gpt-4o-mini": ("chat", "lane.openai", ("openai",)),
                     "gpt-4o": ("chat", "lane.openai", ("openai",)),
                     "text-embedding-3-small": ("embeddings", "lane.openai", ("openai",))}


def test_a_lane_provider_must_serve_the_model_itself_for_its_family():
    config = parse("""
        providers:
          a: {type: openai, model: gpt-4o-mini, models: {gpt-4o: {}}}
          b: {type: openai, model: gpt-4o-mini}
        routes:
          - {path: /v1/chat/completions, handler: chat}
        default_routes: false
    """)
    lanes = {lane.model: (lane.cluster, lane.providers) for lane in make_plan(config).lane_models}
    # b does not serve gpt-4o: an attempt there leaves the lane and is translated (sent gpt-4o-mini).
    assert lanes == {"gpt-4o-mini": ("lane.a", ("a", "b")), "gpt-4o": ("lane.a.2", ("a",))}


def test_every_provider_and_model_key_is_documented():
    doc = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    assert [key for key in (*_PROVIDER_KEYS, *_MODEL_KEYS) if f"`{key}`" not in doc] == []
    assert "### models" in doc
