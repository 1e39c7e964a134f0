"""Hostile JSON bodies are the client's 400, named, before any provider (issue #18)."""

from __future__ import annotations

import pytest

from ext_proc import client_request
from ext_proc.errors import GatewayError

HEAD = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], '


def refusal(body: bytes) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        client_request.parse("chat", body)
    assert caught.value.status == 400
    return caught.value


@pytest.mark.parametrize("digits", [client_request.MAX_INT_DIGITS + 1, 5000])
def test_an_integer_of_too_many_digits_is_refused(digits: int) -> None:
    error = refusal(HEAD + b'"max_tokens": ' + b"7" * digits + b"}")
    assert error.code == "invalid_value"
    assert f"{digits} digits" in error.message


def test_an_integer_of_the_most_digits_is_read() -> None:
    body = HEAD + b'"metadata": {"n": -' + b"9" * client_request.MAX_INT_DIGITS + b"}}"
    assert client_request.parse("chat", body).body["metadata"]["n"] < 0


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinity_literals_are_refused(literal: bytes) -> None:
    error = refusal(HEAD + b'"temperature": ' + literal + b"}")
    assert error.code == "invalid_json"
    assert literal.decode().lstrip("-") in error.message


@pytest.mark.parametrize("number", [b"1e400", b"-1e400"])
def test_a_number_too_large_for_a_float_is_refused(number: bytes) -> None:
    error = refusal(HEAD + b'"temperature": ' + number + b"}")
    assert error.code == "invalid_value"
    assert "too large" in error.message


def test_ordinary_numbers_are_read() -> None:
    body = client_request.parse("chat", HEAD + b'"temperature": 1e-3, "max_tokens": 5}').body
    assert body["temperature"] == 0.001
    assert body["max_tokens"] == 5


@pytest.mark.parametrize("depth", [client_request.MAX_DEPTH, 1000, 100_000])
def test_json_nested_too_deeply_is_refused(depth: int) -> None:
    error = refusal(HEAD + b'"metadata": ' + b"[" * depth + b"]" * depth + b"}")
    assert error.code == "invalid_json"
    assert "nested too deeply" in error.message


def test_json_nested_within_the_bound_is_read() -> None:
    depth = client_request.MAX_DEPTH - 2  # the body and metadata are two levels
    client_request.parse("chat", HEAD + b'"metadata": ' + b"[" * depth + b"]" * depth + b"}")


@pytest.mark.parametrize("escape", [b"\\ud800", b"\\udfff", b"a\\udc00b"])
def test_a_lone_surrogate_is_refused(escape: bytes) -> None:
    error = refusal(b'{"model": "m", "messages": [{"role": "user", "content": "' + escape + b'"}]}')
    assert error.code == "invalid_json"
    assert "surrogate" in error.message


def test_a_surrogate_pair_is_read() -> None:
    body = b'{"model": "m", "messages": [{"role": "user", "content": "\\ud83d\\ude00"}]}'
    assert client_request.parse("chat", body).body["messages"][0]["content"] == "\U0001F600"
