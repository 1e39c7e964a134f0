"""ext_proc's side of several models per provider: the chain a request of each family takes, and the
model (and price) each attempt's provider is sent, read from the runtime the control plane builds."""

from __future__ import annotations

import json
import textwrap

import pytest

from control_plane.config import parse_config
from control_plane.plan import make_plan
from control_plane.resources.runtime import runtime
from ext_proc import client_request
from ext_proc.errors import GatewayError
from ext_proc.runtime import RuntimeView
from ext_proc.steps.router import RouterStep

CONFIG = """\
providers:
  claude: {type: anthropic, model: claude-3-haiku, api_key: sk-b}
  openai:
    type: openai
    model: gpt-4o-mini
    api_key: sk-a
    aliases: [fast]
    models:
      text-embedding-3-small: {handler: embeddings}
      gpt-4o: {}
provider_preference: [claude, openai]
"""


@pytest.fixture(scope="module")
def view() -> RuntimeView:
    plan = make_plan(parse_config(textwrap.dedent(CONFIG), env={}))
    return RuntimeView.from_proto(runtime(plan, "v1"), frozenset({"openai", "anthropic"}))


def chain(view: RuntimeView, handler: str, model: str | None) -> str:
    body: dict = {"input": "x"} if handler == "embeddings" else {"messages": [{"role": "user", "content": "x"}]}
    if model is not None:
        body["model"] = model
    return RouterStep(view).chain_for(client_request.parse(handler, json.dumps(body).encode())).cluster


@pytest.mark.parametrize(("handler", "expected"), [
    ("chat", "chain.claude"), ("completion", "chain.claude"), ("embeddings", "chain.openai.embeddings")])
def test_auto_takes_the_first_provider_serving_the_requests_family(view, handler, expected):
    assert chain(view, handler, "auto") == chain(view, handler, None) == expected


def test_a_listed_model_takes_its_providers_chain_of_its_family(view):
    assert chain(view, "chat", "gpt-4o") == chain(view, "chat", "fast") == "chain.openai"
    assert chain(view, "embeddings", "text-embedding-3-small") == "chain.openai.embeddings"


@pytest.mark.parametrize(("handler", "model", "message"), [
    ("chat", "text-embedding-3-small",
     "The model 'text-embedding-3-small' is an embeddings model: it does not serve chat requests."),
    ("embeddings", "claude-3-haiku",
     "The model 'claude-3-haiku' is a chat model: it does not serve embeddings requests."),
])
def test_a_model_of_the_other_family_is_a_400(view, handler, model, message):
    with pytest.raises(GatewayError) as raised:
        chain(view, handler, model)
    assert (raised.value.status, raised.value.code, raised.value.message) == (400, "model_not_supported", message)


def test_an_unknown_model_lists_the_models_of_the_requests_family(view):
    with pytest.raises(GatewayError) as raised:
        chain(view, "embeddings", "nope")
    assert raised.value.status == 404
    assert raised.value.message.endswith("Available models: text-embedding-3-small (or 'auto').")


def test_an_attempt_is_sent_the_named_model_if_its_provider_serves_it_for_the_family(view):
    openai = view.providers["openai"]
    assert openai.serving("chat", "gpt-4o").model == "gpt-4o"
    assert openai.serving("embeddings", "text-embedding-3-small").model == "text-embedding-3-small"
    # auto, an alias, another provider's model (on failover): the provider's first model of the family.
    assert openai.serving("chat", None).model == openai.serving("chat", "fast").model == "gpt-4o-mini"
    assert openai.serving("chat", "claude-3-haiku").model == "gpt-4o-mini"
    assert openai.serving("embeddings", None).model == "text-embedding-3-small"
    assert openai.serving("embeddings", "gpt-4o").model == "text-embedding-3-small"  # not a chat model


def test_the_price_counted_is_the_price_of_the_model_sent(view):
    openai = view.providers["openai"]
    assert openai.price == (0.15, 0.6)  # gpt-4o-mini, the built-in table
    assert openai.serving("chat", "gpt-4o").price == (2.5, 10.0)
    assert openai.serving("embeddings", None).price == (0.02, 0.0)


def test_models_lists_every_model_name_once(view):
    listed = [(m["id"], m["owned_by"]) for m in json.loads(view.models_json)["data"]]
    assert sorted(listed) == [("claude-3-haiku", "claude"), ("fast", "openai"), ("gpt-4o", "openai"),
                              ("gpt-4o-mini", "openai"), ("text-embedding-3-small", "openai")]


def test_a_gateway_serving_only_embeddings_answers_chat_with_a_404_naming_the_family():
    plan = make_plan(parse_config("providers:\n  e: {type: openai, model: emb, models: {emb: {handler: embeddings}}}\n",
                                  env={}))
    view = RuntimeView.from_proto(runtime(plan, "v1"), frozenset({"openai"}))
    assert chain(view, "embeddings", None) == "chain.e.embeddings"
    with pytest.raises(GatewayError) as raised:
        chain(view, "chat", "auto")
    assert (raised.value.status, raised.value.message) == (404, "No provider of this gateway serves chat requests.")
