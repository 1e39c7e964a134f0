"""``hapax validate --config FILE``: the command a user runs before ``serve``.

Each test runs the real command in a subprocess and reads what a user would:
the exit code, stdout (one summary line) and stderr (warnings and errors, each
with its key path).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.seed import SEED_YAML

SECRET = "sk-test-SECRET-123"


def validate(config: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items()
            if k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "HAPAX_ENVOY")}
    return subprocess.run(
        [sys.executable, "-m", "hapax.cli", "validate", "--config", str(config), *extra],
        cwd=REPO, capture_output=True, text=True, timeout=120, env={**base, **(env or {})},
    )


def write(tmp_path: Path, text: str, name: str = "hapax.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


@pytest.fixture()
def seed(tmp_path) -> Path:
    return write(tmp_path, SEED_YAML)


# ---------------------------------------------------------------- valid files


def test_seed_example_is_valid_with_a_one_line_summary_and_key_warnings(seed):
    result = validate(seed)

    assert result.returncode == 0, result.stderr
    summary, *listed = lines(result.stdout)
    assert summary.startswith(f"{seed}: valid")
    assert "2 providers (anthropic, openai)" in summary
    assert "preference anthropic > openai" in summary
    assert "8 routes" in summary  # the department route and the seven standard ones
    assert [line.split() for line in listed] == [
        ["/v1/marketing/completions", "completion", "(department=marketing)"],
        ["/v1/chat/completions", "chat", "(standard)"],
        ["/v1/completions", "completion", "(standard)"],
        ["/v1/embeddings", "embeddings", "(standard)"],
        ["/v1/models", "models", "(standard)"],
        ["/v1/messages", "messages", "(standard)"],
        ["/v1/messages/count_tokens", "count_tokens", "(standard)"],
        ["/v1/responses", "responses", "(standard)"],
    ]
    warnings = lines(result.stderr)
    assert len(warnings) == 2, warnings
    assert all(w.startswith(f"{seed}: warning: ") for w in warnings)
    [anthropic] = [w for w in warnings if "providers.anthropic.api_key" in w]
    [openai] = [w for w in warnings if "providers.openai.api_key" in w]
    assert "empty (${ANTHROPIC_API_KEY} is not set)" in anthropic
    assert "empty (${OPENAI_API_KEY} is not set)" in openai
    assert "Traceback" not in result.stderr


def test_a_base_url_against_its_types_convention_is_a_warning_and_the_file_still_valid(tmp_path):
    config = write(tmp_path, """\
providers:
  openai: {type: openai, model: gpt-4o, api_key: k, base_url: "https://api.openai.com"}
  claude: {type: anthropic, model: claude-3-haiku, api_key: k, base_url: "https://api.anthropic.com/v1"}
  local: {type: ollama, model: llama3.2, base_url: "http://localhost:11434/v1"}
  vllm: {type: openai, model: llama-3-8b, api_key: k, base_url: "http://10.0.0.5:8000/v1"}
""")
    result = validate(config)

    assert result.returncode == 0, result.stderr
    assert lines(result.stdout)[0].startswith(f"{config}: valid")
    warnings = lines(result.stderr)
    assert len(warnings) == 3, warnings
    [openai] = [w for w in warnings if w.startswith(f"{config}: warning: providers.openai.base_url: has no path")]
    assert "/v1" in openai
    [claude] = [w for w in warnings if w.startswith(f"{config}: warning: providers.claude.base_url: ends in /v1")]
    assert "/v1/messages" in claude
    [local] = [w for w in warnings if w.startswith(f"{config}: warning: providers.local.base_url: ends in /v1")]
    assert "/api/chat" in local and "type: openai" in local


def test_validate_never_prints_an_api_key_value(seed):
    result = validate(seed, env={"OPENAI_API_KEY": SECRET})

    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout + result.stderr
    # The key that is set no longer draws a warning; the missing one still does.
    assert "providers.openai.api_key" not in result.stderr
    assert "ANTHROPIC_API_KEY" in result.stderr


def test_errors_next_to_an_api_key_do_not_print_its_value(tmp_path):
    config = write(tmp_path, """\
providers:
  openai: {type: opnai, model: gpt-4, api_key: "${OPENAI_API_KEY}", timeout: "${OPENAI_API_KEY}"}
  other: {type: openai, model: gpt-4, api_key: ["${OPENAI_API_KEY}"]}
""")
    result = validate(config, env={"OPENAI_API_KEY": SECRET})

    assert result.returncode == 1
    assert "providers.openai.type" in result.stderr
    assert "providers.openai.timeout" in result.stderr
    assert "providers.other.api_key" in result.stderr
    assert SECRET not in result.stdout + result.stderr


# ---------------------------------------------------------------- invalid files


def test_every_error_in_a_file_is_printed_with_its_key_path(tmp_path):
    config = write(tmp_path, """\
provders: {}
providers:
  openai: {type: opnai, model: gpt-4, api_key: sk-x}
  local: {type: ollama, model: llama3.2}
provider_preference: [openai, missing]
routes:
  - path: "v1/chat"
    handler: chat
