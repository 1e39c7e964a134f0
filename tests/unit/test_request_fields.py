"""Issue #17, "a silent drop is a bug": every OpenAI request field, fed to every translator.

Each field is set alone (to a value that asks for something) on a plain request, and the
translator's answer is classified: refused (a 400 naming the field), mapped (the provider's
body changed) or dropped (listed in ``ProviderRequest.dropped``). A field whose value
vanished without any of the three is a silent drop, and fails here. The expected outcome of
each field x provider is the translator's ``FieldRules`` (``ext_proc/translators/params.py``),
which docs/providers.md tabulates (``test_the_docs_table_is_the_rules`` keeps them the same).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ext_proc.errors import GatewayError
from ext_proc.translators import TRANSLATORS, anthropic_request, ollama
from ext_proc.translators.params import CHAT_FIELDS, DEFAULTS, EMBEDDINGS_FIELDS, FieldRules, asks
from tests.translator_helpers import client_request, make_provider, user

REPO = Path(__file__).resolve().parents[2]
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
OTHER_TOOL = {"type": "function", "function": {"name": "g", "parameters": {"type": "object", "properties": {}}}}
# field -> (what the request holds besides it, a value that asks for something).
# ``model`` is not among them: it picks the provider, whose own model name is sent.
CHAT_VALUES: dict[str, tuple[dict[str, Any], Any]] = {
    "messages": ({}, [user("hi"), user("again")]),
    "frequency_penalty": ({}, 0.5), "presence_penalty": ({}, -0.5), "logit_bias": ({}, {"50256": -100}),
    "logprobs": ({}, True), "top_logprobs": ({}, 2), "max_tokens": ({}, 50), "max_completion_tokens": ({}, 60),
    "n": ({}, 2), "seed": ({}, 7), "stop": ({}, ["END"]), "stream": ({}, True),
    "stream_options": ({"stream": True}, {"include_usage": True}),
    "temperature": ({}, 0.5), "top_p": ({}, 0.5), "tools": ({}, [TOOL]),
    "tool_choice": ({"tools": [TOOL, OTHER_TOOL]}, "none"),
    "parallel_tool_calls": ({"tools": [TOOL]}, False), "functions": ({}, [TOOL["function"]]),
    "function_call": ({"functions": [TOOL["function"], OTHER_TOOL["function"]]}, "none"),
    "user": ({}, "ada"), "safety_identifier": ({}, "ada-hash"), "response_format": ({}, {"type": "json_object"}),
    "reasoning_effort": ({}, "low"), "service_tier": ({}, "flex"), "store": ({}, True),
    "metadata": ({}, {"team": "a"}), "modalities": ({}, ["text", "audio"]),
    "audio": ({}, {"voice": "alloy", "format": "wav"}), "prediction": ({}, {"type": "content", "content": "x"}),
    "web_search_options": ({}, {}), "verbosity": ({}, "low"), "prompt_cache_key": ({}, "k"),
    "prompt_cache_retention": ({}, "24h"),
}
# A field no rule names (vendor extensions, fields OpenAI adds later): dropped and reported.
UNKNOWN = "top_k"
CHAT_RULES: dict[str, FieldRules] = {"anthropic": anthropic_request.CHAT_RULES, "ollama": ollama.CHAT_RULES}


def provider(type_: str):
    return make_provider(type_, "p", "m", "http://provider", api_key="", base_path="")


def translate(type_: str, body: dict[str, Any], handler: str = "chat"):
    """The provider request for ``body`` (stream as ``body["stream"]`` says)."""
    req = client_request("m", body, stream=bool(body.get("stream")), handler=handler)
    return TRANSLATORS[type_].request(req, provider(type_))


def outcome(type_: str, field: str, base: dict[str, Any], value: Any, handler: str = "chat") -> str:
    """refused / dropped / mapped / SILENT, for ``field`` set to ``value`` on ``base``."""
    try:
        without = translate(type_, base, handler)
    except GatewayError:  # a base the provider refuses (Ollama: legacy functions): the field alone
        base = {k: v for k, v in base.items() if k in ("messages", "input")}
        without = translate(type_, base, handler)
    try:
        with_field = translate(type_, {**base, field: value}, handler)
    except GatewayError as err:
        assert err.status == 400 and err.param == field, (err.param, err.message)
        return "refused"
    if field in with_field.dropped:
        assert with_field.dropped == tuple(sorted(set(without.dropped) | {field}))
        return "dropped"
    changed = json.loads(with_field.body) != json.loads(without.body)
    return "mapped" if changed or _answer_changed(type_, base, field, value) else "SILENT"


def _answer_changed(type_: str, base: dict[str, Any], field: str, value: Any) -> bool:
    """A field the response stage maps: the usage chunk a stream's client asked for."""
    before, after = (TRANSLATORS[type_].response(client_request("m", b, stream=bool(b.get("stream"))), provider(type_))
                     for b in (base, {**base, field: value}))
    return before.include_usage != after.include_usage  # type: ignore[union-attr]


