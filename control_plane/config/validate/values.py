"""Reading one value of a kind (mapping, list, string, integer, duration, ...),
and the messages that describe a wrong one without echoing a secret.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from control_plane.config.env import _Expanded
from control_plane.config.errors import _Issues, _join

# A run of 20 letters and digits mixing both: what API keys, tokens and hex
# secrets look like, and no model name, URL, path or header name does.
_KEY_LIKE = re.compile(r"[A-Za-z0-9]{20,}")
HIDDEN = "a value that looks like a credential (not shown)"


def _looks_like_a_secret(text: str) -> bool:
    return any(re.search(r"\d", run) and re.search(r"[A-Za-z]", run) for run in _KEY_LIKE.findall(text))


def _quote(text: str) -> str:
    """A string as a message may show it: an API key pasted into the wrong field is
    still an API key, and these messages reach logs and ``/health``; a value from
    the environment is shown by its reference."""
    if isinstance(text, _Expanded):
        return repr(text.template)
    if _looks_like_a_secret(text):
        return HIDDEN
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _describe(value: object, *, secret: bool = False) -> str:
    """How a wrong value is shown in a message: its kind, and its text unless secret."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        kind, text = "boolean", str(value).lower()
    elif isinstance(value, int):
        kind, text = "integer", str(value)
    elif isinstance(value, float):
        kind, text = "number", str(value)
    elif isinstance(value, _Expanded):
        kind, text = "string", f"from {value.template!r}"
    elif isinstance(value, str):
        kind, text = "string", _quote(value)
    elif isinstance(value, dict):
        return "a mapping"
    elif isinstance(value, list):
        return "a list"
    else:
        return type(value).__name__
    return kind if secret else f"{kind} {text}"


def _expected(what: str, value: object, *, secret: bool = False) -> str:
    return f"expected {what}, got {_describe(value, secret=secret)}"


def _suggestion(word: str, choices: Sequence[str]) -> str | None:
    matches = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return matches[0] if matches else None


def _not_one_of(kind: str, value: str, choices: Sequence[str], *, suggest: bool = True) -> str:
    message = f"unknown {kind} {_quote(value)} (expected one of: {', '.join(choices)})"
    close = _suggestion(value, choices) if suggest else None
    return f"{message}; did you mean {close!r}?" if close else message


def _reject_unknown_keys(node: Mapping[Any, Any], path: str, allowed: Sequence[str], issues: _Issues) -> None:
    for key in node:
        if not isinstance(key, str):
            issues.error(_join(path, key), _expected("a string key", key))
        elif key not in allowed:
            close = _suggestion(key, allowed)
            hint = f"did you mean {close!r}?" if close else f"expected one of: {', '.join(allowed)}"
            where = _join(path, "<hidden>" if _looks_like_a_secret(key) else key)  # a key path is shown too
            issues.error(where, f"unknown key {_quote(key)} ({hint})")


def _mapping(value: Any, path: str, issues: _Issues) -> dict[Any, Any] | None:
    if isinstance(value, dict):
        return value
    issues.error(path, _expected("a mapping", value))
    return None


def _list(value: Any, path: str, issues: _Issues) -> list[Any] | None:
    if isinstance(value, list):
        return value
    issues.error(path, _expected("a list", value))
    return None


def _string(value: Any, path: str, issues: _Issues, *, secret: bool = False) -> str | None:
    if isinstance(value, str):
        return str(value)  # a plain str: _Expanded's bookkeeping stays in this package
    issues.error(path, _expected("a string", value, secret=secret))
    return None


def _text(value: Any, path: str, issues: _Issues) -> str | None:
    """A string that must say something."""
    text = _string(value, path, issues)
    if text is not None and not text.strip():
        issues.error(path, "must not be empty")
        return None
    return text


def _required(node: Mapping[str, Any], key: str, path: str, issues: _Issues) -> Any:
    # An explicit null counts as absent: `model:` with nothing after it is a missing model.
    value = node.get(key)
    if value is None:
        issues.error(_join(path, key), "is required")
    return value


def _integer(value: Any, path: str, issues: _Issues) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, _Expanded) and re.fullmatch(r"[+-]?\d+", value.strip()):
        return int(value)  # from the environment, where every value is a string
    issues.error(path, _expected("an integer", value))
    return None


def _positive_integer(value: Any, path: str, default: int, issues: _Issues) -> int:
    number = _integer(value, path, issues)
    if number is None:
        return default
    if number < 1:
        issues.error(path, f"must be at least 1, got {number}")
        return default
    return number


_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h))+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _duration(value: Any, path: str, default: float, issues: _Issues) -> float:
    seconds = _seconds(value)
    if seconds is None:
        issues.error(path, _expected("a number of seconds or a duration such as '30s', '500ms' or '1m30s'", value))
    elif not (0 < seconds < math.inf):
        issues.error(path, f"must be a positive, finite number of seconds, got {_describe(value)}")
    else:
        return seconds
    return default


def _seconds(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        try:
            return float(value)
        except OverflowError:  # a YAML integer beyond float range
            return math.inf
    if isinstance(value, _Expanded) and re.fullmatch(r"\d+(?:\.\d+)?", value.strip()):
        return float(value)  # a bare number from the environment means seconds
    if isinstance(value, str) and _DURATION.fullmatch(value.strip()):
        return sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(value))
    return None


def _server_url(value: Any, path: str, schemes: Sequence[str], otherwise: str, issues: _Issues) -> str:
    """A server's URL of one of ``schemes`` (a store: Redis, PostgreSQL); "" when wrong or absent.

    Its message never shows the URL: it may hold a password."""
    text = _string(value, path, issues, secret=True)
    if text is None:
        return ""
    scheme = urlsplit(text).scheme
    if scheme not in schemes:
        expected = " or ".join(f"{s}://" for s in schemes)
        issues.error(path, f"expected a {expected} URL ({otherwise}), got a {scheme or 'scheme-less'} value")
        return ""
    return text

