"""The built-in configuration ``hapax serve`` runs when given no ``--config``.

It is produced as YAML text, not as objects, so that it goes through exactly
the parser and validation a user's file does, and so that it can be written
next to the running gateway as an example to copy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

# Provider -> the environment variable holding its key, in preference order.
REAL_PROVIDER_KEYS = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
REAL_MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-3-5-haiku-latest"}

# Fakes, in preference order. The keys are what the local fake servers expect.
FAKE_PROVIDERS = {
    "openai": {"type": "openai", "model": "gpt-4o-mini", "api_key": "fake-openai-key"},
    "anthropic": {"type": "anthropic", "model": "claude-3-5-haiku-latest", "api_key": "fake-anthropic-key"},
    "ollama": {"type": "ollama", "model": "llama3.2"},
}

# The seed's department route, so the default shows labelled metrics out of the box;
# the standard OpenAI routes are served beside it without being listed.
MARKETING_ROUTE = {
    "path": "/v1/marketing/completions",
    "handler": "completion",
    "version": "v1",
    "metrics_labels": {"department": "marketing"},
}

_HEADER = """\
# Hapax built-in configuration (used because no --config was given).
# {origin}
# Copy this file, edit it, and run: hapax serve --config hapax.yaml
"""


def needs_fake_providers(env: Mapping[str, str]) -> bool:
    """True when no real provider key is available, so local fakes must stand in."""
    return not any(env.get(variable) for variable in REAL_PROVIDER_KEYS.values())


def default_config_text(env: Mapping[str, str], fake_base_urls: Mapping[str, str] | None) -> str:
    """The default configuration as YAML text.

    Real providers when their keys are set (referenced as ``${VAR}`` so the key
    never appears in the text); otherwise the fakes at ``fake_base_urls``.
    """
    if needs_fake_providers(env):
        providers, origin = _fake_providers(fake_base_urls), "Providers: local fake providers (no API key set)."
    else:
        providers, origin = _real_providers(env), "Providers: the real ones whose API key is set."
    document = {
        "server": {"port": 8080},
        "providers": providers,
        "provider_preference": list(providers),
        "routes": [MARKETING_ROUTE],
    }
    body = yaml.safe_dump(document, sort_keys=False, default_flow_style=False)
    return _HEADER.format(origin=origin) + body


def _real_providers(env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    return {
        name: {"type": name, "model": REAL_MODELS[name], "api_key": f"${{{variable}}}"}
        for name, variable in REAL_PROVIDER_KEYS.items()
        if env.get(variable)
    }


def _fake_providers(base_urls: Mapping[str, str] | None) -> dict[str, dict[str, Any]]:
    providers = {
        name: {**_literals(settings), "base_url": _literal(base_urls[name])}
        for name, settings in FAKE_PROVIDERS.items()
        if base_urls and name in base_urls
    }
    if not providers:
        raise ValueError(
            "no API key is set, so the default configuration needs fake provider URLs "
            f"(fake_base_urls with any of: {', '.join(FAKE_PROVIDERS)})"
        )
    return providers


def _literals(settings: Mapping[str, str]) -> dict[str, str]:
    return {key: _literal(value) for key, value in settings.items()}


def _literal(text: str) -> str:
    # The parser expands ${VAR} in every string; these values are meant literally.
    return text.replace("$", "$$")