def expected(rules: FieldRules, field: str) -> str:
    return "mapped" if field in rules.mapped else "refused" if field in rules.refused else "dropped"


def test_every_chat_field_has_a_value_here_and_a_decision_per_provider():
    assert set(CHAT_VALUES) == set(CHAT_FIELDS) - {"model"}
    for rules in CHAT_RULES.values():
        decided = [rules.mapped, set(rules.refused), rules.dropped]
        assert sorted(f for group in decided for f in group) == sorted(CHAT_FIELDS)


@pytest.mark.parametrize("type_", sorted(CHAT_RULES))
@pytest.mark.parametrize("field", [*CHAT_VALUES, UNKNOWN])
def test_a_chat_field_is_mapped_refused_or_reported_never_lost(type_, field):
    base, value = CHAT_VALUES.get(field, ({}, 5))
    base = {"messages": [user("hi")], **base}
    assert outcome(type_, field, base, value) == expected(CHAT_RULES[type_], field)


@pytest.mark.parametrize("type_", sorted(CHAT_RULES))
@pytest.mark.parametrize("field", [f for f in CHAT_FIELDS if f in DEFAULTS])
def test_a_field_at_its_default_asks_for_nothing_and_is_not_reported(type_, field):
    out = translate(type_, {"messages": [user("hi")], field: DEFAULTS[field]})
    assert out.dropped == ()


def test_the_openai_translator_sends_every_field_and_drops_none():
    body = {UNKNOWN: 5, **{f: v for f, (_, v) in CHAT_VALUES.items()}}
    out = translate("openai", body)
    assert out.dropped == ()
    assert {k: v for k, v in json.loads(out.body).items() if k not in ("model", "stream_options")} == \
        {k: v for k, v in body.items() if k != "stream_options"}


# encoding_format is the response stage's (it packs the vectors as base64): test_translator_ollama.py.
@pytest.mark.parametrize("field, value, expected_outcome", [
    ("dimensions", 256, "mapped"), ("user", "ada", "dropped"), (UNKNOWN, 5, "dropped")])
def test_ollama_embeddings_fields(field, value, expected_outcome):
    assert set(EMBEDDINGS_FIELDS) == ollama.EMBEDDINGS_RULES.mapped | ollama.EMBEDDINGS_RULES.dropped
    assert outcome("ollama", field, {"input": "hi"}, value, handler="embeddings") == expected_outcome


# ---------------------------------------------------------------- any mix of fields


SETTABLE = [f for f in CHAT_FIELDS if f not in ("messages", "model", "stream", "stream_options")]


@pytest.mark.parametrize("type_", sorted(CHAT_RULES))
@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fields=st.sets(st.sampled_from([*SETTABLE, UNKNOWN]), max_size=8))
def test_any_mix_is_refused_for_a_refused_field_or_reports_exactly_the_dropped_ones(type_, fields):
    rules = CHAT_RULES[type_]
    body: dict[str, Any] = {"messages": [user("hi")]}
    for field in sorted(fields):
        base, value = CHAT_VALUES.get(field, ({}, 5))
        body.update({**base, field: value})
    set_fields = {f for f, v in body.items() if asks(f, v)}
    refused = set_fields & set(rules.refused)
    try:
        out = translate(type_, body)
    except GatewayError as err:
        # A refused field is checked first; without one, a combination may be a 400 of its own
        # (thinking with a temperature, tools with legacy functions): nothing is dropped then.
        assert err.param in refused or not refused
        return
    assert not refused
    dropped = {f for f in set_fields if f not in rules.mapped}
    if type_ == "ollama" and body.get("tool_choice") not in (None, "none", "auto"):
        dropped.add("tool_choice")  # a forced call Ollama cannot express
    assert out.dropped == tuple(sorted(dropped))


# ---------------------------------------------------------------- the docs say the same


def _docs_table() -> dict[str, dict[str, str]]:
    """docs/providers.md's request table: field -> provider type -> its cell's first word."""
    text = (REPO / "docs" / "providers.md").read_text()
    section = text.split("### Request fields", 1)[1].split("\n### ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    table = {}
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        field = re.match(r"`([^`]+)`", cells[0])
        assert field, row
        table[field[1]] = {t: cells[i + 2].split()[0].strip("*,:").lower()
                           for i, t in enumerate(("anthropic", "ollama"))}
        assert cells[1].split()[0].strip("*,:").lower() == "sent", row  # OpenAI: as the client sent it
    return table


def test_the_docs_table_is_the_rules():
    table = _docs_table()
    assert set(table) == set(CHAT_FIELDS)
    for field, cells in table.items():
        for type_, rules in CHAT_RULES.items():
            assert cells[type_] == expected(rules, field), (field, type_)
