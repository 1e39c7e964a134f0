"""Registry of provider translators, by provider ``type``."""

from __future__ import annotations

from ext_proc.translators.anthropic import AnthropicTranslator
from ext_proc.translators.base import ProviderRequest, ResponseStage, Translator
from ext_proc.translators.ollama import OllamaTranslator
from ext_proc.translators.openai import OpenAITranslator

TRANSLATORS: dict[str, Translator] = {
    t.type: t for t in (OpenAITranslator(), AnthropicTranslator(), OllamaTranslator())
}


# Every header any translator may set on a provider request. A retry that moves
# to another provider must not carry the previous provider's credentials.
PROVIDER_HEADERS: tuple[str, ...] = tuple(sorted({h for t in TRANSLATORS.values() for h in t.provider_headers}))


def translator_for(provider_type: str) -> Translator:
    return TRANSLATORS[provider_type]


__all__ = ["PROVIDER_HEADERS", "ProviderRequest", "ResponseStage", "Translator", "TRANSLATORS", "translator_for"]
