"""The chat options the translators map (issue #17) are checked once, before any provider.

A malformed value is the client's 400 whichever provider would have served the
request, and before an attempt is spent on it.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from ext_proc import client_request
from ext_proc.errors import GatewayError

HELLO = [{"role": "user", "content": "hi"}]


def parse(**fields: Any) -> client_request.ClientRequest:
    return client_request.parse("chat", json.dumps({"model": "m", "messages": HELLO, **fields}).encode())


@pytest.mark.parametrize("fields", [
    {"reasoning_effort": "low"}, {"reasoning_effort": "none"}, {"reasoning_effort": "xhigh"},
    {"response_format": {"type": "text"}}, {"response_format": {"type": "json_object"}},
    {"response_format": {"type": "json_schema", "json_schema": {"name": "city", "schema": {"type": "object"}}}},
    {"functions": [{"name": "f", "parameters": {"type": "object"}}], "function_call": {"name": "f"}},
    {"functions": [{"name": "f"}], "function_call": "auto"},
    {"user": "ada@example.com", "safety_identifier": "a1b2"},
])
def test_well_formed_options_are_accepted(fields):
    assert parse(**fields).body["messages"] == HELLO


@pytest.mark.parametrize("fields, param", [
    ({"reasoning_effort": "max"}, "reasoning_effort"),
    ({"reasoning_effort": 3}, "reasoning_effort"),
    ({"response_format": "json"}, "response_format"),
    ({"response_format": {"type": "yaml"}}, "response_format"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}}, "response_format.json_schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": []}}},
     "response_format.json_schema"),
    ({"functions": {"name": "f"}}, "functions"),
    ({"functions": [{"description": "no name"}]}, "functions[0]"),
    ({"functions": [{"name": "f"}], "function_call": "always"}, "function_call"),
    ({"user": 42}, "user"),
    ({"safety_identifier": ["a"]}, "safety_identifier"),
])
def test_malformed_options_are_400s_before_any_provider(fields, param):
    with pytest.raises(GatewayError) as err:
        parse(**fields)
    assert err.value.status == 400 and err.value.param == param
