"""docs/configuration.md documents exactly the keys the validator accepts.

The accepted keys come from the validator itself: every section it checks passes
its allowed keys to ``_reject_unknown_keys``, so a spy on that function, run over a
file that reaches every section, records each section's key path and keys. The
documented keys come from the reference's tables whose first column is ``key``,
each under the heading of its section. A key added to the validator without its
row, or a row left behind by a key that was removed, fails here.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import control_plane.config.validate as validate
from control_plane.config.errors import _Issues

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"

# A file that reaches every section and sub-section the validator walks. Its values
# need not be valid: the walk checks keys before values, and errors do not stop it.
FULL = {
    "server": {"port": 8080, "tls": {"cert_file": "x.pem"}, "http3": {"enabled": False}},
    "providers": {"p": {"type": "openai", "model": "m", "health_check": {"interval": 5},
                        "circuit_breaker": {"max_retries": 3}, "region": "eu"}},
    "health_check": {"interval": 10},
    "routes": [{"path": "/v1/x", "handler": "chat", "dedup": True}],
    "retry": {"backoff": {"base_interval": 1}},
    "pricing": {"m": {"input": 1, "output": 1}},
    "logging": {"level": "info"},
    "ext_proc": {"workers": 1},
    "control_plane": {"listen": "127.0.0.1:18000", "tls": {"cert_file": "x.pem"}},
    "clients": {"c": {"keys": [], "limits": {"budget": {"usd": 1}}}},
    "limits": {"departments": {"d": {"tokens_per_day": 1}}},
    "queue": {"timeout": 1},
    "ledger": {"retention_days": 1},
    "experiments": {"e": {"model": "m", "variants": {"a": {"provider": "p", "weight": 1}}}},
    "regions": {"home": "eu", "geoip": {"database": "x.mmdb"}},
}

# Sections whose keys are names the user chooses, as the reference writes them.
NAMED = {"providers": "<name>", "pricing": "<model>", "clients": "<name>", "limits.departments": "<name>",
         "experiments": "<name>", "experiments.<name>.variants": "<name>"}

# Sections the reference documents once for two places: a provider's health_check
# overrides the top-level one key by key, with the same keys.
SAME_AS = {"providers.<name>.health_check": "health_check",
           "limits.departments.<name>": "clients.<name>.limits"}

# Headings that document a section but are not its key path.
HEADING_PATHS = {"Top-level keys": "", "Variants": "experiments.<name>.variants.<name>"}
# The key path of each item of a section that is a mapping of names or a list.
ITEM_PATHS = {"providers": "providers.<name>", "pricing": "pricing.<model>", "routes": "routes[]",
              "clients": "clients.<name>", "experiments": "experiments.<name>"}


def _validate_modules() -> Iterator[ModuleType]:
    yield validate
    for info in pkgutil.iter_modules(validate.__path__):
        yield importlib.import_module(f"{validate.__name__}.{info.name}")


def _key_path(path: str) -> str:
    """``providers.p.health_check`` -> ``providers.<name>.health_check``; ``routes[0]`` -> ``routes[]``."""
    path = re.sub(r"\[\d+\]", "[]", path)
    parts = path.split(".") if path else []
    for section, placeholder in NAMED.items():
        prefix = section.split(".")
        if len(parts) > len(prefix) and parts[:len(prefix)] == prefix:
            parts[len(prefix)] = placeholder
    return ".".join(parts)


def _walk(monkeypatch: pytest.MonkeyPatch, data: Mapping[str, Any] = FULL) -> dict[str, tuple[str, ...]]:
    """Each section the validator checks -> the keys it accepts there."""
    sections: dict[str, tuple[str, ...]] = {}

    def spy(original: Any) -> Any:
        def record(node: Any, path: str, allowed: Sequence[str], issues: _Issues) -> None:
            sections[_key_path(path)] = tuple(allowed)
            original(node, path, allowed, issues)
        return record

    for module in _validate_modules():
        if hasattr(module, "_reject_unknown_keys"):
            monkeypatch.setattr(module, "_reject_unknown_keys", spy(module._reject_unknown_keys))
    validate._build(dict(data), "<string>", _Issues())
    return sections


def accepted_keys(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    return {f"{section}.{key}" if section else key
            for section, keys in _walk(monkeypatch).items() for key in keys}


def _headings_and_tables(text: str) -> Iterator[tuple[str, str, list[str]]]:
    """(the ## heading, the nearest heading, first cells) for each table whose first column is ``key``."""
    h2 = nearest = ""
    lines = text.splitlines()
    in_code = False
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (match := re.match(r"(#{2,4}) (.+)", line)):
            nearest = match.group(2).strip()
            if match.group(1) == "##":
                h2 = nearest
        elif not in_code and re.match(r"\|\s*key\s*\|", line):
            cells = []
            i += 2  # the header and its |---| line
            while i < len(lines) and lines[i].startswith("|"):
                cells.append(lines[i].split("|")[1])
                i += 1
            yield h2, nearest, cells
            continue
        i += 1


def _section_path(h2: str, heading: str) -> str:
    if heading in HEADING_PATHS:
        return HEADING_PATHS[heading]
    if not re.fullmatch(r"[a-z_][a-z0-9_.]*", heading):
        raise AssertionError(f"a key table under {heading!r}, which is not a key path: "
                             "name the heading after its section or add it to HEADING_PATHS")
    if heading == h2 or heading.startswith(h2 + "."):
        return ITEM_PATHS.get(heading, heading)
    return f"{ITEM_PATHS.get(h2, h2)}.{heading}"  # a sub-section of the ## section


def documented_keys(text: str) -> set[str]:
    """Every key path a row of the reference's key tables names. A cell may name several
    keys, and a row for ``backoff.base_interval`` documents ``backoff`` too."""
    keys = set()
    for h2, heading, cells in _headings_and_tables(text):
        section = _section_path(h2, heading)
        for cell in cells:
            for name in re.findall(r"`([^`]+)`", cell):
                parts = name.split(".")
                for end in range(1, len(parts) + 1):
                    key = ".".join(parts[:end])
                    keys.add(f"{section}.{key}" if section else key)
    return keys


def _as_documented(key: str) -> str:
    for section, documented_as in SAME_AS.items():
        if key.startswith(section + "."):
            return documented_as + key[len(section):]
    return key


def undocumented(accepted: set[str], documented: set[str]) -> set[str]:
    return {key for key in accepted if _as_documented(key) not in documented}


def test_every_key_the_validator_accepts_has_a_row_in_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    missing = undocumented(accepted_keys(monkeypatch), documented_keys(REFERENCE.read_text()))
    assert not missing, f"docs/configuration.md has no table row for: {sorted(missing)}"


def test_every_key_the_reference_lists_is_accepted_by_the_validator(monkeypatch: pytest.MonkeyPatch) -> None:
    accepted = accepted_keys(monkeypatch)
    extra = {key for key in documented_keys(REFERENCE.read_text()) if key not in accepted}
    assert not extra, f"docs/configuration.md lists keys the validator refuses: {sorted(extra)}"


def test_the_walk_reaches_every_key_tuple_of_the_validator(monkeypatch: pytest.MonkeyPatch) -> None:
    """A section FULL does not reach would escape the other tests: each ``_..._KEYS``
    tuple must be accepted, whole, in some section the walk reached."""
    reached = [set(keys) for keys in _walk(monkeypatch).values()]
    tuples = {f"{module.__name__}.{name}": value
              for module in _validate_modules() for name, value in vars(module).items()
              if re.fullmatch(r"_\w*KEYS", name) and isinstance(value, tuple)}
    assert tuples, "found no _..._KEYS tuples in control_plane.config.validate"
    unreached = [name for name, keys in tuples.items() if not any(set(keys) <= seen for seen in reached)]
    assert not unreached, f"FULL in this test does not reach the sections of {unreached}: add them to it"


def test_a_key_added_to_the_validator_without_a_row_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    server = importlib.import_module("control_plane.config.validate.server")
    providers = importlib.import_module("control_plane.config.validate.providers")
    monkeypatch.setattr(server, "_SERVER_KEYS", (*server._SERVER_KEYS, "brand_new"))
    monkeypatch.setattr(providers, "_HEALTH_CHECK_KEYS", (*providers._HEALTH_CHECK_KEYS, "jitter"))
    missing = undocumented(accepted_keys(monkeypatch), documented_keys(REFERENCE.read_text()))
    assert missing == {"server.brand_new", "health_check.jitter", "providers.<name>.health_check.jitter"}


def test_a_row_for_a_key_the_validator_refuses_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    text = REFERENCE.read_text().replace("| `max_retries` |", "| `max_retries` |\n| `max_retires` | 1 | a typo |", 1)
    extra = documented_keys(text) - accepted_keys(monkeypatch)
    assert extra == {"providers.<name>.circuit_breaker.max_retires"}