""")
    result = validate(config)

    assert result.returncode == 1
    assert result.stdout == ""
    errors = lines(result.stderr)
    expected = [
        "provders: unknown key 'provders' (did you mean 'providers'?)",
        "providers.openai.type: unknown provider type 'opnai' (expected one of: anthropic, ollama, openai)",
        "provider_preference[1]: unknown provider 'missing'",
        "routes[0].path: path 'v1/chat' must start with '/'",
    ]
    for fragment in expected:
        assert any(line.startswith(f"{config}: {fragment}") for line in errors), (fragment, errors)
    assert errors[-1] == f"{config}: 4 error(s)"
    assert len(errors) == 5, errors
    assert "Traceback" not in result.stderr


def test_yaml_syntax_error_is_reported_with_its_line(tmp_path):
    config = write(tmp_path, "providers:\n  openai: {type: openai\n  local: [\n")
    result = validate(config)

    assert result.returncode == 1
    assert result.stdout == ""
    assert f"{config}: invalid YAML at line 3" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_file_is_reported_without_a_traceback(tmp_path):
    missing = tmp_path / "nope.yaml"
    result = validate(missing)

    assert result.returncode == 1
    assert result.stdout == ""
    assert f"{missing}: cannot read the file: No such file or directory" in result.stderr
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------- --envoy


def test_envoy_accepts_what_the_control_plane_generates_for_the_seed_example(seed):
    result = validate(seed, "--envoy")

    assert result.returncode == 0, result.stderr
    summary = lines(result.stdout)[0]
    assert "2 providers" in summary
    assert "Envoy rejects" not in result.stderr


@pytest.mark.parametrize("script,shown", [
    ("echo 'error initializing configuration: bad cluster' >&2\nexit 1", "bad cluster"),
    # A crash that prints nothing is a rejection too, not a pass.
    ("exit 1", "exit code 1"),
    ("kill -SEGV $$", "killed by SIGSEGV"),
])
def test_envoy_rejection_makes_validate_fail(seed, tmp_path, script, shown):
    fake_envoy = tmp_path / "envoy"
    fake_envoy.write_text(f"#!/bin/sh\n{script}\n")
    fake_envoy.chmod(0o755)
    result = validate(seed, "--envoy", env={"HAPAX_ENVOY": str(fake_envoy)})

    assert result.returncode == 1
    assert result.stdout == ""
    assert f"{seed}: Envoy rejects the generated configuration" in result.stderr
    assert shown in result.stderr


def test_envoy_that_cannot_be_run_fails_without_a_traceback(seed, tmp_path):
    result = validate(seed, "--envoy", env={"HAPAX_ENVOY": str(tmp_path / "no-envoy-here")})

    assert result.returncode == 1
    assert result.stdout == ""
    assert f"{seed}: cannot run envoy to validate" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_secret_put_in_base_url_by_mistake_is_not_printed(tmp_path):
    config = tmp_path / "hapax.yaml"
    config.write_text('providers:\n  openai: {type: openai, model: gpt-4, base_url: "${OPENAI_API_KEY}"}\n')
    result = subprocess.run([sys.executable, "-m", "hapax.cli", "validate", "--config", str(config)],
                            capture_output=True, text=True, env={**os.environ, "OPENAI_API_KEY": "sk-test-SECRET-123"},
                            timeout=60)
    assert result.returncode == 1
    assert "providers.openai.base_url" in result.stderr and "${OPENAI_API_KEY}" in result.stderr
    assert "sk-test-SECRET-123" not in result.stdout + result.stderr


# ---------------------------------------------------------------- ./dev


def fake_checkout(tmp_path: Path) -> Path:
    """A copy of ./dev beside a venv already in sync, whose ``hapax`` runs this checkout's: the
    script runs as it would in a checkout someone has used before, and installs nothing."""
    root = tmp_path / "checkout"
    (root / ".venv" / "bin").mkdir(parents=True)
    (root / "dev").write_bytes((REPO / "dev").read_bytes())
    (root / "dev").chmod(0o755)
    (root / "pyproject.toml").write_text("")
    for name, module in (("python", ""), ("hapax", "-m hapax.cli")):
        script = root / ".venv" / "bin" / name
        script.write_text(f'#!/bin/sh\nPYTHONPATH="{REPO}" exec "{sys.executable}" {module} "$@"\n')
        script.chmod(0o755)
    os.utime(root / "pyproject.toml", (0, 0))  # older than the stamp: no reinstall
    (root / ".venv" / ".installed").touch()
    return root


def test_dev_reads_a_relative_config_from_the_callers_directory(tmp_path):
    checkout = fake_checkout(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    write(elsewhere, "providers:\n  local: {type: ollama, model: llama3.2}\n")

    result = subprocess.run([str(checkout / "dev"), "validate", "--config", "hapax.yaml"], cwd=elsewhere,
                            capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stderr
    assert lines(result.stdout)[0].startswith("hapax.yaml: valid")
    assert "installing" not in result.stderr  # a venv in sync is left alone
