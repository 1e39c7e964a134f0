"""``${VAR}`` and ``${VAR:-default}`` expansion of the string values of a parsed file.

Expanded values are ``_Expanded`` strings, which remember the text as written
so that messages can name a variable instead of echoing a secret.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from control_plane.config.errors import _index, _Issues, _join

_REFERENCE = re.compile(r"\$(?:(?P<dollar>\$)|\{(?P<body>[^}]*)\}|(?P<open>\{))")
_REFERENCE_BODY = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>.*))?", re.DOTALL)


class _Expanded(str):
    """A string value that came (partly) from ``${VAR}`` references.

    It remembers the text as written and which variables came out empty, so
    that messages can name ``$OPENAI_API_KEY`` instead of echoing a value that
    may be a secret, and numeric fields can accept numbers from the
    environment (where everything is a string).
    """

    template: str
    empty_variables: tuple[str, ...]  # e.g. ("${OPENAI_API_KEY} is not set",)
    variables: tuple[str, ...]  # every variable referenced, e.g. ("OPENAI_API_KEY",)

    def __new__(cls, value: str, template: str, empty_variables: tuple[str, ...],
                variables: tuple[str, ...] = ()) -> _Expanded:
        self = super().__new__(cls, value)
        self.template = template
        self.empty_variables = empty_variables
        self.variables = variables
        return self


def _expand(value: Any, path: str, env: Mapping[str, str], issues: _Issues) -> Any:
    """Expand ``${VAR}`` in every string value of the tree (keys are names, not values)."""
    if isinstance(value, dict):
        return {key: _expand(item, _join(path, key), env, issues) for key, item in value.items()}
    if isinstance(value, list):
        return [_expand(item, _index(path, i), env, issues) for i, item in enumerate(value)]
    if isinstance(value, str) and "$" in value:
        return _expand_string(value, path, env, issues)
    return value


def _expand_string(template: str, path: str, env: Mapping[str, str], issues: _Issues) -> str:
    empty: list[str] = []
    names: list[str] = []

    def substitute(match: re.Match[str]) -> str:
        if match["dollar"]:
            return "$"
        body = None if match["open"] else _REFERENCE_BODY.fullmatch(match["body"])
        if body is None:
            # The reference is not echoed: it may sit inside a literal secret.
            issues.error(path, "invalid variable reference: expected ${NAME} or ${NAME:-default} "
                               "(write $$ for a literal $)")
            return match[0]
        names.append(body["name"])
        return _lookup(body["name"], body["default"], env, empty)

    value = _REFERENCE.sub(substitute, template)
    return _Expanded(value, template, tuple(empty), tuple(dict.fromkeys(names))) if names else value


def _lookup(name: str, default: str | None, env: Mapping[str, str], empty: list[str]) -> str:
    value = env.get(name)
    if value:
        return value
    if default is not None:  # like the shell's ${VAR:-default}: unset or empty
        return default
    # Written as a reference, so that it reads as the variable, never as a value.
    empty.append(f"${{{name}}} is not set" if value is None else f"${{{name}}} is empty")
    return ""
